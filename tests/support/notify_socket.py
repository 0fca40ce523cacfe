"""A stand-in for systemd's notification socket: a bound Unix datagram socket to point NOTIFY_SOCKET at."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path


class NotifySocket:
    def __init__(self, directory: Path):
        self.path = directory / "notify.sock"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(self.path))
        self.socket.settimeout(0.5)
        self.messages: list[str] = []

    def wait_for(self, text: str, timeout: float) -> bool:
        """True once a message holding ``text`` has arrived (within ``timeout`` seconds)."""
        return self.wait_until(lambda message: text in message, timeout) is not None

    def wait_until(self, wanted: Callable[[str], bool], timeout: float, after: int = 0) -> int | None:
        """The number of messages up to the first one from index ``after`` on that is ``wanted``, or None."""
        deadline = time.monotonic() + timeout
        while True:
            for index in range(after, len(self.messages)):
                if wanted(self.messages[index]):
                    return index + 1
            if time.monotonic() >= deadline:
                return None
            try:
                self.messages.append(self.socket.recv(4096).decode())
            except TimeoutError:
                pass

    def close(self) -> None:
        self.socket.close()

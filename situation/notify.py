"""systemd notifications (sd_notify) without a dependency.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET``: a datagram socket, given
as a path (``/run/systemd/notify``) or an abstract name (``@name``). Each message
is one datagram of ``KEY=value`` lines: ``READY=1`` once started, ``STATUS=…``
for ``systemctl status``, ``WATCHDOG=1`` as a keep-alive when ``WatchdogSec=`` is
set (systemd then exports ``WATCHDOG_USEC`` and ``WATCHDOG_PID``), and
``STOPPING=1`` on shutdown.

Outside systemd (no ``NOTIFY_SOCKET``) every method does nothing. Sending never
blocks and never raises: a failure is logged once, at debug level.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("situation.notify")

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


def socket_address(value: str | None) -> str | bytes | None:
    """The AF_UNIX address for a ``NOTIFY_SOCKET`` value, or None when unset or unusable.

    ``/path`` is a filesystem socket; ``@name`` is an abstract one (a leading NUL byte).
    """
    if not value:
        return None
    if value.startswith("/"):
        return os.fsencode(value)
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    return None


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET``; a no-op when it is not set.

    ``environ`` defaults to ``os.environ`` (tests pass their own mapping). The
    socket address is read once, here; the watchdog variables when asked.
    """

    def __init__(self, environ: Mapping[str, str] | None = None):
        self._environ = os.environ if environ is None else environ
        raw = self._environ.get(NOTIFY_SOCKET_ENV)
        self._address = socket_address(raw)
        self._socket: socket.socket | None = None
        self._failed = False
        if raw and self._address is None:
            self._log_once("NOTIFY_SOCKET is neither a path nor an @abstract name; notifications are off", value=raw)

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self._address is not None

    # -- the messages ---------------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (with a ``STATUS=`` line when given): startup is complete."""
        fields = ["READY=1"]
        if status is not None:
            fields.append(f"STATUS={_one_line(status)}")
        return self.notify(*fields)

    def status(self, text: str) -> bool:
        """``STATUS=text``: the one-line status shown by ``systemctl status``."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive expected every half ``WatchdogSec=``."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        fields = ["STOPPING=1"]
        if status is not None:
            fields.append(f"STATUS={_one_line(status)}")
        return self.notify(*fields)

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` as one datagram; True when it was sent.

        Never blocks and never raises: with no socket, or on any error, it returns
        False (the first error is logged at debug level, later ones are silent).
        """
        if self._address is None or not fields:
            return False
        payload = "\n".join(fields).encode("utf-8")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(payload, self._address)
        except OSError as exc:
            self._log_once("could not notify systemd", error=f"{type(exc).__name__}: {exc}")
            return False
        return True

    # -- the watchdog ------------------------------------------------------------------

    def watchdog_interval(self) -> float | None:
        """Seconds between two ``WATCHDOG=1`` (half of ``WATCHDOG_USEC``), or None.

        None when no watchdog is asked for, when ``WATCHDOG_USEC`` is not a positive
        integer, or when ``WATCHDOG_PID`` names another process (a child that
        inherited the variables must not ping for its parent).
        """
        raw = self._environ.get("WATCHDOG_USEC", "").strip()
        try:
            usec = int(raw)
        except ValueError:
            return None
        if usec <= 0:
            return None
        pid = self._environ.get("WATCHDOG_PID", "").strip()
        if pid:
            try:
                if int(pid) != os.getpid():
                    return None
            except ValueError:
                return None
        return usec / 2 / 1_000_000

    async def watchdog_loop(self) -> None:
        """Send ``WATCHDOG=1`` every :meth:`watchdog_interval` until cancelled.

        Meant to run as a task on the agent's event loop: when the loop is blocked
        the pings stop, and systemd restarts the service. Returns at once when no
        watchdog is asked for.
        """
        interval = self.watchdog_interval()
        if interval is None or not self.enabled:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    # -- housekeeping ---------------------------------------------------------------

    def close(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _log_once(self, message: str, **fields) -> None:
        if self._failed:
            return
        self._failed = True
        log.debug(message, **fields)


def _one_line(text: str) -> str:
    """A field value may not hold a newline: it would start another field."""
    return " ".join(str(text).splitlines())

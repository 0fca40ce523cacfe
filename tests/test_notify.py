"""sd_notify: datagrams on a real AF_UNIX socket, as systemd would receive them."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid

import pytest

from situation import notify
from situation.notify import Notifier, socket_address


@pytest.fixture
def listener(tmp_path):
    """A datagram socket bound to a path, like /run/systemd/notify: ``(path, receive)``."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)

    def receive() -> str:
        return sock.recv(4096).decode()

    yield str(path), receive, sock
    sock.close()


def nothing_waiting(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(5)
    return False


def test_messages_arrive(listener):
    path, receive, sock = listener
    with Notifier({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.enabled
        assert notifier.ready()
        assert receive() == "READY=1"
        assert notifier.ready(status="collecting")
        assert receive() == "READY=1\nSTATUS=collecting"
        assert notifier.status("cycle 3 done, next in 1h")
        assert receive() == "STATUS=cycle 3 done, next in 1h"
        assert notifier.watchdog()
        assert receive() == "WATCHDOG=1"
        assert notifier.stopping()
        assert receive() == "STOPPING=1"
    assert nothing_waiting(sock)


def test_status_stays_one_field(listener):
    path, receive, _sock = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.status("two\nlines\r\nhere")
    assert receive() == "STATUS=two lines here"
    notifier.close()


def test_reads_os_environ_by_default(listener, monkeypatch):
    path, receive, _sock = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier()
    notifier.ready()
    assert receive() == "READY=1"
    notifier.close()


def test_abstract_socket(tmp_path):
    name = f"situation-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready(status="up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        notifier.close()
    finally:
        sock.close()


def test_socket_addresses():
    assert socket_address(None) is None
    assert socket_address("") is None
    assert socket_address("/run/systemd/notify") == b"/run/systemd/notify"
    assert socket_address("@abc") == b"\0abc"
    assert socket_address("@") is None
    assert socket_address("relative/path") is None
    assert socket_address("vsock:2:1234") is None


def test_unset_is_a_no_op():
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier._socket is None  # no socket was even created
    notifier.close()


def test_unusable_value_is_a_no_op():
    notifier = Notifier({"NOTIFY_SOCKET": "not-a-socket-address"})
    assert not notifier.enabled
    assert notifier.ready() is False


class RecordingLog:
    def __init__(self):
        self.calls: list[tuple[str, str, dict]] = []

    def __getattr__(self, level):
        return lambda message, **fields: self.calls.append((level, message, fields))


def test_send_errors_are_swallowed_and_logged_once(tmp_path, monkeypatch):
    recorded = RecordingLog()
    monkeypatch.setattr(notify, "log", recorded)
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert [(level, message) for level, message, _ in recorded.calls] == [("debug", "could not notify systemd")]
    assert "FileNotFoundError" in recorded.calls[0][2]["error"]
    notifier.close()


def test_unusable_value_is_logged_at_debug(monkeypatch):
    recorded = RecordingLog()
    monkeypatch.setattr(notify, "log", recorded)
    Notifier({"NOTIFY_SOCKET": "relative"}).ready()
    assert [level for level, _, _ in recorded.calls] == ["debug"]


def test_full_socket_buffer_does_not_block(tmp_path):
    """A receiver that never reads: sends fail fast instead of blocking the event loop."""
    path = tmp_path / "full"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.bind(str(path))
    try:
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        results = [notifier.status("x" * 512) for _ in range(10_000)]
        assert results[0] is True
        assert results[-1] is False
        notifier.close()
    finally:
        sock.close()


# -- the watchdog ---------------------------------------------------------------------


def test_watchdog_interval_is_half_the_timeout():
    assert Notifier({"WATCHDOG_USEC": "600000000"}).watchdog_interval() == 300.0
    assert Notifier({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval() == 1.5


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"WATCHDOG_USEC": ""},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "600000000", "WATCHDOG_PID": "1"},
        {"WATCHDOG_USEC": "600000000", "WATCHDOG_PID": "x"},
    ],
)
def test_no_watchdog(environ):
    assert Notifier(environ).watchdog_interval() is None


async def test_watchdog_loop_pings(listener):
    path, _receive, sock = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000", "WATCHDOG_PID": str(os.getpid())})
    task = asyncio.create_task(notifier.watchdog_loop())
    try:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        for _ in range(3):
            message = await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout=5)
            assert message == b"WATCHDOG=1"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        notifier.close()


async def test_watchdog_loop_returns_without_a_watchdog(listener):
    path, _receive, _sock = listener
    await asyncio.wait_for(Notifier({"NOTIFY_SOCKET": path}).watchdog_loop(), timeout=5)
    await asyncio.wait_for(Notifier({"WATCHDOG_USEC": "40000"}).watchdog_loop(), timeout=5)

"""Hold sockets open for the netstat tests: run inside a test namespace, stdlib only.

    socket_holder.py SPEC…

Each spec is ``listen:tcp:ADDR:PORT``, ``listen:tcp6any:PORT`` (dual-stack ``::``),
``bind:udp:ADDR:PORT`` or ``connect:tcp:ADDR:PORT``. Listeners accept every
connection and keep it. Prints ``ready`` once every socket is set up, then
waits until stdin closes.
"""

from __future__ import annotations

import socket
import sys
import threading

held: list[socket.socket] = []


def _accept_forever(listener: socket.socket) -> None:
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        held.append(connection)


def open_socket(spec: str) -> None:
    action, kind, *rest = spec.split(":")
    if kind == "tcp6any":
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::", int(rest[0])))
    else:
        address, port = ":".join(rest[:-1]), int(rest[-1])
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
        if action == "connect":
            sock.connect((address, port))
            held.append(sock)
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
    held.append(sock)
    if action == "listen":
        sock.listen(64)
        threading.Thread(target=_accept_forever, args=(sock,), daemon=True).start()


def main() -> None:
    for spec in sys.argv[1:]:
        open_socket(spec)
    print("ready", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()

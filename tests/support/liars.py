"""Neighbours that lie, for the hostile-input lab: run inside a test-made namespace, stdlib only.

    liars.py dns ADDRESS IP=HEX…       PTR answers: the reverse name of IP gets the raw
                                       RDATA HEX (any bytes, so labels DNS cannot carry);
                                       every other question NXDOMAIN
    liars.py snmp ADDRESS MAC [DELAY]  an SNMP v1/v2c agent (any community) whose MIB lies:
                                       wrong types, huge counters, ifNumber = 100,000;
                                       DELAY seconds before each answer (a slow device)
    liars.py tls ADDRESS GARBAGE STALL TCP ports: GARBAGE answers a ClientHello with random
                                       bytes and closes; STALL reads it and never answers
    liars.py hold ADDRESS PORT ARG…    a TCP listener whose command line carries ARG…

Each prints ``ready`` once listening and runs until killed (``hold``: until stdin closes).
Tests import ``start`` and ``stop``; the rest runs as the script, in the namespace.
"""

from __future__ import annotations

import bisect
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__)


def start(namespace: str, *args: str | bytes, python: str | bytes = sys.executable,
          stdin: int | None = None) -> subprocess.Popen:
    """This script with ``args`` inside ``namespace``; returns once it is ready."""
    argv = ["ip", "netns", "exec", namespace, python, str(HERE), *args]
    process = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = process.stdout.readline()
    if line.strip() != b"ready":
        process.kill()
        raise RuntimeError(f"liar {args[:1]} in {namespace} did not start: {line!r}{process.stderr.read()!r}")
    return process


def stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(timeout=10)


# -- DNS ------------------------------------------------------------------------------------


def reverse_name(address: str) -> str:
    return ".".join(reversed(address.split("."))) + ".in-addr.arpa"


def _question(query: bytes) -> tuple[str, int]:
    """The first question's name (lowercase text) and the offset after it."""
    labels, at = [], 12
    while query[at]:
        length = query[at]
        labels.append(query[at + 1 : at + 1 + length].decode("ascii", "replace").lower())
        at += 1 + length
    return ".".join(labels), at + 5  # root byte, type, class


def dns_answer(query: bytes, answers: dict[str, bytes]) -> bytes:
    name, end = _question(query)
    rdata = answers.get(name)
    flags = 0x8400 | (query[2] & 0x01) << 8 | (0 if rdata is not None else 3)  # QR, AA, RD echoed; NXDOMAIN
    header = query[:2] + struct.pack("!HHHHH", flags, 1, 1 if rdata is not None else 0, 0, 0)
    answer = b"" if rdata is None else b"\xc0\x0c" + struct.pack("!HHIH", 12, 1, 60, len(rdata)) + rdata
    return header + query[12:end] + answer


def serve_udp(address: str, port: int, answer, delay: float = 0.0) -> None:
    """Answer every datagram with ``answer(datagram)``, ``delay`` seconds late; one it cannot parse gets silence."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((address, port))
    print("ready", flush=True)
    while True:
        request, peer = server.recvfrom(65535)
        try:
            response = answer(request)
        except (ValueError, IndexError):
            continue  # not a request this liar understands (SNMPv3 discovery, say)
        time.sleep(delay)
        server.sendto(response, peer)


def serve_dns(address: str, pairs: list[str]) -> None:
    answers = {reverse_name(name): bytes.fromhex(data) for name, data in (p.split("=", 1) for p in pairs)}
    serve_udp(address, 53, lambda query: dns_answer(query, answers))


# -- SNMP: hand-built BER --------------------------------------------------------------------

INTEGER, OCTETS, OID, SEQUENCE = 0x02, 0x04, 0x06, 0x30
IP_ADDRESS, COUNTER64 = 0x40, 0x46
NO_SUCH_OBJECT, END_OF_MIB = 0x80, 0x82
GET, GETNEXT, RESPONSE, GETBULK = 0xA0, 0xA1, 0xA2, 0xA5
HUGE = 2**64 - 1


def tlv(tag: int, value: bytes) -> bytes:
    size = len(value)
    if size < 0x80:
        return bytes([tag, size]) + value
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + value


def number(value: int, tag: int = INTEGER) -> bytes:
    return tlv(tag, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def counter64(value: int) -> bytes:
    return tlv(COUNTER64, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def ipv4(*octets: int) -> bytes:
    return tlv(IP_ADDRESS, bytes(octets))


def encode_oid(parts: tuple[int, ...]) -> bytes:
    body = bytearray([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        while part > 0x7F:
            part >>= 7
            chunk.append(0x80 | (part & 0x7F))
        body += bytes(reversed(chunk))
    return tlv(OID, bytes(body))


def decode_oid(body: bytes) -> tuple[int, ...]:
    parts, value = [body[0] // 40, body[0] % 40], 0
    for byte in body[1:]:
        value = value << 7 | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return tuple(parts)


def read_tlvs(data: bytes) -> list[tuple[int, bytes]]:
    found, at = [], 0
    while at < len(data):
        tag, size = data[at], data[at + 1]
        at += 2
        if size & 0x80:
            count = size & 0x7F
            size = int.from_bytes(data[at : at + count], "big")
            at += count
        found.append((tag, data[at : at + size]))
        at += size
    return found


def oid(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


IF_NUMBER = 100_000


class LyingMib:
    """A MIB of explicit objects and virtual ifTable/ifXTable columns of IF_NUMBER rows.

    Interface 1 alone tells the truth: ``mac``, ``ip``/24 and a default route via the /24's
    first address; every other row, and every other object, lies.
    """

    def __init__(self, mac: bytes, ip: str):
        a, b, c, d = map(int, ip.split("."))
        huge_string = b"\x1b]0;pwned\x07liar\xff\xfe\xc2\x9b" + b"A" * 5000
        objects = {
            oid("1.3.6.1.2.1.1.1.0"): number(42),  # sysDescr as an INTEGER
            oid("1.3.6.1.2.1.1.3.0"): counter64(HUGE),  # sysUpTime as a huge Counter64
            oid("1.3.6.1.2.1.1.5.0"): tlv(OCTETS, huge_string),  # sysName
            oid("1.3.6.1.2.1.1.7.0"): counter64(HUGE),  # sysServices
            oid("1.3.6.1.2.1.2.1.0"): number(IF_NUMBER),  # ifNumber
            # ipAddrTable: one true row (interface 1), one of wrong types
            oid(f"1.3.6.1.2.1.4.20.1.1.{ip}"): ipv4(a, b, c, d),
            oid("1.3.6.1.2.1.4.20.1.1.10.0.0.1"): tlv(OCTETS, b"\x1b[2J!"),
            oid(f"1.3.6.1.2.1.4.20.1.2.{ip}"): number(1),
            oid("1.3.6.1.2.1.4.20.1.2.10.0.0.1"): tlv(OCTETS, b"one"),
            oid(f"1.3.6.1.2.1.4.20.1.3.{ip}"): ipv4(255, 255, 255, 0),
            oid("1.3.6.1.2.1.4.20.1.3.10.0.0.1"): counter64(HUGE),
            # ipAddressPrefixTable / ipAddressTable: a prefix length and address bytes that are not ones
            oid(f"1.3.6.1.2.1.4.32.1.5.1.1.4.{a}.{b}.{c}.0.4294967295"): number(2),
            oid(f"1.3.6.1.2.1.4.32.1.5.1.1.4.10.{2**40}.0.0.24"): number(2),
            oid(f"1.3.6.1.2.1.4.34.1.3.1.4.{ip}"): counter64(HUGE),
            oid("1.3.6.1.2.1.4.34.1.3.2.16." + ".".join(["999"] * 16)): number(1),
            # ipForwardTable: a default route on interface 1, and a row of wrong types
            **self._route(f"0.0.0.0.0.0.{a}.{b}.{c}.1", ipv4(0, 0, 0, 0), ipv4(0, 0, 0, 0),
                          ipv4(a, b, c, 1), number(1)),
            **self._route("9.9.9.9.0.0.1.1.1.1", tlv(OCTETS, b"\x1b[2J!"), counter64(HUGE), counter64(HUGE),
                          tlv(OCTETS, b"1")),
        }
        self.objects = dict(sorted(objects.items()))
        self.keys = list(self.objects)
        self.columns = {  # column OID → value of row i
            oid("1.3.6.1.2.1.2.2.1.1"): lambda i: number(i),
            oid("1.3.6.1.2.1.2.2.1.3"): lambda i: number(6) if i == 1 else counter64(HUGE),
            oid("1.3.6.1.2.1.2.2.1.6"): lambda i: tlv(OCTETS, mac) if i == 1 else self._lying_mac(i),
            oid("1.3.6.1.2.1.2.2.1.7"): lambda i: number(1) if i == 1 else counter64(HUGE),
            oid("1.3.6.1.2.1.2.2.1.8"): lambda i: number(1) if i == 1 else tlv(OCTETS, b"up"),
            oid("1.3.6.1.2.1.31.1.1.1.1"): lambda i: tlv(OCTETS, b"eth0\x1b]0;pwned\x07\xff" if i == 1
                                                          else b"\x1b[2Jport%d\x9b\xc0" % i),
        }

    @staticmethod
    def _route(index: str, dest: bytes, mask: bytes, hop: bytes, if_index: bytes) -> dict:
        """One ipForwardTable row: dest, mask, next hop, ifIndex (encoded as given) and type indirect."""
        values = {1: dest, 2: mask, 4: hop, 5: if_index, 6: number(4)}
        return {oid(f"1.3.6.1.2.1.4.24.2.1.{column}.{index}"): value for column, value in values.items()}

    @staticmethod
    def _lying_mac(i: int) -> bytes:
        if i % 3 == 0:
            return number(i)  # an INTEGER
        if i % 3 == 1:
            return tlv(OCTETS, bytes([2, 0xEE, 0, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF]))
        return tlv(OCTETS, b"\x1b[2J" * 16)  # 64 bytes

    def get(self, name: tuple[int, ...]) -> bytes:
        if name in self.objects:
            return self.objects[name]
        for column, value in self.columns.items():
            if name[: len(column)] == column and len(name) == len(column) + 1 and 1 <= name[-1] <= IF_NUMBER:
                return value(name[-1])
        return tlv(NO_SUCH_OBJECT, b"")

    def next(self, name: tuple[int, ...]) -> tuple[tuple[int, ...], bytes] | None:
        candidates = []
        at = bisect.bisect_right(self.keys, name)
        if at < len(self.keys):
            candidates.append((self.keys[at], self.objects[self.keys[at]]))
        for column, value in self.columns.items():
            head, rest = name[: len(column)], name[len(column):]
            if head > column:
                continue
            row = 1 if head < column or not rest else rest[0] + 1
            if row <= IF_NUMBER:
                candidates.append((column + (row,), value(row)))
        return min(candidates, key=lambda c: c[0]) if candidates else None

    def answer(self, request: bytes) -> bytes:
        [(_, message)] = read_tlvs(request)
        (_, version), (_, community), (kind, pdu) = read_tlvs(message)
        (_, request_id), (_, first), (_, second), (_, varbinds) = read_tlvs(pdu)
        names = [decode_oid(read_tlvs(binding)[0][1]) for _, binding in read_tlvs(varbinds)]
        found: list[tuple[tuple[int, ...], bytes]] = []
        if kind == GET:
            found = [(n, self.get(n)) for n in names]
        elif kind == GETNEXT:
            found = [self.next(n) or (n, tlv(END_OF_MIB, b"")) for n in names]
        elif kind == GETBULK:
            repetitions = int.from_bytes(second, "big")
            for name in names[int.from_bytes(first, "big"):]:
                for _ in range(repetitions):
                    step = self.next(name)
                    if step is None:
                        found.append((name, tlv(END_OF_MIB, b"")))
                        break
                    found.append(step)
                    name = step[0]
        bindings = b"".join(tlv(SEQUENCE, encode_oid(n) + value) for n, value in found)
        body = tlv(INTEGER, request_id) + number(0) + number(0) + tlv(SEQUENCE, bindings)
        return tlv(SEQUENCE, tlv(INTEGER, version) + tlv(OCTETS, community) + tlv(RESPONSE, body))


def serve_snmp(address: str, mac: str, delay: float = 0.0) -> None:
    serve_udp(address, 161, LyingMib(bytes.fromhex(mac.replace(":", "")), address).answer, delay)


# -- TLS that is not ---------------------------------------------------------------------------


def _garbage(connection: socket.socket) -> None:
    with connection:
        connection.recv(4096)
        connection.sendall(os.urandom(4096))


def _stall(connection: socket.socket, held: list) -> None:
    connection.recv(4096)
    held.append(connection)  # never answered, never closed


def serve_tls_liars(address: str, garbage: int, stall: int) -> None:
    held: list[socket.socket] = []
    for port, handle in ((garbage, _garbage), (stall, lambda c: _stall(c, held))):
        listener = socket.create_server((address, port))
        threading.Thread(target=_accept, args=(listener, handle), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def _accept(listener: socket.socket, handle) -> None:
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=handle, args=(connection,), daemon=True).start()


def hold(address: str, port: int) -> None:
    listener = socket.create_server((address, port))
    print("ready", flush=True)
    sys.stdin.buffer.read()
    listener.close()


def main() -> None:
    command, address, *rest = sys.argv[1:]
    if command == "dns":
        serve_dns(address, rest)
    elif command == "snmp":
        serve_snmp(address, rest[0], float(rest[1]) if len(rest) > 1 else 0.0)
    elif command == "tls":
        serve_tls_liars(address, int(rest[0]), int(rest[1]))
    elif command == "hold":
        hold(address, int(rest[0]))
    else:
        raise SystemExit(f"unknown liar {command!r}")


if __name__ == "__main__":
    main()

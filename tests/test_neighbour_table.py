"""The netlink reply parser of net/neighbour_table.py on crafted datagrams (no socket).

The dump itself runs against real neighbour tables in test-made namespaces in
test_arp.py (test_neighbour_table_into_nics).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys

import pytest

from situation.net.neighbour_table import (
    NDA_DST,
    NDA_LLADDR,
    NDMSG,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGHDR,
    NUD_REACHABLE,
    RTATTR,
    RTM_NEWNEIGH,
    Neighbour,
    _messages,
    _neighbour,
    _raise_error,
)

SEQUENCE = 7


def attribute(kind: int, value: bytes) -> bytes:
    raw = RTATTR.pack(RTATTR.size + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def message(kind: int, payload: bytes, sequence: int = SEQUENCE) -> bytes:
    raw = NLMSGHDR.pack(NLMSGHDR.size + len(payload), kind, 2, sequence, 0) + payload
    return raw + b"\0" * (-len(raw) % 4)


def entry(family: int, address: bytes, lladdr: bytes | None, state: int = NUD_REACHABLE) -> bytes:
    payload = NDMSG.pack(family, 2, state, 0, 1) + attribute(NDA_DST, address)
    return payload + (attribute(NDA_LLADDR, lladdr) if lladdr is not None else b"")


def test_entries_of_both_families_are_read_and_other_sequences_ignored():
    v6 = ipaddress.ip_address("2001:db8::5")
    datagram = (message(RTM_NEWNEIGH, entry(socket.AF_INET, bytes([10, 0, 0, 5]), bytes.fromhex("02aa000000ff")))
                + message(RTM_NEWNEIGH, entry(socket.AF_INET6, v6.packed, bytes.fromhex("02AA00000010")))
                + message(RTM_NEWNEIGH, entry(socket.AF_INET, bytes([10, 0, 0, 6]), b"\x02" * 6), sequence=8)
                + message(NLMSG_DONE, b"\0\0\0\0"))
    found = _messages(datagram, SEQUENCE)
    assert [kind for kind, _ in found] == [RTM_NEWNEIGH, RTM_NEWNEIGH, NLMSG_DONE]
    assert [_neighbour(payload) for _, payload in found[:2]] == [
        Neighbour(ipaddress.ip_address("10.0.0.5"), "02:aa:00:00:00:ff", NUD_REACHABLE),
        Neighbour(v6, "02:aa:00:00:00:10", NUD_REACHABLE),
    ]


@pytest.mark.parametrize("payload", [
    entry(socket.AF_INET, bytes([10, 0, 0, 5]), None),  # no link-layer address (INCOMPLETE)
    entry(socket.AF_INET, bytes([10, 0, 0, 5, 1]), b"\x02" * 6),  # address of the wrong length
    entry(socket.AF_INET, bytes([10, 0, 0, 5]), b"\x02" * 20),  # not an Ethernet MAC
    entry(socket.AF_INET, bytes([10, 0, 0, 5]), b"\x02" * 6)[:-3],  # attribute cut short
    NDMSG.pack(socket.AF_INET, 2, NUD_REACHABLE, 0, 1)[:8],  # header cut short
])
def test_unusable_entries_are_left_out(payload):
    assert _neighbour(memoryview(payload)) is None


def test_an_error_reply_raises_oserror_and_an_overrun_is_malformed():
    [(kind, payload)] = _messages(message(NLMSG_ERROR, (-errno.EPERM).to_bytes(4, sys.byteorder, signed=True)), SEQUENCE)
    assert kind == NLMSG_ERROR
    with pytest.raises(OSError) as raised:
        _raise_error(payload)
    assert raised.value.errno == errno.EPERM
    with pytest.raises(OSError, match="malformed"):
        _messages(message(RTM_NEWNEIGH, b"\0" * 40)[:30], SEQUENCE)

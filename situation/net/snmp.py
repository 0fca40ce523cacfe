"""SNMP: querying one device (v1, v2c, v3; asyncio) and decoding what it says. No database code.

:class:`SnmpClient` sends GET and GETBULK (GETNEXT for v1) requests, each
try drawn from the agent's rate limiter. :func:`read_device` asks one address
for its system group, interfaces, addresses and routes (agent-behaviour.md
§4.16) and returns a :class:`Device`; the pure functions under it turn walked
columns into interfaces, addresses, routes and the NICs worth storing.

v1 and v2c messages are assembled here with ``pysnmp.proto.api`` (pysnmp's
message classes and pyasn1's BER codec) and sent on UDP sockets the client
owns, one per address family for every target; answers are matched to their
request by request-id and source. This is for memory: pysnmp's high-level API
and its engine, with the MIB modules it loads and keeps for the process's
life, took 5.6 MB of the daemon's idle RSS, this client takes 2.5 MB
(bench/README.md, soak.py). Only SNMPv3, whose USM (engine-ID discovery,
localized keys, encryption) is the engine's work, imports pysnmp's high-level
API, and only when version 3 is used.

Everything a device says is untrusted: a datagram that is not the answer to
one of our pending requests (wrong source, unknown request-id, another
version or community, not a Response, not BER) is dropped unread; strings
are decoded with invalid UTF-8 replaced, control characters removed and
lengths bounded; MACs are taken only from 6-byte strings; numbers are used
only when their type and range are the MIB's (a huge Counter64 where
TimeTicks belong is no uptime); addresses encoded in OIDs are parsed as
integers and refused when a part is not a byte (the original's table lacked
255, so any ``ff`` byte decoded as 0); walks stop after ``MAX_ROWS`` rows or
at an OID that does not increase. Each device also has a row budget for all
its walks together (``SnmpClient(max_rows=...)``, every variable binding it
sends counts): decoding costs CPU on the event loop, so one device that
claims 100,000 interfaces must not take the time every other device needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import platform
import re
import secrets
import socket
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

from situation.net.rate import RateLimiter

Oid = tuple[int, ...]
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def oid(text: str) -> Oid:
    return tuple(int(part) for part in text.split("."))


# From data.json's snmp_oids.
SYS_DESCR = oid("1.3.6.1.2.1.1.1.0")
SYS_UPTIME = oid("1.3.6.1.2.1.1.3.0")
SYS_NAME = oid("1.3.6.1.2.1.1.5.0")
SYS_SERVICES = oid("1.3.6.1.2.1.1.7.0")
IF_INDEX = oid("1.3.6.1.2.1.2.2.1.1")
IF_TYPE = oid("1.3.6.1.2.1.2.2.1.3")
IF_PHYS_ADDRESS = oid("1.3.6.1.2.1.2.2.1.6")
IF_ADMIN_STATUS = oid("1.3.6.1.2.1.2.2.1.7")
IF_OPER_STATUS = oid("1.3.6.1.2.1.2.2.1.8")
IF_NAME = oid("1.3.6.1.2.1.31.1.1.1.1")
IP_ADDR_ENTRY_ADDR = oid("1.3.6.1.2.1.4.20.1.1")
IP_ADDR_ENTRY_IF_INDEX = oid("1.3.6.1.2.1.4.20.1.2")
IP_ADDR_ENTRY_NET_MASK = oid("1.3.6.1.2.1.4.20.1.3")
IP_ADDRESS_PREFIX_ORIGIN = oid("1.3.6.1.2.1.4.32.1.5")
IP_ADDRESS_IF_INDEX = oid("1.3.6.1.2.1.4.34.1.3")
INET_CIDR_ROUTE_IF_INDEX = oid("1.3.6.1.2.1.4.24.7.1.7")
INET_CIDR_ROUTE_TYPE = oid("1.3.6.1.2.1.4.24.7.1.8")
IP_FORWARD_DEST = oid("1.3.6.1.2.1.4.24.2.1.1")
IP_FORWARD_MASK = oid("1.3.6.1.2.1.4.24.2.1.2")
IP_FORWARD_NEXT_HOP = oid("1.3.6.1.2.1.4.24.2.1.4")
IP_FORWARD_IF_INDEX = oid("1.3.6.1.2.1.4.24.2.1.5")
IP_FORWARD_TYPE = oid("1.3.6.1.2.1.4.24.2.1.6")
PROBE = (0, 0)  # GET 0.0: any answer, even "no such object", means an agent is there

MAX_ROWS = 2048  # per walked column: a device cannot keep us walking forever
# Per device, all walks together (the snmp module's --snmp-max-rows default): the six
# interface columns at their full MAX_ROWS, and 4096 rows left for addresses and routes.
MAX_DEVICE_ROWS = 8 * MAX_ROWS
MAX_REPETITIONS = 25
MAX_NAME = 255
MAX_DESCR = 1024
MAX_TIME_TICKS = 2**32 - 1  # sysUpTime is TimeTicks (unsigned 32 bits)
MAX_SERVICES = 127  # sysServices is INTEGER (0..127)
ROUTE_REMOTE = 4  # inetCidrRouteType remote(4), ipRouteType/ipForwardType indirect(4)
IF_TYPE_LOOPBACK = 24  # softwareLoopback
IF_TYPE_TUNNEL = 131  # tunnel

VERSIONS = {0: "v1", 1: "v2c", 3: "v3"}  # the original's (gosnmp's) codes


# -- credentials ---------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """How to authenticate; ``repr`` never shows a community or a key."""

    version: int = 1
    community: str = field(default="public", repr=False)
    user: str = ""
    auth_protocol: str = "sha"
    auth_key: str | None = field(default=None, repr=False)
    priv_protocol: str = "aes"
    priv_key: str | None = field(default=None, repr=False)

    @property
    def security_level(self) -> str:
        if self.auth_key is None:
            return "noAuthNoPriv"
        return "authPriv" if self.priv_key is not None else "authNoPriv"


AUTH_PROTOCOLS = ("md5", "sha", "sha224", "sha256", "sha384", "sha512")
PRIV_PROTOCOLS = ("des", "3des", "aes", "aes192", "aes256")


def check_credentials(credentials: Credentials) -> str | None:
    """What is wrong with these settings (one line naming the option), or None."""
    if credentials.version not in VERSIONS:
        return (f"--snmp-version {credentials.version} is not supported; use 0 (v1), 1 (v2c, the default) "
                "or 3 (v3)")
    if credentials.auth_protocol not in AUTH_PROTOCOLS:  # whatever the version: no version takes it
        return f"--snmp-auth-protocol {credentials.auth_protocol!r} is not one of {', '.join(AUTH_PROTOCOLS)}"
    if credentials.priv_protocol not in PRIV_PROTOCOLS:
        return f"--snmp-priv-protocol {credentials.priv_protocol!r} is not one of {', '.join(PRIV_PROTOCOLS)}"
    if credentials.version != 3:
        return None
    if not credentials.user:
        return "--snmp-version 3 needs --snmp-user (the USM user name)"
    if credentials.priv_key is not None and credentials.auth_key is None:
        return "an SNMPv3 privacy key needs an authentication key too (SITUATION_SNMP_AUTH_KEY or --snmp-auth-key-file)"
    for key in (credentials.auth_key, credentials.priv_key):
        if key is not None and len(key) < 8:
            return "SNMPv3 keys must be at least 8 characters long (RFC 3414)"
    return None


def usm_user(credentials: Credentials) -> Any:
    """pysnmp's UsmUserData for SNMPv3 credentials."""
    from pysnmp.hlapi.v3arch.asyncio import UsmUserData
    from pysnmp.hlapi.v3arch.asyncio import auth as usm

    auth_protocols = {
        "md5": usm.usmHMACMD5AuthProtocol, "sha": usm.usmHMACSHAAuthProtocol,
        "sha224": usm.usmHMAC128SHA224AuthProtocol, "sha256": usm.usmHMAC192SHA256AuthProtocol,
        "sha384": usm.usmHMAC256SHA384AuthProtocol, "sha512": usm.usmHMAC384SHA512AuthProtocol,
    }
    priv_protocols = {
        "des": usm.usmDESPrivProtocol, "3des": usm.usm3DESEDEPrivProtocol, "aes": usm.usmAesCfb128Protocol,
        "aes192": usm.usmAesCfb192Protocol, "aes256": usm.usmAesCfb256Protocol,
    }
    if credentials.auth_key is None:
        return UsmUserData(credentials.user)
    if credentials.priv_key is None:
        return UsmUserData(credentials.user, authKey=credentials.auth_key,
                           authProtocol=auth_protocols[credentials.auth_protocol])
    return UsmUserData(credentials.user, authKey=credentials.auth_key, privKey=credentials.priv_key,
                       authProtocol=auth_protocols[credentials.auth_protocol],
                       privProtocol=priv_protocols[credentials.priv_protocol])


# -- talking to a device ---------------------------------------------------------------


class NoAnswer(Exception):
    """The device did not answer within the timeout and its retries."""


class Refused(Exception):
    """The device answered with an error report (SNMPv3: bad credentials, unknown user …)."""


Rows = list[tuple[Oid, Any]]  # (index under the walked column, plain value)
Answer = tuple[int, list[tuple[Oid, Any]]]  # error-status, (name, pyasn1 value) bindings
GET, GETNEXT, GETBULK = "get", "next", "bulk"


class SnmpClient:
    """Requests to any number of targets; ``timeout`` per try, ``retries`` more tries.

    v1 and v2c go through :class:`CommunityTransport`, v3 through the event
    loop's pysnmp engine (:class:`EngineTransport`). ``max_rows``: the variable
    bindings one device may send before its walks stop. Made inside the running
    loop; ``close`` releases its sockets.
    """

    def __init__(self, credentials: Credentials, *, port: int, timeout: float, retries: int, rate: RateLimiter,
                 max_rows: int = MAX_DEVICE_ROWS):
        self.credentials = credentials
        self.port, self.timeout, self.retries, self.rate = port, timeout, retries, rate
        self.max_rows = max_rows
        self.transport = EngineTransport(self) if credentials.version == 3 else CommunityTransport(self)

    def close(self) -> None:
        self.transport.close()

    async def session(self, address: IpAddress) -> Session:
        return Session(self, await self.transport.target(address))


class Session:
    """Requests to one device, and what is left of its row budget."""

    def __init__(self, client: SnmpClient, target: Any):
        self.client, self.target = client, target
        self.rows_left = client.max_rows

    @property
    def over_budget(self) -> bool:
        return self.rows_left <= 0

    async def _send(self, kind: str, oids: Sequence[Oid]) -> tuple[int, list[tuple[Oid, Any]]]:
        status, varbinds = await self.client.transport.request(self.target, kind, oids)
        self.rows_left -= len(varbinds)
        return status, [(name, plain(value)) for name, value in varbinds]

    async def get(self, oids: Sequence[Oid]) -> dict[Oid, Any]:
        """The values of ``oids`` the device has (missing ones are absent)."""
        status, varbinds = await self._send(GET, oids)
        if status and len(oids) > 1:  # v1: one missing object fails the whole request
            found: dict[Oid, Any] = {}
            for one in oids:
                found.update(await self.get([one]))
            return found
        if status:
            return {}
        return {name: value for name, value in varbinds if value is not None}

    async def walk(self, column: Oid) -> Rows:
        """Every (index, value) under ``column``, at most ``MAX_ROWS``; nothing more once over budget."""
        kind = GETNEXT if self.client.credentials.version == 0 else GETBULK
        rows: Rows = []
        current = column
        while len(rows) < MAX_ROWS and not self.over_budget:
            status, varbinds = await self._send(kind, [current])
            if status or not varbinds:
                return rows
            for name, value in varbinds:
                if name[: len(column)] != column or value is None or name <= current:
                    return rows
                rows.append((name[len(column):], value))
                current = name
        return rows[:MAX_ROWS]


# -- v1 and v2c: messages of our own on sockets of our own --------------------------------


@dataclass
class Pending:
    """A request waiting for its answer, which must come from ``address``, ``port``."""

    address: IpAddress
    port: int
    answer: asyncio.Future[Answer]

    def sent_to(self, source: tuple) -> bool:
        try:
            return source[1] == self.port and ipaddress.ip_address(source[0]) == self.address
        except (ValueError, IndexError, TypeError):
            return False


class CommunityTransport:
    """SNMP v1/v2c: GET, GETNEXT and GETBULK built with ``pysnmp.proto.api``, one UDP socket per family.

    Every target shares the client's sockets (opened on first use, on the
    running loop); an answer is taken only when it decodes as a Response of
    our version and community, carries the request-id of a pending request,
    and comes from the address and port that request went to.
    """

    def __init__(self, client: SnmpClient):
        from pysnmp.proto import api

        self.client = client
        self.proto = api.PROTOCOL_MODULES[client.credentials.version]
        # surrogateescape: a community read from a non-UTF-8 environment goes out as its original bytes
        self.community = client.credentials.community.encode("utf-8", "surrogateescape")
        self.pending: dict[int, Pending] = {}
        self.sockets: dict[int, asyncio.DatagramTransport] = {}
        self._opening = asyncio.Lock()

    async def target(self, address: IpAddress) -> IpAddress:
        return address

    def close(self) -> None:
        for endpoint in self.sockets.values():
            endpoint.close()
        self.sockets.clear()

    async def request(self, address: IpAddress, kind: str, oids: Sequence[Oid]) -> Answer:
        """One request, sent again (same request-id) after each silent ``timeout``; NoAnswer after the last."""
        client = self.client
        endpoint = await self._socket(address.version)
        request_id = self._new_request_id()
        message = self.encode(request_id, kind, oids)
        pending = self.pending[request_id] = Pending(address, client.port, asyncio.get_running_loop().create_future())
        try:
            for _ in range(1 + client.retries):
                await client.rate.acquire(1)
                endpoint.sendto(message, (str(address), client.port))
                # not wait_for: on Python 3.11 it drops a cancellation that comes with the answer
                answered, _ = await asyncio.wait([pending.answer], timeout=client.timeout)
                if answered:
                    return pending.answer.result()
        finally:
            del self.pending[request_id]
        raise NoAnswer(f"no answer from {address} port {client.port} after {1 + client.retries} tries")

    def _new_request_id(self) -> int:
        while True:
            request_id = secrets.randbelow(2**31 - 1) + 1  # unpredictable: a spoofed answer must guess it
            if request_id not in self.pending:
                return request_id

    def encode(self, request_id: int, kind: str, oids: Sequence[Oid]) -> bytes:
        from pyasn1.codec.ber import encoder

        proto = self.proto
        if kind == GETBULK:
            pdu = proto.GetBulkRequestPDU()
            proto.apiBulkPDU.set_defaults(pdu)
            proto.apiBulkPDU.set_non_repeaters(pdu, 0)
            proto.apiBulkPDU.set_max_repetitions(pdu, MAX_REPETITIONS)
        else:
            pdu = proto.GetRequestPDU() if kind == GET else proto.GetNextRequestPDU()
            proto.apiPDU.set_defaults(pdu)
        proto.apiPDU.set_request_id(pdu, request_id)
        proto.apiPDU.set_varbinds(pdu, [(proto.ObjectIdentifier(o), proto.null) for o in oids])
        message = proto.Message()
        proto.apiMessage.set_defaults(message)
        proto.apiMessage.set_community(message, self.community)
        proto.apiMessage.set_pdu(message, pdu)
        return encoder.encode(message)

    def receive(self, data: bytes, source: tuple) -> bool:
        """Hand an answer to the request waiting for it; False (and nothing else) for anything else."""
        from pyasn1.codec.ber import decoder

        proto = self.proto
        try:
            message, rest = decoder.decode(data, asn1Spec=proto.Message())
            if rest or int(proto.apiMessage.get_version(message)) != self.client.credentials.version:
                return False
            if bytes(proto.apiMessage.get_community(message)) != self.community:
                return False
            pdu = proto.apiMessage.get_pdu(message)
            if pdu.tagSet != proto.GetResponsePDU.tagSet:
                return False
            pending = self.pending.get(int(proto.apiPDU.get_request_id(pdu)))
            if pending is None or pending.answer.done() or not pending.sent_to(source):
                return False
            answer = (int(proto.apiPDU.get_error_status(pdu)),
                      [(tuple(name), value) for name, value in proto.apiPDU.get_varbinds(pdu)])
        except Exception:  # not SNMP, or not the SNMP it claims to be: pyasn1 raises many kinds
            return False
        pending.answer.set_result(answer)
        return True

    async def _socket(self, ip_version: int) -> asyncio.DatagramTransport:
        async with self._opening:
            if ip_version not in self.sockets:
                family, anywhere = (socket.AF_INET6, "::") if ip_version == 6 else (socket.AF_INET, "0.0.0.0")
                endpoint, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                    lambda: _Answers(self), local_addr=(anywhere, 0), family=family)
                self.sockets[ip_version] = endpoint
            return self.sockets[ip_version]


class _Answers(asyncio.DatagramProtocol):
    """What arrives on one of a CommunityTransport's sockets, handed to it."""

    def __init__(self, owner: CommunityTransport):
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.owner.receive(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # e.g. an ICMP unreachable: that request just stays unanswered


# -- v3: pysnmp's engine ------------------------------------------------------------------


def _new_engine(engine_class):
    """A pysnmp engine, whatever this host's name.

    pysnmp's SNMP-FRAMEWORK-MIB, loaded with every engine, derives a default
    engine ID from ``ord()`` of each character of ``platform.node()`` and fails
    on any character above U+00FF (a non-UTF-8 or non-Latin host name). While the
    engine is made, that function returns the name with such characters as '?'.
    """
    real_node = platform.node
    platform.node = lambda: "".join(c if ord(c) < 256 else "?" for c in real_node())
    try:
        return engine_class()
    finally:
        platform.node = real_node


# One engine per event loop, kept between cycles: building one (and loading its
# MIB modules) every cycle left ~1 MB of native memory behind per cycle in the daemon.
_engines: WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = WeakKeyDictionary()


def _loop_engine():
    from pysnmp.hlapi.v3arch.asyncio import SnmpEngine

    loop = asyncio.get_running_loop()
    if loop not in _engines:
        _engines[loop] = _new_engine(SnmpEngine)
    return _engines[loop]


class EngineTransport:
    """SNMPv3 through the event loop's pysnmp engine (USM needs its engine-ID discovery and keys).

    pysnmp sends the retries itself: one request draws once from the rate limiter.
    ``close`` leaves the engine with no socket, its targets configured for the next client.
    """

    def __init__(self, client: SnmpClient):
        self.client = client
        self.engine = _loop_engine()
        self._auth = usm_user(client.credentials)

    async def target(self, address: IpAddress) -> Any:
        from pysnmp.hlapi.v3arch.asyncio import Udp6TransportTarget, UdpTransportTarget

        kind = Udp6TransportTarget if address.version == 6 else UdpTransportTarget
        return await kind.create((str(address), self.client.port), timeout=self.client.timeout,
                                 retries=self.client.retries)

    def close(self) -> None:
        self.engine.close_dispatcher()  # and its sockets
        # pysnmp's command generator remembers the transport it opened; forget it, so that the
        # next client of this engine opens a socket (and a dispatcher) of its own. The targets
        # and credentials it configured stay, for the next cycle to reuse.
        configured = self.engine.get_user_context("CommandGeneratorLcdConfigurator")
        if configured:
            configured["tran"].clear()

    async def request(self, target: Any, kind: str, oids: Sequence[Oid]) -> Answer:
        from pysnmp.hlapi.v3arch.asyncio import ContextData, ObjectIdentity, ObjectType, bulk_cmd, get_cmd
        from pysnmp.proto.errind import RequestTimedOut

        command, repetitions = (bulk_cmd, (0, MAX_REPETITIONS)) if kind == GETBULK else (get_cmd, ())
        await self.client.rate.acquire(1)
        indication, status, _index, varbinds = await command(
            self.engine, self._auth, target, ContextData(), *repetitions,
            *(ObjectType(ObjectIdentity(o)) for o in oids), lookupMib=False)
        if isinstance(indication, RequestTimedOut):
            raise NoAnswer(str(indication))
        if indication:
            raise Refused(str(indication))
        return int(status), [(tuple(name), value) for name, value in varbinds]


def plain(value: Any) -> Any:
    """A pysnmp value as bytes, int or OID tuple; None for noSuchObject, noSuchInstance, endOfMibView."""
    from pyasn1.type import univ

    if type(value).__name__ in ("NoSuchObject", "NoSuchInstance", "EndOfMibView", "Null"):
        return None
    if isinstance(value, univ.ObjectIdentifier):
        return tuple(value)
    if hasattr(value, "asOctets"):
        return bytes(value.asOctets())
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# -- decoding ------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def device_text(value: Any, limit: int = MAX_NAME) -> str:
    """A device's string, safe to store: decoded, control characters removed, trimmed, bounded."""
    if isinstance(value, bytes):
        value = value[: limit * 4].decode("utf-8", "replace")
    elif not isinstance(value, str):
        return ""
    return _CONTROL.sub(" ", value).strip()[:limit]


def mac_from_octets(value: Any) -> str | None:
    """``aa:bb:cc:dd:ee:ff`` from exactly 6 bytes; anything else is no MAC."""
    if not isinstance(value, bytes) or len(value) != 6:
        return None
    return ":".join(f"{b:02x}" for b in value)


def _octets(parts: Sequence[int]) -> bytes:
    if any(not 0 <= p <= 255 for p in parts):
        raise ValueError("an OID part is not a byte")
    return bytes(parts)


ADDRESS_LENGTHS = {1: (4,), 2: (16,), 3: (8,), 4: (16, 20)}  # ipv4, ipv6, ipv4z, ipv6z (zone dropped)


def address_from_oid(parts: Sequence[int]) -> tuple[IpAddress, Oid]:
    """``type.length.bytes…`` (an InetAddressType + InetAddress index) → the address and the rest.

    ``1.4.a.b.c.d`` IPv4, ``2.16.<16 bytes>`` IPv6, ``3.8`` IPv4z, ``4.16``/``4.20`` IPv6z.
    ValueError when the parts do not make one.
    """
    if len(parts) < 2 or parts[0] not in ADDRESS_LENGTHS or parts[1] not in ADDRESS_LENGTHS[parts[0]]:
        raise ValueError(f"not an encoded address: {'.'.join(map(str, parts[:2]))}")
    length = parts[1]
    raw = _octets(parts[2: 2 + length])
    if len(raw) != length:
        raise ValueError("encoded address cut short")
    address = ipaddress.ip_address(raw[:4] if parts[0] in (1, 3) else raw[:16])
    return address, tuple(parts[2 + length:])


def ipv4_from_oid(parts: Sequence[int]) -> ipaddress.IPv4Address:
    if len(parts) != 4:
        raise ValueError("not four parts")
    return ipaddress.IPv4Address(_octets(parts))


@dataclass
class Interface:
    index: int
    name: str = ""
    mac: str | None = None
    type: int = 0
    admin: int = 0
    oper: int = 0


@dataclass(frozen=True)
class Route:
    destination: ipaddress.IPv4Network | ipaddress.IPv6Network
    next_hop: IpAddress
    if_index: int
    type: int


def _by_index(rows: Rows) -> dict[Oid, Any]:
    return dict(rows)


def parse_interfaces(names: Rows, macs: Rows, types: Rows, admin: Rows, oper: Rows, indexes: Rows) -> dict[int, Interface]:
    """ifTable/ifXTable columns, joined on ifIndex."""
    found: dict[int, Interface] = {}

    def entry(suffix: Oid) -> Interface | None:
        if len(suffix) != 1:
            return None
        return found.setdefault(suffix[0], Interface(suffix[0]))

    for suffix, _ in indexes:
        entry(suffix)
    for column, setter in ((names, lambda i, v: setattr(i, "name", device_text(v))),
                           (macs, lambda i, v: setattr(i, "mac", mac_from_octets(v))),
                           (types, lambda i, v: setattr(i, "type", v if isinstance(v, int) else 0)),
                           (admin, lambda i, v: setattr(i, "admin", v if isinstance(v, int) else 0)),
                           (oper, lambda i, v: setattr(i, "oper", v if isinstance(v, int) else 0))):
        for suffix, value in column:
            interface = entry(suffix)
            if interface is not None:
                setter(interface, value)
    return found


def parse_ip_addr_table(addrs: Rows, masks: Rows, if_indexes: Rows) -> list[tuple[int, IpInterface]]:
    """ipAddrTable (IPv4): address, netmask and ifIndex matched by the address in the OID index."""
    mask_of, index_of = _by_index(masks), _by_index(if_indexes)
    found = []
    for suffix, value in addrs:
        mask, if_index = mask_of.get(suffix), index_of.get(suffix)
        if not isinstance(value, bytes) or len(value) != 4 or not isinstance(mask, bytes) or len(mask) != 4:
            continue
        if not isinstance(if_index, int):
            continue
        try:
            found.append((if_index, ipaddress.IPv4Interface(f"{ipaddress.IPv4Address(value)}/"
                                                            f"{ipaddress.IPv4Address(mask)}")))
        except ValueError:
            continue  # a netmask that is not one
    return found


def parse_ip_address_tables(prefix_origins: Rows, address_if_indexes: Rows) -> list[tuple[int, IpInterface]]:
    """ipAddressPrefixTable + ipAddressTable: each interface address with the prefix holding it.

    Prefix index: ifIndex . type . length . address bytes . prefix length;
    ipAddressIfIndex index: type . length . address bytes, value the ifIndex.
    """
    prefixes: dict[int, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}
    for suffix, _ in prefix_origins:
        try:
            network_address, rest = address_from_oid(suffix[1:])
            if len(rest) != 1:
                continue
            network = ipaddress.ip_network(f"{network_address}/{rest[0]}", strict=False)
        except ValueError:
            continue
        prefixes.setdefault(suffix[0], []).append(network)
    found = []
    for suffix, if_index in address_if_indexes:
        try:
            address, rest = address_from_oid(suffix)
        except ValueError:
            continue
        if rest or not isinstance(if_index, int):
            continue
        holding = [n for n in prefixes.get(if_index, ()) if n.version == address.version and address in n]
        if holding:
            best = max(holding, key=lambda n: n.prefixlen)
            found.append((if_index, ipaddress.ip_interface(f"{address}/{best.prefixlen}")))
    return found


def parse_cidr_routes(if_indexes: Rows, types: Rows) -> list[Route]:
    """inetCidrRouteTable: destination, prefix, policy and next hop decoded from the index."""
    type_of = _by_index(types)
    routes = []
    for suffix, if_index in if_indexes:
        try:
            destination, rest = address_from_oid(suffix)
            prefix, policy_length = rest[0], rest[1]
            next_hop, tail = address_from_oid(rest[2 + policy_length:])
            network = ipaddress.ip_network(f"{destination}/{prefix}", strict=False)
        except (ValueError, IndexError):
            continue
        kind = type_of.get(suffix)
        if tail or not isinstance(if_index, int) or not isinstance(kind, int):
            continue
        routes.append(Route(network, next_hop, if_index, kind))
    return routes


def parse_forward_routes(dests: Rows, masks: Rows, next_hops: Rows, if_indexes: Rows, types: Rows) -> list[Route]:
    """ipForwardTable (IPv4): columns matched by their common index."""
    mask_of, hop_of, index_of, type_of = map(_by_index, (masks, next_hops, if_indexes, types))
    routes = []
    for suffix, dest in dests:
        mask, hop, if_index, kind = mask_of.get(suffix), hop_of.get(suffix), index_of.get(suffix), type_of.get(suffix)
        if not all(isinstance(v, bytes) and len(v) == 4 for v in (dest, mask, hop)):
            continue
        if not isinstance(if_index, int) or not isinstance(kind, int):
            continue
        try:
            network = ipaddress.IPv4Network(f"{ipaddress.IPv4Address(dest)}/{ipaddress.IPv4Address(mask)}",
                                            strict=False)
        except ValueError:
            continue
        routes.append(Route(network, ipaddress.IPv4Address(hop), if_index, kind))
    return routes


# -- what gets stored --------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceSubnet:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    address: str  # the interface's address in it
    gateway: str  # '' unless the interface's gateway lies inside


@dataclass
class DeviceNic:
    name: str
    mac: str
    ips: list[str]
    gateway: str
    flags: dict[str, bool]
    subnets: list[DeviceSubnet]


@dataclass
class Device:
    address: IpAddress
    system: dict[Oid, Any] = field(default_factory=dict)
    interfaces: dict[int, Interface] = field(default_factory=dict)
    addresses: list[tuple[int, IpInterface]] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    over_budget: bool = False  # its walks stopped at the row budget: what it said is incomplete


def interface_flags(interface: Interface) -> dict[str, bool]:
    """flags as the original derives them from ifAdminStatus, ifOperStatus and ifType (§1.4 keys)."""
    flags = {"up": interface.admin == 1}
    loopback = interface.type == IF_TYPE_LOOPBACK
    candidates = {
        "running": interface.oper == 1,
        "loopback": loopback,
        "broadcast": not loopback and interface.type != IF_TYPE_TUNNEL,
        "multicast": not loopback,
        "point_to_point": interface.type == IF_TYPE_TUNNEL,
    }
    flags.update({k: True for k, v in candidates.items() if v})
    return flags


def device_nics(device: Device) -> list[DeviceNic]:
    """The interfaces worth storing: a real MAC and an IPv4 gateway (next hop of a remote route)."""
    gateways: dict[int, str] = {}
    for route in device.routes:
        if route.type == ROUTE_REMOTE and route.next_hop.version == 4 and not route.next_hop.is_unspecified:
            gateways.setdefault(route.if_index, str(route.next_hop))
    nics = []
    for index in sorted(device.interfaces):
        interface = device.interfaces[index]
        gateway = gateways.get(index)
        if not interface.mac or interface.mac.startswith("00:00:00") or gateway is None:
            continue
        ips, subnets = [], []
        for if_index, address in device.addresses:
            if if_index != index or str(address.ip) in ips:
                continue
            ips.append(str(address.ip))
            if address.ip.is_loopback or address.ip.is_link_local:
                continue
            network = address.network
            inside = network.version == 4 and ipaddress.ip_address(gateway) in network
            subnets.append(DeviceSubnet(network, str(address.ip), gateway if inside else ""))
        nics.append(DeviceNic(interface.name, interface.mac, ips, gateway, interface_flags(interface), subnets))
    return nics


ARCHES = ("x86_64", "aarch64", "arm64", "i386")


def system_facts(system: Mapping[Oid, Any]) -> dict[str, Any]:
    """Machine columns from the system group; only what the device actually told."""
    facts: dict[str, Any] = {}
    name = device_text(system.get(SYS_NAME))
    if name:
        facts["hostname"] = name
    uptime = system.get(SYS_UPTIME)
    if isinstance(uptime, int) and 0 <= uptime <= MAX_TIME_TICKS:  # a huge Counter64 in its place is no uptime
        facts["uptime"] = uptime * 10_000_000  # hundredths of a second → nanoseconds
    descr = device_text(system.get(SYS_DESCR), MAX_DESCR).lower()
    if "linux" in descr:
        facts["platform"] = "linux"
    if "windows" in descr:
        facts["platform"] = "windows"
    if "debian" in descr:
        facts["distribution"] = facts["distribution_family"] = "debian"
    if "ubuntu" in descr:
        facts["distribution"], facts["distribution_family"] = "ubuntu", "debian"
    if "raspberry" in descr:
        facts["chassis"] = "raspberry"
    for arch in ARCHES:  # later ones win
        if arch in descr:
            facts["arch"] = arch
    services = system.get(SYS_SERVICES)
    if isinstance(services, int) and 0 <= services <= MAX_SERVICES:
        facts["services"] = services
    return facts


def chassis_from_services(services: int) -> str:
    """sysServices: a network-layer device is a router, else a data-link one a switch (none with layer 7)."""
    if services & 64:
        return ""
    if services & 4:
        return "router"
    if services & 2:
        return "switch"
    return ""


# -- one device --------------------------------------------------------------------------


async def read_device(client: SnmpClient, address: IpAddress,
                      walking: AbstractAsyncContextManager[Any] | None = None) -> Device | None:
    """Everything §4.16 asks of one address; None when nothing answers the probe.

    ``walking`` (a semaphore) is held from the probe's answer to the end, so that
    many silent targets can be probed at once while few devices are walked at once.
    Refused propagates (bad credentials); a device that stops answering midway,
    or that runs through its row budget, keeps what it already said.
    """
    session = await client.session(address)
    try:
        await session.get([PROBE])
    except NoAnswer:
        return None
    async with walking or contextlib.nullcontext():
        return await _read_answering(session, address)


async def _read_answering(session: Session, address: IpAddress) -> Device:
    device = Device(address)
    try:
        device.system = await session.get([SYS_DESCR, SYS_UPTIME, SYS_NAME, SYS_SERVICES])
        columns = [await session.walk(c) for c in (IF_NAME, IF_PHYS_ADDRESS, IF_TYPE, IF_ADMIN_STATUS,
                                                    IF_OPER_STATUS, IF_INDEX)]
        device.interfaces = parse_interfaces(*columns)
        device.addresses = await _addresses(session)
        device.routes = await _routes(session)
    except NoAnswer:
        pass
    device.over_budget = session.over_budget
    return device


async def _addresses(session: Session) -> list[tuple[int, IpInterface]]:
    """ipAddrTable (IPv4), completed by ipAddressTable (IPv6 too) for addresses it lacks."""
    legacy = parse_ip_addr_table(*[await session.walk(c) for c in (IP_ADDR_ENTRY_ADDR, IP_ADDR_ENTRY_NET_MASK,
                                                                  IP_ADDR_ENTRY_IF_INDEX)])
    modern = parse_ip_address_tables(await session.walk(IP_ADDRESS_PREFIX_ORIGIN),
                                     await session.walk(IP_ADDRESS_IF_INDEX))
    return merge_addresses(legacy, modern)


def merge_addresses(first: Iterable[tuple[int, IpInterface]], second: Iterable[tuple[int, IpInterface]]):
    seen: set[tuple[int, str]] = set()
    merged = []
    for if_index, address in (*first, *second):
        if (if_index, str(address.ip)) not in seen:
            seen.add((if_index, str(address.ip)))
            merged.append((if_index, address))
    return merged


async def _routes(session: Session) -> list[Route]:
    routes = parse_cidr_routes(await session.walk(INET_CIDR_ROUTE_IF_INDEX), await session.walk(INET_CIDR_ROUTE_TYPE))
    if routes:
        return routes
    return parse_forward_routes(*[await session.walk(c) for c in (IP_FORWARD_DEST, IP_FORWARD_MASK,
                                                                 IP_FORWARD_NEXT_HOP, IP_FORWARD_IF_INDEX,
                                                                 IP_FORWARD_TYPE)])

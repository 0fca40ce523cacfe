"""A small Docker Engine API client: where the engine is, GET requests, and what its answers mean.

Only what the docker module reads: ``/_ping`` (API version negotiation),
``/networks`` and ``/networks/{id}``, ``/containers/json?all=1``. Requests are
plain HTTP/1.1 GETs over asyncio streams (a Unix socket, or TCP with optional
TLS), parsed by h11, one connection per request. aiohttp would do the same at
about 26 MB and a second of import time; h11 costs 4 MB and is imported only
when an engine is actually there.

Where the engine is (the Docker CLI's environment): ``DOCKER_HOST``
(``unix:///path`` or ``tcp://host:port``), ``DOCKER_API_VERSION``,
``DOCKER_TLS_VERIFY`` (non-empty: TLS, server certificate verified against
``ca.pem``), ``DOCKER_CERT_PATH`` (directory of ``ca.pem``, ``cert.pem``,
``key.pem``; default ``~/.docker``; set alone it turns TLS on without
verification, as docker-py does). ``--docker-host`` set to anything but its
default wins over ``DOCKER_HOST``.

Everything the engine says is untrusted: bodies are capped, identifiers,
addresses, MACs and port numbers are validated, text is cut to a bound, and
anything malformed is dropped rather than stored. No database code here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from situation.errors import ConfigError, SituationError

DEFAULT_HOST = "unix:///var/run/docker.sock"
MAX_BODY = 32 * 1024 * 1024  # bytes of one answer; a larger one is refused
REQUEST_TIMEOUT = 15.0  # seconds for one request, connect to last byte
MAX_API = (1, 44)  # the newest API version asked for; older engines are met at theirs
MAX_ID, MAX_NAME, MAX_IMAGE = 128, 256, 512  # characters kept of engine strings
TRANSPORTS = frozenset({"tcp", "udp", "sctp"})
SWARM_SERVICE_LABEL = "com.docker.swarm.service.id"
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"

_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]{0,127}$")
_API_VERSION = re.compile(r"^(\d{1,2})\.(\d{1,3})$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class EngineError(SituationError):
    """The engine answered, but not with what the API promises (HTTP error, bad JSON)."""


class EngineUnavailable(Exception):
    """Nothing answers at the engine address (no socket, refused, timed out)."""


# -- where the engine is ------------------------------------------------------------


@dataclass(frozen=True)
class EngineAddress:
    url: str  # as configured, for log lines
    source: str  # "DOCKER_HOST", "--docker-host" or "default"
    unix_path: str | None = None
    host: str | None = None
    port: int | None = None
    tls: bool = False
    verify: bool = False
    cert_dir: str | None = None
    api_version: str | None = None  # DOCKER_API_VERSION, else negotiated


def engine_address(option: str, environ: Mapping[str, str]) -> EngineAddress:
    """The engine to ask: ``--docker-host`` when set to a non-default value, else DOCKER_HOST, else the default."""
    option = (option or "").strip()
    if option and option != DEFAULT_HOST:
        url, source = option, "--docker-host"
    elif environ.get("DOCKER_HOST", "").strip():
        url, source = environ["DOCKER_HOST"].strip(), "DOCKER_HOST"
    else:
        url, source = DEFAULT_HOST, "default"
    api_version = environ.get("DOCKER_API_VERSION", "").strip() or None
    if api_version is not None and not _API_VERSION.match(api_version):
        raise ConfigError(f"DOCKER_API_VERSION={api_version!r} is not an API version; use e.g. 1.41, or unset it")
    parts = urlsplit(url)
    if parts.scheme == "unix":
        path = parts.path or parts.netloc
        if not path:
            raise ConfigError(f"{source} {url!r} names no socket; use unix:///var/run/docker.sock")
        return EngineAddress(url, source, unix_path=path, api_version=api_version)
    if parts.scheme == "tcp":
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            host = port = None
        if not host or not port:
            raise ConfigError(f"{source} {url!r} needs a host and a port; use tcp://HOST:2376")
        verify = bool(environ.get("DOCKER_TLS_VERIFY", ""))
        cert_path = environ.get("DOCKER_CERT_PATH", "").strip()
        tls = verify or bool(cert_path)
        cert_dir = (cert_path or str(Path(environ.get("HOME", "/root")) / ".docker")) if tls else None
        return EngineAddress(url, source, host=host, port=port, tls=tls, verify=verify, cert_dir=cert_dir,
                             api_version=api_version)
    raise ConfigError(f"{source} {url!r}: only unix:// and tcp:// engine addresses are supported")


def tls_context(address: EngineAddress) -> ssl.SSLContext:
    """The client TLS context for a tcp:// engine (blocking: reads the certificate files)."""
    directory = Path(address.cert_dir or ".")
    ca, cert, key = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    try:
        if address.verify:
            context = ssl.create_default_context(cafile=str(ca))
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert.exists() or key.exists():
            context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use the Docker TLS files in {directory} (ca.pem, cert.pem, key.pem): {exc}; "
                          "fix DOCKER_CERT_PATH or DOCKER_TLS_VERIFY") from None
    return context


# -- what the engine says -------------------------------------------------------------


@dataclass(frozen=True)
class PortBinding:
    host_ip: str  # '' when the engine names no address (podman): every address
    private_port: int
    public_port: int | None  # None: exposed, not published
    transport: str


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    image: str
    created: int  # unix seconds
    running: bool
    swarm_task: bool
    ports: tuple[PortBinding, ...] = ()


@dataclass(frozen=True)
class Attachment:
    """A container's endpoint on a network, as the network's inspection reports it."""

    container_id: str
    mac: str | None
    ipv4: str | None
    ipv6: str | None  # global addresses only


@dataclass(frozen=True)
class IpamConfig:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: str  # '' when none or not inside the network


@dataclass(frozen=True)
class Network:
    id: str
    name: str
    driver: str
    bridge_name: str | None
    configs: tuple[IpamConfig, ...] = ()
    attachments: tuple[Attachment, ...] = ()


@dataclass
class EngineState:
    containers: list[Container] = field(default_factory=list)
    networks: list[Network] = field(default_factory=list)


def text(value: Any, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


def identifier(value: Any) -> str | None:
    return value if isinstance(value, str) and _ID.match(value) else None


def port_number(value: Any) -> int | None:
    return value if type(value) is int and 0 < value < 65536 else None


def plain_ip(value: Any, *, with_prefix: bool = False) -> str | None:
    """A canonical address string, or None; ``10.0.0.2/16`` is accepted with ``with_prefix``."""
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    try:
        address = ipaddress.ip_interface(value).ip if with_prefix else ipaddress.ip_address(value)
    except ValueError:
        return None
    return str(address)


def mac_address(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    mac = value.strip().lower()
    return mac if _MAC.match(mac) and mac != "00:00:00:00:00:00" else None


def split_image(reference: str) -> tuple[str, str]:
    """(name, tag) of an image reference; the tag follows the last ':' after the last '/'.

    ``host:5000/team/app:1.2@sha256:…`` → ``("host:5000/team/app", "1.2")``; no tag
    → ``latest``; an image id (``sha256:…``) is a name without tag.
    """
    reference = reference.split("@", 1)[0]
    if reference.startswith("sha256:") or not reference:
        return reference, ""
    colon = reference.rfind(":")
    if colon > reference.rfind("/"):
        return reference[:colon], reference[colon + 1:] or "latest"
    return reference, "latest"


def parse_port(entry: Any) -> PortBinding | None:
    if not isinstance(entry, dict):
        return None
    private = port_number(entry.get("PrivatePort"))
    transport = entry.get("Type")
    if private is None or transport not in TRANSPORTS:
        return None
    host_ip = entry.get("IP") or ""
    if host_ip:
        host_ip = plain_ip(host_ip)
        if host_ip is None:
            return None
    return PortBinding(host_ip, private, port_number(entry.get("PublicPort")), transport)


def parse_container(entry: Any) -> Container | None:
    """A ``/containers/json`` entry; None when its id is missing or malformed."""
    if not isinstance(entry, dict) or (container_id := identifier(entry.get("Id"))) is None:
        return None
    names = entry.get("Names")
    name = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else ""
    created = entry.get("Created")
    labels = entry.get("Labels")
    ports = entry.get("Ports") if isinstance(entry.get("Ports"), list) else []
    parsed_ports = (parse_port(p) for p in ports)
    return Container(
        id=container_id,
        name=name.lstrip("/")[:MAX_NAME],
        image=text(entry.get("Image"), MAX_IMAGE),
        created=created if type(created) is int and 0 < created < 2**40 else 0,
        running=entry.get("State") == "running",
        swarm_task=isinstance(labels, dict) and bool(labels.get(SWARM_SERVICE_LABEL)),
        ports=tuple(dict.fromkeys(p for p in parsed_ports if p is not None)),
    )


def parse_ipam(entry: Any) -> IpamConfig | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("Subnet"), str):
        return None
    try:
        network = ipaddress.ip_network(entry["Subnet"], strict=False)
    except ValueError:
        return None
    gateway = plain_ip(entry.get("Gateway"), with_prefix=True)
    inside = gateway is not None and ipaddress.ip_address(gateway) in network
    return IpamConfig(network, gateway if inside else "")


def parse_attachment(container_id: Any, entry: Any) -> Attachment | None:
    if (container_id := identifier(container_id)) is None or not isinstance(entry, dict):
        return None
    ipv6 = plain_ip(entry.get("IPv6Address"), with_prefix=True)
    if ipv6 is not None and not ipaddress.ip_address(ipv6).is_global:
        ipv6 = None
    ipv4 = plain_ip(entry.get("IPv4Address"), with_prefix=True)
    if ipv4 is not None and ":" in ipv4:
        ipv4 = None
    return Attachment(container_id, mac_address(entry.get("MacAddress")), ipv4, ipv6)


def parse_network(entry: Any) -> Network | None:
    """A ``/networks/{id}`` answer; None when its id is missing or malformed."""
    if not isinstance(entry, dict) or (network_id := identifier(entry.get("Id"))) is None:
        return None
    options = entry.get("Options") if isinstance(entry.get("Options"), dict) else {}
    bridge = options.get(BRIDGE_NAME_OPTION)
    ipam = entry.get("IPAM") if isinstance(entry.get("IPAM"), dict) else {}
    configs = ipam.get("Config") if isinstance(ipam.get("Config"), list) else []
    attached = entry.get("Containers") if isinstance(entry.get("Containers"), dict) else {}
    parsed_configs = (parse_ipam(c) for c in configs)
    parsed_attachments = (parse_attachment(k, v) for k, v in attached.items())
    return Network(
        id=network_id,
        name=text(entry.get("Name"), MAX_NAME),
        driver=text(entry.get("Driver"), MAX_NAME),
        bridge_name=bridge[:MAX_NAME] if isinstance(bridge, str) and bridge else None,
        configs=tuple(dict.fromkeys(c for c in parsed_configs if c is not None)),
        attachments=tuple(a for a in parsed_attachments if a is not None),
    )


def negotiated_version(header: str | None) -> str | None:
    """The engine's API version capped at ours; None (unversioned paths) when it names none."""
    match = _API_VERSION.match(header or "")
    if match is None:
        return None
    version = min((int(match.group(1)), int(match.group(2))), MAX_API)
    return f"{version[0]}.{version[1]}"


# -- talking to it --------------------------------------------------------------------


class DockerClient:
    def __init__(self, address: EngineAddress):
        self.address = address
        self.version = address.api_version
        self._ssl: ssl.SSLContext | None = None

    async def connect(self) -> None:
        """Ping the engine and settle the API version; EngineUnavailable when nothing answers."""
        if self.address.unix_path is not None and not os.path.exists(self.address.unix_path):
            raise EngineUnavailable(f"no socket at {self.address.unix_path}")
        if self.address.tls:
            self._ssl = await asyncio.to_thread(tls_context, self.address)
        status, headers, body = await self._get("/_ping", versioned=False)
        if status != 200:
            raise EngineError(f"the engine at {self.address.url} answered /_ping with HTTP {status}")
        if self.version is None:
            self.version = negotiated_version(headers.get("api-version"))

    async def state(self) -> EngineState:
        """Every container (running or not) and every network, inspected."""
        containers = await self.get_json("/containers/json", {"all": "1"})
        listed = await self.get_json("/networks")
        if not isinstance(containers, list) or not isinstance(listed, list):
            raise EngineError(f"the engine at {self.address.url} did not answer with lists")
        found = EngineState(containers=[c for c in map(parse_container, containers) if c is not None])
        ids = dict.fromkeys(i for n in listed if isinstance(n, dict) and (i := identifier(n.get("Id"))))
        for network_id in ids:
            network = parse_network(await self.get_json(f"/networks/{quote(network_id, safe='')}"))
            if network is not None:
                found.networks.append(network)
        return found

    async def get_json(self, path: str, query: Mapping[str, str] | None = None) -> Any:
        if query:
            path += "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items())
        status, _, body = await self._get(path)
        if status != 200:
            raise EngineError(f"the engine at {self.address.url} answered GET {path.split('?')[0]} "
                              f"with HTTP {status}: {_message(body)}")
        try:
            if len(body) > 1 << 20:
                return await asyncio.to_thread(json.loads, body)
            return json.loads(body)
        except ValueError:
            raise EngineError(f"the engine at {self.address.url} answered GET {path.split('?')[0]} "
                              "with something that is not JSON") from None

    async def _get(self, path: str, *, versioned: bool = True) -> tuple[int, dict[str, str], bytes]:
        target = f"/v{self.version}{path}" if versioned and self.version else path
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                reader, writer = await self._open()
                try:
                    return await _exchange(reader, writer, target, self.address.host or "docker")
                finally:
                    writer.close()
        except (TimeoutError, OSError) as exc:
            raise EngineUnavailable(_reason(exc)) from None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.address.unix_path is not None:
            return await asyncio.open_unix_connection(self.address.unix_path)
        return await asyncio.open_connection(self.address.host, self.address.port, ssl=self._ssl)


async def _exchange(reader, writer, target: str, host: str) -> tuple[int, dict[str, str], bytes]:
    """One GET on a fresh connection: status, headers (lowercase names) and the body."""
    import h11

    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
    headers = [("Host", host), ("User-Agent", "situation"), ("Accept", "application/json"), ("Connection", "close")]
    writer.write(connection.send(h11.Request(method="GET", target=target, headers=headers)))
    writer.write(connection.send(h11.EndOfMessage()))
    await writer.drain()
    status, found, chunks, size = 0, {}, [], 0
    try:
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                found = {k.decode("latin-1").lower(): v.decode("latin-1")[:MAX_NAME] for k, v in event.headers}
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY:
                    raise EngineError(f"an answer of the engine exceeds {MAX_BODY >> 20} MiB; refused")
                chunks.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
    except h11.ProtocolError as exc:
        raise EngineError(f"the engine's answer is not valid HTTP: {exc}") from None
    return status, found, b"".join(chunks)


def _message(body: bytes) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        return "(no message)"
    message = document.get("message") if isinstance(document, dict) else None
    return message[:200] if isinstance(message, str) else "(no message)"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {REQUEST_TIMEOUT:g}s"
    return exc.strerror or str(exc) or type(exc).__name__

"""The snmp module against a real snmpd in a namespace lab (DEVELOPERS.md, rule 1), and its decoders.

Lab: the scanner namespace (where the modules run, behind the guard) and
three hosts: SWITCH runs snmpd (v2c and v3 authPriv) and has a default
route via the scanner, so its interface qualifies; SILENT runs nothing (one
timeout's cost); FENCED runs snmpd but is excluded from the snmp run. The
neighbour discovery modules run first; reverse-lookup names the hosts from
the scanner's /etc/netns hosts file, so their NICs have machines (a neighbour
without one is asked too: see test_services_lab.py). SQLite and PostgreSQL.
The light v1/v2c client is also run, in the scanner namespace, against a fake
agent on ::1 that lies before it answers, and its matching rules are fed
datagrams by hand (no packet).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import sys
from pathlib import Path

import pytest
from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import api
from support.cluster import clean_environ
from support.lab import Lab, LabHost
from support.neighbour_table import database  # noqa: F401 (fixture)
from support.snmpd import (AUTH_KEY, COMMUNITY, PRIV_KEY, SYS_NAME, USER, name_and_route, skip_unless_snmp_lab,
                           start_snmpd)

from situation.net import snmp
from situation.net.rate import RateLimiter

SWITCH = LabHost("198.51.100.10/24", "02:1a:b0:00:00:10")
SILENT = LabHost("198.51.100.11/24", "02:1a:b0:00:00:11")
FENCED = LabHost("198.51.100.12/24", "02:1a:b0:00:00:12")
DISCOVERY = ("fingerprint", "host-basic", "host-network", "ping", "arp", "reverse-lookup")
TABLES = ("machines", "network_interfaces", "network_interface_subnets", "subnetworks", "application_endpoints")
V2C = ("--option", f"snmp.community={COMMUNITY}", "--option", "snmp.timeout=1s")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    skip_unless_snmp_lab()
    made = Lab(hosts=[LabHost(h.address, h.mac) for h in (SWITCH, SILENT, FENCED)]).create()
    agents = []
    try:
        name_and_route(made, ["switch", "silent", "fenced"])
        for host in (made.hosts[0], made.hosts[2]):
            agents.append(start_snmpd(host.namespace, host.ip, tmp_path_factory.mktemp(host.namespace)))
        made.agents = agents
        yield made
    finally:
        for agent in agents:
            agent.stop()
        made.destroy()


def run(lab: Lab, db: str, *args: str, **env: str) -> tuple[dict, str]:
    environ = clean_environ(PYTHONPATH=str(Path(__file__).resolve().parents[1]), **env)
    result = lab.run_module("--db", db, *args, env=environ, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    *logs, report = result.stdout.splitlines()
    return json.loads(report), "\n".join(logs) + result.stderr


def snmp_line(logs: str) -> dict:
    """The key=value pairs of the module's summary line."""
    [line] = [line for line in logs.splitlines() if "SNMP agents queried" in line]
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}


def counts(db) -> dict[str, int]:
    return {table: int(db.query(f"SELECT count(*) FROM {db.table_prefix}{table}")[0][0]) for table in TABLES}


def switch_view(db) -> tuple:
    p = db.table_prefix
    [machine] = db.query(f"SELECT m.hostname, m.platform, m.distribution, m.distribution_family, m.arch, m.chassis, "
                         f"m.uptime FROM {p}machines m JOIN {p}network_interfaces n ON n.machine_id = m.id "
                         f"WHERE n.mac = '{SWITCH.mac}'")
    [nic] = db.query(f"SELECT name, gateway, {db.ip_json}, flags FROM {p}network_interfaces WHERE mac = '{SWITCH.mac}'")
    endpoints = db.query(f"SELECT e.port, e.protocol, e.addr FROM {p}application_endpoints e "
                         f"JOIN {p}network_interfaces n ON n.id = e.network_interface_id WHERE n.mac = '{SWITCH.mac}'")
    gateway = db.query(f"SELECT gateway FROM {p}subnetworks WHERE network_cidr = '198.51.100.0/24'")
    return machine, nic, [tuple(e) for e in endpoints], gateway


def assert_switch_recorded(db) -> None:
    machine, (name, gateway, ips, flags), endpoints, subnet_gateway = switch_view(db)
    assert tuple(machine[:6]) == (SYS_NAME, "linux", "debian", "debian", "x86_64", "router")
    assert int(machine[6]) > 0
    assert (name, gateway) == ("eth0", "198.51.100.1")
    assert SWITCH.ip in json.loads(ips)
    assert json.loads(flags) == {"up": True, "running": True, "broadcast": True, "multicast": True}
    assert [(int(p), proto, addr) for p, proto, addr in endpoints] == [(161, "udp", SWITCH.ip)]
    assert [tuple(g) for g in subnet_gateway] == [("198.51.100.1",)]


def test_v2c_records_the_switch_once_and_skips_the_excluded_and_the_silent(lab, database):
    run(lab, database.dsn, *DISCOVERY)
    switch, fenced = lab.agents
    before = counts(database)
    _, logs = run(lab, database.dsn, "--host-lookup", "--exclude", FENCED.ip, *V2C, "snmp")
    assert snmp_line(logs)["targets"] == 2 and snmp_line(logs)["answered"] == 1
    assert_switch_recorded(database)
    assert fenced.requests(lab.scanner_ip) == 0  # excluded: not one packet
    after = counts(database)
    assert after["application_endpoints"] == before["application_endpoints"] + 1
    assert after["network_interfaces"] == before["network_interfaces"]  # the arp NIC was matched by MAC

    _, logs = run(lab, database.dsn, "--host-lookup", "--exclude", FENCED.ip, *V2C, "snmp")
    assert counts(database) == after
    assert fenced.requests(lab.scanner_ip) == 0

    answered_before = switch.requests(lab.scanner_ip)
    _, logs = run(lab, database.dsn, "--host-lookup", "--exclude", FENCED.ip, "--option", "snmp.community=wrong",
                  "--option", "snmp.timeout=1s", "snmp")
    assert snmp_line(logs)["answered"] == 0
    assert switch.requests(lab.scanner_ip) - answered_before == 4  # the probe and its 3 retries, nothing more
    assert counts(database) == after
    assert "wrong" not in logs


def test_v3_auth_priv_records_and_a_wrong_key_records_nothing(lab, database, tmp_path):
    run(lab, database.dsn, *DISCOVERY)
    before = counts(database)
    key_file = tmp_path / "priv.key"
    key_file.write_text(PRIV_KEY + "\n")
    v3 = ("--host-lookup", "--exclude", FENCED.ip, "--option", "snmp.version=3", "--option", f"snmp.user={USER}",
          "--option", f"snmp.priv-key-file={key_file}", "--option", "snmp.timeout=1s")

    _, logs = run(lab, database.dsn, *v3, "snmp", SITUATION_SNMP_AUTH_KEY="wrong-auth-key")
    assert snmp_line(logs)["answered"] == 0
    assert "refused" in logs and "wrong-auth-key" not in logs and PRIV_KEY not in logs
    assert counts(database) == before

    _, logs = run(lab, database.dsn, *v3, "snmp", SITUATION_SNMP_AUTH_KEY=AUTH_KEY)
    assert snmp_line(logs)["answered"] == 1
    assert_switch_recorded(database)
    assert AUTH_KEY not in logs and PRIV_KEY not in logs
    after = counts(database)
    run(lab, database.dsn, *v3, "snmp", SITUATION_SNMP_AUTH_KEY=AUTH_KEY)
    assert counts(database) == after


FOUR_CYCLES = """
import asyncio, ipaddress, sys
from situation.net.rate import RateLimiter
from situation.net.snmp import Credentials, SnmpClient, read_device

ENGINE = ("pysnmp.hlapi", "pysnmp.entity.engine")
v1, v2c = Credentials(version=0, community=sys.argv[2]), Credentials(version=1, community=sys.argv[2])
v3 = Credentials(version=3, user=sys.argv[3], auth_key=sys.argv[4], priv_key=sys.argv[5])

async def main():
    for credentials in (v2c, v3, v1, v3):
        client = SnmpClient(credentials, port=161, timeout=1.0, retries=1, rate=RateLimiter(100))
        try:
            device = await read_device(client, ipaddress.ip_address(sys.argv[1]))
        finally:
            client.close()
        engine = sorted(m for m in sys.modules if m in ENGINE)
        print(device.system[(1, 3, 6, 1, 2, 1, 1, 5, 0)].decode(), len(device.interfaces), len(device.addresses),
              engine)

asyncio.run(main())
"""


def test_v2c_needs_no_engine_and_v3_reuses_its_engine_cycle_after_cycle(lab):
    # v1/v2c run on the light client: pysnmp's high-level API and engine (~12 MB with their MIB
    # modules) are never imported for them; v1 (GETNEXT walks) reads what v2c (GETBULK) does. v3 uses the event loop's one engine, kept between
    # cycles (no engine and MIB load per cycle, which kept ~1 MB each time), and the two kinds
    # of client take turns in one loop. Runs inside the lab's scanner namespace.
    environ = clean_environ(PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    result = lab.run(sys.executable, "-c", FOUR_CYCLES, SWITCH.ip, COMMUNITY, USER, AUTH_KEY, PRIV_KEY,
                     env=environ, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and lines[0].startswith(SYS_NAME), lines
    engine = str(["pysnmp.entity.engine", "pysnmp.hlapi"])
    assert lines[0].endswith(" []") and all(line.endswith(engine) for line in lines[1:]), lines
    assert len({line.rsplit(" [", 1)[0] for line in lines}) == 1, lines  # every cycle read the same device


FAKE_AGENT = r"""
import asyncio, ipaddress, json
from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import api
from situation.net.rate import RateLimiter
from situation.net.snmp import SYS_NAME, Credentials, NoAnswer, SnmpClient

PROTO = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]


def response(request, name, *, request_id=None, community=None):
    message, _ = decoder.decode(request, asn1Spec=PROTO.Message())
    answer = PROTO.apiMessage.get_response(message)
    pdu = PROTO.apiMessage.get_pdu(answer)
    PROTO.apiPDU.set_varbinds(pdu, [(SYS_NAME, PROTO.OctetString(name))])
    if request_id is not None:
        PROTO.apiPDU.set_request_id(pdu, request_id)
    if community is not None:
        PROTO.apiMessage.set_community(answer, community)
    return encoder.encode(answer)


class Agent(asyncio.DatagramProtocol):
    # Before its true answer, the agent (and an impostor on another port) sends what must be ignored.
    def __init__(self, honest, impostor):
        self.honest, self.impostor, self.tries = honest, impostor, 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, source):
        self.tries += 1
        if not self.honest:
            return
        request = PROTO.apiMessage.get_pdu(decoder.decode(data, asn1Spec=PROTO.Message())[0])
        request_id = int(PROTO.apiPDU.get_request_id(request))
        self.impostor.sendto(response(data, b"impostor"), source)
        lies = (response(data, b"wrong id", request_id=request_id ^ 1), b"\x30\x03not snmp", b"\x30\x80" * 5000,
                response(data, b"wrong community", community=b"other"), data, response(data, b"cut")[:-1])
        for lie in lies:
            self.transport.sendto(lie, source)
        self.transport.sendto(response(data, b"switch"), source)


async def main():
    loop = asyncio.get_running_loop()
    impostor, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("::1", 0))
    said = {}
    for honest in (True, False):
        endpoint, agent = await loop.create_datagram_endpoint(lambda: Agent(honest, impostor), local_addr=("::1", 0))
        client = SnmpClient(Credentials(community="lab"), port=endpoint.get_extra_info("sockname")[1], timeout=0.3,
                            retries=2, rate=RateLimiter(100))
        try:
            session = await client.session(ipaddress.ip_address("::1"))
            said["honest" if honest else "silent"] = (await session.get([SYS_NAME]))[SYS_NAME].decode()
        except NoAnswer:
            said["silent"] = "no answer"
        finally:
            client.close()
            endpoint.close()
        said["tries" if honest else "silent tries"] = agent.tries
    print(json.dumps(said))

asyncio.run(main())
"""


def test_only_the_answer_from_the_target_to_the_pending_request_is_taken(lab):
    # A fake v2c agent on ::1 (an IPv6 target, so the client's AF_INET6 socket), inside the lab's
    # scanner namespace. Before its true answer come an impostor's from another port, a wrong
    # request-id, garbage, deeply nested BER, a wrong community, the request itself and a cut
    # answer: all dropped without a word. A silent agent gets the first try and 2 retries.
    environ = clean_environ(PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    result = lab.run(sys.executable, "-c", FAKE_AGENT, env=environ, timeout=60)
    assert result.returncode == 0 and not result.stderr, result.stderr
    said = json.loads(result.stdout)
    assert said == {"honest": "switch", "tries": 1, "silent": "no answer", "silent tries": 3}


# -- decoders (no network) ----------------------------------------------------------------


async def test_an_answer_is_matched_by_request_id_source_version_and_community():
    # No packet: the light client's matching rules, fed datagrams by hand.
    proto = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    client = snmp.SnmpClient(snmp.Credentials(community="lab"), port=161, timeout=1, retries=0, rate=RateLimiter(1))
    transport = client.transport
    request = transport.encode(7, snmp.GET, [snmp.SYS_NAME])

    def answer(request_id=7, community=b"lab", version=1) -> bytes:
        message = proto.apiMessage.get_response(decoder.decode(request, asn1Spec=proto.Message())[0])
        proto.apiMessage.set_version(message, version)
        proto.apiMessage.set_community(message, community)
        proto.apiPDU.set_request_id(proto.apiMessage.get_pdu(message), request_id)
        proto.apiPDU.set_varbinds(proto.apiMessage.get_pdu(message), [(snmp.SYS_NAME, proto.OctetString(b"sw"))])
        return encoder.encode(message)

    pending = transport.pending[7] = snmp.Pending(ipaddress.ip_address("192.0.2.9"), 161,
                                                  asyncio.get_running_loop().create_future())
    source = ("192.0.2.9", 161)
    lies = [(answer(), ("192.0.2.9", 1161)), (answer(), ("192.0.2.8", 161)), (answer(request_id=8), source),
            (answer(community=b"other"), source), (answer(version=0), source), (request, source),
            (b"\x30\x03abc", source), (b"\x30\x80" * 5000, source), (answer()[:-1], source), (answer() + b"\0", source)]
    assert [transport.receive(data, where) for data, where in lies] == [False] * len(lies)
    assert not pending.answer.done()
    assert transport.receive(answer(), source) and not transport.receive(answer(), source)  # the first one only
    status, [(name, value)] = pending.answer.result()
    assert (status, name, snmp.plain(value)) == (0, snmp.SYS_NAME, b"sw")


class Outbox:
    """Stands in for the client's UDP socket: keeps what is sent (no packet leaves this test)."""

    def __init__(self):
        self.sent = []

    def sendto(self, data, address):
        self.sent.append((data, address))

    def close(self):
        pass


async def test_a_cancelled_request_stays_cancelled_when_its_answer_arrives_at_the_same_moment():
    # The module's deadline and an answer in one loop iteration: Python 3.11's asyncio.wait_for
    # returned the answer and dropped the cancellation, so a device past the deadline was walked on.
    client = snmp.SnmpClient(snmp.Credentials(community="lab"), port=161, timeout=5, retries=0, rate=RateLimiter(100))
    transport, outbox = client.transport, Outbox()
    transport.sockets[4] = outbox
    asking = asyncio.create_task(transport.request(ipaddress.ip_address("192.0.2.9"), snmp.GET, [snmp.SYS_NAME]))
    while not outbox.sent:
        await asyncio.sleep(0)
    [(request, (address, port))] = outbox.sent
    proto = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    answer = encoder.encode(proto.apiMessage.get_response(decoder.decode(request, asn1Spec=proto.Message())[0]))

    def answer_and_cancel():
        assert transport.receive(answer, (address, port))
        asking.cancel()

    asyncio.get_running_loop().call_soon(answer_and_cancel)
    with pytest.raises(asyncio.CancelledError):
        await asking
    assert not transport.pending


def test_addresses_in_oids_parse_every_byte_including_255():
    ipv6 = (2, 16, 254, 128, 0, 0, 0, 0, 0, 0, 147, 108, 137, 216, 161, 31, 176, 130, 7, 8, 9)
    assert snmp.address_from_oid(ipv6) == (ipaddress.ip_address("fe80::936c:89d8:a11f:b082"), (7, 8, 9))
    assert snmp.address_from_oid((1, 4, 255, 255, 255, 0, 24)) == (ipaddress.ip_address("255.255.255.0"), (24,))
    ipv6z = (4, 20, *([255] * 16), 0, 0, 0, 3)
    assert snmp.address_from_oid(ipv6z) == (ipaddress.ip_address("ffff:" * 7 + "ffff"), ())
    for bad in ((1, 4, 10, 0, 256, 1), (1, 4, 10, 0), (2, 4, 1, 2, 3, 4), (9, 4, 1, 2, 3, 4), ()):
        with pytest.raises(ValueError):
            snmp.address_from_oid(bad)


def test_device_strings_and_macs_are_bounded_and_clean():
    assert snmp.device_text(b"sw\x00itch\x1b[31m\xff\n") == "sw itch [31m\ufffd"
    assert len(snmp.device_text(b"x" * 10_000)) == snmp.MAX_NAME
    assert snmp.device_text(12) == ""
    assert snmp.mac_from_octets(bytes.fromhex("0011223344ff")) == "00:11:22:33:44:ff"
    assert snmp.mac_from_octets(b"\x00\x11\x22") is None and snmp.mac_from_octets("aa") is None


def test_routes_addresses_and_the_nics_worth_storing():
    cidr_index = (1, 4, 0, 0, 0, 0, 0, 2, 0, 0, 1, 4, 192, 0, 2, 1)
    routes = snmp.parse_cidr_routes([(cidr_index, 3), ((1, 4, 10), 3)], [(cidr_index, 4)])
    assert routes == [snmp.Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("192.0.2.1"), 3, 4)]
    addresses = snmp.parse_ip_addr_table([((192, 0, 2, 5), b"\xc0\x00\x02\x05")], [((192, 0, 2, 5), b"\xff\xff\xff\x00")],
                                         [((192, 0, 2, 5), 3)])
    modern = snmp.parse_ip_address_tables([((3, 2, 16, 32, 1, 13, 184, *([0] * 12), 64), 2)],
                                          [((2, 16, 32, 1, 13, 184, *([0] * 11), 5), 3)])
    interfaces = snmp.parse_interfaces([((3,), b"eth0"), ((4,), b"lo")], [((3,), bytes.fromhex("02aabbccddee"))],
                                       [((3,), 6), ((4,), 24)], [((3,), 1)], [((3,), 2)], [((3,), 3), ((4,), 4)])
    device = snmp.Device(ipaddress.ip_address("192.0.2.5"), interfaces=interfaces,
                         addresses=snmp.merge_addresses(addresses, modern), routes=routes)
    [nic] = snmp.device_nics(device)
    assert (nic.name, nic.mac, nic.ips, nic.gateway) == ("eth0", "02:aa:bb:cc:dd:ee", ["192.0.2.5", "2001:db8::5"],
                                                         "192.0.2.1")
    assert nic.flags == {"up": True, "broadcast": True, "multicast": True}
    assert [(str(s.network), s.gateway) for s in nic.subnets] == [("192.0.2.0/24", "192.0.2.1"), ("2001:db8::/64", "")]


def test_system_group_and_credentials():
    facts = snmp.system_facts({snmp.SYS_NAME: b"core\x07-1", snmp.SYS_UPTIME: 250, snmp.SYS_SERVICES: 6,
                               snmp.SYS_DESCR: b"Linux rpi 6.1 Ubuntu raspberry aarch64"})
    assert facts == {"hostname": "core -1", "uptime": 2_500_000_000, "platform": "linux", "distribution": "ubuntu",
                     "distribution_family": "debian", "chassis": "raspberry", "arch": "aarch64", "services": 6}
    assert (snmp.chassis_from_services(6), snmp.chassis_from_services(2), snmp.chassis_from_services(72)) == (
        "router", "switch", "")
    huge = 2**64 - 1  # a Counter64 where TimeTicks and INTEGER (0..127) belong: no uptime, no services
    assert snmp.system_facts({snmp.SYS_UPTIME: huge, snmp.SYS_SERVICES: huge, snmp.SYS_DESCR: 42}) == {}
    assert snmp.system_facts({snmp.SYS_UPTIME: 2**32 - 1})["uptime"] == (2**32 - 1) * 10_000_000
    assert snmp.check_credentials(snmp.Credentials(version=1)) is None
    assert "--snmp-version 2" in snmp.check_credentials(snmp.Credentials(version=2))
    assert "--snmp-user" in snmp.check_credentials(snmp.Credentials(version=3))
    assert "8 characters" in snmp.check_credentials(snmp.Credentials(version=3, user="u", auth_key="short"))
    assert "secret" not in repr(snmp.Credentials(community="secret", auth_key="secret-key"))


BAD_SETTINGS = [
    ({"version": 2}, "--snmp-version 2 is not supported; use 0 (v1), 1 (v2c, the default) or 3 (v3)"),
    ({"version": 3}, "--snmp-version 3 needs --snmp-user"),
    ({"transport": "tcp"}, "--snmp-transport 'tcp' is not supported; use udp"),
    ({"port": 70000}, "--snmp-port 70000 is not a port number"),
    ({"auth-protocol": "md4"}, "--snmp-auth-protocol 'md4' is not one of md5, sha"),
    ({"version": 3, "user": "u", "priv-protocol": "rc4"}, "--snmp-priv-protocol 'rc4' is not one of des, 3des"),
    ({"priv-key-file": "/nonexistent/priv.key"}, "--snmp-priv-key-file: cannot read /nonexistent/priv.key"),
]


@pytest.mark.parametrize(("options", "message"), BAD_SETTINGS)
def test_snmp_settings_are_checked_when_the_agent_starts(options, message, tmp_path, monkeypatch):
    from situation.agent import Agent, AgentConfig
    from situation.errors import ConfigError

    monkeypatch.delenv("SITUATION_SNMP_AUTH_KEY", raising=False)
    monkeypatch.delenv("SITUATION_SNMP_PRIV_KEY", raising=False)
    config = AgentConfig(dsn=None, state_dir=tmp_path, agent_id="ab" * 16, module_options={"snmp": options})
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        Agent(config)  # constructing it checks; nothing is opened or sent
    Agent(AgentConfig(dsn=None, state_dir=tmp_path, agent_id="ab" * 16, module_options={"snmp": options},
                      disabled={"snmp"}))  # a disabled module's settings are not its concern

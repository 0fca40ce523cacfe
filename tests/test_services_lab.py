"""Services on neighbours end to end (issue 9, "Done when"), in a namespace lab (DEVELOPERS.md, rule 1).

One `situation run --once` (the real CLI, a subprocess in the lab's scanner
namespace, behind the guard) must record every open port, certificate, JA4
fingerprint, SNMP view and SaaS label of the lab's hosts; a second run must
change no row count. SQLite and PostgreSQL (over its Unix socket, which
crosses namespaces). The lab is made once per file; both runs are shared by
the asserting tests below.

    scanner 198.51.100.1/24 + 160.79.104.1/24 on br0 (the agent runs here)
    WEB      198.51.100.10  ssh/http listeners; TLS with DNS names (one of them GitHub's) on 443 and 8443
    DEVICE   198.51.100.11  TLS with an IP-only certificate on 443; a printer port
    FILTERED 198.51.100.12  listens on 22 and 443, but nftables drops every TCP segment
    SWITCH   198.51.100.13  snmpd (v2c), a default route via the scanner; no name in DNS or hosts
    SAAS     160.79.104.10  http, inside Anthropic's published network (data.json)

Every host but SWITCH is named in the scanner's hosts file, so reverse-lookup
gives it a machine; SWITCH's NIC gets one from snmp, named by its sysName
(docs/discovery.md, "Neighbours without a machine").
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography.x509.oid import NameOID
from support.cluster import clean_environ
from support.lab import Lab, LabHost, skip_without_lab
from support.listeners import filter_tcp, start_listeners, stop
from support.neighbour_table import PostgresDb, SqliteDb
from support.snmpd import COMMUNITY, SYS_NAME, snmpd_available, start_snmpd
from support.tls_servers import make_certificate, serve
from test_tls_lab import assert_matches_openssl

from situation.net.ja4 import ja4x

AGENT_ID = "5e7f1ce55e7f1ce55e7f1ce55e7f1ce5"
SCANNER = "198.51.100.1"  # the lab's scanner: the agent's host, and the switch's default gateway
WEB = LabHost("198.51.100.10/24", "02:1a:b0:00:01:10")
DEVICE = LabHost("198.51.100.11/24", "02:1a:b0:00:01:11")
FILTERED = LabHost("198.51.100.12/24", "02:1a:b0:00:01:12")
SWITCH = LabHost("198.51.100.13/24", "02:1a:b0:00:01:13")
SAAS = LabHost("160.79.104.10/24", "02:1a:b0:00:01:14")
NAMES = {WEB.ip: "web.lab.example", DEVICE.ip: "device.lab.example", FILTERED.ip: "filtered.lab.example",
         SAAS.ip: "saas.lab.example"}
PLAIN_PORTS = {WEB.ip: [22, 80], DEVICE.ip: [9100], FILTERED.ip: [22, 443], SAAS.ip: [80]}
OPEN = {(WEB.ip, 22), (WEB.ip, 80), (WEB.ip, 443), (WEB.ip, 8443), (DEVICE.ip, 443), (DEVICE.ip, 9100),
        (SAAS.ip, 80), (SWITCH.ip, 199)}  # 199: snmpd's SMUX listener. All in nmap's top 1000; FILTERED's are silent
WEB_NAMES = ("www.lab.example", "pages.github.io")
TABLES = ("machines", "network_interfaces", "network_interface_subnets", "subnetworks", "application_endpoints",
          "applications", "flows")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    skip_without_lab()
    if not snmpd_available():
        pytest.skip("snmpd is missing (apt-get install snmpd)")
    directory = tmp_path_factory.mktemp("services")
    certs = {
        "dns": make_certificate(directory, "web", dns_names=WEB_NAMES,
                                subject=[(NameOID.ORGANIZATION_NAME, "Lab"), (NameOID.COMMON_NAME, WEB_NAMES[0])]),
        "ip": make_certificate(directory, "device", rsa=True, ip_addresses=(DEVICE.ip,)),
    }
    hosts = [LabHost(h.address, h.mac) for h in (WEB, DEVICE, FILTERED, SWITCH, SAAS)]
    made = Lab(hosts=hosts, extra_addresses=("160.79.104.1/24",)).create()
    processes, agents = [], []
    try:
        web, device, filtered, switch, saas = made.hosts
        (Path("/etc/netns") / made.name / "hosts").write_text("".join(f"{ip} {name}\n" for ip, name in NAMES.items()))
        for host in (web, device, filtered, saas):
            processes.append(start_listeners(host.namespace, PLAIN_PORTS[host.ip]))
        processes.append(serve(web.namespace, *certs["dns"], (443, 8443)))
        processes.append(serve(device.namespace, *certs["ip"], (443,)))
        filter_tcp(filtered.namespace)
        subprocess.run(["ip", "-n", switch.namespace, "route", "add", "default", "via", made.scanner_ip], check=True)
        agents.append(start_snmpd(switch.namespace, switch.ip, directory / "snmpd"))
        made.certs = certs
        yield made
    finally:
        for agent in agents:
            agent.stop()
        stop(processes)
        made.destroy()


def situation(lab: Lab, home: Path, dsn: str) -> subprocess.CompletedProcess:
    env = clean_environ(HOME=str(home), SITUATION_STATE_DIR=str(home / "state"), SITUATION_AGENT_ID=AGENT_ID)
    return lab.run(sys.executable, "-m", "situation", "--log-format", "json", "run", "--once", "--db", dsn,
                   "--discovery-rate", "20000", "--snmp-community", COMMUNITY, "--snmp-timeout", "300ms",
                   "--no-module-dpkg",  # this machine's packages: the slowest module, and beside the point
                   env=env, timeout=300)


def counts(db) -> dict[str, int]:
    return {table: int(db.query(f"SELECT count(*) FROM {db.table_prefix}{table}")[0][0]) for table in TABLES}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def runs(request, lab, tmp_path_factory):
    """Both runs on one backend: (the database, the first run, the row counts after each run)."""
    home = tmp_path_factory.mktemp(request.param)
    if request.param == "sqlite":
        db, name = SqliteDb(home / "services.sqlite"), None
    else:
        cluster = request.getfixturevalue("tls_cluster")
        name = f"services_{uuid.uuid4().hex[:12]}"
        cluster.create_database(name)
        db = PostgresDb(cluster, name)
    try:
        first = situation(lab, home, db.dsn)
        assert first.returncode == 0, first.stderr[-4000:]
        after_first = counts(db)
        second = situation(lab, home, db.dsn)
        assert second.returncode == 0, second.stderr[-4000:]
        yield db, first, after_first, counts(db)
    finally:
        if name:
            db.cluster.drop_database(name)


def module_lines(run: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]


def endpoints(db) -> dict[tuple[str, int, str], dict]:
    """Every endpoint by (addr, port, protocol): its tls and fingerprints (decoded), saas."""
    text = "::text" if db.table_prefix else ""
    rows = db.query(f"SELECT addr, port, protocol, tls{text}, fingerprints{text}, saas "
                    f"FROM {db.table_prefix}application_endpoints")
    return {(addr, int(port), protocol): {"tls": json.loads(tls) if tls else None,
                                          "fingerprints": json.loads(fp) if fp else None, "saas": saas}
            for addr, port, protocol, tls, fp, saas in rows}


def der(crt: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(crt.read_text())


def test_every_module_ran_and_the_second_run_changed_no_row_count(runs):
    _, first, after_first, after_second = runs
    failed = [line for line in module_lines(first) if line.get("status") in ("failed", "timeout")]
    assert failed == []
    assert after_second == after_first


def test_every_open_port_and_nothing_else(runs):
    db, *_ = runs
    found = {(addr, port) for addr, port, protocol in endpoints(db) if protocol == "tcp"}
    assert found == OPEN  # FILTERED's silent ports and the closed ones are not endpoints


def test_certificates_match_openssl_with_and_without_dns_names(runs, lab):
    db, *_ = runs
    found = endpoints(db)
    web = found[(WEB.ip, 443, "tcp")]["tls"]
    assert_matches_openssl(web, lab.certs["dns"][0])
    assert web["subject"] == web["issuer"] == f"CN={WEB_NAMES[0]},O=Lab"
    assert web["dns_names"] == list(WEB_NAMES)
    assert found[(WEB.ip, 8443, "tcp")]["tls"] is None  # not a TLS port by default
    device = found[(DEVICE.ip, 443, "tcp")]["tls"]
    assert_matches_openssl(device, lab.certs["ip"][0])
    assert device["dns_names"] == [] and device["subject"] == "CN=device"
    assert found[(DEVICE.ip, 9100, "tcp")]["tls"] is None


def test_ja4_ja4s_and_ja4x_of_each_certificate(runs, lab):
    db, *_ = runs
    found = endpoints(db)
    for host, kind in ((WEB, "dns"), (DEVICE, "ip")):
        fingerprints = found[(host.ip, 443, "tcp")]["fingerprints"]["ja4"]
        assert fingerprints["ja4x"] == ja4x(der(lab.certs[kind][0]))
        assert re.fullmatch(r"t1[32]i\d{4}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}", fingerprints["ja4"])  # no SNI
        assert re.fullmatch(r"t1[32]\d{2}[0-9a-z]{2}_[0-9a-f]{4}_[0-9a-f]{12}", fingerprints["ja4s"])
    assert {key[:2] for key, endpoint in found.items() if endpoint["fingerprints"]} == {(WEB.ip, 443), (DEVICE.ip, 443)}


def test_the_unnamed_switch_over_snmp_v2c_gets_a_machine(runs):
    db, *_ = runs
    p = db.table_prefix
    # No name in the hosts file: the switch's NIC had no machine until snmp gave it one, named by its sysName.
    [machine] = db.query(f"SELECT m.hostname, m.platform, m.distribution, m.arch, m.chassis, m.agent "
                         f"FROM {p}machines m JOIN {p}network_interfaces n ON n.machine_id = m.id "
                         f"WHERE n.mac = '{SWITCH.mac}'")
    assert tuple(machine) == (SYS_NAME, "linux", "debian", "x86_64", "router", None)
    [(name, gateway)] = db.query(f"SELECT name, gateway FROM {p}network_interfaces WHERE mac = '{SWITCH.mac}'")
    assert (name, gateway) == ("eth0", SCANNER)
    assert endpoints(db)[(SWITCH.ip, 161, "udp")]["saas"] is None


def test_saas_by_dns_suffix_and_by_address_range(runs):
    db, *_ = runs
    labels = {(addr, port): v["saas"] for (addr, port, _), v in endpoints(db).items() if v["saas"]}
    assert labels == {(WEB.ip, 443): "GitHub", (SAAS.ip, 80): "Anthropic"}

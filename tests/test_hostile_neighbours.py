"""Neighbours that lie (issue 12, item 5): one whole cycle in a namespace lab, one test per lie.

Everything runs inside test-made network namespaces (support/lab.py; rule 1 of
DEVELOPERS.md): `situation run --once` in the lab's scanner namespace, behind
the guard, and every liar (support/liars.py) in a host namespace or, for the
name server and the hostile process, in the scanner's. The lab:

- .10 is named by PTR with escape sequences, NUL and C1 bytes, and serves a
  certificate with a NUL byte and 500 DNS names;
- .11 is named by a PTR whose label is 255 bytes long (no DNS name can carry
  it), and serves certificates with a broken subjectAltName and a duplicated
  extension (`openssl s_server`: Python's ssl refuses to load them);
- .12 runs an SNMP agent that answers with wrong types, huge counters and
  ifNumber = 100,000 (named by the hosts file, so snmp queries it);
- .13 has a plain name and answers TLS with garbage (443), with silence after
  the ClientHello (465), and with a good certificate (993);
- .14 is named by a PTR of 259 bytes (four 63-byte labels);
- in the scanner, a process with escape sequences and undecodable bytes in
  its executable's path and its command line holds a TCP listener.

The cycle runs twice for the file (snmp may ask a neighbour before reverse-lookup
has named it in the first); each test checks that its lie was stored
bounded and without control characters, or refused in the module's one log
line, that the cycle finished with no module failed or timed out, and that
what the honest sources said is all there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from cryptography.x509.oid import NameOID
from support import liars
from support.cluster import clean_environ
from support.lab import Lab, LabHost, nft_available
from support.netns import netns_available
from support.stored_text import CONTROL, sqlite_control_characters
from support.tls_servers import broken_certificate, make_certificate, serve

from situation.net.certificate import MAX_DNS_NAMES
from situation.store import MAX_TEXT

AGENT_ID = "0badc0de" * 4
ESCAPES = LabHost("198.51.100.10/24", "02:1a:b0:00:00:10")
LONG_LABEL = LabHost("198.51.100.11/24", "02:1a:b0:00:00:11")
SNMP_LIAR = LabHost("198.51.100.12/24", "02:1a:b0:00:00:12")
TLS_LIAR = LabHost("198.51.100.13/24", "02:1a:b0:00:00:13")
TOO_LONG = LabHost("198.51.100.14/24", "02:1a:b0:00:00:14")
HOSTS = (ESCAPES, LONG_LABEL, SNMP_LIAR, TLS_LIAR, TOO_LONG)


def wire_name(*labels: bytes) -> bytes:
    """A DNS name as its length-prefixed labels, with no check: lengths over 63 included."""
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


PTR = {
    ESCAPES.ip: wire_name(b"evil\x1b]0;pwned\x07", b"x\x00y", b"\xc2\x9b\xff", b"example"),
    LONG_LABEL.ip: wire_name(b"a" * 255, b"example"),
    TLS_LIAR.ip: wire_name(b"garbage", b"lab", b"example"),
    TOO_LONG.ip: wire_name(*[b"b" * 63] * 4),
}
NUL_NAME = "evil\x00.example.com"
HOSTILE_DIRECTORY = b"\x1b]0;pwned\x07\xff\xfe"
HOSTILE_ARGS = [b"\x1b]0;title\x07", b"\x1b[2J\x1b[31mred\xc2\x9b", b"\xff\xfe\xfd", b"x" * 100_000]


def s_server(namespace: str, address: str, port: int, crt: Path, key: Path) -> subprocess.Popen:
    """`openssl s_server`, which serves a certificate it cannot parse fully, until killed."""
    process = subprocess.Popen(["ip", "netns", "exec", namespace, "openssl", "s_server", "-quiet",
                                "-accept", f"{address}:{port}", "-cert", str(crt), "-key", str(key)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"openssl s_server exited: {process.stderr.read()!r}")
        listening = subprocess.run(["ip", "netns", "exec", namespace, "ss", "-Hltn", f"sport = :{port}"],
                                   capture_output=True, text=True).stdout
        if listening.strip():
            return process
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("openssl s_server did not start listening")


def hostile_python(directory: Path) -> bytes:
    """A copy of this Python whose path holds an escape sequence and bytes that are not UTF-8."""
    folder = os.fsencode(directory) + b"/" + HOSTILE_DIRECTORY
    os.mkdir(folder)
    target = folder + b"/\x9bpy\x1b[2J"
    shutil.copy2(os.path.realpath(sys.executable), target)
    return target


class Cycles:
    """The lab, what its two cycles printed, and their database."""

    def __init__(self, lab: Lab, results: list[subprocess.CompletedProcess], database: Path, holder_pid: int):
        self.lab, self.results, self.database, self.holder_pid = lab, results, database, holder_pid
        self.logs = [[json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")] for r in results]

    def lines(self, event: str, cycle: int = 0) -> list[dict]:
        return [line for line in self.logs[cycle] if line.get("event") == event]

    def query(self, sql: str, *args) -> list[sqlite3.Row]:
        with closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)) as db:
            db.row_factory = sqlite3.Row
            return db.execute(sql, args).fetchall()

    def machine_of(self, ip: str) -> sqlite3.Row | None:
        [nic] = self.query("SELECT n.machine_id FROM network_interfaces n, json_each(n.ip) a "
                           "WHERE a.value = ? AND n.machine_id IS NOT (SELECT id FROM machines WHERE agent = ?)",
                           ip, AGENT_ID)
        if nic["machine_id"] is None:
            return None
        [machine] = self.query("SELECT * FROM machines WHERE id = ?", nic["machine_id"])
        return machine

    def endpoint(self, ip: str, port: int) -> sqlite3.Row:
        [row] = self.query("SELECT * FROM application_endpoints WHERE addr = ? AND port = ?", ip, port)
        return row


@pytest.fixture(scope="module")
def cycles(tmp_path_factory):
    if not netns_available():
        pytest.skip("network namespaces need root and iproute2")
    if not nft_available():
        pytest.skip("nft is missing (apt-get install nftables)")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is missing (apt-get install openssl)")
    directory = tmp_path_factory.mktemp("hostile")
    lab = Lab(hosts=[LabHost(h.address, h.mac) for h in HOSTS]).create()
    started: list[subprocess.Popen] = []
    try:
        (Path("/etc/netns") / lab.name / "hosts").write_text(f"{SNMP_LIAR.ip} liar.lab.example\n")
        namespace = {host.ip: host.namespace for host in lab.hosts}
        crowded = make_certificate(directory, "crowded", subject=[(NameOID.COMMON_NAME, NUL_NAME)],
                                   dns_names=(NUL_NAME, *(f"n{i}.lab.example" for i in range(500))))
        good = make_certificate(directory, "good", dns_names=("good.lab.example",))
        started += [
            liars.start(lab.name, "dns", lab.scanner_ip, *(f"{ip}={data.hex()}" for ip, data in PTR.items())),
            liars.start(namespace[SNMP_LIAR.ip], "snmp", SNMP_LIAR.ip, SNMP_LIAR.mac),
            liars.start(namespace[TLS_LIAR.ip], "tls", TLS_LIAR.ip, "443", "465"),
            serve(namespace[TLS_LIAR.ip], *good, (993,), address=TLS_LIAR.ip),
            serve(namespace[ESCAPES.ip], *crowded, (443,), address=ESCAPES.ip),
            s_server(namespace[LONG_LABEL.ip], LONG_LABEL.ip, 443,
                     *broken_certificate(directory, "broken", duplicated=False)),
            s_server(namespace[LONG_LABEL.ip], LONG_LABEL.ip, 993,
                     *broken_certificate(directory, "twice", duplicated=True)),
        ]
        holder = liars.start(lab.name, "hold", lab.scanner_ip, "7000", *HOSTILE_ARGS,
                             python=hostile_python(directory), stdin=subprocess.PIPE)
        started.append(holder)
        database = directory / "hostile.sqlite"
        env = clean_environ(
            HOME=str(directory), SITUATION_STATE_DIR=str(directory / "state"), SITUATION_AGENT_ID=AGENT_ID,
            SITUATION_TCP_SCAN_PORTS="443,465,993", SITUATION_TLS_TIMEOUT="1s", SITUATION_JA4_TIMEOUT="1s",
            SITUATION_SNMP_TIMEOUT="300ms", SITUATION_REVERSE_LOOKUP_TIMEOUT="1s",
        )
        results = []
        for number in (1, 2):  # reverse-lookup names the neighbours in cycle 1, alongside snmp
            results.append(lab.run(sys.executable, "-m", "situation", "run", "--once", "--db", str(database),
                                   env=env, timeout=300))
            (directory / f"cycle{number}.log").write_text(results[-1].stderr)  # kept by pytest when it fails
        # ip netns exec execs the command: the holder's pid is the one Popen knows.
        yield Cycles(lab, results, database, holder.pid)
    finally:
        for process in started:
            liars.stop(process)
        lab.destroy()


def test_ptr_names_with_control_characters_and_long_labels_name_nothing(cycles):
    for host in (ESCAPES, LONG_LABEL, TOO_LONG):
        assert cycles.machine_of(host.ip) is None  # the NIC stays, machine-less
    assert cycles.machine_of(TLS_LIAR.ip)["hostname"] == "garbage.lab.example"  # the honest name is kept
    [line] = cycles.lines("reverse lookups")
    assert (line["named"], line["rejected"], line["machines_created"]) == (2, 1, 2), line  # hosts file + PTR
    assert line.get("failed", 0) + line.get("timeout", 0) == 2, line  # names no DNS message can hold
    hostnames = [row["hostname"] for row in cycles.query("SELECT hostname FROM machines")]
    assert not any("evil" in (name or "") or "b" * 63 in (name or "") for name in hostnames)


def test_certificates_with_nul_bytes_500_names_and_broken_extensions_are_stored_bounded(cycles):
    crowded = json.loads(cycles.endpoint(ESCAPES.ip, 443)["tls"])
    assert len(crowded["dns_names"]) == MAX_DNS_NAMES and crowded["dns_names"][0] == "n0.lab.example"
    assert crowded["subject"] == r"CN=evil\00.example.com"
    for port in (443, 993):  # a subjectAltName that is no DER; a subjectAltName twice
        endpoint = cycles.endpoint(LONG_LABEL.ip, port)
        tls = json.loads(endpoint["tls"])
        assert tls["dns_names"] == [] and tls["subject"] in ("CN=broken", "CN=twice")
        assert json.loads(endpoint["fingerprints"])["ja4"]["ja4x"]
    assert cycles.lines("certificates")[0]["certificates"] == 4


def test_tls_servers_sending_garbage_or_stalling_cost_one_timeout_and_a_log_count(cycles):
    assert cycles.endpoint(TLS_LIAR.ip, 443)["tls"] is None
    assert cycles.endpoint(TLS_LIAR.ip, 465)["tls"] is None
    assert json.loads(cycles.endpoint(TLS_LIAR.ip, 993)["tls"])["dns_names"] == ["good.lab.example"]
    [line] = cycles.lines("certificates")
    assert (line["failed"], line["timeout"], line["handshakes"]) == (1, 1, 4), line


def test_an_snmp_agent_with_wrong_types_huge_counters_and_100000_interfaces(cycles):
    machine = cycles.machine_of(SNMP_LIAR.ip)
    assert machine["hostname"].startswith("]0;pwned liar\ufffd\ufffd AAAA") and len(machine["hostname"]) == 255
    assert not machine["uptime"]  # a Counter64 of 2^64-1 where TimeTicks belong: not an uptime
    assert (machine["platform"] or "") == "" and (machine["chassis"] or "") == ""
    nics = cycles.query("SELECT * FROM network_interfaces WHERE machine_id = ?", machine["id"])
    [nic] = nics  # of 100,000 interfaces, the one with a MAC and a route
    assert (nic["mac"], nic["name"], nic["gateway"]) == (SNMP_LIAR.mac, "eth0 ]0;pwned \ufffd", "198.51.100.1")
    assert json.loads(nic["ip"]) == [SNMP_LIAR.ip]
    assert cycles.endpoint(SNMP_LIAR.ip, 161)["protocol"] == "udp"
    [line] = cycles.lines("SNMP agents queried", cycle=1)
    # Every neighbour is asked, machine-less ones too (the three reverse-lookup could not name).
    assert (line["targets"], line["answered"], line["machineless"]) == (5, 1, 3), line


def test_process_names_and_command_lines_with_escapes_and_invalid_utf8(cycles):
    [app] = cycles.query("SELECT * FROM applications WHERE pid = ?", cycles.holder_pid)
    # Undecodable bytes come out of psutil as lone surrogates, which the store writes as "?".
    assert app["name"].endswith("/]0;pwned??/?py[2J") and not CONTROL.search(app["name"])
    assert json.loads(app["args"]) == [str(liars.HERE), "hold", cycles.lab.scanner_ip, "7000", "]0;title",
                                       "[2J[31mred", "???", "x" * MAX_TEXT]


@pytest.mark.parametrize("number", [0, 1], ids=["first cycle", "second cycle"])
def test_each_cycle_finishes_with_no_module_failed_or_timed_out(cycles, number):
    result = cycles.results[number]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", result.stderr)  # the logs escape what they quote
    statuses = {line["module"]: line["status"] for line in cycles.lines("module finished", number)}
    assert not {name: status for name, status in statuses.items() if status not in ("ok", "skipped")}, statuses


def test_what_every_other_source_said_is_all_there(cycles):
    [host] = cycles.query("SELECT * FROM machines WHERE agent = ?", AGENT_ID)
    assert host["hostname"] and host["platform"] == "linux"
    for table in ("users", "cpus", "applications", "subnetworks"):
        assert cycles.query(f"SELECT count(*) AS n FROM {table}")[0]["n"] > 0, table
    macs = {row["mac"] for row in cycles.query("SELECT mac FROM network_interfaces")}
    assert {host.mac for host in HOSTS} <= macs  # every neighbour's NIC, whatever it said
    assert sqlite_control_characters(cycles.database) == []

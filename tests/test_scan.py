"""`situation scan CIDR…` and the discovery settings of `run`, from the command line.

Every invocation runs inside an isolated test host's network namespace
(support/netns.py, DEVELOPERS.md rule 1), even those expected to stop at
validation: a scan that got past it would send packets.
"""

from __future__ import annotations

import ipaddress
import sys

import pytest
from support.cluster import clean_environ
from support.neighbour_table import SEEN_TWICE, database, prepare_host, seed_neighbours  # noqa: F401 (fixture)

from situation.module import load_builtin_modules
from situation.scan import Found, format_table, scan_registry, scan_targets

AGENT_ID = "5ca75ca75ca75ca75ca75ca75ca75ca7"


def situation(host, *args, tmp_path, **env):
    environ = clean_environ(HOME=str(tmp_path), SITUATION_STATE_DIR=str(tmp_path / "state"),
                            SITUATION_AGENT_ID=AGENT_ID, **env)
    return host.run(sys.executable, "-m", "situation", *args, env=environ, timeout=120)


def one_error_line(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("situation: error: "), result.stderr
    return lines[0]


# -- without a namespace: pure functions ----------------------------------------------------


def test_targets_are_parsed_and_deduplicated():
    assert scan_targets(["192.0.2.0/24,192.0.2.7", "192.0.2.0/24", "2001:db8::/64"]) == (
        ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("2001:db8::/64"),
    )
    assert scan_targets(["10.0.0.0/20"]) == (ipaddress.ip_network("10.0.0.0/20"),)


def test_scan_runs_the_discovery_modules_and_their_dependencies():
    chosen = scan_registry(load_builtin_modules())
    assert {"host-network", "host-basic", "fingerprint", "arp", "tcp-scan", "tls"} <= set(chosen)
    # tls depends on netstat (spec §3.2), which brings local-users; the rest of the host is not collected.
    assert {"netstat", "local-users"} <= set(chosen)
    assert not {"host-cpu", "host-disk", "host-gpu", "chassis", "dpkg", "docker"} & set(chosen)


def test_table_keeps_control_characters_off_the_terminal():
    table = format_table([Found("192.0.2.9", "02:00:00:00:00:09", "", "evil\x1b[2Jname", "ping")],
                         scan_targets(["192.0.2.0/24"]))
    assert "\x1b" not in table and "evil?[2Jname" in table
    assert table.splitlines()[-1] == "1 address found in 192.0.2.0/24"


# -- from the command line, inside an isolated host ---------------------------------------------


@pytest.mark.parametrize("targets, expected", [
    (["10.231.7.0/33"], "situation scan: '10.231.7.0/33' is not an address or a network"),
    (["10.231.7.300"], "situation scan: '10.231.7.300' is not an address or a network"),
    (["printer.lan"], "situation scan: 'printer.lan' is not an address or a network"),
    (["10.231.0.0/16"], "situation scan: 10.231.0.0/16 is wider than /20"),
    (["10.231.7.0/24", "10.0.0.0/8"], "situation scan: 10.0.0.0/8 is wider than /20"),
    (["2001:db8::/48"], "situation scan: 2001:db8::/48 is wider than /64"),
    (["10.231.7.0/24", "--discovery-rate", "0"], "--discovery-rate: '0' is out of range"),
    (["10.231.7.0/24", "--discovery-exclude", "10.231.7.1/24"], "--discovery-exclude: '10.231.7.1/24' is not a network"),
])
def test_bad_scan_input_is_one_line_before_anything_runs(test_host, tmp_path, targets, expected):
    result = situation(test_host, "scan", "--db", str(tmp_path / "never.sqlite"), *targets, tmp_path=tmp_path)
    assert expected in one_error_line(result)
    assert not (tmp_path / "never.sqlite").exists()


@pytest.mark.parametrize("args, env, expected", [
    (["--discovery-scope", "everything"], {}, "--discovery-scope: 'everything' is not one of attached, database"),
    ([], {"SITUATION_DISCOVERY_RATE": "-1"}, "--discovery-rate: '-1' is out of range"),
    ([], {"SITUATION_DISCOVERY_EXCLUDE": "10.0.0.0/8,nonsense"}, "--discovery-exclude: 'nonsense' is not an address"),
])
def test_bad_discovery_settings_stop_run_with_one_line(test_host, tmp_path, args, env, expected):
    result = situation(test_host, "run", "--once", "--db", str(tmp_path / "never.sqlite"), *args,
                       tmp_path=tmp_path, **env)
    assert expected in one_error_line(result)
    assert not (tmp_path / "never.sqlite").exists()


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The printed table by address: [mac, how found] (vendor and name columns may be empty)."""
    lines = stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["ADDRESS", "MAC"]
    rows = {}
    for line in lines[1:-1]:
        fields = line.split()
        rows[fields[0]] = fields[1:]
    return rows


def test_scan_records_and_prints_what_it_found(test_host, database, tmp_path):
    prepare_host(test_host)
    seed_neighbours(test_host)
    result = situation(test_host, "scan", "--db", database.dsn, "10.231.7.0/24", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert rows["10.231.7.2"][0] == test_host.mac and rows["10.231.7.2"][-2:] == ["this", "host"]
    assert rows["10.231.7.3"][-2:] == ["this", "host"]  # the second interface
    assert "2001:db8:7::2" not in rows  # outside the target
    assert result.stdout.strip().splitlines()[-1].endswith("found in 10.231.7.0/24")
    if "ping" in load_builtin_modules():  # arp runs after ping, once ping is registered
        assert rows["10.231.7.10"][0] == SEEN_TWICE and "arp" in rows["10.231.7.10"][-1]
        assert "10.231.7.13" not in rows and "10.231.7.255" not in rows

    counts = database.query(f"SELECT count(*) FROM {database.table_prefix}network_interfaces")
    again = situation(test_host, "scan", "--db", database.dsn, "10.231.7.0/24", tmp_path=tmp_path)
    assert again.returncode == 0, again.stderr
    assert table_rows(again.stdout) == rows
    assert database.query(f"SELECT count(*) FROM {database.table_prefix}network_interfaces") == counts

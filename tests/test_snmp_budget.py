"""The snmp module against devices that lie: each device is written when it has answered, within a row budget.

Runs inside a test-made namespace lab (DEVELOPERS.md, rule 1): the scanner
namespace, where the module runs behind the guard, and three hosts: SWITCH
runs a real snmpd and tells the truth; HUGE and SLOW run the lying agent of
tests/support/liars.py (100,000 interfaces, walked for as long as asked),
SLOW answering each request late. SQLite and PostgreSQL.
"""

from __future__ import annotations

import pytest
from support import liars
from support.lab import Lab, LabHost
from support.neighbour_table import database  # noqa: F401 (fixture)
from support.snmpd import COMMUNITY, name_and_route, skip_unless_snmp_lab, start_snmpd
from test_snmp import DISCOVERY, SWITCH, assert_switch_recorded, run, snmp_line

from situation.errors import ConfigError
from situation.modules.snmp import OPTIONS, read_credentials
from situation.net.snmp import MAX_REPETITIONS

HUGE = LabHost("198.51.100.20/24", "02:1a:b0:00:00:20")
SLOW = LabHost("198.51.100.21/24", "02:1a:b0:00:00:21")
SNMP = ("--host-lookup", "--option", f"snmp.community={COMMUNITY}", "--option", "snmp.timeout=1s")
MODULE_TIMEOUT = "6"  # the slow liar needs minutes; the switch, well under a second on an idle machine
MAX_ROWS = 300


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    skip_unless_snmp_lab()
    made = Lab(hosts=[LabHost(h.address, h.mac) for h in (SWITCH, HUGE, SLOW)]).create()
    switch, liars_running = None, []
    try:
        name_and_route(made, ["switch", "huge", "slow"])
        switch_host, huge, slow = made.hosts
        switch = start_snmpd(switch_host.namespace, switch_host.ip, tmp_path_factory.mktemp("snmpd"))
        liars_running.append(liars.start(huge.namespace, "snmp", huge.ip, huge.mac))
        liars_running.append(liars.start(slow.namespace, "snmp", slow.ip, slow.mac, "0.3"))
        yield made
    finally:
        for process in liars_running:
            liars.stop(process)
        if switch is not None:
            switch.stop()
        made.destroy()


def endpoints_at(db, address: str) -> int:
    return int(db.query(f"SELECT count(*) FROM {db.table_prefix}application_endpoints WHERE addr = '{address}'")[0][0])


def hostname_of(db, mac: str) -> str | None:
    p = db.table_prefix
    rows = db.query(f"SELECT m.hostname FROM {p}machines m JOIN {p}network_interfaces n ON n.machine_id = m.id "
                    f"WHERE n.mac = '{mac}'")
    return rows[0][0] if rows else None


def test_a_slow_device_and_a_huge_one_cost_the_honest_switch_nothing(lab, database):
    run(lab, database.dsn, *DISCOVERY)

    # The slow liar keeps the module walking past its timeout: the switch, done long before, is kept.
    report, _ = run(lab, database.dsn, *SNMP, "--exclude", HUGE.ip, "--timeout", MODULE_TIMEOUT, "snmp")
    assert report["timeout"] == ["snmp"]
    assert_switch_recorded(database)
    assert endpoints_at(database, SLOW.ip) == 0  # only the unfinished device lost its rows

    # The huge liar runs into its row budget: its walks stop, and what it said is recorded with the switch's.
    huge = lab.hosts[1]
    packets_before = lab.probes_received(huge)
    report, logs = run(lab, database.dsn, *SNMP, "--exclude", SLOW.ip, "--option", f"snmp.max-rows={MAX_ROWS}",
                       "snmp")
    assert report["timeout"] == [] and snmp_line(logs)["answered"] == 2
    requests = 2 + -(-MAX_ROWS // MAX_REPETITIONS)  # the probe, the system group, then 25 rows a GETBULK
    assert lab.probes_received(huge) - packets_before <= requests + 2  # an ARP request or two
    assert "more rows than its budget" in logs
    assert endpoints_at(database, HUGE.ip) == 1 and hostname_of(database, HUGE.mac).startswith("]0;pwned liar")
    assert_switch_recorded(database)


def test_the_row_budget_must_be_positive():
    defaults = {option.name: option.default for option in OPTIONS}
    read_credentials({**defaults, "max-rows": 1})
    with pytest.raises(ConfigError, match="--snmp-max-rows 0 must be at least 1"):
        read_credentials({**defaults, "max-rows": 0})

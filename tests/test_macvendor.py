"""macvendor: IEEE listings parsed, longest prefix wins, one bulk update, nothing redone.

The module is passive (it reads the store and local files, sends nothing), so
it runs in-process against real SQLite and PostgreSQL stores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from situation.module import REGISTRY, Context, HostMachine, load_builtin_modules
from situation.hostroot import HostRoot
from situation.net import oui
from support.stores import backend_store as store, raw_rows  # noqa: F401  (a fixture)

AGENT = "ab" * 16

# Excerpts in the IEEE's own layout (real assignments), one per listing.
MA_L = """OUI/MA-L                                                    Organization
company_id                                                  Organization
                                                            Address

00-00-0C   (hex)\t\tCisco Systems, Inc\r
00000C     (base 16)\t\tCisco Systems, Inc\r
\t\t\t\t80 West Tasman Drive\r
\t\t\t\tSan Jose  CA  94568\r
\t\t\t\tUS\r
\r
70-B3-D5   (hex)\t\tIEEE Registration Authority\r
70B3D5     (base 16)\t\tIEEE Registration Authority\r
\r
20-85-93   (hex)\t\tIEEE Registration Authority\r
208593     (base 16)\t\tIEEE Registration Authority\r
"""
MA_M = """OUI                                                         Organization
OUI-28/MA-M Range                                           Organization

20-85-93   (hex)\t\tIOG Products LLC
B00000-BFFFFF     (base 16)\t\tIOG Products LLC
\t\t\t\t9737 LURLINE AVENUE
"""
MA_S = """OUI                                                         Organization
OUI-36/MA-S Range                                           Organization

70-B3-D5   (hex)\t\tTELEPLATFORMS
F2F000-F2FFFF     (base 16)\t\tTELEPLATFORMS
\t\t\t\tPolbina st., 3/1
"""
IAB = """OUI                                                         Organization
IAB Range                                                   Organization

00-50-C2                      (hex)                         DEUTA-WERKE GmbH
7D5000-7D5FFF                 (base 16)                     DEUTA-WERKE GmbH
                                                            Paffrather Strasse 140
"""


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    directory = tmp_path / "ieee"
    directory.mkdir()
    for name, text in (("oui.txt", MA_L), ("mam.txt", MA_M), ("oui36.txt", MA_S), ("iab.txt", IAB)):
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def test_each_listing_parses_to_its_prefix_length():
    assert [(a.bits, hex(a.prefix), a.organization) for a in oui.parse_listing(MA_M.splitlines())] == [
        (28, "0x208593b", "IOG Products LLC")
    ]
    assert [(a.bits, hex(a.prefix)) for a in oui.parse_listing(MA_S.splitlines())] == [(36, "0x70b3d5f2f")]
    assert [(a.bits, hex(a.prefix)) for a in oui.parse_listing(IAB.splitlines())] == [(36, "0x50c27d5")]
    assert [(a.bits, a.organization) for a in oui.parse_listing(MA_L.splitlines())][0] == (24, "Cisco Systems, Inc")


def test_longest_prefix_wins_and_bad_macs_match_nothing(registry):
    index = oui.load_index(str(registry))
    assert index.counts() == {36: 2, 28: 1, 24: 3}
    assert index.lookup("70:b3:d5:f2:f1:00") == "TELEPLATFORMS"  # MA-S inside an MA-L block
    assert index.lookup("70:b3:d5:00:00:01") == "IEEE Registration Authority"
    assert index.lookup("20:85:93:b4:00:00") == "IOG Products LLC"  # MA-M
    assert index.lookup("00:50:C2:7D:5A:BC") == "DEUTA-WERKE GmbH"  # upper case, IAB
    assert index.lookup("0000.0c12.3456") == "Cisco Systems, Inc"
    assert index.lookup("00:00:0c") == "Cisco Systems, Inc"  # too short for 28/36 bits: 24 only
    for bad in ("", "00:00", "zz:zz:zz:zz:zz:zz", "00:00:0g:00:00:00"):
        assert index.lookup(bad) is None


def test_index_is_rebuilt_only_when_the_files_change(registry):
    first = oui.load_index(str(registry))
    assert oui.load_index(str(registry)) is first
    (registry / "mam.txt").write_text(MA_M.replace("IOG Products LLC", "Renamed Ltd"), encoding="utf-8")
    assert oui.load_index(str(registry)).lookup("20:85:93:b4:00:00") == "Renamed Ltd"


def test_the_default_source_has_every_registry_it_claims():
    index = oui.load_index()
    assert index is not None and index.lookup("00:00:0c:00:00:01") == "Cisco Systems, Inc"
    if index.source in oui.IEEE_DATA_DIRECTORIES:  # Debian's ieee-data: MA-M and MA-S too
        assert index.counts()[28] > 1000 and index.counts()[36] > 1000
        assert index.lookup("70:b3:d5:f2:f1:00") == "TELEPLATFORMS"
    else:  # netaddr's copy: MA-L and IAB
        assert index.counts()[24] > 30000 and index.counts()[36] > 1000


async def nic_rows(store) -> dict[str, dict]:
    """Every NIC by MAC, read outside the store's named queries."""
    rows = await raw_rows(store, "SELECT id, mac, mac_vendor, updated_at, updated_by FROM network_interfaces")
    return {r["mac"]: r for r in rows}


async def run_macvendor(store, registry: Path) -> Context:
    load_builtin_modules()
    spec = REGISTRY["macvendor"]
    ctx = Context(store=store, log=structlog.get_logger(), agent_id=AGENT,
                  options={"registry": str(registry)}, root=HostRoot(), host=HostMachine())
    await spec.run(ctx)
    return ctx


async def test_vendors_are_set_once_and_never_looked_up_again(store, registry):
    macs = {
        "00:00:0c:12:34:56": "Cisco Systems, Inc",
        "70:b3:d5:f2:f1:00": "TELEPLATFORMS",
        "20:85:93:b4:00:01": "IOG Products LLC",
        "02:42:ac:11:00:02": None,  # locally administered (docker): no vendor, not selected again
        "5a:00:00:00:00:01": None,  # locally administered (second digit a)
        "00:11:22:33:44:55": None,  # a prefix no listing has
        "00:00": None,  # too short
    }
    rows = [{"mac": mac, "tag": "", "machine_id": None, "flags": {"up": True}} for mac in macs]
    await store.upsert("network_interfaces", rows, key="machine_mac_tag")
    await store.upsert("network_interfaces", [{"mac": "00:00:0c:99:99:99", "tag": "", "machine_id": None,
                                               "mac_vendor": "Kept As Is"}], key="machine_mac_tag")

    first = await run_macvendor(store, registry)
    stored = await nic_rows(store)
    assert {mac: stored[mac]["mac_vendor"] for mac in macs} == macs
    assert stored["00:00:0c:99:99:99"]["mac_vendor"] == "Kept As Is"
    assert first.rows_written == 3

    selected = {row["mac"] for row in await store.fetch("nics_without_vendor")}
    assert selected == {"00:11:22:33:44:55", "00:00"}  # not the locally administered ones
    second = await run_macvendor(store, registry)
    assert second.rows_written == 0 and await nic_rows(store) == stored


async def test_no_nic_needs_a_vendor_so_no_registry_is_read(store, tmp_path):
    ctx = await run_macvendor(store, tmp_path / "nowhere")  # would Skip if it looked for listings
    assert ctx.rows_written == 0


async def test_no_registry_at_all_is_a_skip_naming_the_fix(store, tmp_path):
    from situation.module import Skip

    await store.upsert("network_interfaces", [{"mac": "00:00:0c:12:34:56", "tag": "", "machine_id": None}],
                       key="machine_mac_tag")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Skip, match="install Debian's ieee-data or give --macvendor-registry"):
        await run_macvendor(store, tmp_path / "empty")


def test_netaddr_copy_is_the_fallback_with_ma_l_and_iab():
    files = oui._netaddr_files()
    assert [f.name for f in files] == ["oui.txt", "iab.txt"]
    index = oui.load_index(str(files[0].parent))
    assert index.counts()[24] > 30000 and index.counts()[36] > 1000 and index.counts()[28] == 0
    assert index.lookup("00:50:c2:7d:51:23") == "DEUTA-WERKE GmbH"

"""host-network: interfaces, flags, routes, subnets, links, matching on re-runs, what run() writes."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from situation.hostroot import HostRoot
from situation.module import REGISTRY
from situation.modules import host_network
from situation.modules.host_network import (
    DefaultRoute,
    Interface,
    Link,
    Nic,
    StoredNic,
    Subnet,
    build_nics,
    collect_network,
    decode_flags,
    mac_subnet,
    normalize_mac,
    parse_address,
    parse_ipv4_routes,
    parse_ipv6_routes,
    plan_writes,
    read_default_routes,
    read_interfaces,
    subnet_for,
)
from support.modules import AGENT, ModuleStore

ETH0_MAC = "52:54:00:ab:cd:ef"

ROUTE = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wg0\t00000000\t0100080A\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
wg0\t0008000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""

IPV6_ROUTE = """\
20010db8000100000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000002 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000002 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo
"""

ADDRESSES = {
    "eth0": [
        "192.168.1.10/24",
        "2001:db8:1::10/64",
        "192.168.1.10/24",  # duplicate
        "fe80::5054:ff:feab:cdef/64",
        "192.168.1.11/24",
    ],
    "lo": ["127.0.0.1/8", "::1/128"],
    "wg0": ["10.8.0.2/24"],
    "eth1": ["172.16.0.5/16"],  # down
    "veth12ab": ["169.254.3.3/16"],
}


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def add_interface(root: Path, name: str, *, address: str, flags: str, arp_type: int = 1) -> None:
    directory = root / "sys/class/net" / name
    write(directory / "address", f"{address}\n")
    write(directory / "flags", f"{flags}\n")
    write(directory / "type", f"{arp_type}\n")
    write(directory / "mtu", "1500\n")


@pytest.fixture
def net_root(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    add_interface(root, "eth0", address=ETH0_MAC.upper(), flags="0x1043")
    add_interface(root, "lo", address="00:00:00:00:00:00", flags="0x9", arp_type=772)
    add_interface(root, "wg0", address="", flags="0x91", arp_type=65534)
    add_interface(root, "eth1", address="52:54:00:00:00:01", flags="0x1002")
    add_interface(root, "veth12ab", address="aa:aa:aa:aa:aa:aa", flags="0x1043")
    add_interface(root, "tap-qemu0", address="fe:54:00:00:00:02", flags="0x1043")
    write(root / "proc/net/route", ROUTE)
    write(root / "proc/net/ipv6_route", IPV6_ROUTE)
    write(root / "situation-test/addresses.json", json.dumps(ADDRESSES))
    return root


def nics_by_name(nics: list[Nic]) -> dict[str, Nic]:
    return {nic.name: nic for nic in nics}


# -- reading ------------------------------------------------------------------------


def test_decode_flags() -> None:
    assert decode_flags(0x1043) == {"up": True, "broadcast": True, "multicast": True, "running": True}
    assert decode_flags(0x49) == {"up": True, "loopback": True, "running": True}
    assert decode_flags(0x91) == {"up": True, "point_to_point": True}
    assert decode_flags(0x1002) == {"up": False, "broadcast": True, "multicast": True}
    assert decode_flags(0) == {"up": False}


def test_normalize_mac() -> None:
    assert normalize_mac("52:54:00:AB:CD:EF") == ETH0_MAC
    assert normalize_mac("00:00:00:00:00:00") is None
    assert normalize_mac("") is None
    assert normalize_mac(None) is None
    assert normalize_mac("0a:00:00:01", arp_type=768) is None  # ipip tunnel: an IPv4 address
    assert normalize_mac("not-a-mac") is None


def test_parse_address_forms() -> None:
    assert parse_address("192.168.1.10/24") == ipaddress.ip_interface("192.168.1.10/24")
    # psutil style: address plus netmask, IPv6 link-local with a scope.
    assert parse_address("192.168.1.10", "255.255.255.0") == ipaddress.ip_interface("192.168.1.10/24")
    assert parse_address("fe80::1%eth0", "ffff:ffff:ffff:ffff::") == ipaddress.ip_interface("fe80::1/64")
    assert parse_address("10.0.0.1") == ipaddress.ip_interface("10.0.0.1/32")
    assert parse_address("garbage") is None


def test_read_interfaces_from_fixture(net_root: Path) -> None:
    interfaces = {i.name: i for i in read_interfaces(HostRoot.under(net_root))}
    assert sorted(interfaces) == ["eth0", "eth1", "lo", "tap-qemu0", "veth12ab", "wg0"]
    eth0 = interfaces["eth0"]
    assert eth0.mac == ETH0_MAC
    assert eth0.flags == 0x1043
    assert [str(a) for a in eth0.addresses] == ADDRESSES["eth0"]
    assert interfaces["lo"].mac is None
    assert interfaces["wg0"].mac is None
    assert interfaces["tap-qemu0"].addresses == ()


def test_ipv4_default_route_lowest_metric() -> None:
    routes = parse_ipv4_routes(ROUTE)
    assert routes == [
        DefaultRoute("wg0", ipaddress.IPv4Address("10.8.0.1"), 600),
        DefaultRoute("eth0", ipaddress.IPv4Address("192.168.1.1"), 100),
    ]


def test_ipv6_default_route_ignores_rejects_and_lo() -> None:
    assert parse_ipv6_routes(IPV6_ROUTE) == [DefaultRoute("eth0", ipaddress.IPv6Address("fe80::1"), 0x400)]


def test_read_default_routes(net_root: Path) -> None:
    assert read_default_routes(HostRoot.under(net_root)) == [
        DefaultRoute("eth0", ipaddress.IPv4Address("192.168.1.1"), 100),
        DefaultRoute("eth0", ipaddress.IPv6Address("fe80::1"), 0x400),
    ]


def test_no_route_files_means_no_route(tmp_path: Path) -> None:
    assert read_default_routes(HostRoot.under(tmp_path)) == []


# -- building rows ----------------------------------------------------------------


def test_subnet_is_strict_cidr() -> None:
    gateway = ipaddress.ip_address("192.168.1.1")
    assert subnet_for(ipaddress.ip_interface("192.168.1.10/24"), [gateway]) == Subnet(
        network_cidr="192.168.1.0/24", network_addr="192.168.1.0", mask_size=24, ip_version=4,
        gateway="192.168.1.1", tag="",
    )
    assert subnet_for(ipaddress.ip_interface("10.1.2.3/8"), [gateway]) == Subnet(
        "10.0.0.0/8", "10.0.0.0", 8, 4, "", ""
    )
    assert subnet_for(ipaddress.ip_interface("2001:db8:1::10/64"), [ipaddress.ip_address("2001:db8:1::1")]) == Subnet(
        "2001:db8:1::/64", "2001:db8:1::", 64, 6, "2001:db8:1::1", ""
    )
    assert subnet_for(ipaddress.ip_interface("10.8.0.2/32")).network_cidr == "10.8.0.2/32"


def test_loopback_and_link_local_give_no_subnet() -> None:
    for address in ("127.0.0.1/8", "::1/128", "fe80::1/64", "169.254.10.1/16"):
        assert subnet_for(ipaddress.ip_interface(address)) is None


def test_snapshot_nics(net_root: Path) -> None:
    snapshot = collect_network(HostRoot.under(net_root))
    nics = nics_by_name(snapshot.nics)
    assert sorted(nics) == ["eth0", "lo", "wg0"]  # eth1 is down, veth and qemu taps are excluded
    eth0 = nics["eth0"]
    assert eth0.mac == ETH0_MAC
    assert eth0.ip == ("192.168.1.10", "2001:db8:1::10", "fe80::5054:ff:feab:cdef", "192.168.1.11")
    assert eth0.gateway == "192.168.1.1"
    assert eth0.flags == {"up": True, "broadcast": True, "multicast": True, "running": True}
    lo = nics["lo"]
    assert (lo.mac, lo.ip, lo.gateway) == (None, ("127.0.0.1", "::1"), None)
    assert lo.flags == {"up": True, "loopback": True}
    wg0 = nics["wg0"]
    assert (wg0.mac, wg0.ip, wg0.gateway) == (None, ("10.8.0.2",), None)
    assert wg0.flags == {"up": True, "point_to_point": True}


def test_snapshot_subnets_and_links(net_root: Path) -> None:
    snapshot = collect_network(HostRoot.under(net_root))
    assert snapshot.subnets == [
        Subnet("192.168.1.0/24", "192.168.1.0", 24, 4, "192.168.1.1", ""),
        Subnet("2001:db8:1::/64", "2001:db8:1::", 64, 6, "", ""),
        Subnet("10.8.0.0/24", "10.8.0.0", 24, 4, "", ""),
    ]
    assert snapshot.links == [
        Link("eth0", "192.168.1.0/24", "192.168.1.10"),
        Link("eth0", "2001:db8:1::/64", "2001:db8:1::10"),
        Link("eth0", "192.168.1.0/24", "192.168.1.11"),
        Link("wg0", "10.8.0.0/24", "10.8.0.2"),
    ]


def test_ipv6_only_interface_gets_the_ipv6_gateway() -> None:
    routes = [DefaultRoute("eth0", ipaddress.IPv6Address("2001:db8::1"), 1024)]
    eth0 = Interface("eth0", ETH0_MAC, 0x1043, (ipaddress.ip_interface("2001:db8::5/64"),))
    [nic] = build_nics([eth0], routes)
    assert nic.gateway == "2001:db8::1"


def test_interfaces_sharing_a_mac_become_one_nic() -> None:
    mac = "02:42:ac:11:00:02"
    routes = [DefaultRoute("br0", ipaddress.IPv4Address("10.10.0.254"), 0)]
    interfaces = [
        Interface("enp1s0", mac, 0x1043),  # bridge port, no address
        Interface("br0", mac, 0x1043, (ipaddress.ip_interface("10.10.0.1/24"),)),
        Interface("br0.20", mac, 0x1043, (ipaddress.ip_interface("10.20.0.1/24"),)),
    ]
    [nic] = build_nics(interfaces, routes)
    assert nic.name == "br0"
    assert nic.ip == ("10.10.0.1", "10.20.0.1")
    assert nic.gateway == "10.10.0.254"
    assert nic.members == ("br0", "br0.20", "enp1s0")
    snapshot = host_network.build_snapshot(interfaces, routes)
    assert {link.nic for link in snapshot.links} == {"br0"}


def test_mac_subnet_format() -> None:
    assert mac_subnet(ETH0_MAC, 12) == "52:54:00:ab:cd:ef/12"
    assert mac_subnet(None, 12) is None


def test_nic_row() -> None:
    nic = Nic("wg0", None, (), None, {"up": True})
    assert nic.as_row(7) == {
        "name": "wg0", "mac": None, "ip": None, "gateway": None, "flags": {"up": True}, "tag": "", "machine_id": 7,
    }


# -- matching against stored rows ------------------------------------------------


def test_plan_steady_state_releases_nothing() -> None:
    nics = [Nic("eth0", ETH0_MAC, (), None, {}), Nic("lo", None, (), None, {}), Nic("wg0", None, (), None, {})]
    stored = [StoredNic(1, "eth0", ETH0_MAC), StoredNic(2, "lo", None), StoredNic(3, "wg0", None)]
    plan = plan_writes(nics, stored)
    assert plan.release_names == []
    assert [nic.name for nic in plan.with_mac] == ["eth0"]
    assert [nic.name for nic in plan.without_mac] == ["lo", "wg0"]


def test_plan_swapped_names_release_both() -> None:
    nics = [Nic("eth0", "00:00:00:00:00:0b", (), None, {}), Nic("eth1", "00:00:00:00:00:0a", (), None, {})]
    stored = [StoredNic(1, "eth0", "00:00:00:00:00:0a"), StoredNic(2, "eth1", "00:00:00:00:00:0b")]
    assert plan_writes(nics, stored).release_names == [1, 2]


def test_plan_replaced_card_releases_the_old_row() -> None:
    nics = [Nic("eth0", "00:00:00:00:00:0c", (), None, {})]
    stored = [StoredNic(1, "eth0", "00:00:00:00:00:0a")]
    assert plan_writes(nics, stored).release_names == [1]


def test_plan_macless_nic_does_not_take_a_row_that_now_has_another_name() -> None:
    # Row 1 was "tun0" with MAC a; that MAC is now "eth0", and a MAC-less "tun0" exists.
    nics = [Nic("eth0", "00:00:00:00:00:0a", (), None, {}), Nic("tun0", None, (), None, {})]
    stored = [StoredNic(1, "tun0", "00:00:00:00:00:0a")]
    assert plan_writes(nics, stored).release_names == [1]


# -- run() against a real SQLite store ---------------------------------------------------


def nic(module_store: ModuleStore, name: str) -> dict[str, Any]:
    [row] = [row for row in module_store.rows("network_interfaces") if row["name"] == name]
    return row


def subnets_by_cidr(module_store: ModuleStore) -> dict[str, dict[str, Any]]:
    return {row["network_cidr"]: row for row in module_store.rows("subnetworks")}


def links(module_store: ModuleStore) -> list[tuple]:
    return [
        (row["network_interface_id"], row["subnetwork_id"], row["ip"], row["mac_subnet"])
        for row in module_store.rows("network_interface_subnets")
    ]


def test_module_is_registered() -> None:
    assert REGISTRY["host-network"].depends == ("host-basic",)


async def test_run_writes_subnets_nics_and_links(net_root: Path, module_store: ModuleStore) -> None:
    ctx = await module_store.run("host-network", net_root)
    host = module_store.machine_id
    subnets = subnets_by_cidr(module_store)
    assert sorted(subnets) == ["10.8.0.0/24", "192.168.1.0/24", "2001:db8:1::/64"]
    columns = ("network_addr", "mask_size", "ip_version", "gateway")
    assert {cidr: tuple(subnet[c] for c in columns) for cidr, subnet in subnets.items()} == {
        "192.168.1.0/24": ("192.168.1.0", 24, 4, "192.168.1.1"),
        "2001:db8:1::/64": ("2001:db8:1::", 64, 6, ""),
        "10.8.0.0/24": ("10.8.0.0", 24, 4, ""),
    }
    assert all(s["tag"] == "" and s["vlan_id"] == 0 for s in subnets.values())
    assert sorted(row["name"] for row in module_store.rows("network_interfaces")) == ["eth0", "lo", "wg0"]
    eth0, lo, wg0 = nic(module_store, "eth0"), nic(module_store, "lo"), nic(module_store, "wg0")
    assert (eth0["mac"], eth0["gateway"], eth0["machine_id"], eth0["tag"]) == (ETH0_MAC, "192.168.1.1", host, "")
    assert eth0["ip"] == ["192.168.1.10", "2001:db8:1::10", "fe80::5054:ff:feab:cdef", "192.168.1.11"]
    assert eth0["flags"] == {"up": True, "broadcast": True, "multicast": True, "running": True}
    assert (lo["ip"], lo["mac"], lo["gateway"], lo["machine_id"]) == (["127.0.0.1", "::1"], None, None, host)
    assert lo["flags"] == {"up": True, "loopback": True}
    assert (wg0["ip"], wg0["mac"], wg0["tag"], wg0["machine_id"]) == (["10.8.0.2"], None, "", host)
    assert wg0["flags"] == {"up": True, "point_to_point": True}
    assert all(row["updated_by"] == AGENT for row in module_store.rows("network_interfaces"))
    lan, v6, wg = (subnets[c]["id"] for c in ("192.168.1.0/24", "2001:db8:1::/64", "10.8.0.0/24"))
    # 192.168.1.11 shares eth0's mac_subnet with 192.168.1.10, so only the first link is kept.
    assert links(module_store) == [
        (eth0["id"], lan, "192.168.1.10", f"{ETH0_MAC}/{lan}"),
        (eth0["id"], v6, "2001:db8:1::10", f"{ETH0_MAC}/{v6}"),
        (wg0["id"], wg, "10.8.0.2", None),
    ]
    assert ctx.rows_written == 3 + 3 + 3


async def test_second_run_changes_nothing(net_root: Path, module_store: ModuleStore) -> None:
    await module_store.run("host-network", net_root)
    before = module_store.snapshot()
    ctx = await module_store.run("host-network", net_root)
    assert ctx.rows_written == 0  # no name released, no row rewritten, no link added
    assert module_store.snapshot() == before
    nics = module_store.rows("network_interfaces")
    assert len(nics) == 3
    assert nic(module_store, "eth0")["ip"] == [
        "192.168.1.10", "2001:db8:1::10", "fe80::5054:ff:feab:cdef", "192.168.1.11",
    ]


async def test_macless_nics_are_not_merged(net_root: Path, module_store: ModuleStore) -> None:
    # lo and wg0 have no MAC: each is its own row, found again by name on every run.
    await module_store.run("host-network", net_root)
    ids = {row["name"]: row["id"] for row in module_store.rows("network_interfaces")}
    await module_store.run("host-network", net_root)
    macless = [row for row in module_store.rows("network_interfaces") if row["mac"] is None]
    assert sorted((row["name"], row["id"]) for row in macless) == [("lo", ids["lo"]), ("wg0", ids["wg0"])]
    assert ids["lo"] != ids["wg0"]


async def test_ip_list_is_rebuilt_not_grown(net_root: Path, module_store: ModuleStore) -> None:
    await module_store.run("host-network", net_root)
    eth0_id = nic(module_store, "eth0")["id"]
    write(net_root / "situation-test/addresses.json", json.dumps({**ADDRESSES, "eth0": ["192.168.1.12/24"]}))
    ctx = await module_store.run("host-network", net_root)
    eth0 = nic(module_store, "eth0")
    assert (eth0["id"], eth0["ip"]) == (eth0_id, ["192.168.1.12"])
    assert len(module_store.rows("network_interfaces")) == 3
    lan = subnets_by_cidr(module_store)["192.168.1.0/24"]["id"]
    # Old links stay (as in the original); the new address's mac_subnet is eth0's existing one.
    assert [link for link in links(module_store) if link[0] == eth0_id and link[1] == lan] == [
        (eth0_id, lan, "192.168.1.10", f"{ETH0_MAC}/{lan}"),
    ]
    assert ctx.rows_written == 1


async def test_swapped_names_do_not_violate_keys(net_root: Path, module_store: ModuleStore) -> None:
    add_interface(net_root, "eth1", address="52:54:00:00:00:01", flags="0x1043")
    await module_store.run("host-network", net_root)
    first_ids = {name: nic(module_store, name)["id"] for name in ("eth0", "eth1")}
    add_interface(net_root, "eth0", address="52:54:00:00:00:01", flags="0x1043")
    add_interface(net_root, "eth1", address=ETH0_MAC, flags="0x1043")
    await module_store.run("host-network", net_root)
    stored = module_store.rows("network_interfaces")
    assert sorted(row["name"] for row in stored) == ["eth0", "eth1", "lo", "wg0"]
    # Each row follows its MAC; both names were released first, then handed over.
    eth0, eth1 = nic(module_store, "eth0"), nic(module_store, "eth1")
    assert (eth1["id"], eth1["mac"]) == (first_ids["eth0"], ETH0_MAC)
    assert (eth0["id"], eth0["mac"]) == (first_ids["eth1"], "52:54:00:00:00:01")
    assert eth1["ip"] == ["172.16.0.5"]
    assert eth0["ip"] == ["192.168.1.10", "2001:db8:1::10", "fe80::5054:ff:feab:cdef", "192.168.1.11"]


async def test_replaced_card_gets_a_new_row(net_root: Path, module_store: ModuleStore) -> None:
    # A new MAC under the old name: the old row keeps its MAC and links but gives up the name.
    await module_store.run("host-network", net_root)
    old = nic(module_store, "eth0")
    add_interface(net_root, "eth0", address="52:54:00:00:00:0c", flags="0x1043")
    await module_store.run("host-network", net_root)
    stored = module_store.rows("network_interfaces")
    assert len(stored) == 4
    [released] = [row for row in stored if row["id"] == old["id"]]
    assert (released["name"], released["mac"]) == (None, ETH0_MAC)
    new = nic(module_store, "eth0")
    assert new["id"] != old["id"] and new["mac"] == "52:54:00:00:00:0c"
    assert new["ip"] == old["ip"]
    lan = subnets_by_cidr(module_store)["192.168.1.0/24"]["id"]
    assert (new["id"], lan, "192.168.1.10", f"52:54:00:00:00:0c/{lan}") in links(module_store)
    assert (old["id"], lan, "192.168.1.10", f"{ETH0_MAC}/{lan}") in links(module_store)


async def test_run_with_no_interface_writes_nothing(tmp_path: Path, module_store: ModuleStore) -> None:
    before = module_store.snapshot()
    ctx = await module_store.run("host-network", tmp_path / "empty")
    assert module_store.rows("network_interfaces") == []
    assert module_store.rows("subnetworks") == []
    assert module_store.rows("network_interface_subnets") == []
    assert module_store.snapshot() == before
    assert ctx.rows_written == 0


def test_live_collection_runs() -> None:
    # The live path (psutil + /sys + /proc) on whatever host runs the tests.
    snapshot = collect_network(HostRoot())
    for nic in snapshot.nics:
        assert nic.flags["up"] is True
        assert nic.mac is None or nic.mac == nic.mac.lower()
        assert all("%" not in ip and "/" not in ip for ip in nic.ip)

"""A synthetic inventory written through the store: zones, hosts, TLS endpoints and flows.

Used by tests/test_explore.py, bench/explore.py and bench/explore_screenshot.py. Every
zone is a /16 (or /24 when small) with ``hosts`` machines; each machine has one NIC
with a MAC and vendor, a few listening endpoints (HTTPS ones carry a certificate in
``tls``, some expired, some expiring soon) and outgoing flows to other hosts' endpoints
and to a few public SaaS addresses.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

VENDORS = ("Dell Inc.", "Hewlett Packard", "Cisco Systems, Inc", "Raspberry Pi Trading Ltd", "Intel Corporate",
           "Ubiquiti Inc", "Super Micro Computer, Inc.", "Synology Incorporated", "QEMU virtual NIC")
SYSTEMS = (("linux", "ubuntu", "24.04", "debian", "server"), ("linux", "debian", "12", "debian", "vm"),
           ("linux", "rocky", "9.4", "rhel", "server"), ("linux", "alpine", "3.20", "alpine", "container"),
           ("windows", "windows", "11", "", "laptop"), ("linux", "raspbian", "12", "debian", "raspberry"))
SERVICES = ((22, "ssh", None), (80, "http", None), (443, "https", "tls"), (5432, "postgresql", None),
            (8443, "https", "tls"), (53, "dns", None), (3389, "rdp", None))
APPS = ("/usr/bin/curl", "/usr/lib/firefox/firefox", "/usr/bin/python3.12", "/usr/sbin/chronyd",
        "/usr/bin/apt-get", "/opt/backup/bin/restic")
SAAS = (("142.250.74.78", 443, "google"), ("140.82.121.4", 443, "github"), ("35.186.224.25", 443, "sentry"))


@dataclass
class Inventory:
    zones: dict[str, int] = field(default_factory=dict)  # CIDR → subnetwork id
    hosts: dict[str, list[dict]] = field(default_factory=dict)  # CIDR → its hosts: hostname, ip, nic_id, machine_id


def _zone_networks(count: int, hosts: int) -> list[ipaddress.IPv4Network]:
    prefix = 24 if hosts < 250 else 16
    base = ipaddress.ip_network("10.0.0.0/8")
    return list(base.subnets(new_prefix=prefix))[1 : count + 1]


def _mac(n: int) -> str:
    return "52:54:" + ":".join(f"{(n >> shift) & 0xFF:02x}" for shift in (24, 16, 8, 0))


def _certificate(host: str, rng: random.Random, now: datetime) -> dict:
    not_after = now + timedelta(days=rng.choice((-20, 12, 90, 200, 400)))
    return {
        "subject": f"CN={host}", "issuer": "CN=Lab CA", "not_before": (not_after - timedelta(days=398)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"), "serial_number": f"{rng.getrandbits(64):x}",
        "signature_algorithm": "SHA256-RSA", "public_key_algorithm": "RSA", "dns_names": [host],
    }


async def fill_inventory(store, *, zones: int = 3, hosts: int = 8, seed: int = 7, domain: str = "lab.example") -> Inventory:
    """Write ``zones`` × ``hosts`` machines and their network data; returns what was written."""
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    inventory = Inventory()
    networks = _zone_networks(zones, hosts)
    result = await store.upsert("subnetworks", [
        {"network_cidr": str(n), "network_addr": str(n.network_address), "mask_size": n.prefixlen, "ip_version": 4,
         "gateway": str(n.network_address + 1), "vlan_id": 0, "tag": ""} for n in networks
    ], key="cidr_tag")
    inventory.zones = {str(n): i for n, i in zip(networks, result.ids)}
    layout = []  # (network, hostname, ip, mac, vendor, system)
    for z, network in enumerate(networks):
        for h in range(hosts):
            ip = network.network_address + 10 + h
            layout.append((network, f"{rng.choice(('web', 'db', 'nas', 'ws', 'pi', 'gw'))}-{z:02d}-{h:04d}.{domain}", str(ip),
                           _mac(z * 65536 + h + 1), rng.choice(VENDORS), rng.choice(SYSTEMS)))
    machines = await store.upsert("machines", [
        {"hostname": name, "host_id": f"host-{name}", "arch": "x86_64", "platform": system[0], "distribution": system[1],
         "distribution_version": system[2], "distribution_family": system[3], "uptime": 0, "cpe": "", "chassis": system[4]}
        for _network, name, _ip, _mac_text, _vendor, system in layout
    ], key="host_id")
    nics = await store.upsert("network_interfaces", [
        {"name": "eth0", "mac": mac, "mac_vendor": vendor, "ip": [ip], "gateway": str(network.network_address + 1),
         "flags": {"up": True, "broadcast": True, "running": True}, "tag": "", "machine_id": machine_id}
        for (network, _name, ip, mac, vendor, _system), machine_id in zip(layout, machines.ids)
    ], key="machine_mac_tag")

    async def link_all():
        for (network, _name, ip, mac, _vendor, _system), nic_id in zip(layout, nics.ids):
            zone_id = inventory.zones[str(network)]
            await store.execute("link_interface_subnet", nic_id, zone_id, ip, f"{mac}/{zone_id}")

    await store.run_in_transaction(link_all)
    for (network, name, ip, _mac_text, _vendor, _system), nic_id, machine_id in zip(layout, nics.ids, machines.ids):
        inventory.hosts.setdefault(str(network), []).append(
            {"hostname": name, "ip": ip, "nic_id": nic_id, "machine_id": machine_id})
    await _fill_services(store, layout, nics.ids, machines.ids, rng, now)
    return inventory


async def _fill_services(store, layout, nic_ids, machine_ids, rng: random.Random, now: datetime) -> None:
    applications = await store.upsert("applications", [
        {"name": app, "args": [], "pid": 1000 + k, "machine_id": machine_id, "version": "", "protocol": "", "cpe": ""}
        for machine_id in machine_ids for k, app in enumerate(APPS[:3])
    ], key="machine_app_name_pid")
    app_ids = [applications.ids[i * 3 : i * 3 + 3] for i in range(len(machine_ids))]
    endpoints = []
    for (_network, name, ip, *_rest), nic_id in zip(layout, nic_ids):
        for port, protocol, tls in rng.sample(SERVICES, 3):
            endpoints.append({"port": port, "protocol": "tcp", "addr": ip, "application_protocols": [protocol],
                              "tls": _certificate(name, rng, now) if tls else None, "saas": None,
                              "application_id": None, "network_interface_id": nic_id})
    endpoints += [{"port": port, "protocol": "tcp", "addr": addr, "application_protocols": ["https"], "tls": None,
                   "saas": saas, "application_id": None, "network_interface_id": None} for addr, port, saas in SAAS]
    written = await store.upsert("application_endpoints", endpoints, key="port_protocol_addr_network_interface_id")
    local, public = written.ids[: -len(SAAS)], written.ids[-len(SAAS):]
    flows = []
    for i, ((_network, _name, ip, *_rest), nic_id) in enumerate(zip(layout, nic_ids)):
        for destination in {*rng.sample(local, min(4, len(local))), *rng.sample(public, 2)}:
            flows.append({"src_application_id": rng.choice(app_ids[i]), "src_network_interface_id": nic_id,
                          "src_addr": ip, "dst_endpoint_id": destination})
    await store.upsert("flows", flows, key="flow_src_dst")

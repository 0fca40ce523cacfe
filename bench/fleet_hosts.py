"""Fake host roots for bench/fleet.py: one tree per agent, all on one lab subnetwork.

Every host gets its own host name, DMI product UUID, machine id, boot id, MACs
(``eth0`` on the shared subnetwork, ``eth1`` without an address), address,
distribution, CPU, disks and local users, so that no two agents look like one
machine. What they share is the network: ``eth0`` of every host lies in
``SUBNET``, and the namespace they run in holds one kernel neighbour table
(seeded by :func:`neighbour_entries`) that every agent's ``arp`` reads, so
the same neighbour MACs are reported by all of them at once. A few neighbours
carry names in every host's ``/etc/hosts``, so ``reverse-lookup`` on every
agent creates (or finds) the same named machines.
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

SUBNET = ipaddress.ip_network("198.18.0.0/22")  # RFC 2544 benchmarking range, inside the namespace only
FIRST_HOST = 16  # hosts from 198.18.0.16 on; neighbours from the top of the range down
NAMED_NEIGHBOURS = 8  # the first ones get a name in every host's /etc/hosts

DISTRIBUTIONS = (
    ("debian", 'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'),
    ("ubuntu", 'ID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\nPRETTY_NAME="Ubuntu 24.04 LTS"\n'),
    ("rocky", 'ID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\nPRETTY_NAME="Rocky Linux 9.4"\n'),
    ("alpine", 'ID=alpine\nVERSION_ID=3.20.1\nPRETTY_NAME="Alpine Linux v3.20"\n'),
)
CPUS = ("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", "AMD EPYC 7543 32-Core Processor",
        "Intel(R) Core(TM) i7-10700 CPU @ 2.90GHz")
DPKG_PACKAGES = (("openssh-server", "1:9.2p1-2+deb12u3"), ("curl", "7.88.1-10+deb12u8"), ("chrony", "4.3-2+deb12u1"))


@dataclass(frozen=True)
class FleetHost:
    index: int
    hostname: str
    product_uuid: str
    machine_id: str
    mac: str  # eth0, on SUBNET
    spare_mac: str  # eth1, up without an address
    ip: ipaddress.IPv4Address
    agent_id: str

    @property
    def interface(self) -> str:
        return f"{self.ip}/{SUBNET.prefixlen}"


@dataclass(frozen=True)
class Neighbour:
    ip: ipaddress.IPv4Address
    mac: str
    name: str | None


def fleet_host(index: int, run_tag: int = 0) -> FleetHost:
    """Host ``index``: every identifying value derived from it (and ``run_tag``, to vary runs)."""
    seed = uuid.uuid5(uuid.NAMESPACE_OID, f"situation-fleet-{run_tag}-{index}")
    return FleetHost(
        index=index,
        hostname=f"fleet-{index:04d}",
        product_uuid=str(seed),
        machine_id=uuid.uuid5(seed, "machine-id").hex,
        mac=_mac(0xF1, run_tag, index),
        spare_mac=_mac(0xF2, run_tag, index),
        ip=SUBNET.network_address + FIRST_HOST + index,
        agent_id=uuid.uuid5(seed, "agent").hex,
    )


def _mac(kind: int, run_tag: int, index: int) -> str:
    return f"02:{kind:02x}:{run_tag & 0xFF:02x}:{index >> 16 & 0xFF:02x}:{index >> 8 & 0xFF:02x}:{index & 0xFF:02x}"


def neighbours(count: int) -> list[Neighbour]:
    """``count`` neighbours at the top of ``SUBNET`` (below its broadcast address)."""
    top = SUBNET.broadcast_address - 1
    return [Neighbour(top - k, f"02:ee:00:00:{k >> 8 & 0xFF:02x}:{k & 0xFF:02x}",
                      f"shared-{k:03d}.lab.example" if k < NAMED_NEIGHBOURS else None) for k in range(count)]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _interface(root: Path, name: str, mac: str, flags: str, arp_type: int) -> None:
    directory = root / "sys/class/net" / name
    _write(directory / "address", f"{mac}\n")
    _write(directory / "flags", f"{flags}\n")
    _write(directory / "type", f"{arp_type}\n")


def _cpuinfo(model: str, cores: int) -> str:
    return "".join(f"processor\t: {n}\nvendor_id\t: {'AuthenticAMD' if 'AMD' in model else 'GenuineIntel'}\n"
                   f"model name\t: {model}\ncore id\t\t: {n}\ncpu cores\t: {cores}\nflags\t\t: fpu vme sse2\n\n"
                   for n in range(cores))


def _disk(root: Path, name: str, sectors: int, dev: str) -> None:
    device = root / "sys/block" / name
    _write(device / "size", f"{sectors}\n")
    _write(device / "dev", f"{dev}\n")
    _write(device / "ro", "0\n")
    _write(device / "queue/rotational", "0\n")
    (device / "holders").mkdir(exist_ok=True)


def _dpkg_status(packages: tuple[tuple[str, str], ...]) -> str:
    return "".join(f"Package: {name}\nStatus: install ok installed\nArchitecture: amd64\nVersion: {version}\n\n"
                   for name, version in packages)


def write_host_root(base: Path, host: FleetHost, shared: list[Neighbour]) -> Path:
    """The tree of ``host`` under ``base`` (laid out like ``/``); returns ``base``."""
    _write(base / "proc/sys/kernel/hostname", f"{host.hostname}\n")
    _write(base / "proc/sys/kernel/arch", "x86_64\n")
    _write(base / "proc/sys/kernel/random/boot_id", f"{uuid.uuid5(uuid.UUID(host.product_uuid), 'boot')}\n")
    _write(base / "proc/uptime", f"{3600 + host.index * 17}.25 100.00\n")
    _write(base / "sys/class/dmi/id/product_uuid", f"{host.product_uuid}\n")
    _write(base / "sys/class/dmi/id/chassis_type", "17\n")
    _write(base / "etc/machine-id", f"{host.machine_id}\n")
    _name, os_release = DISTRIBUTIONS[host.index % len(DISTRIBUTIONS)]
    _write(base / "etc/os-release", os_release)
    _write(base / "proc/cpuinfo", _cpuinfo(CPUS[host.index % len(CPUS)], 2 + host.index % 3))
    _disk(base, "vda", 2 * 1024 * 1024 * (20 + host.index % 5), "252:0")
    _disk(base, "vdb", 2 * 1024 * 1024 * 100, "252:16")
    _write(base / "proc/mounts", "/dev/vda / ext4 rw,relatime 0 0\n/dev/vdb /srv xfs rw,noatime 0 0\n")
    _interface(base, "lo", "00:00:00:00:00:00", "0x9", 772)
    _interface(base, "eth0", host.mac, "0x1043", 1)
    _interface(base, "eth1", host.spare_mac, "0x1003", 1)
    _write(base / "situation-test/addresses.json", json.dumps(
        {"lo": ["127.0.0.1/8", "::1/128"], "eth0": [host.interface], "eth1": []}))
    _write(base / "etc/passwd", "root:x:0:0:root:/root:/bin/bash\n"
                                "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
                                f"ops{host.index}:x:{1000 + host.index % 7}:1000:Ops:/home/ops:/bin/bash\n")
    named = "".join(f"{n.ip}\t{n.name}\n" for n in shared if n.name)
    _write(base / "etc/hosts", f"127.0.0.1\tlocalhost\n{named}")
    # PTR queries for unnamed neighbours go to a server that refuses at once (nothing listens on
    # port 53 inside the lab namespace), so reverse-lookup costs a round trip, not a timeout.
    _write(base / "etc/resolv.conf", "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    _write(base / "var/lib/dpkg/status", _dpkg_status(DPKG_PACKAGES[: 1 + host.index % len(DPKG_PACKAGES)]))
    (base / "var/lib/dpkg/info").mkdir(parents=True, exist_ok=True)
    return base

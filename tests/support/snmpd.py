"""A real SNMP agent (Debian's snmpd) in a lab host namespace, configured by the test.

``start_snmpd`` writes its own configuration (v2c community, one SNMPv3 USM
user with SHA authentication and AES privacy, a fixed system group), gives
it a persistent directory of its own (where snmpd keeps the localized USM
keys and engine boots) and starts it in the foreground, logging to stdout,
listening only on the host's lab address. ``requests`` counts the packets it
logged, to prove what a run sent. ``skip_unless_snmp_lab`` and
``name_and_route`` prepare a namespace lab (support/lab.py) for the snmp tests.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

COMMUNITY = "lab-community"
USER, AUTH_KEY, PRIV_KEY = "labuser", "lab-auth-secret", "lab-priv-secret"
SYS_NAME = "switch.lab"
SYS_DESCR = "Linux switch 6.1.0-18-amd64 #1 SMP Debian 6.1.76-1 x86_64"

CONFIG = """\
agentaddress udp:{ip}:161
rocommunity {community} default
rouser {user} authpriv
createUser {user} SHA "{auth}" AES "{priv}"
sysname {name}
sysdescr {descr}
sysservices 4
"""


def snmpd_available() -> bool:
    return shutil.which("snmpd") is not None or Path("/usr/sbin/snmpd").exists()


def skip_unless_snmp_lab() -> None:
    from support.lab import nft_available
    from support.netns import netns_available

    if not netns_available():
        pytest.skip("network namespaces need root and iproute2")
    if not nft_available():
        pytest.skip("nft is missing (apt-get install nftables)")
    if not snmpd_available():
        pytest.skip("snmpd is missing (apt-get install snmpd)")


def name_and_route(lab, names: list[str]) -> None:
    """Names for the lab's hosts in the scanner's hosts file (for reverse-lookup), and a default route
    via the scanner on each (so their interface has a gateway worth recording)."""
    (Path("/etc/netns") / lab.name / "hosts").write_text(
        "".join(f"{host.ip} {name}.lab.example\n" for host, name in zip(lab.hosts, names)))
    for host in lab.hosts:
        subprocess.run(["ip", "-n", host.namespace, "route", "add", "default", "via", lab.scanner_ip], check=True,
                       capture_output=True)


@dataclass
class Snmpd:
    namespace: str
    ip: str
    process: subprocess.Popen
    log: Path

    def requests(self, source: str) -> int:
        """Packets from ``source`` that snmpd logged (every request, answered or not)."""
        text = self.log.read_text(errors="replace")
        return sum(1 for line in text.splitlines() if line.startswith("Connection from") and f"[{source}]" in line)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_snmpd(namespace: str, ip: str, directory: Path) -> Snmpd:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "persist").mkdir(exist_ok=True)
    config = directory / "snmpd.conf"
    config.write_text(CONFIG.format(ip=ip, community=COMMUNITY, user=USER, auth=AUTH_KEY, priv=PRIV_KEY,
                                    name=SYS_NAME, descr=SYS_DESCR))
    log = directory / "snmpd.log"
    snmpd = shutil.which("snmpd") or "/usr/sbin/snmpd"
    argv = ["ip", "netns", "exec", namespace, "env", f"SNMP_PERSISTENT_DIR={directory / 'persist'}",
            snmpd, "-f", "-Lo", "-C", "-c", str(config), "-m", "", "-M", str(directory)]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    for _ in range(100):
        if process.poll() is not None:
            raise RuntimeError(f"snmpd exited: {log.read_text(errors='replace')[-2000:]}")
        listening = subprocess.run(["ip", "netns", "exec", namespace, "ss", "-lun", "sport", "= :161"],
                                   capture_output=True, text=True).stdout
        if ip in listening:
            return Snmpd(namespace, ip, process, log)
        time.sleep(0.05)
    process.terminate()
    raise RuntimeError("snmpd did not start listening")

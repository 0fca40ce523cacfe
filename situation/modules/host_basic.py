"""host-basic: the agent host's own ``machines`` row.

Sources, all read through :class:`~situation.hostroot.HostRoot`:

- ``hostname``: ``socket.gethostname()`` on the live system, else
  ``/proc/sys/kernel/hostname`` of the fixture/host tree; invalid UTF-8 is
  replaced (U+FFFD), as in every host file.
- ``arch``: ``os.uname().machine`` on the live system, else
  ``/proc/sys/kernel/arch`` (Linux ≥ 6.1), falling back to ``os.uname()``.
- ``platform``: always ``linux``.
- ``uptime``: first field of ``/proc/uptime``, truncated to whole seconds
  (what ``sysinfo()`` gives the original) and stored in nanoseconds; 0 when
  the file cannot be parsed.
- ``host_id``: ``/sys/class/dmi/id/product_uuid`` (lowercased) →
  ``/etc/machine-id`` (32 characters, reformatted 8-4-4-4-12) →
  ``/proc/sys/kernel/random/boot_id`` → ``None`` (never ``''``, spec §10.2).
- ``distribution`` / ``distribution_version`` / ``distribution_family``: the
  release files of ``/etc`` in the exact order of spec §4.3 (oracle,
  slackware, debian + lsb, neokylin/redhat/system-release, gentoo, SuSE,
  arch, alpine, os-release, lsb fallbacks), then the family map.

``/usr/bin/lsb_release`` is only consulted on the live system, when
``/etc/lsb-release`` is missing and the detection would use lsb data; the
command runs through an asyncio subprocess before the blocking collection.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from situation.host_row import write_host_row
from situation.hostroot import HostRoot, in_range, lines, parse_source, read_text, read_text_or_none
from situation.module import Context, command_output, module

PLATFORM = "linux"
LSB_RELEASE_COMMAND = "/usr/bin/lsb_release"
LSB_RELEASE_TIMEOUT = 5.0

# Columns host-basic refreshes on every run; ``chassis``/``cpe``/``parent_machine_id``
# are only given on insert (chassis belongs to the chassis and host-gpu modules).
REFRESHED_COLUMNS = (
    "hostname",
    "host_id",
    "arch",
    "platform",
    "distribution",
    "distribution_version",
    "distribution_family",
    "uptime",
)

# DMI UUIDs that firmware writes when it has none; taking them as an identity would
# make every such host collide on machines.host_id (a deliberate deviation).
_PLACEHOLDER_UUIDS = frozenset(
    {"00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"}
)

_FAMILIES: dict[str, str] = {
    **dict.fromkeys(
        ("debian", "ubuntu", "linuxmint", "raspbian", "Kylin", "cumuluslinux", "uos", "Deepin"), "debian"
    ),
    "fedora": "fedora",
    **dict.fromkeys(
        (
            "oracle",
            "centos",
            "redhat",
            "scientific",
            "enterpriseenterprise",
            "amazon",
            "xenserver",
            "cloudlinux",
            "ibm_powerkvm",
            "rocky",
            "almalinux",
        ),
        "rhel",
    ),
    **dict.fromkeys(
        (
            "suse",
            "opensuse",
            "opensuse-leap",
            "opensuse-tumbleweed",
            "opensuse-tumbleweed-kubic",
            "sles",
            "sled",
            "caasp",
        ),
        "suse",
    ),
    **{
        name: name
        for name in (
            "gentoo",
            "slackware",
            "arch",
            "exherbo",
            "alpine",
            "coreos",
            "solus",
            "neokylin",
            "anolis",
        )
    },
}

# lsb DISTRIB_ID → platform, for Debian-based systems (first match of §4.3 step 3).
_DEBIAN_LSB_PLATFORMS = {
    "Ubuntu": "ubuntu",
    "LinuxMint": "linuxmint",
    "Kylin": "Kylin",
    "Cumulus Linux": "cumuluslinux",
    "uos": "uos",
    "Deepin": "Deepin",
}

# lsb DISTRIB_ID → platform when no release file matched (§4.3 step 8).
_FALLBACK_LSB_PLATFORMS = {
    "RedHat": "redhat",
    "Amazon": "amazon",
    "ScientificSL": "scientific",
    "XenServer": "xenserver",
}

_REDHATISH_VERSION = re.compile(r"release (\w[\d.]*)", re.ASCII)
_SUSE_VERSION = re.compile(r"VERSION = ([\d.]+)")
_SUSE_PATCHLEVEL = re.compile(r"PATCHLEVEL = (\d+)")


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    host_id: str | None
    arch: str
    platform: str
    distribution: str
    distribution_version: str
    distribution_family: str
    uptime: int  # nanoseconds


@dataclass(frozen=True)
class Lsb:
    id: str = ""
    release: str = ""


# -- small file helpers ------------------------------------------------------------------


def _read_lines(path: Path) -> list[str] | None:
    """The lines of a text file, or None when it cannot be read."""
    text = read_text_or_none(path)
    return None if text is None else lines(text)


def _first_line(path: Path) -> str:
    found = _read_lines(path)
    return found[0] if found else ""


def _has_content(path: Path) -> bool:
    """An existing, non-empty file (gopsutil's "exists with contents")."""
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _exists(path: Path) -> bool:
    try:
        path.stat()
    except OSError:
        return False
    return True


# -- hostname, arch, uptime -------------------------------------------------------------


def read_hostname(root: HostRoot) -> str:
    """The kernel hostname, invalid UTF-8 replaced; raises OSError when a non-live tree lacks it."""
    if root.is_live:
        # The kernel takes any bytes; Python hands undecodable ones back as surrogates,
        # which no database accepts.
        return os.fsencode(socket.gethostname()).decode("utf-8", errors="replace")
    return read_text(root.path("/proc/sys/kernel/hostname")).strip()


def read_arch(root: HostRoot) -> str:
    if not root.is_live:
        arch = _first_line(root.path("/proc/sys/kernel/arch")).strip()
        if arch:
            return arch
    return os.uname().machine


def read_uptime_ns(root: HostRoot) -> int:
    """Uptime in nanoseconds, from whole seconds; raises OSError when unreadable.

    A file that cannot be parsed gives 0, the column's "unknown", with a warning.
    """
    path = root.path("/proc/uptime")
    text = read_text(path)
    return parse_source(path, lambda: parse_uptime_ns(text), 0)


def parse_uptime_ns(text: str) -> int:
    """The first field of /proc/uptime (seconds, with decimals) as whole seconds in nanoseconds."""
    nanoseconds = in_range(int(float(text.split()[0])) * 1_000_000_000)
    if nanoseconds is None:
        raise ValueError(f"uptime out of range: {text.split()[0]!r}")
    return nanoseconds


# -- host id ------------------------------------------------------------------------------


def format_machine_id(machine_id: str) -> str | None:
    """A 32-character machine-id as 8-4-4-4-12, or None when it is not 32 characters."""
    if len(machine_id) != 32:
        return None
    m = machine_id
    return f"{m[0:8]}-{m[8:12]}-{m[12:16]}-{m[16:20]}-{m[20:32]}"


def read_host_id(root: HostRoot) -> str | None:
    """DMI product_uuid → /etc/machine-id → boot_id → None (never '')."""
    product_uuid = _first_line(root.path("/sys/class/dmi/id/product_uuid")).strip().lower()
    if product_uuid and product_uuid not in _PLACEHOLDER_UUIDS:
        return product_uuid
    machine_id = format_machine_id(_first_line(root.path("/etc/machine-id")))
    if machine_id:
        return machine_id
    boot_id = _first_line(root.path("/proc/sys/kernel/random/boot_id")).strip().lower()
    return boot_id or None


# -- distribution -------------------------------------------------------------------------


def parse_lsb_release_file(text: str) -> Lsb:
    """``/etc/lsb-release``: DISTRIB_ID and DISTRIB_RELEASE, double quotes removed."""
    values: dict[str, str] = {}
    for line in lines(text):
        fields = line.split("=")
        if len(fields) >= 2:
            values[fields[0].strip()] = fields[1].replace('"', "").strip()
    return Lsb(values.get("DISTRIB_ID", ""), values.get("DISTRIB_RELEASE", ""))


def parse_lsb_release_output(text: str) -> Lsb:
    """Output of ``lsb_release`` (``Distributor ID:`` / ``Release:`` lines)."""
    values: dict[str, str] = {}
    for line in lines(text):
        fields = line.split(":")
        if len(fields) >= 2:
            values[fields[0].strip()] = fields[1].replace('"', "").strip()
    return Lsb(values.get("Distributor ID", ""), values.get("Release", ""))


def read_lsb(root: HostRoot, command_output: str | None = None) -> Lsb:
    """lsb data from ``/etc/lsb-release``, else from the ``lsb_release`` output given."""
    path = root.path("/etc/lsb-release")
    if _exists(path):
        text = read_text_or_none(path)
        return parse_lsb_release_file(text) if text is not None else Lsb()
    if command_output:
        return parse_lsb_release_output(command_output)
    return Lsb()


def redhatish_version(lines: list[str]) -> str:
    text = "".join(lines).lower()
    if "rawhide" in text:
        return "rawhide"
    match = _REDHATISH_VERSION.search(text)
    return match.group(1) if match else ""


def redhatish_platform(lines: list[str]) -> str:
    text = "".join(lines).lower()
    if "red hat" in text:
        return "redhat"
    return text.split(" ")[0]


def suse_version(lines: list[str]) -> str:
    version = ""
    for line in lines:
        if match := _SUSE_VERSION.search(line):
            version = match.group(1)
        elif match := _SUSE_PATCHLEVEL.search(line):
            version = f"{version}.{match.group(1)}"
    return version


def suse_platform(lines: list[str]) -> str:
    return "opensuse" if "opensuse" in "".join(lines).lower() else "suse"


def slackware_version(lines: list[str]) -> str:
    return "".join(lines).lower().replace("slackware ", "", 1)


def _trim_double_quotes(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1]
    return value


def parse_os_release(text: str) -> tuple[str, str]:
    """``ID`` and ``VERSION_ID`` of an os-release file (``amzn`` becomes ``amazon``)."""
    platform = version = ""
    for line in lines(text):
        fields = line.split("=")
        if len(fields) < 2:
            continue
        if fields[0] == "ID":
            platform = _trim_double_quotes(fields[1])
        elif fields[0] == "VERSION_ID":
            version = _trim_double_quotes(fields[1])
    if platform == "amzn":
        platform = "amazon"
    return platform, version


def distribution_family(platform: str) -> str:
    return _FAMILIES.get(platform, "")


def _lines_of(root: HostRoot, absolute: str) -> list[str]:
    return _read_lines(root.path(absolute)) or []


def _debian_platform(root: HostRoot, lsb: Lsb) -> tuple[str, str]:
    lsb_id = lsb.id.strip('"')
    if lsb_id in _DEBIAN_LSB_PLATFORMS:
        return _DEBIAN_LSB_PLATFORMS[lsb_id], lsb.release
    platform = "raspbian" if _has_content(root.path("/usr/bin/raspi-config")) else "debian"
    return platform, _first_line(root.path("/etc/debian_version"))


def _lsb_fallback_platform(lsb: Lsb) -> tuple[str, str]:
    if lsb.id in _FALLBACK_LSB_PLATFORMS:
        return _FALLBACK_LSB_PLATFORMS[lsb.id], lsb.release
    if lsb.id:
        return lsb.id.lower(), lsb.release
    return "", ""


def release_file_branch(root: HostRoot) -> str | None:
    """Which ``/etc`` release file decides the distribution (None: the lsb fallbacks)."""
    for name in (
        "oracle-release",
        "enterprise-release",
        "slackware-version",
        "debian_version",
        "neokylin-release",
        "redhat-release",
        "system-release",
        "gentoo-release",
        "SuSE-release",
        "arch-release",
        "alpine-release",
        "os-release",
    ):
        if _has_content(root.path(f"/etc/{name}")):
            return name
    return None


def detect_distribution(root: HostRoot, lsb_release_output: str | None = None) -> tuple[str, str, str]:
    """(distribution, version, family) in the order of spec §4.3."""
    lsb = read_lsb(root, lsb_release_output)
    branch = release_file_branch(root)
    if branch in ("oracle-release", "enterprise-release"):
        platform, version = "oracle", redhatish_version(_lines_of(root, f"/etc/{branch}"))
    elif branch == "slackware-version":
        platform, version = "slackware", slackware_version(_lines_of(root, "/etc/slackware-version"))
    elif branch == "debian_version":
        platform, version = _debian_platform(root, lsb)
    elif branch in ("neokylin-release", "redhat-release", "system-release"):
        release = _lines_of(root, f"/etc/{branch}")
        platform, version = redhatish_platform(release), redhatish_version(release)
    elif branch == "gentoo-release":
        platform, version = "gentoo", redhatish_version(_lines_of(root, "/etc/gentoo-release"))
    elif branch == "SuSE-release":
        release = _lines_of(root, "/etc/SuSE-release")
        platform, version = suse_platform(release), suse_version(release)
    elif branch == "arch-release":
        platform, version = "arch", lsb.release
    elif branch == "alpine-release":
        platform, version = "alpine", _first_line(root.path("/etc/alpine-release"))
    elif branch == "os-release":
        platform, version = parse_os_release(read_text_or_none(root.path("/etc/os-release")) or "")
    else:
        platform, version = _lsb_fallback_platform(lsb)
    platform = platform.strip('"')
    return platform, version, distribution_family(platform)


def needs_lsb_release_command(root: HostRoot) -> bool:
    """True when detection would use lsb data that only ``lsb_release`` can give."""
    if not root.is_live or _exists(root.path("/etc/lsb-release")):
        return False
    if not _exists(root.path(LSB_RELEASE_COMMAND)):
        return False
    return release_file_branch(root) in ("debian_version", "arch-release", None)


async def run_lsb_release() -> str | None:
    """Run ``lsb_release`` (live system only); None when it fails or hangs."""
    return await command_output([LSB_RELEASE_COMMAND, "-a"], LSB_RELEASE_TIMEOUT)


# -- everything ---------------------------------------------------------------------------


def collect(root: HostRoot, *, lsb_release_output: str | None = None) -> HostFacts:
    """All host facts (blocking: run it in a thread). Raises OSError when the hostname
    or the uptime cannot be read; a source that cannot be parsed is left empty."""
    distribution, version, family = detect_distribution(root, lsb_release_output)
    return HostFacts(
        hostname=read_hostname(root),
        host_id=read_host_id(root),
        arch=read_arch(root),
        platform=PLATFORM,
        distribution=distribution,
        distribution_version=version,
        distribution_family=family,
        uptime=read_uptime_ns(root),
    )


def machine_row(agent_id: str, facts: HostFacts) -> dict[str, object]:
    """The full ``machines`` row of the agent host (every column explicit)."""
    return {
        "agent": agent_id,
        "hostname": facts.hostname,
        "host_id": facts.host_id,
        "arch": facts.arch,
        "platform": facts.platform,
        "distribution": facts.distribution,
        "distribution_version": facts.distribution_version,
        "distribution_family": facts.distribution_family,
        "uptime": facts.uptime,
        "cpe": "",
        "chassis": "",
        "parent_machine_id": None,
    }


@module("host-basic", depends=("fingerprint",))
async def run(ctx: Context) -> None:
    """Create or refresh the agent host's machine row (hostname, OS, host id, uptime)."""
    command_output = None
    if await asyncio.to_thread(needs_lsb_release_command, ctx.root):
        command_output = await run_lsb_release()
    facts = await asyncio.to_thread(collect, ctx.root, lsb_release_output=command_output)
    # One row per host whatever the agent ids, and a cloned agent id kept apart (host_row.py).
    ctx.host.id = await write_host_row(ctx, machine_row(ctx.agent_id, facts), REFRESHED_COLUMNS)
    ctx.log.debug(
        "host facts",
        hostname=facts.hostname,
        distribution=facts.distribution,
        version=facts.distribution_version,
        family=facts.distribution_family,
        host_id=facts.host_id,
    )

"""chassis: what kind of machine the agent host is (``machines.chassis``).

Sources, first answer wins:

1. systemd-hostnamed's ``Chassis`` property over the system D-Bus (live
   system only, when ``/run/dbus/system_bus_socket`` or
   ``/var/run/dbus/system_bus_socket`` exists), asked through ``busctl``,
   else ``hostnamectl chassis``, in an asyncio subprocess. An empty answer
   or a failing command falls through to the files below.
2. Container markers: ``/.dockerenv``, ``/run/.containerenv`` (podman),
   ``/run/systemd/container``, ``/proc/1/cgroup`` naming docker, kubepods,
   containerd or lxc, ``container=`` in ``/proc/1/environ`` → ``container``.
3. Hypervisor markers: DMI ``sys_vendor`` / ``product_name`` /
   ``bios_vendor`` of a known hypervisor or cloud VM, or the ``hypervisor``
   CPU flag in ``/proc/cpuinfo`` → ``vm``.
4. DMI ``chassis_type`` (SMBIOS number), then the ACPI ``pm_profile``,
   then the device-tree ``chassis-type``, mapped to hostnamed's vocabulary
   (desktop, laptop, convertible, server, tablet, handset, watch, embedded).
5. A device-tree ``model`` starting with "Raspberry Pi" → ``raspberry``.

Nothing found → the module skips. The value is written with the named query
``set_machine_chassis`` (``sql/queries/machines.sql``).
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

from situation.hostroot import HostRoot, lines, read_text_or_none
from situation.module import Context, Skip, command_output, module

COMMAND_TIMEOUT = 5.0

# hostnamed's chassis vocabulary (what the D-Bus answer and our mapping may be).
VOCABULARY = frozenset(
    {"desktop", "laptop", "convertible", "server", "tablet", "handset", "watch", "embedded", "vm", "container"}
)

# SMBIOS chassis types (decimal, as /sys/class/dmi/id/chassis_type shows them),
# mapped as systemd-hostnamed maps them; unlisted types (other, unknown, docking
# station, expansion chassis …) say nothing.
DMI_CHASSIS_TYPES: dict[int, str] = {
    3: "desktop",  # Desktop
    4: "desktop",  # Low Profile Desktop
    6: "desktop",  # Mini Tower
    7: "desktop",  # Tower
    8: "laptop",  # Portable
    9: "laptop",  # Laptop
    10: "laptop",  # Notebook
    11: "handset",  # Hand Held
    13: "desktop",  # All in One
    14: "laptop",  # Sub Notebook
    17: "server",  # Main Server Chassis
    23: "server",  # Rack Mount Chassis
    28: "server",  # Blade
    29: "server",  # Blade Enclosure
    30: "tablet",  # Tablet
    31: "convertible",  # Convertible
    32: "convertible",  # Detachable
    33: "embedded",  # IoT Gateway
    34: "embedded",  # Embedded PC
    35: "desktop",  # Mini PC
    36: "desktop",  # Stick PC
}

# ACPI FADT "preferred PM profile" (/sys/firmware/acpi/pm_profile).
ACPI_PM_PROFILES: dict[int, str] = {
    1: "desktop",  # Desktop
    2: "laptop",  # Mobile
    3: "desktop",  # Workstation
    4: "server",  # Enterprise Server
    5: "server",  # SOHO Server
    7: "server",  # Performance Server
    8: "tablet",  # Tablet
}

_CONTAINER_CGROUP_WORDS = ("docker", "kubepods", "containerd", "lxc", "libpod")

# Lowercase fragments of DMI vendor/product/BIOS strings that only virtual machines carry.
_VM_DMI_MARKERS = (
    "qemu",
    "kvm",
    "vmware",
    "virtualbox",
    "innotek gmbh",
    "xen",
    "bochs",
    "bhyve",
    "parallels",
    "openstack",
    "kubevirt",
    "google compute engine",
    "amazon ec2",
    "alibaba cloud ecs",
    "droplet",
    "hetzner vserver",
)

_BUSCTL_STRING = re.compile(r'^s\s+"(.*)"\s*$')

SYSTEM_BUS_SOCKETS = ("/run/dbus/system_bus_socket", "/var/run/dbus/system_bus_socket")


# -- file helpers ------------------------------------------------------------------------


def _read_first_line(path: Path) -> str:
    first = lines(read_text_or_none(path) or "")[:1]
    return first[0].strip() if first else ""


def _exists(path: Path) -> bool:
    try:
        path.lstat()
    except OSError:
        return False
    return True


# -- container ---------------------------------------------------------------------------


def detect_container(root: HostRoot) -> str | None:
    """The container marker found (for the log line), or None."""
    for marker in ("/.dockerenv", "/run/.containerenv", "/run/systemd/container"):
        if _exists(root.path(marker)):
            return marker
    cgroup = (read_text_or_none(root.path("/proc/1/cgroup")) or "").lower()
    if any(word in cgroup for word in _CONTAINER_CGROUP_WORDS):
        return "/proc/1/cgroup"
    environ = read_text_or_none(root.path("/proc/1/environ")) or ""
    if any(item.startswith("container=") for item in environ.split("\0")):
        return "/proc/1/environ"
    return None


# -- virtual machine ---------------------------------------------------------------------


def _dmi(root: HostRoot, name: str) -> str:
    return _read_first_line(root.path(f"/sys/class/dmi/id/{name}"))


def is_vm_dmi(sys_vendor: str, product_name: str, bios_vendor: str = "") -> bool:
    """True when the DMI strings are those of a hypervisor or a cloud VM."""
    vendor, product = sys_vendor.lower(), product_name.lower()
    if vendor == "amazon ec2" and product.endswith(".metal"):
        return False  # EC2 bare-metal instances keep the Amazon vendor string
    if "microsoft corporation" in vendor and "virtual machine" in product:
        return True  # Hyper-V / Azure
    text = " ".join((vendor, product, bios_vendor.lower()))
    return any(marker in text for marker in _VM_DMI_MARKERS)


def has_hypervisor_flag(cpuinfo: str) -> bool:
    for line in lines(cpuinfo):
        key, colon, value = line.partition(":")
        if colon and key.strip() in ("flags", "Features") and "hypervisor" in value.split():
            return True
    return False


def detect_vm(root: HostRoot) -> str | None:
    """The VM evidence found (for the log line), or None."""
    if is_vm_dmi(_dmi(root, "sys_vendor"), _dmi(root, "product_name"), _dmi(root, "bios_vendor")):
        return "/sys/class/dmi/id"
    if has_hypervisor_flag(read_text_or_none(root.path("/proc/cpuinfo")) or ""):
        return "/proc/cpuinfo hypervisor flag"
    return None


# -- firmware chassis type ---------------------------------------------------------------


def _number(text: str) -> int | None:
    try:
        return int(text.strip(), 0)
    except ValueError:
        return None


def dmi_chassis(chassis_type: str) -> str | None:
    number = _number(chassis_type)
    return DMI_CHASSIS_TYPES.get(number & 0x7F) if number is not None else None


def acpi_chassis(pm_profile: str) -> str | None:
    number = _number(pm_profile)
    return ACPI_PM_PROFILES.get(number) if number is not None else None


def _device_tree_value(root: HostRoot, name: str) -> str:
    """A device-tree string property (NUL-terminated), from /proc or /sys."""
    for base in ("/proc/device-tree", "/sys/firmware/devicetree/base"):
        text = read_text_or_none(root.path(f"{base}/{name}"))
        if text:
            return text.split("\0")[0].strip()
    return ""


def detect_firmware_chassis(root: HostRoot) -> tuple[str, str] | None:
    """(chassis, source) from DMI, ACPI or device-tree chassis types."""
    from_dmi = dmi_chassis(_dmi(root, "chassis_type"))
    if from_dmi:
        return from_dmi, "/sys/class/dmi/id/chassis_type"
    from_acpi = acpi_chassis(_read_first_line(root.path("/sys/firmware/acpi/pm_profile")))
    if from_acpi:
        return from_acpi, "/sys/firmware/acpi/pm_profile"
    from_dt = _device_tree_value(root, "chassis-type")
    if from_dt in VOCABULARY:
        return from_dt, "device-tree chassis-type"
    return None


def detect_raspberry(root: HostRoot) -> str | None:
    model = _device_tree_value(root, "model")
    return model if model.startswith("Raspberry Pi") else None


# -- files, all together -----------------------------------------------------------------


def detect_from_files(root: HostRoot) -> tuple[str, str] | None:
    """(chassis, evidence) from the files of steps 2–5, or None (blocking)."""
    if marker := detect_container(root):
        return "container", marker
    if evidence := detect_vm(root):
        return "vm", evidence
    if found := detect_firmware_chassis(root):
        return found
    if model := detect_raspberry(root):
        return "raspberry", model
    return None


# -- hostnamed over D-Bus ----------------------------------------------------------------


def hostnamed_commands(root: HostRoot) -> list[list[str]]:
    """The commands that can ask hostnamed here (blocking: stats and PATH lookups)."""
    if not root.is_live or not any(_exists(root.path(p)) for p in SYSTEM_BUS_SOCKETS):
        return []
    commands = []
    if busctl := shutil.which("busctl"):
        commands.append(
            [
                busctl,
                "--system",
                f"--timeout={int(COMMAND_TIMEOUT)}",
                "get-property",
                "org.freedesktop.hostname1",
                "/org/freedesktop/hostname1",
                "org.freedesktop.hostname1",
                "Chassis",
            ]
        )
    if hostnamectl := shutil.which("hostnamectl"):
        commands.append([hostnamectl, "chassis"])
    return commands


def parse_busctl_string(output: str) -> str:
    """``s "laptop"`` → ``laptop``; anything else → ''."""
    match = _BUSCTL_STRING.match(output.strip())
    return match.group(1) if match else ""


def parse_command_output(command: list[str], output: str) -> str:
    if Path(command[0]).name == "busctl":
        return parse_busctl_string(output)
    return output.strip()


async def ask_hostnamed(root: HostRoot) -> str | None:
    """hostnamed's non-empty Chassis answer, or None."""
    for command in await asyncio.to_thread(hostnamed_commands, root):
        output = await command_output(command, COMMAND_TIMEOUT + 1)
        if output is None:
            continue
        chassis = parse_command_output(command, output)
        if chassis:
            return chassis
    return None


async def detect_chassis(root: HostRoot) -> tuple[str, str] | None:
    """(chassis, source) from hostnamed, else from the files; None when nothing says."""
    chassis = await ask_hostnamed(root)
    if chassis:
        return chassis, "hostnamed"
    return await asyncio.to_thread(detect_from_files, root)


@module("chassis", depends=("host-basic",))
async def run(ctx: Context) -> None:
    """Record the host's chassis (hostnamed over D-Bus, else container/VM/firmware hints)."""
    machine_id = ctx.host_id()
    found = await detect_chassis(ctx.root)
    if found is None:
        raise Skip("chassis unknown: no hostnamed answer, no container, VM or firmware chassis hint")
    chassis, source = found
    ctx.log.debug("chassis", chassis=chassis, source=source)
    written = await ctx.store.execute("set_machine_chassis", chassis, machine_id, ctx.agent_id)
    ctx.count(written)

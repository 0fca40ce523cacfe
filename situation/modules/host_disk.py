"""host-disk: the host's block devices and their partitions, into ``disks``.

Sources, all read through the module's :class:`~situation.hostroot.HostRoot`:

- ``/sys/block/<dev>``: one entry per block device. The name prefix gives the
  controller and the drive type (``sd`` scsi/hdd, ``hd`` ide/hdd, ``vd``
  virtio/hdd, ``xvd`` scsi/hdd, ``nvme`` nvme/ssd, ``sr`` scsi/optical, ``mmc``
  mmc/ssd, ``fd`` floppy without controller, ``loop`` loop/virtual; anything
  else has no known controller). An ``hdd`` whose ``queue/rotational`` is not
  ``1`` is an ``ssd``. ``size`` counts 512-byte sectors (a size past 64 bits
  counts as 0); ``dev`` holds ``major:minor``; sub-directories named after the
  disk are its partitions.
- ``/run/udev/data/b<major>:<minor>``: udev's database, ``E:ID_MODEL=`` for the
  disk model and ``E:ID_FS_TYPE=`` for a partition's filesystem.
- ``/proc/mounts``: filesystem type and options of mounted partitions.

Rules (agent-behaviour.md §4.5): devices without a known controller are skipped
(dm-*, md*, zram*, nbd*, fd*); empty loop devices (size 0) are skipped and the
others are stored with controller and type ``unknown``, as the original does.
A partition's type comes from its mount, else from udev, else ``unknown``.

Deliberate deviation (§10.3): ``read_only`` is true only for a partition that is
mounted read-only. The original reports every unmounted partition read-only.

An empty disk list writes nothing (§10.2).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from situation.hostroot import INT64_MAX, HostRoot, host_int, lines, read_text_or_none
from situation.module import Context, module

SECTOR_SIZE = 512
_DEVICE_NUMBER = re.compile(r"^[0-9]+:[0-9]+$")
UNKNOWN = "unknown"

# Name prefix → (controller, drive type); checked longest prefix first.
_PREFIX_KINDS: tuple[tuple[str, str, str], ...] = (
    ("nvme", "nvme", "ssd"),
    ("loop", "loop", "virtual"),
    ("xvd", "scsi", "hdd"),
    ("mmc", "mmc", "ssd"),
    ("sd", "scsi", "hdd"),
    ("hd", "ide", "hdd"),
    ("vd", "virtio", "hdd"),
    ("sr", "scsi", "optical"),
    ("fd", UNKNOWN, "floppy"),
)


@dataclass(frozen=True)
class Partition:
    name: str
    size: int = 0
    type: str = ""
    read_only: bool = False

    def as_json(self) -> dict[str, Any]:
        """The stored JSON object: each key omitted when zero, empty or false."""
        document: dict[str, Any] = {}
        if self.name:
            document["name"] = self.name
        if self.size:
            document["size"] = self.size
        if self.type:
            document["type"] = self.type
        if self.read_only:
            document["read_only"] = True
        return document


@dataclass(frozen=True)
class Disk:
    name: str
    model: str
    size: int
    type: str
    controller: str
    partitions: tuple[Partition, ...] = field(default_factory=tuple)

    def as_row(self, machine_id: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "size": self.size,
            "type": self.type,
            "controller": self.controller,
            "partitions": [partition.as_json() for partition in self.partitions],
            "machine_id": machine_id,
        }


@dataclass(frozen=True)
class Mount:
    fstype: str
    options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        return "rw" not in self.options


# -- small readers -----------------------------------------------------------------


def read_text(path: Path) -> str | None:
    """A sysfs/procfs file's content without surrounding whitespace; None when unreadable."""
    text = read_text_or_none(path)
    return None if text is None else text.strip()


def read_size(path: Path) -> int:
    """Bytes of a sysfs ``size`` file (512-byte sectors); 0 when unreadable or beyond 64 bits."""
    sectors = host_int(read_text(path), maximum=INT64_MAX // SECTOR_SIZE)
    return sectors * SECTOR_SIZE if sectors is not None else 0


def read_udev_properties(root: HostRoot, device_number: str | None) -> dict[str, str]:
    """``E:KEY=VALUE`` lines of ``/run/udev/data/b<major:minor>``."""
    if not device_number or not _DEVICE_NUMBER.match(device_number):
        return {}  # a sysfs ``dev`` of another shape must not pick the file read (NUL, ../)
    text = read_text(root.path(f"/run/udev/data/b{device_number}"))
    properties: dict[str, str] = {}
    for line in lines(text or ""):
        if line.startswith("E:") and "=" in line:
            key, _, value = line[2:].partition("=")
            properties[key] = value.strip()
    return properties


def _unescape_mount_field(text: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)


def read_mounts(root: HostRoot) -> dict[str, Mount]:
    """Mounted devices of ``/proc/mounts`` by device path; the first mount of a device wins."""
    mounts: dict[str, Mount] = {}
    for line in lines(read_text(root.path("/proc/mounts")) or ""):
        fields = line.split()
        if len(fields) < 4:
            continue
        device = _unescape_mount_field(fields[0])
        mounts.setdefault(device, Mount(fstype=fields[2], options=tuple(fields[3].split(","))))
    return mounts


# -- classification ----------------------------------------------------------------


def classify_device(name: str) -> tuple[str, str]:
    """(controller, drive type) from the device name prefix; ``unknown`` controller if none."""
    for prefix, controller, drive_type in _PREFIX_KINDS:
        if name.startswith(prefix):
            return controller, drive_type
    return UNKNOWN, UNKNOWN


def is_rotational(device_dir: Path) -> bool:
    return read_text(device_dir / "queue" / "rotational") == "1"


def _natural_key(name: str) -> list[Any]:
    # isdecimal, not isdigit: int() refuses digits such as '²' that isdigit accepts.
    return [int(part) if part.isdecimal() else part for part in re.split(r"(\d+)", name)]


# -- collection --------------------------------------------------------------------


def read_partitions(root: HostRoot, device_dir: Path, mounts: dict[str, Mount]) -> tuple[Partition, ...]:
    """Sub-directories of ``/sys/block/<disk>`` named after the disk, in natural order."""
    disk_name = device_dir.name
    try:
        entries = [entry for entry in device_dir.iterdir() if entry.name.startswith(disk_name) and entry.is_dir()]
    except OSError:
        return ()
    partitions = []
    for entry in sorted(entries, key=lambda item: _natural_key(item.name)):
        partitions.append(read_partition(root, entry, mounts))
    return tuple(partitions)


def read_partition(root: HostRoot, partition_dir: Path, mounts: dict[str, Mount]) -> Partition:
    name = partition_dir.name
    mount = mounts.get(f"/dev/{name}")
    if mount is not None:
        fs_type = mount.fstype
    else:
        fs_type = read_udev_properties(root, read_text(partition_dir / "dev")).get("ID_FS_TYPE") or UNKNOWN
    return Partition(
        name=name,
        size=read_size(partition_dir / "size"),
        type=fs_type,
        read_only=mount is not None and mount.read_only,
    )


def read_disk(root: HostRoot, device_dir: Path, mounts: dict[str, Mount]) -> Disk | None:
    """One ``/sys/block`` entry as a :class:`Disk`, or None when it is skipped."""
    name = device_dir.name
    controller, drive_type = classify_device(name)
    if controller == UNKNOWN:
        return None
    size = read_size(device_dir / "size")
    if controller == "loop":
        if size == 0:
            return None
        controller, drive_type = UNKNOWN, UNKNOWN
    elif drive_type == "hdd" and not is_rotational(device_dir):
        drive_type = "ssd"
    udev = read_udev_properties(root, read_text(device_dir / "dev"))
    return Disk(
        name=name,
        model=udev.get("ID_MODEL") or UNKNOWN,
        size=size,
        type=drive_type,
        controller=controller,
        partitions=read_partitions(root, device_dir, mounts),
    )


def collect_disks(root: HostRoot) -> list[Disk]:
    """Every kept disk of ``/sys/block``, sorted by name (blocking: run in a thread)."""
    block = root.path("/sys/block")
    try:
        devices = sorted(block.iterdir(), key=lambda item: _natural_key(item.name))
    except OSError:
        return []
    mounts = read_mounts(root)
    disks = []
    for device_dir in devices:
        disk = read_disk(root, device_dir, mounts)
        if disk is not None:
            disks.append(disk)
    return disks



@module("host-disk", depends=("host-basic",))
async def run(ctx: Context) -> None:
    """Block devices and partitions of the host (/sys/block, udev, /proc/mounts)."""
    disks = await asyncio.to_thread(collect_disks, ctx.root)
    if not disks:
        ctx.log.info("no disk found")
        return
    machine_id = ctx.host_id()
    result = await ctx.upsert(
        "disks",
        [disk.as_row(machine_id) for disk in disks],
        key="machine_disk_name",
        update=("model", "size", "type", "controller", "partitions"),
    )
    ctx.log.debug("disks stored", disks=len(disks), written=result.written)

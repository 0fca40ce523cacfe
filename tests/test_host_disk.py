"""host-disk: /sys/block classification, sizes, udev models, partitions, and what run() writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from situation.hostroot import HostRoot
from situation.module import REGISTRY
from situation.modules import host_disk
from situation.modules.host_disk import Disk, Partition, classify_device, collect_disks
from support.modules import AGENT, ModuleStore


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def add_block_device(
    root: Path,
    name: str,
    *,
    sectors: int,
    dev: str,
    rotational: int | None = None,
    partitions: dict[str, tuple[int, str]] | None = None,
) -> None:
    device = root / "sys/block" / name
    write(device / "size", f"{sectors}\n")
    write(device / "dev", f"{dev}\n")
    write(device / "ro", "0\n")
    (device / "holders").mkdir()
    if rotational is not None:
        write(device / "queue/rotational", f"{rotational}\n")
    for part_name, (part_sectors, part_dev) in (partitions or {}).items():
        write(device / part_name / "size", f"{part_sectors}\n")
        write(device / part_name / "dev", f"{part_dev}\n")


def add_udev(root: Path, dev: str, **properties: str) -> None:
    lines = ["S:disk/by-id/whatever", "I:123456"] + [f"E:{key}={value}" for key, value in properties.items()]
    write(root / f"run/udev/data/b{dev}", "\n".join(lines) + "\n")


@pytest.fixture
def disk_root(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    add_block_device(
        root,
        "nvme0n1",
        sectors=1000,
        dev="259:0",
        rotational=0,
        partitions={"nvme0n1p1": (100, "259:1"), "nvme0n1p2": (800, "259:2"), "nvme0n1p10": (0, "259:3")},
    )
    add_udev(root, "259:0", ID_MODEL="Samsung_SSD_970_EVO_1TB", ID_SERIAL="x")
    add_udev(root, "259:1", ID_FS_TYPE="vfat")
    add_udev(root, "259:2", ID_FS_TYPE="crypto_LUKS")  # the mount wins over udev
    add_block_device(root, "vda", sectors=2048, dev="252:0", rotational=1)
    add_block_device(root, "sda", sectors=4096, dev="8:0", rotational=1, partitions={"sda1": (4000, "8:1")})
    add_udev(root, "8:0", ID_MODEL="WDC_WD40EFRX")
    add_block_device(
        root, "sdb", sectors=300, dev="8:16", rotational=0, partitions={"sdb1": (100, "8:17"), "sdb2": (150, "8:18")}
    )
    add_block_device(root, "loop0", sectors=0, dev="7:0", rotational=1)
    add_block_device(root, "loop1", sectors=64, dev="7:1", rotational=1)
    add_block_device(root, "sr0", sectors=10, dev="11:0", rotational=1)
    add_block_device(root, "dm-0", sectors=500, dev="253:0", rotational=0)
    add_block_device(root, "zram0", sectors=500, dev="251:0", rotational=0)
    add_block_device(root, "fd0", sectors=8, dev="2:0", rotational=1)
    write(
        root / "proc/mounts",
        "sysfs /sys sysfs rw,nosuid 0 0\n"
        "/dev/nvme0n1p2 / ext4 rw,relatime 0 0\n"
        "/dev/nvme0n1p2 /var/lib/snap ext4 ro,relatime 0 0\n"
        "/dev/sdb1 /mnt/archive\\040old xfs ro,noatime 0 0\n",
    )
    return root


def by_name(disks: list[Disk]) -> dict[str, Disk]:
    return {disk.name: disk for disk in disks}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sda", ("scsi", "hdd")),
        ("hda", ("ide", "hdd")),
        ("vdb", ("virtio", "hdd")),
        ("xvda", ("scsi", "hdd")),
        ("nvme1n1", ("nvme", "ssd")),
        ("sr0", ("scsi", "optical")),
        ("mmcblk0", ("mmc", "ssd")),
        ("fd0", ("unknown", "floppy")),
        ("loop3", ("loop", "virtual")),
        ("dm-0", ("unknown", "unknown")),
        ("md127", ("unknown", "unknown")),
        ("nbd0", ("unknown", "unknown")),
        ("zram0", ("unknown", "unknown")),
    ],
)
def test_classify_device_by_name_prefix(name: str, expected: tuple[str, str]) -> None:
    assert classify_device(name) == expected


def test_kept_and_skipped_devices(disk_root: Path) -> None:
    disks = collect_disks(HostRoot.under(disk_root))
    # Skipped: loop0 (empty), dm-0, zram0 (unknown controller), fd0 (floppy, no controller).
    assert [disk.name for disk in disks] == ["loop1", "nvme0n1", "sda", "sdb", "sr0", "vda"]


def test_nvme_disk_with_partitions(disk_root: Path) -> None:
    nvme = by_name(collect_disks(HostRoot.under(disk_root)))["nvme0n1"]
    assert nvme.controller == "nvme"
    assert nvme.type == "ssd"
    assert nvme.size == 1000 * 512
    assert nvme.model == "Samsung_SSD_970_EVO_1TB"
    assert nvme.partitions == (
        Partition(name="nvme0n1p1", size=100 * 512, type="vfat", read_only=False),
        Partition(name="nvme0n1p2", size=800 * 512, type="ext4", read_only=False),
        Partition(name="nvme0n1p10", size=0, type="unknown", read_only=False),
    )


def test_virtio_disk_without_udev_model(disk_root: Path) -> None:
    vda = by_name(collect_disks(HostRoot.under(disk_root)))["vda"]
    assert (vda.controller, vda.type, vda.size) == ("virtio", "hdd", 2048 * 512)
    assert (vda.model, vda.partitions) == ("unknown", ())


def test_scsi_rotational_is_hdd_and_non_rotational_is_ssd(disk_root: Path) -> None:
    disks = by_name(collect_disks(HostRoot.under(disk_root)))
    assert (disks["sda"].controller, disks["sda"].type, disks["sda"].model) == ("scsi", "hdd", "WDC_WD40EFRX")
    assert (disks["sdb"].controller, disks["sdb"].type) == ("scsi", "ssd")


def test_read_only_only_when_mounted_read_only(disk_root: Path) -> None:
    disks = by_name(collect_disks(HostRoot.under(disk_root)))
    sdb1, sdb2 = disks["sdb"].partitions
    assert sdb1 == Partition(name="sdb1", size=100 * 512, type="xfs", read_only=True)
    # Unmounted, no udev entry: type unknown, and not read-only (the original would say read-only).
    assert sdb2 == Partition(name="sdb2", size=150 * 512, type="unknown", read_only=False)
    # sda1: unmounted, no udev data either.
    assert disks["sda"].partitions == (Partition(name="sda1", size=4000 * 512, type="unknown"),)


def test_non_empty_loop_is_stored_as_unknown(disk_root: Path) -> None:
    loop1 = by_name(collect_disks(HostRoot.under(disk_root)))["loop1"]
    assert (loop1.controller, loop1.type, loop1.size) == ("unknown", "unknown", 64 * 512)


def test_optical_keeps_its_type(disk_root: Path) -> None:
    sr0 = by_name(collect_disks(HostRoot.under(disk_root)))["sr0"]
    assert (sr0.controller, sr0.type, sr0.size) == ("scsi", "optical", 10 * 512)


def test_partition_json_omits_zero_empty_and_false() -> None:
    assert Partition(name="sda1", size=1024, type="ext4", read_only=True).as_json() == {
        "name": "sda1",
        "size": 1024,
        "type": "ext4",
        "read_only": True,
    }
    assert Partition(name="sda2", size=0, type="unknown", read_only=False).as_json() == {
        "name": "sda2",
        "type": "unknown",
    }
    assert Partition(name="").as_json() == {}


def test_disk_row(disk_root: Path) -> None:
    sdb = by_name(collect_disks(HostRoot.under(disk_root)))["sdb"]
    assert sdb.as_row(7) == {
        "name": "sdb",
        "model": "unknown",
        "size": 300 * 512,
        "type": "ssd",
        "controller": "scsi",
        "partitions": [
            {"name": "sdb1", "size": 100 * 512, "type": "xfs", "read_only": True},
            {"name": "sdb2", "size": 150 * 512, "type": "unknown"},
        ],
        "machine_id": 7,
    }


@pytest.mark.parametrize("dev", ["8:0\x00", "../../../etc/udev", "8:0/../8:0", "8"])
def test_dev_of_another_shape_reads_no_udev_file(tmp_path: Path, dev: str) -> None:
    root = tmp_path / "host"
    add_block_device(root, "sda", sectors=8, dev="8:0", rotational=1)
    (root / "sys/block/sda/dev").write_bytes(dev.encode())
    add_udev(root, "8:0", ID_MODEL="Disk")
    write(root / "etc/udev", "E:ID_MODEL=Forged\n")
    [disk] = collect_disks(HostRoot.under(root))
    assert disk.model == "unknown"


def test_size_past_64_bits_counts_as_zero(tmp_path: Path) -> None:
    root = tmp_path / "host"
    add_block_device(root, "sda", sectors=2**55, dev="8:0", rotational=1, partitions={"sda1": (2**54 - 1, "8:1")})
    [disk] = collect_disks(HostRoot.under(root))
    assert disk.size == 0 and disk.partitions[0].size == 2**63 - 512  # the largest that fits


def test_missing_sys_block_gives_no_disk(tmp_path: Path) -> None:
    assert collect_disks(HostRoot.under(tmp_path)) == []


# -- run() against a real SQLite store -------------------------------------------------


def test_module_is_registered() -> None:
    spec = REGISTRY["host-disk"]
    assert spec.depends == ("host-basic",)
    assert spec.run is host_disk.run


async def test_run_stores_every_kept_disk(disk_root: Path, module_store: ModuleStore) -> None:
    ctx = await module_store.run("host-disk", disk_root)
    stored = module_store.rows("disks")
    assert [row["name"] for row in stored] == ["loop1", "nvme0n1", "sda", "sdb", "sr0", "vda"]
    assert all(row["machine_id"] == module_store.machine_id for row in stored)
    assert all(row["updated_by"] == AGENT for row in stored)
    by_row = {row["name"]: row for row in stored}
    assert {column: by_row["nvme0n1"][column] for column in ("model", "size", "type", "controller")} == {
        "model": "Samsung_SSD_970_EVO_1TB",
        "size": 1000 * 512,
        "type": "ssd",
        "controller": "nvme",
    }
    assert by_row["nvme0n1"]["partitions"] == [
        {"name": "nvme0n1p1", "size": 100 * 512, "type": "vfat"},
        {"name": "nvme0n1p2", "size": 800 * 512, "type": "ext4"},
        {"name": "nvme0n1p10", "type": "unknown"},
    ]
    assert by_row["sdb"]["partitions"] == [
        {"name": "sdb1", "size": 100 * 512, "type": "xfs", "read_only": True},
        {"name": "sdb2", "size": 150 * 512, "type": "unknown"},
    ]
    assert (by_row["vda"]["model"], by_row["vda"]["partitions"]) == ("unknown", [])
    assert (by_row["loop1"]["controller"], by_row["loop1"]["type"]) == ("unknown", "unknown")
    assert ctx.rows_written == 6


async def test_second_run_writes_nothing(disk_root: Path, module_store: ModuleStore) -> None:
    await module_store.run("host-disk", disk_root)
    before = module_store.snapshot()
    ctx = await module_store.run("host-disk", disk_root)
    assert ctx.rows_written == 0
    assert module_store.snapshot() == before


async def test_changed_disk_updates_its_row(disk_root: Path, module_store: ModuleStore) -> None:
    # The row is found again on (name, machine_id); model, size and partitions are refreshed.
    await module_store.run("host-disk", disk_root)
    ids = {row["name"]: row["id"] for row in module_store.rows("disks")}
    add_udev(disk_root, "252:0", ID_MODEL="QEMU_HARDDISK")
    write(disk_root / "sys/block/vda/size", "4096\n")
    write(disk_root / "sys/block/vda/vda1/size", "4000\n")
    write(disk_root / "sys/block/vda/vda1/dev", "252:1\n")
    ctx = await module_store.run("host-disk", disk_root)
    assert ctx.rows_written == 1
    stored = {row["name"]: row for row in module_store.rows("disks")}
    assert {name: row["id"] for name, row in stored.items()} == ids
    vda = stored["vda"]
    assert (vda["model"], vda["size"], vda["type"], vda["controller"]) == ("QEMU_HARDDISK", 4096 * 512, "hdd", "virtio")
    assert vda["partitions"] == [{"name": "vda1", "size": 4000 * 512, "type": "unknown"}]


async def test_run_without_disks_writes_nothing(tmp_path: Path, module_store: ModuleStore) -> None:
    ctx = await module_store.run("host-disk", tmp_path / "empty")
    assert module_store.rows("disks") == []
    assert ctx.rows_written == 0


async def test_empty_disk_list_keeps_stored_disks(disk_root: Path, tmp_path: Path, module_store: ModuleStore) -> None:
    await module_store.run("host-disk", disk_root)
    before = module_store.snapshot()
    ctx = await module_store.run("host-disk", tmp_path / "empty")
    assert ctx.rows_written == 0
    assert module_store.snapshot() == before

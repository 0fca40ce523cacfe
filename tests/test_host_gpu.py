"""host-gpu: DRM cards, PCI ids and names, driver links, Skip cases, and what run() writes."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from situation.hostroot import HostRoot
from situation.module import REGISTRY, Skip
from situation.modules import host_gpu
from situation.modules.host_gpu import (
    Gpu,
    card_index,
    collect_gpus,
    find_pci_ids,
    lookup_pci_names,
    normalize_pci_id,
    read_cards,
)
from support.modules import AGENT, ModuleStore

PCI_IDS = """\
# Tiny pci.ids for tests
#	vendor  vendor_name
#		device  device_name
0e11  Compaq Computer Corporation
	0001  PCI to EISA Bridge
10de  NVIDIA Corporation
	1eb8  TU104GL [Tesla T4]
		10de 12a2  Tesla T4
	2204  GA102 [GeForce RTX 3090]
1414  Microsoft Corporation
	5353  Hyper-V virtual VGA
8086  Intel Corporation
	3e92  CoffeeLake-S GT2 [UHD Graphics 630]
C 03  Display controller
	00  VGA compatible controller
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def symlink(link: Path, target: str) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)


def add_pci_card(root: Path, index: int, address: str, vendor: str, device: str, driver: str | None) -> None:
    """A PCI display device with a drm/card<N> child, linked from /sys/class/drm like sysfs does."""
    device_dir = root / "sys/devices/pci0000:00/0000:00:01.0" / address
    write(device_dir / "vendor", f"{vendor}\n")
    write(device_dir / "device", f"{device}\n")
    write(device_dir / "class", "0x030000\n")
    if driver:
        symlink(device_dir / "driver", f"../../../../bus/pci/drivers/{driver}")
        (root / "sys/bus/pci/drivers" / driver).mkdir(parents=True, exist_ok=True)
    card_dir = device_dir / "drm" / f"card{index}"
    card_dir.mkdir(parents=True)
    symlink(card_dir / "device", "../../")
    write(card_dir / "dev", f"226:{index}\n")
    relative = f"../../devices/pci0000:00/0000:00:01.0/{address}/drm/card{index}"
    symlink(root / "sys/class/drm" / f"card{index}", relative)
    symlink(root / "sys/class/drm" / f"card{index}-HDMI-A-1", relative + f"/card{index}-HDMI-A-1")


@pytest.fixture
def gpu_root(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    add_pci_card(root, 0, "0000:01:00.0", "0x10de", "0x1eb8", "nvidia")
    add_pci_card(root, 1, "0000:02:00.0", "0x8086", "0x9bc8", None)  # device not in pci.ids, no driver
    write(root / "sys/class/drm/version", "drm 1.1.0 20060810\n")
    symlink(root / "sys/class/drm/renderD128", "../../devices/pci0000:00/0000:00:01.0/0000:01:00.0/drm/card0")
    write(root / "usr/share/hwdata/pci.ids", PCI_IDS)
    return root


def test_card_index_skips_connectors_and_render_nodes() -> None:
    assert card_index("card0") == 0
    assert card_index("card12") == 12
    assert card_index("card0-HDMI-A-1") is None
    assert card_index("renderD128") is None
    assert card_index("version") is None


def test_normalize_pci_id() -> None:
    assert normalize_pci_id("0x10DE\n") == "10de"
    assert normalize_pci_id("1414") == "1414"
    assert normalize_pci_id("") is None
    assert normalize_pci_id("0x1") is None


def test_read_cards_field_by_field(gpu_root: Path) -> None:
    card0, card1 = read_cards(HostRoot.under(gpu_root))
    assert card0.index == 0
    assert card0.pci_address == "0000:01:00.0"
    assert (card0.vendor_id, card0.device_id) == ("10de", "1eb8")
    assert card0.driver == "nvidia"
    assert card1.index == 1
    assert card1.pci_address == "0000:02:00.0"
    assert (card1.vendor_id, card1.device_id, card1.driver) == ("8086", "9bc8", "")


def test_collect_gpus_names_from_pci_ids(gpu_root: Path) -> None:
    assert collect_gpus(HostRoot.under(gpu_root)) == [
        Gpu(index=0, product="TU104GL [Tesla T4]", vendor="NVIDIA Corporation", driver="nvidia",
            pci_address="0000:01:00.0"),
        Gpu(index=1, product="unknown", vendor="Intel Corporation", driver="", pci_address="0000:02:00.0"),
    ]


def test_lookup_reads_only_wanted_ids(tmp_path: Path) -> None:
    path = tmp_path / "pci.ids"
    path.write_text(PCI_IDS)
    names = lookup_pci_names(path, {("1414", "5353"), ("10de", "2204"), ("abcd", "0001")})
    assert names.vendors == {"1414": "Microsoft Corporation", "10de": "NVIDIA Corporation"}
    assert names.products == {("1414", "5353"): "Hyper-V virtual VGA", ("10de", "2204"): "GA102 [GeForce RTX 3090]"}


def test_lookup_stops_once_everything_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = PCI_IDS.splitlines(keepends=True)
    needed = lines[: lines.index("\t1eb8  TU104GL [Tesla T4]\n") + 1]

    def lines_then_fail(_path: Path):  # noqa: ANN202
        yield from needed
        raise AssertionError("read past the last wanted name")

    monkeypatch.setattr(host_gpu, "_pci_ids_lines", lines_then_fail)
    names = lookup_pci_names(tmp_path / "pci.ids", {("10de", "1eb8")})
    assert names.vendors == {"10de": "NVIDIA Corporation"}
    assert names.products == {("10de", "1eb8"): "TU104GL [Tesla T4]"}


def test_gzip_pci_ids_under_misc(gpu_root: Path) -> None:
    (gpu_root / "usr/share/hwdata/pci.ids").unlink()
    target = gpu_root / "usr/share/misc/pci.ids.gz"
    target.parent.mkdir(parents=True)
    with gzip.open(target, "wt", encoding="utf-8") as handle:
        handle.write(PCI_IDS)
    root = HostRoot.under(gpu_root)
    assert find_pci_ids(root) == target
    assert collect_gpus(root)[0].vendor == "NVIDIA Corporation"


def test_plain_pci_ids_preferred_in_search_order(gpu_root: Path) -> None:
    write(gpu_root / "usr/share/misc/pci.ids", "")
    assert find_pci_ids(HostRoot.under(gpu_root)) == gpu_root / "usr/share/hwdata/pci.ids"


def test_no_pci_ids_skips(gpu_root: Path) -> None:
    (gpu_root / "usr/share/hwdata/pci.ids").unlink()
    with pytest.raises(Skip, match="pci.ids"):
        collect_gpus(HostRoot.under(gpu_root))


def test_no_drm_skips(tmp_path: Path) -> None:
    write(tmp_path / "usr/share/hwdata/pci.ids", PCI_IDS)
    with pytest.raises(Skip, match="drm"):
        collect_gpus(HostRoot.under(tmp_path))


def test_card_without_pci_identity_has_empty_names(tmp_path: Path) -> None:
    # A platform device (e.g. a Raspberry Pi's vc4): no PCI address, no vendor/device files.
    device_dir = tmp_path / "sys/devices/platform/gpu"
    symlink(device_dir / "driver", "../../../bus/platform/drivers/vc4-drm")
    (device_dir / "drm/card0").mkdir(parents=True)
    symlink(device_dir / "drm/card0/device", "../../")
    symlink(tmp_path / "sys/class/drm/card0", "../../devices/platform/gpu/drm/card0")
    write(tmp_path / "usr/share/misc/pci.ids", PCI_IDS)
    assert collect_gpus(HostRoot.under(tmp_path)) == [
        Gpu(index=0, product="", vendor="", driver="vc4-drm", pci_address=None)
    ]


def test_gpu_row() -> None:
    gpu = Gpu(index=2, product="Hyper-V virtual VGA", vendor="Microsoft Corporation", driver="hyperv_drm")
    assert gpu.as_row(7) == {
        "index": 2,
        "product": "Hyper-V virtual VGA",
        "vendor": "Microsoft Corporation",
        "driver": "hyperv_drm",
        "machine_id": 7,
    }
    assert gpu.is_hyper_v


# -- run() against a real SQLite store -------------------------------------------------


def gpu_columns(module_store: ModuleStore) -> list[tuple]:
    return [
        (row["index"], row["product"], row["vendor"], row["driver"], row["machine_id"])
        for row in module_store.rows("gpus")
    ]


def test_module_is_registered() -> None:
    assert REGISTRY["host-gpu"].depends == ("host-basic",)


async def test_run_stores_gpus(gpu_root: Path, module_store: ModuleStore) -> None:
    ctx = await module_store.run("host-gpu", gpu_root)
    host = module_store.machine_id
    assert gpu_columns(module_store) == [
        (0, "TU104GL [Tesla T4]", "NVIDIA Corporation", "nvidia", host),
        (1, "unknown", "Intel Corporation", "", host),
    ]
    assert all(row["updated_by"] == AGENT for row in module_store.rows("gpus"))
    assert module_store.machine()["chassis"] == ""  # no Hyper-V card: the machine is left alone
    assert ctx.rows_written == 2


async def test_second_run_writes_nothing(gpu_root: Path, module_store: ModuleStore) -> None:
    await module_store.run("host-gpu", gpu_root)
    before = module_store.snapshot()
    ctx = await module_store.run("host-gpu", gpu_root)
    assert ctx.rows_written == 0
    assert module_store.snapshot() == before


async def test_changed_card_updates_its_row(gpu_root: Path, module_store: ModuleStore) -> None:
    # Found again on ("index", machine_id); product, vendor and driver are refreshed.
    await module_store.run("host-gpu", gpu_root)
    ids = [row["id"] for row in module_store.rows("gpus")]
    device_dir = gpu_root / "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0"
    write(device_dir / "device", "0x2204\n")
    os.remove(device_dir / "driver")
    symlink(device_dir / "driver", "../../../../bus/pci/drivers/nouveau")
    ctx = await module_store.run("host-gpu", gpu_root)
    assert ctx.rows_written == 1
    assert [row["id"] for row in module_store.rows("gpus")] == ids
    assert gpu_columns(module_store)[0] == (
        0, "GA102 [GeForce RTX 3090]", "NVIDIA Corporation", "nouveau", module_store.machine_id
    )


async def test_run_marks_hyper_v_host_as_vm(gpu_root: Path, module_store: ModuleStore) -> None:
    # set_machine_chassis takes ($1 chassis, $2 machine id, $3 agent id): only the host's row becomes 'vm'.
    other = await module_store.add_machine("cd" * 16)
    add_pci_card(gpu_root, 2, "0000:03:00.0", "0x1414", "0x5353", "hyperv_drm")
    ctx = await module_store.run("host-gpu", gpu_root)
    assert module_store.machine()["chassis"] == "vm"
    assert module_store.machine(other)["chassis"] == ""
    assert gpu_columns(module_store)[2] == (
        2, "Hyper-V virtual VGA", "Microsoft Corporation", "hyperv_drm", module_store.machine_id
    )
    assert ctx.rows_written == 3 + 1


async def test_run_without_card_writes_nothing(tmp_path: Path, module_store: ModuleStore) -> None:
    root = tmp_path / "host"
    (root / "sys/class/drm").mkdir(parents=True)
    write(root / "usr/share/hwdata/pci.ids", PCI_IDS)
    before = module_store.snapshot()
    ctx = await module_store.run("host-gpu", root)
    assert ctx.rows_written == 0
    assert module_store.snapshot() == before


async def test_run_propagates_skip(gpu_root: Path, module_store: ModuleStore) -> None:
    (gpu_root / "usr/share/hwdata/pci.ids").unlink()
    before = module_store.snapshot()
    with pytest.raises(Skip):
        await module_store.run("host-gpu", gpu_root)
    assert module_store.rows("gpus") == []
    assert module_store.snapshot() == before

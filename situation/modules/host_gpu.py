"""host-gpu: the host's graphics cards, into ``gpus``.

Sources, all read through the module's :class:`~situation.hostroot.HostRoot`:

- ``/sys/class/drm/card<N>``: one entry per card (``card0-HDMI-A-1`` style names
  are connectors and are skipped); ``N`` is the stored ``index``. The entry
  resolves into the device tree; the last path component shaped like a PCI
  address (``0000:01:00.0``) is the card's PCI address.
- ``card<N>/device/vendor`` and ``card<N>/device/device``: the PCI vendor and
  device ids (``0x10de``); ``card<N>/device/driver``: a link whose basename is
  the kernel driver.
- The PCI ids database (``pci.ids``, plain or gzip-compressed, in
  ``/usr/share/hwdata`` or ``/usr/share/misc``) for vendor and product names.
  It is scanned once, line by line, for the ids at hand only, and the scan
  stops as soon as every name is found. Ids it does not list are named
  ``unknown``; a card without PCI ids gets empty names.

Without ``/sys/class/drm`` or without a PCI ids database the module does not
apply (:class:`~situation.module.Skip`, as the original's "GPU detection
skipped" warning). A card whose product mentions Hyper-V marks the host as a
``vm`` (named query ``set_machine_chassis``). No card writes nothing (§10.2).
"""

from __future__ import annotations

import asyncio
import gzip
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from situation.hostroot import HostRoot, host_int, read_text_or_none
from situation.module import Context, Skip, module

UNKNOWN = "unknown"
PCI_IDS_LOCATIONS = (
    "/usr/share/hwdata/pci.ids",
    "/usr/share/misc/pci.ids",
    "/usr/share/hwdata/pci.ids.gz",
    "/usr/share/misc/pci.ids.gz",
)
_CARD_NAME = re.compile(r"^card(\d+)$")
_PCI_ADDRESS = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_HEX_ID = re.compile(r"^[0-9a-f]{4}$")


@dataclass(frozen=True)
class GpuCard:
    """What sysfs says about one card, before names are looked up."""

    index: int
    pci_address: str | None
    vendor_id: str | None  # four lowercase hex digits
    device_id: str | None
    driver: str


@dataclass(frozen=True)
class Gpu:
    index: int
    product: str
    vendor: str
    driver: str
    pci_address: str | None = None

    def as_row(self, machine_id: int) -> dict[str, Any]:
        return {
            "index": self.index,
            "product": self.product,
            "vendor": self.vendor,
            "driver": self.driver,
            "machine_id": machine_id,
        }

    @property
    def is_hyper_v(self) -> bool:
        return "hyper-v" in self.product.lower()


@dataclass
class PciNames:
    """Names found in pci.ids: vendors by id, products by (vendor id, device id)."""

    vendors: dict[str, str]
    products: dict[tuple[str, str], str]


# -- sysfs -------------------------------------------------------------------------


def read_text(path: Path) -> str | None:
    text = read_text_or_none(path)
    return None if text is None else text.strip()


def normalize_pci_id(text: str | None) -> str | None:
    """``0x10DE`` → ``10de``; None when it is not a 16-bit hex id."""
    if not text:
        return None
    value = text.strip().lower().removeprefix("0x")
    return value if _HEX_ID.match(value) else None


def pci_address_of(card_dir: Path) -> str | None:
    """The last component of the card's resolved path that looks like a PCI address."""
    resolved = Path(os.path.realpath(card_dir))
    for part in reversed(resolved.parts):
        if _PCI_ADDRESS.match(part):
            return part.lower()
    return None


def driver_of(device_dir: Path) -> str:
    try:
        return os.path.basename(os.readlink(device_dir / "driver"))
    except OSError:
        return ""


def card_index(name: str) -> int | None:
    """``card1`` → 1; None for connectors (``card1-DP-2``), render nodes and the rest."""
    match = _CARD_NAME.match(name)
    return host_int(match.group(1)) if match else None


def read_card(card_dir: Path, index: int) -> GpuCard:
    device_dir = card_dir / "device"
    return GpuCard(
        index=index,
        pci_address=pci_address_of(card_dir),
        vendor_id=normalize_pci_id(read_text(device_dir / "vendor")),
        device_id=normalize_pci_id(read_text(device_dir / "device")),
        driver=driver_of(device_dir),
    )


def read_cards(root: HostRoot) -> list[GpuCard]:
    """Every ``card<N>`` of ``/sys/class/drm``, by index; Skip when the directory is missing."""
    drm = root.path("/sys/class/drm")
    try:
        entries = list(drm.iterdir())
    except OSError:
        raise Skip(f"GPU detection skipped: {drm} is not readable (no DRM subsystem)") from None
    cards = []
    for entry in entries:
        index = card_index(entry.name)
        if index is not None:
            cards.append(read_card(entry, index))
    return sorted(cards, key=lambda card: card.index)


# -- pci.ids -----------------------------------------------------------------------


def find_pci_ids(root: HostRoot) -> Path | None:
    for location in PCI_IDS_LOCATIONS:
        path = root.path(location)
        if path.is_file():
            return path
    return None


def _pci_ids_lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    # newline="\n": lines end at \n only, as everywhere a host file is split (hostroot.lines).
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="\n") as handle:
        yield from handle


def lookup_pci_names(path: Path, wanted: Iterable[tuple[str, str | None]]) -> PciNames:
    """Names of the wanted (vendor id, device id) pairs, scanning ``pci.ids`` only as far as needed.

    Vendor lines are ``vvvv  Name``, their devices follow as ``\\tdddd  Name``
    (subsystems, ``\\t\\t…``, and the class section, ``C …``, are ignored).
    """
    devices_by_vendor: dict[str, set[str]] = {}
    for vendor_id, device_id in wanted:
        devices_by_vendor.setdefault(vendor_id, set())
        if device_id:
            devices_by_vendor[vendor_id].add(device_id)
    missing = len(devices_by_vendor) + sum(len(devices) for devices in devices_by_vendor.values())
    if missing == 0:
        return PciNames(vendors={}, products={})
    with closing(_pci_ids_lines(path)) as lines:
        return _scan_pci_ids(lines, devices_by_vendor, missing)


def _scan_pci_ids(lines: Iterator[str], devices_by_vendor: dict[str, set[str]], missing: int) -> PciNames:
    names = PciNames(vendors={}, products={})
    current_vendor: str | None = None
    for line in lines:
        if not line.strip() or line.startswith("#") or line.startswith("\t\t"):
            continue
        if line.startswith("\t"):
            if current_vendor is None:
                continue
            device_id, name = _split_id_line(line[1:])
            if device_id in devices_by_vendor[current_vendor]:
                names.products[(current_vendor, device_id)] = name
                missing -= 1
                if missing == 0:
                    break
            continue
        if line.startswith("C "):
            break  # the device classes section follows the vendors
        vendor_id, name = _split_id_line(line)
        if vendor_id in devices_by_vendor and vendor_id not in names.vendors:
            names.vendors[vendor_id] = name
            current_vendor = vendor_id
            missing -= 1
            if missing == 0:
                break
        else:
            current_vendor = None
    return names


def _split_id_line(text: str) -> tuple[str, str]:
    identifier, _, name = text.rstrip("\r\n").partition(" ")
    return identifier.lower(), name.strip()


def name_cards(cards: list[GpuCard], names: PciNames) -> list[Gpu]:
    gpus = []
    for card in cards:
        if card.vendor_id is None:
            vendor = product = ""
        else:
            vendor = names.vendors.get(card.vendor_id, UNKNOWN)
            product = names.products.get((card.vendor_id, card.device_id or ""), UNKNOWN)
        gpus.append(Gpu(card.index, product, vendor, card.driver, card.pci_address))
    return gpus


def collect_gpus(root: HostRoot) -> list[Gpu]:
    """The host's GPUs with their names (blocking: run in a thread); Skip when not applicable."""
    cards = read_cards(root)
    pci_ids = find_pci_ids(root)
    if pci_ids is None:
        raise Skip("GPU detection skipped: no pci.ids database in /usr/share/hwdata or /usr/share/misc")
    wanted = {(card.vendor_id, card.device_id) for card in cards if card.vendor_id}
    names = lookup_pci_names(pci_ids, wanted) if wanted else PciNames({}, {})
    return name_cards(cards, names)



@module("host-gpu", depends=("host-basic",))
async def run(ctx: Context) -> None:
    """Graphics cards of the host (/sys/class/drm, pci.ids)."""
    gpus = await asyncio.to_thread(collect_gpus, ctx.root)
    if not gpus:
        ctx.log.info("no GPU found")
        return
    machine_id = ctx.host_id()
    await ctx.upsert(
        "gpus",
        [gpu.as_row(machine_id) for gpu in gpus],
        key="machine_gpu_index",
        update=("product", "vendor", "driver"),
    )
    if any(gpu.is_hyper_v for gpu in gpus):
        ctx.count(await ctx.store.execute("set_machine_chassis_if_unknown", "vm", machine_id, ctx.agent_id))
        ctx.log.info("Hyper-V GPU found: host chassis set to vm")

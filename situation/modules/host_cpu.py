"""host-cpu: model, vendor and core count of the agent host (one ``cpus`` row).

Source: ``/proc/cpuinfo`` (one block per logical CPU, each opened by a
``processor`` or ``cpu number`` line), plus
``/sys/devices/system/cpu/cpu<N>/topology/core_id`` when the last block has no
``core id``.

- ``vendor``: ``vendor_id`` of the first block (x86, s390); on ARM the
  ``CPU implementer`` code mapped to a name; on RISC-V the ``mvendorid`` code
  mapped to a name; on POWER ``IBM``.
- ``model_name``: ``model name`` / ``Model Name`` / ``cpu`` of the first
  block, else RISC-V's ``uarch``, else the ``Processor`` line that old ARM
  kernels print before the blocks; for ARM Ltd cores the name derived from
  ``CPU part`` wins (the order gopsutil's line-by-line parse yields).
- ``cores``: ``core id`` of the last block (or its sysfs ``core_id``) + 1;
  when that is not an integer (or a negative one, or one past 64 bits), the
  number of blocks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from situation.hostroot import INT64_MAX, HostRoot, host_int, lines, read_text, read_text_or_none
from situation.module import Context, Skip, module

# "CPU implementer" codes (MIDR_EL1 bits 31:24).
ARM_IMPLEMENTERS: dict[int, str] = {
    0x41: "ARM",
    0x42: "Broadcom",
    0x43: "Cavium",
    0x44: "DEC",
    0x46: "Fujitsu",
    0x48: "HiSilicon",
    0x49: "Infineon",
    0x4D: "Motorola/Freescale",
    0x4E: "NVIDIA",
    0x50: "APM",
    0x51: "Qualcomm",
    0x53: "Samsung",
    0x54: "Texas Instruments",
    0x56: "Marvell",
    0x61: "Apple",
    0x66: "Faraday",
    0x69: "Intel",
    0x6D: "Microsoft",
    0x70: "Phytium",
    0xC0: "Ampere",
}

# "CPU part" codes of cores designed by ARM Ltd (implementer 0x41).
ARM_PARTS: dict[int, str] = {
    0x810: "ARM810",
    0x920: "ARM920",
    0x922: "ARM922",
    0x926: "ARM926",
    0x940: "ARM940",
    0x946: "ARM946",
    0x966: "ARM966",
    0xA20: "ARM1020",
    0xA22: "ARM1022",
    0xA26: "ARM1026",
    0xB02: "ARM11 MPCore",
    0xB36: "ARM1136",
    0xB56: "ARM1156",
    0xB76: "ARM1176",
    0xC05: "Cortex-A5",
    0xC07: "Cortex-A7",
    0xC08: "Cortex-A8",
    0xC09: "Cortex-A9",
    0xC0D: "Cortex-A17",
    0xC0E: "Cortex-A17",
    0xC0F: "Cortex-A15",
    0xC14: "Cortex-R4",
    0xC15: "Cortex-R5",
    0xC17: "Cortex-R7",
    0xC18: "Cortex-R8",
    0xC20: "Cortex-M0",
    0xC21: "Cortex-M1",
    0xC23: "Cortex-M3",
    0xC24: "Cortex-M4",
    0xC27: "Cortex-M7",
    0xC60: "Cortex-M0+",
    0xD01: "Cortex-A32",
    0xD02: "Cortex-A34",
    0xD03: "Cortex-A53",
    0xD04: "Cortex-A35",
    0xD05: "Cortex-A55",
    0xD06: "Cortex-A65",
    0xD07: "Cortex-A57",
    0xD08: "Cortex-A72",
    0xD09: "Cortex-A73",
    0xD0A: "Cortex-A75",
    0xD0B: "Cortex-A76",
    0xD0C: "Neoverse-N1",
    0xD0D: "Cortex-A77",
    0xD0E: "Cortex-A76AE",
    0xD13: "Cortex-R52",
    0xD20: "Cortex-M23",
    0xD21: "Cortex-M33",
    0xD40: "Neoverse-V1",
    0xD41: "Cortex-A78",
    0xD42: "Cortex-A78AE",
    0xD43: "Cortex-A65AE",
    0xD44: "Cortex-X1",
    0xD46: "Cortex-A510",
    0xD47: "Cortex-A710",
    0xD48: "Cortex-X2",
    0xD49: "Neoverse-N2",
    0xD4A: "Neoverse-E1",
    0xD4B: "Cortex-A78C",
    0xD4C: "Cortex-X1C",
    0xD4D: "Cortex-A715",
    0xD4E: "Cortex-X3",
    0xD4F: "Neoverse-V2",
    0xD80: "Cortex-A520",
    0xD81: "Cortex-A720",
    0xD82: "Cortex-X4",
    0xD84: "Neoverse-V3",
    0xD8E: "Neoverse-N3",
}

# RISC-V "mvendorid" (JEDEC bank and code), as the Linux kernel knows them.
RISCV_VENDORS: dict[int, str] = {
    0x029: "Microchip",
    0x31E: "Andes",
    0x489: "SiFive",
    0x5B7: "T-Head",
}

_BLOCK_KEYS = ("processor", "cpu number")
_MODEL_NAME_KEYS = ("model name", "Model Name", "cpu")


@dataclass(frozen=True)
class CpuFacts:
    model_name: str
    vendor: str
    cores: int


@dataclass
class CpuInfo:
    """``/proc/cpuinfo`` split into the lines before the first block and the blocks."""

    preamble: dict[str, str]
    blocks: list[dict[str, str]]


def parse_cpuinfo(text: str) -> CpuInfo:
    """Key/value lines, grouped per logical CPU; the first occurrence of a key in a block wins."""
    preamble: dict[str, str] = {}
    blocks: list[dict[str, str]] = []
    current = preamble
    for line in lines(text):
        key, colon, value = line.partition(":")
        if not colon:
            continue
        key, value = key.strip(), value.strip()
        if key in _BLOCK_KEYS:
            current = {}
            blocks.append(current)
        current.setdefault(key, value)
    return CpuInfo(preamble, blocks)


def _parse_int(text: str) -> int | None:
    """An integer written in decimal or with a 0x prefix (how cpuinfo writes codes)."""
    text = text.strip().lower()
    try:
        return int(text[2:], 16) if text.startswith("0x") else int(text, 10)
    except ValueError:
        return None


def arm_vendor(implementer: str) -> str:
    code = _parse_int(implementer)
    return ARM_IMPLEMENTERS.get(code, "") if code is not None else ""


def arm_part_name(part: str) -> str:
    code = _parse_int(part)
    return ARM_PARTS.get(code, "") if code is not None else ""


def riscv_vendor(mvendorid: str) -> str:
    if not mvendorid.lower().startswith("0x"):
        return ""
    code = _parse_int(mvendorid)
    return RISCV_VENDORS.get(code, "") if code is not None else ""


def _first_value(values: dict[str, str], *keys: str) -> str:
    return next((values[k] for k in keys if values.get(k)), "")


def cpu_vendor_and_model(info: CpuInfo) -> tuple[str, str]:
    """(vendor, model_name) of the first block, per the rules in the module docstring."""
    first = info.blocks[0] if info.blocks else info.preamble
    # s390x prints vendor_id once, before the per-CPU blocks.
    vendor = _first_value(first, "vendor_id", "vendorId") or _first_value(info.preamble, "vendor_id")
    model = info.preamble.get("Processor", "")
    if "S390" in vendor:
        model = "S390"
    if "CPU implementer" in first:
        vendor = arm_vendor(first["CPU implementer"])
    elif "mvendorid" in first:
        vendor = riscv_vendor(first["mvendorid"])
    named = _first_value(first, *_MODEL_NAME_KEYS)
    if named:
        model = named
        if "POWER" in named:
            vendor = "IBM"
    elif first.get("uarch"):
        model = first["uarch"]
    if vendor == "ARM" and (part := arm_part_name(first.get("CPU part", ""))):
        model = part
    return vendor, model


def count_cores(root: HostRoot, info: CpuInfo) -> int:
    """("core id" of the last block, or its sysfs core_id) + 1; else the number of blocks."""
    if not info.blocks:
        return 0
    last = info.blocks[-1]
    core_id = last.get("core id")
    if core_id is None:
        core_id = _read_sysfs_core_id(root, last.get("processor", last.get("cpu number", "")))
    core = host_int(core_id, maximum=INT64_MAX - 1)
    return core + 1 if core is not None else len(info.blocks)


def _read_sysfs_core_id(root: HostRoot, processor: str) -> str | None:
    if not processor.isdigit():
        return None
    path: Path = root.path(f"/sys/devices/system/cpu/cpu{processor}/topology/core_id")
    text = read_text_or_none(path)
    return None if text is None else text.strip()


def collect(root: HostRoot) -> CpuFacts:
    """CPU facts of the host (blocking). Raises OSError when /proc/cpuinfo is unreadable."""
    text = read_text(root.path("/proc/cpuinfo"))
    info = parse_cpuinfo(text)
    vendor, model = cpu_vendor_and_model(info)
    return CpuFacts(model_name=model, vendor=vendor, cores=count_cores(root, info))


@module("host-cpu", depends=("host-basic",))
async def run(ctx: Context) -> None:
    """Record the host CPU's model, vendor and core count."""
    machine_id = ctx.host_id()
    try:
        facts = await asyncio.to_thread(collect, ctx.root)
    except OSError as exc:
        raise Skip(f"cannot read /proc/cpuinfo: {exc.strerror or exc}") from None
    row = {"model_name": facts.model_name, "vendor": facts.vendor, "cores": facts.cores, "machine_id": machine_id}
    await ctx.upsert("cpus", [row], key="machine_id", update=("model_name", "vendor", "cores"))

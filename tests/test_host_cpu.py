"""host-cpu: /proc/cpuinfo parsing for x86, ARM, RISC-V, POWER and s390x."""

from __future__ import annotations

from pathlib import Path

import pytest

from situation.hostroot import HostRoot
from situation.modules.host_cpu import (
    CpuFacts,
    arm_part_name,
    arm_vendor,
    collect,
    parse_cpuinfo,
    riscv_vendor,
)
from support.modules import AGENT, ModuleStore


def write(root: Path, absolute: str, text: str) -> None:
    path = root / absolute.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def tree(tmp_path: Path, files: dict[str, str]) -> HostRoot:
    for absolute, text in files.items():
        write(tmp_path, absolute, text)
    return HostRoot.under(tmp_path)


def x86_block(processor: int, core_id: int) -> str:
    return (
        f"processor\t: {processor}\n"
        "vendor_id\t: GenuineIntel\n"
        "cpu family\t: 6\n"
        "model\t\t: 140\n"
        "model name\t: 11th Gen Intel(R) Core(TM) i7-1165G7 @ 2.80GHz\n"
        "stepping\t: 1\n"
        "cpu MHz\t\t: 2803.200\n"
        "physical id\t: 0\n"
        f"core id\t\t: {core_id}\n"
        "cpu cores\t: 4\n"
        "flags\t\t: fpu vme de pse tsc msr pae mce\n"
        "\n"
    )


# 4 cores, 8 threads: core ids 0 1 2 3 0 1 2 3.
X86_CPUINFO = "".join(x86_block(n, n % 4) for n in range(8))

# Raspberry Pi 4 running a 32-bit kernel: "model name" first, then the CPU part.
RPI4_ARMV7 = "".join(
    f"processor\t: {n}\n"
    "model name\t: ARMv7 Processor rev 3 (v7l)\n"
    "BogoMIPS\t: 108.00\n"
    "Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32\n"
    "CPU implementer\t: 0x41\n"
    "CPU architecture: 7\n"
    "CPU variant\t: 0x0\n"
    "CPU part\t: 0xd08\n"
    "CPU revision\t: 3\n\n"
    for n in range(4)
) + "Hardware\t: BCM2711\nRevision\t: c03111\nSerial\t\t: 10000000abcdef01\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n"

# AWS Graviton2 (arm64): no model name, no core id.
GRAVITON2 = "".join(
    f"processor\t: {n}\n"
    "BogoMIPS\t: 243.75\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop\n"
    "CPU implementer\t: 0x41\n"
    "CPU architecture: 8\n"
    "CPU variant\t: 0x3\n"
    "CPU part\t: 0xd0c\n"
    "CPU revision\t: 1\n\n"
    for n in range(16)
)

# An old ARM kernel with the "Processor" line before the blocks, non-ARM implementer.
QUALCOMM_OLD = (
    "Processor\t: ARMv7 Processor rev 0 (v7l)\n"
    "processor\t: 0\nBogoMIPS\t: 38.40\n\n"
    "processor\t: 1\nBogoMIPS\t: 38.40\n\n"
    "Features\t: swp half thumb fastmult vfp edsp neon vfpv3 tls vfpv4\n"
    "CPU implementer\t: 0x51\nCPU architecture: 7\nCPU variant\t: 0x2\nCPU part\t: 0x06f\nCPU revision\t: 0\n"
)

# StarFive VisionFive 2 (SiFive U74 cores).
RISCV_CPUINFO = "".join(
    f"processor\t: {n}\n"
    f"hart\t\t: {n + 1}\n"
    "isa\t\t: rv64imafdc_zicntr_zicsr_zifencei_zihpm_zba_zbb\n"
    "mmu\t\t: sv39\n"
    "uarch\t\t: sifive,u74-mc\n"
    "mvendorid\t: 0x489\n"
    "marchid\t\t: 0x8000000000000007\n"
    "mimpid\t\t: 0x4210427\n\n"
    for n in range(4)
)

POWER9 = "".join(
    f"processor\t: {n}\ncpu\t\t: POWER9 (raw), altivec supported\nclock\t\t: 2166.000000MHz\n"
    "revision\t: 2.2 (pvr 004e 1202)\n\n"
    for n in range(2)
) + "timebase\t: 512000000\nplatform\t: PowerNV\n"

S390X = (
    "vendor_id       : IBM/S390\n# processors    : 2\nbogomips per cpu: 3241.00\n"
    "processor 0: version = FF,  identification = 0133E8,  machine = 2964\n\n"
    "cpu number      : 0\nphysical id     : 1\ncore id         : 0\n\n"
    "cpu number      : 1\nphysical id     : 1\ncore id         : 1\n"
)


def test_x86(tmp_path: Path) -> None:
    facts = collect(tree(tmp_path, {"/proc/cpuinfo": X86_CPUINFO}))
    assert facts == CpuFacts(
        model_name="11th Gen Intel(R) Core(TM) i7-1165G7 @ 2.80GHz", vendor="GenuineIntel", cores=4
    )


def test_x86_cores_from_last_block_only(tmp_path: Path) -> None:
    # The original's rule: the *last* block's core id + 1 (here 1 + 1), not the maximum.
    text = x86_block(0, 0) + x86_block(1, 5) + x86_block(2, 1)
    assert collect(tree(tmp_path, {"/proc/cpuinfo": text})).cores == 2


def test_x86_core_id_not_an_integer_counts_blocks(tmp_path: Path) -> None:
    text = X86_CPUINFO.replace("core id\t\t: 3", "core id\t\t: x")
    assert collect(tree(tmp_path, {"/proc/cpuinfo": text})).cores == 8


@pytest.mark.parametrize("core_id", ["99999999999999999999999", "9223372036854775807", "-2"])
def test_x86_core_id_beyond_64_bits_or_negative_counts_blocks(tmp_path: Path, core_id: str) -> None:
    text = X86_CPUINFO.replace("core id\t\t: 3", f"core id\t\t: {core_id}")
    assert collect(tree(tmp_path, {"/proc/cpuinfo": text})).cores == 8


def test_raspberry_pi_armv7(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {"/proc/cpuinfo": RPI4_ARMV7, "/sys/devices/system/cpu/cpu3/topology/core_id": "3\n"},
    )
    assert collect(root) == CpuFacts(model_name="Cortex-A72", vendor="ARM", cores=4)


def test_graviton_cores_from_sysfs(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {"/proc/cpuinfo": GRAVITON2, "/sys/devices/system/cpu/cpu15/topology/core_id": "15\n"},
    )
    assert collect(root) == CpuFacts(model_name="Neoverse-N1", vendor="ARM", cores=16)


def test_arm_without_core_id_anywhere_counts_blocks(tmp_path: Path) -> None:
    assert collect(tree(tmp_path, {"/proc/cpuinfo": GRAVITON2})).cores == 16


def test_arm_processor_line_and_other_implementer(tmp_path: Path) -> None:
    facts = collect(tree(tmp_path, {"/proc/cpuinfo": QUALCOMM_OLD}))
    # Only ARM Ltd parts are named; a Qualcomm part keeps the "Processor" line.
    assert facts == CpuFacts(model_name="ARMv7 Processor rev 0 (v7l)", vendor="", cores=2)


def test_arm_implementer_in_first_block(tmp_path: Path) -> None:
    text = "processor\t: 0\nCPU implementer\t: 0x51\nCPU part\t: 0x803\n\n"
    assert collect(tree(tmp_path, {"/proc/cpuinfo": text})) == CpuFacts("", "Qualcomm", 1)


def test_unknown_arm_part_keeps_model_name(tmp_path: Path) -> None:
    text = "processor\t: 0\nmodel name\t: ARMv8 Processor\nCPU implementer\t: 0x41\nCPU part\t: 0xfff\n"
    assert collect(tree(tmp_path, {"/proc/cpuinfo": text})).model_name == "ARMv8 Processor"


def test_riscv(tmp_path: Path) -> None:
    root = tree(tmp_path, {"/proc/cpuinfo": RISCV_CPUINFO, "/sys/devices/system/cpu/cpu3/topology/core_id": "3\n"})
    assert collect(root) == CpuFacts(model_name="sifive,u74-mc", vendor="SiFive", cores=4)


def test_riscv_unknown_vendor(tmp_path: Path) -> None:
    text = "processor\t: 0\nhart\t\t: 0\nisa\t\t: rv64imafdch\nmmu\t\t: sv57\nmvendorid\t: 0x0\n"
    assert collect(tree(tmp_path, {"/proc/cpuinfo": text})) == CpuFacts("", "", 1)


def test_power(tmp_path: Path) -> None:
    facts = collect(tree(tmp_path, {"/proc/cpuinfo": POWER9}))
    assert facts == CpuFacts(model_name="POWER9 (raw), altivec supported", vendor="IBM", cores=2)


def test_s390x(tmp_path: Path) -> None:
    assert collect(tree(tmp_path, {"/proc/cpuinfo": S390X})) == CpuFacts("S390", "IBM/S390", 2)


def test_missing_cpuinfo_raises(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        collect(tree(tmp_path, {}))


def test_empty_cpuinfo(tmp_path: Path) -> None:
    assert collect(tree(tmp_path, {"/proc/cpuinfo": ""})) == CpuFacts("", "", 0)


def test_parse_cpuinfo_blocks() -> None:
    info = parse_cpuinfo(X86_CPUINFO)
    assert len(info.blocks) == 8
    assert info.preamble == {}
    assert info.blocks[5]["core id"] == "1"
    assert info.blocks[0]["model name"].startswith("11th Gen")


@pytest.mark.parametrize(
    "code, name",
    [("0x41", "ARM"), ("0x42", "Broadcom"), ("0x48", "HiSilicon"), ("0x4e", "NVIDIA"), ("0x61", "Apple"),
     ("0x70", "Phytium"), ("0xc0", "Ampere"), ("0xC0", "Ampere"), ("0x99", ""), ("junk", "")],
)
def test_arm_vendor(code: str, name: str) -> None:
    assert arm_vendor(code) == name


@pytest.mark.parametrize(
    "part, name",
    [("0xd03", "Cortex-A53"), ("0xd08", "Cortex-A72"), ("0xd0b", "Cortex-A76"), ("0xd0c", "Neoverse-N1"),
     ("0xd40", "Neoverse-V1"), ("0xd49", "Neoverse-N2"), ("0xd4f", "Neoverse-V2"), ("0xb76", "ARM1176"),
     ("0x123", "")],
)
def test_arm_part_name(part: str, name: str) -> None:
    assert arm_part_name(part) == name


@pytest.mark.parametrize(
    "code, name",
    [("0x489", "SiFive"), ("0x5b7", "T-Head"), ("0x31e", "Andes"), ("0x29", "Microchip"), ("0x0", ""), ("489", "")],
)
def test_riscv_vendor(code: str, name: str) -> None:
    assert riscv_vendor(code) == name


# -- run(ctx) against a real SQLite store ---------------------------------------------------

MODEL = "11th Gen Intel(R) Core(TM) i7-1165G7 @ 2.80GHz"


def cpu_columns(module_store: ModuleStore) -> list[dict]:
    keep = ("model_name", "vendor", "cores", "machine_id", "updated_by")
    return [{column: row[column] for column in keep} for row in module_store.rows("cpus")]


async def test_run_stores_the_cpu(tmp_path: Path, module_store: ModuleStore) -> None:
    ctx = await module_store.run("host-cpu", tree(tmp_path, {"/proc/cpuinfo": X86_CPUINFO}))
    assert cpu_columns(module_store) == [
        {"model_name": MODEL, "vendor": "GenuineIntel", "cores": 4, "machine_id": module_store.machine_id,
         "updated_by": AGENT}
    ]
    assert ctx.rows_written == 1


async def test_second_run_writes_nothing(tmp_path: Path, module_store: ModuleStore) -> None:
    root = tree(tmp_path, {"/proc/cpuinfo": X86_CPUINFO})
    await module_store.run("host-cpu", root)
    before = module_store.snapshot()
    ctx = await module_store.run("host-cpu", root)
    assert ctx.rows_written == 0
    assert module_store.snapshot() == before


async def test_changed_cpu_updates_the_one_row(tmp_path: Path, module_store: ModuleStore) -> None:
    # One row per machine (upsert on machine_id): model, vendor and cores are refreshed in place.
    await module_store.run("host-cpu", tree(tmp_path / "before", {"/proc/cpuinfo": X86_CPUINFO}))
    [first] = module_store.rows("cpus")
    riscv = {"/proc/cpuinfo": RISCV_CPUINFO, "/sys/devices/system/cpu/cpu3/topology/core_id": "3\n"}
    ctx = await module_store.run("host-cpu", tree(tmp_path / "after", riscv))
    assert ctx.rows_written == 1
    [row] = module_store.rows("cpus")
    assert row["id"] == first["id"]
    assert (row["model_name"], row["vendor"], row["cores"], row["machine_id"]) == (
        "sifive,u74-mc", "SiFive", 4, module_store.machine_id
    )


async def test_run_needs_host(tmp_path: Path, module_store: ModuleStore) -> None:
    with pytest.raises(RuntimeError, match="no host"):
        await module_store.run("host-cpu", tree(tmp_path, {"/proc/cpuinfo": X86_CPUINFO}), machine_id=None)
    assert module_store.rows("cpus") == []


async def test_run_without_cpuinfo_is_skipped(tmp_path, module_store) -> None:
    from situation.hostroot import HostRoot
    from situation.module import Skip

    with pytest.raises(Skip, match="cpuinfo"):
        await module_store.run("host-cpu", HostRoot.under(tmp_path / "empty"))

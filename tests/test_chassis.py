"""chassis: hostnamed answer, container/VM markers, DMI/ACPI/device-tree chassis types, skip."""

from __future__ import annotations

from pathlib import Path

import pytest

from situation.hostroot import HostRoot
from situation.module import Skip
from situation.modules import chassis
from situation.modules.chassis import (
    acpi_chassis,
    detect_chassis,
    detect_from_files,
    dmi_chassis,
    has_hypervisor_flag,
    hostnamed_commands,
    is_vm_dmi,
    parse_busctl_string,
)
from support.modules import ModuleStore


def write(root: Path, absolute: str, text: str | bytes) -> None:
    path = root / absolute.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def tree(tmp_path: Path, files: dict[str, str | bytes]) -> HostRoot:
    for absolute, text in files.items():
        write(tmp_path, absolute, text)
    return HostRoot.under(tmp_path)


HOST_CGROUP = "0::/init.scope\n"
BARE_METAL_CPUINFO = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme de pse tsc msr\n"
VM_CPUINFO = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme de pse tsc msr hypervisor\n"


def dmi(sys_vendor: str, product_name: str, chassis_type: str = "1", bios_vendor: str = "") -> dict[str, str]:
    return {
        "/sys/class/dmi/id/sys_vendor": sys_vendor + "\n",
        "/sys/class/dmi/id/product_name": product_name + "\n",
        "/sys/class/dmi/id/chassis_type": chassis_type + "\n",
        "/sys/class/dmi/id/bios_vendor": bios_vendor + "\n",
    }


@pytest.mark.parametrize(
    "files, expected",
    [
        pytest.param({"/.dockerenv": "", "/proc/cpuinfo": VM_CPUINFO}, ("container", "/.dockerenv"), id="docker"),
        pytest.param({"/run/.containerenv": "engine=\"podman-4.9\"\n"}, ("container", "/run/.containerenv"),
                     id="podman"),
        pytest.param({"/run/systemd/container": "systemd-nspawn\n"}, ("container", "/run/systemd/container"),
                     id="nspawn"),
        pytest.param(
            {"/proc/1/cgroup": "12:memory:/docker/3f1c0a9e8b7d\n1:name=systemd:/docker/3f1c0a9e8b7d\n"},
            ("container", "/proc/1/cgroup"),
            id="docker-cgroup-v1",
        ),
        pytest.param(
            {"/proc/1/cgroup": "0::/kubepods/besteffort/pod1234/abcd\n"},
            ("container", "/proc/1/cgroup"),
            id="kubernetes",
        ),
        pytest.param(
            {"/proc/1/cgroup": HOST_CGROUP, "/proc/1/environ": b"PATH=/usr/bin\0container=lxc\0TERM=linux\0"},
            ("container", "/proc/1/environ"),
            id="lxc-environ",
        ),
        pytest.param(
            {**dmi("QEMU", "Standard PC (Q35 + ICH9, 2009)"), "/proc/1/cgroup": HOST_CGROUP},
            ("vm", "/sys/class/dmi/id"),
            id="kvm-qemu",
        ),
        pytest.param({**dmi("Red Hat", "KVM")}, ("vm", "/sys/class/dmi/id"), id="rhev-kvm"),
        pytest.param({**dmi("VMware, Inc.", "VMware Virtual Platform")}, ("vm", "/sys/class/dmi/id"), id="vmware"),
        pytest.param({**dmi("innotek GmbH", "VirtualBox")}, ("vm", "/sys/class/dmi/id"), id="virtualbox"),
        pytest.param({**dmi("Xen", "HVM domU")}, ("vm", "/sys/class/dmi/id"), id="xen"),
        pytest.param(
            {**dmi("Microsoft Corporation", "Virtual Machine", "3")}, ("vm", "/sys/class/dmi/id"), id="hyper-v"
        ),
        pytest.param({**dmi("Amazon EC2", "t3.micro")}, ("vm", "/sys/class/dmi/id"), id="ec2"),
        pytest.param({**dmi("Amazon EC2", "m5.metal", "23")}, ("server", "/sys/class/dmi/id/chassis_type"),
                     id="ec2-metal"),
        pytest.param({**dmi("Google", "Google Compute Engine")}, ("vm", "/sys/class/dmi/id"), id="gce"),
        pytest.param(
            {**dmi("Dell Inc.", "PowerEdge R640", "23"), "/proc/cpuinfo": VM_CPUINFO},
            ("vm", "/proc/cpuinfo hypervisor flag"),
            id="hypervisor-flag",
        ),
        pytest.param(
            {**dmi("LENOVO", "20XW0055GE", "10"), "/proc/cpuinfo": BARE_METAL_CPUINFO, "/proc/1/cgroup": HOST_CGROUP},
            ("laptop", "/sys/class/dmi/id/chassis_type"),
            id="laptop",
        ),
        pytest.param(
            {**dmi("Dell Inc.", "PowerEdge R640", "23"), "/proc/cpuinfo": BARE_METAL_CPUINFO},
            ("server", "/sys/class/dmi/id/chassis_type"),
            id="rack-server",
        ),
        pytest.param({**dmi("HP", "ProLiant ML350", "17")}, ("server", "/sys/class/dmi/id/chassis_type"),
                     id="main-server"),
        pytest.param({**dmi("Dell Inc.", "OptiPlex 7090", "3")}, ("desktop", "/sys/class/dmi/id/chassis_type"),
                     id="desktop"),
        pytest.param(
            {**dmi("System manufacturer", "System Product Name", "2"), "/sys/firmware/acpi/pm_profile": "2\n"},
            ("laptop", "/sys/firmware/acpi/pm_profile"),
            id="acpi-mobile",
        ),
        pytest.param(
            {"/proc/device-tree/chassis-type": b"handset\0", "/proc/device-tree/model": b"Fairphone 5\0"},
            ("handset", "device-tree chassis-type"),
            id="device-tree-chassis",
        ),
        pytest.param(
            {"/proc/device-tree/model": b"Raspberry Pi 4 Model B Rev 1.4\0"},
            ("raspberry", "Raspberry Pi 4 Model B Rev 1.4"),
            id="raspberry-proc",
        ),
        pytest.param(
            {"/sys/firmware/devicetree/base/model": b"Raspberry Pi 5 Model B Rev 1.0\0"},
            ("raspberry", "Raspberry Pi 5 Model B Rev 1.0"),
            id="raspberry-sys",
        ),
    ],
)
def test_detect_from_files(tmp_path: Path, files: dict, expected: tuple[str, str]) -> None:
    assert detect_from_files(tree(tmp_path, files)) == expected


def test_nothing_found(tmp_path: Path) -> None:
    files = {
        **dmi("To Be Filled By O.E.M.", "To Be Filled By O.E.M.", "2"),
        "/proc/cpuinfo": BARE_METAL_CPUINFO,
        "/proc/1/cgroup": HOST_CGROUP,
        "/proc/device-tree/model": b"Pine64 RockPro64\0",
    }
    assert detect_from_files(tree(tmp_path, files)) is None
    assert detect_from_files(HostRoot.under(tmp_path / "empty")) is None


@pytest.mark.parametrize(
    "value, expected",
    [("3", "desktop"), ("4", "desktop"), ("8", "laptop"), ("9", "laptop"), ("10", "laptop"), ("14", "laptop"),
     ("17", "server"), ("23", "server"), ("30", "tablet"), ("31", "convertible"), ("32", "convertible"),
     ("34", "embedded"), ("1", None), ("2", None), ("12", None), ("", None), ("junk", None), ("131", "desktop")],
)
def test_dmi_chassis(value: str, expected: str | None) -> None:
    assert dmi_chassis(value) == expected


def test_acpi_chassis() -> None:
    assert acpi_chassis("1") == "desktop"
    assert acpi_chassis("4") == "server"
    assert acpi_chassis("0") is None
    assert acpi_chassis("") is None


def test_is_vm_dmi() -> None:
    assert is_vm_dmi("Microsoft Corporation", "Virtual Machine")
    assert not is_vm_dmi("Microsoft Corporation", "Surface Laptop 5")
    assert is_vm_dmi("Some OEM", "Some Board", "SeaBIOS QEMU")
    assert not is_vm_dmi("Dell Inc.", "XPS 13 9310")
    assert not is_vm_dmi("", "")


def test_has_hypervisor_flag() -> None:
    assert has_hypervisor_flag(VM_CPUINFO)
    assert not has_hypervisor_flag(BARE_METAL_CPUINFO)
    assert not has_hypervisor_flag("flags : nohypervisor\n")


def test_parse_busctl_string() -> None:
    assert parse_busctl_string('s "laptop"\n') == "laptop"
    assert parse_busctl_string('s ""\n') == ""
    assert parse_busctl_string("garbage") == ""


def test_no_dbus_for_fixture_trees(tmp_path: Path) -> None:
    root = tree(tmp_path, {"/run/dbus/system_bus_socket": ""})
    assert hostnamed_commands(root) == []


# -- hostnamed through a stand-in command ---------------------------------------------------


def fake_command(tmp_path: Path, name: str, output: str, status: int = 0) -> list[str]:
    script = tmp_path / "bin" / name
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' '{output}'\nexit {status}\n")
    script.chmod(0o755)
    return [str(script)]


async def test_hostnamed_answer_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    command = fake_command(tmp_path, "busctl", 's "laptop"')
    monkeypatch.setattr(chassis, "hostnamed_commands", lambda root: [command])
    root = tree(tmp_path / "root", {"/.dockerenv": ""})
    assert await detect_chassis(root) == ("laptop", "hostnamed")


async def test_hostnamectl_after_failing_busctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    busctl = fake_command(tmp_path, "busctl", "Failed to get property", status=1)
    hostnamectl = fake_command(tmp_path, "hostnamectl", "server")
    monkeypatch.setattr(chassis, "hostnamed_commands", lambda root: [busctl, hostnamectl])
    assert await detect_chassis(tree(tmp_path / "root", {})) == ("server", "hostnamed")


async def test_empty_hostnamed_answer_falls_back_to_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    command = fake_command(tmp_path, "busctl", 's ""')
    monkeypatch.setattr(chassis, "hostnamed_commands", lambda root: [command, ["/nonexistent/hostnamectl"]])
    root = tree(tmp_path / "root", {"/run/.containerenv": ""})
    assert await detect_chassis(root) == ("container", "/run/.containerenv")


# -- run(ctx) against a real SQLite store ---------------------------------------------------


async def test_run_writes_chassis(tmp_path: Path, module_store: ModuleStore) -> None:
    # set_machine_chassis takes ($1 chassis, $2 machine id, $3 agent id): only the host's row changes.
    other = await module_store.add_machine("cd" * 16)
    host_before = module_store.machine()
    ctx = await module_store.run("chassis", tree(tmp_path, dmi("LENOVO", "20XW0055GE", "10")))
    host = module_store.machine()
    assert host["chassis"] == "laptop"
    assert {k: v for k, v in host.items() if k not in ("chassis", "updated_at")} == {
        k: v for k, v in host_before.items() if k not in ("chassis", "updated_at")
    }
    assert module_store.machine(other)["chassis"] == ""
    assert ctx.rows_written == 1


async def test_second_run_keeps_the_chassis(tmp_path: Path, module_store: ModuleStore) -> None:
    root = tree(tmp_path, {"/.dockerenv": ""})
    await module_store.run("chassis", root)
    counts = module_store.counts()
    await module_store.run("chassis", root)
    assert module_store.machine()["chassis"] == "container"
    assert module_store.counts() == counts


async def test_run_skips_when_nothing_is_known(tmp_path: Path, module_store: ModuleStore) -> None:
    before = module_store.snapshot()
    with pytest.raises(Skip):
        await module_store.run("chassis", HostRoot.under(tmp_path))
    assert module_store.snapshot() == before
    assert module_store.machine()["chassis"] == ""


async def test_run_needs_host(tmp_path: Path, module_store: ModuleStore) -> None:
    before = module_store.snapshot()
    with pytest.raises(RuntimeError, match="no host"):
        await module_store.run("chassis", tree(tmp_path, {"/.dockerenv": ""}), machine_id=None)
    assert module_store.snapshot() == before


def test_set_machine_chassis_query_exists() -> None:
    from situation.store import queries_for

    for dialect in ("postgres", "sqlite"):
        text = queries_for(dialect)["set_machine_chassis"]
        assert "UPDATE machines" in text and "situation." not in text

"""host-basic: distribution detection order, host id sources, facts and the machines row."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from situation.hostroot import HostRoot
from situation.modules import host_basic
from situation.modules.host_basic import (
    HostFacts,
    collect,
    detect_distribution,
    distribution_family,
    format_machine_id,
    needs_lsb_release_command,
    parse_lsb_release_output,
    parse_os_release,
    read_host_id,
)
from support.modules import AGENT, ModuleStore, open_module_store


def write(root: Path, absolute: str, text: str) -> Path:
    path = root / absolute.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def tree(tmp_path: Path, files: dict[str, str]) -> HostRoot:
    for absolute, text in files.items():
        write(tmp_path, absolute, text)
    return HostRoot.under(tmp_path)


BASE = {
    "/proc/sys/kernel/hostname": "web-01\n",
    "/proc/sys/kernel/arch": "aarch64\n",
    "/proc/uptime": "12345.67 45678.90\n",
}

UBUNTU_OS_RELEASE = 'NAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\nID_LIKE=debian\n'


# -- distributions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "files, expected",
    [
        pytest.param(
            {"/etc/debian_version": "12.5\n", "/etc/os-release": 'ID=debian\nVERSION_ID="12"\n'},
            ("debian", "12.5", "debian"),
            id="debian",
        ),
        pytest.param(
            {
                "/etc/debian_version": "trixie/sid\n",
                "/etc/lsb-release": "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=24.04\nDISTRIB_CODENAME=noble\n"
                'DISTRIB_DESCRIPTION="Ubuntu 24.04 LTS"\n',
                "/etc/os-release": UBUNTU_OS_RELEASE,
            },
            ("ubuntu", "24.04", "debian"),
            id="ubuntu",
        ),
        pytest.param(
            {
                "/etc/debian_version": "bookworm/sid\n",
                "/etc/lsb-release": 'DISTRIB_ID=LinuxMint\nDISTRIB_RELEASE="21.3"\n',
            },
            ("linuxmint", "21.3", "debian"),
            id="linuxmint",
        ),
        pytest.param(
            {
                "/etc/debian_version": "11.9\n",
                "/etc/lsb-release": 'DISTRIB_ID="Cumulus Linux"\nDISTRIB_RELEASE=5.9.1\n',
            },
            ("cumuluslinux", "5.9.1", "debian"),
            id="cumulus",
        ),
        pytest.param(
            {"/etc/debian_version": "12.4\n", "/usr/bin/raspi-config": "#!/bin/sh\n"},
            ("raspbian", "12.4", "debian"),
            id="raspbian",
        ),
        pytest.param(
            {
                "/etc/redhat-release": "Fedora release 40 (Forty)\n",
                "/etc/system-release": "Fedora release 40 (Forty)\n",
                "/etc/os-release": 'ID=fedora\nVERSION_ID=40\n',
            },
            ("fedora", "40", "fedora"),
            id="fedora",
        ),
        pytest.param(
            {"/etc/redhat-release": "Fedora release 41 (Rawhide)\n"},
            ("fedora", "rawhide", "fedora"),
            id="fedora-rawhide",
        ),
        pytest.param(
            {"/etc/redhat-release": "Red Hat Enterprise Linux release 9.3 (Plow)\n"},
            ("redhat", "9.3", "rhel"),
            id="rhel",
        ),
        pytest.param(
            {
                "/etc/redhat-release": "Rocky Linux release 9.3 (Blue Onyx)\n",
                "/etc/os-release": 'ID="rocky"\nVERSION_ID="9.3"\n',
            },
            ("rocky", "9.3", "rhel"),
            id="rocky",
        ),
        pytest.param(
            {"/etc/redhat-release": "CentOS Stream release 9\n"},
            ("centos", "9", "rhel"),
            id="centos-stream",
        ),
        pytest.param(
            {"/etc/redhat-release": "AlmaLinux release 8.9 (Midnight Oncilla)\n"},
            ("almalinux", "8.9", "rhel"),
            id="almalinux",
        ),
        pytest.param(
            {
                "/etc/oracle-release": "Oracle Linux Server release 8.9\n",
                "/etc/redhat-release": "Red Hat Enterprise Linux release 8.9 (Ootpa)\n",
            },
            ("oracle", "8.9", "rhel"),
            id="oracle",
        ),
        pytest.param(
            {"/etc/enterprise-release": "Enterprise Linux Enterprise Linux Server release 5.11 (Carthage)\n"},
            ("oracle", "5.11", "rhel"),
            id="oracle-enterprise",
        ),
        pytest.param(
            {
                "/etc/system-release": "Amazon Linux release 2023.4.20240401 (Amazon Linux)\n",
                "/etc/os-release": 'ID="amzn"\nVERSION_ID="2023"\n',
            },
            ("amazon", "2023.4.20240401", "rhel"),
            id="amazon-system-release",
        ),
        pytest.param(
            {"/etc/os-release": 'NAME="Amazon Linux"\nID="amzn"\nVERSION_ID="2"\n'},
            ("amazon", "2", "rhel"),
            id="amazon-os-release",
        ),
        pytest.param(
            {"/etc/alpine-release": "3.19.1\n", "/etc/os-release": "ID=alpine\nVERSION_ID=3.19.1\n"},
            ("alpine", "3.19.1", "alpine"),
            id="alpine",
        ),
        pytest.param(
            {"/etc/os-release": 'NAME="openSUSE Leap"\nID="opensuse-leap"\nVERSION_ID="15.5"\n'},
            ("opensuse-leap", "15.5", "suse"),
            id="opensuse-leap",
        ),
        pytest.param(
            {"/etc/os-release": 'NAME="openSUSE Tumbleweed"\nID="opensuse-tumbleweed"\nVERSION_ID="20240320"\n'},
            ("opensuse-tumbleweed", "20240320", "suse"),
            id="opensuse-tumbleweed",
        ),
        pytest.param(
            {"/etc/SuSE-release": "openSUSE 13.2 (x86_64)\nVERSION = 13.2\nCODENAME = Harlequin\n"},
            ("opensuse", "13.2", "suse"),
            id="suse-release-opensuse",
        ),
        pytest.param(
            {"/etc/SuSE-release": "SUSE Linux Enterprise Server 12 (x86_64)\nVERSION = 12\nPATCHLEVEL = 5\n"},
            ("suse", "12.5", "suse"),
            id="suse-release-sles",
        ),
        pytest.param(
            {"/etc/slackware-version": "Slackware 15.0\n"},
            ("slackware", "15.0", "slackware"),
            id="slackware",
        ),
        pytest.param(
            {"/etc/gentoo-release": "Gentoo Base System release 2.14\n"},
            ("gentoo", "2.14", "gentoo"),
            id="gentoo",
        ),
        pytest.param(
            {"/etc/arch-release": "\n", "/etc/os-release": "ID=arch\n"},
            ("arch", "", "arch"),
            id="arch",
        ),
        pytest.param(
            {"/etc/os-release": 'ID=nixos\nVERSION_ID="24.05"\n'},
            ("nixos", "24.05", ""),
            id="unknown-family",
        ),
        pytest.param(
            {"/etc/lsb-release": "DISTRIB_ID=ScientificSL\nDISTRIB_RELEASE=6.10\n"},
            ("scientific", "6.10", "rhel"),
            id="lsb-fallback",
        ),
        pytest.param(
            {"/etc/lsb-release": "DISTRIB_ID=Foobar\nDISTRIB_RELEASE=1\n"},
            ("foobar", "1", ""),
            id="lsb-fallback-lowercased",
        ),
        pytest.param({}, ("", "", ""), id="nothing"),
    ],
)
def test_detect_distribution(tmp_path: Path, files: dict[str, str], expected: tuple[str, str, str]) -> None:
    assert detect_distribution(tree(tmp_path, files)) == expected


def test_empty_release_file_is_skipped(tmp_path: Path) -> None:
    # gopsutil's "exists with contents": an empty debian_version does not make a Debian.
    root = tree(tmp_path, {"/etc/debian_version": "", "/etc/alpine-release": "3.20.0\n"})
    assert detect_distribution(root) == ("alpine", "3.20.0", "alpine")


def test_debian_lsb_from_command_output(tmp_path: Path) -> None:
    root = tree(tmp_path, {"/etc/debian_version": "bookworm/sid\n"})
    output = "No LSB modules are available.\nDistributor ID:\tUbuntu\nDescription:\tUbuntu 22.04.4 LTS\n" \
        "Release:\t22.04\nCodename:\tjammy\n"
    assert detect_distribution(root, output) == ("ubuntu", "22.04", "debian")


def test_lsb_file_wins_over_command_output(tmp_path: Path) -> None:
    root = tree(tmp_path, {"/etc/debian_version": "x\n", "/etc/lsb-release": "DISTRIB_ID=Deepin\nDISTRIB_RELEASE=23\n"})
    assert detect_distribution(root, "Distributor ID:\tUbuntu\nRelease:\t22.04\n") == ("Deepin", "23", "debian")


def test_parse_lsb_release_output() -> None:
    lsb = parse_lsb_release_output("Distributor ID:\tRedHat\nRelease:\t7.9\n")
    assert (lsb.id, lsb.release) == ("RedHat", "7.9")


def test_parse_os_release_quotes() -> None:
    assert parse_os_release('ID="amzn"\nVERSION_ID="2"\n') == ("amazon", "2")
    assert parse_os_release("ID=fedora\nVERSION_ID=40\n") == ("fedora", "40")
    assert parse_os_release('# comment\nID="opensuse-leap"\nbroken\n') == ("opensuse-leap", "")


@pytest.mark.parametrize(
    "platform, family",
    [
        ("ubuntu", "debian"),
        ("Kylin", "debian"),
        ("kylin", ""),
        ("uos", "debian"),
        ("fedora", "fedora"),
        ("cloudlinux", "rhel"),
        ("ibm_powerkvm", "rhel"),
        ("sles", "suse"),
        ("caasp", "suse"),
        ("exherbo", "exherbo"),
        ("neokylin", "neokylin"),
        ("anolis", "anolis"),
        ("nixos", ""),
        ("", ""),
    ],
)
def test_distribution_family(platform: str, family: str) -> None:
    assert distribution_family(platform) == family


def test_lsb_command_only_when_useful(tmp_path: Path) -> None:
    fixture = tree(tmp_path, {"/etc/debian_version": "12\n", "/usr/bin/lsb_release": "#!/bin/sh\n"})
    assert needs_lsb_release_command(fixture) is False  # never for a fixture tree


# -- host id --------------------------------------------------------------------------------

MACHINE_ID = "0123456789abcdef0123456789abcdef"


def test_format_machine_id() -> None:
    assert format_machine_id(MACHINE_ID) == "01234567-89ab-cdef-0123-456789abcdef"
    assert format_machine_id("uninitialized") is None
    assert format_machine_id(MACHINE_ID + "0") is None


def test_host_id_product_uuid_first(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "/sys/class/dmi/id/product_uuid": "4C4C4544-0042-3510-8052-B4C04F4E4A31\n",
            "/etc/machine-id": MACHINE_ID + "\n",
            "/proc/sys/kernel/random/boot_id": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee\n",
        },
    )
    assert read_host_id(root) == "4c4c4544-0042-3510-8052-b4c04f4e4a31"


def test_host_id_machine_id(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "/etc/machine-id": MACHINE_ID + "\n",
            "/proc/sys/kernel/random/boot_id": "AAAAAAAA-0000-0000-0000-000000000000\n",
        },
    )
    assert read_host_id(root) == "01234567-89ab-cdef-0123-456789abcdef"


def test_host_id_empty_or_placeholder_product_uuid_falls_through(tmp_path: Path) -> None:
    root = tree(tmp_path, {"/sys/class/dmi/id/product_uuid": "\n", "/etc/machine-id": MACHINE_ID + "\n"})
    assert read_host_id(root) == "01234567-89ab-cdef-0123-456789abcdef"
    write(tmp_path, "/sys/class/dmi/id/product_uuid", "00000000-0000-0000-0000-000000000000\n")
    assert read_host_id(root) == "01234567-89ab-cdef-0123-456789abcdef"


def test_host_id_boot_id_fallback(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "/etc/machine-id": "uninitialized\n",
            "/proc/sys/kernel/random/boot_id": "9F8E7D6C-0000-4000-8000-123456789ABC\n",
        },
    )
    assert read_host_id(root) == "9f8e7d6c-0000-4000-8000-123456789abc"


def test_host_id_unknown_is_none(tmp_path: Path) -> None:
    assert read_host_id(tree(tmp_path, {})) is None
    assert read_host_id(tree(tmp_path, {"/etc/machine-id": "\n", "/proc/sys/kernel/random/boot_id": ""})) is None


# -- all facts ------------------------------------------------------------------------------


def test_collect_fixture(tmp_path: Path) -> None:
    files = {**BASE, "/etc/machine-id": MACHINE_ID + "\n", "/etc/alpine-release": "3.19.1\n"}
    facts = collect(tree(tmp_path, files))
    assert facts == HostFacts(
        hostname="web-01",
        host_id="01234567-89ab-cdef-0123-456789abcdef",
        arch="aarch64",
        platform="linux",
        distribution="alpine",
        distribution_version="3.19.1",
        distribution_family="alpine",
        uptime=12345 * 1_000_000_000,
    )


def test_collect_arch_falls_back_to_uname(tmp_path: Path) -> None:
    files = dict(BASE)
    del files["/proc/sys/kernel/arch"]
    assert collect(tree(tmp_path, files)).arch == os.uname().machine


def test_collect_fails_without_uptime(tmp_path: Path) -> None:
    files = dict(BASE)
    del files["/proc/uptime"]
    with pytest.raises(OSError):
        collect(tree(tmp_path, files))


def test_collect_fails_without_hostname(tmp_path: Path) -> None:
    files = dict(BASE)
    del files["/proc/sys/kernel/hostname"]
    with pytest.raises(OSError):
        collect(tree(tmp_path, files))


def test_collect_live() -> None:
    facts = collect(HostRoot())
    assert facts.hostname == socket.gethostname()
    assert facts.arch == os.uname().machine
    assert facts.platform == "linux"
    assert facts.uptime > 0 and facts.uptime % 1_000_000_000 == 0
    assert facts.host_id != ""


# -- run(ctx) against a real SQLite store ---------------------------------------------------

ROCKY = {**BASE, "/etc/os-release": 'ID="rocky"\nVERSION_ID="9.3"\n'}
ROCKY_MACHINE = {
    "agent": AGENT,
    "hostname": "web-01",
    "host_id": None,
    "arch": "aarch64",
    "platform": "linux",
    "distribution": "rocky",
    "distribution_version": "9.3",
    "distribution_family": "rhel",
    "uptime": 12345_000_000_000,
    "cpe": "",
    "chassis": "",
    "parent_machine_id": None,
    "updated_by": AGENT,
}


def machine_columns(row: dict) -> dict:
    return {column: row[column] for column in ROCKY_MACHINE}


async def test_run_creates_the_machine(tmp_path: Path) -> None:
    async with open_module_store(tmp_path / "db", with_machine=False) as db:
        ctx = await db.run("host-basic", tree(tmp_path, ROCKY))
        [row] = db.rows("machines")
        assert ctx.host.id == row["id"]
        assert machine_columns(row) == ROCKY_MACHINE
        assert ctx.rows_written == 1


async def test_second_run_writes_nothing(tmp_path: Path) -> None:
    async with open_module_store(tmp_path / "db", with_machine=False) as db:
        root = tree(tmp_path, ROCKY)
        first = await db.run("host-basic", root)
        before = db.snapshot()
        ctx = await db.run("host-basic", root)
        assert ctx.rows_written == 0
        assert ctx.host.id == first.host.id
        assert db.snapshot() == before


async def test_run_refreshes_the_facts_and_keeps_the_rest(tmp_path: Path, module_store: ModuleStore) -> None:
    # The existing row of this agent is updated in place; chassis (chassis module), cpe and
    # parent_machine_id are not host-basic's, and stay as they are.
    parent = await module_store.add_machine("cd" * 16, "hypervisor")
    await module_store.store.upsert(
        "machines",
        [{"agent": AGENT, "hostname": "old", "cpe": "cpe:/o:rocky:rocky:9", "parent_machine_id": parent}],
        key="agent",
    )
    await module_store.store.execute("set_machine_chassis", "server", module_store.machine_id, "ab" * 16)
    ctx = await module_store.run("host-basic", tree(tmp_path, ROCKY), machine_id=None)
    assert ctx.host.id == module_store.machine_id
    assert ctx.rows_written == 1
    assert len(module_store.rows("machines")) == 2
    row = module_store.machine()
    expected = {**ROCKY_MACHINE, "cpe": "cpe:/o:rocky:rocky:9", "chassis": "server", "parent_machine_id": parent}
    assert machine_columns(row) == expected


async def test_run_fails_when_facts_are_unreadable(tmp_path: Path) -> None:
    async with open_module_store(tmp_path / "db", with_machine=False) as db:
        ctx = db.context("host-basic", tree(tmp_path, {}))
        with pytest.raises(OSError):
            await host_basic.run(ctx)
        assert db.rows("machines") == []
        assert ctx.host.id is None

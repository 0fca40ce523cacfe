"""An rpm database made by the real ``rpm`` tool (Debian's ``rpm`` package), for the rpm and zypper tests.

``build_database(directory)`` builds small noarch packages with ``rpmbuild``
and records them with ``rpm -i --justdb --nodeps --dbpath`` (nothing is
installed on this machine), giving ``<directory>/db/rpmdb.sqlite``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

# name → (version, release, vendor, files under the build root; a path ending in "/" is a directory)
PACKAGES: dict[str, tuple[str, str, str, list[str]]] = {
    "tiny": ("1.2.3", "4", "Situation Tests", ["/usr/bin/tiny", "/usr/share/tiny/", "/usr/share/tiny/a.txt"]),
    "single": ("0.9", "1.el9", "", ["/usr/bin/single"]),  # exactly one file: the DIRINDEXES fix
}

needs_rpm = pytest.mark.skipif(
    shutil.which("rpm") is None or shutil.which("rpmbuild") is None,
    reason="needs Debian's rpm package (rpm, rpmbuild)",
)


def _spec(name: str, version: str, release: str, vendor: str, files: list[str]) -> str:
    made = []
    for path in files:
        if path.endswith("/"):
            made.append(f"mkdir -p %{{buildroot}}{path}")
        else:
            made.append(f"mkdir -p %{{buildroot}}{path.rsplit('/', 1)[0]} && echo x > %{{buildroot}}{path}")
    directories = [path for path in files if path.endswith("/")]
    # A listed directory owns its content: list what no listed directory holds.
    listed = [path.rstrip("/") for path in files if not any(path != d and path.startswith(d) for d in directories)]
    vendor_line = f"Vendor: {vendor}\n" if vendor else ""
    return (
        f"Name: {name}\nVersion: {version}\nRelease: {release}\nSummary: test\nLicense: MIT\n{vendor_line}"
        "BuildArch: noarch\n%description\ntest\n%install\n" + "\n".join(made)
        + "\n%files\n" + "\n".join(listed) + "\n"
    )


def build_database(directory: Path) -> Path:
    """``<directory>/db`` holding an rpmdb.sqlite with PACKAGES recorded; the db directory."""
    top = directory / "rpmbuild"
    database = directory / "db"
    for sub in ("SPECS", "BUILD", "RPMS", "SOURCES", "SRPMS", "BUILDROOT"):
        (top / sub).mkdir(parents=True, exist_ok=True)
    subprocess.run(["rpm", "--initdb", "--dbpath", str(database)], check=True, capture_output=True)
    for name, (version, release, vendor, files) in PACKAGES.items():
        spec = top / "SPECS" / f"{name}.spec"
        spec.write_text(_spec(name, version, release, vendor, files), encoding="utf-8")
        subprocess.run(["rpmbuild", "--define", f"_topdir {top}", "-bb", str(spec)], check=True, capture_output=True)
    built = sorted(str(p) for p in (top / "RPMS").rglob("*.rpm"))
    subprocess.run(["rpm", "-i", "--dbpath", str(database), "--nodeps", "--justdb", *built],
                   check=True, capture_output=True)
    return database

"""A real Docker Engine API for tests: podman's service, in a network namespace the test made.

Docker itself cannot run on the test machines; Debian's podman serves the
same API (``podman system service``). Everything stays inside a throwaway
namespace and directory: podman creates bridges and firewall rules, which
must never land in the machine's own namespace, and keeps its images and
containers under ``--root``/``--runroot`` in the test's directory (vfs
storage). The namespace is entered with ``nsenter --net`` rather than
``ip netns exec``, which remounts /sys and hides the cgroup mounts runc needs.
Images are a directory tree holding the static busybox, through
``podman import`` (no registry is reachable).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from support.netns import GuardedNamespace

BUSYBOX = Path("/bin/busybox")
IMAGE = "localhost:5000/tools/busybox:1.36"  # a registry with a port: the tag split is tested on a real engine
APPLETS = ("sh", "httpd", "sleep", "nc")


def podman_missing() -> str | None:
    """Why the podman tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "podman tests need root"
    for tool in ("podman", "runc", "nsenter", "ip"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"{tool} is not installed (apt-get install podman runc busybox-static)"
    if not BUSYBOX.exists():
        return "busybox-static is not installed"
    return None


@dataclass
class PodmanEngine(GuardedNamespace):
    base: Path
    name: str = field(default_factory=lambda: f"sit-dk-{uuid.uuid4().hex[:6]}")
    network: str = field(default_factory=lambda: f"sitnet{uuid.uuid4().hex[:6]}")
    service: subprocess.Popen | None = None
    # podman refuses a runroot longer than 50 characters, which pytest's temporary
    # directories (more so under xdist) easily exceed.
    runroot: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sit-pm-", dir="/tmp")))

    @property
    def socket(self) -> Path:
        return self.base / "engine.sock"

    @property
    def host_url(self) -> str:
        return f"unix://{self.socket}"

    def _env(self) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.base),
                "CONTAINERS_CONF": str(self.base / "containers.conf"), "XDG_RUNTIME_DIR": str(self.base / "xdg")}

    def _podman(self) -> list[str]:
        return ["nsenter", f"--net=/var/run/netns/{self.name}", "podman", "--root", str(self.base / "root"),
                "--runroot", str(self.runroot), "--storage-driver", "vfs"]

    def podman(self, *args: str, check: bool = True) -> str:
        result = subprocess.run([*self._podman(), *args], env=self._env(), capture_output=True, text=True,
                                timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout.strip()

    def start(self) -> PodmanEngine:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        (self.base / "xdg").mkdir(parents=True, exist_ok=True)
        (self.base / "containers.conf").write_text(
            "[containers]\ndefault_ulimits = []\n"
            f'[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            f'events_logfile_path = "{self.base}/events.log"\ntmp_dir = "{self.base}/tmp"\n'
            f'[network]\nnetwork_backend = "cni"\nnetwork_config_dir = "{self.base}/cni"\n'
        )
        self._import_image()
        self.service = subprocess.Popen([*self._podman(), "system", "service", "--time=0", self.host_url],
                                        env=self._env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if self.socket.exists():
                return self
            time.sleep(0.05)
        raise RuntimeError("podman's API socket never appeared")

    def _import_image(self) -> None:
        tree = self.base / "image"
        (tree / "bin").mkdir(parents=True)
        (tree / "www").mkdir()
        shutil.copy(BUSYBOX, tree / "bin" / "busybox")
        for applet in APPLETS:
            (tree / "bin" / applet).symlink_to("busybox")
        (tree / "www" / "index.html").write_text("hello\n")
        archive = self.base / "image.tar"
        subprocess.run(["tar", "-C", str(tree), "-cf", str(archive), "."], check=True)
        self.podman("import", str(archive), IMAGE)

    def stop(self) -> None:
        self.podman("rm", "--all", "--force", "--time", "0", check=False)
        self.podman("network", "rm", "--force", self.network, check=False)
        if self.service is not None:
            self.service.send_signal(signal.SIGTERM)
            try:
                self.service.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        # The CNI host-local plugin keeps its address leases outside podman's root.
        shutil.rmtree(Path("/var/lib/cni/networks") / self.network, ignore_errors=True)
        shutil.rmtree(self.runroot, ignore_errors=True)

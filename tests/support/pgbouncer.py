"""A throwaway PgBouncer in transaction pooling mode, inside a test-made network namespace.

The bouncer listens for TLS clients on ``127.0.0.1:PORT`` inside the namespace
(so the agents that use it run there too, rule 1). A cluster running in the
same namespace is reached over TCP with TLS (``server_tls_sslmode =
verify-full``) and SCRAM pass-through, as in production; any other cluster over
its Unix socket, which crosses namespaces. The bouncer also listens on a Unix
socket in ``base_dir``, which tells us when it is ready.

Its settings are deploy/pgbouncer.ini's, with the site's paths and ports
replaced (:func:`settings_from_example`): the example is what the tests run.
Clients authenticate with SCRAM against ``auth_file``, which holds the roles'
SCRAM secrets copied from pg_authid (:meth:`Bouncer.add_users`).
"""

from __future__ import annotations

import configparser
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .cluster import Cluster, ClusterError

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "pgbouncer.ini"
RUN_AS = "postgres"  # pgbouncer refuses to run as root
PORT = 6432  # inside the test's own namespace: no clash with anything outside it
START_TIMEOUT = 30.0


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )


def settings_from_example(example: Path = EXAMPLE) -> dict[str, str]:
    """The ``[pgbouncer]`` section of the deploy example, as written there."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    parser.read(example, encoding="utf-8")
    return dict(parser["pgbouncer"])


class Bouncer:
    """One pgbouncer process in namespace ``namespace`` in front of ``cluster``."""

    def __init__(self, base_dir: Path, cluster: Cluster, namespace: str, *, tls_cert: Path, tls_key: Path,
                 ca_file: Path):
        self.base_dir = Path(base_dir)
        self.cluster = cluster
        self.namespace = namespace
        self.files = {"bouncer.crt": tls_cert, "bouncer.key": tls_key, "root.crt": ca_file}
        self.server_over_tcp = cluster.namespace == namespace
        self.users: dict[str, str] = {}  # [users] section: role -> its settings (pool_mode=..., max_user_connections=...)
        self.port = PORT
        self.config = self.base_dir / "pgbouncer.ini"
        self.auth_file = self.base_dir / "userlist.txt"
        self.log_path = self.base_dir / "pgbouncer.log"
        self.socket = self.base_dir / f".s.PGSQL.{self.port}"
        self.process: subprocess.Popen | None = None
        account = pwd.getpwnam(RUN_AS)
        self._owner = (account.pw_uid, account.pw_gid)

    def _write(self, path: Path, text: str, mode: int = 0o600) -> None:
        path.write_text(text)
        os.chmod(path, mode)
        os.chown(path, *self._owner)

    def settings(self) -> dict[str, str]:
        """The example's settings, with this test's files, socket and cluster."""
        settings = settings_from_example()
        settings.update(
            listen_addr="127.0.0.1",
            listen_port=str(self.port),
            unix_socket_dir=str(self.base_dir),
            auth_file=str(self.auth_file),
            client_tls_cert_file=str(self.base_dir / "bouncer.crt"),
            client_tls_key_file=str(self.base_dir / "bouncer.key"),
            server_tls_ca_file=str(self.base_dir / "root.crt"),
            logfile=str(self.log_path),
            pidfile=str(self.base_dir / "pgbouncer.pid"),
        )
        if not self.server_over_tcp:  # the cluster's Unix socket: no TLS on that leg
            for key in [k for k in settings if k.startswith("server_tls_")]:
                del settings[key]
        return settings

    def server(self) -> str:
        """Where the bouncer finds PostgreSQL, as a [databases] connection string."""
        host = self.cluster.host if self.server_over_tcp else self.cluster.socket_dir
        return f"host={host} port={self.cluster.port}"

    def add_users(self, *roles: str) -> None:
        """Copy the roles' SCRAM secrets from pg_authid into auth_file (before :meth:`start`)."""
        names = ", ".join("'" + r.replace("'", "''") + "'" for r in roles)
        # The query docs/security.md shows; the test roles' names need no escaping.
        lines = self.cluster.psql(
            f"""SELECT format('"%s" "%s"', rolname, rolpassword) FROM pg_authid """
            f"WHERE rolname IN ({names}) AND rolpassword LIKE 'SCRAM-SHA-256$%' ORDER BY rolname"
        ).splitlines()
        if len(lines) != len(set(roles)):
            raise ClusterError(f"not every role of {roles} has a SCRAM password")
        existing = self.auth_file.read_text().splitlines() if self.auth_file.exists() else []
        self._write(self.auth_file, "\n".join([*existing, *lines]) + "\n")

    def start(self) -> Bouncer:
        binary = pgbouncer_binary()
        if binary is None:
            raise ClusterError("pgbouncer is not installed (Debian package pgbouncer)")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base_dir, 0o755)
        os.chown(self.base_dir, *self._owner)
        for name, source in self.files.items():
            self._write(self.base_dir / name, Path(source).read_text())
        if not self.auth_file.exists():
            self._write(self.auth_file, "")
        databases = f"* = {self.server()}\n"
        body = "".join(f"{k} = {v}\n" for k, v in self.settings().items())
        users = "".join(f"{role} = {settings}\n" for role, settings in self.users.items())
        self._write(self.config, f"[databases]\n{databases}\n[users]\n{users}\n[pgbouncer]\n{body}", 0o644)
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, "runuser", "-u", RUN_AS, "--", binary, str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.base_dir,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ClusterError(f"pgbouncer did not start:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no pgbouncer log)"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

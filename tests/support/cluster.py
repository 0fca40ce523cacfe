"""Throwaway PostgreSQL clusters for the test suite.

A :class:`Cluster` owns one directory (``base_dir``) holding the data
directory, the Unix socket directory and the server log. When the tests run as
root, ``initdb``, ``pg_ctl`` and the server run as the ``postgres`` OS user (the
server refuses root); otherwise they run as the current user.

Each started cluster gets a small watchdog process in its own session. It waits
for EOF on a pipe whose write end only this process holds: when the test run
dies without calling :meth:`Cluster.destroy` (SIGKILL, crash, interpreter exit),
the watchdog stops the server with ``pg_ctl stop -m immediate`` and removes
``base_dir``, so no stale server outlives the run.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from .certs import Certs

PG_BIN_ENV = "SITUATION_TEST_PG_BIN"
# Captured at import time: test fixtures may strip SITUATION_* from os.environ later.
_PG_BIN_FROM_ENV = os.environ.get(PG_BIN_ENV)

SERVER_OS_USER = "postgres"
SUPERUSER = "postgres"
START_TIMEOUT = 60  # seconds, for pg_ctl -t

_ports_in_use: set[int] = set()


class ClusterError(RuntimeError):
    """A throwaway cluster could not be created, started, stopped or queried."""


class PsqlError(ClusterError):
    """psql exited non-zero; ``stderr`` holds its message."""

    def __init__(self, message: str, *, returncode: int, stdout: str, stderr: str):
        super().__init__(message)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


# --------------------------------------------------------------------------- helpers


def _version_key(path: str) -> tuple:
    match = re.search(r"/(\d+(?:\.\d+)?)/bin$", path.rstrip("/"))
    if not match:
        return (0,)
    return tuple(int(p) for p in match.group(1).split("."))


def _has_server_tools(directory: Path) -> bool:
    return all(os.access(directory / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres"))


def find_pg_bin() -> Path:
    """The directory holding initdb/pg_ctl/postgres.

    Order: ``$SITUATION_TEST_PG_BIN``; the newest ``/usr/lib/postgresql/<N>/bin``
    (Debian/Ubuntu); the newest ``/usr/pgsql-<N>/bin`` (RHEL); ``initdb`` on PATH;
    ``pg_config --bindir``.
    """
    tried: list[str] = []
    override = _PG_BIN_FROM_ENV or os.environ.get(PG_BIN_ENV)
    if override:
        candidate = Path(override)
        if _has_server_tools(candidate):
            return candidate
        raise ClusterError(f"{PG_BIN_ENV}={override} has no initdb, pg_ctl and postgres")
    patterns = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin")
    for pattern in patterns:
        for found in sorted(glob.glob(pattern), key=_version_key, reverse=True):
            tried.append(found)
            if _has_server_tools(Path(found)):
                return Path(found)
    on_path = shutil.which("initdb")
    if on_path:
        candidate = Path(on_path).resolve().parent
        tried.append(str(candidate))
        if _has_server_tools(candidate):
            return candidate
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            bindir = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            bindir = ""
        if bindir:
            tried.append(bindir)
            if _has_server_tools(Path(bindir)):
                return Path(bindir)
    raise ClusterError(
        "no PostgreSQL server binaries found (initdb, pg_ctl, postgres); set "
        f"{PG_BIN_ENV} to their directory. Tried: {', '.join(tried) or 'nothing'}"
    )


def has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def _port_free(family: int, address: str, port: int) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address, port))
    except OSError:
        return False
    return True


def pick_free_port(ipv6: bool) -> int:
    """A TCP port free on 127.0.0.1 (and on ::1 when ``ipv6``), not handed out before."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port in _ports_in_use:
            continue
        if ipv6 and not _port_free(socket.AF_INET6, "::1", port):
            continue
        _ports_in_use.add(port)
        return port
    raise ClusterError("could not find a free TCP port on the loopback interface")


def quote_ident(name: str) -> str:
    if "\0" in name:
        raise ValueError("identifier contains NUL")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    if "\0" in value:
        raise ValueError("literal contains NUL")
    return "'" + value.replace("'", "''") + "'"


def _conf_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def conninfo_value(value: object) -> str:
    """Quote one value for a libpq ``key=value`` connection string."""
    text = str(value)
    if text and not re.search(r"[\s'\\]", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def make_conninfo(**params: object) -> str:
    """A libpq ``key=value`` string; ``None`` values are left out."""
    return " ".join(f"{k}={conninfo_value(v)}" for k, v in params.items() if v is not None)


def clean_environ(base: dict[str, str] | None = None, **overrides: str) -> dict[str, str]:
    """A copy of the environment without PG* and SITUATION_* variables, plus ``overrides``."""
    env = dict(os.environ if base is None else base)
    for key in list(env):
        if key.startswith("PG") or key.startswith("SITUATION_"):
            del env[key]
    env.update(overrides)
    return env


# The watchdog: reads its stdin until EOF. "release" before EOF means the parent
# cleaned up itself; plain EOF means the parent died, so stop the server and
# remove the cluster directory.
_WATCHDOG = r"""
import os, shutil, signal, subprocess, sys, time
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(s, signal.SIG_IGN)
pg_ctl, data_dir, base_dir, uid, gid, remove = sys.argv[1:7]
received = b""
try:
    while True:
        chunk = sys.stdin.buffer.read(64)
        if not chunk:
            break
        received += chunk
except Exception:
    pass
if b"release" in received:
    sys.exit(0)
pid_file = os.path.join(data_dir, "postmaster.pid")

def postmaster():
    try:
        with open(pid_file) as f:
            pid = int(f.readline().strip())
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            if b"postgres" not in f.read():
                return None
        os.kill(pid, 0)
        return pid
    except Exception:
        return None

pid = postmaster()
if pid:
    kw = {}
    if os.geteuid() == 0 and int(uid) != 0:
        kw = dict(user=int(uid), group=int(gid), extra_groups=[])
    try:
        subprocess.run([pg_ctl, "stop", "-D", data_dir, "-m", "immediate", "-w", "-t", "20", "-s"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, cwd="/", timeout=40, **kw)
    except Exception:
        pass
    pid = postmaster()
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        except Exception:
            pass
if remove == "1":
    shutil.rmtree(base_dir, ignore_errors=True)
"""


# --------------------------------------------------------------------------- the cluster


class Cluster:
    """One throwaway PostgreSQL server, reachable over TCP and a Unix socket.

    ``base_dir`` belongs to the cluster (created if missing, removed by
    :meth:`destroy` unless ``keep``). Layout: ``data/`` (PGDATA), ``sock/``
    (Unix socket), ``postgres.log``, ``cluster.json`` (where things are).
    """

    host = "localhost"
    superuser = SUPERUSER

    def __init__(
        self,
        base_dir: Path,
        *,
        tls: bool,
        certs: Certs | None = None,
        name: str = "pg",
        bin_dir: Path | None = None,
        keep: bool = False,
        namespace: str | None = None,
    ):
        if tls and certs is None:
            raise ValueError("a TLS cluster needs certs")
        self.name = name
        self.tls = tls
        self.certs = certs
        self.keep = keep
        # A network namespace (support/netns.py) to run the server in, so that tests
        # running whole agent cycles inside it reach PostgreSQL over TCP there.
        self.namespace = namespace
        self.base_dir = Path(base_dir).absolute()
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "sock"
        self.log_path = self.base_dir / "postgres.log"
        self.pid_file = self.data_dir / "postmaster.pid"
        self.bin_dir = Path(bin_dir) if bin_dir else find_pg_bin()
        self.pg_ctl = self.bin_dir / "pg_ctl"
        self.initdb = self.bin_dir / "initdb"
        psql = self.bin_dir / "psql"
        self.psql_path = psql if os.access(psql, os.X_OK) else Path(shutil.which("psql") or "psql")
        self.ipv6 = has_ipv6_loopback()
        self.listen_addresses = ["127.0.0.1", "::1"] if self.ipv6 else ["127.0.0.1"]
        self.port: int | None = None
        self._initialized = False
        self._started_once = False
        self._watchdog: subprocess.Popen | None = None
        self._run_as = self._server_account()

    def __repr__(self) -> str:
        return f"<Cluster {self.name} tls={self.tls} port={self.port} dir={self.base_dir}>"

    # ------------------------------------------------------------------ addresses

    @property
    def host_port(self) -> tuple[str, int]:
        """``("localhost", port)``: where TCP clients connect."""
        return (self.host, self._require_port())

    @property
    def ca_file(self) -> Path | None:
        return self.certs.ca_crt if self.certs else None

    def _require_port(self) -> int:
        if self.port is None:
            raise ClusterError(f"cluster {self.name} has not been started")
        return self.port

    def superuser_dsn(self, dbname: str = "postgres") -> str:
        """URI for the superuser over the Unix socket (trust, no TLS)."""
        return (
            f"postgresql://{SUPERUSER}@/{quote(dbname, safe='')}"
            f"?host={quote(str(self.socket_dir), safe='')}&port={self._require_port()}"
        )

    def conninfo(self, **params: object) -> str:
        """libpq ``key=value`` string for TCP: host=localhost, port, dbname=postgres
        unless overridden; other keywords (user, password, sslmode, ...) are added
        as given, ``None`` values left out."""
        merged: dict[str, object] = {
            "host": self.host,
            "port": self._require_port(),
            "dbname": "postgres",
        }
        merged.update(params)
        return make_conninfo(**merged)

    def uri(
        self,
        user: str,
        password: str | None = None,
        dbname: str = "postgres",
        host: str | None = None,
        **params: object,
    ) -> str:
        """``postgresql://user[:password]@host:port/dbname?params`` for TCP."""
        host = host or self.host
        netloc_host = f"[{host}]" if ":" in host else host
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        query = "&".join(
            f"{quote(k, safe='')}={quote(str(v), safe='')}"
            for k, v in params.items()
            if v is not None
        )
        text = f"postgresql://{auth}@{netloc_host}:{self._require_port()}/{quote(dbname, safe='')}"
        return f"{text}?{query}" if query else text

    # ------------------------------------------------------------------ processes

    def _server_account(self) -> tuple[int, int] | None:
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(SERVER_OS_USER)
        except KeyError:
            raise ClusterError(
                f"running as root but there is no {SERVER_OS_USER!r} OS user to run PostgreSQL"
            ) from None
        return entry.pw_uid, entry.pw_gid

    def _chown(self, path: Path) -> None:
        if self._run_as is not None:
            os.chown(path, *self._run_as)

    def _server_env(self) -> dict[str, str]:
        return clean_environ(LC_ALL="C", LANG="C", HOME=str(self.base_dir), TZ="UTC")

    def _run_server_tool(
        self, argv: list[str], *, timeout: float = START_TIMEOUT + 30
    ) -> subprocess.CompletedProcess:
        kwargs: dict = {}
        if self.namespace is not None:
            # Entering a namespace needs root: switch to the server account inside it.
            account = ["runuser", "-u", pwd.getpwuid(self._run_as[0]).pw_name, "--"] if self._run_as else []
            argv = ["ip", "netns", "exec", self.namespace, *account, *argv]
        elif self._run_as is not None:
            kwargs.update(user=self._run_as[0], group=self._run_as[1], extra_groups=[])
        try:
            return subprocess.run(
                [str(a) for a in argv],
                cwd=self.base_dir,
                env=self._server_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                **kwargs,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(
                f"{Path(argv[0]).name} timed out after {timeout}s\n{self._log_excerpt(0)}"
            ) from exc

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _log_excerpt(self, offset: int, lines: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(offset)
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return "(no server log)"
        tail = text.splitlines()[-lines:]
        return "server log:\n" + "\n".join(tail) if tail else "(server log empty)"

    def postmaster_pid(self) -> int | None:
        """The pid recorded in ``pid_file`` if that process is alive, else None."""
        try:
            with open(self.pid_file) as handle:
                pid = int(handle.readline().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        try:
            status = Path(f"/proc/{pid}/stat").read_text()
            if status.rsplit(")", 1)[1].split()[0] == "Z":
                return None
        except (OSError, IndexError):
            pass
        return pid

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None

    # ------------------------------------------------------------------ setup

    def _init(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base_dir, 0o755)
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise ClusterError(f"{self.data_dir} already exists and is not empty")
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        self.socket_dir.mkdir(exist_ok=True)
        os.chmod(self.socket_dir, 0o755)
        self.log_path.touch()
        os.chmod(self.log_path, 0o644)
        for path in (self.data_dir, self.socket_dir, self.log_path):
            self._chown(path)

        result = self._run_server_tool(
            [
                self.initdb,
                "-D", self.data_dir,
                "-U", SUPERUSER,
                "--auth-local=trust",
                "--auth-host=reject",
                "-E", "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        if result.returncode != 0:
            raise ClusterError(
                f"initdb failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )

        if self.tls:
            assert self.certs is not None
            for source, target, mode in (
                (self.certs.server_crt, "server.crt", 0o644),
                (self.certs.server_key, "server.key", 0o600),
                (self.certs.ca_crt, "root.crt", 0o644),
            ):
                destination = self.data_dir / target
                shutil.copyfile(source, destination)
                os.chmod(destination, mode)
                self._chown(destination)

        self._write_file(self.data_dir / "pg_hba.conf", self._hba())
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# situation test suite\ninclude 'situation_test.conf'\n")
        self._initialized = True

    def _write_file(self, path: Path, text: str, mode: int = 0o600) -> None:
        path.write_text(text)
        os.chmod(path, mode)
        self._chown(path)

    def _hba(self) -> str:
        if self.tls:
            rows = [
                "local     all     all                  trust",
                "hostssl   certdb  all  127.0.0.1/32    cert",
                "hostssl   certdb  all  ::1/128         cert",
                "hostssl   all     all  127.0.0.1/32    scram-sha-256",
                "hostssl   all     all  ::1/128         scram-sha-256",
                "hostnossl all     all  0.0.0.0/0       reject",
                "hostnossl all     all  ::/0            reject",
            ]
        else:
            rows = [
                "local     all     all                  trust",
                "host      all     all  127.0.0.1/32    scram-sha-256",
                "host      all     all  ::1/128         scram-sha-256",
            ]
        return "# written by tests/support/cluster.py\n" + "\n".join(rows) + "\n"

    def _settings(self) -> dict[str, str]:
        settings = {
            "listen_addresses": _conf_string(",".join(self.listen_addresses)),
            "port": str(self._require_port()),
            "unix_socket_directories": _conf_string(str(self.socket_dir)),
            "unix_socket_permissions": "0777",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            # No WAL for replication: CREATE DATABASE (fresh_database) is ~10x faster.
            "wal_level": "minimal",
            "max_wal_senders": "0",
            "max_connections": "200",
            "password_encryption": "'scram-sha-256'",
            "logging_collector": "off",
            "log_destination": "'stderr'",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            "lc_messages": "'C'",
            "timezone": "'UTC'",
            "ssl": "on" if self.tls else "off",
        }
        if self.tls:
            settings.update(
                {
                    "ssl_cert_file": "'server.crt'",
                    "ssl_key_file": "'server.key'",
                    "ssl_ca_file": "'root.crt'",
                    "ssl_min_protocol_version": "'TLSv1.2'",
                }
            )
        return settings

    def _write_settings(self) -> None:
        text = "".join(f"{k} = {v}\n" for k, v in self._settings().items())
        self._write_file(self.data_dir / "situation_test.conf", text)
        info = {
            "name": self.name,
            "port": self.port,
            "data_dir": str(self.data_dir),
            "pid_file": str(self.pid_file),
            "socket_dir": str(self.socket_dir),
            "log_path": str(self.log_path),
            "pg_ctl": str(self.pg_ctl),
            "stop": f"{self.pg_ctl} stop -D {self.data_dir} -m immediate",
        }
        info_path = self.base_dir / "cluster.json"
        info_path.write_text(json.dumps(info, indent=2) + "\n")
        os.chmod(info_path, 0o644)

    def _spawn_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.poll() is None:
            return
        uid, gid = self._run_as if self._run_as is not None else (os.getuid(), os.getgid())
        self._watchdog = subprocess.Popen(
            [
                sys.executable, "-c", _WATCHDOG,
                str(self.pg_ctl), str(self.data_dir), str(self.base_dir),
                str(uid), str(gid), "0" if self.keep else "1",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            start_new_session=True,
            env=clean_environ(),
        )

    def _release_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return
        try:
            assert watchdog.stdin is not None
            watchdog.stdin.write(b"release\n")
            watchdog.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            watchdog.wait(timeout=10)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "Cluster":
        """initdb on first use, then start the server and wait until it accepts connections."""
        if self.is_running():
            return self
        if not self._initialized:
            self.port = pick_free_port(self.ipv6)
            self._init()
            self._write_settings()
        self._spawn_watchdog()
        attempts = 1 if self._started_once else 4
        for attempt in range(attempts):
            offset = self._log_size()
            result = self._run_server_tool(
                [
                    self.pg_ctl, "start",
                    "-D", self.data_dir,
                    "-l", self.log_path,
                    "-w", "-t", str(START_TIMEOUT),
                    "-s",
                ]
            )
            excerpt = self._log_excerpt(offset)
            bind_trouble = re.search(r"could not (bind|create listen socket)", excerpt)
            if result.returncode == 0 and not bind_trouble:
                self._started_once = True
                return self
            if result.returncode == 0:
                # Up, but not on every loopback address: another process took the
                # port between our check and the bind. Stop and try another port.
                self._stop_server("immediate")
            if bind_trouble and attempt + 1 < attempts:
                _ports_in_use.discard(self.port or 0)
                self.port = pick_free_port(self.ipv6)
                self._write_settings()
                continue
            raise ClusterError(
                f"cluster {self.name} did not start (pg_ctl exit {result.returncode}): "
                f"{result.stdout}{result.stderr}\n{excerpt}"
            )
        raise AssertionError("unreachable")

    def _stop_server(self, mode: str) -> None:
        pid = self.postmaster_pid()
        if pid is None:
            return
        result = self._run_server_tool(
            [self.pg_ctl, "stop", "-D", self.data_dir, "-m", mode, "-w", "-t", str(START_TIMEOUT), "-s"]
        )
        if result.returncode == 0 and not self.is_running():
            return
        # pg_ctl could not do it (a wedged server, a vanished data dir): signal directly.
        for sig, wait in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.postmaster_pid() is None:
                    return
                time.sleep(0.05)
        raise ClusterError(f"could not stop cluster {self.name} (pid {pid}): {result.stderr}")

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast`` (no-op when not running); the cluster can be started again."""
        self._stop_server(mode)

    def restart(self) -> "Cluster":
        """Stop (fast) and start again on the same port."""
        self.stop()
        return self.start()

    def destroy(self) -> None:
        """Stop the server, release the watchdog and remove ``base_dir`` (unless ``keep``)."""
        try:
            self.stop()
        finally:
            self._release_watchdog()
            if self.port is not None:
                _ports_in_use.discard(self.port)
            if not self.keep:
                shutil.rmtree(self.base_dir, ignore_errors=True)

    # ------------------------------------------------------------------ superuser SQL

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` as the superuser over the Unix socket; stdout without the final newline.

        Statements run one by one (autocommit), stopping at the first error, which
        raises :class:`PsqlError` carrying psql's stderr.
        """
        target = make_conninfo(
            host=self.socket_dir,
            port=self._require_port(),
            user=SUPERUSER,
            dbname=dbname,
            application_name="situation-tests",
            connect_timeout=10,
        )
        argv = [str(self.psql_path), "-v", "ON_ERROR_STOP=1", "-XAtq", "-d", target, "-f", "-"]
        try:
            result = subprocess.run(
                argv,
                input=sql,
                capture_output=True,
                text=True,
                timeout=120,
                env=clean_environ(LC_ALL="C", LANG="C", HOME=str(self.base_dir)),
                cwd=self.base_dir,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"psql timed out running: {sql[:200]}") from exc
        if result.returncode != 0:
            raise PsqlError(
                f"psql failed ({result.returncode}) on {dbname}: {result.stderr.strip()}",
                returncode=result.returncode,
                stdout=result.stdout,
                stderr=result.stderr,
            )
        out = result.stdout
        return out[:-1] if out.endswith("\n") else out

    def create_role(
        self, name: str, password: str | None = None, *, login: bool = True, extra: str = ""
    ) -> None:
        """``CREATE ROLE name [NO]LOGIN [PASSWORD '...'] extra`` (stored as SCRAM)."""
        sql = f"CREATE ROLE {quote_ident(name)} {'LOGIN' if login else 'NOLOGIN'}"
        if password is not None:
            sql += f" PASSWORD {quote_literal(password)}"
        if extra:
            sql += f" {extra}"
        self.psql(sql + ";")

    def drop_role(self, name: str) -> None:
        self.psql(f"DROP ROLE IF EXISTS {quote_ident(name)};")

    def create_database(self, name: str, owner: str = SUPERUSER) -> None:
        self.psql(f"CREATE DATABASE {quote_ident(name)} OWNER {quote_ident(owner)};")

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE IF EXISTS ... WITH (FORCE)``: open sessions are terminated."""
        self.psql(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE);")

"""Shared fixtures: a test PKI, throwaway PostgreSQL clusters, a clean HOME.

Clusters are session-scoped and start lazily, on the first test that asks for
one. Helpers live in ``tests/support`` (importable as ``support.certs`` and
``support.cluster``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from support.certs import Certs, make_certs  # noqa: E402
from support.cluster import Cluster, ClusterError  # noqa: E402

# Read before any fixture strips SITUATION_* from the environment.
_KEEP_CLUSTERS = os.environ.get("SITUATION_TEST_KEEP_PG", "") not in ("", "0")


def _strip_pg_environment() -> None:
    for key in list(os.environ):
        if key.startswith("PG"):
            del os.environ[key]


def pytest_configure(config: pytest.Config) -> None:
    # As early as possible, so nothing collected or started sees the real user's PG*.
    _strip_pg_environment()
    # Tests run on uvloop, like the agent: its TLS layer is the one our SSLObject plugs into.
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@pytest.fixture(scope="session", autouse=True)
def _no_pg_environment():
    """Session safeguard: no PG* variable of the real user leaks into any test."""
    _strip_pg_environment()
    yield


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HOME (no ~/.postgresql, no ~/.pgpass) and no PG* / SITUATION_* variables."""
    home_dir = tmp_path / "home"
    home_dir.mkdir()
    for key in list(os.environ):
        if key.startswith("PG") or key.startswith("SITUATION_"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(home_dir))
    return home_dir


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """The test PKI: CA, unrelated CA, server cert for localhost, client certs on demand."""
    return make_certs(tmp_path_factory.mktemp("certs"))


def _cluster_dir(name: str) -> Path:
    # Short, so the Unix socket path stays under the ~107-byte limit.
    return Path(tempfile.mkdtemp(prefix=f"sit-pg-{name}-", dir="/tmp"))


def _start(cluster: Cluster) -> Cluster:
    try:
        return cluster.start()
    except ClusterError:
        cluster.destroy()
        raise


@pytest.fixture(scope="session")
def tls_cluster(certs: Certs):
    """A TLS-only cluster: password (SCRAM) over TLS, client-cert auth on database ``certdb``."""
    cluster = Cluster(_cluster_dir("tls"), tls=True, certs=certs, name="tls", keep=_KEEP_CLUSTERS)
    _start(cluster)
    try:
        cluster.create_database("certdb")
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def plain_cluster():
    """A cluster without TLS: SCRAM passwords over plain TCP."""
    cluster = Cluster(_cluster_dir("plain"), tls=False, certs=None, name="plain", keep=_KEEP_CLUSTERS)
    _start(cluster)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def fresh_database(tls_cluster: Cluster):
    """``make(prefix="t") -> name``: a new database on ``tls_cluster``, dropped (FORCE) after the test."""
    created: list[str] = []

    def make(prefix: str = "t") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}".lower()
        tls_cluster.create_database(name)
        created.append(name)
        return name

    yield make
    if created and not tls_cluster.is_running():
        tls_cluster.start()  # a test stopped the shared cluster: bring it back
    for name in reversed(created):
        tls_cluster.drop_database(name)



@pytest.fixture
def shared_dir():
    """A directory an unprivileged user (the tests' nobody) can write to; tmp_path is root's alone."""
    import shutil

    directory = Path(tempfile.mkdtemp(prefix="situation-shared-"))
    directory.chmod(0o777)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def test_host():
    """An isolated host (network namespace + veth to a peer namespace); see support/netns.py."""
    from support.netns import IsolatedHost, netns_available

    if not netns_available():
        pytest.skip("network namespaces need root and iproute2")
    host = IsolatedHost().create()
    yield host
    host.destroy()


@pytest.fixture
async def module_store(tmp_path: Path):
    """A migrated SQLite store with the agent host's machine row; see support/modules.py."""
    from support.modules import open_module_store

    async with open_module_store(tmp_path / "db") as opened:
        yield opened

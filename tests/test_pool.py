"""The agent's pool: small, named, schema on the search path, optional statement cache."""

from __future__ import annotations

import pytest

from situation.connection.connect import create_pool
from situation.connection.dsn import parse_dsn
from situation.errors import ConnectError

ROLE, PASSWORD = "pool_user", "pool-pw"


@pytest.fixture(scope="module")
def role(tls_cluster):
    tls_cluster.create_role(ROLE, PASSWORD)
    return ROLE


def params(cluster, certs, **extra):
    return parse_dsn(cluster.uri(ROLE, PASSWORD, sslmode="verify-full", sslrootcert=certs.ca_crt, **extra), environ={})


async def test_pool_settings(role, tls_cluster, certs):
    pool = await create_pool(params(tls_cluster, certs), max_size=2)
    try:
        assert pool.get_min_size() == 0 and pool.get_max_size() == 2
        async with pool.acquire() as connection:
            row = await connection.fetchrow(
                "SELECT current_setting('application_name') AS app, current_setting('search_path') AS path, "
                "current_setting('jit') AS jit, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) AS ssl"
            )
            assert (row["app"], row["path"], row["jit"], row["ssl"]) == ("situation", "situation", "off", True)
            await connection.execute("SET search_path = public")
        async with pool.acquire() as connection:  # RESET ALL on release restores the startup value
            assert await connection.fetchval("SELECT current_setting('search_path')") == "situation"
    finally:
        await pool.close()


async def test_application_name_from_the_dsn(role, tls_cluster, certs):
    pool = await create_pool(params(tls_cluster, certs, application_name="edge-42"))
    try:
        assert await pool.fetchval("SELECT current_setting('application_name')") == "edge-42"
    finally:
        await pool.close()


async def test_statement_cache_can_be_turned_off(role, tls_cluster, certs):
    pool = await create_pool(params(tls_cluster, certs), statement_cache=False)
    try:
        for _ in range(3):
            assert await pool.fetchval("SELECT 1") == 1
        async with pool.acquire() as connection:
            assert await connection.fetchval("SELECT count(*) FROM pg_prepared_statements") == 0
    finally:
        await pool.close()


async def test_too_many_connections_is_one_clear_line(tls_cluster, certs):
    tls_cluster.create_role("pool_limited", "limited-pw", extra="CONNECTION LIMIT 0")
    dsn = tls_cluster.uri("pool_limited", "limited-pw", sslmode="verify-full", sslrootcert=certs.ca_crt)
    pool = await create_pool(parse_dsn(dsn, environ={}))
    try:
        with pytest.raises(ConnectError, match="too many connections") as caught:
            await pool.fetchval("SELECT 1")
        assert caught.value.transient
    finally:
        await pool.close()

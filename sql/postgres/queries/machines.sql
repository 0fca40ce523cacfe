-- PostgreSQL versions of machines queries (sql/queries/machines.sql).

-- name: lock_host_identity
-- $1 the lock namespace, $2 a 32-bit hash of a host_id or an agent id. Transaction-scoped,
-- so it is released at COMMIT/ROLLBACK and works behind PgBouncer's transaction pooling.
SELECT pg_advisory_xact_lock($1::integer, $2::integer);

-- name: machine_write_age
-- Seconds since the row was last written, on the server's clock (agents' clocks may differ).
SELECT EXTRACT(EPOCH FROM clock_timestamp() - updated_at)::float8 FROM machines WHERE id = $1;

-- SQLite versions of machines queries (sql/queries/machines.sql).

-- name: lock_host_identity
-- Nothing to take: the unit runs in a write transaction (BEGIN IMMEDIATE), which already
-- admits one writer at a time, across processes too.
SELECT $1, $2;

-- name: machine_write_age
SELECT (julianday('now') - julianday(updated_at)) * 86400.0 FROM machines WHERE id = $1;

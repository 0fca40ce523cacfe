-- Named queries on `machines` (portable: PostgreSQL and SQLite).
--
-- Table names are unqualified on purpose: on PostgreSQL the store sets
-- search_path = situation for its connections, and SQLite has no schema.
-- Placeholders are $1 … $n; a dialect may override a query with a block of
-- the same name in sql/<dialect>/queries/machines.sql.

-- name: set_machine_chassis
-- $1 chassis, $2 machine id. Used by the chassis module and by host-gpu (Hyper-V → 'vm').
UPDATE machines
SET chassis = $1, updated_at = CURRENT_TIMESTAMP
WHERE id = $2;

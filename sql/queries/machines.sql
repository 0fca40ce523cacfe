-- Named queries on `machines` (portable: PostgreSQL and SQLite).
--
-- Table names are unqualified on purpose: on PostgreSQL the store sets
-- search_path = situation for its connections, and SQLite has no schema.
-- Placeholders are $1 … $n; a dialect may override a query with a block of
-- the same name in sql/<dialect>/queries/machines.sql.

-- name: set_machine_chassis
-- $1 chassis, $2 machine id, $3 agent id. Used by the chassis module and by host-gpu
-- (Hyper-V → 'vm'). An unchanged chassis writes nothing.
UPDATE machines
SET chassis = $1, updated_at = CURRENT_TIMESTAMP, updated_by = $3
WHERE id = $2 AND chassis <> $1;

-- name: set_machine_chassis_if_unknown
-- host-gpu's guess (Hyper-V → 'vm') never overrides what the chassis module found.
-- $1 chassis, $2 machine id, $3 agent id.
UPDATE machines
SET chassis = $1, updated_at = CURRENT_TIMESTAMP, updated_by = $3
WHERE id = $2 AND chassis = '';

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

-- Which row is this host's (situation/host_row.py): one row per host_id, whatever the agent ids.

-- name: host_row_by_host_id
SELECT id, host_id, agent, hostname FROM machines WHERE host_id = $1;

-- name: host_row_by_agent
SELECT id, host_id, agent, hostname FROM machines WHERE agent = $1;

-- name: host_row_by_id
SELECT id, host_id, agent, hostname FROM machines WHERE id = $1;

-- name: host_row_macs
-- The MACs recorded on a machine's interfaces: evidence that a row describes this host.
SELECT DISTINCT mac FROM network_interfaces WHERE machine_id = $1 AND mac IS NOT NULL;

-- name: take_over_machine
-- $1 agent id, $2 machine id. Run under lock_host_identity, after release_machine_agent.
UPDATE machines
SET agent = $1, updated_at = CURRENT_TIMESTAMP, updated_by = $1
WHERE id = $2 AND (agent IS NULL OR agent <> $1);

-- name: release_machine_agent
-- $1 machine id, $2 agent id: the agent gives up a row that is no longer its host's.
UPDATE machines
SET agent = NULL, updated_at = CURRENT_TIMESTAMP, updated_by = $2
WHERE id = $1 AND agent = $2;

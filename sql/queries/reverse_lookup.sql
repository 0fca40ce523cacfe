-- Named queries of the reverse-lookup module (situation/modules/reverse_lookup.py).
-- Portable SQL, unqualified table names; sql/sqlite/queries/reverse_lookup.sql
-- overrides the ones taking lists (JSON text there, arrays on PostgreSQL).

-- name: machineless_nics
-- --discovery-scope database: every NIC without a machine, as the original.
SELECT id, mac, tag, ip
FROM network_interfaces
WHERE machine_id IS NULL
ORDER BY id;

-- name: lock_hostnames
-- Agents sharing a database serialise on each host name ($1, a list) until
-- their transaction ends, so that two never create a machine for one name.
-- Locks are taken in one order (by key) to avoid deadlocks.
SELECT count(pg_advisory_xact_lock(k))
FROM (SELECT DISTINCT hashtextextended('situation.hostname:' || n, 0) AS k
      FROM unnest($1::varchar[]) AS n ORDER BY k) AS keys;

-- name: machines_named
-- Machines whose host name is one of $1 (lowercase names), compared without case.
SELECT id, lower(hostname) AS hostname, agent
FROM machines
WHERE lower(hostname) = ANY($1::varchar[])
ORDER BY id;

-- name: create_named_machines
-- One machine per name in $1; $2 agent id. Every column is written (tables
-- the Go agent created have no defaults).
INSERT INTO machines (hostname, arch, platform, distribution, distribution_version,
                      distribution_family, uptime, cpe, chassis, updated_by)
SELECT n, '', '', '', '', '', 0, '', '', $2
FROM unnest($1::varchar[]) AS n
RETURNING id, hostname;

-- name: nics_with_mac_on_machines
-- NICs with a MAC already on the machines $1: the key (mac, tag, machine_id)
-- allows one row per MAC and tag on a machine.
SELECT n.id, n.mac, n.tag, n.ip, n.machine_id, m.agent
FROM network_interfaces n
JOIN machines m ON m.id = n.machine_id
WHERE n.machine_id = ANY($1::bigint[]) AND n.mac IS NOT NULL
ORDER BY n.id;

-- name: still_machineless
-- Which of the NICs $1 (ids) have no machine yet, locked until the transaction that
-- attaches them ends: reverse-lookup and snmp (or two agents) never both give one a machine.
SELECT id
FROM network_interfaces
WHERE id = ANY($1::bigint[]) AND machine_id IS NULL
ORDER BY id
FOR UPDATE;

-- name: attach_nics
-- $1 NIC ids, $2 their machines (same order), $3 agent id. A NIC another agent
-- attached meanwhile is left where it is.
UPDATE network_interfaces AS n
SET machine_id = v.machine_id, updated_at = CURRENT_TIMESTAMP, updated_by = $3
FROM unnest($1::bigint[], $2::bigint[]) AS v(id, machine_id)
WHERE n.id = v.id AND n.machine_id IS NULL;

-- name: set_nic_addresses
-- $1 the NIC's address list, $2 NIC id, $3 agent id.
UPDATE network_interfaces
SET ip = $1, updated_at = CURRENT_TIMESTAMP, updated_by = $3
WHERE id = $2;

-- Named queries of the netstat module (situation/modules/netstat.py).
-- Portable SQL for PostgreSQL and SQLite; unqualified table names.

-- name: netstat_host_nics
-- The host's NICs ($1 = machine id) with their addresses, to bind endpoints to.
SELECT id, ip
FROM network_interfaces
WHERE machine_id = $1
ORDER BY id;

-- name: netstat_host_users
-- The host's local users ($1 = machine id), by uid.
SELECT id, uid
FROM users
WHERE machine_id = $1;

-- name: netstat_nics_with_addresses
-- NICs of any machine holding one of the addresses $1 (the far ends of connections).
-- Overridden per dialect: list overlap.
SELECT id, ip, machine_id
FROM network_interfaces
WHERE ip && $1::varchar[]
ORDER BY id;

-- SQLite versions of reverse-lookup queries: list arguments arrive as JSON text.

-- name: lock_hostnames
-- Nothing to take: the write transaction (BEGIN IMMEDIATE) already excludes every other writer.
SELECT json_array_length($1);

-- name: machines_named
SELECT id, lower(hostname) AS hostname, agent
FROM machines
WHERE lower(hostname) IN (SELECT value FROM json_each($1))
ORDER BY id;

-- name: create_named_machines
INSERT INTO machines (hostname, arch, platform, distribution, distribution_version,
                      distribution_family, uptime, cpe, chassis, updated_by)
SELECT value, '', '', '', '', '', 0, '', '', $2
FROM json_each($1) WHERE true
RETURNING id, hostname;

-- name: nics_with_mac_on_machines
SELECT n.id, n.mac, n.tag, n.ip, n.machine_id, m.agent
FROM network_interfaces n
JOIN machines m ON m.id = n.machine_id
WHERE n.machine_id IN (SELECT value FROM json_each($1)) AND n.mac IS NOT NULL
ORDER BY n.id;

-- name: still_machineless
-- No FOR UPDATE: the write transaction (BEGIN IMMEDIATE) already excludes every other writer.
SELECT id
FROM network_interfaces
WHERE id IN (SELECT value FROM json_each($1)) AND machine_id IS NULL
ORDER BY id;

-- name: attach_nics
UPDATE network_interfaces
SET machine_id = v.machine_id, updated_at = CURRENT_TIMESTAMP, updated_by = $3
FROM (SELECT i.value AS id, m.value AS machine_id
      FROM json_each($1) AS i JOIN json_each($2) AS m ON m.key = i.key) AS v
WHERE network_interfaces.id = v.id AND network_interfaces.machine_id IS NULL;

-- Named queries of the fingerprint module (situation/modules/fingerprint.py).
-- Portable SQL, unqualified table names; sql/<dialect>/queries/fingerprint.sql overrides.

-- name: machine_by_agent
SELECT id, host_id, agent FROM machines WHERE agent = $1;

-- name: machine_by_host_id
SELECT id, agent FROM machines WHERE host_id = $1;

-- name: nics_by_mac
SELECT n.id, n.mac, n.ip, n.machine_id, m.agent
FROM network_interfaces n LEFT JOIN machines m ON m.id = n.machine_id
WHERE n.mac = $1;

-- name: nics_with_address
-- Overridden per dialect: membership in the ip list.
SELECT n.id, n.mac, n.ip, n.machine_id, m.agent
FROM network_interfaces n LEFT JOIN machines m ON m.id = n.machine_id
WHERE $1 = ANY(n.ip);

-- name: machines_by_hostname
SELECT id AS machine_id, agent FROM machines WHERE lower(hostname) = $1;

-- name: machine_ports
SELECT DISTINCT e.port
FROM application_endpoints e JOIN network_interfaces n ON n.id = e.network_interface_id
WHERE n.machine_id = $1;

-- name: attach_nic_to_machine
-- $1 machine id, $2 NIC id, $3 agent id.
UPDATE network_interfaces
SET machine_id = $1, updated_at = CURRENT_TIMESTAMP, updated_by = $3
WHERE id = $2 AND machine_id IS NULL;

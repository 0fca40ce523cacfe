-- Named queries of the snmp module (situation/modules/snmp.py).
-- Portable SQL for PostgreSQL and SQLite; unqualified table names.

-- name: snmp_machine
SELECT id, agent, hostname, platform, distribution, distribution_family, arch, uptime, chassis
FROM machines
WHERE id = $1;

-- name: snmp_machine_nics
-- The NICs of machine $1, matched against what its SNMP agent reports.
SELECT id, name, mac, ip, gateway, flags
FROM network_interfaces
WHERE machine_id = $1
ORDER BY id;

-- name: snmp_machine_links
-- The subnetworks the NICs of machine $1 are linked to.
SELECT l.network_interface_id, s.id, s.network_cidr, s.gateway
FROM network_interface_subnets l
JOIN network_interfaces n ON n.id = l.network_interface_id
JOIN subnetworks s ON s.id = l.subnetwork_id
WHERE n.machine_id = $1
ORDER BY s.id;

-- name: snmp_update_nic
-- $1 NIC id, $2 name, $3 gateway, $4 address list, $5 flags, $6 agent id.
UPDATE network_interfaces
SET name = $2, gateway = $3, ip = $4, flags = $5, updated_at = CURRENT_TIMESTAMP, updated_by = $6
WHERE id = $1;

-- name: snmp_fill_subnet_gateway
-- A subnetwork ($1) without a gateway gets the one a device reported ($2); $3 agent id.
UPDATE subnetworks
SET gateway = $2, updated_at = CURRENT_TIMESTAMP, updated_by = $3
WHERE id = $1 AND gateway = '';

-- name: snmp_update_machine
-- $1 machine id, then hostname, platform, distribution, distribution_family, arch, uptime, chassis; $9 agent id.
UPDATE machines
SET hostname = $2, platform = $3, distribution = $4, distribution_family = $5, arch = $6, uptime = $7,
    chassis = $8, updated_at = CURRENT_TIMESTAMP, updated_by = $9
WHERE id = $1;

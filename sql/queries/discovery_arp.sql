-- Named queries of the arp module (situation/modules/arp.py).
-- Portable SQL for PostgreSQL and SQLite; unqualified table names.

-- name: arp_host_subnets
-- Every subnetwork the host ($1) has a NIC on, once even when several NICs share it.
SELECT DISTINCT s.id, s.network_cidr
FROM network_interfaces n
JOIN network_interface_subnets l ON l.network_interface_id = n.id
JOIN subnetworks s ON s.id = l.subnetwork_id
WHERE n.machine_id = $1
ORDER BY s.id;

-- name: arp_subnet_nics
-- The NICs linked to subnetwork $1 (any machine, or none), to match neighbours against.
SELECT n.id, n.mac, n.ip, n.machine_id
FROM network_interfaces n
JOIN network_interface_subnets l ON l.network_interface_id = n.id
WHERE l.subnetwork_id = $1
ORDER BY n.id;

-- name: arp_update_nic
-- A known neighbour NIC ($1) gets the MAC from the neighbour table ($2) and its address
-- list ($3, the stored one with the new addresses appended); $4 = agent id.
UPDATE network_interfaces
SET mac = $2, ip = $3, updated_at = CURRENT_TIMESTAMP, updated_by = $4
WHERE id = $1;

-- name: arp_insert_nic
-- A neighbour NIC nobody knew: no name, no machine; $1 mac, $2 addresses, $3 flags, $4 agent id.
INSERT INTO network_interfaces (name, mac, mac_vendor, ip, gateway, flags, tag, machine_id, updated_by)
VALUES (NULL, $1, NULL, $2, NULL, $3, '', NULL, $4)
RETURNING id;

-- Named queries of `situation scan` (situation/scan.py): reading back what was found.
-- Portable SQL for PostgreSQL and SQLite; unqualified table names.

-- name: scan_subnetworks
-- Every subnetwork; the command keeps those overlapping its targets.
SELECT id, network_cidr FROM subnetworks ORDER BY id;

-- name: scan_subnet_nics
-- The NICs linked to subnetwork $1, with the address of the link (set by ping and
-- host-network, '' for arp), their vendor and their machine's name.
SELECT n.id, n.mac, n.mac_vendor, n.ip, n.machine_id, m.hostname, l.ip AS link_ip
FROM network_interface_subnets l
JOIN network_interfaces n ON n.id = l.network_interface_id
LEFT JOIN machines m ON m.id = n.machine_id
WHERE l.subnetwork_id = $1
ORDER BY n.id;

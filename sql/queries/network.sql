-- Named queries of the host-network module (situation/modules/host_network.py).
-- Portable SQL for PostgreSQL and SQLite; unqualified table names.

-- name: host_network_interfaces
-- The NICs stored for a machine ($1), matched against the current interfaces.
SELECT id, name, mac, tag
FROM network_interfaces
WHERE machine_id = $1
ORDER BY id;

-- name: release_interface_name
-- Clear the name of a stored NIC ($1) whose name another NIC of the machine now
-- carries (renamed, swapped or replaced interfaces), before the upserts; $2 = agent id.
UPDATE network_interfaces
SET name = NULL, updated_at = CURRENT_TIMESTAMP, updated_by = $2
WHERE id = $1;

-- name: link_interface_subnet
-- Link a NIC ($1) to a subnetwork ($2) with its address there ($3); $4 = mac_subnet
-- ('<mac>/<subnetwork id>', NULL without MAC). Existing links (primary key or
-- mac_subnet) are kept as they are.
INSERT INTO network_interface_subnets (network_interface_id, subnetwork_id, ip, mac_subnet)
VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING;

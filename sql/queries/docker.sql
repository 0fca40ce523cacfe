-- Named queries of the docker module (situation/modules/docker.py).
-- Portable SQL for PostgreSQL and SQLite; unqualified table names.

-- name: docker_host_nics
-- The host's NICs ($1 = machine id): names find bridges, addresses published ports.
SELECT id, name, mac, ip
FROM network_interfaces
WHERE machine_id = $1
ORDER BY id;

-- name: docker_container_machines
-- Container machines of this host ($1), by container id.
SELECT id, host_id
FROM machines
WHERE parent_machine_id = $1 AND platform = 'docker'
ORDER BY id;

-- name: docker_mark_stopped
-- A container the engine lists but does not run ($1 machine id): uptime 0. $2 = agent id.
UPDATE machines
SET uptime = 0, updated_at = CURRENT_TIMESTAMP, updated_by = $2
WHERE id = $1 AND uptime <> 0;

-- name: docker_delete_policies
-- Removing a container machine ($1), step 1: policies on or from its endpoints.
DELETE FROM endpoint_policies
WHERE endpoint_id IN (SELECT e.id FROM application_endpoints e
                      JOIN network_interfaces n ON n.id = e.network_interface_id WHERE n.machine_id = $1)
   OR src_endpoint_id IN (SELECT e.id FROM application_endpoints e
                          JOIN network_interfaces n ON n.id = e.network_interface_id WHERE n.machine_id = $1);

-- name: docker_delete_flows
-- Step 2: flows to its endpoints, or from its NICs or applications.
DELETE FROM flows
WHERE dst_endpoint_id IN (SELECT e.id FROM application_endpoints e
                          JOIN network_interfaces n ON n.id = e.network_interface_id WHERE n.machine_id = $1)
   OR src_network_interface_id IN (SELECT id FROM network_interfaces WHERE machine_id = $1)
   OR src_application_id IN (SELECT id FROM applications WHERE machine_id = $1);

-- name: docker_delete_endpoints
-- Step 3: its endpoints.
DELETE FROM application_endpoints
WHERE network_interface_id IN (SELECT id FROM network_interfaces WHERE machine_id = $1);

-- name: docker_delete_links
-- Step 4: its NICs' subnetwork links.
DELETE FROM network_interface_subnets
WHERE network_interface_id IN (SELECT id FROM network_interfaces WHERE machine_id = $1);

-- name: docker_delete_interfaces
-- Step 5: its NICs.
DELETE FROM network_interfaces
WHERE machine_id = $1;

-- name: docker_delete_machine
-- Step 6: the machine ($1), only a container of this host ($2); its other rows cascade.
DELETE FROM machines
WHERE id = $1 AND parent_machine_id = $2 AND platform = 'docker';

-- name: docker_adopt_nic
-- A neighbour NIC (no machine) that ping or arp recorded for a container's MAC ($1) before docker
-- saw the container becomes that container's NIC on network $3 (machine $2, tag = network id),
-- unless the container has it already. Only a NIC linked to a subnetwork the host's bridge of that
-- network ($4) is linked to: docker's default MACs repeat on every host. $5 = agent id.
UPDATE network_interfaces
SET machine_id = $2, tag = $3, updated_at = CURRENT_TIMESTAMP, updated_by = $5
WHERE id = (SELECT n.id FROM network_interfaces n
            JOIN network_interface_subnets l ON l.network_interface_id = n.id
            JOIN network_interface_subnets b ON b.subnetwork_id = l.subnetwork_id
            WHERE n.mac = $1 AND n.machine_id IS NULL AND b.network_interface_id = $4
            ORDER BY n.id LIMIT 1)
  AND NOT EXISTS (SELECT 1 FROM network_interfaces WHERE mac = $1 AND tag = $3 AND machine_id = $2);

-- Named queries of `situation explore` (situation/explore.py), read-only.
-- Portable SQL for PostgreSQL and SQLite; unqualified table names; $1 … $n placeholders.
-- Each screen asks only for what it shows: the zone list, then one zone's rows when it is
-- selected, then one host's card. Every list is bounded by a LIMIT argument.

-- name: explore_schema_check
-- Fails (no such table / no privilege) when the database has no readable situation schema.
SELECT
    (SELECT count(*) FROM subnetworks WHERE id < 0)
  + (SELECT count(*) FROM network_interface_subnets WHERE subnetwork_id < 0)
  + (SELECT count(*) FROM network_interfaces WHERE id < 0)
  + (SELECT count(*) FROM machines WHERE id < 0)
  + (SELECT count(*) FROM application_endpoints WHERE id < 0)
  + (SELECT count(*) FROM applications WHERE id < 0)
  + (SELECT count(*) FROM flows WHERE id < 0) AS none_found;

-- name: explore_zones
-- Every subnetwork, in database order; $1 = the most to list.
SELECT id, network_cidr, tag
FROM subnetworks
ORDER BY id
LIMIT $1;

-- name: explore_zone_hosts
-- The NICs linked to subnetwork $1 with their machine; $2 = the most to list. A NIC linked
-- twice (with and without its address) comes back twice: the caller keeps one row per NIC.
SELECT n.id AS nic_id, n.machine_id, m.hostname, n.mac, n.mac_vendor, n.ip AS ips, s.ip AS link_ip
FROM network_interface_subnets s
JOIN network_interfaces n ON n.id = s.network_interface_id
LEFT JOIN machines m ON m.id = n.machine_id
WHERE s.subnetwork_id = $1
ORDER BY n.id
LIMIT $2;

-- name: explore_zone_endpoint_counts
-- How many endpoints each NIC of subnetwork $1 exposes, per address.
SELECT e.network_interface_id AS nic_id, e.addr, count(*) AS endpoints
FROM application_endpoints e
WHERE e.network_interface_id IN (
    SELECT s.network_interface_id FROM network_interface_subnets s WHERE s.subnetwork_id = $1
)
GROUP BY e.network_interface_id, e.addr;

-- name: explore_machine
-- The "System" part of the node card: machine $1.
SELECT hostname, platform, distribution, distribution_version, chassis
FROM machines
WHERE id = $1;

-- name: explore_endpoints
-- Endpoints of NIC $1 on address $2 with their incoming flows; $3 = the most to list.
SELECT e.id, e.protocol, e.port, e.application_protocols, e.tls, e.saas,
       (SELECT count(*) FROM flows f WHERE f.dst_endpoint_id = e.id) AS incoming
FROM application_endpoints e
WHERE e.network_interface_id = $1 AND e.addr = $2
ORDER BY e.port, e.protocol
LIMIT $3;

-- name: explore_outgoing_flows
-- Flows leaving NIC $1 from address $2, with the application and the destination;
-- $3 = the most to list.
SELECT a.name AS application, d.addr, d.port, d.saas
FROM flows f
JOIN application_endpoints d ON d.id = f.dst_endpoint_id
LEFT JOIN applications a ON a.id = f.src_application_id
WHERE f.src_network_interface_id = $1 AND f.src_addr = $2
ORDER BY a.name, d.addr, d.port
LIMIT $3;

-- Named queries shared by the active discovery modules (ping, arp, tcp-scan, snmp).
-- Portable SQL for PostgreSQL and SQLite; unqualified table names.

-- name: ping_host_ipv4_subnets
-- Scope 'attached': the IPv4 subnetworks linked to the NICs of machine $1 (this host).
SELECT DISTINCT s.id, s.network_cidr
FROM subnetworks s
JOIN network_interface_subnets l ON l.subnetwork_id = s.id
JOIN network_interfaces n ON n.id = l.network_interface_id
WHERE n.machine_id = $1 AND s.ip_version = 4
ORDER BY s.id;

-- name: ping_all_ipv4_subnets
-- Scope 'database': every IPv4 subnetwork stored by any agent.
SELECT id, network_cidr
FROM subnetworks
WHERE ip_version = 4
ORDER BY id;

-- name: ping_subnet_nics
-- The NICs linked to subnetwork $1, with their address there: what a found address is matched on.
SELECT n.id, n.mac, n.ip, n.machine_id, l.ip AS link_ip
FROM network_interfaces n
JOIN network_interface_subnets l ON l.network_interface_id = n.id
WHERE l.subnetwork_id = $1
ORDER BY n.id;

-- name: ping_insert_neighbour_nic
-- A NIC found on the network: no machine, no name, untagged. $1 ip list, $2 MAC (NULL when only
-- ICMP answered), $3 flags, $4 agent id. Nothing unique to conflict on (NULL name and machine).
INSERT INTO network_interfaces (name, mac, ip, gateway, flags, tag, machine_id, updated_by)
VALUES (NULL, $2, $1, NULL, $3, '', NULL, $4)
RETURNING id;

-- name: ping_set_neighbour_mac
-- The MAC an ARP reply gave, on a machine-less NIC ($1) that had none; $2 MAC, $3 agent id.
UPDATE network_interfaces
SET mac = $2, updated_at = CURRENT_TIMESTAMP, updated_by = $3
WHERE id = $1 AND mac IS NULL AND machine_id IS NULL;

-- name: lock_subnet_neighbours
-- Agents sharing a database serialise on each subnetwork ($1, a list of ids) while
-- they add its neighbour NICs, so that two never create a NIC for one neighbour.
-- Locks are taken in one order (by key) to avoid deadlocks. ping and arp take them.
SELECT count(pg_advisory_xact_lock(k))
FROM (SELECT DISTINCT hashtextextended('situation.subnet-neighbours:' || id, 0) AS k
      FROM unnest($1::bigint[]) AS id ORDER BY k) AS keys;

-- name: attached_neighbour_nics
-- Every NIC, with or without a machine, that is not this host's ($1, its machine id) and is
-- linked to a subnetwork one of this host's NICs is linked to (the original's GetNeighorNICS;
-- tcp-scan, snmp and reverse-lookup with --discovery-scope attached).
SELECT n.id, n.ip, n.mac, n.tag, n.machine_id
FROM network_interfaces n
WHERE (n.machine_id IS NULL OR n.machine_id <> $1)
  AND EXISTS (
    SELECT 1
    FROM network_interface_subnets l
    JOIN network_interface_subnets h ON h.subnetwork_id = l.subnetwork_id
    JOIN network_interfaces hn ON hn.id = h.network_interface_id
    WHERE l.network_interface_id = n.id AND hn.machine_id = $1
  )
ORDER BY n.id;

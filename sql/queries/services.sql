-- Named queries of the tcp-scan and saas modules (situation/modules/tcp_scan.py, saas.py)
-- and of `situation scan`'s table. Portable SQL for PostgreSQL and SQLite; unqualified table names.

-- name: tcp_scan_linked_nics
-- Scope 'database' and `situation scan`: every NIC not on this host ($1) linked to any subnetwork
-- that is not a docker network (tagged rows are one host's private bridges).
SELECT n.id, n.ip
FROM network_interfaces n
WHERE (n.machine_id IS NULL OR n.machine_id <> $1)
  AND EXISTS (
    SELECT 1
    FROM network_interface_subnets l
    JOIN subnetworks s ON s.id = l.subnetwork_id
    WHERE l.network_interface_id = n.id AND s.tag = ''
  )
ORDER BY n.id;

-- name: tcp_scan_host_addresses
-- The address lists of this host's ($1) NICs: never probed.
SELECT ip FROM network_interfaces WHERE machine_id = $1;

-- name: saas_unlabelled_endpoints
-- Endpoints without a SaaS label, in id order from after $1, $2 at a time (keyset pages: every
-- endpoint is examined every run, none starves behind a fixed window).
SELECT id, port, addr, tls
FROM application_endpoints
WHERE saas IS NULL AND id > $1
ORDER BY id
LIMIT $2;

-- name: saas_label_endpoint
-- $1 SaaS name, $2 endpoint id, $3 agent id; an endpoint labelled meanwhile keeps its label.
UPDATE application_endpoints
SET saas = $1, updated_at = CURRENT_TIMESTAMP, updated_by = $3
WHERE id = $2 AND saas IS NULL;

-- name: scan_nic_endpoints
-- What `situation scan` prints beside an address: the endpoints of NIC $1.
SELECT addr, port, protocol, tls, saas
FROM application_endpoints
WHERE network_interface_id = $1
ORDER BY port;

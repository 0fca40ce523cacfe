-- SQLite versions of fingerprint queries: the ip list is JSON text.

-- name: nics_with_address
SELECT n.id, n.mac, n.ip, n.machine_id, m.agent
FROM network_interfaces n LEFT JOIN machines m ON m.id = n.machine_id
WHERE EXISTS (SELECT 1 FROM json_each(n.ip) WHERE value = $1);

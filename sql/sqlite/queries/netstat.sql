-- SQLite versions of netstat queries: the ip list is JSON text.

-- name: netstat_nics_with_addresses
SELECT n.id, n.ip, n.machine_id
FROM network_interfaces n
WHERE EXISTS (SELECT 1 FROM json_each(n.ip) AS a JOIN json_each($1) AS b ON a.value = b.value)
ORDER BY n.id;

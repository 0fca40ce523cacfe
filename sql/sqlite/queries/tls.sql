-- SQLite versions of the tls and ja4 queries: lists and JSON arrive as JSON text.

-- name: tls_targets
SELECT e.id, e.addr, e.port
FROM application_endpoints e
WHERE e.protocol = 'tcp' AND ($1 IS NULL OR e.port IN (SELECT value FROM json_each($1)))
  AND (NOT $3 OR (e.tls IS NOT NULL AND (e.fingerprints IS NULL OR json_extract(e.fingerprints, '$.ja4') IS NULL)))
  AND ($2 IS NULL
       OR EXISTS (SELECT 1 FROM network_interfaces n
                  WHERE n.id = e.network_interface_id AND n.machine_id = $2)
       OR EXISTS (SELECT 1
                  FROM network_interface_subnets l
                  JOIN network_interface_subnets h ON h.subnetwork_id = l.subnetwork_id
                  JOIN network_interfaces hn ON hn.id = h.network_interface_id
                  WHERE l.network_interface_id = e.network_interface_id AND hn.machine_id = $2)
       OR EXISTS (SELECT 1 FROM flows f
                  JOIN network_interfaces sn ON sn.id = f.src_network_interface_id
                  WHERE f.dst_endpoint_id = e.id AND sn.machine_id = $2))
ORDER BY e.id;

-- name: set_tls
UPDATE application_endpoints
SET tls = v.tls, updated_at = CURRENT_TIMESTAMP, updated_by = $2
FROM (SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.tls') AS tls
      FROM json_each($1)) AS v
WHERE application_endpoints.id = v.id AND application_endpoints.tls IS NOT v.tls;

-- name: set_fingerprints
UPDATE application_endpoints
SET fingerprints = v.fingerprints, updated_at = CURRENT_TIMESTAMP, updated_by = $2
FROM (SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.fingerprints') AS fingerprints
      FROM json_each($1)) AS v
WHERE application_endpoints.id = v.id
  AND (application_endpoints.fingerprints IS NULL
       OR json_extract(application_endpoints.fingerprints, '$.ja4') IS NULL);

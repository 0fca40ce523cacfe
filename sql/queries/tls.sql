-- Named queries of the tls and ja4 modules (situation/modules/tls.py, ja4.py).
-- Portable SQL, unqualified table names; sql/sqlite/queries/tls.sql overrides
-- the ones taking lists or JSON (JSON text there, arrays and json on PostgreSQL).

-- name: tls_targets
-- TCP endpoints, of any machine or none, on the ports $1 (int list; NULL: any
-- port), and with $3 only those with a certificate (tls set) and no JA4 yet (the
-- ja4 module). $2 NULL: all of them (--discovery-scope database, the original's
-- choice). $2 a machine id (this host, scope attached): only endpoints on its NICs, on NICs sharing a subnetwork
-- with its NICs (the neighbours tcp-scan found), or the destination of a flow
-- from its NICs (servers its applications talk to, from netstat).
SELECT e.id, e.addr, e.port
FROM application_endpoints e
WHERE e.protocol = 'tcp' AND ($1::int[] IS NULL OR e.port = ANY($1::int[]))
  AND (NOT $3::boolean OR (e.tls IS NOT NULL AND (e.fingerprints IS NULL OR e.fingerprints -> 'ja4' IS NULL)))
  AND ($2::bigint IS NULL
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
-- $1 a JSON list of {"id": endpoint id, "tls": object}; $2 agent id. Rows whose
-- tls would not change are left alone.
UPDATE application_endpoints AS e
SET tls = v.item -> 'tls', updated_at = CURRENT_TIMESTAMP, updated_by = $2
FROM json_array_elements($1::json) AS v(item)
WHERE e.id = (v.item ->> 'id')::bigint
  AND (e.tls IS NULL OR e.tls::jsonb IS DISTINCT FROM (v.item -> 'tls')::jsonb);

-- name: set_fingerprints
-- $1 a JSON list of {"id": endpoint id, "fingerprints": object}; $2 agent id.
-- An endpoint another agent fingerprinted meanwhile is left alone.
UPDATE application_endpoints AS e
SET fingerprints = v.item -> 'fingerprints', updated_at = CURRENT_TIMESTAMP, updated_by = $2
FROM json_array_elements($1::json) AS v(item)
WHERE e.id = (v.item ->> 'id')::bigint
  AND (e.fingerprints IS NULL OR e.fingerprints -> 'ja4' IS NULL);

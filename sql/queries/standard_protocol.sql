-- Named queries of the standard-protocol module (situation/modules/standard_protocol.py).

-- name: label_standard_protocols
-- Endpoints of transport $1 or $2 (e.g. 'tcp', 'tcp6') without application protocols,
-- whose port is a key of the map $3 ({"22": "ssh", ...}), get ["<name>"]; $4 = agent id.
-- Every endpoint in the database, as the original does. Overridden for SQLite (json_each).
UPDATE application_endpoints AS e
SET application_protocols = jsonb_build_array(m.value), updated_at = CURRENT_TIMESTAMP, updated_by = $4
FROM jsonb_each_text($3::jsonb) AS m
WHERE e.protocol IN ($1, $2) AND e.application_protocols IS NULL AND m.key = e.port::text;

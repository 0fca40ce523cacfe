-- SQLite version of the standard-protocol query: the map is JSON text, the result JSON text.

-- name: label_standard_protocols
UPDATE application_endpoints AS e
SET application_protocols = json_array(m.value), updated_at = CURRENT_TIMESTAMP, updated_by = $4
FROM json_each($3) AS m
WHERE e.protocol IN ($1, $2) AND e.application_protocols IS NULL AND m.key = CAST(e.port AS TEXT);

-- SQLite versions of macvendor queries: list arguments arrive as JSON text.

-- name: set_mac_vendors
UPDATE network_interfaces
SET mac_vendor = v.vendor, updated_at = CURRENT_TIMESTAMP, updated_by = $3
FROM (SELECT i.value AS id, s.value AS vendor
      FROM json_each($1) AS i JOIN json_each($2) AS s ON s.key = i.key) AS v
WHERE network_interfaces.id = v.id AND network_interfaces.mac_vendor IS NULL;

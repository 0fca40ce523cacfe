-- Named queries of the macvendor module (situation/modules/macvendor.py).
-- Portable SQL, unqualified table names; sql/sqlite/queries/macvendor.sql overrides.

-- name: nics_without_vendor
-- Every NIC (any machine, or none) with a MAC and no vendor yet. Locally
-- administered MACs (second hex digit 2, 6, a or e: randomised, virtual, chosen
-- by hand) have no vendor by definition: they stay NULL and are never selected.
SELECT id, mac
FROM network_interfaces
WHERE mac_vendor IS NULL AND mac IS NOT NULL AND mac <> ''
  AND substr(lower(mac), 2, 1) NOT IN ('2', '6', 'a', 'e')
ORDER BY id;

-- name: set_mac_vendors
-- One UPDATE for the whole batch: $1 NIC ids, $2 their vendors (same order),
-- $3 agent id. A vendor another agent set meanwhile is left alone.
UPDATE network_interfaces AS n
SET mac_vendor = v.vendor, updated_at = CURRENT_TIMESTAMP, updated_by = $3
FROM unnest($1::bigint[], $2::varchar[]) AS v(id, vendor)
WHERE n.id = v.id AND n.mac_vendor IS NULL;

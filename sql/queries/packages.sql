-- Named queries of the package modules dpkg, rpm and zypper (situation/packages/record.py).
-- Portable SQL, unqualified table names; sql/sqlite/queries/packages.sql overrides.

-- name: host_distribution
-- $1 host machine id: what the family gates look at (host-basic wrote it).
SELECT distribution, distribution_version, distribution_family
FROM machines
WHERE id = $1;

-- name: host_applications
-- $1 host machine id: its applications with an exe path, to link to their package.
SELECT id, name, package_id
FROM applications
WHERE machine_id = $1 AND name LIKE '/%'
ORDER BY id;

-- name: machine_packages
-- $1 machine id: its package rows, without the (large) file lists: their length only,
-- -1 when `files` is not a JSON list.
SELECT id, name, version, vendor, manager, install_time_unix,
       CASE WHEN jsonb_typeof(files::jsonb) = 'array' THEN jsonb_array_length(files::jsonb) ELSE -1 END
           AS file_count
FROM packages
WHERE machine_id = $1;

-- name: unlink_removed_packages
-- Before removed packages are deleted (package_id has no cascade): $1 machine id,
-- $2 manager, $3 ids of the packages still installed, $4 agent id.
UPDATE applications
SET package_id = NULL, updated_at = CURRENT_TIMESTAMP, updated_by = $4
WHERE package_id IN (SELECT id FROM packages
                     WHERE machine_id = $1 AND manager = $2 AND NOT (id = ANY ($3::bigint[])));

-- name: delete_removed_packages
-- This machine's packages of manager $2 that are no longer installed ($3: the ids still installed).
DELETE FROM packages
WHERE machine_id = $1 AND manager = $2 AND NOT (id = ANY ($3::bigint[]));

-- name: set_application_packages
-- One UPDATE for all links: $1 application ids, $2 their package ids (NULL: unlink), $3 agent id.
-- A link already right writes nothing.
UPDATE applications AS a
SET package_id = v.package_id, updated_at = CURRENT_TIMESTAMP, updated_by = $3
FROM unnest($1::bigint[], $2::bigint[]) AS v(id, package_id)
WHERE a.id = v.id AND a.package_id IS DISTINCT FROM v.package_id;

-- SQLite versions of the package queries: list arguments arrive as JSON text.

-- name: machine_packages
SELECT id, name, version, vendor, manager, install_time_unix,
       CASE WHEN json_valid(files) THEN
           CASE WHEN json_type(files) = 'array' THEN json_array_length(files) ELSE -1 END
       ELSE -1 END AS file_count
FROM packages
WHERE machine_id = $1;

-- name: unlink_removed_packages
UPDATE applications
SET package_id = NULL, updated_at = CURRENT_TIMESTAMP, updated_by = $4
WHERE package_id IN (SELECT id FROM packages
                     WHERE machine_id = $1 AND manager = $2
                       AND id NOT IN (SELECT value FROM json_each($3)));

-- name: delete_removed_packages
DELETE FROM packages
WHERE machine_id = $1 AND manager = $2 AND id NOT IN (SELECT value FROM json_each($3));

-- name: set_application_packages
UPDATE applications
SET package_id = v.package_id, updated_at = CURRENT_TIMESTAMP, updated_by = $3
FROM (SELECT i.value AS id, p.value AS package_id
      FROM json_each($1) AS i JOIN json_each($2) AS p ON p.key = i.key) AS v
WHERE applications.id = v.id AND applications.package_id IS NOT v.package_id;

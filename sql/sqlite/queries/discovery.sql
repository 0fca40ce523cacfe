-- SQLite versions of discovery queries.

-- name: lock_subnet_neighbours
-- Nothing to take: the write transaction (BEGIN IMMEDIATE) already excludes every other writer.
SELECT json_array_length($1);

-- Named queries used by the runtime. Portable SQL with $1 … $n placeholders;
-- table names are unqualified: PostgreSQL connections use search_path = situation,
-- SQLite keeps the tables in its main database.

-- name: ping
SELECT 1;

-- Bootstrap run by `situation migrate` before the numbered files (not itself a migration).
-- CREATE SCHEMA IF NOT EXISTS checks the CREATE privilege on the database even when the
-- schema exists, so test for the schema first: an owner without that privilege can still migrate.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'situation') THEN
        CREATE SCHEMA situation;
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS situation.schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    applied_by  text        NOT NULL DEFAULT current_user,
    duration_ms integer     NOT NULL DEFAULT 0
);

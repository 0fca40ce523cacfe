-- Repeatable step run by `situation migrate` after it applied migrations, and by `situation grant`.
-- situation_agent: reads and writes data, never changes the schema.
-- situation_reader: reads data.
-- Nothing here grants CREATE on anything. The ALL TABLES grants keep every table that a
-- later migration adds right, whoever owns it; default privileges cover tables created
-- by this role outside `situation migrate`.
DO $$
DECLARE
    may_create_roles boolean;
    group_role text;
BEGIN
    SELECT rolsuper OR rolcreaterole INTO may_create_roles FROM pg_roles WHERE rolname = current_user;
    FOREACH group_role IN ARRAY ARRAY['situation_agent', 'situation_reader'] LOOP
        IF may_create_roles AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = group_role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS', group_role);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database of this cluster created it meanwhile
            END;
        END IF;
    END LOOP;

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'situation_agent') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO situation_agent', current_database());
        GRANT USAGE ON SCHEMA situation TO situation_agent;
        GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA situation TO situation_agent;
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON situation.schema_migrations FROM situation_agent;
        GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA situation TO situation_agent;
        ALTER DEFAULT PRIVILEGES IN SCHEMA situation GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO situation_agent;
        ALTER DEFAULT PRIVILEGES IN SCHEMA situation GRANT USAGE, SELECT ON SEQUENCES TO situation_agent;
    END IF;

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'situation_reader') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO situation_reader', current_database());
        GRANT USAGE ON SCHEMA situation TO situation_reader;
        GRANT SELECT ON ALL TABLES IN SCHEMA situation TO situation_reader;
        ALTER DEFAULT PRIVILEGES IN SCHEMA situation GRANT SELECT ON TABLES TO situation_reader;
    END IF;
END
$$;

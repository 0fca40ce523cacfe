-- 0001_initial.sql (SQLite 3.35+)
--
-- The initial `situation` schema for the embedded backend: the same 14 tables, columns,
-- constraint names and keys as sql/postgres/0001_initial.sql, in the main database (no schema
-- prefix), with SQLite types:
--   * ids are INTEGER PRIMARY KEY AUTOINCREMENT (never reused, always >= 1);
--   * timestamps are TIMESTAMP with DEFAULT CURRENT_TIMESTAMP (UTC text 'YYYY-MM-DD HH:MM:SS');
--   * lists and JSON documents are text holding JSON: `network_interfaces.ip` is declared VARCHAR
--     and holds e.g. ["192.168.1.10","fe80::1"]; args/files/application_protocols are VARCHAR;
--     flags/partitions/config/tls/fingerprints are TEXT (both declarations have TEXT affinity,
--     so the JSON text is stored as written).
--
-- Ground rules (as for PostgreSQL): no BEGIN/COMMIT (the migrator wraps the file in a
-- transaction), no migration history table, every statement idempotent (IF NOT EXISTS).
-- SQLite has no ADD COLUMN IF NOT EXISTS, so `updated_by` (our addition: 32-hex id of the last
-- agent that wrote the row) is declared inside CREATE TABLE; a database file created by the Go
-- agent lacks it and needs the migrator to add it (see sql/README.md).
-- Index names are global in an SQLite database; all names below are distinct.
-- Foreign keys are declared with the same ON DELETE actions; SQLite enforces them only on
-- connections that enable PRAGMA foreign_keys.
--
-- The conflict target the store must use for every table is listed at the end of this file.

-- subnetworks: an IP network seen by someone; `tag` is '' or a docker network id.
CREATE TABLE IF NOT EXISTS subnetworks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at   TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at   TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    network_cidr VARCHAR   NOT NULL,
    network_addr VARCHAR   NOT NULL,
    mask_size    INTEGER   NOT NULL,
    ip_version   INTEGER   NOT NULL,
    gateway      VARCHAR   NOT NULL DEFAULT '',
    vlan_id      INTEGER   NOT NULL DEFAULT 0,
    tag          VARCHAR   NOT NULL DEFAULT '',
    updated_by   VARCHAR(32),
    CONSTRAINT cidr_tag UNIQUE (network_cidr, tag)
);

-- machines: the agent host, LAN neighbours, docker containers (parent_machine_id = host).
CREATE TABLE IF NOT EXISTS machines (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at           TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at           TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    hostname             VARCHAR   NOT NULL DEFAULT '',
    host_id              VARCHAR,                      -- NULL when unknown (never '')
    arch                 VARCHAR   NOT NULL DEFAULT '',
    platform             VARCHAR   NOT NULL DEFAULT '',
    distribution         VARCHAR   NOT NULL DEFAULT '',
    distribution_version VARCHAR   NOT NULL DEFAULT '',
    distribution_family  VARCHAR   NOT NULL DEFAULT '',
    uptime               INTEGER   NOT NULL DEFAULT 0, -- nanoseconds
    agent                VARCHAR,                      -- hex agent id, only on agent hosts
    cpe                  VARCHAR   NOT NULL DEFAULT '',
    chassis              VARCHAR   NOT NULL DEFAULT '',
    parent_machine_id    INTEGER,
    updated_by           VARCHAR(32),
    CONSTRAINT machines_host_id_key UNIQUE (host_id),
    CONSTRAINT machines_agent_key UNIQUE (agent),
    CONSTRAINT machines_parent_machine_id_fkey FOREIGN KEY (parent_machine_id)
        REFERENCES machines (id) ON UPDATE NO ACTION ON DELETE NO ACTION
);

-- cpus: one row per machine.
CREATE TABLE IF NOT EXISTS cpus (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    model_name VARCHAR   NOT NULL DEFAULT '',
    vendor     VARCHAR   NOT NULL DEFAULT '',
    cores      INTEGER   NOT NULL DEFAULT 0,
    machine_id INTEGER   NOT NULL,
    updated_by VARCHAR(32),
    CONSTRAINT cpus_machine_id_key UNIQUE (machine_id),
    CONSTRAINT cpus_machine_id_fkey FOREIGN KEY (machine_id)
        REFERENCES machines (id) ON UPDATE NO ACTION ON DELETE CASCADE
);

-- gpus: `index` is a reserved word and is always quoted.
CREATE TABLE IF NOT EXISTS gpus (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "index"    INTEGER   NOT NULL DEFAULT 0,
    product    VARCHAR   NOT NULL DEFAULT '',
    vendor     VARCHAR   NOT NULL DEFAULT '',
    driver     VARCHAR   NOT NULL DEFAULT '',
    machine_id INTEGER   NOT NULL,
    updated_by VARCHAR(32),
    CONSTRAINT machine_gpu_index UNIQUE ("index", machine_id),
    CONSTRAINT gpus_machine_id_fkey FOREIGN KEY (machine_id)
        REFERENCES machines (id) ON UPDATE NO ACTION ON DELETE CASCADE
);

-- disks: `partitions` is a JSON list of {name, size, type, read_only}.
CREATE TABLE IF NOT EXISTS disks (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    name       VARCHAR   NOT NULL DEFAULT '',
    model      VARCHAR   NOT NULL DEFAULT '',
    size       INTEGER   NOT NULL DEFAULT 0,  -- bytes
    type       VARCHAR   NOT NULL DEFAULT '',
    controller VARCHAR   NOT NULL DEFAULT '',
    partitions TEXT,
    machine_id INTEGER   NOT NULL,
    updated_by VARCHAR(32),
    CONSTRAINT machine_disk_name UNIQUE (name, machine_id),
    CONSTRAINT disks_machine_id_fkey FOREIGN KEY (machine_id)
        REFERENCES machines (id) ON UPDATE NO ACTION ON DELETE CASCADE
);

-- network_interfaces: name/mac/machine_id are NULL when unknown (remotely discovered NICs),
-- `tag` is never NULL ('' or a docker endpoint id), `ip` a JSON list of IP strings.
-- No NULL-safe variant of machine_mac_tag / machine_nic_name, for the reasons given in
-- sql/postgres/0001_initial.sql: NULL parts there mean "unknown" and must stay distinct.
CREATE TABLE IF NOT EXISTS network_interfaces (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    name       VARCHAR,
    mac        VARCHAR,      -- lowercase, colon separated
    mac_vendor VARCHAR,
    ip         VARCHAR,      -- JSON list, e.g. ["192.168.1.10","fe80::1"]
    gateway    VARCHAR,
    flags      TEXT,
    tag        VARCHAR   NOT NULL DEFAULT '',
    machine_id INTEGER,
    updated_by VARCHAR(32),
    CONSTRAINT machine_mac_tag UNIQUE (mac, tag, machine_id),
    CONSTRAINT machine_nic_name UNIQUE (name, machine_id),
    CONSTRAINT network_interfaces_machine_id_fkey FOREIGN KEY (machine_id)
        REFERENCES machines (id) ON UPDATE NO ACTION ON DELETE CASCADE
);

-- network_interface_subnets: join table (no id, no timestamps, hence no updated_by).
-- `ip` is '' when the writer did not know it; `mac_subnet` is '<mac>/<subnetwork id>', NULL for
-- NICs without MAC.
CREATE TABLE IF NOT EXISTS network_interface_subnets (
    network_interface_id INTEGER NOT NULL,
    subnetwork_id        INTEGER NOT NULL,
    ip                   VARCHAR NOT NULL DEFAULT '',
    mac_subnet           VARCHAR,
    CONSTRAINT network_interface_subnets_pkey PRIMARY KEY (network_interface_id, subnetwork_id, ip),
    CONSTRAINT network_interface_subnets_mac_subnet_key UNIQUE (mac_subnet),
    CONSTRAINT network_interface_subnets_network_interface_id_fkey FOREIGN KEY (network_interface_id)
        REFERENCES network_interfaces (id) ON UPDATE NO ACTION ON DELETE NO ACTION,
    CONSTRAINT network_interface_subnets_subnetwork_id_fkey FOREIGN KEY (subnetwork_id)
        REFERENCES subnetworks (id) ON UPDATE NO ACTION ON DELETE NO ACTION
);

-- packages: `files` is a JSON list of absolute paths.
CREATE TABLE IF NOT EXISTS packages (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at        TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at        TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    name              VARCHAR   NOT NULL DEFAULT '',
    version           VARCHAR   NOT NULL DEFAULT '',
    vendor            VARCHAR   NOT NULL DEFAULT '',
    manager           VARCHAR   NOT NULL DEFAULT '',
    install_time_unix INTEGER   NOT NULL DEFAULT 0,  -- seconds
    files             VARCHAR,
    machine_id        INTEGER   NOT NULL,
    updated_by        VARCHAR(32),
    CONSTRAINT name_version_machine_id UNIQUE (name, version, machine_id),
    CONSTRAINT packages_machine_id_fkey FOREIGN KEY (machine_id)
        REFERENCES machines (id) ON UPDATE NO ACTION ON DELETE CASCADE
);

-- applications: processes (exe path + pid); `args` is a JSON list of strings.
CREATE TABLE IF NOT EXISTS applications (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    name       VARCHAR   NOT NULL DEFAULT '',
    args       VARCHAR,
    pid        INTEGER   NOT NULL DEFAULT 0,
    version    VARCHAR   NOT NULL DEFAULT '',
    protocol   VARCHAR   NOT NULL DEFAULT '',
    config     TEXT,
    cpe        VARCHAR   NOT NULL DEFAULT '',
    machine_id INTEGER   NOT NULL,
    package_id INTEGER,
    updated_by VARCHAR(32),
    CONSTRAINT machine_app_name_pid UNIQUE (name, pid, machine_id),
    CONSTRAINT applications_machine_id_fkey FOREIGN KEY (machine_id)
        REFERENCES machines (id) ON UPDATE NO ACTION ON DELETE CASCADE,
    CONSTRAINT applications_package_id_fkey FOREIGN KEY (package_id)
        REFERENCES packages (id) ON UPDATE NO ACTION ON DELETE NO ACTION
);

-- application_endpoints: ip/port/transport, optionally bound to an application and a NIC.
-- `addr` is '' for container-side docker endpoints; `tls`/`fingerprints` NULL when absent.
-- Unlike the original's SQLite schema, no plain UNIQUE (port, protocol, addr,
-- network_interface_id) is declared: the expression index port_protocol_addr_network_interface_id
-- below replaces it, as on PostgreSQL.  (A file created by the Go agent keeps that plain
-- constraint as an undroppable sqlite_autoindex; it is implied by the expression index and harmless.)
CREATE TABLE IF NOT EXISTS application_endpoints (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at            TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at            TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    port                  INTEGER   NOT NULL DEFAULT 0,
    protocol              VARCHAR   NOT NULL DEFAULT '',
    addr                  VARCHAR   NOT NULL DEFAULT '',
    tls                   TEXT,
    fingerprints          TEXT,
    application_protocols VARCHAR,
    saas                  VARCHAR,
    application_id        INTEGER,
    network_interface_id  INTEGER,
    updated_by            VARCHAR(32),
    CONSTRAINT application_endpoints_application_id_fkey FOREIGN KEY (application_id)
        REFERENCES applications (id) ON UPDATE NO ACTION ON DELETE CASCADE,
    CONSTRAINT application_endpoints_network_interface_id_fkey FOREIGN KEY (network_interface_id)
        REFERENCES network_interfaces (id) ON UPDATE NO ACTION ON DELETE CASCADE
);

-- users: local accounts of a machine.
CREATE TABLE IF NOT EXISTS users (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    uid        VARCHAR   NOT NULL,
    gid        VARCHAR   NOT NULL DEFAULT '',
    name       VARCHAR   NOT NULL DEFAULT '',
    username   VARCHAR   NOT NULL DEFAULT '',
    domain     VARCHAR   NOT NULL DEFAULT '',
    machine_id INTEGER   NOT NULL,
    updated_by VARCHAR(32),
    CONSTRAINT machine_user UNIQUE (uid, machine_id),
    CONSTRAINT users_machine_id_fkey FOREIGN KEY (machine_id)
        REFERENCES machines (id) ON UPDATE NO ACTION ON DELETE CASCADE
);

-- user_applications: which user runs which application.
CREATE TABLE IF NOT EXISTS user_applications (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at     TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at     TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    user_id        INTEGER   NOT NULL,
    application_id INTEGER   NOT NULL,
    linux          VARCHAR   NOT NULL DEFAULT '',
    updated_by     VARCHAR(32),
    CONSTRAINT user_application UNIQUE (user_id, application_id),
    CONSTRAINT user_applications_application_id_fkey FOREIGN KEY (application_id)
        REFERENCES applications (id) ON UPDATE NO ACTION ON DELETE CASCADE,
    CONSTRAINT user_applications_user_id_fkey FOREIGN KEY (user_id)
        REFERENCES users (id) ON UPDATE NO ACTION ON DELETE CASCADE
);

-- flows: observed connections; incoming flows have no source application (NULL).
CREATE TABLE IF NOT EXISTS flows (
    id                       INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at               TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at               TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    src_application_id       INTEGER,
    src_network_interface_id INTEGER,
    src_addr                 VARCHAR   NOT NULL DEFAULT '',
    dst_endpoint_id          INTEGER,
    updated_by               VARCHAR(32),
    CONSTRAINT flow_src_dst UNIQUE (src_application_id, src_addr, dst_endpoint_id),
    CONSTRAINT flows_dst_endpoint_id_fkey FOREIGN KEY (dst_endpoint_id)
        REFERENCES application_endpoints (id) ON UPDATE NO ACTION ON DELETE NO ACTION,
    CONSTRAINT flows_src_application_id_fkey FOREIGN KEY (src_application_id)
        REFERENCES applications (id) ON UPDATE NO ACTION ON DELETE NO ACTION,
    CONSTRAINT flows_src_network_interface_id_fkey FOREIGN KEY (src_network_interface_id)
        REFERENCES network_interfaces (id) ON UPDATE NO ACTION ON DELETE NO ACTION
);

-- endpoint_policies: traffic rules on an endpoint (docker port forwards today);
-- src_addr NULL means "any source".
CREATE TABLE IF NOT EXISTS endpoint_policies (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at      TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at      TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    endpoint_id     INTEGER   NOT NULL,
    action          VARCHAR   NOT NULL DEFAULT '',
    src_endpoint_id INTEGER,
    src_addr        VARCHAR,
    priority        INTEGER   NOT NULL DEFAULT 0,
    source          VARCHAR   NOT NULL DEFAULT '',
    updated_by      VARCHAR(32),
    CONSTRAINT endpoint_action_src UNIQUE (endpoint_id, action, src_endpoint_id, src_addr),
    CONSTRAINT endpoint_policies_endpoint_id_fkey FOREIGN KEY (endpoint_id)
        REFERENCES application_endpoints (id) ON UPDATE NO ACTION ON DELETE CASCADE,
    CONSTRAINT endpoint_policies_src_endpoint_id_fkey FOREIGN KEY (src_endpoint_id)
        REFERENCES application_endpoints (id) ON UPDATE NO ACTION ON DELETE NO ACTION
);

-- Indexes of the original's migration 0002 (the original's SQLite flavour named the third one
-- application_endpoint_port; we use the PostgreSQL name on both backends).
CREATE INDEX IF NOT EXISTS network_interface_ip ON network_interfaces (ip);
CREATE INDEX IF NOT EXISTS network_interface_mac ON network_interfaces (mac);
CREATE INDEX IF NOT EXISTS application_endpoint_protocol_port ON application_endpoints (protocol, port);

-- Index of the original's migration 0003: endpoints without a NIC are de-duplicated too.
-- 0 is never a legal id (AUTOINCREMENT ids start at 1).
CREATE UNIQUE INDEX IF NOT EXISTS port_protocol_addr_network_interface_id
    ON application_endpoints (port, protocol, addr, COALESCE(network_interface_id, 0));

-- Our added NULL-safe keys (the documented constraints stay as they are).  SQLite has no
-- NULLS NOT DISTINCT, so nullable key parts are folded onto a sentinel that is never a legal
-- value: 0 for ids (ids start at 1), '' for endpoint_policies.src_addr (the original stores an
-- empty source as NULL, never as '').  The store must name these expressions in its conflict
-- target (listed at the end of the file).
--
-- A database written by the Go agent already holds the duplicates these indexes forbid, so they
-- are removed first: the oldest row of each group (lowest id, first seen) is kept and takes the
-- newest updated_at of its group (last seen).  No foreign key references flows or
-- endpoint_policies.  On a new or already migrated database nothing matches.

UPDATE flows
   SET updated_at = (SELECT max(d.updated_at) FROM flows AS d
                      WHERE COALESCE(d.src_application_id, 0) = COALESCE(flows.src_application_id, 0)
                        AND d.src_addr IS flows.src_addr
                        AND COALESCE(d.dst_endpoint_id, 0) = COALESCE(flows.dst_endpoint_id, 0))
 WHERE id IN (SELECT min(id) FROM flows
               GROUP BY COALESCE(src_application_id, 0), src_addr, COALESCE(dst_endpoint_id, 0)
              HAVING count(*) > 1);

DELETE FROM flows
 WHERE id IN (SELECT id
                FROM (SELECT id,
                             row_number() OVER (PARTITION BY COALESCE(src_application_id, 0),
                                                             src_addr,
                                                             COALESCE(dst_endpoint_id, 0)
                                                ORDER BY id) AS rank_in_key
                        FROM flows)
               WHERE rank_in_key > 1);

-- Fixes: incoming flows (src_application_id NULL) never matched flow_src_dst, so every run
-- inserted them again (agent-behaviour.md §1.3, §10.2).
CREATE UNIQUE INDEX IF NOT EXISTS flow_src_dst_null_safe
    ON flows (COALESCE(src_application_id, 0), src_addr, COALESCE(dst_endpoint_id, 0));

UPDATE endpoint_policies
   SET updated_at = (SELECT max(d.updated_at) FROM endpoint_policies AS d
                      WHERE d.endpoint_id = endpoint_policies.endpoint_id
                        AND d.action IS endpoint_policies.action
                        AND COALESCE(d.src_endpoint_id, 0) = COALESCE(endpoint_policies.src_endpoint_id, 0)
                        AND COALESCE(d.src_addr, '') = COALESCE(endpoint_policies.src_addr, ''))
 WHERE id IN (SELECT min(id) FROM endpoint_policies
               GROUP BY endpoint_id, action, COALESCE(src_endpoint_id, 0), COALESCE(src_addr, '')
              HAVING count(*) > 1);

DELETE FROM endpoint_policies
 WHERE id IN (SELECT id
                FROM (SELECT id,
                             row_number() OVER (PARTITION BY endpoint_id, action,
                                                             COALESCE(src_endpoint_id, 0),
                                                             COALESCE(src_addr, '')
                                                ORDER BY id) AS rank_in_key
                        FROM endpoint_policies)
               WHERE rank_in_key > 1);

-- Fixes: docker forward policies (src_addr NULL = any source) never matched endpoint_action_src,
-- so every run inserted them again (agent-behaviour.md §1.3, §10.2).
CREATE UNIQUE INDEX IF NOT EXISTS endpoint_action_src_null_safe
    ON endpoint_policies (endpoint_id, action, COALESCE(src_endpoint_id, 0), COALESCE(src_addr, ''));

-- Conflict targets for the store (INSERT ... ON CONFLICT <target> DO UPDATE/NOTHING).
-- Batches must be de-duplicated on the full target before they are sent.
--
--   subnetworks               (network_cidr, tag)                          -> cidr_tag
--   machines                  (agent)    the agent's own host              -> machines_agent_key
--                             (host_id)  containers / claimed machines     -> machines_host_id_key
--   cpus                      (machine_id)                                 -> cpus_machine_id_key
--   gpus                      ("index", machine_id)                        -> machine_gpu_index
--   disks                     (name, machine_id)                           -> machine_disk_name
--   network_interfaces        (mac, tag, machine_id)  NIC with MAC and machine -> machine_mac_tag
--                             (name, machine_id)      host NIC without MAC -> machine_nic_name
--                             none: machine-less neighbour NICs are looked up on their subnet
--                             first, then inserted.  A row that violates the other key still
--                             fails, so look the NIC up first (by MAC, else by name).
--   network_interface_subnets no target: ON CONFLICT DO NOTHING (PK and mac_subnet both mean
--                             "already linked").
--   packages                  (name, version, machine_id)                  -> name_version_machine_id
--   applications              (name, pid, machine_id)                      -> machine_app_name_pid
--   application_endpoints     (port, protocol, addr, COALESCE(network_interface_id, 0))
--                                                      -> port_protocol_addr_network_interface_id
--   users                     (uid, machine_id)                            -> machine_user
--   user_applications         (user_id, application_id)                    -> user_application
--   flows                     (COALESCE(src_application_id, 0), src_addr, COALESCE(dst_endpoint_id, 0))
--                                                                -> flow_src_dst_null_safe
--                             (the plain column list would pick flow_src_dst: not NULL-safe)
--   endpoint_policies         (endpoint_id, action, COALESCE(src_endpoint_id, 0), COALESCE(src_addr, ''))
--                                                                -> endpoint_action_src_null_safe
--                             (the plain column list would pick endpoint_action_src: not NULL-safe)

-- Creating the schema (an empty database: sql/schema.sql) or upgrading it (the migrations/*.sql a
-- database lacks), one process at a time, and on a Citus coordinator distributing the tables by brand
-- after that (docs/scaling.md). On plain PostgreSQL only citus_installed of the citus_* runs.
--
-- Each block starts with `-- name: <name>`, then a one-line description; the store loads the blocks
-- of every sql/*.sql but schema.sql into one dict by name and is the only module that executes SQL.
-- Parameters are psycopg named placeholders (%(name)s), except where a block says otherwise.

-- name: lock_migrations
-- Serialises the migrations of processes that start at the same time (session advisory lock).
SELECT pg_advisory_lock(%(key)s);

-- name: unlock_migrations
-- Releases lock_migrations.
SELECT pg_advisory_unlock(%(key)s);

-- name: migrations_table_exists
-- Whether schema_migrations exists, asked before creating it (see Store.migrate).
SELECT to_regclass('schema_migrations') IS NOT NULL;

-- name: create_migrations_table
-- The record of applied migrations; not part of schema.sql, which is what they add up to (a database
-- made from schema.sql records every migration as applied).
CREATE TABLE schema_migrations (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());

-- name: applied_migrations
-- The versions applied so far.
SELECT version FROM schema_migrations;

-- name: record_migration
-- Marks a version applied, in the transaction that applied it (or applied schema.sql).
INSERT INTO schema_migrations (version) VALUES (%(version)s);

-- name: citus_installed
-- Whether this database is a Citus cluster's (the citus extension is created in it).
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus');

-- name: citus_sequential_ddl
-- For the rest of the transaction, one connection per worker: DDL on a table with a foreign key
-- to a reference table (every brand-keyed table: brands) fails after a parallel (multi-connection)
-- operation on a distributed table in the same transaction.
SET LOCAL citus.multi_shard_modify_mode TO 'sequential';

-- name: citus_keep_foreign_keys
-- For the rest of the transaction, making a reference table leaves the local tables whose foreign
-- keys point at it alone. Otherwise create_reference_table('brands') turns each of them into a
-- Citus-local table, and one with an identity column (code_batches) can then not be distributed.
-- Every table that references brands is distributed in the same transaction.
SET LOCAL citus.enable_local_reference_table_foreign_keys TO off;

-- name: citus_tables
-- The tables Citus already manages, by name.
SELECT logicalrelid::regclass::text FROM pg_dist_partition;

-- name: citus_create_reference_table
-- A copy of the table on every node (small tables every node reads).
SELECT create_reference_table(%(table)s::regclass);

-- name: citus_create_distributed_table
-- The table split into shards by brand_key, the same brand_key on the same node as the other
-- brand-keyed tables' (colocate_with: a table already distributed, or 'default' for the first).
SELECT create_distributed_table(%(table)s::regclass, 'brand_key', colocate_with => %(colocate_with)s);

-- name: citus_distributed_functions
-- The functions Citus already routes by an argument, by signature.
SELECT objid::regprocedure::text FROM pg_dist_object
WHERE classid = 'pg_proc'::regclass AND distribution_argument_index IS NOT NULL;

-- name: citus_create_distributed_function
-- Calls of the function go whole to the node holding the shards of its `argument`'s value, the
-- shards of the colocated tables: one round trip from the coordinator, run there as a local call.
SELECT create_distributed_function(%(function)s::regprocedure, %(argument)s, colocate_with => %(colocate_with)s);

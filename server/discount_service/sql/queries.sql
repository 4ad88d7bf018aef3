-- Every statement the service runs. Each block starts with `-- name: <name>`, then a one-line
-- description; store.py loads them once and is the only module that executes SQL. Parameters are
-- psycopg named placeholders (%(name)s), except where a block says otherwise.

-- name: create_brand
-- A new brand and its feed head (last sequence 0, no codes), in one statement.
WITH brand AS (
    INSERT INTO brands (brand_id, name) VALUES (%(brand_id)s, %(name)s)
    RETURNING brand_key, brand_id, name, created_at
), head AS (
    INSERT INTO brand_feed_heads (brand_key) SELECT brand_key FROM brand
)
SELECT brand_key, brand_id, name, created_at FROM brand;

-- name: list_brands
-- Every brand with its code total and claim count, as the feed head keeps them.
SELECT b.brand_id, b.name, b.created_at, h.total_codes, h.last_sequence
FROM brands b JOIN brand_feed_heads h USING (brand_key)
ORDER BY b.brand_id;

-- name: get_brand_key
-- The compact surrogate key of a brand, or no row if it does not exist.
SELECT brand_key FROM brands WHERE brand_id = %(brand_id)s;

-- name: create_api_key
-- Stores a key's digest, role and (for a brand key) brand. The caller resolves the brand_key first:
-- Citus supports no subquery in an INSERT's values.
INSERT INTO api_keys (key_id, key_hash, role, brand_key)
VALUES (%(key_id)s, %(key_hash)s, %(role)s, %(brand_key)s)
RETURNING key_id;

-- name: find_api_key
-- The unrevoked key with this digest: its id, role and brand.
SELECT k.key_id, k.role, b.brand_id
FROM api_keys k LEFT JOIN brands b USING (brand_key)
WHERE k.key_hash = %(key_hash)s AND k.revoked_at IS NULL;

-- name: revoke_api_key
-- Revokes a key; returns a row only if it existed and was not revoked yet.
UPDATE api_keys SET revoked_at = now()
WHERE key_id = %(key_id)s AND revoked_at IS NULL
RETURNING key_id;

-- name: list_api_keys
-- Every key (never its digest), oldest first, revoked ones included.
SELECT k.key_id, k.role, b.brand_id, k.created_at, k.revoked_at
FROM api_keys k LEFT JOIN brands b USING (brand_key)
ORDER BY k.created_at;

-- name: pick_free_code
-- The code pick inside discount_claim_brand as a statement of its own, for EXPLAIN: $1 is the
-- brand_key (integer), $2 the after_code_key hint (bigint), as in
-- `PREPARE pick(integer, bigint) AS <this>`; tests/test_schema.py checks it matches the function.
SELECT f.ctid, f.code, f.expires_at, f.code_key
FROM codes f
WHERE f.brand_key = $1 AND NOT f.claimed AND f.code_key > $2
  AND (f.expires_at IS NULL OR f.expires_at > now())
ORDER BY f.code_key LIMIT 1
FOR UPDATE SKIP LOCKED;

-- name: find_batch
-- The batch an earlier GenerateCodes call with this request_id made, if any, with the parameters
-- it was made with (a repeat must match them).
SELECT b.batch_id, b.generated, b.code_length, b.prefix, b.expires_at
FROM code_batches b JOIN brands USING (brand_key)
WHERE brands.brand_id = %(brand_id)s AND b.request_id = %(request_id)s;

-- name: insert_batch
-- Records a GenerateCodes call; its unique (brand_key, request_id) makes a retry wait and then find it.
INSERT INTO code_batches (batch_id, brand_key, request_id, generated, code_length, prefix, expires_at)
VALUES (%(batch_id)s, %(brand_key)s, %(request_id)s, %(generated)s, %(code_length)s,
        %(prefix)s, %(expires_at)s)
RETURNING batch_key;

-- name: copy_codes
-- The fast path of generation: new codes straight into the table (a collision aborts it).
COPY codes (brand_key, batch_key, expires_at, code) FROM STDIN;

-- name: create_staging
-- The exact path of generation: a per-transaction table for candidate codes.
CREATE TEMP TABLE IF NOT EXISTS staged_codes (code text NOT NULL) ON COMMIT DROP;

-- name: copy_staged_codes
-- Candidate codes into the staging table.
COPY staged_codes (code) FROM STDIN;

-- name: insert_staged_codes
-- Up to the needed number of staged candidates that are new; returns how many went in.
WITH inserted AS (
    INSERT INTO codes (brand_key, batch_key, expires_at, code)
    SELECT DISTINCT %(brand_key)s::integer, %(batch_key)s::bigint, %(expires_at)s::timestamptz, code
    FROM staged_codes
    LIMIT %(needed)s
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM inserted;

-- name: clear_staged_codes
-- Empties the staging table before the next round of candidates.
TRUNCATE staged_codes;

-- name: add_total_codes
-- Counts a batch's codes into the brand's total, in the generating transaction.
UPDATE brand_feed_heads SET total_codes = total_codes + %(count)s WHERE brand_key = %(brand_key)s;

-- name: brand_stats
-- A brand's total, claimed and expired codes; only a brand with an expired batch pays for the count.
SELECT h.total_codes,
       h.last_sequence AS claimed,
       CASE WHEN EXISTS (SELECT 1 FROM code_batches cb
                         WHERE cb.brand_key = h.brand_key AND cb.expires_at <= now())
            THEN (SELECT count(*) FROM codes c
                  WHERE c.brand_key = h.brand_key AND NOT c.claimed AND c.code_key > 0
                    AND c.expires_at <= now())
            ELSE 0 END AS expired
FROM brands b JOIN brand_feed_heads h USING (brand_key)
WHERE b.brand_id = %(brand_id)s;

-- name: codes_available
-- Every brand's claimable codes, for the metrics endpoint (cached there). The feed head holds
-- total and claimed; only brands with an expired batch pay for counting expired codes.
SELECT b.brand_id,
       h.total_codes - h.last_sequence
       - CASE WHEN EXISTS (SELECT 1 FROM code_batches cb
                           WHERE cb.brand_key = h.brand_key AND cb.expires_at <= now())
              THEN (SELECT count(*) FROM codes c
                    WHERE c.brand_key = h.brand_key AND NOT c.claimed AND c.code_key > 0
                      AND c.expires_at <= now())
              ELSE 0 END AS available
FROM brands b JOIN brand_feed_heads h USING (brand_key)
ORDER BY b.brand_id;

-- name: feed_page
-- The next page of a brand's claim feed after a cursor, in sequence order.
SELECT c.sequence, c.code, c.user_id, c.email, c.claimed_at, c.expires_at
FROM claims c
WHERE c.brand_key = %(brand_key)s AND c.sequence > %(after_sequence)s
ORDER BY c.sequence
LIMIT %(limit)s;

-- name: notify_claims
-- Every payload on the claim channel, in one transaction. A NOTIFY needs a transaction id, so with
-- synchronous_commit its commit would wait for a WAL flush. It is only a wake-up hint (watchers
-- also poll), so this one commit is asynchronous.
SELECT set_config('synchronous_commit', 'off', true),
       (SELECT count(pg_notify('discount_claims', p)) FROM unnest(%(payloads)s::text[]) AS p);

-- name: listen_claims
-- Subscribes the listener connection to the channel notify_claims sends on.
LISTEN discount_claims;

-- name: ping
-- Proves a connection works (health checks, and the idle listener's keepalive).
SELECT 1;

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
-- The record of applied migrations; not part of schema.sql, which is what they add up to.
CREATE TABLE schema_migrations (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());

-- name: applied_migrations
-- The versions applied so far.
SELECT version FROM schema_migrations;

-- name: record_migration
-- Marks a version applied, in the transaction that applied it.
INSERT INTO schema_migrations (version) VALUES (%(version)s);

-- AdminService --

-- name: admin_list_brands
-- One page of brands after a brand_id ('' for the first page), in brand_id order; the caller asks
-- for one row more than the page to learn whether another page follows.
SELECT brand_id, name, created_at
FROM brands
WHERE brand_id > %(after)s
ORDER BY brand_id
LIMIT %(limit)s;

-- name: admin_insert_api_key
-- Stores a key's digest, role and brand (brand_key, resolved by the caller as for create_api_key)
-- and returns it as listed.
INSERT INTO api_keys (key_id, key_hash, role, brand_key)
VALUES (%(key_id)s, %(key_hash)s, %(role)s, %(brand_key)s)
RETURNING key_id, role, %(brand_id)s::text AS brand_id, created_at, revoked_at;

-- name: admin_revoke_api_key
-- Revokes an active key and returns it as listed; no row if it is unknown or already revoked.
WITH revoked AS (
    UPDATE api_keys SET revoked_at = now()
    WHERE key_id = %(key_id)s AND revoked_at IS NULL
    RETURNING key_id, role, brand_key, created_at, revoked_at
)
SELECT r.key_id, r.role, b.brand_id, r.created_at, r.revoked_at
FROM revoked r LEFT JOIN brands b USING (brand_key);

-- name: admin_get_api_key
-- One key as listed (never its digest), revoked or not; no row if it is unknown.
SELECT k.key_id, k.role, b.brand_id, k.created_at, k.revoked_at
FROM api_keys k LEFT JOIN brands b USING (brand_key)
WHERE k.key_id = %(key_id)s;

-- name: admin_list_api_keys
-- One page of every key (never its digest) after a key_id ('' for the first page), in key_id order.
SELECT k.key_id, k.role, b.brand_id, k.created_at, k.revoked_at
FROM api_keys k LEFT JOIN brands b USING (brand_key)
WHERE k.key_id > %(after)s
ORDER BY k.key_id
LIMIT %(limit)s;

-- name: admin_list_brand_api_keys
-- One page of one brand's keys after a key_id, in key_id order (index api_keys_brand).
SELECT k.key_id, k.role, b.brand_id, k.created_at, k.revoked_at
FROM api_keys k JOIN brands b USING (brand_key)
WHERE k.brand_key = %(brand_key)s AND k.key_id > %(after)s
ORDER BY k.key_id
LIMIT %(limit)s;

-- name: admin_page_token_secret
-- The per-database secret that signs AdminService page tokens (server_secrets, migration 0006).
SELECT secret FROM server_secrets WHERE name = 'page_token';

-- Citus -------------------------------------------------------------------------------------
-- On a Citus coordinator, Store.migrate distributes the tables by brand after the migrations
-- (docs/scaling.md). On plain PostgreSQL only citus_installed runs.

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

-- Claims across brands (group commit per lane, claim_batcher.py) and the feed of many brands (feed.py).

-- name: claim_codes
-- Claims of any brands in one transaction, one result row per item (discount_claim_many).
SELECT item, outcome, sequence, code, email, claimed_at, expires_at, code_key
FROM discount_claim_many(%(brand_ids)s::text[], %(user_ids)s::text[], %(emails)s::text[],
                         %(after_code_keys)s::bigint[]);

-- name: feed_heads
-- The last sequence of each of these brands' feeds: where a live watcher starts, and the feed's
-- one poll for all the brands a process watches.
SELECT brand_key, last_sequence FROM brand_feed_heads WHERE brand_key = ANY(%(brand_keys)s::integer[]);

-- name: citus_distributed_functions
-- The functions Citus already routes by an argument, by signature.
SELECT objid::regprocedure::text FROM pg_dist_object
WHERE classid = 'pg_proc'::regclass AND distribution_argument_index IS NOT NULL;

-- name: citus_create_distributed_function
-- Calls of the function go whole to the node holding the shards of its `argument`'s value, the
-- shards of the colocated tables: one round trip from the coordinator, run there as a local call.
SELECT create_distributed_function(%(function)s::regprocedure, %(argument)s, colocate_with => %(colocate_with)s);

-- name: claim_brand
-- Claims of one brand in one transaction, one result row per item (discount_claim_brand): on a
-- Citus cluster, one call to the node that holds the brand. Sent on its own, never inside an
-- explicit transaction block: Citus pushes a function call down only as a statement of its own.
SELECT item, outcome, sequence, code, email, claimed_at, expires_at, code_key
FROM discount_claim_brand(%(brand_key)s::integer, %(user_ids)s::text[], %(emails)s::text[], %(after_code_key)s::bigint);

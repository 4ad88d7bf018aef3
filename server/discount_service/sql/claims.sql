-- Claims: group commit per lane (claim_batcher.py), across brands on plain PostgreSQL and per brand on
-- Citus, and the code pick inside them as a statement of its own.
--
-- Each block starts with `-- name: <name>`, then a one-line description; the store loads the blocks
-- of every sql/*.sql but schema.sql into one dict by name and is the only module that executes SQL.
-- Parameters are psycopg named placeholders (%(name)s), except where a block says otherwise.

-- name: claim_codes
-- Claims of any brands in one transaction, one result row per item (discount_claim_many).
SELECT item, outcome, sequence, code, email, claimed_at, expires_at, code_key
FROM discount_claim_many(%(brand_ids)s::text[], %(user_ids)s::text[], %(emails)s::text[],
                         %(after_code_keys)s::bigint[]);

-- name: claim_brand
-- Claims of one brand in one transaction, one result row per item (discount_claim_brand): on a
-- Citus cluster, one call to the node that holds the brand. Sent on its own, never inside an
-- explicit transaction block: Citus pushes a function call down only as a statement of its own.
SELECT item, outcome, sequence, code, email, claimed_at, expires_at, code_key
FROM discount_claim_brand(%(brand_key)s::integer, %(user_ids)s::text[], %(emails)s::text[], %(after_code_key)s::bigint);

-- name: pick_free_code
-- The code pick inside discount_claim_brand as a statement of its own, for EXPLAIN: $1 is the
-- brand_key (integer), $2 the after_code_key hint (bigint), as in
-- `PREPARE pick(integer, bigint) AS <this>`; tests/test_schema.py checks it matches the function.
SELECT f.ctid, f.code, f.expires_at, f.code_key
FROM codes f
WHERE f.brand_key = $1 AND NOT f.claimed AND f.code_key > $2
  AND NOT f.expired AND coalesce(f.expires_at, 'infinity') > now()
ORDER BY f.code_key LIMIT 1
FOR UPDATE SKIP LOCKED;

-- GenerateCodes: the batch record, the COPY fast path, and the exact path through a staging table.
--
-- Each block starts with `-- name: <name>`, then a one-line description; the store loads the blocks
-- of every sql/*.sql but schema.sql into one dict by name and is the only module that executes SQL.
-- Parameters are psycopg named placeholders (%(name)s), except where a block says otherwise.

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

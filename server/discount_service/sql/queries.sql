-- Every statement the service runs. Each block starts with `-- name: <name>`;
-- store.py loads them once and is the only module that executes SQL.

-- name: create_brand
WITH brand AS (
    INSERT INTO brands (brand_id, name) VALUES (%(brand_id)s, %(name)s)
    RETURNING brand_key, brand_id, name, created_at
), head AS (
    INSERT INTO brand_feed_heads (brand_key) SELECT brand_key FROM brand
)
SELECT brand_key, brand_id, name, created_at FROM brand;

-- name: list_brands
SELECT b.brand_id, b.name, b.created_at, h.total_codes, h.last_sequence
FROM brands b JOIN brand_feed_heads h USING (brand_key)
ORDER BY b.brand_id;

-- name: get_brand_key
SELECT brand_key FROM brands WHERE brand_id = %(brand_id)s;

-- name: create_api_key
INSERT INTO api_keys (key_id, key_hash, role, brand_key)
VALUES (%(key_id)s, %(key_hash)s, %(role)s,
        (SELECT brand_key FROM brands WHERE brand_id = %(brand_id)s))
RETURNING key_id;

-- name: find_api_key
SELECT k.key_id, k.role, b.brand_id
FROM api_keys k LEFT JOIN brands b USING (brand_key)
WHERE k.key_hash = %(key_hash)s AND k.revoked_at IS NULL;

-- name: revoke_api_key
UPDATE api_keys SET revoked_at = now()
WHERE key_id = %(key_id)s AND revoked_at IS NULL
RETURNING key_id;

-- name: list_api_keys
SELECT k.key_id, k.role, b.brand_id, k.created_at, k.revoked_at
FROM api_keys k LEFT JOIN brands b USING (brand_key)
ORDER BY k.created_at;

-- name: claim_code
SELECT outcome, sequence, code, email, claimed_at, expires_at, code_key
FROM discount_claim(%(brand_id)s, %(user_id)s, %(email)s, %(after_code_key)s);

-- name: claim_code_batch
SELECT item, outcome, sequence, code, email, claimed_at, expires_at, code_key
FROM discount_claim_batch(%(brand_id)s, %(user_ids)s, %(emails)s, %(after_code_key)s);

-- name: find_batch
SELECT b.batch_id, b.generated
FROM code_batches b JOIN brands USING (brand_key)
WHERE brands.brand_id = %(brand_id)s AND b.request_id = %(request_id)s;

-- name: insert_batch
INSERT INTO code_batches (batch_id, brand_key, request_id, generated, code_length, prefix, expires_at)
VALUES (%(batch_id)s, %(brand_key)s, %(request_id)s, %(generated)s, %(code_length)s,
        %(prefix)s, %(expires_at)s)
RETURNING batch_key;

-- name: copy_codes
COPY codes (brand_key, batch_key, expires_at, code) FROM STDIN;

-- name: create_staging
CREATE TEMP TABLE IF NOT EXISTS staged_codes (code text NOT NULL) ON COMMIT DROP;

-- name: copy_staged_codes
COPY staged_codes (code) FROM STDIN;

-- name: insert_staged_codes
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
TRUNCATE staged_codes;

-- name: add_total_codes
UPDATE brand_feed_heads SET total_codes = total_codes + %(count)s WHERE brand_key = %(brand_key)s;

-- name: brand_stats
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
SELECT c.sequence, c.code, c.user_id, c.email, c.claimed_at, c.expires_at
FROM claims c
WHERE c.brand_key = %(brand_key)s AND c.sequence > %(after_sequence)s
ORDER BY c.sequence
LIMIT %(limit)s;

-- name: feed_head
SELECT last_sequence FROM brand_feed_heads WHERE brand_key = %(brand_key)s;

-- name: notify_claims
-- A NOTIFY needs a transaction id, so with synchronous_commit its commit would wait for a WAL
-- flush. It is only a wake-up hint (watchers also poll), so this one commit is asynchronous.
SELECT set_config('synchronous_commit', 'off', true), pg_notify('discount_claims', %(payload)s);

-- name: ping
SELECT 1;

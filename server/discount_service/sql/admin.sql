-- Brands and API keys: creating and looking them up, AdminService's pages, and the code counts
-- of brand stats and metrics.
--
-- Each block starts with `-- name: <name>`, then a one-line description; the store loads the blocks
-- of every sql/*.sql but schema.sql into one dict by name and is the only module that executes SQL.
-- Parameters are psycopg named placeholders (%(name)s), except where a block says otherwise.

-- name: create_brand
-- A new brand and its feed head (last sequence 0, no codes), in one statement.
WITH brand AS (
    INSERT INTO brands (brand_id, name) VALUES (%(brand_id)s, %(name)s)
    RETURNING brand_key, brand_id, name, created_at
), head AS (
    INSERT INTO brand_feed_heads (brand_key) SELECT brand_key FROM brand
)
SELECT brand_key, brand_id, name, created_at FROM brand;

-- name: get_brand_key
-- The compact surrogate key of a brand, or no row if it does not exist.
SELECT brand_key FROM brands WHERE brand_id = %(brand_id)s;

-- name: find_api_key
-- The unrevoked key with this digest: its id, role and brand.
SELECT k.key_id, k.role, b.brand_id
FROM api_keys k LEFT JOIN brands b USING (brand_key)
WHERE k.key_hash = %(key_hash)s AND k.revoked_at IS NULL;

-- name: admin_active_key_ids
-- Which of these keys exist and are not revoked: the one check, every DISCOUNT_KEY_CACHE_SECONDS,
-- of every key that open watch streams act on (revocation.py).
SELECT key_id FROM api_keys WHERE key_id = ANY(%(key_ids)s::text[]) AND revoked_at IS NULL;

-- name: brand_stats
-- A brand's total, claimed and expired codes, exact: the expired codes the expiry sweep counted on
-- the feed head, plus those expired since and not swept yet (index codes_expiring: none once the
-- sweep has run, so no code is read).
SELECT h.total_codes,
       h.last_sequence AS claimed,
       h.expired_codes + (SELECT count(*) FROM codes c
                          WHERE c.brand_key = h.brand_key AND NOT c.claimed AND NOT c.expired
                            AND c.expires_at <= now()) AS expired
FROM brands b JOIN brand_feed_heads h USING (brand_key)
WHERE b.brand_id = %(brand_id)s;

-- name: codes_available
-- Every brand's claimable codes, for the metrics endpoint (cached there): total less claimed less
-- expired, counted as brand_stats counts them.
SELECT b.brand_id,
       h.total_codes - h.last_sequence - h.expired_codes
       - (SELECT count(*) FROM codes c
          WHERE c.brand_key = h.brand_key AND NOT c.claimed AND NOT c.expired
            AND c.expires_at <= now()) AS available
FROM brands b JOIN brand_feed_heads h USING (brand_key)
ORDER BY b.brand_id;

-- name: admin_list_brands
-- One page of brands after a brand_id ('' for the first page), in brand_id order, each with its code
-- total and claim count as the feed head keeps them; the caller asks for one row more than the page
-- to learn whether another page follows.
SELECT b.brand_id, b.name, b.created_at, h.total_codes, h.last_sequence
FROM brands b JOIN brand_feed_heads h USING (brand_key)
WHERE b.brand_id > %(after)s
ORDER BY b.brand_id
LIMIT %(limit)s;

-- name: admin_insert_api_key
-- Stores a key's digest, role and brand and returns it as listed. The caller resolves the brand_key
-- first: Citus supports no subquery in an INSERT's values.
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

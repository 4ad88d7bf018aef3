-- The claim of one brand, by its brand_key: the one claim body, which discount_claim_many (and so
-- every other claim function) now calls per brand, and the function a Citus cluster runs on the node
-- that holds the brand (docs/scaling.md).
--
-- Why brand_key first: Citus routes a call of a distributed function by one of its arguments to the
-- node that holds that value's shards, and brand_key is what the tables are distributed by; the
-- whole claim then runs there, against that node's shards, in one round trip from the coordinator.
-- Every statement filters on brand_key, the UPDATE by ctid included: on Citus a statement without
-- the distribution column runs on every shard, and an UPDATE ... WHERE ctid = ... alone would mark
-- the codes of other brands that sit at the same ctid in their shards.
--
-- The steps and their reasons are those of 0007 (each item gets what it would have got alone):
--   1. an unknown brand (no feed head) answers 'brand_not_found' for every item;
--   2. the advisory lock of every user of the call, in hashtext order;
--   3. without a hint, start after the code of the brand's latest claim (three whole-key probes);
--   4. per item in array order: the user's existing claim, or the oldest free, unexpired code after
--      the hint with SKIP LOCKED (from the start on a miss), or 'exhausted';
--   5. mark the code claimed, bump the feed head last (its row lock held to commit), insert the claim.
CREATE FUNCTION discount_claim_brand(
    p_brand_key integer, p_user_ids text[], p_emails text[], p_after_code_key bigint)
RETURNS TABLE (item integer, outcome text, sequence bigint, code text, email text,
               claimed_at timestamptz, expires_at timestamptz, code_key bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_brand     integer := p_brand_key;
    v_lock      integer;
    v_i         integer;
    v_user      text;
    v_ctid      tid;
    v_code      text;
    v_expires   timestamptz;
    v_code_key  bigint;
    v_sequence  bigint;
    v_hint      bigint := coalesce(p_after_code_key, 0);
    v_last      bigint;
    v_last_code text;
    v_found     boolean;
BEGIN
    -- 1. the brand
    SELECT h.last_sequence INTO v_last FROM brand_feed_heads h WHERE h.brand_key = v_brand;
    IF NOT FOUND THEN
        RETURN QUERY SELECT i, 'brand_not_found'::text, NULL::bigint, NULL::text, NULL::text,
                            NULL::timestamptz, NULL::timestamptz, NULL::bigint
                     FROM generate_series(1, cardinality(p_user_ids)) i;
        RETURN;
    END IF;

    -- 2. every user's advisory lock, in one order
    FOR v_lock IN SELECT DISTINCT hashtext(u) FROM unnest(p_user_ids) u ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(v_brand, v_lock);
    END LOOP;

    -- 3. without a hint, start after the code of the brand's latest claim
    IF v_hint = 0 THEN
        SELECT c.code INTO v_last_code FROM claims c WHERE c.brand_key = v_brand AND c.sequence = v_last;
        IF FOUND THEN
            SELECT co.code_key INTO v_hint FROM codes co
            WHERE co.brand_key = v_brand AND co.code = v_last_code LIMIT 1;
        END IF;
        v_hint := coalesce(v_hint, 0);
    END IF;

    FOR v_i IN 1 .. cardinality(p_user_ids) LOOP
        v_user := p_user_ids[v_i];

        -- 4. the code the user already holds
        RETURN QUERY
            SELECT v_i, 'existing'::text, c.sequence, c.code, c.email, c.claimed_at, c.expires_at, NULL::bigint
            FROM claims c WHERE c.brand_key = v_brand AND c.user_id = v_user;
        IF FOUND THEN
            CONTINUE;
        END IF;

        -- 4. the oldest free code after the hint (pick_free_code in sql/queries.sql) ...
        SELECT f.ctid, f.code, f.expires_at, f.code_key INTO v_ctid, v_code, v_expires, v_code_key
        FROM codes f
        WHERE f.brand_key = v_brand AND NOT f.claimed AND f.code_key > v_hint
          AND (f.expires_at IS NULL OR f.expires_at > now())
        ORDER BY f.code_key LIMIT 1
        FOR UPDATE SKIP LOCKED;
        v_found := FOUND;

        -- ... or, on a miss, from the start
        IF NOT v_found AND v_hint > 0 THEN
            SELECT f.ctid, f.code, f.expires_at, f.code_key INTO v_ctid, v_code, v_expires, v_code_key
            FROM codes f
            WHERE f.brand_key = v_brand AND NOT f.claimed AND f.code_key > 0
              AND (f.expires_at IS NULL OR f.expires_at > now())
            ORDER BY f.code_key LIMIT 1
            FOR UPDATE SKIP LOCKED;
            v_found := FOUND;
        END IF;

        IF NOT v_found THEN
            RETURN QUERY SELECT v_i, 'exhausted'::text, NULL::bigint, NULL::text, NULL::text,
                                NULL::timestamptz, NULL::timestamptz, NULL::bigint;
            CONTINUE;
        END IF;

        -- 5. claim it (by brand_key and ctid); the feed-head bump comes last, its row lock held to commit
        UPDATE codes SET claimed = true WHERE brand_key = v_brand AND ctid = v_ctid;
        v_hint := v_code_key;

        UPDATE brand_feed_heads h SET last_sequence = h.last_sequence + 1
        WHERE h.brand_key = v_brand
        RETURNING h.last_sequence INTO v_sequence;

        INSERT INTO claims (brand_key, sequence, code, user_id, email, claimed_at, expires_at)
        VALUES (v_brand, v_sequence, v_code, v_user, p_emails[v_i], now(), v_expires);

        RETURN QUERY SELECT v_i, 'claimed'::text, v_sequence, v_code, p_emails[v_i], now(), v_expires, v_code_key;
    END LOOP;
END
$$;

-- Claims of several brands in one transaction, as in 0007, with the per-brand work done by
-- discount_claim_brand: every advisory lock of the call first in (brand_key, hashtext(user)) order,
-- then brand by brand in brand_key order, so the feed-head row locks are still taken in one global
-- order and no two calls can deadlock. discount_claim_batch and discount_claim (by brand_id, for
-- callers of the previous releases) reach the same body through this function.
CREATE OR REPLACE FUNCTION discount_claim_many(
    p_brand_ids text[], p_user_ids text[], p_emails text[], p_after_code_keys bigint[])
RETURNS TABLE (item integer, outcome text, sequence bigint, code text, email text,
               claimed_at timestamptz, expires_at timestamptz, code_key bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_keys  integer[];
    v_lock  record;
    v_brand record;
BEGIN
    -- 1. the brands
    v_keys := ARRAY(SELECT (SELECT b.brand_key FROM brands b WHERE b.brand_id = u.brand_id)
                    FROM unnest(p_brand_ids) WITH ORDINALITY AS u(brand_id, i) ORDER BY u.i);
    RETURN QUERY SELECT u.i::integer, 'brand_not_found'::text, NULL::bigint, NULL::text, NULL::text,
                        NULL::timestamptz, NULL::timestamptz, NULL::bigint
                 FROM unnest(v_keys) WITH ORDINALITY AS u(brand_key, i) WHERE u.brand_key IS NULL;

    -- 2. every (brand, user) advisory lock, in one global order
    FOR v_lock IN SELECT DISTINCT u.brand_key, hashtext(u.user_id) AS user_hash
                  FROM unnest(v_keys, p_user_ids) AS u(brand_key, user_id)
                  WHERE u.brand_key IS NOT NULL ORDER BY 1, 2 LOOP
        PERFORM pg_advisory_xact_lock(v_lock.brand_key, v_lock.user_hash);
    END LOOP;

    -- 3. brand by brand in brand_key order, each brand's items in array order, with the hint of its first
    FOR v_brand IN SELECT u.brand_key, array_agg(u.i::integer ORDER BY u.i) AS items,
                          array_agg(u.user_id ORDER BY u.i) AS user_ids, array_agg(u.email ORDER BY u.i) AS emails,
                          (array_agg(u.hint ORDER BY u.i))[1] AS hint
                   FROM unnest(v_keys, p_user_ids, p_emails, p_after_code_keys)
                        WITH ORDINALITY AS u(brand_key, user_id, email, hint, i)
                   WHERE u.brand_key IS NOT NULL GROUP BY u.brand_key ORDER BY u.brand_key LOOP
        RETURN QUERY
            SELECT v_brand.items[c.item], c.outcome, c.sequence, c.code, c.email, c.claimed_at, c.expires_at,
                   c.code_key
            FROM discount_claim_brand(v_brand.brand_key, v_brand.user_ids, v_brand.emails, v_brand.hint) c;
    END LOOP;
END
$$;

-- Claims of several brands in one transaction: one round trip and one commit (one WAL flush) for
-- all of them, whatever their brands (docs/design.md#group-commit).
--
-- Why: a claim alone in its transaction pays a round trip, a commit and a flush of its own, so
-- claims spread over many brands, each rarely with another claim of its brand in flight, cannot
-- share them through 0004's single-brand batch. The server gathers waiting claims of any brands
-- (claim_batcher.py) and sends them here together.
--
-- Each item gets exactly what discount_claim_batch (0004) would have given it alone:
--   1. brands are resolved once, each by an equality on the unique brand_id; an item of an
--      unknown brand answers 'brand_not_found';
--   2. the advisory locks of every (brand, user) of the call are taken first, in (brand_key,
--      hashtext(user)) order, then
--   3. the items are claimed brand by brand in brand_key order, each brand's in array order, so the
--      feed-head row locks, taken by each brand's first new claim and held to commit, are also
--      taken in one global order: two calls (from any server, or 0004's single-brand form) acquire
--      their locks in the same order and cannot deadlock;
--   4. per brand, the hint is the caller's (or, when 0, derived from the brand's latest claim, as
--      in 0003), and per item the body of 0004: the existing claim, or the next free code after the
--      hint (from the start on a miss), the code flip, the feed-head bump last and the claims row.
-- Any error rolls the whole call back; the server then claims its items one by one.
CREATE FUNCTION discount_claim_many(
    p_brand_ids text[], p_user_ids text[], p_emails text[], p_after_code_keys bigint[])
RETURNS TABLE (item integer, outcome text, sequence bigint, code text, email text,
               claimed_at timestamptz, expires_at timestamptz, code_key bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_keys      integer[];
    v_lock      record;
    v_item      record;
    v_brand     integer;
    v_i         integer;
    v_user      text;
    v_ctid      tid;
    v_code      text;
    v_expires   timestamptz;
    v_code_key  bigint;
    v_sequence  bigint;
    v_hint      bigint;
    v_last      bigint;
    v_last_code text;
    v_found     boolean;
BEGIN
    v_keys := ARRAY(SELECT (SELECT b.brand_key FROM brands b WHERE b.brand_id = u.brand_id)
                    FROM unnest(p_brand_ids) WITH ORDINALITY AS u(brand_id, i) ORDER BY u.i);
    RETURN QUERY SELECT u.i::integer, 'brand_not_found'::text, NULL::bigint, NULL::text, NULL::text,
                        NULL::timestamptz, NULL::timestamptz, NULL::bigint
                 FROM unnest(v_keys) WITH ORDINALITY AS u(brand_key, i) WHERE u.brand_key IS NULL;

    FOR v_lock IN SELECT DISTINCT u.brand_key, hashtext(u.user_id) AS user_hash
                  FROM unnest(v_keys, p_user_ids) AS u(brand_key, user_id)
                  WHERE u.brand_key IS NOT NULL ORDER BY 1, 2 LOOP
        PERFORM pg_advisory_xact_lock(v_lock.brand_key, v_lock.user_hash);
    END LOOP;

    FOR v_item IN SELECT u.brand_key, u.i::integer AS i, u.user_id, u.email, u.hint
                  FROM unnest(v_keys, p_user_ids, p_emails, p_after_code_keys)
                       WITH ORDINALITY AS u(brand_key, user_id, email, hint, i)
                  WHERE u.brand_key IS NOT NULL ORDER BY u.brand_key, u.i LOOP
        v_i := v_item.i;
        v_user := v_item.user_id;

        IF v_brand IS DISTINCT FROM v_item.brand_key THEN
            v_brand := v_item.brand_key;
            v_hint := coalesce(v_item.hint, 0);
            IF v_hint = 0 THEN
                SELECT h.last_sequence INTO v_last FROM brand_feed_heads h WHERE h.brand_key = v_brand;
                SELECT c.code INTO v_last_code FROM claims c WHERE c.brand_key = v_brand AND c.sequence = v_last;
                IF FOUND THEN
                    SELECT co.code_key INTO v_hint FROM codes co
                    WHERE co.brand_key = v_brand AND co.code = v_last_code LIMIT 1;
                END IF;
                v_hint := coalesce(v_hint, 0);
            END IF;
        END IF;

        RETURN QUERY
            SELECT v_i, 'existing'::text, c.sequence, c.code, c.email, c.claimed_at, c.expires_at, NULL::bigint
            FROM claims c WHERE c.brand_key = v_brand AND c.user_id = v_user;
        IF FOUND THEN
            CONTINUE;
        END IF;

        SELECT f.ctid, f.code, f.expires_at, f.code_key INTO v_ctid, v_code, v_expires, v_code_key
        FROM codes f
        WHERE f.brand_key = v_brand AND NOT f.claimed AND f.code_key > v_hint
          AND (f.expires_at IS NULL OR f.expires_at > now())
        ORDER BY f.code_key LIMIT 1
        FOR UPDATE SKIP LOCKED;
        v_found := FOUND;

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

        UPDATE codes SET claimed = true WHERE ctid = v_ctid;
        v_hint := v_code_key;

        UPDATE brand_feed_heads h SET last_sequence = h.last_sequence + 1
        WHERE h.brand_key = v_brand
        RETURNING h.last_sequence INTO v_sequence;

        INSERT INTO claims (brand_key, sequence, code, user_id, email, claimed_at, expires_at)
        VALUES (v_brand, v_sequence, v_code, v_user, v_item.email, now(), v_expires);

        RETURN QUERY SELECT v_i, 'claimed'::text, v_sequence, v_code, v_item.email, now(), v_expires, v_code_key;
    END LOOP;
END
$$;

-- One claim body, not two (as 0005 did for discount_claim): the single-brand batch is now a call of
-- the many-brand one with every item of the same brand and hint. Same results, same locks, same order.
CREATE OR REPLACE FUNCTION discount_claim_batch(
    p_brand_id text, p_user_ids text[], p_emails text[], p_after_code_key bigint)
RETURNS TABLE (item integer, outcome text, sequence bigint, code text, email text,
               claimed_at timestamptz, expires_at timestamptz, code_key bigint)
LANGUAGE sql AS $$
    SELECT m.item, m.outcome, m.sequence, m.code, m.email, m.claimed_at, m.expires_at, m.code_key
    FROM discount_claim_many(array_fill(p_brand_id, ARRAY[cardinality(p_user_ids)]), p_user_ids, p_emails,
                             array_fill(p_after_code_key, ARRAY[cardinality(p_user_ids)])) m
$$;

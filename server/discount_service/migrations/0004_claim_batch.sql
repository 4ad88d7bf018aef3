-- Several claims of one brand in one transaction: one commit (one WAL flush) for all of them.
--
-- Why: a claim holds its brand's feed-head row lock from the sequence bump until its commit has
-- been flushed (that is what keeps sequences gapless and commit-ordered,
-- docs/design.md#trap-outbox-order). So claims of a hot brand cannot share a flush through
-- PostgreSQL's group commit: each waits for the previous one's fsync, and a brand tops out at
-- about 1 / fsync time.
-- The server therefore gathers the claims of a brand that arrive while one is running and sends
-- them here together (claim_batcher.py).
--
-- Each item gets exactly what discount_claim (0003) would have given it, in array order:
--   1. the advisory locks of every user of the batch are taken first, in hashtext order, so two
--      batches (or a batch and a single claim) cannot deadlock; the feed-head row lock is still
--      taken after them, by the first new claim, and held to commit;
--   2. then each item, in order, runs the body of discount_claim: the existing claim, or the next
--      free code after the hint (retrying from the start on a miss), the sequence bump and the
--      claims row. A user twice in one batch sees its own first claim: 'existing'.
-- Any error rolls the whole batch back; the server then runs its items one by one.
CREATE OR REPLACE FUNCTION discount_claim_batch(
    p_brand_id text, p_user_ids text[], p_emails text[], p_after_code_key bigint)
RETURNS TABLE (item integer, outcome text, sequence bigint, code text, email text,
               claimed_at timestamptz, expires_at timestamptz, code_key bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_brand     integer;
    v_lock      integer;
    v_i         integer;
    v_user      text;
    v_ctid      tid;
    v_code      text;
    v_expires   timestamptz;
    v_code_key  bigint;
    v_sequence  bigint;
    v_hint      bigint := p_after_code_key;
    v_last      bigint;
    v_last_code text;
    v_found     boolean;
BEGIN
    SELECT b.brand_key INTO v_brand FROM brands b WHERE b.brand_id = p_brand_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT i, 'brand_not_found'::text, NULL::bigint, NULL::text, NULL::text,
                            NULL::timestamptz, NULL::timestamptz, NULL::bigint
                     FROM generate_series(1, cardinality(p_user_ids)) i;
        RETURN;
    END IF;

    FOR v_lock IN SELECT DISTINCT hashtext(u) FROM unnest(p_user_ids) u ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(v_brand, v_lock);
    END LOOP;

    IF v_hint = 0 THEN  -- as in 0003: start after the code of the brand's latest claim
        SELECT h.last_sequence INTO v_last FROM brand_feed_heads h WHERE h.brand_key = v_brand;
        SELECT c.code INTO v_last_code FROM claims c WHERE c.brand_key = v_brand AND c.sequence = v_last;
        IF FOUND THEN
            SELECT co.code_key INTO v_hint FROM codes co WHERE co.brand_key = v_brand AND co.code = v_last_code
            LIMIT 1;
        END IF;
        v_hint := coalesce(v_hint, 0);
    END IF;

    FOR v_i IN 1 .. cardinality(p_user_ids) LOOP
        v_user := p_user_ids[v_i];

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
        VALUES (v_brand, v_sequence, v_code, v_user, p_emails[v_i], now(), v_expires);

        RETURN QUERY SELECT v_i, 'claimed'::text, v_sequence, v_code, p_emails[v_i], now(), v_expires, v_code_key;
    END LOOP;
END
$$;

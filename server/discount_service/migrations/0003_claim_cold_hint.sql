-- The claim function of 0002, with one change: a call without a hint (p_after_code_key = 0,
-- e.g. the first claim of a brand in a freshly started process, or pgbench) derives one from the
-- brand's latest claim instead of scanning codes_free from the start. With autovacuum off, that
-- start holds one dead index entry per claimed code: after 1M claims, the first claim of every
-- new process walked 1M entries (see docs/performance.md for the EXPLAIN before and after).
-- A miss after the derived hint still retries from the start, so the hint stays an optimisation.
CREATE OR REPLACE FUNCTION discount_claim(
    p_brand_id text, p_user_id text, p_email text, p_after_code_key bigint)
RETURNS TABLE (outcome text, sequence bigint, code text, email text, claimed_at timestamptz,
               expires_at timestamptz, code_key bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_brand    integer;
    v_ctid     tid;
    v_code     text;
    v_expires  timestamptz;
    v_code_key bigint;
    v_sequence bigint;
    v_hint     bigint := p_after_code_key;
    v_last     bigint;
    v_last_code text;
BEGIN
    SELECT b.brand_key INTO v_brand FROM brands b WHERE b.brand_id = p_brand_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'brand_not_found'::text, NULL::bigint, NULL::text, NULL::text,
                            NULL::timestamptz, NULL::timestamptz, NULL::bigint;
        RETURN;
    END IF;

    PERFORM pg_advisory_xact_lock(v_brand, hashtext(p_user_id));

    RETURN QUERY
        SELECT 'existing'::text, c.sequence, c.code, c.email, c.claimed_at, c.expires_at, NULL::bigint
        FROM claims c WHERE c.brand_key = v_brand AND c.user_id = p_user_id;
    IF FOUND THEN
        RETURN;
    END IF;

    IF v_hint = 0 THEN
        -- A caller without a hint yet (a process that just started) starts after the code of the
        -- brand's latest claim. Three probes, each on a whole unique key, so that no plan but the
        -- unique index is possible, with or without statistics (a join with ORDER BY ... LIMIT 1
        -- here was planned as a nested loop over every code and claim of the brand before ANALYZE).
        SELECT h.last_sequence INTO v_last FROM brand_feed_heads h WHERE h.brand_key = v_brand;
        SELECT c.code INTO v_last_code FROM claims c WHERE c.brand_key = v_brand AND c.sequence = v_last;
        IF FOUND THEN
            SELECT co.code_key INTO v_hint FROM codes co WHERE co.brand_key = v_brand AND co.code = v_last_code
            LIMIT 1;
        END IF;
        v_hint := coalesce(v_hint, 0);
    END IF;

    SELECT f.ctid, f.code, f.expires_at, f.code_key INTO v_ctid, v_code, v_expires, v_code_key
    FROM codes f
    WHERE f.brand_key = v_brand AND NOT f.claimed AND f.code_key > v_hint
      AND (f.expires_at IS NULL OR f.expires_at > now())
    ORDER BY f.code_key LIMIT 1
    FOR UPDATE SKIP LOCKED;

    IF NOT FOUND AND v_hint > 0 THEN
        SELECT f.ctid, f.code, f.expires_at, f.code_key INTO v_ctid, v_code, v_expires, v_code_key
        FROM codes f
        WHERE f.brand_key = v_brand AND NOT f.claimed AND f.code_key > 0
          AND (f.expires_at IS NULL OR f.expires_at > now())
        ORDER BY f.code_key LIMIT 1
        FOR UPDATE SKIP LOCKED;
    END IF;

    IF NOT FOUND THEN
        RETURN QUERY SELECT 'exhausted'::text, NULL::bigint, NULL::text, NULL::text,
                            NULL::timestamptz, NULL::timestamptz, NULL::bigint;
        RETURN;
    END IF;

    UPDATE codes SET claimed = true WHERE ctid = v_ctid;

    UPDATE brand_feed_heads h SET last_sequence = h.last_sequence + 1
    WHERE h.brand_key = v_brand
    RETURNING h.last_sequence INTO v_sequence;

    INSERT INTO claims (brand_key, sequence, code, user_id, email, claimed_at, expires_at)
    VALUES (v_brand, v_sequence, v_code, p_user_id, p_email, now(), v_expires);

    RETURN QUERY SELECT 'claimed'::text, v_sequence, v_code, p_email, now(), v_expires, v_code_key;
END
$$;

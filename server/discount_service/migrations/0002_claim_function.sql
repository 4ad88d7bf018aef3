-- The whole claim in one round trip (docs/design.md#trap-round-trips).
--   1. resolve the brand;
--   2. serialise calls of the same (brand, user) with a transaction advisory lock
--      (docs/design.md#trap-same-user-race);
--   3. return the code the user already holds, if any;
--   4. take the oldest free, unexpired code with SKIP LOCKED, starting after `p_after_code_key`,
--      a per-process low-water mark that lets the index descent jump over the claimed prefix
--      instead of walking its dead entries; a miss retries from the start, so the hint is only
--      ever an optimisation;
--   5. bump the brand's feed head last, so the row lock that orders sequences is held only
--      for the insert and the commit (docs/design.md#trap-outbox-order), and no NOTIFY sits on
--      the commit path (docs/design.md#trap-notify-commit-lock).
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

    SELECT f.ctid, f.code, f.expires_at, f.code_key INTO v_ctid, v_code, v_expires, v_code_key
    FROM codes f
    WHERE f.brand_key = v_brand AND NOT f.claimed AND f.code_key > p_after_code_key
      AND (f.expires_at IS NULL OR f.expires_at > now())
    ORDER BY f.code_key LIMIT 1
    FOR UPDATE SKIP LOCKED;

    IF NOT FOUND AND p_after_code_key > 0 THEN
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

-- Expired codes leave the claim path (docs/design.md#trap-expired-scan). The expiry sweep
-- (expiry_sweep.py) marks an unclaimed code past its expires_at `expired`, in bounded batches, and
-- counts it on its brand's feed head (`expired_codes`); the free-code index no longer holds it, so a
-- claim's pick and a NO_CODES_LEFT stop walking a brand's expired codes. `codes_expiring` finds the
-- codes to sweep and counts those not swept yet (brand stats stay exact); `code_batches_to_sweep`
-- finds the brands to sweep. `codes_free` gains the expiry as a third key, so a pick passes over codes
-- expired but not swept yet inside the index; the claim's pick gains `NOT f.expired` (so the partial
-- index serves it) and tests the expiry as `coalesce(f.expires_at, 'infinity') > now()`, an index
-- condition.
ALTER TABLE brand_feed_heads ADD COLUMN expired_codes bigint NOT NULL DEFAULT 0;
ALTER TABLE code_batches ADD COLUMN expired_swept boolean NOT NULL DEFAULT false;
ALTER TABLE codes ADD COLUMN expired boolean NOT NULL DEFAULT false;
CREATE INDEX code_batches_to_sweep ON code_batches (expires_at) WHERE NOT expired_swept AND expires_at IS NOT NULL;
DROP INDEX codes_free;
CREATE INDEX codes_free ON codes (brand_key, code_key, (coalesce(expires_at, 'infinity'))) WHERE NOT claimed AND NOT expired;
CREATE INDEX codes_expiring ON codes (brand_key, expires_at) WHERE NOT claimed AND NOT expired AND expires_at IS NOT NULL;

CREATE OR REPLACE FUNCTION discount_claim_brand(
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

        -- 4. the oldest free code after the hint (pick_free_code in sql/claims.sql) ...
        SELECT f.ctid, f.code, f.expires_at, f.code_key INTO v_ctid, v_code, v_expires, v_code_key
        FROM codes f
        WHERE f.brand_key = v_brand AND NOT f.claimed AND f.code_key > v_hint
          AND NOT f.expired AND coalesce(f.expires_at, 'infinity') > now()
        ORDER BY f.code_key LIMIT 1
        FOR UPDATE SKIP LOCKED;
        v_found := FOUND;

        -- ... or, on a miss, from the start
        IF NOT v_found AND v_hint > 0 THEN
            SELECT f.ctid, f.code, f.expires_at, f.code_key INTO v_ctid, v_code, v_expires, v_code_key
            FROM codes f
            WHERE f.brand_key = v_brand AND NOT f.claimed AND f.code_key > 0
              AND NOT f.expired AND coalesce(f.expires_at, 'infinity') > now()
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

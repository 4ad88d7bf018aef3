-- Redemptions (issue 21): which order a claimed code was used on, at most one standing per code,
-- and the two functions that redeem and cancel in one round trip on the brand's node. The table is
-- keyed by brand_key first, so a Citus cluster distributes it with the brand's other rows, and the
-- functions by p_brand_key (store/_migrations.py, CITUS_DISTRIBUTED_TABLES and _FUNCTIONS).

-- Redemptions (redemption.py): which order a claimed code was used on. A code stands redeemed on
-- at most one order at a time: the partial unique index on the standing redemption is what makes a
-- redemption exactly-once, across processes and replicas, with no check-then-act; the primary key
-- makes an order's redemption of a code one row, so a retry finds it. A cancelled redemption stays,
-- with `cancelled_at`, so the cancelled order's id cannot silently redeem the code again. Keyed by
-- brand_key first, so a Citus cluster distributes it with the brand's codes and claims.
CREATE TABLE redemptions (
    brand_key    integer NOT NULL,
    code         text NOT NULL,
    order_id     text NOT NULL,
    user_id      text NOT NULL,
    redeemed_at  timestamptz NOT NULL,
    cancelled_at timestamptz,
    PRIMARY KEY (brand_key, code, order_id)
);
CREATE UNIQUE INDEX redemptions_standing ON redemptions (brand_key, code) WHERE cancelled_at IS NULL;

-- The brand's standing redemptions, for GetBrandStats: the sum of up to 64 counters per brand. A
-- redemption adds one and a cancellation takes one from the counter of the database session that
-- runs it (its backend's pid modulo 64), so concurrent calls, each on a session of its own, rarely
-- share a counter's row lock; a counter alone means nothing (it may go below zero), only the sum
-- does. One counter per brand would be a row lock every redemption of the brand waits on until its
-- commit; counting the index instead reads every standing redemption (671 buffers, 19-42 ms at
-- 100,000: docs/redemptions.md). Nothing indexed is updated and the low fillfactor leaves room on
-- the page, so every move is a HOT update.
CREATE TABLE redemption_counts (
    brand_key integer NOT NULL,
    stripe    smallint NOT NULL CHECK (stripe BETWEEN 0 AND 63),
    standing  bigint NOT NULL,
    PRIMARY KEY (brand_key, stripe)
) WITH (fillfactor = 20);

-- A redemption, in one round trip, on the node that holds the brand (distributed by p_brand_key on
-- Citus). `p_code` comes upper-cased, the one case codes are generated in (codes.py), so it is one
-- primary-key probe. The checks run in the order of the contract (redemption.py), the first that
-- fails answering: the code exists ('code_not_found'); the user holds it ('not_held', the same for
-- an unclaimed code and another user's, so the answer never tells whether someone holds it); this
-- order's own redemption ('existing' as it is, even past expiry, or 'cancelled'); expiry
-- ('expired'); then the insert, which the unique indexes decide: 'redeemed', or, when another
-- order's redemption stands, 'already_redeemed'. An insert that meets a conflicting insert in flight
-- waits for it; the next statement's snapshot then sees its row, so 48 calls with one order id
-- give one 'redeemed' and 47 'existing'. A conflict that is gone by the re-read (the other order's
-- redemption cancelled meanwhile) tries the insert again. Only the call whose insert lands moves a
-- counter, after its redemption's own locks, so no two redemptions wait on each other in a cycle.
CREATE FUNCTION discount_redeem(p_brand_key integer, p_code text, p_user_id text, p_order_id text)
RETURNS TABLE (outcome text, user_id text, redeemed_at timestamptz, cancelled_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_expires  timestamptz;
    v_holder   text;
    v_attempt  integer;
BEGIN
    SELECT c.expires_at INTO v_expires FROM codes c WHERE c.brand_key = p_brand_key AND c.code = p_code;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'code_not_found'::text, NULL::text, NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;

    SELECT cl.code INTO v_holder FROM claims cl WHERE cl.brand_key = p_brand_key AND cl.user_id = p_user_id;
    IF v_holder IS DISTINCT FROM p_code THEN
        RETURN QUERY SELECT 'not_held'::text, NULL::text, NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;

    FOR v_attempt IN 1 .. 3 LOOP
        RETURN QUERY
            SELECT CASE WHEN r.cancelled_at IS NULL THEN 'existing' ELSE 'cancelled' END,
                   r.user_id, r.redeemed_at, r.cancelled_at
            FROM redemptions r
            WHERE r.brand_key = p_brand_key AND r.code = p_code AND r.order_id = p_order_id;
        IF FOUND THEN
            RETURN;
        END IF;

        IF v_attempt = 1 AND v_expires IS NOT NULL AND v_expires <= now() THEN
            RETURN QUERY SELECT 'expired'::text, NULL::text, NULL::timestamptz, NULL::timestamptz;
            RETURN;
        END IF;

        RETURN QUERY
            INSERT INTO redemptions AS r (brand_key, code, order_id, user_id, redeemed_at)
            VALUES (p_brand_key, p_code, p_order_id, p_user_id, now())
            ON CONFLICT DO NOTHING
            RETURNING 'redeemed'::text, r.user_id, r.redeemed_at, r.cancelled_at;
        IF FOUND THEN
            INSERT INTO redemption_counts AS rc (brand_key, stripe, standing)
            VALUES (p_brand_key, pg_backend_pid() % 64, 1)
            ON CONFLICT (brand_key, stripe) DO UPDATE SET standing = rc.standing + 1;
            RETURN;
        END IF;

        PERFORM 1 FROM redemptions r
        WHERE r.brand_key = p_brand_key AND r.code = p_code AND r.cancelled_at IS NULL
          AND r.order_id <> p_order_id;
        IF FOUND THEN
            RETURN QUERY SELECT 'already_redeemed'::text, NULL::text, NULL::timestamptz, NULL::timestamptz;
            RETURN;
        END IF;
    END LOOP;
    RETURN QUERY SELECT 'already_redeemed'::text, NULL::text, NULL::timestamptz, NULL::timestamptz;
END
$$;

-- The cancellation of an order's redemption of a code, in one round trip on the brand's node, like
-- discount_redeem: 'code_not_found', 'redemption_not_found' (the code exists; this order never
-- redeemed it), else 'cancelled' with the redemption, whose cancelled_at is set once: the first
-- cancellation's time, whatever the retries. Only the call that sets it moves a counter.
CREATE FUNCTION discount_cancel_redemption(p_brand_key integer, p_code text, p_order_id text)
RETURNS TABLE (outcome text, user_id text, redeemed_at timestamptz, cancelled_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM 1 FROM codes c WHERE c.brand_key = p_brand_key AND c.code = p_code;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'code_not_found'::text, NULL::text, NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;

    RETURN QUERY
        UPDATE redemptions r SET cancelled_at = now()
        WHERE r.brand_key = p_brand_key AND r.code = p_code AND r.order_id = p_order_id
          AND r.cancelled_at IS NULL
        RETURNING 'cancelled'::text, r.user_id, r.redeemed_at, r.cancelled_at;
    IF FOUND THEN
        INSERT INTO redemption_counts AS rc (brand_key, stripe, standing)
        VALUES (p_brand_key, pg_backend_pid() % 64, -1)
        ON CONFLICT (brand_key, stripe) DO UPDATE SET standing = rc.standing - 1;
        RETURN;
    END IF;

    RETURN QUERY
        SELECT 'cancelled'::text, r.user_id, r.redeemed_at, r.cancelled_at
        FROM redemptions r
        WHERE r.brand_key = p_brand_key AND r.code = p_code AND r.order_id = p_order_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'redemption_not_found'::text, NULL::text, NULL::timestamptz, NULL::timestamptz;
    END IF;
END
$$;

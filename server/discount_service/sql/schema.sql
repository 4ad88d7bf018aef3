-- The whole schema, in one place: what `discount migrate` (and `discount serve`, which migrates on
-- start) applies to an empty database, in one transaction, recording every migration in
-- migrations/*.sql as applied. A database that has some migrations gets the ones it lacks instead,
-- so this file must always equal the sum of all the migrations shipped beside it.
--
-- A new table or function is therefore written twice, and only twice: once here (fresh databases)
-- and once as a new migration (upgrades), in the same commit; never by changing a migration that has
-- shipped. tests/test_schema.py builds one database from this file and one by replaying every
-- migration from 0001, on plain PostgreSQL and on Citus, and fails if `pg_dump --schema-only` of the
-- two differ (comments and layout aside); its failure message is the diff. To run it:
-- `.venv/bin/python -m pytest tests/test_schema.py`.
--
-- The traps the design avoids are described in docs/design.md; comments cite them by anchor.


-- Brands own codes. `brand_key` is a compact surrogate: every hot index and advisory lock is keyed
-- by it instead of the (up to 64 byte) brand_id.
CREATE TABLE brands (
    brand_key   integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    brand_id    text NOT NULL UNIQUE CHECK (length(brand_id) BETWEEN 1 AND 64),
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per brand holding the last feed sequence handed out and the number of codes generated.
-- A claim bumps `last_sequence` as its last statement and holds the row lock until it commits, so
-- sequences are gapless and become visible in sequence order (docs/design.md#trap-outbox-order).
-- Nothing indexed is updated and the low fillfactor leaves room on the page, so every bump is a
-- HOT update. `last_sequence` doubles as the brand's claim count. `expired_codes` counts the codes
-- the expiry sweep took out of the claim path (expiry_sweep.py), in the transaction that marks them.
CREATE TABLE brand_feed_heads (
    brand_key     integer PRIMARY KEY REFERENCES brands (brand_key),
    last_sequence bigint NOT NULL DEFAULT 0,
    total_codes   bigint NOT NULL DEFAULT 0,
    expired_codes bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 20);

-- API keys are stored only as SHA-256 digests of 256-bit random secrets. A brand key is bound to
-- exactly one brand; admin and service keys to none.
CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,
    key_hash    bytea NOT NULL UNIQUE,
    role        text NOT NULL CHECK (role IN ('admin', 'brand', 'service')),
    brand_key   integer REFERENCES brands (brand_key),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK ((role = 'brand') = (brand_key IS NOT NULL))
);

-- ListApiKeys of one brand pages through that brand's keys in key_id order.
CREATE INDEX api_keys_brand ON api_keys (brand_key, key_id) WHERE brand_key IS NOT NULL;

-- Secrets every server of this database shares and never sends anywhere. `page_token`, made with
-- the schema by the database's strong random source (two v4 UUIDs, 244 random bits, hashed to 32
-- bytes), signs AdminService page tokens, so a token a caller made up is refused and any replica can
-- continue a listing another one started. Databases copied from this one share it.
CREATE TABLE server_secrets (
    name    text PRIMARY KEY,
    secret  bytea NOT NULL CHECK (length(secret) >= 32)
);
INSERT INTO server_secrets (name, secret)
VALUES ('page_token', sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())));

-- One row per GenerateCodes call; the unique (brand_key, request_id) makes a retried call wait for
-- the first one and then return its batch instead of generating twice. Every key includes
-- brand_key, so the table can be distributed by brand (docs/scaling.md); batch_key and batch_id
-- are unique on their own anyway (an identity value, a random UUID).
CREATE TABLE code_batches (
    batch_key   bigint GENERATED ALWAYS AS IDENTITY,
    batch_id    uuid NOT NULL,
    brand_key   integer NOT NULL REFERENCES brands (brand_key),
    request_id  text,
    generated   integer NOT NULL,
    code_length integer NOT NULL,
    prefix      text NOT NULL,
    expires_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expired_swept boolean NOT NULL DEFAULT false,
    PRIMARY KEY (brand_key, batch_key),
    UNIQUE (brand_key, batch_id),
    UNIQUE (brand_key, request_id)
);
-- The batches whose codes expired and the expiry sweep has not swept yet: where it finds the brands
-- to sweep, without reading a code.
CREATE INDEX code_batches_to_sweep ON code_batches (expires_at) WHERE NOT expired_swept AND expires_at IS NOT NULL;

-- Every generated code; they arrive by the million through COPY, in the transaction that writes
-- their brand's batch row. `code_key` orders codes oldest first, and the claim takes them in that
-- order; with CACHE 1000 a session draws identity values a thousand at a time, not one per row.
CREATE TABLE codes (
    brand_key  integer NOT NULL,
    batch_key  bigint NOT NULL,
    expires_at timestamptz,
    code       text NOT NULL,
    code_key   bigint GENERATED ALWAYS AS IDENTITY (CACHE 1000),
    claimed    boolean NOT NULL DEFAULT false,
    expired    boolean NOT NULL DEFAULT false,
    PRIMARY KEY (brand_key, code)
);
-- `claimed` flips once, and so does `expired` (set by the expiry sweep on an unclaimed code past its
-- expires_at), so this partial index holds only free codes: it is the only index that can serve the
-- code pick, its plan cannot drift onto the primary key (docs/design.md#trap-plan-drift), and swept
-- codes are not in a claim's path. The expiry as a third key lets the pick pass over codes expired but
-- not swept yet inside the index, without a heap visit each (docs/design.md#trap-expired-scan).
CREATE INDEX codes_free ON codes (brand_key, code_key, (coalesce(expires_at, 'infinity'))) WHERE NOT claimed AND NOT expired;
-- Free codes with an expiry, soonest first: what the sweep takes, and the exact count of codes that
-- expired but are not swept yet, which brand stats add to the feed head's `expired_codes`.
CREATE INDEX codes_expiring ON codes (brand_key, expires_at) WHERE NOT claimed AND NOT expired AND expires_at IS NOT NULL;

-- Who got which code, and the brand's durable claim feed (the outbox), in one row: the feed is
-- read by `sequence > cursor`, which the gapless, commit-ordered sequences make a safe resume point.
CREATE TABLE claims (
    brand_key  integer NOT NULL,
    sequence   bigint NOT NULL,
    code       text NOT NULL,
    user_id    text NOT NULL,
    email      text NOT NULL,
    claimed_at timestamptz NOT NULL,
    expires_at timestamptz,
    PRIMARY KEY (brand_key, sequence),
    -- The last line of defence behind the (brand, user) advisory lock.
    CONSTRAINT claims_one_code_per_user UNIQUE (brand_key, user_id)
);


-- The claim of one brand, by its brand_key, in one round trip (docs/design.md#trap-round-trips): the
-- one claim body. On one PostgreSQL the server reaches it through discount_claim_many; on a Citus
-- cluster the server calls it directly, distributed by p_brand_key, so the whole claim runs on the
-- node that holds the brand's shards (docs/scaling.md). Every statement filters on brand_key, the
-- UPDATE by ctid included: on Citus a statement without the distribution column runs on every shard.
--
-- Each item gets what it would have got alone:
--   1. an unknown brand (no feed head) answers 'brand_not_found' for every item;
--   2. take the advisory lock of every user of the call first, in hashtext order; calls of the same
--      (brand, user) queue here, and the second finds the first one's claim
--      (docs/design.md#trap-same-user-race);
--   3. a caller without a hint yet (`p_after_code_key` 0, a process that just started) starts after
--      the code of the brand's latest claim, found by three probes on whole unique keys so that no
--      plan but the unique index is possible, with or without statistics;
--   4. per item in array order: return the code the user already holds ('existing'); otherwise take
--      the oldest free, unexpired code after the hint with SKIP LOCKED (the hint lets the index
--      descent jump over the claimed prefix's dead entries instead of walking them; a miss retries
--      from the start, so the hint is only ever an optimisation), or answer 'exhausted';
--   5. mark the code claimed, bump the feed head last (its row lock, taken by the brand's first new
--      claim, orders the sequences and is held to commit: docs/design.md#trap-outbox-order), and
--      insert the claims row. No NOTIFY here: it would sit on the commit path
--      (docs/design.md#trap-notify-commit-lock); the server notifies after commit.
-- Outcomes: 'claimed' (a new claim, with the code_key the caller keeps as its next hint), 'existing',
-- 'brand_not_found', 'exhausted'. A user twice in one call sees its own first claim: 'existing'.
-- Any error rolls the whole call back; the server then runs its items one by one. sql/claims.sql
-- holds the code pick as a statement of its own (pick_free_code), for EXPLAIN.
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

-- Claims of several brands in one transaction, in one round trip: one commit, so one WAL flush, for
-- all of them. A claim holds its brand's feed-head row lock from the sequence bump until its commit
-- is flushed, so claims of one brand cannot share a flush through PostgreSQL's group commit, and a
-- claim alone in its transaction pays a round trip, a commit and a flush of its own. On a single
-- PostgreSQL the server gathers claims in a few lanes (a brand always in the same lane, one
-- transaction per lane at a time) and sends each lane's waiting claims here together, whatever their
-- brands (claim_batcher.py).
--   1. resolve the brands, each by an equality on the unique brand_id (an item of an unknown brand
--      answers 'brand_not_found');
--   2. take the advisory lock of every (brand, user) of the call first, in (brand_key,
--      hashtext(user)) order;
--   3. claim brand by brand in brand_key order (discount_claim_brand, each brand's items in array
--      order, with the hint of its first): with 2., every call takes its locks (advisory locks, then
--      feed-head rows) in one global order, so two calls from any number of servers cannot deadlock.
CREATE FUNCTION discount_claim_many(
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


-- Webhooks (webhooks.py, webhook_delivery.py): a brand's endpoints and where each one's delivery
-- stands. `delivered_sequence` is the last claim the endpoint acknowledged with a 2xx. The delivery
-- in progress (`delivery_id`, `first_sequence`..`last_sequence`) is written before its first attempt
-- and kept until a 2xx or a replay, so every attempt at it, on any process, sends the same id and
-- claims. `secret`/`previous_secret` are AES-GCM ciphertexts under a key from the server's settings,
-- never the secrets themselves (docs/design.md, "Webhook delivery"). `attempts_recorded` numbers the
-- endpoint's attempt rows; `config_version` changes with every replay and rotation, so the process
-- that delivers the webhook reloads it.
CREATE TABLE webhooks (
    brand_key               integer NOT NULL REFERENCES brands (brand_key),
    webhook_id              text NOT NULL,
    url                     text NOT NULL CHECK (length(url) <= 2048),
    state                   text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'failing', 'disabled')),
    delivered_sequence      bigint NOT NULL CHECK (delivered_sequence >= 0),
    max_claims_per_delivery integer NOT NULL CHECK (max_claims_per_delivery BETWEEN 1 AND 1000),
    created_at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    secret                  bytea NOT NULL,
    previous_secret         bytea,
    previous_secret_until   timestamptz,
    last_error              text NOT NULL DEFAULT '',
    next_attempt_at         timestamptz,
    failing_since           timestamptz,
    delivery_id             text,
    first_sequence          bigint,
    last_sequence           bigint,
    attempts                integer NOT NULL DEFAULT 0,
    attempts_recorded       bigint NOT NULL DEFAULT 0,
    config_version          integer NOT NULL DEFAULT 0,
    PRIMARY KEY (brand_key, webhook_id),
    CHECK ((delivery_id IS NULL) = (first_sequence IS NULL) AND (delivery_id IS NULL) = (last_sequence IS NULL))
);

-- Get, delete, replay and rotate name a webhook by its id alone.
CREATE INDEX webhooks_by_id ON webhooks (webhook_id);

-- Every attempt at a delivery, the last 10,000 per webhook (`number` counts a webhook's attempts).
CREATE TABLE webhook_deliveries (
    brand_key        integer NOT NULL,
    webhook_id       text NOT NULL,
    number           bigint NOT NULL,
    delivery_id      text NOT NULL,
    first_sequence   bigint NOT NULL,
    last_sequence    bigint NOT NULL,
    attempt          integer NOT NULL,
    attempted_at     timestamptz NOT NULL,
    http_status      integer NOT NULL,
    error            text NOT NULL,
    duration_seconds double precision NOT NULL,
    PRIMARY KEY (brand_key, webhook_id, number),
    FOREIGN KEY (brand_key, webhook_id) REFERENCES webhooks (brand_key, webhook_id) ON DELETE CASCADE
);

-- The NATS relay (relay.py): per brand, the last claim sequence JetStream acknowledged. Keyed by
-- brand_key, so a Citus cluster distributes it with the brand's other rows.
CREATE TABLE relay_positions (
    brand_key        integer PRIMARY KEY REFERENCES brands (brand_key),
    relayed_sequence bigint NOT NULL CHECK (relayed_sequence >= 0)
);


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

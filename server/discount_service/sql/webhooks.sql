-- Webhooks (webhooks.py, webhook_delivery.py): the endpoints a brand registers, where each one's
-- delivery stands, its attempts, and the advisory locks that let one process deliver it.
--
-- Each block starts with `-- name: <name>`, then a one-line description; the store loads the blocks
-- of every sql/*.sql but schema.sql into one dict by name and is the only module that executes SQL.

-- name: webhook_lock_brand
-- Serialises the creations of one brand's webhooks, so two concurrent ones cannot both be the 10th.
SELECT pg_advisory_xact_lock(%(lock_class)s, %(brand_key)s);

-- name: webhook_insert
-- A new webhook, unless the brand has `limit` already; after_sequence NULL starts at the brand's head.
INSERT INTO webhooks (brand_key, webhook_id, url, delivered_sequence, max_claims_per_delivery, secret)
SELECT %(brand_key)s, %(webhook_id)s, %(url)s,
       coalesce(%(after_sequence)s, (SELECT h.last_sequence FROM brand_feed_heads h WHERE h.brand_key = %(brand_key)s)),
       %(max_claims)s, %(secret)s
WHERE (SELECT count(*) FROM webhooks w WHERE w.brand_key = %(brand_key)s) < %(limit)s
RETURNING brand_key, webhook_id, url, state, delivered_sequence, max_claims_per_delivery, created_at, last_error,
          next_attempt_at;

-- name: webhook_get
-- One webhook by id, with its brand_id (a webhook_id is unique: the server draws 128 random bits).
SELECT w.brand_key, b.brand_id, w.webhook_id, w.url, w.state, w.delivered_sequence, w.max_claims_per_delivery,
       w.created_at, w.last_error, w.next_attempt_at
FROM webhooks w JOIN brands b ON b.brand_key = w.brand_key
WHERE w.webhook_id = %(webhook_id)s;

-- name: webhook_list
-- A brand's webhooks, oldest first.
SELECT w.brand_key, w.webhook_id, w.url, w.state, w.delivered_sequence, w.max_claims_per_delivery,
       w.created_at, w.last_error, w.next_attempt_at
FROM webhooks w
WHERE w.brand_key = %(brand_key)s
ORDER BY w.created_at, w.webhook_id;

-- name: webhook_delete
-- Removes a webhook and its attempts.
DELETE FROM webhooks WHERE brand_key = %(brand_key)s AND webhook_id = %(webhook_id)s RETURNING webhook_id;

-- name: webhook_replay
-- Moves a webhook's position, drops the delivery in progress and makes it active again.
UPDATE webhooks
SET delivered_sequence = %(after_sequence)s, state = 'active', last_error = '', next_attempt_at = NULL,
    failing_since = NULL, delivery_id = NULL, first_sequence = NULL, last_sequence = NULL, attempts = 0,
    config_version = config_version + 1
WHERE brand_key = %(brand_key)s AND webhook_id = %(webhook_id)s
RETURNING brand_key, webhook_id, url, state, delivered_sequence, max_claims_per_delivery, created_at, last_error,
          next_attempt_at;

-- name: webhook_rotate
-- A new secret; the current one signs beside it until `previous_until`.
UPDATE webhooks
SET previous_secret = secret, previous_secret_until = now() + make_interval(secs => %(overlap_seconds)s),
    secret = %(secret)s, config_version = config_version + 1
WHERE brand_key = %(brand_key)s AND webhook_id = %(webhook_id)s
RETURNING brand_key, webhook_id, url, state, delivered_sequence, max_claims_per_delivery, created_at, last_error,
          next_attempt_at;

-- name: webhook_attempts_page
-- A page of a webhook's attempts, newest first, below the cursor `before` (a number).
SELECT delivery_id, first_sequence, last_sequence, attempt, attempted_at, http_status, error, duration_seconds, number
FROM webhook_deliveries
WHERE brand_key = %(brand_key)s AND webhook_id = %(webhook_id)s AND number < %(before)s
ORDER BY number DESC
LIMIT %(limit)s;

-- name: webhook_scan
-- Every webhook that is not disabled, and those this process holds: which to deliver, and whether
-- a replay or rotation changed one (config_version).
SELECT w.webhook_id, w.brand_key, b.brand_id, w.config_version, w.state
FROM webhooks w JOIN brands b ON b.brand_key = w.brand_key
WHERE w.state <> 'disabled' OR w.webhook_id = ANY(%(held)s::text[]);

-- name: webhook_try_locks
-- The session advisory locks of these webhooks that this connection could take now. On the
-- coordinator alone (no table), so on Citus too the lock is this session's.
SELECT id FROM unnest(%(ids)s::text[]) AS id WHERE pg_try_advisory_lock(%(lock_class)s, hashtext(id));

-- name: webhook_unlock
-- Gives back the session advisory locks of these webhooks.
SELECT count(pg_advisory_unlock(%(lock_class)s, hashtext(id))) FROM unnest(%(ids)s::text[]) AS id;

-- name: webhook_delivery_state
-- What the delivering process needs of a webhook: its position, the delivery in progress and its secrets.
SELECT b.brand_id, w.url, w.state, w.delivered_sequence, w.max_claims_per_delivery, w.secret,
       CASE WHEN w.previous_secret_until > now() THEN w.previous_secret END,
       w.previous_secret_until, w.delivery_id, w.first_sequence, w.last_sequence, w.attempts,
       w.next_attempt_at, w.failing_since, w.config_version
FROM webhooks w JOIN brands b ON b.brand_key = w.brand_key
WHERE w.brand_key = %(brand_key)s AND w.webhook_id = %(webhook_id)s;

-- name: webhook_begin_delivery
-- Fixes the next delivery's id and claims before its first attempt, if the webhook still stands
-- where the process saw it (a replay in between leaves it alone).
UPDATE webhooks
SET delivery_id = %(delivery_id)s, first_sequence = %(first_sequence)s, last_sequence = %(last_sequence)s,
    attempts = 0
WHERE brand_key = %(brand_key)s AND webhook_id = %(webhook_id)s AND delivery_id IS NULL
  AND delivered_sequence = %(delivered_sequence)s AND config_version = %(config_version)s AND state <> 'disabled'
RETURNING webhook_id;

-- name: webhook_record_attempt
-- One attempt's outcome, in one statement: the attempt row (the last `keep` per webhook stay), and
-- the webhook's new standing if the attempt is still its delivery in progress. A 2xx moves
-- delivered_sequence and ends the delivery; a failure counts it and schedules the next attempt, or
-- disables the webhook on a 410 or once it has failed for `retry_period_seconds`.
WITH current AS (
    UPDATE webhooks w
    SET attempts_recorded = w.attempts_recorded + 1,
        delivered_sequence = CASE WHEN %(succeeded)s THEN w.last_sequence ELSE w.delivered_sequence END,
        delivery_id = CASE WHEN %(succeeded)s THEN NULL ELSE w.delivery_id END,
        first_sequence = CASE WHEN %(succeeded)s THEN NULL ELSE w.first_sequence END,
        last_sequence = CASE WHEN %(succeeded)s THEN NULL ELSE w.last_sequence END,
        attempts = CASE WHEN %(succeeded)s THEN 0 ELSE w.attempts + 1 END,
        last_error = %(error)s,
        failing_since = CASE WHEN %(succeeded)s THEN NULL ELSE coalesce(w.failing_since, %(attempted_at)s) END,
        state = CASE
            WHEN %(succeeded)s THEN 'active'
            WHEN %(gone)s THEN 'disabled'
            WHEN now() - coalesce(w.failing_since, %(attempted_at)s) >= make_interval(secs => %(retry_period_seconds)s)
                THEN 'disabled'
            ELSE 'failing' END,
        next_attempt_at = CASE WHEN %(succeeded)s OR %(gone)s THEN NULL
                               ELSE now() + make_interval(secs => %(retry_in_seconds)s) END
    WHERE w.brand_key = %(brand_key)s AND w.webhook_id = %(webhook_id)s AND w.delivery_id = %(delivery_id)s
      AND w.config_version = %(config_version)s
    RETURNING w.attempts_recorded, w.state, w.attempts
), recorded AS (
    INSERT INTO webhook_deliveries (brand_key, webhook_id, number, delivery_id, first_sequence, last_sequence, attempt,
                                    attempted_at, http_status, error, duration_seconds)
    SELECT %(brand_key)s, %(webhook_id)s, c.attempts_recorded, %(delivery_id)s, %(first_sequence)s,
           %(last_sequence)s, %(attempt)s, %(attempted_at)s, %(http_status)s, %(error)s, %(duration_seconds)s
    FROM current c
), pruned AS (
    DELETE FROM webhook_deliveries d
    USING current c
    WHERE d.brand_key = %(brand_key)s AND d.webhook_id = %(webhook_id)s AND d.number <= c.attempts_recorded - %(keep)s
)
SELECT state, attempts FROM current;

-- name: webhook_lock_keepalives
-- TCP keepalives on the server's side of the lock connection: if the process's machine or network
-- goes away without closing it, PostgreSQL drops the session, and with it the locks, in about 11 s.
SELECT set_config('tcp_keepalives_idle', '5', false),
       set_config('tcp_keepalives_interval', '2', false),
       set_config('tcp_keepalives_count', '3', false);

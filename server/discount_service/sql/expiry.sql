-- The expiry sweep (expiry_sweep.py): expired, unclaimed codes leave the free-code index, counted on
-- their brand's feed head (docs/design.md#trap-expired-scan).
--
-- Each block starts with `-- name: <name>`, then a one-line description; the store loads the blocks
-- of every sql/*.sql but schema.sql into one dict by name and is the only module that executes SQL.
-- Parameters are psycopg named placeholders (%(name)s), except where a block says otherwise.

-- name: expiry_brands_to_sweep
-- The brands with a batch expired and not swept yet (index code_batches_to_sweep), and the time the
-- question was asked: what a brand's sweep covers. Reads batches only, never codes; on Citus, one
-- small read of every shard per sweep round.
SELECT DISTINCT b.brand_key, now() AS swept_until
FROM code_batches b
WHERE NOT b.expired_swept AND b.expires_at <= now();

-- name: expiry_next_due
-- When the soonest batch that has not expired yet expires (index code_batches_to_sweep), or NULL:
-- the sweep sleeps until then instead of asking every second, so an idle server adds no transactions.
SELECT min(b.expires_at) FROM code_batches b WHERE NOT b.expired_swept AND b.expires_at > now();

-- name: expiry_sweep_codes
-- Marks up to %(limit)s of a brand's expired, unclaimed codes `expired` and adds them to the feed
-- head's `expired_codes`, in one transaction, soonest-expired first (index codes_expiring). Only
-- while it holds the brand's sweep lock (a transaction advisory lock; another process sweeping the
-- brand makes this one sweep nothing, answering held = false); codes a claim holds are skipped, and
-- the re-check of `NOT claimed AND NOT expired` makes each code counted once.
WITH sweep_lock AS (
    SELECT pg_try_advisory_xact_lock(%(lock_class)s, %(brand_key)s) AS held
), swept AS (
    UPDATE codes c SET expired = true
    WHERE c.brand_key = %(brand_key)s
      AND c.ctid = ANY (ARRAY(
          SELECT e.ctid FROM codes e
          WHERE e.brand_key = %(brand_key)s AND NOT e.claimed AND NOT e.expired AND e.expires_at <= now()
            AND (SELECT held FROM sweep_lock)
          ORDER BY e.expires_at LIMIT %(limit)s
          FOR UPDATE SKIP LOCKED))
      AND NOT c.claimed AND NOT c.expired
    RETURNING 1
), counted AS (
    UPDATE brand_feed_heads h SET expired_codes = h.expired_codes + (SELECT count(*) FROM swept)
    WHERE h.brand_key = %(brand_key)s AND EXISTS (SELECT 1 FROM swept)
)
SELECT (SELECT held FROM sweep_lock), (SELECT count(*) FROM swept);

-- name: expiry_mark_batches_swept
-- A brand's batches that expired by %(swept_until)s, once its sweep found no more codes to mark:
-- they leave code_batches_to_sweep. A batch committed later is still found by the next round.
UPDATE code_batches SET expired_swept = true
WHERE brand_key = %(brand_key)s AND NOT expired_swept AND expires_at <= %(swept_until)s;

-- name: expiry_vacuum_codes
-- Removes the free-code index's entries of swept (and claimed) codes after a large sweep, so a pick
-- that starts below them does not step over them (autovacuum may be off or not yet due). Skipped
-- when another vacuum of codes runs; a role that does not own the table gets a warning, not an error.
VACUUM (SKIP_LOCKED) codes;

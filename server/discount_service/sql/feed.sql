-- The claim feed (feed.py): pages of a brand's claims, the heads of many brands' feeds in one poll,
-- and the channel that wakes other processes' watchers.
--
-- Each block starts with `-- name: <name>`, then a one-line description; the store loads the blocks
-- of every sql/*.sql but schema.sql into one dict by name and is the only module that executes SQL.
-- Parameters are psycopg named placeholders (%(name)s), except where a block says otherwise.

-- name: feed_page
-- The next page of a brand's claim feed after a cursor, in sequence order.
SELECT c.sequence, c.code, c.user_id, c.email, c.claimed_at, c.expires_at
FROM claims c
WHERE c.brand_key = %(brand_key)s AND c.sequence > %(after_sequence)s
ORDER BY c.sequence
LIMIT %(limit)s;

-- name: feed_heads
-- The last sequence of each of these brands' feeds: where a live watcher starts, and the feed's
-- one poll for all the brands a process watches.
SELECT brand_key, last_sequence FROM brand_feed_heads WHERE brand_key = ANY(%(brand_keys)s::integer[]);

-- name: notify_claims
-- Every payload on the claim channel, in one transaction. A NOTIFY needs a transaction id, so with
-- synchronous_commit its commit would wait for a WAL flush. It is only a wake-up hint (watchers
-- also poll), so this one commit is asynchronous.
SELECT set_config('synchronous_commit', 'off', true),
       (SELECT count(pg_notify('discount_claims', p)) FROM unnest(%(payloads)s::text[]) AS p);

-- name: listen_claims
-- Subscribes the listener connection to the channel notify_claims sends on.
LISTEN discount_claims;

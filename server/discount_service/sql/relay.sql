-- The NATS relay (relay.py): where each brand's relay stands, and the advisory lock that lets one
-- process at a time run it.
--
-- Each block starts with `-- name: <name>`, then a one-line description; the store loads the blocks
-- of every sql/*.sql but schema.sql into one dict by name and is the only module that executes SQL.

-- name: relay_standings
-- Every brand with the last sequence of its feed and the last one JetStream acknowledged (0: none).
SELECT b.brand_key, b.brand_id, coalesce(h.last_sequence, 0), coalesce(p.relayed_sequence, 0)
FROM brands b
LEFT JOIN brand_feed_heads h ON h.brand_key = b.brand_key
LEFT JOIN relay_positions p ON p.brand_key = b.brand_key
ORDER BY b.brand_key;

-- name: relay_save_positions
-- Moves brands' relay positions forward (never back: a late write of an older position loses).
INSERT INTO relay_positions (brand_key, relayed_sequence)
SELECT k, s FROM unnest(%(brand_keys)s::integer[], %(sequences)s::bigint[]) AS t (k, s)
ON CONFLICT (brand_key) DO UPDATE
SET relayed_sequence = greatest(relay_positions.relayed_sequence, excluded.relayed_sequence);

-- name: relay_keepalives
-- The server side of the lock's connection probes the relay too, so the lock of a relay whose machine
-- vanished without closing the connection is released within seconds (no effect over a Unix socket).
SELECT set_config('tcp_keepalives_idle', '5', false),
       set_config('tcp_keepalives_interval', '2', false),
       set_config('tcp_keepalives_count', '3', false);

-- name: relay_try_lock
-- The session advisory lock of the relay, if no other session holds it. On the coordinator alone
-- (no table), so on Citus too the lock is this session's.
SELECT pg_try_advisory_lock(%(lock_class)s, 0);

-- name: relay_brands_after
-- Brands created after the last one the relay knows of (brand keys only grow); run on the lock's
-- connection, so an answer also proves the lock is still held.
SELECT brand_key, brand_id FROM brands WHERE brand_key > %(after)s ORDER BY brand_key;

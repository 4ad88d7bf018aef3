-- Redemptions: a claimed code used on an order, and its cancellation (redemption.py).
--
-- Each block starts with `-- name: <name>`, then a one-line description. Both calls go to one
-- function distributed by its brand_key argument, sent on its own, never inside an explicit
-- transaction block: Citus pushes a function call down to the brand's node only as a statement of
-- its own, so a redemption is one round trip to that node (sql/schema.sql has the checks).

-- name: redeem
-- Redeems the code (upper-cased) of the brand on the order for the user; one row with the outcome.
SELECT outcome, user_id, redeemed_at, cancelled_at
FROM discount_redeem(%(brand_key)s::integer, %(code)s::text, %(user_id)s::text, %(order_id)s::text);

-- name: cancel_redemption
-- Cancels the order's redemption of the code (upper-cased); one row with the outcome.
SELECT outcome, user_id, redeemed_at, cancelled_at
FROM discount_cancel_redemption(%(brand_key)s::integer, %(code)s::text, %(order_id)s::text);

-- name: redeemed_count
-- The brand's standing redemptions: the sum of its (at most 64) counters.
SELECT coalesce(sum(standing), 0) FROM redemption_counts WHERE brand_key = %(brand_key)s::integer;

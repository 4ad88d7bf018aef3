-- One claim body, not two: 0003's discount_claim and 0004's discount_claim_batch repeated the same
-- steps. A single claim is now a batch of one, so a change to the claim is made in one place.
-- Same results, same locks, same order (see 0004).
CREATE OR REPLACE FUNCTION discount_claim(
    p_brand_id text, p_user_id text, p_email text, p_after_code_key bigint)
RETURNS TABLE (outcome text, sequence bigint, code text, email text, claimed_at timestamptz,
               expires_at timestamptz, code_key bigint)
LANGUAGE sql AS $$
    SELECT b.outcome, b.sequence, b.code, b.email, b.claimed_at, b.expires_at, b.code_key
    FROM discount_claim_batch(p_brand_id, ARRAY[p_user_id], ARRAY[p_email], p_after_code_key) b
$$;

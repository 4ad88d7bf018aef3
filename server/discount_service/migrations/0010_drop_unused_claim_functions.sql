-- The claim functions by brand_id that the service no longer calls: discount_claim (one claim) and
-- discount_claim_batch (several claims of one brand) were calls of discount_claim_many with one
-- brand. The service calls discount_claim_many (several brands, one PostgreSQL) and
-- discount_claim_brand (one brand, by brand_key, on Citus), and nothing else calls these: no release
-- has shipped them to other callers.
DROP FUNCTION discount_claim(text, text, text, bigint);
DROP FUNCTION discount_claim_batch(text, text[], text[], bigint);

-- AdminService (docs/design.md, "AdminService").
--
-- A secret shared by every server of one database, never sent anywhere: it signs the page tokens of
-- ListBrands and ListApiKeys, so a token a caller made up is refused, and any replica can continue
-- a listing another one started. Made here, by the database's strong random source (two v4 UUIDs,
-- 244 random bits, hashed to 32 bytes); databases copied from this one share it.
CREATE TABLE server_secrets (
    name    text PRIMARY KEY,
    secret  bytea NOT NULL CHECK (length(secret) >= 32)
);
INSERT INTO server_secrets (name, secret)
VALUES ('page_token', sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())));

-- ListApiKeys of one brand pages through that brand's keys in key_id order.
CREATE INDEX api_keys_brand ON api_keys (brand_key, key_id) WHERE brand_key IS NOT NULL;

-- Brands own codes. `brand_key` is a compact surrogate used by every hot index and advisory lock.
CREATE TABLE brands (
    brand_key   integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    brand_id    text NOT NULL UNIQUE CHECK (length(brand_id) BETWEEN 1 AND 64),
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per brand holding the last feed sequence handed out. Claims lock it as their last
-- statement, so sequences are gapless and become visible in sequence order
-- (docs/design.md#trap-outbox-order).
-- Nothing indexed is updated, so every bump is a HOT update.
CREATE TABLE brand_feed_heads (
    brand_key     integer PRIMARY KEY REFERENCES brands (brand_key),
    last_sequence bigint NOT NULL DEFAULT 0,
    total_codes   bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 20);

-- API keys are stored only as SHA-256 digests of 256-bit random secrets.
CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,
    key_hash    bytea NOT NULL UNIQUE,
    role        text NOT NULL CHECK (role IN ('admin', 'brand', 'service')),
    brand_key   integer REFERENCES brands (brand_key),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK ((role = 'brand') = (brand_key IS NOT NULL))
);

-- One row per GenerateCodes call; (brand_key, request_id) makes retries idempotent.
CREATE TABLE code_batches (
    batch_key   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id    uuid NOT NULL UNIQUE,
    brand_key   integer NOT NULL REFERENCES brands (brand_key),
    request_id  text,
    generated   integer NOT NULL,
    code_length integer NOT NULL,
    prefix      text NOT NULL,
    expires_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (brand_key, request_id)
);

-- Every generated code. `claimed` flips once; the partial index then holds only free codes,
-- so the claim query's plan cannot drift onto the primary key (docs/design.md#trap-plan-drift).
CREATE TABLE codes (
    brand_key  integer NOT NULL,
    batch_key  bigint NOT NULL,
    expires_at timestamptz,
    code       text NOT NULL,
    code_key   bigint GENERATED ALWAYS AS IDENTITY (CACHE 1000),
    claimed    boolean NOT NULL DEFAULT false,
    PRIMARY KEY (brand_key, code)
);
CREATE INDEX codes_free ON codes (brand_key, code_key) WHERE NOT claimed;

-- Who got which code, and the brand's durable claim feed (the outbox), in one row.
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

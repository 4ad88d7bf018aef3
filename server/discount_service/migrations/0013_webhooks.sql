-- Webhooks (issue 20): a brand's endpoints, where each one's delivery stands, and its attempts.
-- Both tables are keyed by brand_key first, so a Citus cluster distributes them with the brand's
-- other rows (store/_migrations.py, CITUS_DISTRIBUTED_TABLES).

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

CREATE INDEX webhooks_by_id ON webhooks (webhook_id);

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

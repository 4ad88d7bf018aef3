-- The NATS relay (relay.py): per brand, the last claim sequence JetStream acknowledged. Keyed by
-- brand_key, so a Citus cluster distributes it with the brand's other rows.
CREATE TABLE relay_positions (
    brand_key        integer PRIMARY KEY REFERENCES brands (brand_key),
    relayed_sequence bigint NOT NULL CHECK (relayed_sequence >= 0)
);

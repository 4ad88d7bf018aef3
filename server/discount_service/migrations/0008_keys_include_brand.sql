-- Every unique key of a brand-keyed table includes brand_key, so that the schema can be
-- distributed by brand (Citus, docs/scaling.md): a distributed table can only enforce a unique key
-- that holds its distribution column, within one shard. code_batches was the one table whose keys
-- did not. Its surrogate key and batch id stay unique on their own (an identity value, a random
-- UUID); what changes is only which columns the indexes hold.
ALTER TABLE code_batches DROP CONSTRAINT code_batches_pkey;
ALTER TABLE code_batches ADD CONSTRAINT code_batches_pkey PRIMARY KEY (brand_key, batch_key);
ALTER TABLE code_batches DROP CONSTRAINT code_batches_batch_id_key;
ALTER TABLE code_batches ADD CONSTRAINT code_batches_brand_key_batch_id_key UNIQUE (brand_key, batch_id);

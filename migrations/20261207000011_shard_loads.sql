-- What each shard's worker spent getting the models ready: seconds loading (0 when its model
-- cache already held them) and whether it did. Shown per shard by GET /v1/audits/{id}/shards.
ALTER TABLE shards ADD COLUMN load_s double precision, ADD COLUMN warm boolean;

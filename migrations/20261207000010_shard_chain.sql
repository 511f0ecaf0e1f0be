-- A layer range of a chain waits for its predecessor (the link ending where it starts): the
-- scheduler enqueues it only once that shard is done, so its hand-over is in storage.
ALTER TABLE shards ADD COLUMN after_key text;

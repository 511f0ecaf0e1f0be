-- How long a shard's task waited on the stream before a worker took it (from the stream entry's
-- own timestamp to the worker's read): the queue's overhead, per shard.
ALTER TABLE shards ADD COLUMN queue_wait_ms double precision;

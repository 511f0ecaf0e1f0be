-- The position of each shard in its audit's plan: shards are enqueued in the order the plan
-- lists them (a dictionary's collect shards before its training shard), not in the order of
-- their keys' text ("crosscoder/block-0004" sorts before "crosscoder/samples-…").
ALTER TABLE shards ADD COLUMN plan_order integer NOT NULL DEFAULT 0;

-- Scheduling state: the model records found by planning, a claim on the fan-in, and shards that
-- are created unenqueued (the scheduler enqueues what has enqueued_at NULL, so nothing stored is
-- lost if Redis is not there when it is stored, or loses its streams later).
ALTER TABLE audits ADD COLUMN models jsonb;
ALTER TABLE audits ADD COLUMN finalizing_at timestamptz;
ALTER TABLE shards ALTER COLUMN enqueued_at DROP NOT NULL;
ALTER TABLE shards ALTER COLUMN enqueued_at DROP DEFAULT;
CREATE INDEX shards_unenqueued ON shards (audit_id) WHERE enqueued_at IS NULL AND status = 'queued';
CREATE INDEX audits_active ON audits (status) WHERE status IN ('queued', 'running');
CREATE INDEX tensor_results_module ON tensor_results (module);

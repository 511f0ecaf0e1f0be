-- Hardening: tokens expire; the fan-in of an audit is fenced by the claim that started it, so
-- a second scheduler that takes over a slow fan-in cannot record its artifacts twice; the
-- reaper looks up unfinished shards by audit.
ALTER TABLE api_tokens ADD COLUMN expires_at timestamptz;
ALTER TABLE audits ADD COLUMN finalizer uuid;
CREATE INDEX shards_unfinished ON shards (audit_id) WHERE status IN ('queued', 'running');

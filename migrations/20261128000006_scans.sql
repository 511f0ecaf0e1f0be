-- Scheduled scans: a watched source of checkpoints, the audit to run on each new one, the rules
-- that turn its results into alerts, and the webhook those alerts are delivered to. A run is
-- unique per (scan, checkpoint content), so a checkpoint is audited once per scan whatever the
-- scheduler's restarts or duplicates do: the run and its audit are inserted in one transaction.
CREATE TABLE scans (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    team_id         uuid NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    name            text NOT NULL,
    request         jsonb NOT NULL,
    source          text NOT NULL,
    paused          boolean NOT NULL DEFAULT false,
    webhook_url     text,
    -- Needed in clear to sign each delivery; shown to the team once, never by the API again.
    webhook_secret  text NOT NULL,
    next_run_at     timestamptz NOT NULL DEFAULT now(),
    last_polled_at  timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (team_id, name)
);
CREATE INDEX scans_due ON scans (next_run_at) WHERE NOT paused;

CREATE TABLE scan_runs (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    scan_id        uuid NOT NULL REFERENCES scans (id) ON DELETE CASCADE,
    -- sha256 of the checkpoint's files (a directory) or of its objects' keys, sizes and ETags.
    checkpoint_id  text NOT NULL,
    location       text NOT NULL,
    base_ref       text,
    audit_id       uuid REFERENCES audits (id) ON DELETE SET NULL,
    -- 'audited' (an audit was started), 'baseline' (the first checkpoint of a scan that compares
    -- each with the previous one), then 'evaluated' or 'failed' once the audit ended.
    state          text NOT NULL CHECK (state IN ('audited', 'baseline', 'evaluated', 'failed')),
    observed       jsonb NOT NULL DEFAULT '{}',
    error          text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    evaluated_at   timestamptz,
    UNIQUE (scan_id, checkpoint_id)
);
CREATE INDEX scan_runs_pending ON scan_runs (created_at) WHERE state = 'audited';

CREATE TABLE alerts (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    team_id          uuid NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    scan_id          uuid NOT NULL REFERENCES scans (id) ON DELETE CASCADE,
    run_id           uuid NOT NULL REFERENCES scan_runs (id) ON DELETE CASCADE,
    audit_id         uuid REFERENCES audits (id) ON DELETE SET NULL,
    rule             text NOT NULL,
    severity         text NOT NULL CHECK (severity IN ('info', 'low', 'medium', 'high', 'critical')),
    observed         double precision,
    threshold        double precision,
    message          text NOT NULL,
    details          jsonb NOT NULL DEFAULT '[]',
    created_at       timestamptz NOT NULL DEFAULT now(),
    acknowledged_at  timestamptz,
    UNIQUE (run_id, rule)
);
CREATE INDEX alerts_team ON alerts (team_id, created_at DESC);

-- The webhook outbox: one row per alert, its id the delivery id the receiver deduplicates on.
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    alert_id         uuid NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    url              text NOT NULL,
    body             text NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    gave_up_at       timestamptz,
    last_status      integer,
    last_error       text
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;

-- NeuroDiff's record of truth: teams and their tokens, audits, their layer shards, per-tensor
-- results (queryable across audits) and the artifacts stored in object storage.

CREATE TABLE teams (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 128),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Only the SHA-256 of a token is stored; the token itself is shown once, at creation.
CREATE TABLE api_tokens (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    team_id       uuid NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    token_sha256  bytea NOT NULL UNIQUE,
    label         text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

CREATE TABLE audits (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    team_id          uuid NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    spec             jsonb NOT NULL,
    base_ref         text NOT NULL,
    target_ref       text NOT NULL,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    shards_total     integer NOT NULL DEFAULT 0,
    shards_done      integer NOT NULL DEFAULT 0,
    error            text,
    idempotency_key  text,
    enqueued_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    UNIQUE (team_id, idempotency_key)
);
CREATE INDEX audits_team_created ON audits (team_id, created_at DESC, id DESC);
CREATE INDEX audits_unenqueued ON audits (created_at) WHERE enqueued_at IS NULL AND status = 'queued';

-- One row per (audit, shard). `attempt` is the fencing token: a worker's write is accepted only
-- with the attempt it was given, so a stale worker's late write is refused.
CREATE TABLE shards (
    audit_id     uuid NOT NULL REFERENCES audits(id) ON DELETE CASCADE,
    shard_key    text NOT NULL,
    status       text NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempt      integer NOT NULL DEFAULT 0,
    worker       text,
    error        text,
    elapsed_s    double precision,
    enqueued_at  timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    PRIMARY KEY (audit_id, shard_key)
);

-- Per-tensor metrics, one row per (audit, tensor): query by audit, tensor, layer or metric.
CREATE TABLE tensor_results (
    audit_id             uuid NOT NULL REFERENCES audits(id) ON DELETE CASCADE,
    shard_key            text NOT NULL,
    name                 text NOT NULL,
    layer                integer,
    module               text NOT NULL,
    shape                bigint[] NOT NULL,
    fro                  double precision NOT NULL,
    base_fro             double precision NOT NULL,
    rel_fro              double precision,
    cosine               double precision NOT NULL,
    max_abs              double precision,
    spectral             double precision,
    nuclear              double precision,
    stable_rank          double precision,
    effective_rank       double precision,
    rank_90              integer,
    rank_99              integer,
    numerical_rank       integer,
    top_singular_values  double precision[] NOT NULL DEFAULT '{}',
    energy_top_k         double precision[] NOT NULL DEFAULT '{}',
    rows_compared        integer,
    method               text NOT NULL,
    PRIMARY KEY (audit_id, name)
);
CREATE INDEX tensor_results_layer ON tensor_results (layer);
CREATE INDEX tensor_results_rel_fro ON tensor_results (rel_fro DESC);

CREATE TABLE artifacts (
    audit_id      uuid NOT NULL REFERENCES audits(id) ON DELETE CASCADE,
    name          text NOT NULL,
    object_key    text NOT NULL,
    size_bytes    bigint NOT NULL,
    sha256        text NOT NULL,
    content_type  text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (audit_id, name)
);

-- Per-block metrics of the analyses that run the models on a corpus (activation differences,
-- the differential logit lens), written by the fan-in once the audit's shards are merged, so
-- that a team can query them across audits like the per-tensor rows.
CREATE TABLE block_results (
    audit_id       uuid NOT NULL REFERENCES audits (id) ON DELETE CASCADE,
    analysis       text NOT NULL CHECK (analysis IN ('activations', 'logit-lens')),
    -- NULL: the output logits (logit lens).
    layer          integer,
    hook           text NOT NULL,
    mean_diff_norm double precision,
    mean_rel_diff  double precision,
    mean_cosine    double precision,
    kl_mean        double precision
);
CREATE UNIQUE INDEX block_results_key ON block_results (audit_id, analysis, coalesce(layer, -1), hook);
CREATE INDEX block_results_layer ON block_results (analysis, layer);

-- Per-latent rows of the dictionary analyses (crosscoder, SAE on differences), written by the
-- fan-in with the audit's other derived rows, so a team can ask across audits for, say, every
-- fine-tune-only latent whose top tokens include a word.
CREATE TABLE latent_results (
    audit_id        uuid NOT NULL REFERENCES audits (id) ON DELETE CASCADE,
    analysis        text NOT NULL CHECK (analysis IN ('crosscoder', 'sae-diff')),
    layer           integer NOT NULL,
    latent          integer NOT NULL,
    class           text NOT NULL CHECK (class IN ('ft_only', 'base_only', 'shared', 'other', 'diff')),
    delta_norm      double precision,
    nu_eps          double precision,
    nu_r            double precision,
    frequency       double precision NOT NULL,
    max_activation  double precision NOT NULL,
    -- The decoder lens's top tokens and the top examples' tokens, as decoded, and lowercased
    -- without surrounding spaces for matching.
    top_tokens      text[] NOT NULL,
    example_tokens  text[] NOT NULL,
    match_tokens    text[] NOT NULL,
    domain_hit      boolean,
    PRIMARY KEY (audit_id, analysis, latent)
);
CREATE INDEX latent_results_class ON latent_results (analysis, class);
CREATE INDEX latent_results_tokens ON latent_results USING gin (match_tokens);

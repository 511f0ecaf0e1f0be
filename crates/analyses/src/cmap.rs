//! Tier II, cross-model activation patching (CMAP): one model run with the other's activation
//! patched in at one block and component; the share of the output gap to the donor it closes,
//! `recovery` = 1 − mean KL(p_donor ‖ p_patched) / mean KL(p_donor ‖ p_recipient). One shard
//! per block.
use std::fmt::Write as _;

use neurodiff_protocol::{
    Analyses, AnalysisKind, AuditResults, AuditSpec, CmapCell, CmapReport, CmapShard, Component,
    Grades, PatchDirection, ShardKey,
};

use crate::charts::grid;
use crate::findings::Finding;
use crate::grade::Truth;
use crate::merge_err;
use crate::Wiring;
use crate::{Analysis, AnalysisError, Figure, Merge, PlanFacts};

#[derive(Debug)]
pub struct Cmap;

/// 1 − kl / gap; 0 when the models do not differ (nothing to recover).
pub fn recovery(kl: f64, gap: f64) -> f64 {
    if gap > 0.0 {
        1.0 - kl / gap
    } else {
        0.0
    }
}

impl Analysis for Cmap {
    fn plan(&self, spec: &AuditSpec, facts: &PlanFacts) -> Result<Vec<ShardKey>, AnalysisError> {
        crate::require_corpus(self.kind(), facts)?;
        Ok(
            crate::blocks("layers", spec.layers.as_deref(), facts.n_layers)?
                .into_iter()
                .map(|layer| ShardKey::Block {
                    analysis: AnalysisKind::Cmap,
                    layer,
                })
                .collect(),
        )
    }

    fn figures(&self, results: &AuditResults) -> Result<Vec<Figure>, AnalysisError> {
        let Some(c) = &results.analyses.cmap else {
            return Ok(Vec::new());
        };
        let layers: Vec<usize> = {
            let mut l: Vec<usize> = c.cells.iter().map(|x| x.layer).collect();
            l.dedup();
            l
        };
        let sites = || {
            PatchDirection::ALL
                .into_iter()
                .flat_map(|d| Component::ALL.map(move |k| (d, k)))
        };
        let cols: Vec<String> = sites().map(|(d, k)| format!("{d}: {k}")).collect();
        let values: Vec<Vec<f64>> = layers
            .iter()
            .map(|&l| {
                sites()
                    .map(|(d, k)| {
                        c.cells
                            .iter()
                            .find(|x| x.layer == l && x.direction == d && x.component == k)
                            .map_or(f64::NAN, |x| x.recovery)
                    })
                    .collect()
            })
            .collect();
        let rows: Vec<String> = layers.iter().map(|l| l.to_string()).collect();
        Ok(vec![Figure {
            name: "cmap.svg".into(),
            svg: grid(
                "cmap.svg",
                "CMAP: recovery of the output gap by block and patched component",
                ("direction: component", "block"),
                (&cols, &rows),
                &values,
                (0.0, 1.0),
            )?,
        }])
    }

    fn grade(&self, analyses: &Analyses, truth: Truth<'_>, g: &mut Grades) {
        let Some(c) = &analyses.cmap else { return };
        // The blocks' own computations: a block's output (resid_post) carries every change
        // before it, so patching it recovers everything at and after the last changed block.
        let top = c
            .cells
            .iter()
            .filter(|c| c.component != Component::ResidPost)
            .max_by(|a, b| {
                a.recovery
                    .total_cmp(&b.recovery)
                    .then(b.layer.cmp(&a.layer))
            });
        if let Some(top) = top {
            g.cmap.cmap_in_trained_blocks = truth.trained().map(|t| t.contains(&top.layer));
            g.cmap.cmap_top = Some(top.clone());
        }
    }

    fn grade_rows(&self, g: &Grades) -> Vec<[String; 2]> {
        let Some(c) = &g.cmap.cmap_top else {
            return Vec::new();
        };
        vec![[
            "CMAP: largest recovery".to_string(),
            format!(
                "block {} {} {} = {:.3}; in the trained blocks: {}",
                c.layer,
                c.component,
                c.direction,
                c.recovery,
                g.cmap
                    .cmap_in_trained_blocks
                    .map_or("n/a".into(), |b| b.to_string())
            ),
        ]]
    }

    fn finding(&self, results: &AuditResults) -> Option<Finding> {
        let c = results.analyses.cmap.as_ref()?;
        let top = c
            .cells
            .iter()
            .filter(|x| x.component != Component::ResidPost)
            .max_by(|a, b| a.recovery.total_cmp(&b.recovery))?;
        let mut f = Finding::new(
            self.kind(),
            format!(
                "largest attention/MLP recovery {:.3} at block {} {} ({})",
                top.recovery, top.layer, top.component, top.direction
            ),
        );
        f.graded = results
            .grades
            .as_ref()
            .and_then(|g| g.cmap.cmap_in_trained_blocks)
            .map(|inside| {
                let side = if inside { "inside" } else { "outside" };
                format!("{side} the trained blocks")
            });
        Some(f)
    }

    fn html(&self, results: &AuditResults) -> String {
        let Some(c) = &results.analyses.cmap else {
            return String::new();
        };
        let mut out = String::new();
        let _ = write!(
            out,
            "<h2>Cross-model activation patching</h2><p>{} samples ({} tokens). Unpatched gap: \
             mean KL(p_ft ‖ p_base) = {:.4e}, KL(p_base ‖ p_ft) = {:.4e}. Recovery = 1 − mean \
             KL(p_donor ‖ p_patched) / the gap: 1 when patching that one site makes the recipient \
             behave as the donor.</p>",
            c.n_samples, c.n_tokens, c.kl_ft_base, c.kl_base_ft
        );
        if let Some(g) = &results.grades {
            if let Some(top) = &g.cmap.cmap_top {
                let _ = write!(
                    out,
                    "<p>Largest recovery: block {} {} ({}), {:.3}{}.</p>",
                    top.layer,
                    top.component,
                    top.direction,
                    top.recovery,
                    match g.cmap.cmap_in_trained_blocks {
                        Some(true) => ", in a trained block",
                        Some(false) => ", <b>outside</b> the trained blocks",
                        None => "",
                    }
                );
            }
        }
        out
    }
}

impl Merge for Cmap {
    type Wire = neurodiff_protocol::sections::Cmap;

    fn merge_shards(
        &self,
        _spec: &AuditSpec,
        mut shards: Vec<CmapShard>,
    ) -> Result<CmapReport, AnalysisError> {
        shards.sort_by_key(|s| s.layer);
        if shards.windows(2).any(|w| w[0].layer == w[1].layer) {
            return Err(merge_err::<Cmap>("two shards of one block".into()));
        }
        let first = shards
            .first()
            .ok_or_else(|| merge_err::<Cmap>("no shard ran".into()))?;
        let (n_tokens, n_samples) = (first.n_tokens, first.n_samples);
        let (gap_fb, gap_bf) = (first.kl_ft_base, first.kl_base_ft);
        let n = n_tokens.max(1) as f64;
        let mut cells = Vec::new();
        for s in &shards {
            // Every block's shard runs the same samples unpatched: the gaps agree bit for bit.
            if (s.n_tokens, s.n_samples, s.kl_ft_base, s.kl_base_ft)
                != (n_tokens, n_samples, gap_fb, gap_bf)
            {
                return Err(merge_err::<Cmap>("shards ran on different tokens".into()));
            }
            for c in &s.cells {
                let gap = match c.direction {
                    PatchDirection::FtIntoBase => gap_fb,
                    PatchDirection::BaseIntoFt => gap_bf,
                };
                cells.push(CmapCell {
                    layer: s.layer,
                    component: c.component,
                    direction: c.direction,
                    recovery: recovery(c.kl, gap),
                    kl: c.kl / n,
                });
            }
        }
        Ok(CmapReport {
            n_samples,
            n_tokens,
            kl_ft_base: gap_fb / n,
            kl_base_ft: gap_bf / n,
            cells,
        })
    }
}

/// CMAP's flags (its blocks are `--layers`, the weight audit's).
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Flags {
    /// CMAP: samples of the corpus patched per block.
    #[arg(long, default_value_t = neurodiff_protocol::CmapOptions::default().samples)]
    pub cmap_samples: usize,
}

impl Flags {
    pub fn options(&self) -> neurodiff_protocol::CmapOptions {
        neurodiff_protocol::CmapOptions {
            samples: self.cmap_samples,
        }
    }
}

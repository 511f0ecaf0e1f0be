//! Hook points named as TransformerLens names them, with cache, replace and add.
//!
//! A forward pass hands every hook point's activation to [`Hooks::apply`]; edits registered for
//! that point run in order (so later layers see the edited value) and the result is cached when
//! asked. Activation patching, steering and model stitching are built on these three verbs.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use tch::Tensor;

use crate::error::{CoreError, Result};

/// The hook points of a block (one enum with the wire types, so results and queries name them
/// alike).
pub use neurodiff_protocol::HookKind;

/// `blocks.{layer}.{kind}`; orders by layer, then by position inside the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookPoint {
    pub layer: usize,
    pub kind: HookKind,
}

impl HookPoint {
    pub fn new(layer: usize, kind: HookKind) -> Self {
        HookPoint { layer, kind }
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blocks.{}.{}", self.layer, self.kind.as_str())
    }
}

impl FromStr for HookPoint {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |message: &str| CoreError::Hook {
            hook: s.to_string(),
            message: message.to_string(),
        };
        let rest = s
            .strip_prefix("blocks.")
            .ok_or_else(|| bad("expected blocks.{layer}.hook_..."))?;
        let (layer, kind) = rest
            .split_once('.')
            .ok_or_else(|| bad("expected blocks.{layer}.hook_..."))?;
        let layer = layer.parse().map_err(|_| bad("layer is not a number"))?;
        let kind = kind.parse::<HookKind>().map_err(|e| bad(&e.0))?;
        Ok(HookPoint { layer, kind })
    }
}

/// An edit at a hook point. `value` broadcasts against the activation `[batch, seq, d_model]`
/// (a `[d_model]` steering vector, a full `[batch, seq, d_model]` patch); with `positions`,
/// only those sequence positions change and `value` broadcasts against `[batch, n, d_model]`.
#[derive(Debug)]
pub enum Edit {
    Replace {
        value: Tensor,
        positions: Option<Vec<i64>>,
    },
    Add {
        value: Tensor,
        positions: Option<Vec<i64>>,
    },
}

/// Which activations to keep and which to edit during one forward pass.
#[derive(Debug, Default)]
pub struct Hooks {
    cache_all: bool,
    skip_logits: bool,
    to_cache: BTreeSet<HookPoint>,
    edits: BTreeMap<HookPoint, Vec<Edit>>,
    cached: BTreeMap<HookPoint, Tensor>,
}

impl Hooks {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cache(mut self, point: HookPoint) -> Self {
        self.to_cache.insert(point);
        self
    }

    pub fn cache_all(mut self) -> Self {
        self.cache_all = true;
        self
    }

    /// The forward pass stops at the final norm: `logits` comes back empty, saving the
    /// unembedding (a third of GPT-2 small's compute) when only hidden states are wanted.
    pub fn without_logits(mut self) -> Self {
        self.skip_logits = true;
        self
    }

    pub fn wants_logits(&self) -> bool {
        !self.skip_logits
    }

    pub fn replace(mut self, point: HookPoint, value: Tensor) -> Self {
        self.edits.entry(point).or_default().push(Edit::Replace {
            value,
            positions: None,
        });
        self
    }

    pub fn add(mut self, point: HookPoint, value: Tensor) -> Self {
        self.edits.entry(point).or_default().push(Edit::Add {
            value,
            positions: None,
        });
        self
    }

    pub fn edit(mut self, point: HookPoint, edit: Edit) -> Self {
        self.edits.entry(point).or_default().push(edit);
        self
    }

    /// Every hook point named in an edit or cache request, so a model can reject layers it lacks.
    pub fn points(&self) -> impl Iterator<Item = &HookPoint> {
        self.to_cache.iter().chain(self.edits.keys())
    }

    pub fn cached(&self, point: &HookPoint) -> Option<&Tensor> {
        self.cached.get(point)
    }

    pub fn take_cache(&mut self) -> BTreeMap<HookPoint, Tensor> {
        std::mem::take(&mut self.cached)
    }

    pub(crate) fn check_layers(&self, n_layers: usize) -> Result<()> {
        match self.points().find(|p| p.layer >= n_layers) {
            Some(p) => Err(CoreError::Hook {
                hook: p.to_string(),
                message: format!("the model has {n_layers} layers (0..={})", n_layers - 1),
            }),
            None => Ok(()),
        }
    }

    /// Runs the edits registered at `point` on `x`, caches the result if asked, returns it.
    pub(crate) fn apply(&mut self, point: HookPoint, x: Tensor) -> Result<Tensor> {
        let mut x = x;
        if let Some(edits) = self.edits.get(&point) {
            for edit in edits {
                x = apply_edit(&x, edit).map_err(|e| CoreError::Hook {
                    hook: point.to_string(),
                    message: e.to_string(),
                })?;
            }
        }
        if self.cache_all || self.to_cache.contains(&point) {
            self.cached.insert(point, x.f_detach_copy()?);
        }
        Ok(x)
    }
}

fn apply_edit(x: &Tensor, edit: &Edit) -> Result<Tensor> {
    let (value, positions, replace) = match edit {
        Edit::Replace { value, positions } => (value, positions, true),
        Edit::Add { value, positions } => (value, positions, false),
    };
    let value = value.f_to_device(x.device())?.f_to_kind(x.kind())?;
    let size = x.size();
    let Some(positions) = positions else {
        let full = value.f_expand(&size, false).map_err(|_| {
            CoreError::Input(format!(
                "value of shape {:?} does not broadcast to the activation {size:?}",
                value.size()
            ))
        })?;
        return Ok(if replace {
            full.f_contiguous()?
        } else {
            x.f_add(&full)?
        });
    };
    let seq = size[1];
    if let Some(&p) = positions.iter().find(|&&p| p < 0 || p >= seq) {
        return Err(CoreError::Input(format!(
            "position {p} is outside the sequence (length {seq})"
        )));
    }
    let index = Tensor::from_slice(positions).f_to_device(x.device())?;
    let target = [size[0], positions.len() as i64, size[2]];
    let part = value.f_expand(target, false).map_err(|_| {
        CoreError::Input(format!(
            "value of shape {:?} does not broadcast to the selected positions {target:?}",
            value.size()
        ))
    })?;
    let part = part.f_contiguous()?.f_to_kind(x.kind())?;
    Ok(if replace {
        x.f_index_copy(1, &index, &part)?
    } else {
        x.f_index_add(1, &index, &part)?
    })
}

//! The hand-over between the links of a chain of layer ranges: a link that is not its chain's
//! last writes both models' residual streams entering its successor's first block, with the
//! sums its analysis has accumulated so far, to the shard store; its successor (on any worker,
//! or a retry of it) starts from that object. Objects are named by content (both models, the
//! corpus's bytes, the shard's options, the samples and the block they enter), so a retried
//! link reads exactly the input its first attempt read.
use std::ops::Range;

use neurodiff_core::corpus::Batch;
use neurodiff_protocol::{LinkShard, ShardKey, ShardSpec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::forward::Pair;
use crate::store::{sha256_hex, ShardStore};
use crate::stream::PairedPass;
use crate::{ExecError, Result, Sources};

/// What every hand-over object starts with.
const MAGIC: &[u8; 8] = b"NDLINK1\n";
/// The most a hand-over's header may claim before it is read (a 16k-batch shard's shapes).
const MAX_HEADER: u64 = 1 << 20;

/// Where a shard of a block-streamed analysis sits in its chain: the blocks it runs, and the
/// hand-overs it reads and writes.
#[derive(Debug, Clone)]
pub struct Chain {
    pub blocks: Range<usize>,
    /// The hand-over it starts from (a link after its chain's first).
    from: Option<String>,
    /// The hand-over it leaves (a link before its chain's last).
    to: Option<String>,
    link: ShardKey,
}

/// The hand-over's header: who wrote it, for which block, and the shapes that follow.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    link: String,
    enters: usize,
    /// `[batch, seq, d_model]` of each batch (both sides alike).
    shapes: Vec<[i64; 3]>,
    sums_len: u64,
}

impl Chain {
    /// The chain position of `spec`'s shard on a model of `n_layers` blocks: a layer range
    /// runs its own blocks; any other shard all of them, from and to nothing. `identity` names
    /// both models' content; `corpus_sha` the corpus's bytes.
    pub fn of(
        spec: &ShardSpec,
        n_layers: usize,
        identity: &str,
        corpus_sha: &str,
    ) -> Result<Chain> {
        let ShardKey::Range {
            analysis,
            start,
            end,
            first,
            last,
        } = spec.shard
        else {
            return Ok(Chain {
                blocks: 0..n_layers,
                from: None,
                to: None,
                link: spec.shard,
            });
        };
        if first >= last || last > n_layers {
            return Err(ExecError::Io(format!(
                "shard {}: blocks {first}..{last} do not lie within the model's {n_layers}",
                spec.shard
            )));
        }
        // Every field of the spec but its key: options, corpus options, dtype, models.
        let mut neutral = spec.clone();
        neutral.shard = ShardKey::NonLayer;
        let spec_json =
            serde_json::to_string(&neutral).map_err(|e| ExecError::Io(e.to_string()))?;
        let id = sha256_hex(format!("{identity}\n{corpus_sha}\n{spec_json}").as_bytes());
        let name = |block: usize| {
            format!(
                "ranges/{}/{analysis}/samples-{start:06}-{end:06}/enters-{block:04}",
                &id[..32]
            )
        };
        Ok(Chain {
            blocks: first..last,
            from: (first > 0).then(|| name(first)),
            to: (last < n_layers).then(|| name(last)),
            link: spec.shard,
        })
    }

    /// The predecessor's sums and both models' passes resumed at this link's first block, or
    /// `None` for a shard that starts at the embeddings.
    pub fn resume<'a, S: DeserializeOwned>(
        &self,
        store: &dyn ShardStore,
        pair: &'a Pair,
        sources: &'a Sources,
        batches: &[Batch],
    ) -> Result<Option<(S, PairedPass<'a>)>> {
        let Some(key) = &self.from else {
            return Ok(None);
        };
        let missing = || {
            ExecError::Io(format!(
                "shard {}: the hand-over `{key}` its predecessor left is missing",
                self.link
            ))
        };
        let bytes = store.get(key)?.ok_or_else(missing)?;
        let (sums, states) = read(&bytes, key, self.blocks.start, batches, pair.device())?;
        let pass = PairedPass::resume(pair, sources, batches, self.blocks.start, states)?;
        Ok(Some((sums, pass)))
    }

    /// Writes the hand-over for the next link (when there is one): the passes' residual
    /// streams and `sums`.
    pub fn hand_over<S: Serialize>(
        &self,
        store: &dyn ShardStore,
        sums: &S,
        pass: &PairedPass<'_>,
        elapsed_s: f64,
    ) -> Result<Option<LinkShard>> {
        let Some(key) = &self.to else {
            return Ok(None);
        };
        let sums = serde_json::to_vec(sums).map_err(|e| ExecError::Io(e.to_string()))?;
        let mut shapes = Vec::new();
        let mut data = Vec::new();
        for b in 0..pass.batches() {
            let states = pass.states(b)?;
            let size = states[0].size();
            let shape: [i64; 3] = size.as_slice().try_into().map_err(|_| {
                ExecError::Io(format!(
                    "a residual stream of shape {size:?}, not [batch, seq, d]"
                ))
            })?;
            shapes.push(shape);
            for t in states {
                data.extend(f32_bytes(t)?);
            }
        }
        let header = Header {
            link: self.link.to_string(),
            enters: self.blocks.end,
            shapes,
            sums_len: sums.len() as u64,
        };
        let header = serde_json::to_vec(&header).map_err(|e| ExecError::Io(e.to_string()))?;
        let mut bytes = Vec::with_capacity(16 + header.len() + sums.len() + data.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
        bytes.extend(header);
        bytes.extend(sums);
        bytes.extend(data);
        let stored = store.put(key, bytes)?;
        Ok(Some(LinkShard {
            link: self.link,
            state: stored.key,
            bytes: stored.bytes,
            sha256: stored.sha256,
            elapsed_s,
        }))
    }
}

/// A tensor's values as little-endian f32 bytes.
fn f32_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t
        .f_to_kind(Kind::Float)?
        .f_to_device(Device::Cpu)?
        .f_flatten(0, -1)?;
    let values = Vec::<f32>::try_from(&t).map_err(neurodiff_core::CoreError::from)?;
    Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// Reads a hand-over written for block `enters`, checked against the shard's `batches`.
#[allow(clippy::type_complexity)]
fn read<S: DeserializeOwned>(
    bytes: &[u8],
    key: &str,
    enters: usize,
    batches: &[Batch],
    device: Device,
) -> Result<(S, Vec<[Tensor; 2]>)> {
    let bad = |why: String| ExecError::Io(format!("hand-over `{key}`: {why}"));
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| bad("not a NeuroDiff hand-over".into()))?;
    let (len, rest) = rest
        .split_first_chunk::<8>()
        .ok_or_else(|| bad("truncated header".into()))?;
    let len = u64::from_le_bytes(*len);
    if len > MAX_HEADER || len > rest.len() as u64 {
        return Err(bad(format!("a header of {len} bytes")));
    }
    let (header, rest) = rest.split_at(len as usize);
    let header: Header =
        serde_json::from_slice(header).map_err(|e| bad(format!("its header: {e}")))?;
    if header.enters != enters {
        return Err(bad(format!(
            "written for block {}, read for block {enters}",
            header.enters
        )));
    }
    if header.shapes.len() != batches.len() {
        return Err(bad(format!(
            "{} batches, the shard has {}",
            header.shapes.len(),
            batches.len()
        )));
    }
    if header.sums_len > rest.len() as u64 {
        return Err(bad("truncated sums".into()));
    }
    let (sums, mut data) = rest.split_at(header.sums_len as usize);
    let sums: S = serde_json::from_slice(sums).map_err(|e| bad(format!("its sums: {e}")))?;
    let mut states = Vec::with_capacity(batches.len());
    for (shape, batch) in header.shapes.iter().zip(batches) {
        let ids = batch.ids.size();
        if shape[..2] != ids[..] {
            return Err(bad(format!(
                "a batch of shape {shape:?}, the shard's is {ids:?}"
            )));
        }
        let n = shape
            .iter()
            .try_fold(4usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
            .ok_or_else(|| bad(format!("a batch of shape {shape:?}")))?;
        let mut side = || -> Result<Tensor> {
            if data.len() < n {
                return Err(bad("truncated residual streams".into()));
            }
            let (this, next) = data.split_at(n);
            data = next;
            let values: Vec<f32> = this
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok(Tensor::from_slice(&values)
                .f_view(*shape)?
                .f_to_device(device)?)
        };
        states.push([side()?, side()?]);
    }
    if !data.is_empty() {
        return Err(bad(format!(
            "{} bytes after the residual streams",
            data.len()
        )));
    }
    Ok((sums, states))
}

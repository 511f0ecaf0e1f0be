//! What the patching, stitching, steering and trace shards share: per-token KL and next-token
//! loss from logits (in f64, chunked so a large vocabulary stays in bounds), the next-token
//! targets of a batch, the organism's ground truth, and greedy and nucleus generation.
use neurodiff_core::corpus::Batch;
use neurodiff_core::guard::read_checked;
use neurodiff_core::organisms::trained::rng::Rng;
use neurodiff_core::tokenizer::Tokenizer;
use neurodiff_core::{CoreError, Hooks, Model};
use neurodiff_protocol::limits::{
    clip_text, MAX_CONTEXT_TEXT_BYTES, MAX_GENERATED_TEXT_BYTES, MAX_TOKEN_TEXT_BYTES,
};
use neurodiff_protocol::{GenerationOptions, GroundTruth, TokenProb};
use tch::{Device, Kind, Tensor};

use crate::{ExecError, Result, Sources};

/// The file an organism's ground truth is in, beside its weights.
pub const GROUND_TRUTH_FILE: &str = "ground_truth.json";

/// Rows × vocabulary of one f64 chunk.
const CHUNK_ELEMENTS: i64 = 1 << 23;

fn rows_per_chunk(vocab: i64) -> i64 {
    (CHUNK_ELEMENTS / vocab.max(1)).max(1)
}

/// Per row, KL(p || q) of two logit matrices `[n, V]` over ids `0..shared`.
pub fn kl_rows(p: &Tensor, q: &Tensor, shared: i64) -> Result<Vec<f64>> {
    let n = p.size()[0];
    let step = rows_per_chunk(shared);
    let mut out = Vec::with_capacity(n as usize);
    let mut start = 0;
    while start < n {
        let len = step.min(n - start);
        let lp = log_probs(&p.f_narrow(0, start, len)?, shared)?;
        let lq = log_probs(&q.f_narrow(0, start, len)?, shared)?;
        let k = lp
            .f_exp()?
            .f_mul(&lp.f_sub(&lq)?)?
            .f_sum_dim_intlist(-1, false, Kind::Double)?;
        out.extend(to_f64(&k)?);
        start += len;
    }
    Ok(out)
}

fn log_probs(logits: &Tensor, shared: i64) -> Result<Tensor> {
    Ok(logits
        .f_narrow(-1, 0, shared)?
        .f_to_kind(Kind::Double)?
        .f_log_softmax(-1, Kind::Double)?)
}

/// Per row, −log p(label) and (when `ids` is given) the probability mass on `ids`.
pub fn nll_rows(
    logits: &Tensor,
    labels: &Tensor,
    ids: Option<&Tensor>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (n, vocab) = (logits.size()[0], logits.size()[1]);
    let step = rows_per_chunk(vocab);
    let (mut nll, mut mass) = (Vec::with_capacity(n as usize), Vec::new());
    let mut start = 0;
    while start < n {
        let len = step.min(n - start);
        let lp = log_probs(&logits.f_narrow(0, start, len)?, vocab)?;
        let l = labels.f_narrow(0, start, len)?.f_unsqueeze(1)?;
        nll.extend(to_f64(&lp.f_gather(1, &l, false)?.f_neg()?)?);
        if let Some(ids) = ids {
            let m =
                lp.f_exp()?
                    .f_index_select(1, ids)?
                    .f_sum_dim_intlist(-1, false, Kind::Double)?;
            mass.extend(to_f64(&m)?);
        }
        start += len;
    }
    Ok((nll, mass))
}

/// The positions of a batch that have a next token: their flat index into `[batch * seq]` and
/// that token.
#[derive(Debug)]
pub struct Targets {
    pub index: Tensor,
    pub labels: Tensor,
}

impl Targets {
    pub fn of(batch: &Batch) -> Result<Targets> {
        let seq = batch.ids.size()[1] as usize;
        let ids = Vec::<i64>::try_from(batch.ids.f_flatten(0, -1)?).map_err(CoreError::from)?;
        let (mut index, mut labels) = (Vec::new(), Vec::new());
        for (r, &len) in batch.lengths.iter().enumerate() {
            for t in 0..len.saturating_sub(1) {
                index.push((r * seq + t) as i64);
                labels.push(ids[r * seq + t + 1]);
            }
        }
        let device = batch.ids.device();
        Ok(Targets {
            index: Tensor::from_slice(&index).f_to_device(device)?,
            labels: Tensor::from_slice(&labels).f_to_device(device)?,
        })
    }

    /// The rows of `logits` (`[batch, seq, V]`) at the targets' positions.
    pub fn select(&self, logits: &Tensor) -> Result<Tensor> {
        let v = *logits.size().last().unwrap_or(&1);
        Ok(logits.f_reshape([-1, v])?.f_index_select(0, &self.index)?)
    }

    pub fn len(&self) -> usize {
        self.index.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The largest ground_truth.json read.
const MAX_GROUND_TRUTH_BYTES: u64 = 1 << 20;

/// The organism's ground truth, when the fine-tune's directory holds a ground_truth.json of at
/// most 1 MiB, read like every other file of the fine-tune: without blocking, a regular file,
/// and (in the service) the very file the policy vetted with the model's files, so a directory
/// swapped for a link to another team's organism meanwhile is refused. It grades the audit and
/// decides nothing else: a fine-tune that ships a false one only mislabels its own grades.
pub fn ground_truth(sources: &Sources) -> Option<GroundTruth> {
    let path = sources.target_dir.join(GROUND_TRUTH_FILE);
    let guard = sources.target_guard();
    let (bytes, _) = read_checked(&path, "ground truth", MAX_GROUND_TRUTH_BYTES, guard).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    GroundTruth::from_organism(&value)
}

/// The text of `ids` as a result shows it: one token's text is cut to
/// [`MAX_TOKEN_TEXT_BYTES`], several tokens' to that much per token and at most
/// [`MAX_CONTEXT_TEXT_BYTES`] (the tokenizer is the team's input; a result must stay small).
pub fn shown_text(tokenizer: &Tokenizer, ids: &[u32]) -> String {
    let max = (MAX_TOKEN_TEXT_BYTES * ids.len().max(1)).min(MAX_CONTEXT_TEXT_BYTES);
    // Never more ids than the bound has bytes: each shows at least one.
    let ids = &ids[..ids.len().min(MAX_CONTEXT_TEXT_BYTES)];
    clip_text(tokenizer.decode(ids, false).unwrap_or_default(), max)
}

/// The top `k` of a probability vector `[V]`, with the decoded text of each id.
pub fn top_tokens(probs: &Tensor, k: usize, tokenizer: &Tokenizer) -> Result<Vec<TokenProb>> {
    let k = (k as i64).min(probs.size()[0]);
    let (values, ids) = probs.f_topk(k, -1, true, true)?;
    let values = to_f64(&values)?;
    let ids = Vec::<i64>::try_from(&ids).map_err(CoreError::from)?;
    Ok(ids
        .into_iter()
        .zip(values)
        .map(|(id, prob)| TokenProb {
            id: id as usize,
            token: shown_text(tokenizer, &[id as u32]),
            prob,
        })
        .collect())
}

/// The token ids of a prompt as the corpus is tokenized (with BOS).
pub fn encode_prompt(tokenizer: &Tokenizer, prompt: &str) -> Result<Vec<i64>> {
    let ids = neurodiff_core::tokenizer::encode(tokenizer, prompt)?;
    if ids.is_empty() {
        return Err(ExecError::Io(format!(
            "the prompt {prompt:?} has no tokens"
        )));
    }
    Ok(ids.into_iter().map(i64::from).collect())
}

/// Continues `prompt` greedily, or by nucleus sampling when `rng` is given, `hooks` building
/// the edits of every step (steering). Stops at `max_new_tokens` or the model's context.
pub fn generate(
    model: &Model,
    tokenizer: &Tokenizer,
    prompt: &[i64],
    opts: &GenerationOptions,
    mut rng: Option<&mut Rng>,
    hooks: &dyn Fn() -> Hooks,
    max_len: usize,
) -> Result<String> {
    let mut ids = prompt.to_vec();
    for _ in 0..opts.max_new_tokens {
        if ids.len() >= max_len {
            break;
        }
        let input = Tensor::from_slice(&ids).f_to_device(model.device())?;
        let out = model.forward(&input, &mut hooks())?;
        let last = out
            .logits
            .f_select(0, 0)?
            .f_select(0, ids.len() as i64 - 1)?
            .f_to_kind(Kind::Double)?
            .f_to_device(Device::Cpu)?;
        let next = match rng.as_deref_mut() {
            None => last.f_argmax(0, false)?.f_int64_value(&[])?,
            Some(rng) => {
                let p = to_f64(
                    &last
                        .f_div_scalar(opts.temperature)?
                        .f_softmax(0, Kind::Double)?,
                )?;
                nucleus(&p, opts.top_p, rng.uniform()) as i64
            }
        };
        ids.push(next);
    }
    let new: Vec<u32> = ids[prompt.len()..].iter().map(|&i| i as u32).collect();
    Ok(clip_text(
        tokenizer.decode(&new, false).unwrap_or_default(),
        MAX_GENERATED_TEXT_BYTES,
    ))
}

/// Draws from the smallest set of most likely ids whose mass reaches `top_p`, with `u` in [0, 1).
pub fn nucleus(p: &[f64], top_p: f64, u: f64) -> usize {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    let mut kept = Vec::new();
    let mut mass = 0.0;
    for &i in &order {
        kept.push(i);
        mass += p[i];
        if mass >= top_p {
            break;
        }
    }
    let mut target = u * mass;
    for &i in &kept {
        target -= p[i];
        if target < 0.0 {
            return i;
        }
    }
    *kept.last().unwrap_or(&0)
}

/// A float tensor's values as f64.
pub fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    let t = t
        .f_to_kind(Kind::Double)?
        .f_to_device(Device::Cpu)?
        .f_flatten(0, -1)?;
    Ok(Vec::<f64>::try_from(&t).map_err(CoreError::from)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nucleus_keeps_the_smallest_set_reaching_top_p() {
        let p = [0.1, 0.6, 0.3];
        assert_eq!(nucleus(&p, 0.5, 0.99), 1);
        assert_eq!(nucleus(&p, 0.85, 0.0), 1);
        assert_eq!(nucleus(&p, 0.85, 0.99), 2);
        assert_eq!(nucleus(&p, 1.0, 0.999), 0);
    }
}

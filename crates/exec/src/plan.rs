//! Planning an audit: both models' sizes checked against the limits before anything is
//! allocated from what a config claims, the shard plan made, and the plan record (every file
//! hashed) built; the embedded audit and the service's planning task call the same functions.
use std::sync::atomic::AtomicBool;

use neurodiff_analyses::PlanFacts;
use neurodiff_protocol::{AuditSpec, Limits, ModelRecord, ShardSpec};

use crate::corpus::CorpusText;
use crate::record::{record_with, Content, HashCache};
use crate::shard::Executor;
use crate::sources::{OpenTarget, Sources};
use crate::ExecError;

/// One side of the pair as its record names it.
#[derive(Debug, Clone, Copy)]
pub struct Named<'a> {
    /// As the request gave it.
    pub reference: &'a str,
    /// Fixed content (a hub id's commit), else the reference itself.
    pub pinned: &'a str,
}

/// Both sides' content records (every weight file hashed from the bytes that were opened),
/// stoppable through `stop`: what the plan record and every shard's check compare with.
pub fn hash_sides(
    names: [Named<'_>; 2],
    contents: [&[Content<'_>]; 2],
    hashes: &HashCache,
    stop: &AtomicBool,
) -> crate::Result<(ModelRecord, ModelRecord)> {
    let [base, target] = names;
    Ok((
        record_with(base.reference, base.pinned, contents[0], hashes, stop)?,
        record_with(target.reference, target.pinned, contents[1], hashes, stop)?,
    ))
}

/// The shard plan of `spec` on the opened `sources` (and `corpus`, when an analysis runs the
/// models): the limits checked first, then each analysis's shards. The embedded audit and the
/// service's planning task both call this.
pub fn plan_audit(
    sources: &Sources,
    spec: &AuditSpec,
    contents: [&[Content<'_>]; 2],
    corpus: Option<&CorpusText>,
    limits: &Limits,
) -> crate::Result<Vec<ShardSpec>> {
    let n_layers = sources.n_layers()?;
    check_limits(sources, contents, n_layers, spec, limits)?;
    if spec.needs_corpus() {
        let tokenizer = sources
            .base_dir
            .join(neurodiff_core::checkpoint::TOKENIZER_FILE);
        if !tokenizer.is_file() && !sources.base.is_gguf() {
            return Err(ExecError::Io(
                "the base model has no tokenizer.json, which the activation analyses need to \
                 tokenize the corpus"
                    .into(),
            ));
        }
        let Some(corpus) = corpus else {
            return Err(ExecError::Io(
                "no corpus was read for the activation analyses".into(),
            ));
        };
        check_chat(sources, corpus, spec.corpus.token_filter)?;
        check_positions(sources, spec.corpus.seq_len)?;
    }
    let config = sources.base.config_json()?;
    let d_model = ["hidden_size", "n_embd", "d_model"]
        .iter()
        .find_map(|k| config.get(*k).and_then(serde_json::Value::as_u64))
        .map(|d| d as usize);
    let facts = PlanFacts {
        n_layers,
        n_samples: corpus.map(|c| c.samples.len()),
        d_model,
        block_bytes: block_bytes(sources, n_layers),
    };
    neurodiff_analyses::plan(spec, &facts).map_err(|e| ExecError::Io(e.to_string()))
}

/// Both models' stored weight bytes of each block (an adapter's target counts as the base:
/// its pair is the base's blocks plus the low-rank factors).
fn block_bytes(sources: &Sources, n_layers: usize) -> Vec<u64> {
    let mut bytes = vec![0u64; n_layers];
    let mut add = |ckpt: &neurodiff_core::checkpoint::Checkpoint| {
        for name in ckpt.names() {
            let layer = neurodiff_protocol::naming::layer_of(name);
            if let (Some(l), Some(meta)) = (layer, ckpt.meta(name)) {
                if let Some(b) = bytes.get_mut(l) {
                    *b += meta.stored_bytes();
                }
            }
        }
    };
    add(&sources.base);
    match &sources.target {
        OpenTarget::Checkpoint(c) => add(c),
        OpenTarget::Adapter(_) => add(&sources.base),
    }
    bytes
}

/// Refuses a `seq_len` beyond what a model with learned positions can embed (GPT-2's
/// `n_positions`), here rather than in the first shard.
fn check_positions(sources: &Sources, seq_len: usize) -> crate::Result<()> {
    let mut checkpoints = vec![("base", &sources.base)];
    if let OpenTarget::Checkpoint(c) = &sources.target {
        checkpoints.push(("fine-tuned", c));
    }
    for (side, ckpt) in checkpoints {
        let config = ckpt.config_json()?;
        if let Some(n) = config
            .get("n_positions")
            .and_then(serde_json::Value::as_u64)
        {
            if seq_len as u64 > n {
                return Err(ExecError::Io(format!(
                    "--seq-len {seq_len} exceeds the {side} model's n_positions = {n} (config.json)"
                )));
            }
        }
    }
    Ok(())
}

/// Refuses models larger than the limits allow, naming the limit and its flag (`contents`: the
/// files of the base and of the target, as `Sources::contents` read them). Runs before
/// the shard plan is made, so a config claiming a billion blocks allocates nothing.
pub fn check_limits(
    sources: &Sources,
    contents: [&[Content<'_>]; 2],
    n_layers: usize,
    spec: &AuditSpec,
    limits: &Limits,
) -> crate::Result<()> {
    let over = |what: String| Err(ExecError::Io(what));
    if n_layers > limits.max_blocks {
        return over(format!(
            "config.json claims {n_layers} blocks; the limit is {} (--max-blocks)",
            limits.max_blocks
        ));
    }
    let base_tensors = sources.base.names().count();
    let target_tensors = match &sources.target {
        OpenTarget::Checkpoint(c) => c.names().count(),
        OpenTarget::Adapter(a) => a.pairs.len(),
    };
    for (side, n) in [("base", base_tensors), ("fine-tuned", target_tensors)] {
        if n > limits.max_tensors {
            return over(format!(
                "the {side} checkpoint holds {n} tensors; the limit is {} (--max-tensors)",
                limits.max_tensors
            ));
        }
    }
    for (side, files) in ["base", "fine-tuned"].into_iter().zip(contents) {
        let bytes: u64 = files.iter().map(|f| f.bytes.len() as u64).sum();
        if bytes > limits.max_model_bytes {
            return over(format!(
                "the {side} model's files hold {bytes} bytes; the limit is {} (--max-model-bytes)",
                limits.max_model_bytes
            ));
        }
    }
    for kind in &spec.analyses {
        if let Executor::Tensors(t) = crate::executor(*kind) {
            t.check_limits(sources, spec, limits)?;
        }
    }
    Ok(())
}

/// A token filter needs a chat corpus, and a chat corpus the base model's chat template.
fn check_chat(
    sources: &Sources,
    corpus: &CorpusText,
    filter: neurodiff_protocol::TokenFilter,
) -> crate::Result<()> {
    if !filter.is_all() && !corpus.chat {
        return Err(ExecError::Io(format!(
            "corpus.token_filter `{}` needs a chat corpus (JSON Lines with `messages`); `{}` is text",
            serde_json::to_value(filter).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            corpus.record.source
        )));
    }
    if corpus.chat
        && neurodiff_core::chat::ChatTemplate::load_guarded(
            &sources.base_dir,
            sources.base.guard(),
        )?
        .is_none()
    {
        return Err(ExecError::Io(format!(
            "corpus `{}` is chat (`messages`), but the base model has no chat template \
             (chat_template.jinja, tokenizer_config.json `chat_template`, or a GGUF's \
             tokenizer.chat_template) to render it",
            corpus.record.source
        )));
    }
    Ok(())
}

//! Fuzzes what planning opens, the way a worker opens it: a checkpoint's safetensors header,
//! its config.json, a shard index and a PEFT adapter config, each mutated from the committed
//! seeds (tests/fuzz/corpus) and run through `Sources::open`, the limits check, the shard plan
//! and (when all pass) one shard. Every case must end in Ok or a named error, never a panic,
//! and hold at most 16 MiB at once: a header or config claiming huge sizes must be refused,
//! not allocated. ND_FUZZ_CASES sets the cases per target (default 256).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/fuzz/common.rs"]
mod common;
#[path = "common/mod.rs"]
mod organisms;

use std::path::Path;

use neurodiff_core::reference::HubOptions;
use neurodiff_exec::run_shard;
use neurodiff_exec::{plan_audit, Sources};
use neurodiff_protocol::{AnalysisKind, AuditSpec, Limits, Target};

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

const BOUND: usize = 16 << 20;

fn seed(target: &str, name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fuzz/corpus")
            .join(target)
            .join(name),
    )
    .unwrap()
}

fn write_checkpoint(dir: &Path, config: &[u8], weights: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();
}

/// The planning path of a worker, then one shard if planning passes.
fn plan_and_run(base: &Path, target: Target) {
    let Ok(sources) = Sources::open(
        &base.display().to_string(),
        &target,
        &HubOptions::from_env(),
    ) else {
        return;
    };
    let Ok((base_files, target_files)) = sources.contents() else {
        return;
    };
    let contents = [base_files.as_slice(), target_files.as_slice()];
    let spec = AuditSpec::new(
        base.display().to_string(),
        target,
        vec![AnalysisKind::Weights],
    );
    let Ok(shards) = plan_audit(&sources, &spec, contents, None, &Limits::default()) else {
        return;
    };
    if let Some(first) = shards.first() {
        let Ok(dir) = tempfile::tempdir() else { return };
        let store = neurodiff_exec::store::DirStore::new(dir.path());
        let env = neurodiff_exec::ShardEnv {
            store: &store,
            device: tch::Device::Cpu,
            models: &neurodiff_exec::ModelCache::off(),
            ready: None,
        };
        let _ = run_shard(&sources, first, None, env, &mut |_| true);
    }
}

#[test]
fn safetensors_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let config = seed("config", "llama.json");
    let base = tmp.path().join("base");
    write_checkpoint(
        &base,
        &config,
        &seed("safetensors", "llama-two-tensors.safetensors"),
    );
    common::fuzz("safetensors", BOUND, |bytes| {
        let ft = tmp.path().join("ft");
        write_checkpoint(&ft, &config, bytes);
        plan_and_run(
            &base,
            Target::Checkpoint {
                reference: ft.display().to_string(),
            },
        );
    });
}

#[test]
fn config_json() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = seed("safetensors", "llama-two-tensors.safetensors");
    common::fuzz("config", BOUND, |bytes| {
        let (base, ft) = (tmp.path().join("base"), tmp.path().join("ft"));
        write_checkpoint(&base, bytes, &weights);
        write_checkpoint(&ft, bytes, &weights);
        plan_and_run(
            &base,
            Target::Checkpoint {
                reference: ft.display().to_string(),
            },
        );
    });
}

#[test]
fn shard_index() {
    let tmp = tempfile::tempdir().unwrap();
    let config = seed("config", "llama.json");
    let base = tmp.path().join("base");
    let whole = seed("safetensors", "llama-two-tensors.safetensors");
    write_checkpoint(&base, &config, &whole);
    // The two shards the seed index names, each holding one of the base's tensors.
    let ft = tmp.path().join("ft");
    std::fs::create_dir_all(&ft).unwrap();
    std::fs::write(ft.join("config.json"), &config).unwrap();
    let base_ckpt = neurodiff_core::Checkpoint::open(&base).unwrap();
    for (file, tensor) in [
        (
            "model-00001-of-00002.safetensors",
            "model.layers.0.mlp.down_proj.weight",
        ),
        (
            "model-00002-of-00002.safetensors",
            "model.embed_tokens.weight",
        ),
    ] {
        let (meta, data) = base_ckpt.bytes(tensor).unwrap();
        let view =
            safetensors::tensor::TensorView::new(meta.dtype, meta.shape.clone(), data).unwrap();
        std::fs::write(
            ft.join(file),
            safetensors::serialize([(tensor, view)], None).unwrap(),
        )
        .unwrap();
    }
    common::fuzz("index", BOUND, |bytes| {
        std::fs::write(ft.join("model.safetensors.index.json"), bytes).unwrap();
        plan_and_run(
            &base,
            Target::Checkpoint {
                reference: ft.display().to_string(),
            },
        );
    });
}

#[test]
fn adapter_config() {
    let tmp = tempfile::tempdir().unwrap();
    let config = seed("config", "llama.json");
    let base = tmp.path().join("base");
    let q = "model.layers.0.self_attn.q_proj.weight";
    let f32s = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
            .collect()
    };
    let q_data = f32s(4);
    fn view(shape: Vec<usize>, data: &[u8]) -> safetensors::tensor::TensorView<'_> {
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, data).unwrap()
    }
    let base_bytes = safetensors::serialize([(q, view(vec![2, 2], &q_data))], None).unwrap();
    write_checkpoint(&base, &config, &base_bytes);
    let adapter = tmp.path().join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    let (a, b) = (f32s(4), f32s(4));
    let weights = safetensors::serialize(
        [
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                view(vec![2, 2], &a),
            ),
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                view(vec![2, 2], &b),
            ),
        ],
        None,
    )
    .unwrap();
    std::fs::write(adapter.join("adapter_model.safetensors"), weights).unwrap();
    common::fuzz("adapter_config", BOUND, |bytes| {
        std::fs::write(adapter.join("adapter_config.json"), bytes).unwrap();
        plan_and_run(
            &base,
            Target::Adapter {
                reference: adapter.display().to_string(),
            },
        );
    });
}

/// The corpus reader with hostile sizes and line lengths: each mutated file is read as text
/// and as JSON Lines, then as one line (newlines dropped, repeated), and tokenized for the
/// longest `seq_len` a request may give; the memory held stays bounded whatever the lines are.
#[test]
fn corpus_reader() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures/llama");
    let tok = neurodiff_core::tokenizer::load(&fixtures).unwrap();
    let limits = Limits::default();
    // A sample is tokenized up to (seq_len + 16) × its longest token + 4 KiB bytes; at 8192
    // tokens that is tens of KiB, at a few hundred bytes of tokenizer state per byte.
    const CORPUS_BOUND: usize = 128 << 20;
    common::fuzz("corpus", CORPUS_BOUND, |bytes| {
        let one_line: Vec<u8> = bytes
            .iter()
            .copied()
            .filter(|b| *b != b'\n')
            .cycle()
            .take(bytes.len().saturating_mul(64).min(4 << 20))
            .collect();
        for (name, data) in [
            ("c.txt", bytes),
            ("c.jsonl", bytes),
            ("c.txt", one_line.as_slice()),
        ] {
            for seq_len in [1, 8192] {
                let opts = neurodiff_protocol::CorpusOptions {
                    seq_len,
                    max_samples: 16,
                    ..Default::default()
                };
                if let Ok(c) = neurodiff_exec::corpus::from_bytes("c", name, data, &opts, &limits) {
                    let ids = neurodiff_core::corpus::encode(&tok, &c.samples, seq_len).unwrap();
                    assert!(ids.iter().all(|s| s.len() <= seq_len));
                }
            }
        }
    });
}

/// Merging shard outputs (the scheduler's fan-in): outputs of a real audit of a planted
/// organism, one of them mutated, merged with the others. Whatever a shard claims (counts,
/// widths, ranges), the merge ends in Ok or a named error, and holds no more than its bound.
#[test]
fn shard_output_merging() {
    use neurodiff_core::organisms::{write_organisms, OrganismSpec};
    use neurodiff_protocol::ShardOutput;
    let tmp = tempfile::tempdir().unwrap();
    write_organisms(tmp.path(), &OrganismSpec::default()).unwrap();
    let mut spec = AuditSpec::new(
        tmp.path().join("base").display().to_string(),
        Target::Checkpoint {
            reference: tmp.path().join("rank-update").display().to_string(),
        },
        vec![
            AnalysisKind::Weights,
            AnalysisKind::Activations,
            AnalysisKind::LogitLens,
        ],
    );
    spec.corpus.seq_len = 8;
    spec.corpus.max_samples = 4;
    spec.corpus.shard_samples = 2;
    spec.validate().unwrap();
    let (outputs, plan) = organisms::shard_outputs(&spec).unwrap();
    // Unmutated, they merge.
    neurodiff_analyses::assemble(&spec, plan.clone(), outputs.clone(), 0).unwrap();
    let seeds: Vec<Vec<u8>> = outputs
        .iter()
        .map(|o| serde_json::to_vec(o).unwrap())
        .collect();
    common::fuzz_seeds("shard outputs", seeds, BOUND, |bytes| {
        let Ok(mutated) = serde_json::from_slice::<ShardOutput>(bytes) else {
            return;
        };
        let kind = std::mem::discriminant(&mutated);
        for i in (0..outputs.len()).filter(|&i| std::mem::discriminant(&outputs[i]) == kind) {
            let mut merged = outputs.clone();
            merged[i] = mutated.clone();
            let _ = neurodiff_analyses::assemble(&spec, plan.clone(), merged, 0);
        }
    });
}

//! GGUF checkpoints against the anchors (scripts/gguf_reference.py): gguf-py's dequantization of
//! every block type, transformers loading the same GGUF (logits, hidden states, token ids and
//! every dequantized, un-permuted weight), and hostile files refused with the reason.
#![allow(clippy::expect_used, clippy::unwrap_used)]
mod common;

use std::path::PathBuf;

use common::{fixture, max_abs_diff, TOL};
use neurodiff_core::gguf::{self, quant, reader};
use neurodiff_core::{inspect, tokenizer, Checkpoint, CoreError, Model};
use tch::{Device, Kind, Tensor};

fn gguf_fixture(name: &str) -> PathBuf {
    fixture("gguf").join(name)
}

fn reference(name: &str) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(gguf_fixture(&format!("{name}.reference.safetensors")))
        .expect("read reference")
        .into_iter()
        .collect()
}

#[test]
fn every_block_type_dequantizes_as_gguf_py_does() {
    let bytes = std::fs::read(gguf_fixture("quants.gguf")).unwrap();
    let header = reader::parse(&bytes).expect("header");
    let expected: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(gguf_fixture("quants.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let mut checked = Vec::new();
    for t in &header.tensors {
        let mut out = vec![0f32; t.numel() as usize];
        let result = quant::dequantize(t.ty, &bytes[t.start..t.end], &mut out);
        if t.name == "q5_0" {
            let err = result.expect_err("Q5_0 is not read");
            assert!(err.contains("Q5_0") && err.contains("Q4_K"), "{err}");
            continue;
        }
        result.unwrap();
        let got = Tensor::from_slice(&out).view([3, 512]);
        let want = &expected[&t.name];
        // Same operations in the same order: bit-identical, not merely close.
        assert_eq!(
            max_abs_diff(&got, want),
            0.0,
            "{} ({})",
            t.name,
            t.ty.name()
        );
        checked.push(t.ty.name());
    }
    assert_eq!(
        checked,
        ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"]
    );
}

/// Logits, hidden states and the prompt's ids equal transformers loading the same GGUF.
fn parity(name: &str) {
    let path = gguf_fixture(&format!("{name}.gguf"));
    let ckpt = Checkpoint::open(&path).expect("open gguf");
    assert!(ckpt.is_gguf());
    let model = Model::load(&ckpt, Device::Cpu).expect("load gguf model");
    let tok = tokenizer::load(&path).expect("tokenizer from gguf");
    let reference = reference(name);
    let prompt = "The quick brown fox jumps over the lazy dog, and model diffing audits what fine-tuning changed.";
    let got = inspect::inspect(&model, &tok, prompt).unwrap();
    assert!(
        got.input_ids.equal(&reference["input_ids"]),
        "{name}: ids differ"
    );
    let err = max_abs_diff(&got.logits, &reference["logits"]);
    assert!(err <= TOL, "{name}: logits {err:e}");
    for (i, h) in got.hidden_states.iter().enumerate() {
        let err = max_abs_diff(h, &reference[&format!("hidden_states.{i}")]);
        assert!(err <= TOL, "{name}: hidden_states.{i} {err:e}");
    }
}

#[test]
fn llama_gguf_matches_transformers() {
    parity("tiny-llama");
}

#[test]
fn qwen3_gguf_matches_transformers() {
    parity("tiny-qwen3");
}

/// Every weight equals transformers' dequantized (and, for Llama's q and k, un-permuted) one.
#[test]
fn weights_equal_the_safetensors_transformers_makes_of_the_file() {
    for name in ["tiny-llama", "tiny-qwen3"] {
        let g = Checkpoint::open(gguf_fixture(&format!("{name}.gguf"))).unwrap();
        let st = Checkpoint::open(gguf_fixture(&format!("{name}-st"))).unwrap();
        let names: Vec<&str> = st.names().collect();
        assert_eq!(g.names().collect::<Vec<_>>(), names, "{name}: tensor names");
        for n in names {
            let a = g.weight(n, Kind::Float, Device::Cpu).unwrap();
            let b = st.weight(n, Kind::Float, Device::Cpu).unwrap();
            assert_eq!(max_abs_diff(&a, &b), 0.0, "{name}: {n}");
        }
        let (gc, sc) = (g.config_json().unwrap(), st.config_json().unwrap());
        for field in [
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "vocab_size",
            "tie_word_embeddings",
        ] {
            assert_eq!(gc[field], sc[field], "{name}: config field {field}");
        }
    }
}

// ---- hostile files -------------------------------------------------------------------------

/// A GGUF written by hand: metadata (key, type, value bytes) and tensors (name, ne, type, data).
struct Writer {
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

fn string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

impl Writer {
    fn llama() -> Self {
        let mut w = Writer {
            kv: Vec::new(),
            tensors: Vec::new(),
        };
        w.kv.push(("general.architecture".into(), 8, string("llama")));
        for (k, v) in [
            ("block_count", 1u32),
            ("context_length", 64),
            ("embedding_length", 32),
            ("feed_forward_length", 64),
            ("attention.head_count", 2),
        ] {
            w.kv.push((format!("llama.{k}"), 4, v.to_le_bytes().to_vec()));
        }
        w.kv.push((
            "llama.attention.layer_norm_rms_epsilon".into(),
            6,
            1e-5f32.to_le_bytes().to_vec(),
        ));
        w
    }

    fn tensor(mut self, name: &str, ne: &[u64], ty: u32, data: Vec<u8>) -> Self {
        self.tensors.push((name.into(), ne.to_vec(), ty, data));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.kv.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.kv {
            b.extend(string(k));
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        let mut offset = 0u64;
        for (name, ne, ty, data) in &self.tensors {
            b.extend(string(name));
            b.extend((ne.len() as u32).to_le_bytes());
            for d in ne {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        for (_, _, _, data) in &self.tensors {
            let start = b.len();
            b.extend(data);
            while !(b.len() - start).is_multiple_of(32) {
                b.push(0);
            }
        }
        b
    }
}

fn decode_err(bytes: &[u8]) -> String {
    match gguf::decode(std::path::Path::new("hostile.gguf"), bytes) {
        Ok(_) => panic!("decoded a hostile file"),
        Err(e) => {
            assert!(matches!(e, CoreError::Gguf { .. }), "{e}");
            e.to_string()
        }
    }
}

#[test]
fn an_unsupported_type_is_refused_naming_tensor_and_type() {
    // Q5_0 (id 6): 22 bytes per block of 32.
    let w = Writer::llama().tensor("token_embd.weight", &[32, 4], 6, vec![0; 88]);
    let err = decode_err(&w.bytes());
    assert!(
        err.contains("token_embd.weight") && err.contains("Q5_0"),
        "{err}"
    );
}

#[test]
fn hostile_headers_are_refused_with_the_reason() {
    let good = Writer::llama().tensor("token_embd.weight", &[32, 4], 0, vec![0; 512]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("magic", {
            let mut b = good.bytes();
            b[0] = b'X';
            b
        }),
        ("version 1", {
            let mut b = good.bytes();
            b[4..8].copy_from_slice(&1u32.to_le_bytes());
            b
        }),
        ("tensors; at most", {
            let mut b = good.bytes();
            b[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
            b
        }),
        ("metadata entries; at most", {
            let mut b = good.bytes();
            b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
        ("string of", {
            let mut b = good.bytes();
            b[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
            b
        }),
        (
            "unknown ggml type id 99",
            Writer::llama()
                .tensor("token_embd.weight", &[32, 4], 99, vec![0; 512])
                .bytes(),
        ),
        (
            "dims",
            Writer::llama()
                .tensor("token_embd.weight", &[32, 0], 0, vec![0; 32])
                .bytes(),
        ),
        (
            "dims",
            Writer::llama()
                .tensor("token_embd.weight", &[1 << 32, 1 << 32], 0, vec![0; 32])
                .bytes(),
        ),
        (
            "dimensions; 1 to 4",
            Writer::llama()
                .tensor("token_embd.weight", &[1, 1, 1, 1, 32], 0, vec![0; 128])
                .bytes(),
        ),
        (
            "whole Q4_0 blocks",
            Writer::llama()
                .tensor("token_embd.weight", &[16, 4], 2, vec![0; 72])
                .bytes(),
        ),
        ("run past the end of the file", {
            let b = good.bytes();
            b[..b.len() - 64].to_vec()
        }),
        (
            "appears twice",
            Writer::llama()
                .tensor("token_embd.weight", &[32], 0, vec![0; 128])
                .tensor("token_embd.weight", &[32], 0, vec![0; 128])
                .bytes(),
        ),
        (
            "no counterpart",
            Writer::llama()
                .tensor("token_embd.weight", &[32, 4], 0, vec![0; 512])
                .tensor("blk.0.mystery.weight", &[32], 0, vec![0; 128])
                .bytes(),
        ),
        (
            "general.architecture `mamba`",
            Writer {
                kv: vec![("general.architecture".into(), 8, string("mamba"))],
                tensors: vec![],
            }
            .bytes(),
        ),
        ("an array of arrays", {
            let mut w = Writer::llama();
            let mut v = 9u32.to_le_bytes().to_vec();
            v.extend(1u64.to_le_bytes());
            v.extend(4u32.to_le_bytes());
            v.extend(0u64.to_le_bytes());
            w.kv.push(("nested".into(), 9, v));
            w.bytes()
        }),
        ("power of two", {
            let mut w = Writer::llama().tensor("token_embd.weight", &[32, 4], 0, vec![0; 512]);
            w.kv.push(("general.alignment".into(), 4, 24u32.to_le_bytes().to_vec()));
            w.bytes()
        }),
    ];
    for (want, bytes) in cases {
        let err = decode_err(&bytes);
        assert!(err.contains(want), "expected `{want}` in: {err}");
    }
}

#[test]
fn overlapping_and_misaligned_tensors_are_refused() {
    let mut b = Writer::llama()
        .tensor("token_embd.weight", &[32, 4], 0, vec![0; 512])
        .tensor("output_norm.weight", &[32], 0, vec![0; 128])
        .bytes();
    // The second tensor's offset (its last 8 header bytes) moved onto the first's bytes.
    let at = b
        .windows(18)
        .position(|w| w == b"output_norm.weight")
        .unwrap();
    let offset_at = at + 18 + 4 + 8 + 4;
    b[offset_at..offset_at + 8].copy_from_slice(&256u64.to_le_bytes());
    assert!(decode_err(&b).contains("overlap"));
    b[offset_at..offset_at + 8].copy_from_slice(&520u64.to_le_bytes());
    assert!(decode_err(&b).contains("alignment"));
}

/// Every prefix of a real file and thousands of random byte edits: an error or a checkpoint,
/// never a panic or a hang.
#[test]
fn truncated_and_mutated_files_never_panic() {
    let bytes = std::fs::read(gguf_fixture("tiny-llama.gguf")).unwrap();
    let header_end = reader::parse(&bytes).unwrap().tensors[0].start;
    let path = std::path::Path::new("fuzz.gguf");
    for len in (0..header_end).step_by(7) {
        assert!(gguf::decode(path, &bytes[..len]).is_err(), "prefix {len}");
    }
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..2000 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % header_end as u64) as usize;
            b[at] = next() as u8;
        }
        let _ = gguf::decode(path, &b);
        let _ = reader::parse(&b).map(|h| gguf::tokenizer_json(path, &h.metadata));
    }
}

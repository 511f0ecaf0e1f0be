//! Text to run the models on: a corpus file parsed into samples, each tokenized as
//! transformers' `tokenizer(text)` does (BOS where the tokenizer adds one) and cut to
//! `seq_len` tokens (no packing), and right-padded batches. With right padding and causal
//! attention a real token never attends to a pad, so no statistic depends on the batch size.
use std::io::Read;

use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

use crate::error::{CoreError, Result};

/// The built-in generic corpus (see `corpus/README.md` beside this crate): JSON Lines, gzip.
pub const BUILTIN: &[u8] = include_bytes!("../corpus/generic.jsonl.gz");
/// Its file name, which says how to parse it.
pub const BUILTIN_FILE: &str = "generic.jsonl.gz";

fn err(corpus: &str, message: impl Into<String>) -> CoreError {
    CoreError::Corpus {
        corpus: corpus.to_string(),
        message: message.into(),
    }
}

/// The samples of a corpus file called `name` (which says its format: `.jsonl` is JSON Lines
/// with a `text` field, anything else one sample per non-empty line; `.gz` is decompressed),
/// refusing more than `max_bytes` of text once decompressed.
pub fn parse(name: &str, bytes: &[u8], max_bytes: u64) -> Result<Vec<String>> {
    let lower = name.to_ascii_lowercase();
    let (text, stem) = match lower.strip_suffix(".gz") {
        Some(stem) => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(bytes)
                .take(max_bytes.saturating_add(1))
                .read_to_end(&mut out)
                .map_err(|e| err(name, format!("not valid gzip: {e}")))?;
            (out, stem.to_string())
        }
        None => (bytes.to_vec(), lower.clone()),
    };
    if text.len() as u64 > max_bytes {
        return Err(err(
            name,
            format!("holds more than {max_bytes} bytes of text (--max-corpus-bytes)"),
        ));
    }
    let text = String::from_utf8(text).map_err(|e| {
        err(
            name,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
    })?;
    let jsonl = stem.ends_with(".jsonl");
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if jsonl {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| err(name, format!("line {}: not JSON: {e}", i + 1)))?;
            let t = v
                .get("text")
                .and_then(|t| t.as_str())
                .ok_or_else(|| err(name, format!("line {}: no string field `text`", i + 1)))?;
            if !t.trim().is_empty() {
                samples.push(t.to_string());
            }
        } else {
            samples.push(line.to_string());
        }
    }
    if samples.is_empty() {
        return Err(err(name, "holds no samples"));
    }
    Ok(samples)
}

/// Token ids of each sample, special tokens added as the tokenizer defines, cut to `seq_len`.
pub fn encode(tok: &Tokenizer, samples: &[String], seq_len: usize) -> Result<Vec<Vec<i64>>> {
    samples
        .iter()
        .map(|s| {
            let e = tok
                .encode(s.as_str(), true)
                .map_err(|e| CoreError::Input(format!("cannot tokenize a sample: {e}")))?;
            Ok(e.get_ids()
                .iter()
                .take(seq_len)
                .map(|&i| i64::from(i))
                .collect())
        })
        .collect()
}

/// Samples padded on the right to the longest of them.
#[derive(Debug)]
pub struct Batch {
    /// `[batch, seq]` int64; pads are id 0.
    pub ids: Tensor,
    /// `[batch, seq]` bool: true at real tokens.
    pub mask: Tensor,
    /// Each sample's length.
    pub lengths: Vec<usize>,
}

impl Batch {
    /// Right-pads `samples` (none empty) onto `device`.
    pub fn new(samples: &[Vec<i64>], device: Device) -> Result<Batch> {
        let seq = samples.iter().map(Vec::len).max().unwrap_or(0);
        if seq == 0 || samples.iter().any(Vec::is_empty) {
            return Err(CoreError::Input("a sample has no tokens".into()));
        }
        let mut ids = vec![0i64; samples.len() * seq];
        let mut mask = vec![false; samples.len() * seq];
        for (r, s) in samples.iter().enumerate() {
            ids[r * seq..r * seq + s.len()].copy_from_slice(s);
            mask[r * seq..r * seq + s.len()].fill(true);
        }
        let shape = [samples.len() as i64, seq as i64];
        Ok(Batch {
            ids: Tensor::from_slice(&ids)
                .f_view(shape)?
                .f_to_device(device)?,
            mask: Tensor::from_slice(&mask)
                .f_view(shape)?
                .f_to_kind(Kind::Bool)?
                .f_to_device(device)?,
            lengths: samples.iter().map(Vec::len).collect(),
        })
    }

    /// The flat indices (`row * seq + position`) of the real tokens, in sample order.
    pub fn token_index(&self) -> Result<Tensor> {
        Ok(self.mask.f_flatten(0, -1)?.f_nonzero()?.f_squeeze_dim(1)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_corpus_parses_and_is_large() {
        let samples = parse(BUILTIN_FILE, BUILTIN, 1 << 30).unwrap();
        assert!(samples.len() > 50_000, "{}", samples.len());
        let chars: usize = samples.iter().map(String::len).sum();
        assert!(chars > 10_000_000, "{chars}");
    }

    #[test]
    fn formats_and_bounds() {
        assert_eq!(
            parse("a.txt", b"one\n\n  \ntwo\n", 100).unwrap(),
            ["one", "two"]
        );
        assert_eq!(
            parse("a.jsonl", b"{\"text\": \"x y\"}\n{\"text\": \"\"}\n", 100).unwrap(),
            ["x y"]
        );
        let e = parse("a.jsonl", b"{\"txt\": 1}\n", 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("`text`"), "{e}");
        let e = parse("a.txt", &[b'x'; 101], 100).unwrap_err().to_string();
        assert!(e.contains("more than 100 bytes"), "{e}");
        assert!(parse("a.txt", b"\n\n", 100).is_err());
        assert!(parse("a.txt.gz", b"not gzip", 100).is_err());
        assert!(parse("a.txt", &[0xff, 0xfe], 100).is_err());
    }

    #[test]
    fn batches_pad_on_the_right() {
        let b = Batch::new(&[vec![5, 6, 7], vec![9]], Device::Cpu).unwrap();
        assert_eq!(b.ids.size(), [2, 3]);
        assert_eq!(
            Vec::<i64>::try_from(b.ids.flatten(0, -1)).unwrap(),
            [5, 6, 7, 9, 0, 0]
        );
        assert_eq!(
            Vec::<i64>::try_from(b.token_index().unwrap()).unwrap(),
            [0, 1, 2, 3]
        );
        assert!(Batch::new(&[vec![]], Device::Cpu).is_err());
    }
}

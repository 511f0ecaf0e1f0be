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

/// The built-in chat set (`builtin:chat`): conversations for the chat analyses.
pub const BUILTIN_CHAT: &[u8] = include_bytes!("../corpus/chat.jsonl");
pub const BUILTIN_CHAT_FILE: &str = "chat.jsonl";

fn err(corpus: &str, message: impl Into<String>) -> CoreError {
    CoreError::Corpus {
        corpus: corpus.to_string(),
        message: message.into(),
    }
}

/// The most bytes of one sample that are kept: a longer line is cut (at a character boundary)
/// as it is read. No sample needs more: `seq_len` is at most 8192 tokens, and
/// [`encode`] cuts each sample again, to what its tokens can cover, before tokenizing it.
pub const MAX_SAMPLE_BYTES: usize = 1 << 20;

/// The samples of a corpus file called `name` (which says its format: `.jsonl` is JSON Lines
/// with a `text` field, anything else one sample per non-empty line; `.gz` is decompressed),
/// refusing more than `max_bytes` of text once decompressed.
pub fn parse(name: &str, bytes: &[u8], max_bytes: u64) -> Result<Vec<String>> {
    let parsed = parse_corpus(name, bytes, max_bytes, usize::MAX)?;
    if parsed.chat {
        return Err(err(
            name,
            "is a chat corpus (`messages`); only text corpora are read here",
        ));
    }
    Ok(parsed.samples)
}

/// A corpus file's samples: text, or (a chat corpus) each conversation's JSON line, to be
/// rendered with the model's chat template ([`crate::chat`]).
#[derive(Debug, Clone)]
pub struct Parsed {
    pub samples: Vec<String>,
    /// How many samples the file holds.
    pub total: usize,
    pub chat: bool,
}

/// As [`parse_corpus`], for text: the samples and how many the file holds.
pub fn parse_bounded(
    name: &str,
    bytes: &[u8],
    max_bytes: u64,
    keep: usize,
) -> Result<(Vec<String>, usize)> {
    let parsed = parse_corpus(name, bytes, max_bytes, keep)?;
    Ok((parsed.samples, parsed.total))
}

/// As [`parse`], keeping only the first `keep` samples (the rest are counted, checked and
/// dropped); each text sample is cut to [`MAX_SAMPLE_BYTES`], a longer conversation refused.
/// A JSONL corpus whose lines hold `messages` is a chat corpus; the two kinds do not mix.
pub fn parse_corpus(name: &str, bytes: &[u8], max_bytes: u64, keep: usize) -> Result<Parsed> {
    let lower = name.to_ascii_lowercase();
    let decompressed;
    let (text, stem): (&[u8], &str) = match lower.strip_suffix(".gz") {
        Some(stem) => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(bytes)
                .take(max_bytes.saturating_add(1))
                .read_to_end(&mut out)
                .map_err(|e| err(name, format!("not valid gzip: {e}")))?;
            decompressed = out;
            (&decompressed, stem)
        }
        None => (bytes, lower.as_str()),
    };
    if text.len() as u64 > max_bytes {
        return Err(err(
            name,
            format!("holds more than {max_bytes} bytes of text (--max-corpus-bytes)"),
        ));
    }
    let text = std::str::from_utf8(text)
        .map_err(|e| err(name, format!("not UTF-8 text (byte {})", e.valid_up_to())))?;
    let jsonl = stem.ends_with(".jsonl");
    let (mut samples, mut total) = (Vec::new(), 0usize);
    let mut chat: Option<bool> = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut take = |sample: &str| {
            total += 1;
            if samples.len() < keep {
                samples.push(clip(sample, MAX_SAMPLE_BYTES).to_string());
            }
        };
        if !jsonl {
            take(line);
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| err(name, format!("line {}: not JSON: {e}", i + 1)))?;
        let is_chat = v.get("messages").is_some();
        if *chat.get_or_insert(is_chat) != is_chat {
            return Err(err(
                name,
                format!(
                    "line {}: mixes conversations (`messages`) and text (`text`)",
                    i + 1
                ),
            ));
        }
        if is_chat {
            crate::chat::Conversation::from_json(line)
                .map_err(|m| err(name, format!("line {}: {m}", i + 1)))?;
            if line.len() > MAX_SAMPLE_BYTES {
                return Err(err(
                    name,
                    format!(
                        "line {}: a conversation of more than {MAX_SAMPLE_BYTES} bytes",
                        i + 1
                    ),
                ));
            }
            take(line);
            continue;
        }
        let t = v
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| err(name, format!("line {}: no string field `text`", i + 1)))?;
        if !t.trim().is_empty() {
            take(t);
        }
    }
    if total == 0 {
        return Err(err(name, "holds no samples"));
    }
    Ok(Parsed {
        samples,
        total,
        chat: chat.unwrap_or(false),
    })
}

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The most bytes of text one token of `tok` stands for, bounded above by the longest entry of
/// its vocabulary (byte-level and SentencePiece vocabularies spell a byte in one or more
/// bytes, so an entry is never shorter than the text it covers).
pub fn longest_token_bytes(tok: &Tokenizer) -> usize {
    tok.get_vocab(true)
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(1)
        .max(1)
}

/// How many bytes of a sample [`encode`] tokenizes for `seq_len` tokens of at most `longest`
/// bytes each: `seq_len` tokens' worth, plus 16 tokens and 4 KiB so that the merges at the cut
/// cannot reach the tokens kept, at most [`MAX_SAMPLE_BYTES`].
pub fn encoded_bytes(seq_len: usize, longest: usize) -> usize {
    seq_len
        .saturating_add(16)
        .saturating_mul(longest)
        .saturating_add(4096)
        .min(MAX_SAMPLE_BYTES)
}

/// Token ids of each sample, special tokens added as the tokenizer defines, cut to `seq_len`.
/// Each sample is cut to [`encoded_bytes`] before it is tokenized: a tokenizer's memory grows
/// by hundreds of bytes per byte of text, and tokens past `seq_len` are dropped anyway. For
/// tokenizers whose normalizer drops no text this gives the same ids as tokenizing the whole
/// sample (checked on the fixtures' tokenizers over the built-in corpus).
pub fn encode(tok: &Tokenizer, samples: &[String], seq_len: usize) -> Result<Vec<Vec<i64>>> {
    let cut = encoded_bytes(seq_len, longest_token_bytes(tok));
    samples
        .iter()
        .map(|s| {
            let e = tok
                .encode(clip(s, cut), true)
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
    fn samples_are_bounded_as_they_are_read() {
        let long = "é".repeat(MAX_SAMPLE_BYTES);
        let text = format!("a\n{long}\nb\nc\n");
        let (samples, total) = parse_bounded("x.txt", text.as_bytes(), 1 << 30, 2).unwrap();
        assert_eq!(total, 4);
        assert_eq!(samples.len(), 2);
        assert!(samples[1].len() <= MAX_SAMPLE_BYTES && samples[1].len() > MAX_SAMPLE_BYTES - 2);
        assert_eq!(clip("aé", 2), "a");
        assert_eq!(encoded_bytes(8192, 1 << 20), MAX_SAMPLE_BYTES);
        assert_eq!(encoded_bytes(16, 4), 32 * 4 + 4096);
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

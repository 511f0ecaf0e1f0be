//! One prompt through one model: logits, hidden states and the top next-token predictions.
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{CoreError, Result};
use crate::hooks::Hooks;
use crate::models::Model;
use crate::tokenizer::{self, Tokenizer};

/// The outputs of `neurodiff inspect`, batch dimension removed.
#[derive(Debug)]
pub struct Inspection {
    /// `[seq]` int64
    pub input_ids: Tensor,
    /// `[seq, vocab]` fp32
    pub logits: Tensor,
    /// n_layers + 1 tensors `[seq, d_model]` fp32, transformers' `output_hidden_states` order
    pub hidden_states: Vec<Tensor>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub token_id: i64,
    pub token: String,
    pub logit: f64,
    pub prob: f64,
}

pub fn inspect(model: &Model, tok: &Tokenizer, prompt: &str) -> Result<Inspection> {
    let ids: Vec<i64> = tokenizer::encode(tok, prompt)?
        .into_iter()
        .map(i64::from)
        .collect();
    if ids.is_empty() {
        return Err(CoreError::Input("the prompt tokenizes to no tokens".into()));
    }
    let input_ids = Tensor::from_slice(&ids);
    let out = model.forward(&input_ids, &mut Hooks::new())?;
    let squeeze = |t: Tensor| -> Result<Tensor> {
        Ok(t.f_squeeze_dim(0)?
            .f_to_kind(Kind::Float)?
            .f_to_device(tch::Device::Cpu)?
            .f_contiguous()?)
    };
    Ok(Inspection {
        input_ids,
        logits: squeeze(out.logits)?,
        hidden_states: out
            .hidden_states
            .into_iter()
            .map(squeeze)
            .collect::<Result<_>>()?,
    })
}

impl Inspection {
    /// The `k` most likely next tokens after the last prompt position.
    pub fn top_next(&self, tok: &Tokenizer, k: i64) -> Result<Vec<Prediction>> {
        let last = self.logits.f_get(-1)?;
        let probs = last.f_softmax(-1, Kind::Float)?;
        let k = k.min(last.size()[0]);
        let (values, indices) = last.f_topk(k, -1, true, true)?;
        (0..k)
            .map(|i| {
                let id = indices.f_int64_value(&[i])?;
                Ok(Prediction {
                    token_id: id,
                    token: token_text(tok, id as u32)?,
                    logit: values.f_double_value(&[i])?,
                    prob: probs.f_double_value(&[id])?,
                })
            })
            .collect()
    }

    /// Writes `input_ids`, `logits` and `hidden_states.{i}` to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, &Tensor)> = vec![
            ("input_ids".into(), &self.input_ids),
            ("logits".into(), &self.logits),
        ];
        for (i, h) in self.hidden_states.iter().enumerate() {
            named.push((format!("hidden_states.{i}"), h));
        }
        Tensor::write_safetensors(&named, path).map_err(|e| CoreError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })
    }
}

/// The token as text; a byte-level piece that is not valid UTF-8 on its own keeps its raw form.
fn token_text(tok: &Tokenizer, id: u32) -> Result<String> {
    let text = tok
        .decode(&[id], false)
        .map_err(|e| CoreError::Input(format!("cannot decode token {id}: {e}")))?;
    Ok(if text.contains('\u{FFFD}') {
        tok.id_to_token(id).unwrap_or(text)
    } else {
        text
    })
}

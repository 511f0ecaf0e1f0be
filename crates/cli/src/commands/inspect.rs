//! `neurodiff inspect MODEL --prompt TEXT [--out FILE.safetensors] [--device cpu|cuda]`, and
//! `neurodiff inspect MODEL --tokenize LINES.txt --out IDS.json` (the token ids of each line),
//! and `neurodiff inspect MODEL --chat CHATS.jsonl --out IDS.json` (each conversation rendered
//! with the model's chat template, its ids and each token's role).
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use neurodiff_core::{device, inspect, reference, tokenizer, Checkpoint, Model};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A checkpoint directory, a GGUF file, or a hub id `org/name[@revision]` (offline with
    /// HF_HUB_OFFLINE=1).
    pub model: String,
    /// The text to run through the model (tokenized with the model's own tokenizer).
    #[arg(long, required_unless_present_any = ["tokenize", "chat"])]
    pub prompt: Option<String>,
    /// Instead of running the model, tokenize each line of this file (special tokens added, as
    /// `tokenizer(line)` does) and write the ids as a JSON list of lists to --out.
    #[arg(long, conflicts_with = "prompt", requires = "out")]
    pub tokenize: Option<PathBuf>,
    /// Instead of running the model, render each conversation of this JSONL file
    /// (`{"messages": [{"role", "content"}, ...], "add_generation_prompt": false}`) with the
    /// model's chat template and write, per conversation, its text, ids and each token's role.
    #[arg(long, conflicts_with_all = ["prompt", "tokenize"], requires = "out")]
    pub chat: Option<PathBuf>,
    /// Write `input_ids`, `logits` [seq, vocab] and `hidden_states.{i}` here instead of printing.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "NEURODIFF_DEVICE")]
    pub device: String,
    /// How many next-token predictions to print.
    #[arg(long, default_value_t = 10)]
    pub top: i64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = device::parse_device(&args.device)?;
    let dir = reference::resolve(&args.model, &reference::HubOptions::from_env())?;
    let tok = tokenizer::load(&dir)?;
    if let (Some(lines), Some(out)) = (&args.tokenize, &args.out) {
        return tokenize_lines(&tok, lines, out);
    }
    if let (Some(chats), Some(out)) = (&args.chat, &args.out) {
        return render_chats(&dir, &tok, chats, out);
    }
    let ckpt = Checkpoint::open(&dir)?;
    let model = Model::load(&ckpt, device)?;
    let prompt = args.prompt.as_deref().unwrap_or_default();
    let result = inspect::inspect(&model, &tok, prompt)?;
    match &args.out {
        Some(out) => {
            save_atomically(&result, out)?;
            eprintln!(
                "wrote {} ({} tokens, {} hidden states)",
                out.display(),
                result.input_ids.size()[0],
                result.hidden_states.len()
            );
        }
        None => {
            let mut table = Table::new();
            table.load_preset(UTF8_FULL_CONDENSED);
            table.set_header(["rank", "token id", "token", "logit", "prob"]);
            for (rank, p) in result.top_next(&tok, args.top)?.iter().enumerate() {
                table.add_row([
                    (rank + 1).to_string(),
                    p.token_id.to_string(),
                    format!("{:?}", p.token),
                    format!("{:.4}", p.logit),
                    format!("{:.4}", p.prob),
                ]);
            }
            let info = model.info();
            let mut stdout = std::io::stdout().lock();
            writeln!(
                stdout,
                "{} ({}, {} layers, d_model {}), prompt of {} tokens; next-token predictions:",
                dir.display(),
                info.model_type,
                info.n_layers,
                info.d_model,
                result.input_ids.size()[0]
            )?;
            writeln!(stdout, "{table}")?;
        }
    }
    Ok(())
}

/// The ids of each line of `lines`, as JSON, to `out`.
fn tokenize_lines(tok: &tokenizer::Tokenizer, lines: &Path, out: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(lines)
        .with_context(|| format!("--tokenize {}", lines.display()))?;
    let ids = text
        .lines()
        .map(|line| tokenizer::encode(tok, line))
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::write(out, serde_json::to_vec(&ids)?)
        .with_context(|| format!("--out {}", out.display()))?;
    eprintln!("wrote {} ({} lines)", out.display(), ids.len());
    Ok(())
}

/// Each conversation of `chats` rendered, tokenized and labelled, as JSON, to `out`.
fn render_chats(
    model: &Path,
    tok: &tokenizer::Tokenizer,
    chats: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let template = neurodiff_core::chat::ChatTemplate::load(model)?
        .with_context(|| format!("{}: the model has no chat template", model.display()))?;
    let text =
        std::fs::read_to_string(chats).with_context(|| format!("--chat {}", chats.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let conv = neurodiff_core::chat::Conversation::from_json(line)
            .map_err(|e| anyhow::anyhow!("--chat {} line {}: {e}", chats.display(), i + 1))?;
        let rendered = template.render(&conv.messages, conv.add_generation_prompt)?;
        let (ids, roles) = neurodiff_core::chat::encode(tok, &rendered)?;
        let roles: Vec<String> = roles
            .iter()
            .map(|r| format!("{r:?}").to_lowercase())
            .collect();
        rows.push(serde_json::json!({"text": rendered.text, "ids": ids, "roles": roles}));
    }
    std::fs::write(out, serde_json::to_vec(&rows)?)
        .with_context(|| format!("--out {}", out.display()))?;
    eprintln!("wrote {} ({} conversations)", out.display(), rows.len());
    Ok(())
}

/// Writes next to `out` and renames, so a failed run never leaves a file that looks complete.
fn save_atomically(result: &inspect::Inspection, out: &Path) -> anyhow::Result<()> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .with_context(|| format!("--out {}: not a file path", out.display()))?;
    let tmp = parent.join(format!(".{}.partial", name.to_string_lossy()));
    result
        .save(&tmp)
        .with_context(|| format!("--out {}", out.display()))?;
    std::fs::rename(&tmp, out)
        .with_context(|| format!("--out {}: cannot move the result into place", out.display()))?;
    Ok(())
}

//! Chat conversations rendered with a model's own chat template, as transformers'
//! `apply_chat_template` renders them (`utils/chat_template_utils.py`: a Jinja environment with
//! `trim_blocks`, `lstrip_blocks` and loop controls; `raise_exception`, `strftime_now`, a
//! `tojson` that is Python's `json.dumps`; the tokenizer's special tokens as variables), then
//! tokenized without special tokens added. Each token is labelled with the role whose message
//! content it lies in, or as the template's own text, so analyses can read one of them.
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use minijinja::value::{Kwargs, Value as JValue};
use minijinja::{Environment, Error as JError, ErrorKind};
use serde_json::Value;

use crate::error::{CoreError, Result};
use crate::tokenizer::Tokenizer;

/// The file transformers 5 saves a template in, beside tokenizer_config.json.
pub const TEMPLATE_FILE: &str = "chat_template.jinja";
/// The most bytes of template read (Hugging Face templates are a few KiB; tool-calling ones
/// tens of KiB).
pub const MAX_TEMPLATE_BYTES: u64 = 1 << 20;

/// Who wrote a token: a message's role, or the template around the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenRole {
    System,
    User,
    Assistant,
    /// Another role (`tool`, `ipython`, ...).
    Other,
    /// Text the template writes: role headers, special tokens, separators.
    Template,
}

impl TokenRole {
    fn of(role: &str) -> TokenRole {
        match role {
            "system" | "developer" => TokenRole::System,
            "user" => TokenRole::User,
            "assistant" => TokenRole::Assistant,
            _ => TokenRole::Other,
        }
    }
}

/// A rendered conversation: the text, and where each message's content lies in it (bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub text: String,
    pub spans: Vec<(Range<usize>, TokenRole)>,
}

/// A conversation as the template sees it: a list of message objects, their keys in the order
/// the JSON gave them (a template's `tojson` writes them in that order, as Python does).
#[derive(Debug, Clone)]
pub struct Messages(JValue);

/// One conversation of a chat corpus line: `{"messages": [...], "add_generation_prompt": bool}`.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub messages: Messages,
    pub add_generation_prompt: bool,
}

impl Conversation {
    /// Parses a JSON line; the error says what is missing.
    pub fn from_json(line: &str) -> std::result::Result<Conversation, String> {
        let v: JValue = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let messages = v
            .get_attr("messages")
            .ok()
            .filter(|m| m.kind() == minijinja::value::ValueKind::Seq)
            .ok_or("no `messages` array")?;
        for (i, m) in messages.try_iter().map_err(|e| e.to_string())?.enumerate() {
            for field in ["role", "content"] {
                if m.get_attr(field)
                    .ok()
                    .and_then(|x| x.as_str().map(String::from))
                    .is_none()
                {
                    return Err(format!("message {i} has no string `{field}`"));
                }
            }
        }
        let generation = v
            .get_attr("add_generation_prompt")
            .map(|g| g.is_true())
            .unwrap_or(false);
        Ok(Conversation {
            messages: Messages(messages),
            add_generation_prompt: generation,
        })
    }
}

impl Messages {
    fn roles_and_contents(&self) -> Vec<(String, String)> {
        let text = |m: &JValue, k: &str| {
            m.get_attr(k)
                .ok()
                .and_then(|x| x.as_str().map(String::from))
                .unwrap_or_default()
        };
        self.0
            .try_iter()
            .map(|it| {
                it.map(|m| (text(&m, "role"), text(&m, "content")))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A model's chat template and the special tokens it may name.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    specials: BTreeMap<String, String>,
}

/// A special token as tokenizer_config.json spells it: a string or `{"content": ...}`.
fn token_text(v: &Value) -> Option<String> {
    v.as_str()
        .or_else(|| v.get("content").and_then(Value::as_str))
        .map(String::from)
}

const SPECIAL_NAMES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

impl ChatTemplate {
    /// A template from its source and the special tokens it may name (`bos_token`, ...).
    pub fn new(source: String, specials: BTreeMap<String, String>) -> Self {
        ChatTemplate { source, specials }
    }

    /// The template of the model at `path`: a GGUF's `tokenizer.chat_template`, or a
    /// directory's chat_template.jinja or tokenizer_config.json `chat_template` (the `default`
    /// one of a list). None when the model has none.
    pub fn load(path: &Path) -> Result<Option<ChatTemplate>> {
        Self::load_guarded(path, None)
    }

    /// Like [`ChatTemplate::load`], every file shown to `guard` first (a model a request names).
    pub fn load_guarded(
        path: &Path,
        guard: Option<&crate::guard::Guard>,
    ) -> Result<Option<ChatTemplate>> {
        if let Some(file) = crate::gguf::model_file(path)? {
            return Self::from_gguf(&file, guard);
        }
        let config_path = path.join("tokenizer_config.json");
        let config: Value = if config_path.is_file() {
            crate::checkpoint::read_json(&config_path, guard)?
        } else {
            Value::Null
        };
        let specials = SPECIAL_NAMES
            .iter()
            .filter_map(|n| {
                config
                    .get(*n)
                    .and_then(token_text)
                    .map(|t| (n.to_string(), t))
            })
            .collect();
        let jinja = path.join(TEMPLATE_FILE);
        let source = if jinja.is_file() {
            let (bytes, _) =
                crate::guard::read_checked(&jinja, "chat template", MAX_TEMPLATE_BYTES, guard)?;
            Some(String::from_utf8(bytes).map_err(|_| CoreError::Config {
                path: jinja.clone(),
                message: "not UTF-8 text".into(),
            })?)
        } else {
            match config.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(named)) => named
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template").and_then(Value::as_str))
                    .map(String::from),
                _ => None,
            }
        };
        Ok(source.map(|s| ChatTemplate::new(s, specials)))
    }

    fn from_gguf(file: &Path, guard: Option<&crate::guard::Guard>) -> Result<Option<ChatTemplate>> {
        let (f, _) = crate::guard::open_checked(file, "GGUF file", guard)?;
        // SAFETY: a read-only map; see checkpoint::map_file.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| CoreError::io(file, e))?;
        let header = crate::gguf::header(file, &map)?;
        let meta = &header.metadata;
        let Some(source) = meta.get("tokenizer.chat_template").and_then(Value::as_str) else {
            return Ok(None);
        };
        let tokens = meta.get("tokenizer.ggml.tokens").and_then(Value::as_array);
        let mut specials = BTreeMap::new();
        for (name, key) in [
            ("bos_token", "bos_token_id"),
            ("eos_token", "eos_token_id"),
            ("unk_token", "unknown_token_id"),
            ("pad_token", "padding_token_id"),
        ] {
            let id = meta
                .get(&format!("tokenizer.ggml.{key}"))
                .and_then(Value::as_u64);
            if let Some(t) = id
                .and_then(|i| tokens.and_then(|t| t.get(i as usize)))
                .and_then(Value::as_str)
            {
                specials.insert(name.to_string(), t.to_string());
            }
        }
        Ok(Some(ChatTemplate::new(source.to_string(), specials)))
    }

    /// Renders `messages` (objects with at least `role` and `content`).
    pub fn render(&self, messages: &Messages, add_generation_prompt: bool) -> Result<Rendered> {
        let bad = |m: String| CoreError::Input(format!("chat template: {m}"));
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<JValue, JError> {
                Err(JError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        let source = generation_as_if(&self.source);
        env.add_template("chat", &source)
            .map_err(|e| bad(e.to_string()))?;
        let mut ctx: BTreeMap<String, JValue> = self
            .specials
            .iter()
            .map(|(k, v)| (k.clone(), JValue::from(v.as_str())))
            .collect();
        ctx.insert("messages".into(), messages.0.clone());
        ctx.insert(
            "add_generation_prompt".into(),
            JValue::from(add_generation_prompt),
        );
        let text = env
            .get_template("chat")
            .and_then(|t| t.render(&ctx))
            .map_err(|e| bad(e.to_string()))?;
        let spans = locate(&text, &messages.roles_and_contents());
        Ok(Rendered { text, spans })
    }
}

/// transformers' `{% generation %}…{% endgeneration %}` (which marks assistant text for its
/// mask and renders its body unchanged) as `{% if true %}…{% endif %}`, whitespace control kept:
/// the roles come from where each message's content lies instead.
fn generation_as_if(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        let Some(close) = rest[open..].find("%}").map(|c| open + c + 2) else {
            break;
        };
        let tag = &rest[open..close];
        let inner = tag[2..tag.len() - 2].trim_matches('-').trim();
        let (lead, trail) = (tag.starts_with("{%-"), tag.ends_with("-%}"));
        let replaced = match inner {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        out.push_str(&rest[..open]);
        match replaced {
            Some(word) => {
                out.push_str(if lead { "{%- " } else { "{% " });
                out.push_str(word);
                out.push_str(if trail { " -%}" } else { " %}" });
            }
            None => out.push_str(tag),
        }
        rest = &rest[close..];
    }
    out.push_str(rest);
    out
}

/// Where each message's content is in `text`, in order (the content as given, else trimmed, as
/// templates often write `content | trim`); a content the template rewrote has no span.
fn locate(text: &str, messages: &[(String, String)]) -> Vec<(Range<usize>, TokenRole)> {
    let mut spans = Vec::new();
    let mut from = 0;
    for (role, content) in messages {
        let role = TokenRole::of(role);
        for needle in [content.as_str(), content.trim()] {
            if needle.is_empty() {
                break;
            }
            if let Some(at) = text[from..].find(needle) {
                let start = from + at;
                spans.push((start..start + needle.len(), role));
                from = start + needle.len();
                break;
            }
        }
    }
    spans
}

/// The ids of a rendered conversation (no special tokens added: the template writes them) and
/// the role of each token: that of the message content it overlaps, else the template's.
pub fn encode(tok: &Tokenizer, rendered: &Rendered) -> Result<(Vec<u32>, Vec<TokenRole>)> {
    let e = tok
        .encode(rendered.text.as_str(), false)
        .map_err(|e| CoreError::Input(format!("cannot tokenize a conversation: {e}")))?;
    let roles = e
        .get_offsets()
        .iter()
        .map(|&(start, end)| {
            rendered
                .spans
                .iter()
                .find(|(span, _)| start < span.end && end > span.start)
                .map_or(TokenRole::Template, |(_, role)| *role)
        })
        .collect();
    Ok((e.get_ids().to_vec(), roles))
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`.
fn tojson(value: JValue, kwargs: Kwargs) -> std::result::Result<JValue, JError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    dumps(&value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(JValue::from_safe_string(out))
}

/// Python's `json.dumps` layout: `", "` and `": "` without indent, newlines and `","` with;
/// maps in their own key order unless sorted.
fn dumps(
    v: &JValue,
    indent: Option<usize>,
    sort: bool,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), JError> {
    use minijinja::value::ValueKind;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    let scalar = |v: &JValue| -> std::result::Result<String, JError> {
        serde_json::to_string(v)
            .map_err(|e| JError::new(ErrorKind::InvalidOperation, e.to_string()))
    };
    match v.kind() {
        ValueKind::Seq | ValueKind::Iterable if v.len() != Some(0) => {
            out.push('[');
            for (i, item) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                dumps(&item, indent, sort, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map if v.len() != Some(0) => {
            out.push('{');
            let mut keys: Vec<JValue> = v.try_iter()?.collect();
            if sort {
                keys.sort();
            }
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                out.push_str(&scalar(&JValue::from(k.to_string()))?);
                out.push_str(": ");
                dumps(&v.get_item(k)?, indent, sort, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => out.push_str("[]"),
        ValueKind::Map => out.push_str("{}"),
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        _ => out.push_str(&scalar(v)?),
    }
    Ok(())
}

/// `strftime_now(format)`: today's UTC date for the formats templates use (`%d`, `%m`, `%Y`,
/// `%b`, `%B`, `%H`, `%M`, `%S`, `%%`).
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('b') => out.push_str(&name[..3]),
            Some('B') => out.push_str(name),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem % 3600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Each conversation of a chat corpus (its JSON line) rendered with `template`, tokenized and
/// cut to `seq_len` tokens, with each token's role.
#[allow(clippy::type_complexity)]
pub fn encode_corpus(
    template: &ChatTemplate,
    tok: &Tokenizer,
    samples: &[String],
    seq_len: usize,
) -> Result<(Vec<Vec<i64>>, Vec<Vec<TokenRole>>)> {
    let mut ids = Vec::with_capacity(samples.len());
    let mut roles = Vec::with_capacity(samples.len());
    for (i, line) in samples.iter().enumerate() {
        let c = Conversation::from_json(line)
            .map_err(|m| CoreError::Input(format!("chat sample {i}: {m}")))?;
        let rendered = template.render(&c.messages, c.add_generation_prompt)?;
        let (mut t, mut r) = encode(tok, &rendered)?;
        t.truncate(seq_len);
        r.truncate(seq_len);
        ids.push(t.into_iter().map(i64::from).collect());
        roles.push(r);
    }
    Ok((ids, roles))
}

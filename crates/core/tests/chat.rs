//! Chat templates: loading (tokenizer_config.json string or named list, chat_template.jinja, a
//! GGUF's metadata), rendering errors that say what went wrong, and token roles that follow the
//! messages. Rendering itself is checked against transformers by scripts/chat_reference.py.
#![allow(clippy::expect_used, clippy::unwrap_used)]
mod common;

use std::collections::BTreeMap;

use common::fixture;
use neurodiff_core::chat::{encode, ChatTemplate, Conversation, TokenRole};
use neurodiff_core::tokenizer;

const CHATML: &str = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn conversation(line: &str) -> Conversation {
    Conversation::from_json(line).unwrap()
}

#[test]
fn roles_follow_the_messages_and_the_rest_is_template() {
    let tok = tokenizer::load(&fixture("gguf/tiny-llama-st")).unwrap();
    let t = ChatTemplate::new(CHATML.into(), BTreeMap::new());
    let c = conversation(
        r#"{"messages": [{"role": "user", "content": "the quick fox"}, {"role": "assistant", "content": "the lazy dog"}]}"#,
    );
    let r = t.render(&c.messages, false).unwrap();
    assert_eq!(
        r.text,
        "<|im_start|>user\nthe quick fox<|im_end|>\n<|im_start|>assistant\nthe lazy dog<|im_end|>\n"
    );
    let (ids, roles) = encode(&tok, &r).unwrap();
    assert_eq!(ids.len(), roles.len());
    let text_of = |want: TokenRole| {
        let kept: Vec<u32> = ids
            .iter()
            .zip(&roles)
            .filter(|(_, r)| **r == want)
            .map(|(i, _)| *i)
            .collect();
        tok.decode(&kept, false).unwrap()
    };
    assert_eq!(text_of(TokenRole::User).trim(), "the quick fox");
    assert_eq!(text_of(TokenRole::Assistant).trim(), "the lazy dog");
    assert!(text_of(TokenRole::Template).contains("<|im_start|>"));
}

#[test]
fn generation_tags_render_as_their_body_with_whitespace_control() {
    let plain = ChatTemplate::new(
        "{% for m in messages %}  {%- if true -%}  {{ m['content'] }}  {%- endif %} |{% endfor %}"
            .into(),
        BTreeMap::new(),
    );
    let tagged = ChatTemplate::new(
        "{% for m in messages %}  {%- generation -%}  {{ m['content'] }}  {%- endgeneration %} |{% endfor %}".into(),
        BTreeMap::new(),
    );
    let c = conversation(r#"{"messages": [{"role": "assistant", "content": "x"}]}"#);
    assert_eq!(
        plain.render(&c.messages, false).unwrap().text,
        tagged.render(&c.messages, false).unwrap().text
    );
}

#[test]
fn bad_templates_and_conversations_say_what_is_wrong() {
    let c = conversation(r#"{"messages": [{"role": "user", "content": "hi"}]}"#);
    let broken = ChatTemplate::new("{% for m in messages %}".into(), BTreeMap::new());
    let err = broken.render(&c.messages, false).unwrap_err().to_string();
    assert!(err.contains("chat template"), "{err}");
    let raising = ChatTemplate::new(
        "{{ raise_exception('roles must alternate') }}".into(),
        BTreeMap::new(),
    );
    let err = raising.render(&c.messages, false).unwrap_err().to_string();
    assert!(err.contains("roles must alternate"), "{err}");
    for (line, want) in [
        ("{", "not JSON"),
        (r#"{"text": "x"}"#, "no `messages` array"),
        (
            r#"{"messages": [{"role": "user"}]}"#,
            "message 0 has no string `content`",
        ),
    ] {
        assert!(
            Conversation::from_json(line).unwrap_err().contains(want),
            "{line}"
        );
    }
}

#[test]
fn templates_load_from_configs_and_gguf_metadata() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        serde_json::json!({"bos_token": {"content": "<s>"},
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}D"}]})
        .to_string(),
    )
    .unwrap();
    let c = conversation(r#"{"messages": []}"#);
    let t = ChatTemplate::load(dir.path()).unwrap().expect("a template");
    assert_eq!(t.render(&c.messages, false).unwrap().text, "<s>D");
    // chat_template.jinja (transformers 5) wins over the config.
    std::fs::write(dir.path().join("chat_template.jinja"), "J{{ bos_token }}").unwrap();
    let t = ChatTemplate::load(dir.path()).unwrap().expect("a template");
    assert_eq!(t.render(&c.messages, false).unwrap().text, "J<s>");
    // A fixture without one has none; the GGUF fixtures were written without one too.
    assert!(ChatTemplate::load(&fixture("llama")).unwrap().is_none());
    assert!(ChatTemplate::load(&fixture("gguf/tiny-llama.gguf"))
        .unwrap()
        .is_none());
}

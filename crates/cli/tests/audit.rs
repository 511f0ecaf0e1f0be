//! `neurodiff organisms`, `audit` and `task-vector` end to end: planted changes are found,
//! bad input is refused by name and leaves nothing behind, task arithmetic round-trips exactly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tch::Tensor;

fn neurodiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_neurodiff"))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run neurodiff")
}

fn ok(args: &[&str]) -> String {
    let out = neurodiff(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let out = neurodiff(args);
    assert!(!out.status.success(), "{args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../core/tests/fixtures")
        .join(name)
}

fn organisms(dir: &Path) -> PathBuf {
    let out = dir.join("organisms");
    ok(&["organisms", "--out", s(&out)]);
    out
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json")
}

fn audit(dir: &Path, args: &[&str]) -> Value {
    let out = dir.join(format!(
        "report-{}",
        args.len() + args.iter().map(|a| a.len()).sum::<usize>()
    ));
    let mut all = vec!["audit"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--out", s(&out), "--quiet"]);
    let stdout = ok(&all);
    assert_eq!(
        stdout.trim(),
        out.join("report.html").display().to_string(),
        "prints the report path"
    );
    for plot in ["heatmap.svg", "layers.svg", "spectra.svg"] {
        let svg = std::fs::read_to_string(out.join("plots").join(plot)).expect("plot");
        assert!(svg.starts_with("<svg") && svg.contains("<rect"), "{plot}");
    }
    let html = std::fs::read_to_string(out.join("report.html")).expect("html");
    assert!(html.contains("<svg") && html.contains("most changed tensors"));
    // The verdict comes first, before any section's tables.
    let findings = html.find("id=\"findings\"").expect("a findings section");
    assert!(findings < html.find("<table").unwrap_or(usize::MAX));
    read_json(&out.join("results.json"))
}

#[test]
fn audits_find_every_planted_change_and_its_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let org = organisms(tmp.path());
    let base = org.join("base");
    for (organism, args) in [
        (
            "rank-update",
            vec![
                s(&base).to_string(),
                s(&org.join("rank-update")).to_string(),
            ],
        ),
        (
            "attn-scaled",
            vec![
                s(&base).to_string(),
                s(&org.join("attn-scaled")).to_string(),
            ],
        ),
        (
            "lora",
            vec![
                s(&base).to_string(),
                "--adapter".into(),
                s(&org.join("lora")).to_string(),
            ],
        ),
    ] {
        let truth = read_json(&org.join(organism).join("ground_truth.json"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let results = audit(tmp.path(), &args);
        assert_eq!(results["schema_version"], 1);
        assert!(results["base"]["content_hash"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"));
        let tensors = results["analyses"]["weights"]["tensors"]
            .as_array()
            .unwrap();
        let changed = truth["changed"].as_array().unwrap();
        for want in changed {
            // The planted tensors are the most changed ones, ahead of everything untouched.
            let got = tensors
                .iter()
                .position(|t| t["name"] == want["tensor"])
                .expect("planted tensor reported");
            assert!(
                got < changed.len(),
                "{organism}: {} ranked {got}",
                want["tensor"]
            );
            let t = &tensors[got];
            assert_eq!(
                t["numerical_rank"], want["rank"],
                "{organism}: rank of {}",
                want["tensor"]
            );
            if let Some(rel) = want["rel_fro"].as_f64() {
                assert!(
                    (t["rel_fro"].as_f64().unwrap() - rel).abs() < 1e-4,
                    "{organism}: rel_fro {}",
                    t["rel_fro"]
                );
            }
        }
        for t in &tensors[changed.len()..] {
            assert_eq!(
                t["fro"], 0.0,
                "{organism}: {} should be untouched",
                t["name"]
            );
        }
    }
}

#[test]
fn layer_selection_audits_only_those_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let org = organisms(tmp.path());
    let results = audit(
        tmp.path(),
        &[
            s(&org.join("base")),
            s(&org.join("rank-update")),
            "--layers",
            "3-4",
            "--spectrum",
            "none",
        ],
    );
    let tensors = results["analyses"]["weights"]["tensors"]
        .as_array()
        .unwrap();
    assert_eq!(tensors.len(), 2 * 9);
    assert!(tensors
        .iter()
        .all(|t| matches!(t["layer"].as_u64(), Some(3 | 4)) && t["spectral"].is_null()));
    let err = fails(&[
        "audit",
        s(&org.join("base")),
        s(&org.join("rank-update")),
        "--layers",
        "9",
        "--out",
        s(&tmp.path().join("r")),
    ]);
    assert!(
        err.contains("field `layers`") && err.contains("layer 9"),
        "{err}"
    );
}

#[test]
fn bad_input_is_named_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let org = organisms(tmp.path());
    let base = s(&org.join("base")).to_string();
    let out = tmp.path().join("report");
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            vec![base.clone(), s(&fixture("gpt2")).into()],
            vec!["model_type"],
        ),
        (
            vec![base.clone(), s(&fixture("weights/ft")).into()],
            vec!["hidden_size", "not the same architecture"],
        ),
        (
            vec![
                base.clone(),
                "--adapter".into(),
                s(&fixture("weights/adapter-gpt2")).into(),
            ],
            vec![
                "transformer.h.0.attn.c_attn.weight",
                "adapter_model.safetensors",
            ],
        ),
        (
            vec![
                base.clone(),
                "--adapter".into(),
                s(&fixture("weights/adapter")).into(),
            ],
            vec!["lora_A.weight", "expected", "adapter_model.safetensors"],
        ),
        (
            vec![
                s(&fixture("weights/base")).into(),
                "--adapter".into(),
                s(&org.join("lora")).into(),
            ],
            vec!["model.layers.3.self_attn.q_proj.weight", "not found"],
        ),
        (
            vec![base.clone(), "/no/such/checkpoint".into()],
            vec!["/no/such/checkpoint"],
        ),
    ];
    for (args, needles) in cases {
        let mut all: Vec<&str> = vec!["audit"];
        all.extend(args.iter().map(String::as_str));
        all.extend(["--out", s(&out)]);
        let err = fails(&all);
        for n in needles {
            assert!(err.contains(n), "{args:?}: `{err}` lacks `{n}`");
        }
        assert!(!out.exists(), "a failed audit left {out:?}");
    }
    // An output directory that cannot be created.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let err = fails(&[
        "audit",
        &base,
        s(&org.join("rank-update")),
        "--out",
        s(&file.join("report")),
    ]);
    assert!(err.contains("a-file"), "{err}");
    // A directory that is not a report is never replaced.
    let precious = tmp.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("notes.txt"), "keep me").unwrap();
    let err = fails(&[
        "audit",
        &base,
        s(&org.join("rank-update")),
        "--out",
        s(&precious),
    ]);
    assert!(err.contains("not a NeuroDiff report"), "{err}");
    assert!(precious.join("notes.txt").exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn tensors(dir: &Path) -> Vec<(String, Tensor)> {
    let mut t = Tensor::read_safetensors(dir.join("model.safetensors")).expect("weights");
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn task_vectors_round_trip_exactly_and_combine() {
    let tmp = tempfile::tempdir().unwrap();
    let org = organisms(tmp.path());
    let (base, ft) = (org.join("base"), org.join("rank-update"));
    let tau = tmp.path().join("tau.safetensors");
    ok(&["task-vector", "extract", s(&base), s(&ft), "--out", s(&tau)]);

    let applied = tmp.path().join("applied");
    ok(&[
        "task-vector",
        "apply",
        s(&base),
        s(&tau),
        "--out",
        s(&applied),
    ]);
    for ((name, want), (_, got)) in tensors(&ft).iter().zip(tensors(&applied)) {
        assert!(
            want.equal(&got),
            "{name} differs after apply(base, extract(base, ft))"
        );
    }
    assert!(applied.join("config.json").exists() && applied.join("tokenizer.json").exists());
    ok(&[
        "inspect",
        s(&applied),
        "--prompt",
        "loads like any checkpoint",
    ]);

    // tau - tau = 0: the base comes back; -1 * tau moves the other way by the same amount.
    let cancelled = tmp.path().join("cancelled");
    ok(&[
        "task-vector",
        "apply",
        s(&base),
        s(&tau),
        s(&tau),
        "--weights",
        "1,-1",
        "--out",
        s(&cancelled),
    ]);
    for ((name, want), (_, got)) in tensors(&base).iter().zip(tensors(&cancelled)) {
        assert!(want.equal(&got), "{name}");
    }
    let negated = tmp.path().join("negated");
    ok(&[
        "task-vector",
        "apply",
        s(&base),
        s(&tau),
        "--scale",
        "-1",
        "--out",
        s(&negated),
    ]);
    let results = audit(tmp.path(), &[s(&base), s(&negated)]);
    let top = &results["analyses"]["weights"]["tensors"][0];
    assert_eq!(top["name"], "model.layers.4.mlp.down_proj.weight");
    assert!((top["rel_fro"].as_f64().unwrap() - 0.3).abs() < 1e-4);

    let err = fails(&[
        "task-vector",
        "apply",
        s(&fixture("weights/base")),
        s(&tau),
        "--out",
        s(&tmp.path().join("x")),
    ]);
    assert!(
        err.contains("model.layers.2") && err.contains("not found"),
        "{err}"
    );
    assert!(!tmp.path().join("x").exists());
}

#[test]
fn trained_organisms_audit_with_every_analysis_on_the_builtin_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let org = tmp.path().join("trained");
    // Copies the cached organisms (trained on first use, once per seed and version).
    ok(&["organisms", "--trained", "--quiet", "--out", s(&org)]);
    let base = org.join("base");
    let blocks = org.join("cooking-blocks");
    let truth = read_json(&blocks.join("ground_truth.json"));
    let trained: Vec<String> = truth["trained_blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| format!("model.layers.{b}."))
        .collect();
    let analyses = "weights,activations,logit-lens";
    let r = audit(
        tmp.path(),
        &[
            s(&base),
            s(&blocks),
            "--analyses",
            analyses,
            "--max-samples",
            "24",
        ],
    );
    assert_eq!(r["corpus"]["source"], "builtin:generic");
    // The weights that moved are exactly those of the trained blocks.
    for t in r["analyses"]["weights"]["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let in_trained = trained.iter().any(|p| name.starts_with(p));
        assert_eq!(t["fro"].as_f64().unwrap() > 0.0, in_trained, "{name}");
    }
    let first: usize = truth["trained_blocks"][0].as_u64().unwrap() as usize;
    for l in r["analyses"]["activations"]["layers"].as_array().unwrap() {
        let moved = l["mean_diff_norm"].as_f64().unwrap() > 0.0;
        let layer = l["layer"].as_u64().unwrap() as usize;
        assert!(moved || layer <= first, "block {layer} {}", l["hook"]);
        assert!(!moved || layer >= first, "block {layer} {}", l["hook"]);
    }
    assert!(
        r["analyses"]["logit_lens"]["output"]["kl_mean"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    let lora = org.join("cooking-lora");
    let r = audit(
        tmp.path(),
        &[
            s(&base),
            "--adapter",
            s(&lora),
            "--analyses",
            analyses,
            "--max-samples",
            "16",
        ],
    );
    let tensors = r["analyses"]["weights"]["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 6 * 7, "a LoRA pair on every linear layer");
    assert!(tensors
        .iter()
        .all(|t| t["numerical_rank"].as_u64().unwrap() <= 8));
    assert!(
        r["analyses"]["activations"]["layers"]
            .as_array()
            .unwrap()
            .len()
            == 6 * 5
    );
}

#[test]
fn tier2_analyses_on_a_trained_adapter_report_and_grade() {
    let tmp = tempfile::tempdir().unwrap();
    let org = tmp.path().join("trained");
    ok(&["organisms", "--trained", "--quiet", "--out", s(&org)]);
    let (base, lora) = (org.join("base"), org.join("cooking-lora"));
    let out = tmp.path().join("t2");
    ok(&[
        "audit",
        s(&base),
        "--adapter",
        s(&lora),
        "--analyses",
        "traces,cmap,stitching,steering",
        "--max-samples",
        "32",
        "--seq-len",
        "32",
        "--cmap-samples",
        "8",
        "--steer-samples",
        "8",
        "--max-new-tokens",
        "4",
        "--quiet",
        "--out",
        s(&out),
    ]);
    let r = read_json(&out.join("results.json"));
    // Graded automatically: the adapter's directory holds the organism's ground truth.
    assert_eq!(r["grades"]["organism"], "cooking-lora");
    assert!(r["grades"]["mean_logit_lens_p20"].as_f64().unwrap() > 0.0);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for section in [
        "Readable traces",
        "Cross-model activation patching",
        "Model stitching",
        "Steering",
    ] {
        assert!(html.contains(section), "{section}");
    }
    for plot in [
        "cmap.svg",
        "stitching_kl.svg",
        "stitching_loss.svg",
        "steering_kl.svg",
        "steering_perplexity.svg",
        "steering_domain_mass.svg",
        "traces_consistency.svg",
        "traces_overlap.svg",
        "patchscope_scales.svg",
    ] {
        assert!(out.join("plots").join(plot).is_file(), "{plot}");
    }
    // An adapter on every block: stitching from the base at k = n keeps no adapted block.
    let points = r["analyses"]["stitching"]["points"].as_array().unwrap();
    assert_eq!(points.len(), 2 * 7);
    // `neurodiff grade` re-grades the report on disk to the same figures.
    let printed = ok(&["grade", s(&out), s(&lora)]);
    assert!(printed.contains("P@20"), "{printed}");
    let grades = read_json(&out.join("grades.json"));
    assert_eq!(grades["traces"], r["grades"]["traces"]);
    let e = fails(&["grade", s(&out), s(&tmp.path().join("nowhere"))]);
    assert!(e.contains("ground_truth.json"), "{e}");

    // The optional LLM grader speaks the OpenAI chat protocol: a receiver on loopback answers
    // each position's question, and the last number of its reply is the count kept.
    let positions = r["analyses"]["traces"]["positions"]
        .as_array()
        .unwrap()
        .len();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let receiver = std::thread::spawn(move || {
        let mut questions = Vec::new();
        for _ in 0..positions {
            let (mut stream, _) = listener.accept().unwrap();
            questions.push(read_request(&mut stream));
            let body = r#"{"choices":[{"message":{"content":"Of the 20 tokens, 7"}}]}"#;
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            std::io::Write::write_all(&mut stream, reply.as_bytes()).unwrap();
        }
        questions
    });
    let graded = Command::new(env!("CARGO_BIN_EXE_neurodiff"))
        .args(["grade", s(&out), s(&lora), "--llm"])
        .env("NEURODIFF_LLM_URL", &url)
        .env("NEURODIFF_LLM_KEY", "sk-test")
        .env("NEURODIFF_LLM_MODEL", "grader")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(
        graded.status.success(),
        "{}",
        String::from_utf8_lossy(&graded.stderr)
    );
    let questions = receiver.join().unwrap();
    for (head, body) in &questions {
        assert!(head.starts_with("POST /v1/chat/completions "), "{head}");
        assert!(
            head.to_lowercase()
                .contains("authorization: bearer sk-test"),
            "{head}"
        );
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["model"], "grader");
        assert!(body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("cooking"));
    }
    let llm = &read_json(&out.join("grades.json"))["llm"];
    assert_eq!(llm["positions"].as_array().unwrap().len(), positions);
    assert_eq!(llm["positions"][0]["relevant_of_20"], 7);
}

/// One HTTP request from `stream`: its head and its body (by Content-Length).
fn read_request(stream: &mut std::net::TcpStream) -> (String, String) {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

/// Two GGUF files audited embedded (every analysis that runs on a pair without an adapter)
/// give the results of the same models as transformers dequantizes them into safetensors: the
/// reader changes the container, not one number.
#[test]
fn a_gguf_pair_audits_as_the_same_models_in_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let g = fixture("gguf");
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(
        &corpus,
        (0..16)
            .map(|i| {
                format!(
                    "Sample {i}: the quick brown fox jumps over the lazy dog {}\n",
                    "ab ".repeat(i)
                )
            })
            .collect::<String>(),
    )
    .unwrap();
    let run = |base: &str, ft: &str| {
        audit(
            tmp.path(),
            &[
                s(&g.join(base)),
                s(&g.join(ft)),
                "--analyses",
                "weights,activations,logit-lens,traces,cmap,stitching",
                "--corpus",
                s(&corpus),
                "--seq-len",
                "24",
                "--max-samples",
                "16",
            ],
        )
    };
    let from_gguf = run("tiny-llama.gguf", "tiny-llama-ft.gguf");
    let from_st = run("tiny-llama-st", "tiny-llama-ft-st");
    assert_eq!(
        from_gguf["analyses"].as_object().unwrap().len(),
        6,
        "{}",
        from_gguf["analyses"]
    );
    close(&from_gguf["analyses"], &from_st["analyses"], "analyses");
}

/// JSON equal, numbers to 1e-6 relative.
fn close(a: &Value, b: &Value, path: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-6 * x.abs().max(y.abs()) + 1e-9,
                "{path}: {x} vs {y}"
            );
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{path}"
            );
            for k in x.keys() {
                close(&x[k], &y[k], &format!("{path}.{k}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{path}");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                close(p, q, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(a, b, "{path}"),
    }
}

/// A chat corpus is rendered with the base model's chat template, and `--token-filter` splits
/// its tokens: the assistant's, the user's and the template's add up to all of them. A filter
/// on a text corpus, and a chat corpus for a model without a template, are refused by name.
#[test]
fn chat_corpora_render_with_the_template_and_token_filters_partition_the_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("chat-llama");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("llama").join(f), model.join(f)).unwrap();
    }
    let template = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}";
    std::fs::write(
        model.join("tokenizer_config.json"),
        serde_json::json!({"chat_template": template, "bos_token": "<s>"}).to_string(),
    )
    .unwrap();
    let chats = tmp.path().join("chats.jsonl");
    let lines: String = (0..8)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("Question {i}: which layers moved?")},
                {"role": "assistant", "content": format!("Answer {i}: the fox.")}]})
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&chats, lines).unwrap();
    let ft = fixture("llama");
    let tokens = |filter: &str| {
        let r = audit(
            tmp.path(),
            &[
                s(&model),
                s(&ft),
                "--analyses",
                "weights,activations,logit-lens",
                "--corpus",
                s(&chats),
                "--seq-len",
                "128",
                "--token-filter",
                filter,
            ],
        );
        r["analyses"]["activations"]["n_tokens"].as_u64().unwrap()
    };
    let (all, assistant, user, template) = (
        tokens("all"),
        tokens("assistant"),
        tokens("user"),
        tokens("template"),
    );
    assert!(
        assistant > 0 && user > 0 && template > 0,
        "{assistant} {user} {template}"
    );
    assert_eq!(assistant + user + template, all);
    let text = tmp.path().join("text.txt");
    std::fs::write(&text, "one sample\nanother sample\n").unwrap();
    let err = fails(&[
        "audit",
        s(&model),
        s(&ft),
        "--analyses",
        "activations",
        "--corpus",
        s(&text),
        "--token-filter",
        "assistant",
        "--out",
        s(&tmp.path().join("x")),
    ]);
    assert!(
        err.contains("token_filter `assistant` needs a chat corpus"),
        "{err}"
    );
    let err = fails(&[
        "audit",
        s(&ft),
        s(&ft),
        "--analyses",
        "activations",
        "--corpus",
        s(&chats),
        "--out",
        s(&tmp.path().join("y")),
    ]);
    assert!(err.contains("no chat template"), "{err}");
}

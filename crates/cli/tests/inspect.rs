//! `neurodiff inspect` end to end: the binary, its output file and its errors.
#![allow(clippy::expect_used, clippy::unwrap_used)]
use std::path::PathBuf;
use std::process::Command;

use tch::Tensor;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../core/tests/fixtures")
        .join(name)
}

fn neurodiff() -> Command {
    // No LD_LIBRARY_PATH: the binary finds libtorch through its rpath.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_neurodiff"));
    cmd.env_remove("LD_LIBRARY_PATH");
    cmd
}

fn prompt(name: &str) -> String {
    let bytes = std::fs::read(fixture(name).join("reference.safetensors")).expect("reference");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("header length")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    header["__metadata__"]["prompt"]
        .as_str()
        .expect("prompt")
        .to_string()
}

#[test]
fn writes_logits_and_hidden_states_that_match_transformers() {
    let tmp = tempfile::tempdir().expect("tmp");
    for name in ["gpt2", "qwen2"] {
        let out = tmp.path().join(format!("{name}.safetensors"));
        let status = neurodiff()
            .args([
                "inspect",
                fixture(name).to_str().expect("utf8"),
                "--prompt",
                &prompt(name),
                "--out",
            ])
            .arg(&out)
            .status()
            .expect("run neurodiff");
        assert!(status.success());
        let got: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&out)
            .expect("read out")
            .into_iter()
            .collect();
        let reference = Tensor::read_safetensors(fixture(name).join("reference.safetensors"))
            .expect("read reference");
        assert_eq!(got.len(), reference.len(), "{name}: same tensor names");
        for (key, want) in reference {
            let have = &got[&key];
            assert_eq!(have.size(), want.size(), "{name}: {key} shape");
            if key == "input_ids" {
                assert!(have.equal(&want));
            } else {
                assert_eq!(have.kind(), tch::Kind::Float, "{key} is fp32");
                let err = (have - want).abs().max().double_value(&[]);
                assert!(err <= 1e-4, "{name}: {key} max abs error {err:e}");
            }
        }
    }
}

#[test]
fn prints_a_table_of_next_token_predictions() {
    let output = neurodiff()
        .args([
            "inspect",
            fixture("llama").to_str().expect("utf8"),
            "--prompt",
            "The quick brown fox",
            "--top",
            "4",
        ])
        .output()
        .expect("run neurodiff");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("llama, 3 layers, d_model 64"), "{stdout}");
    assert!(
        stdout.contains("token id") && stdout.contains("prob"),
        "{stdout}"
    );
    let rows = stdout
        .lines()
        .filter(|l| l.starts_with("│ ") && !l.contains("rank"))
        .count();
    assert_eq!(rows, 4, "{stdout}");
}

#[test]
fn errors_name_the_problem_and_leave_no_output() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("missing-dir/out.safetensors");
    let output = neurodiff()
        .args([
            "inspect",
            fixture("gpt2").to_str().expect("utf8"),
            "--prompt",
            "hi",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("run neurodiff");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing-dir"));
    assert!(!out.exists());

    let output = neurodiff()
        .args(["inspect", "/no/such/model", "--prompt", "hi"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/no/such/model"));

    let output = neurodiff()
        .args([
            "inspect",
            fixture("gpt2").to_str().expect("utf8"),
            "--prompt",
            "hi",
            "--device",
            "tpu",
        ])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&output.stderr).contains("device `tpu`"));
}

//! Hub ids resolved offline from a Hugging Face cache laid out on disk as huggingface_hub does.
#![allow(clippy::expect_used, clippy::unwrap_used)]
mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{fixture, max_abs_diff, reference, TOL};
use neurodiff_core::reference::{resolve, HubOptions};
use neurodiff_core::{inspect, tokenizer, Checkpoint, CoreError, Model};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// `hub/models--{org}--{name}/{blobs,refs/main,snapshots/COMMIT}` with snapshot files as
/// symlinks into blobs/, as huggingface_hub writes them.
fn lay_out_cache(hub: &Path, repo: &str, src: &Path) -> PathBuf {
    let root = hub.join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = root.join("snapshots").join(COMMIT);
    fs::create_dir_all(root.join("blobs")).expect("blobs");
    fs::create_dir_all(root.join("refs")).expect("refs");
    fs::create_dir_all(&snapshot).expect("snapshot");
    fs::write(root.join("refs/main"), COMMIT).expect("ref");
    for (i, entry) in fs::read_dir(src).expect("src").enumerate() {
        let path = entry.expect("entry").path();
        let blob = root.join("blobs").join(format!("blob{i:04}"));
        fs::copy(&path, &blob).expect("copy blob");
        std::os::unix::fs::symlink(&blob, snapshot.join(path.file_name().expect("name")))
            .expect("link");
    }
    snapshot
}

fn offline(hub: &Path) -> HubOptions {
    HubOptions {
        cache_dir: hub.to_path_buf(),
        offline: true,
    }
}

#[test]
fn resolves_branch_and_commit_from_the_cache_and_runs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hub = tmp.path().join("hub");
    let snapshot = lay_out_cache(&hub, "tiny-org/tiny-llama", &fixture("llama"));

    assert_eq!(
        resolve("tiny-org/tiny-llama", &offline(&hub)).expect("main"),
        snapshot
    );
    assert_eq!(
        resolve(&format!("tiny-org/tiny-llama@{COMMIT}"), &offline(&hub)).expect("commit"),
        snapshot
    );

    let dir = resolve("tiny-org/tiny-llama@main", &offline(&hub)).expect("resolve");
    let model =
        Model::load(&Checkpoint::open(&dir).expect("open"), tch::Device::Cpu).expect("load");
    let tok = tokenizer::load(&dir).expect("tokenizer");
    let out = inspect::inspect(&model, &tok, &common::reference_prompt("llama")).expect("inspect");
    assert!(max_abs_diff(&out.logits, &reference("llama")["logits"]) <= TOL);
}

#[test]
fn offline_misses_are_errors_that_name_the_cache() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hub = tmp.path().join("hub");
    lay_out_cache(&hub, "tiny-org/tiny-llama", &fixture("llama"));
    for reference in ["tiny-org/tiny-llama@v2", "other-org/absent"] {
        let err = resolve(reference, &offline(&hub)).expect_err("not cached");
        assert!(matches!(err, CoreError::Reference { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(reference) && msg.contains(&hub.display().to_string()),
            "{msg}"
        );
    }
    let err = resolve("not a reference", &offline(&hub)).expect_err("not a hub id");
    assert!(err.to_string().contains("org/name"), "{err}");
}

#[test]
fn a_snapshot_with_a_missing_shard_is_not_a_hit() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hub = tmp.path().join("hub");
    let snapshot = lay_out_cache(&hub, "tiny-org/tiny-gpt2", &fixture("gpt2"));
    assert!(resolve("tiny-org/tiny-gpt2", &offline(&hub)).is_ok());
    fs::remove_file(snapshot.join("model-00003-of-00004.safetensors")).expect("rm shard");
    assert!(resolve("tiny-org/tiny-gpt2", &offline(&hub)).is_err());
}

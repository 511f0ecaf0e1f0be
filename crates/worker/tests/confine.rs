//! The worker's half of the reference policy on real files: a checkpoint vetted and then
//! re-pointed before it is opened is refused (the opened file's inode must be the vetted one),
//! and so is a FIFO in place of a weight file; the worker's cache is closed to local
//! references even under an allowed root; hub ids are pinned and confined.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use neurodiff_core::reference::HubOptions;
use neurodiff_core::Checkpoint;
use neurodiff_protocol::{Limits, ReferencePolicy};
use neurodiff_worker::confine::Enforcer;

fn checkpoint(dir: &Path) {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz/corpus");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(corpus.join("config/llama.json"), dir.join("config.json")).unwrap();
    std::fs::copy(
        corpus.join("safetensors/llama-two-tensors.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
}

/// Opens `reference` for team `t` and returns the refusal's message.
fn refusal(e: &Enforcer, field: &str, reference: &str) -> String {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(e.open("t", field, reference))
        .unwrap_err()
        .to_string()
}

fn enforcer(root: &Path, cache: &Path) -> Enforcer {
    std::fs::create_dir_all(cache).unwrap();
    let mut policy = ReferencePolicy {
        local_roots: vec![root.display().to_string()],
        ..ReferencePolicy::default()
    };
    policy.deny(&cache.display().to_string()).unwrap();
    Enforcer {
        policy,
        limits: Limits::default(),
        hub: HubOptions::from_env(),
        cache_dir: cache.to_path_buf(),
    }
}

#[test]
fn a_file_re_pointed_after_the_check_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path().canonicalize().unwrap();
    let (root, outside) = (tmp.join("models"), tmp.join("outside"));
    checkpoint(&root.join("ft"));
    checkpoint(&outside.join("private"));
    let e = enforcer(&root, &tmp.join("models").join("cache"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let reference = root.join("ft").display().to_string();
    let confined = rt.block_on(e.open("t", "finetuned", &reference)).unwrap();
    // Unchanged: what is opened is what was checked.
    Checkpoint::open_guarded(&confined.dir, Some(confined.guard())).unwrap();
    // Re-pointed between the check and the open.
    let weights = root.join("ft").join("model.safetensors");
    std::fs::remove_file(&weights).unwrap();
    std::os::unix::fs::symlink(outside.join("private").join("model.safetensors"), &weights)
        .unwrap();
    let err = Checkpoint::open_guarded(&confined.dir, Some(confined.guard()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not the file that was checked"), "{err}");
    assert!(!err.contains("outside"), "{err}");
    // Opened afresh, the link is refused outright.
    let err = refusal(&e, "finetuned", &reference);
    assert!(
        err.contains("`model.safetensors` resolves outside"),
        "{err}"
    );
}

#[test]
fn the_workers_cache_is_closed_to_local_references() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path().canonicalize().unwrap();
    let cache = tmp.join("cache");
    // Another team's s3:// model, as copied into this worker's cache.
    checkpoint(&cache.join("s3").join("0123abcd"));
    let e = enforcer(&tmp, &cache);
    let reference = cache.join("s3").join("0123abcd").display().to_string();
    let err = refusal(&e, "base", &reference);
    assert!(err.contains("refused") || err.contains("outside"), "{err}");
}

/// A hub cache as huggingface_hub writes it: `models--org--name/{blobs,refs/main,snapshots/C}`,
/// snapshot files linking into blobs/.
fn snapshot(hub: &Path, repo: &str, commit: &str, src: &Path) -> std::path::PathBuf {
    let root = hub.join(format!("models--{}", repo.replace('/', "--")));
    let snap = root.join("snapshots").join(commit);
    for d in [root.join("blobs"), root.join("refs"), snap.clone()] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(root.join("refs/main"), commit).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let blob = root.join("blobs").join(format!("{commit}-{name}"));
        std::fs::copy(&path, &blob).unwrap();
        std::os::unix::fs::symlink(&blob, snap.join(&name)).unwrap();
    }
    snap
}

#[test]
fn hub_ids_are_pinned_to_their_commit_and_confined_to_their_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path().canonicalize().unwrap();
    let (hub, src) = (tmp.join("hub"), tmp.join("src"));
    checkpoint(&src);
    let (a, b) = ("a".repeat(40), "b".repeat(40));
    let snap_a = snapshot(&hub, "tiny-org/m", &a, &src);
    let mut e = enforcer(&tmp.join("nothing-local"), &tmp.join("cache"));
    e.policy.hub.enabled = true;
    e.policy.hub.orgs = vec!["tiny-org".into()];
    e.hub = HubOptions {
        cache_dir: hub.clone(),
        offline: true,
    };
    // As a worker does: the hub cache is never readable as a local path, yet hub ids read it.
    e.policy.deny(&hub.display().to_string()).unwrap();
    let err = refusal(&e, "base", &snap_a.display().to_string());
    assert!(err.contains("refused"), "{err}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let opened = rt.block_on(e.open("t", "base", "tiny-org/m")).unwrap();
    assert_eq!(opened.pinned, format!("tiny-org/m@{a}"));
    assert_eq!(opened.dir, snap_a);
    // The branch moves on; the pinned form still opens what planning saw.
    snapshot(&hub, "tiny-org/m", &b, &src);
    let pinned = rt.block_on(e.open("t", "base", &opened.pinned)).unwrap();
    assert_eq!(pinned.dir, snap_a);
    let now = rt.block_on(e.open("t", "base", "tiny-org/m@main")).unwrap();
    assert_eq!(now.pinned, format!("tiny-org/m@{b}"));
    // Another organisation is refused; so is a snapshot file linked out of the repository.
    assert!(rt.block_on(e.open("t", "base", "evil-org/m")).is_err());
    let weights = snap_a.join("model.safetensors");
    std::fs::remove_file(&weights).unwrap();
    std::os::unix::fs::symlink(src.join("model.safetensors"), &weights).unwrap();
    let err = refusal(&e, "base", &opened.pinned);
    assert!(err.contains("resolves outside"), "{err}");
}

#[test]
fn a_fifo_in_place_of_a_weight_file_is_refused_without_blocking() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path().canonicalize().unwrap();
    let root = tmp.join("models");
    let ft = root.join("ft");
    checkpoint(&ft);
    std::fs::remove_file(ft.join("model.safetensors")).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(ft.join("model.safetensors"))
        .status()
        .unwrap();
    assert!(made.success());
    let e = enforcer(&root, &tmp.join("cache"));
    let err = refusal(&e, "finetuned", &ft.display().to_string());
    assert!(err.contains("not a regular file"), "{err}");
    // Opened directly (no policy), the reader does not block on it either.
    let err = Checkpoint::open(&ft).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn a_shard_index_linked_out_of_the_root_is_refused_before_it_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path().canonicalize().unwrap();
    let (root, outside) = (tmp.join("models"), tmp.join("outside"));
    let ft = root.join("ft");
    checkpoint(&ft);
    std::fs::remove_file(ft.join("model.safetensors")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    // Not an index at all: were it parsed, the error would quote it.
    std::fs::write(outside.join("secret.json"), "\"a secret string\"").unwrap();
    std::os::unix::fs::symlink(
        outside.join("secret.json"),
        ft.join("model.safetensors.index.json"),
    )
    .unwrap();
    let e = enforcer(&root, &tmp.join("cache"));
    let err = refusal(&e, "finetuned", &ft.display().to_string());
    assert!(
        err.contains("`model.safetensors.index.json` resolves outside"),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");
}

fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(made.success());
}

/// Runs `f` on a thread of its own and returns its result, or fails the test if it has not
/// returned within 30 s (a reader blocked in `open` never would).
fn within_30_s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .expect("blocked: no answer within 30 s")
}

#[test]
fn a_fifo_as_the_corpus_is_refused_without_blocking() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path().canonicalize().unwrap();
    let root = tmp.join("models");
    std::fs::create_dir_all(&root).unwrap();
    let fifo = root.join("corpus.fifo");
    mkfifo(&fifo);
    let e = enforcer(&root, &tmp.join("cache"));
    let opts = neurodiff_protocol::CorpusOptions {
        source: Some(fifo.display().to_string()),
        ..Default::default()
    };
    // Through the service's policy...
    let (service_e, service_opts) = (e.clone(), opts.clone());
    let err = within_30_s(move || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(service_e.read_corpus("t", &service_opts))
            .unwrap_err()
            .to_string()
    });
    assert!(err.contains("not a regular file"), "{err}");
    // ...and embedded.
    let err = within_30_s(move || {
        neurodiff_exec::corpus::load_local(&opts, &Limits::default())
            .unwrap_err()
            .to_string()
    });
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn a_fine_tune_swapped_for_a_link_mid_audit_gives_no_other_teams_ground_truth() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path().canonicalize().unwrap();
    let (root, outside) = (tmp.join("models"), tmp.join("outside"));
    checkpoint(&root.join("base"));
    checkpoint(&root.join("ft"));
    checkpoint(&outside.join("private"));
    let truth = |domain: &str| {
        serde_json::json!({"organism": domain, "domain_words": [domain], "trained_blocks": [0]})
            .to_string()
    };
    std::fs::write(root.join("ft/ground_truth.json"), truth("mine")).unwrap();
    std::fs::write(outside.join("private/ground_truth.json"), truth("theirs")).unwrap();
    let e = enforcer(&root, &tmp.join("cache"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let open = |name: &str| {
        rt.block_on(e.open("t", "finetuned", &root.join(name).display().to_string()))
            .unwrap()
    };
    let (base, ft) = (open("base"), open("ft"));
    let target = neurodiff_protocol::Target::Checkpoint {
        reference: ft.reference.clone(),
    };
    let sources = neurodiff_worker::confine::open_sources(&base, &target, &ft).unwrap();
    let read = neurodiff_exec::dist::ground_truth(&sources).unwrap();
    assert_eq!(read.organism, "mine");
    // The team replaces its fine-tune's directory with a link to another team's organism
    // after the files were vetted and opened.
    std::fs::rename(root.join("ft"), root.join("ft.old")).unwrap();
    std::os::unix::fs::symlink(outside.join("private"), root.join("ft")).unwrap();
    assert_eq!(
        neurodiff_exec::dist::ground_truth(&sources).map(|g| g.organism),
        None
    );
}

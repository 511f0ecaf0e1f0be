//! Object storage on memory, on a local directory, and on a real S3 server (Garage, which
//! scripts/test.sh starts and configures through the AWS_* variables).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use bytes::Bytes;
use neurodiff_store::{artifact_key, Blobs, StoreError};

async fn exercise(blobs: &Blobs) {
    let key = artifact_key("a1", "layer-0003", "spectra.json");
    let stored = blobs.put(&key, Bytes::from_static(b"first")).await.unwrap();
    assert_eq!(
        (stored.size, stored.key.as_str()),
        (5, "audits/a1/layer-0003/spectra.json")
    );
    assert_eq!(
        stored.sha256,
        "a7937b64b8caa58f03721bb6bacf5c78cb235febe0e70b1b84cd99541461a08e"
    );
    // A retried shard writes the same key: overwritten, never duplicated.
    blobs
        .put(&key, Bytes::from_static(b"second"))
        .await
        .unwrap();
    assert_eq!(
        blobs.get(&key).await.unwrap(),
        Bytes::from_static(b"second")
    );
    blobs
        .put(
            &artifact_key("a1", "non-layer", "x.svg"),
            Bytes::from_static(b"<svg/>"),
        )
        .await
        .unwrap();
    blobs
        .put(
            &artifact_key("a2", "non-layer", "x.svg"),
            Bytes::from_static(b"<svg/>"),
        )
        .await
        .unwrap();
    assert_eq!(
        blobs.list("audits/a1").await.unwrap(),
        [
            "audits/a1/layer-0003/spectra.json",
            "audits/a1/non-layer/x.svg"
        ]
    );
    assert!(matches!(
        blobs.get("audits/a1/nope").await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn memory_store() {
    exercise(&Blobs::from_url("memory://").unwrap()).await;
}

#[tokio::test]
async fn local_directory_store() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Blobs::from_url(&format!("file://{}", dir.path().display())).unwrap();
    exercise(&blobs).await;
    assert!(dir.path().join("audits/a1/non-layer/x.svg").is_file());
}

#[test]
fn unknown_urls_are_refused_by_name() {
    let err = Blobs::from_url("ftp://x").unwrap_err().to_string();
    assert!(err.contains("ftp://x") && err.contains("s3://"), "{err}");
}

/// The S3 test needs the server scripts/garage.sh starts; under CI its absence is a failure.
fn s3_configured() -> bool {
    let configured = std::env::var("AWS_ENDPOINT_URL").is_ok();
    assert!(
        configured || std::env::var("CI").is_err(),
        "CI: AWS_ENDPOINT_URL is not set; source scripts/garage.sh"
    );
    configured
}

#[tokio::test]
async fn s3_store_on_garage() {
    if !s3_configured() {
        eprintln!("skipped: no S3 server configured (source scripts/garage.sh)");
        return;
    }
    let bucket = std::env::var("NEURODIFF_TEST_BUCKET").unwrap_or_else(|_| "neurodiff".into());
    let prefix = format!("tests/{}", uuid::Uuid::new_v4());
    let blobs = Blobs::from_url(&format!("s3://{bucket}/{prefix}")).unwrap();
    exercise(&blobs).await;
    // Streaming returns the same bytes as a whole read.
    use futures::TryStreamExt;
    let key = artifact_key("a1", "layer-0003", "spectra.json");
    let chunks: Vec<Bytes> = blobs
        .stream(&key)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(chunks.concat(), b"second");
}

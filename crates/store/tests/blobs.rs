//! Object storage on memory and on a local directory (S3/Garage arrives with the service tests).
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

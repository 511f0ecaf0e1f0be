//! Fuzzes `POST /v1/audits` bodies through the API's own parsing and validation (the same
//! `AuditRequest` and `validate` the route uses), mutated from the committed seeds: no panic,
//! and at most 1 MiB held at once per case (bodies are capped at 64 KiB before parsing).
//! ND_FUZZ_CASES sets the cases (default 256).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/fuzz/common.rs"]
mod common;

use neurodiff_api::routes::audits::{validate, AuditRequest};
use neurodiff_protocol::{Limits, ReferencePolicy};

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

#[test]
fn request_bodies() {
    let policy = ReferencePolicy::from_json(
        r#"{"local_roots": ["/models"], "s3": ["s3://models/shared"],
            "hub": {"enabled": true, "orgs": ["*"]}}"#,
    )
    .unwrap();
    let limits = Limits::default();
    common::fuzz("request", 1 << 20, |bytes| {
        if bytes.len() > neurodiff_api::MAX_BODY_BYTES {
            return;
        }
        if let Ok(req) = serde_json::from_slice::<AuditRequest>(bytes) {
            if let Ok(spec) = validate(req, "blue", &policy, &limits) {
                if let Some(layers) = &spec.layers {
                    assert!(layers.iter().all(|&l| l < limits.max_blocks));
                }
            }
        }
    });
}

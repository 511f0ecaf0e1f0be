//! Fuzzes the parsers of what a request names: the `--layers` syntax and model references
//! (classified, normalised and checked against a policy), mutated from the committed seeds.
//! No panic; at most 1 MiB held at once per case (a range like `0-99999999999` must be
//! refused, not expanded). ND_FUZZ_CASES sets the cases per target (default 256).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/fuzz/common.rs"]
mod common;

use neurodiff_protocol::{classify, parse_layers, ReferencePolicy};

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

const BOUND: usize = 1 << 20;

#[test]
fn layer_lists() {
    common::fuzz("layers", BOUND, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        if let Ok(Some(layers)) = parse_layers(&text) {
            assert!(
                layers.windows(2).all(|w| w[0] < w[1]),
                "sorted and distinct"
            );
        }
    });
}

#[test]
fn model_references() {
    let policy = ReferencePolicy::from_json(
        r#"{"local_roots": ["/models", "/teams/{team}"], "s3": ["s3://models/shared"],
            "hub": {"enabled": true, "orgs": ["meta-llama", "org"]}}"#,
    )
    .unwrap();
    common::fuzz("reference", BOUND, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        if let Ok(parsed) = classify(&text) {
            // Whatever was accepted is normalised: no segment climbs out of its prefix.
            let shown = format!("{parsed:?}");
            assert!(
                !shown.contains("/../") && !shown.contains("\"..\""),
                "{shown}"
            );
        }
        let _ = policy.check("blue", "base", &text);
    });
}

//! What a hostile team tries through the API, with a valid token: model references outside
//! the policy (answered 400 naming the field and the rule, never whether anything exists),
//! repeated and out-of-range layers, an idempotency key reused for another request (409),
//! floods over the team's quota (429 with Retry-After), revoked tokens.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use axum::http::StatusCode;
use common::{call, harness, submit};
use neurodiff_protocol::Limits;
use neurodiff_store::Quota;
use serde_json::json;
use sqlx::PgPool;

fn body(base: &str, finetuned: &str) -> String {
    json!({"base": base, "finetuned": finetuned}).to_string()
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn references_outside_the_policy_are_refused_without_revealing_anything(pool: PgPool) {
    let h = harness(pool).await;
    let refused = [
        ("/", "/etc", "field `base`"),
        ("/models/llama", "/etc", "field `finetuned`"),
        ("/models/../etc", "/models/x", "field `base`"),
        ("/models/llama", "relative/dir/ckpt", "field `finetuned`"),
        ("/teams/team-b/private", "/models/x", "field `base`"),
        // The artifact store reads as any prefix outside the roots: nothing says it is there.
        (
            "s3://models/shared/artifacts/audits",
            "/models/x",
            "s3:// prefixes must lie under",
        ),
        (
            "s3://models/shared/x/%2E%2E/%2e%2e/y",
            "/models/x",
            "field `base`",
        ),
        (
            "s3://models/private/x",
            "/models/x",
            "s3:// prefixes must lie under",
        ),
        ("org/name@../../x", "/models/x", "branch, tag or commit"),
        ("/models/x\n", "/models/x", "control characters"),
    ];
    for (base, ft, needle) in refused {
        let (status, _, resp) = submit(&h, &h.token_a, body(base, ft), None).await;
        let error = resp["error"].as_str().unwrap_or_default();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{base} {ft}: {resp}");
        assert!(
            error.contains(needle),
            "{base} {ft}: `{error}` lacks `{needle}`"
        );
        for leak in ["missing", "exists", "not found", "No such", "reserved"] {
            assert!(!error.contains(leak), "{error}");
        }
    }
    // A team's own prefix and the shared roots are allowed, and nothing refused was stored.
    for (base, ft) in [
        ("/teams/team-a/base", "/teams/team-a/ft"),
        ("/models/llama", "s3://models/shared/ft"),
        (
            "meta-llama/Llama-3.1-8B@main",
            "org/ft@0123456789abcdef0123456789abcdef01234567",
        ),
    ] {
        let (status, _, resp) = submit(&h, &h.token_a, body(base, ft), None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{base} {ft}: {resp}");
    }
    let (_, page) = call(&h, "GET", "/v1/audits", Some(&h.token_a), None, None).await;
    assert_eq!(page["audits"].as_array().unwrap().len(), 3);
    h.state.events.as_ref().unwrap().delete().await.unwrap();
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn layer_lists_are_deduplicated_and_range_checked(pool: PgPool) {
    let h = harness(pool).await;
    let with_layers = |layers: serde_json::Value| {
        json!({"base": "org/b", "finetuned": "org/f", "layers": layers}).to_string()
    };
    let (status, _, audit) =
        submit(&h, &h.token_a, with_layers(json!([0, 0, 3, 1, 3])), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{audit}");
    assert_eq!(audit["spec"]["layers"], json!([0, 1, 3]));
    let max = Limits::default().max_blocks;
    for (layers, needle) in [
        (json!([max]), "limit of"),
        (json!([]), "must not be empty"),
        (json!([-1]), "layers"),
    ] {
        let (status, _, resp) = submit(&h, &h.token_a, with_layers(layers.clone()), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{layers}: {resp}");
        let error = resp["error"].as_str().unwrap();
        assert!(
            error.contains("layers") && error.contains(needle),
            "{error}"
        );
    }
    h.state.events.as_ref().unwrap().delete().await.unwrap();
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn an_idempotency_key_reused_for_another_request_is_a_conflict(pool: PgPool) {
    let h = harness(pool).await;
    let key = Some("release-7");
    let (status, _, first) = submit(&h, &h.token_a, body("org/b", "org/f"), key).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _, again) = submit(&h, &h.token_a, body("org/b", "org/f"), key).await;
    assert_eq!((status, &again["id"]), (StatusCode::ACCEPTED, &first["id"]));
    let (status, _, resp) = submit(&h, &h.token_a, body("org/b", "org/other"), key).await;
    assert_eq!(status, StatusCode::CONFLICT, "{resp}");
    let error = resp["error"].as_str().unwrap();
    assert!(
        error.contains("Idempotency-Key") && error.contains(first["id"].as_str().unwrap()),
        "{error}"
    );
    h.state.events.as_ref().unwrap().delete().await.unwrap();
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn a_team_over_its_quota_gets_429_with_retry_after(pool: PgPool) {
    let mut h = harness(pool).await;
    h.state = h.state.clone().with_limits(
        Limits::default(),
        Quota {
            max_active: 2,
            per_minute: 100,
            ..Quota::default()
        },
    );
    for _ in 0..2 {
        let (status, _, _) = submit(&h, &h.token_a, body("org/b", "org/f"), None).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let (status, headers, resp) = submit(&h, &h.token_a, body("org/b", "org/f"), None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{resp}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert!(resp["error"].as_str().unwrap().contains("quota"));
    // Another team still submits.
    let (status, _, _) = submit(&h, &h.token_b, body("org/b", "org/f"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    h.state.events.as_ref().unwrap().delete().await.unwrap();
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn a_revoked_token_is_refused(pool: PgPool) {
    let h = harness(pool).await;
    let (status, _) = call(&h, "GET", "/v1/audits", Some(&h.token_a), None, None).await;
    assert_eq!(status, StatusCode::OK);
    let id = h.state.db.list_tokens(Some("team-a")).await.unwrap()[0].id;
    h.state.db.revoke_token(id).await.unwrap();
    let (status, _) = call(&h, "GET", "/v1/audits", Some(&h.token_a), None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(&h, "GET", "/v1/audits", Some(&h.token_b), None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn a_team_has_a_bounded_number_of_scans(pool: PgPool) {
    let mut h = harness(pool).await;
    h.state = h.state.clone().with_limits(
        Limits::default(),
        Quota {
            max_scans: 2,
            ..Quota::default()
        },
    );
    let scan = |name: &str| {
        json!({"name": name, "source": "/models/watch", "base": "/models/base", "every_s": 3600,
               "audit": {"analyses": ["weights"]}})
        .to_string()
    };
    for name in ["one", "two"] {
        let (status, resp) = call(
            &h,
            "POST",
            "/v1/scans",
            Some(&h.token_a),
            Some(scan(name)),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{resp}");
    }
    let (status, resp) = call(
        &h,
        "POST",
        "/v1/scans",
        Some(&h.token_a),
        Some(scan("three")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{resp}");
    assert!(
        resp["error"].as_str().unwrap().contains("--quota-scans"),
        "{resp}"
    );
    // Counted per team: another team still has its own.
    let (status, resp) = call(
        &h,
        "POST",
        "/v1/scans",
        Some(&h.token_b),
        Some(scan("one")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{resp}");
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn metrics_are_the_operators_not_a_teams(pool: PgPool) {
    let mut h = harness(pool).await;
    h.state = h
        .state
        .clone()
        .with_metrics(neurodiff_api::MetricsAccess::token("operator-secret"));
    for token in [None, Some(h.token_a.as_str()), Some("operator-secrets")] {
        let (status, _) = call(&h, "GET", "/metrics", token, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
    }
    let (status, _) = call(&h, "GET", "/metrics", Some("operator-secret"), None, None).await;
    assert_eq!(status, StatusCode::OK);
    h.state = h
        .state
        .clone()
        .with_metrics(neurodiff_api::MetricsAccess::Off);
    let (status, _) = call(&h, "GET", "/metrics", Some("operator-secret"), None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

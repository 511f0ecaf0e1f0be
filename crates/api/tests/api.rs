//! The API through `tower::ServiceExt::oneshot`, on a real PostgreSQL (a database per test) and
//! a real Redis (a stream per test).
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use axum::http::StatusCode;
use common::{audit_body, call, harness};
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn tokens_are_required(pool: PgPool) {
    let h = harness(pool).await;
    for token in [None, Some("nd_not-a-token")] {
        let (status, body) = call(&h, "GET", "/v1/audits", token, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body["error"].as_str().unwrap().contains("bearer token"));
    }
    let (status, _) = call(&h, "GET", "/healthz", None, None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(&h, "GET", "/readyz", None, None, None).await;
    assert_eq!(
        (status, body["database"].as_bool()),
        (StatusCode::OK, Some(true))
    );
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn submit_is_idempotent_enqueued_and_team_scoped(pool: PgPool) {
    let h = harness(pool).await;
    let (status, first) = call(
        &h,
        "POST",
        "/v1/audits",
        Some(&h.token_a),
        Some(audit_body("org/base")),
        Some("release-42"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(first["status"], "queued");
    assert_eq!(
        first["spec"]["target"],
        json!({"kind": "checkpoint", "reference": "org/ft"})
    );
    let (status, again) = call(
        &h,
        "POST",
        "/v1/audits",
        Some(&h.token_a),
        Some(audit_body("org/base")),
        Some("release-42"),
    )
    .await;
    assert_eq!((status, &again["id"]), (StatusCode::ACCEPTED, &first["id"]));

    // The scheduler is woken once; the audit waits in the database for it to be enqueued.
    let events = h.state.events.as_ref().unwrap();
    let msg = events
        .read::<neurodiff_protocol::Event>("test", 100)
        .await
        .unwrap()
        .unwrap();
    let id: uuid::Uuid = first["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(msg.task, neurodiff_protocol::Event::Submitted { audit: id });
    assert!(events
        .read::<neurodiff_protocol::Event>("test", 50)
        .await
        .unwrap()
        .is_none());
    assert_eq!(h.state.db.audits_to_plan(10).await.unwrap(), vec![id]);

    let path = format!("/v1/audits/{}", first["id"].as_str().unwrap());
    let (status, got) = call(&h, "GET", &path, Some(&h.token_a), None, None).await;
    assert_eq!((status, &got["id"]), (StatusCode::OK, &first["id"]));
    assert_eq!(
        got["progress"],
        json!({"shards_done": 0, "shards_total": 0})
    );
    let (status, _) = call(&h, "GET", &path, Some(&h.token_b), None, None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another team's audit does not exist for you"
    );
    let (status, _) = call(&h, "DELETE", &path, Some(&h.token_b), None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, cancelled) = call(&h, "DELETE", &path, Some(&h.token_a), None, None).await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    events.delete().await.unwrap();
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn bad_requests_name_the_field(pool: PgPool) {
    let h = harness(pool).await;
    let cases = [
        (json!({"finetuned": "org/ft"}).to_string(), "base"),
        (
            json!({"base": "", "finetuned": "org/ft"}).to_string(),
            "field `base`",
        ),
        (json!({"base": "org/b"}).to_string(), "field `finetuned`"),
        (
            json!({"base": "org/b", "finetuned": "x/y", "adapter": "x/z"}).to_string(),
            "`adapter`",
        ),
        (
            json!({"base": "org/b", "finetuned": "x/y", "analyses": ["vibes"]}).to_string(),
            "analyses",
        ),
        (
            json!({"base": "org/b", "finetuned": "x/y", "layerz": [1]}).to_string(),
            "layerz",
        ),
        (
            json!({"base": "org/b", "finetuned": "x/y", "weights": {"top_k": 0}}).to_string(),
            "weights.top_k",
        ),
        ("{not json".to_string(), "JSON"),
    ];
    for (body, needle) in cases {
        let (status, resp) = call(
            &h,
            "POST",
            "/v1/audits",
            Some(&h.token_a),
            Some(body.clone()),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let message = resp["error"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{body}: `{message}` lacks `{needle}`"
        );
    }
    let (status, resp) = call(
        &h,
        "GET",
        "/v1/audits/not-a-uuid",
        Some(&h.token_a),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(resp["error"].as_str().unwrap().contains("path `id`"));
    let (status, resp) = call(
        &h,
        "GET",
        "/v1/audits?status=done",
        Some(&h.token_a),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(resp["error"].as_str().unwrap().contains("query `status`"));

    let huge = json!({"base": "x".repeat(100_000), "finetuned": "org/ft"}).to_string();
    let (status, _) = call(&h, "POST", "/v1/audits", Some(&h.token_a), Some(huge), None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audits")
        .fetch_one(&h.state.db.pool)
        .await
        .unwrap();
    assert_eq!(count, 0, "nothing stored from a bad request");
    h.state.events.as_ref().unwrap().delete().await.unwrap();
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn listing_filters_and_pages(pool: PgPool) {
    let h = harness(pool).await;
    for base in ["org/a", "org/b", "org/a"] {
        let (status, _) = call(
            &h,
            "POST",
            "/v1/audits",
            Some(&h.token_a),
            Some(audit_body(base)),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    call(
        &h,
        "POST",
        "/v1/audits",
        Some(&h.token_b),
        Some(audit_body("org/a")),
        None,
    )
    .await;
    let (_, page1) = call(
        &h,
        "GET",
        "/v1/audits?limit=2",
        Some(&h.token_a),
        None,
        None,
    )
    .await;
    assert_eq!(page1["audits"].as_array().unwrap().len(), 2);
    let cursor = page1["next_cursor"].as_str().unwrap().to_string();
    let (_, page2) = call(
        &h,
        "GET",
        &format!("/v1/audits?limit=2&cursor={cursor}"),
        Some(&h.token_a),
        None,
        None,
    )
    .await;
    assert_eq!(page2["audits"].as_array().unwrap().len(), 1);
    assert!(page2["next_cursor"].is_null());
    let ids: std::collections::HashSet<_> = page1["audits"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["audits"].as_array().unwrap())
        .map(|a| a["id"].clone())
        .collect();
    assert_eq!(ids.len(), 3, "pages neither overlap nor skip");
    let (_, only_a) = call(
        &h,
        "GET",
        "/v1/audits?model=org/a&status=queued",
        Some(&h.token_a),
        None,
        None,
    )
    .await;
    assert_eq!(only_a["audits"].as_array().unwrap().len(), 2);
    h.state.events.as_ref().unwrap().delete().await.unwrap();
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn results_wait_for_success_and_queries_are_validated(pool: PgPool) {
    let h = harness(pool).await;
    let (_, audit) = call(
        &h,
        "POST",
        "/v1/audits",
        Some(&h.token_a),
        Some(audit_body("org/base")),
        None,
    )
    .await;
    let id = audit["id"].as_str().unwrap();
    for path in [
        format!("/v1/audits/{id}/results"),
        format!("/v1/audits/{id}/artifacts"),
    ] {
        let (status, body) = call(&h, "GET", &path, Some(&h.token_a), None, None).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}");
        assert!(body["error"].as_str().unwrap().contains("queued"), "{body}");
        let (status, _) = call(&h, "GET", &path, Some(&h.token_b), None, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path} across teams");
    }
    for (query, needle) in [
        ("metric=vibes", "query `metric`"),
        ("limit=0", "query `limit`"),
        ("layer=-1", "query `layer`"),
        ("min=abc", "min"),
        ("colour=red", "colour"),
    ] {
        let (status, body) = call(
            &h,
            "GET",
            &format!("/v1/results?{query}"),
            Some(&h.token_a),
            None,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{query}: {body}"
        );
    }
    let (status, body) = call(
        &h,
        "GET",
        "/v1/results?metric=numerical_rank&min=1",
        Some(&h.token_a),
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, body["results"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0))
    );
    assert_eq!(
        call(&h, "GET", "/v1/results", None, None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    h.state.events.as_ref().unwrap().delete().await.unwrap();
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn openapi_and_metrics_are_served(pool: PgPool) {
    let h = harness(pool).await;
    let (status, doc) = call(&h, "GET", "/openapi.json", None, None, None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/audits",
        "/v1/audits/{id}",
        "/v1/audits/{id}/results",
        "/v1/audits/{id}/artifacts/{name}",
        "/v1/results",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // Every schema a body names is in the document (a generated client reads them all).
    let text = doc.to_string();
    for name in text.split("\"#/components/schemas/").skip(1) {
        let name = name.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "schema {name} is referenced but not in the document"
        );
    }
    // Every operation has an id of its own: the Python client's methods are named by them.
    let mut ids = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            assert!(!id.is_empty(), "{method} {path} has no operationId");
            assert!(ids.insert(id.clone()), "operationId {id} is used twice");
            // A query parameter documented as a path one makes a generated client build
            // URLs that do not exist: every parameter not in the path template is a query's.
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap_or_default();
                let in_path = path.contains(&format!("{{{name}}}"));
                let want = if in_path { "path" } else { "query" };
                if p["in"] != "header" {
                    assert_eq!(p["in"], want, "{method} {path}: parameter {name}");
                }
            }
        }
    }
    let kinds = &doc["components"]["schemas"]["AnalysisKind"]["enum"];
    assert!(
        kinds
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "logit-lens")),
        "{kinds}"
    );
    call(&h, "GET", "/v1/audits", Some(&h.token_a), None, None).await;
    // Any token is a valid HTTP method; it must not become a label value.
    call(&h, "BREW", "/healthz", None, None, None).await;
    let (status, metrics) = call(&h, "GET", "/metrics", None, None, None).await;
    assert_eq!(status, StatusCode::OK);
    let text = metrics.as_str().unwrap();
    assert!(!text.contains("BREW"), "{text}");
    assert!(text.contains(r#"method="other""#), "{text}");
    assert!(
        text.contains(
            r#"neurodiff_http_requests_total{method="GET",route="/v1/audits",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains("neurodiff_queue_tasks"), "{text}");
    h.state.events.as_ref().unwrap().delete().await.unwrap();
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn the_vocabulary_lists_exactly_what_the_api_accepts(pool: PgPool) {
    let h = harness(pool).await;
    // No team is needed to learn the names.
    let (status, vocab) = call(&h, "GET", "/v1/vocabulary", None, None, None).await;
    assert_eq!(status, StatusCode::OK);
    let list = |field: &str| -> Vec<String> {
        vocab[field]
            .as_array()
            .unwrap_or_else(|| panic!("{field}: {vocab}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert!(list("analyses").contains(&"logit-lens".to_string()));
    assert!(list("block_sites").contains(&"output".to_string()));
    assert_eq!(list("severities")[0], "info");
    // Every listed filter is accepted, and a name outside the lists is refused naming the field.
    for m in list("tensor_metrics") {
        let path = format!("/v1/results?metric={m}");
        let (status, body) = call(&h, "GET", &path, Some(&h.token_a), None, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    for m in list("block_metrics") {
        for site in list("block_sites") {
            let path = format!("/v1/results/blocks?metric={m}&hook={site}");
            let (status, body) = call(&h, "GET", &path, Some(&h.token_a), None, None).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
        }
    }
    for s in list("alert_filters") {
        let path = format!("/v1/alerts?state={s}");
        let (status, body) = call(&h, "GET", &path, Some(&h.token_a), None, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    for (path, field) in [
        ("/v1/results/blocks?hook=hook_nope", "query `hook`"),
        ("/v1/results/blocks?analysis=traces", "query `analysis`"),
        ("/v1/alerts?state=closed", "query `state`"),
    ] {
        let (status, body) = call(&h, "GET", path, Some(&h.token_a), None, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert!(body["error"].as_str().unwrap().contains(field), "{body}");
    }
}

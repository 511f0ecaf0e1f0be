//! PostgreSQL store against a real server: each test gets its own database (sqlx::test).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use neurodiff_protocol::{
    AnalysisKind, AuditSpec, AuditStatus, ShardKey, ShardOutput, ShardResult, Target, TensorMetrics,
};
use neurodiff_store::{Admission, AuditRow, Db, Quota, StoreError, Team};
use sqlx::PgPool;

fn spec(base: &str) -> AuditSpec {
    AuditSpec {
        layers: None,
        ..AuditSpec::new(
            base.into(),
            Target::Checkpoint {
                reference: "org/ft".into(),
            },
            vec![AnalysisKind::Weights],
        )
    }
}

fn metrics(name: &str, fro: f64) -> TensorMetrics {
    let mut t = TensorMetrics::from_norms(name, vec![4, 3], fro, 2.0, 0.9, "gram-eigh-f64");
    t.spectral = Some(fro * 0.8);
    t.top_singular_values = vec![fro * 0.8, fro * 0.1];
    t.numerical_rank = Some(2);
    t
}

fn shard(key: ShardKey, tensors: Vec<TensorMetrics>) -> ShardOutput {
    ShardOutput::Weights(ShardResult {
        shard: key,
        tensors,
        only_in_base: vec![],
        only_in_finetuned: vec![],
        shape_mismatches: vec![],
        added_rows: vec![],
        elapsed_s: 0.5,
    })
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn tokens_are_stored_hashed_and_authenticate_their_team(pool: PgPool) {
    let db = Db { pool };
    let team = db.ensure_team("safety").await.unwrap();
    assert_eq!(
        db.ensure_team("safety").await.unwrap(),
        team,
        "ensure_team is idempotent"
    );
    let token = db.create_token(&team, "ci").await.unwrap();
    assert!(token.starts_with("nd_") && token.len() == 67);
    assert_eq!(db.authenticate(&token).await.unwrap(), Some(team));
    assert_eq!(db.authenticate("nd_wrong").await.unwrap(), None);
    let stored: Vec<u8> = sqlx::query_scalar("SELECT token_sha256 FROM api_tokens")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 32);
    assert!(!String::from_utf8_lossy(&stored).contains(&token[3..]));
    // Team names become path segments and object keys: anything else is refused.
    for bad in ["../x", "a/b", "", ".hidden"] {
        let e = db.ensure_team(bad).await.unwrap_err();
        assert!(matches!(e, StoreError::Invalid(_)), "{bad:?}: {e}");
    }
}

/// Submits and expects the audit to be admitted: (audit, newly created).
async fn admit(db: &Db, team: &Team, spec: &AuditSpec, key: Option<&str>) -> (AuditRow, bool) {
    match db
        .insert_audit(team, spec, key, &Quota::default())
        .await
        .unwrap()
    {
        Admission::Created(a) => (a, true),
        Admission::Existing(a) => (a, false),
        other => panic!("not admitted: {other:?}"),
    }
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn idempotency_keys_and_team_scoping(pool: PgPool) {
    let db = Db { pool };
    let (a, b) = (
        db.ensure_team("a").await.unwrap(),
        db.ensure_team("b").await.unwrap(),
    );
    let (first, created) = admit(&db, &a, &spec("org/base"), Some("key-1")).await;
    assert!(created);
    let (again, created) = admit(&db, &a, &spec("org/base"), Some("key-1")).await;
    assert!(!created);
    assert_eq!(again.id, first.id);
    // The same key with another request is refused, not silently answered with the first.
    match db
        .insert_audit(&a, &spec("org/other"), Some("key-1"), &Quota::default())
        .await
        .unwrap()
    {
        Admission::KeyReused(original) => assert_eq!(original.id, first.id),
        other => panic!("expected a refused key, got {other:?}"),
    }
    let (other_team, created) = admit(&db, &b, &spec("org/base"), Some("key-1")).await;
    assert!(created && other_team.id != first.id);
    let (no_key_1, _) = admit(&db, &a, &spec("x/y"), None).await;
    let (no_key_2, _) = admit(&db, &a, &spec("x/y"), None).await;
    assert_ne!(
        no_key_1.id, no_key_2.id,
        "without a key every submission is new"
    );

    assert_eq!(
        db.get_audit(&a, first.id).await.unwrap().status,
        AuditStatus::Queued
    );
    assert!(matches!(
        db.get_audit(&b, first.id).await,
        Err(StoreError::NotFound { .. })
    ));
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn quotas_bound_active_audits_and_submissions_per_minute(pool: PgPool) {
    let db = Db { pool };
    let (a, b) = (
        db.ensure_team("a").await.unwrap(),
        db.ensure_team("b").await.unwrap(),
    );
    let quota = Quota {
        max_active: 2,
        per_minute: 3,
        ..Quota::default()
    };
    let submit = |team: &Team| {
        let (db, team) = (db.clone(), team.clone());
        async move {
            db.insert_audit(&team, &spec("org/base"), None, &quota)
                .await
                .unwrap()
        }
    };
    let first = submit(&a).await;
    assert!(matches!(submit(&a).await, Admission::Created(_)));
    match submit(&a).await {
        Admission::OverQuota {
            reason,
            retry_after_s,
        } => {
            assert!(reason.contains("2 audits queued or running"), "{reason}");
            assert!(retry_after_s >= 1);
        }
        other => panic!("expected the active quota, got {other:?}"),
    }
    // Another team is not affected.
    assert!(matches!(submit(&b).await, Admission::Created(_)));
    // A finished audit frees its place, but the per-minute count still holds it.
    let Admission::Created(first) = first else {
        panic!()
    };
    db.cancel_audit(&a, first.id).await.unwrap();
    assert!(matches!(submit(&a).await, Admission::Created(_)));
    sqlx::query("UPDATE audits SET status = 'cancelled'")
        .execute(&db.pool)
        .await
        .unwrap();
    match submit(&a).await {
        Admission::OverQuota {
            reason,
            retry_after_s,
        } => {
            assert!(reason.contains("per minute"), "{reason}");
            assert!((1..=60).contains(&retry_after_s), "{retry_after_s}");
        }
        other => panic!("expected the rate quota, got {other:?}"),
    }
    // Concurrent submissions cannot all pass a quota only one fits.
    let c = db.ensure_team("c").await.unwrap();
    let one = Quota {
        max_active: 1,
        per_minute: 100,
        ..Quota::default()
    };
    let results = futures::future::join_all((0..8).map(|_| {
        let (db, c) = (db.clone(), c.clone());
        async move {
            db.insert_audit(&c, &spec("org/base"), None, &one)
                .await
                .unwrap()
        }
    }))
    .await;
    let created = results
        .iter()
        .filter(|r| matches!(r, Admission::Created(_)))
        .count();
    assert_eq!(created, 1);
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn revoked_and_expired_tokens_authenticate_nothing(pool: PgPool) {
    let db = Db { pool };
    let team = db.ensure_team("t").await.unwrap();
    let (id, token) = db.create_token_expiring(&team, "ci", None).await.unwrap();
    assert!(db.authenticate(&token).await.unwrap().is_some());
    let revoked = db.revoke_token(id).await.unwrap();
    assert!(revoked.revoked_at.is_some() && revoked.team == "t");
    assert!(db.authenticate(&token).await.unwrap().is_none());
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    let (_, expired) = db
        .create_token_expiring(&team, "old", Some(past))
        .await
        .unwrap();
    assert!(db.authenticate(&expired).await.unwrap().is_none());
    let future = chrono::Utc::now() + chrono::Duration::days(1);
    let (_, valid) = db
        .create_token_expiring(&team, "new", Some(future))
        .await
        .unwrap();
    assert!(db.authenticate(&valid).await.unwrap().is_some());
    assert_eq!(db.list_tokens(Some("t")).await.unwrap().len(), 3);
    assert!(matches!(
        db.revoke_token(uuid::Uuid::new_v4()).await,
        Err(StoreError::NotFound { .. })
    ));
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn a_stale_attempt_cannot_fail_the_audit_and_totals_count_rows(pool: PgPool) {
    let db = Db { pool };
    let team = db.ensure_team("t").await.unwrap();
    let (audit, _) = admit(&db, &team, &spec("org/base"), None).await;
    // A repeated key is one row, and the total counts rows: the audit can finish.
    db.plan_shards(audit.id, &[ShardKey::Layer(0), ShardKey::Layer(0)], None)
        .await
        .unwrap();
    assert_eq!(db.get_audit(&team, audit.id).await.unwrap().shards_total, 1);
    let stale = db
        .start_attempt(audit.id, ShardKey::Layer(0), "w1", None)
        .await
        .unwrap();
    let current = db
        .start_attempt(audit.id, ShardKey::Layer(0), "w2", None)
        .await
        .unwrap();
    assert!(!db
        .fail_shard(audit.id, &ShardKey::Layer(0), stale, "stale worker's error")
        .await
        .unwrap());
    assert_eq!(
        db.audit_status(audit.id).await.unwrap(),
        AuditStatus::Running
    );
    assert!(db
        .fail_shard(audit.id, &ShardKey::Layer(0), current, "real error")
        .await
        .unwrap());
    let row = db.get_audit(&team, audit.id).await.unwrap();
    assert_eq!(
        (row.status.as_str(), row.error.as_deref()),
        ("failed", Some("real error"))
    );
}

/// A dictionary's training shard is planned after its collect shards and must be enqueued
/// after them too, though its key's text sorts first ("block" < "samples"): enqueued first, it
/// would collect every chunk itself while the collect shards wait.
#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn shards_are_enqueued_in_plan_order(pool: PgPool) {
    let db = Db { pool };
    let team = db.ensure_team("t").await.unwrap();
    let (audit, _) = admit(&db, &team, &spec("org/base"), None).await;
    let samples = |start, end| ShardKey::Samples {
        analysis: AnalysisKind::Crosscoder,
        start,
        end,
    };
    let keys = [
        samples(0, 128),
        samples(128, 256),
        ShardKey::Block {
            analysis: AnalysisKind::Crosscoder,
            layer: 4,
        },
    ];
    let mut by_text: Vec<String> = keys.iter().map(ToString::to_string).collect();
    by_text.sort();
    assert_eq!(
        by_text[0],
        keys[2].to_string(),
        "the keys' text order differs"
    );
    db.plan_shards(audit.id, &keys, None).await.unwrap();
    let (pending, unreadable) = db.shards_to_enqueue(100).await.unwrap();
    assert!(unreadable.is_empty());
    let order: Vec<ShardKey> = pending.iter().map(|p| p.shard_key).collect();
    assert_eq!(order, keys);
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn stale_attempts_are_fenced_and_retries_never_duplicate(pool: PgPool) {
    let db = Db { pool };
    let team = db.ensure_team("t").await.unwrap();
    let (audit, _) = admit(&db, &team, &spec("org/base"), None).await;
    let keys = [ShardKey::Layer(0), ShardKey::NonLayer];
    db.plan_shards(audit.id, &keys, None).await.unwrap();
    db.plan_shards(audit.id, &keys, None).await.unwrap();
    let row = db.get_audit(&team, audit.id).await.unwrap();
    assert_eq!((row.status.as_str(), row.shards_total), ("running", 2));

    let stale = db
        .start_attempt(audit.id, ShardKey::Layer(0), "worker-a", None)
        .await
        .unwrap();
    let current = db
        .start_attempt(audit.id, ShardKey::Layer(0), "worker-b", None)
        .await
        .unwrap();
    assert_eq!((stale, current), (1, 2));
    let result = shard(
        ShardKey::Layer(0),
        vec![metrics("model.layers.0.mlp.up_proj.weight", 1.0)],
    );
    let err = db
        .record_shard(audit.id, stale, ShardKey::Layer(0), &result)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::StaleAttempt {
                attempt: 1,
                current: 2,
                ..
            }
        ),
        "{err}"
    );
    let fan_in = db
        .record_shard(audit.id, current, ShardKey::Layer(0), &result)
        .await
        .unwrap();
    assert_eq!((fan_in.shards_done, fan_in.complete()), (1, false));
    // A duplicate delivery of the same finished shard is refused, and nothing is counted twice.
    assert!(db
        .record_shard(audit.id, current, ShardKey::Layer(0), &result)
        .await
        .is_err());
    assert!(db
        .start_attempt(audit.id, ShardKey::Layer(0), "worker-c", None)
        .await
        .is_err());

    let last = db
        .start_attempt(audit.id, ShardKey::NonLayer, "worker-a", None)
        .await
        .unwrap();
    let other = shard(
        ShardKey::NonLayer,
        vec![metrics("model.embed_tokens.weight", 3.0)],
    );
    assert!(db
        .record_shard(audit.id, last, ShardKey::NonLayer, &other)
        .await
        .unwrap()
        .complete());
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tensor_results")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 2);
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn tensor_metrics_round_trip(pool: PgPool) {
    let db = Db { pool };
    let team = db.ensure_team("t").await.unwrap();
    let (audit, _) = admit(&db, &team, &spec("org/base"), None).await;
    db.plan_shards(audit.id, &[ShardKey::Layer(3)], None)
        .await
        .unwrap();
    let attempt = db
        .start_attempt(audit.id, ShardKey::Layer(3), "w", None)
        .await
        .unwrap();
    let mut zero_base = metrics("model.layers.3.mlp.up_proj.bias", 0.5);
    zero_base.base_fro = 0.0;
    zero_base.rel_fro = None;
    let written = vec![
        metrics("model.layers.3.self_attn.q_proj.weight", 2.0),
        zero_base,
    ];
    db.record_shard(
        audit.id,
        attempt,
        ShardKey::Layer(3),
        &shard(ShardKey::Layer(3), written.clone()),
    )
    .await
    .unwrap();
    let read = db.tensor_results(&team, audit.id).await.unwrap();
    assert_eq!(read, written, "same values, most changed first");
    let other = db.ensure_team("other").await.unwrap();
    assert!(db.tensor_results(&other, audit.id).await.is_err());
}

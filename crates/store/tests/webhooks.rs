//! The webhook outbox on a real PostgreSQL: deliveries are claimed fairly across teams, so one
//! team's flood of alerts does not delay another team's delivery.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use neurodiff_store::{Db, Team};
use sqlx::PgPool;
use uuid::Uuid;

/// A scan of `team` with one run, and `n` due deliveries of alerts on it; their ids, oldest
/// first (each `age_s` seconds older than the last).
async fn flood(db: &Db, team: &Team, n: usize, age_s: f64) -> Vec<Uuid> {
    let scan: Uuid = sqlx::query_scalar(
        "INSERT INTO scans (team_id, name, request, source, webhook_secret) \
         VALUES ($1, 'watch', '{}', '/models/x', 's') RETURNING id",
    )
    .bind(team.id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let run: Uuid = sqlx::query_scalar(
            "INSERT INTO scan_runs (scan_id, checkpoint_id, location, state) \
             VALUES ($1, $2, 'x', 'evaluated') RETURNING id",
        )
        .bind(scan)
        .bind(format!("ckpt-{i}"))
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let alert: Uuid = sqlx::query_scalar(
            "INSERT INTO alerts (team_id, scan_id, run_id, rule, severity, message) \
             VALUES ($1, $2, $3, 'r', 'high', 'm') RETURNING id",
        )
        .bind(team.id)
        .bind(scan)
        .bind(run)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO webhook_deliveries (alert_id, url, body, next_attempt_at) \
             VALUES ($1, 'https://hooks.example.com/x', '{}', \
                     now() - make_interval(secs => $2)) RETURNING id",
        )
        .bind(alert)
        .bind(age_s * (n - i) as f64)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        ids.push(id);
    }
    ids
}

#[sqlx::test(migrator = "neurodiff_store::MIGRATOR")]
async fn one_teams_flood_of_deliveries_does_not_delay_another_team(pool: PgPool) {
    let db = Db { pool };
    let (a, b) = (
        db.ensure_team("team-a").await.unwrap(),
        db.ensure_team("team-b").await.unwrap(),
    );
    // Team a's 40 deliveries are all older than team b's one.
    let flood_a = flood(&db, &a, 40, 10.0).await;
    let only_b = flood(&db, &b, 1, 1.0).await;
    let claimed: Vec<Uuid> = db
        .claim_deliveries(16, 60.0)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(claimed.len(), 16);
    assert!(
        claimed.contains(&only_b[0]),
        "team b waits behind team a's flood"
    );
    // Within a team, oldest first.
    assert!(claimed.contains(&flood_a[0]) && !claimed.contains(&flood_a[39]));
    // Claimed deliveries are leased: the next claim takes the rest of the flood.
    let next = db.claim_deliveries(64, 60.0).await.unwrap();
    assert_eq!(next.len(), 41 - 16);
    assert!(next.iter().all(|d| !claimed.contains(&d.id)));
}

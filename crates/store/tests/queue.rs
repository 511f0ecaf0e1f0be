//! The Redis Streams queue against the real Redis: delivery, lease extension, reclaim of a
//! silent worker's shard, and dead-lettering. Each test uses its own stream.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use neurodiff_protocol::ShardKey;
use neurodiff_store::Queue;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn queue(max_deliveries: u64) -> Queue {
    let stream = format!("neurodiff-test:{}", uuid::Uuid::new_v4());
    Queue::connect(&redis_url(), &stream, max_deliveries)
        .await
        .expect("redis")
}

#[tokio::test]
async fn a_message_is_delivered_once_and_acked() {
    let q = queue(3).await;
    q.enqueue(&ShardKey::Layer(4)).await.unwrap();
    let d = q
        .read::<ShardKey>("w1", 100)
        .await
        .unwrap()
        .expect("a message");
    assert_eq!((d.task, d.deliveries), (ShardKey::Layer(4), 1));
    assert!(
        q.read::<ShardKey>("w2", 50).await.unwrap().is_none(),
        "not handed to a second reader"
    );
    q.ack(&d.id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let r = q.reclaim::<ShardKey>("scheduler", 10, 10).await.unwrap();
    assert!(
        r.retry.is_empty() && r.dead.is_empty(),
        "nothing pending after the ack"
    );
    q.delete().await.unwrap();
}

#[tokio::test]
async fn a_silent_workers_shard_is_reclaimed_and_a_live_lease_is_not() {
    let q = queue(3).await;
    q.enqueue(&ShardKey::Layer(0)).await.unwrap();
    q.enqueue(&ShardKey::Layer(1)).await.unwrap();
    let silent = q.read::<ShardKey>("silent", 100).await.unwrap().unwrap();
    // The silent shard idles about 600 ms; the live one at most a stall long, far under 300 ms.
    let alive = q.read::<ShardKey>("alive", 100).await.unwrap().unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(
            q.extend("alive", &alive.id).await.unwrap(),
            "the live worker keeps its lease"
        );
    }
    let r = q.reclaim::<ShardKey>("scheduler", 300, 10).await.unwrap();
    assert_eq!(r.retry.len(), 1, "{r:?}");
    assert_eq!(
        (r.retry[0].id.as_str(), r.retry[0].deliveries),
        (silent.id.as_str(), 2)
    );
    // Extending counts no delivery: the live shard was delivered once.
    assert_eq!(alive.deliveries, 1);
    q.delete().await.unwrap();
}

#[tokio::test]
async fn too_many_deliveries_go_to_the_dead_letter_stream() {
    let q = queue(2).await;
    q.enqueue(&ShardKey::NonLayer).await.unwrap();
    q.read::<ShardKey>("w", 100).await.unwrap().unwrap();
    let mut dead = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let r = q.reclaim::<ShardKey>("scheduler", 20, 10).await.unwrap();
        dead.extend(r.dead);
    }
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].task, dead[0].deliveries), (ShardKey::NonLayer, 3));
    assert_eq!(q.dead_letters().await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let r = q.reclaim::<ShardKey>("scheduler", 20, 10).await.unwrap();
    assert!(
        r.retry.is_empty() && r.dead.is_empty(),
        "a dead letter is not retried"
    );
    q.delete().await.unwrap();
}

#[tokio::test]
async fn an_unreadable_message_is_dead_lettered_not_retried_forever() {
    let q = queue(3).await;
    q.enqueue(&"not a shard key").await.unwrap();
    assert!(
        q.read::<ShardKey>("w", 100).await.is_err(),
        "the reader names the bad entry"
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    let r = q.reclaim::<ShardKey>("scheduler", 10, 10).await.unwrap();
    assert!(r.retry.is_empty() && r.dead.is_empty(), "{r:?}");
    assert_eq!(q.dead_letters().await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let r = q.reclaim::<ShardKey>("scheduler", 10, 10).await.unwrap();
    assert!(r.retry.is_empty(), "gone from the stream");
    q.delete().await.unwrap();
}

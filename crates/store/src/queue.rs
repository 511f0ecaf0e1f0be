//! The shard queue on a Redis Stream, at-least-once: workers read with XREADGROUP and keep
//! their lease by XCLAIM ... JUSTID (which resets the idle time without counting a delivery);
//! the scheduler takes back shards idle past several lease periods with XAUTOCLAIM, and moves a
//! shard delivered too often to a dead-letter stream. PostgreSQL, not Redis, decides what is
//! done: a redelivered shard is fenced there by its attempt number.
use std::collections::HashMap;

use redis::aio::ConnectionManager;
use serde::{de::DeserializeOwned, Serialize};

use crate::{Result, StoreError};

const FIELD: &str = "task";

/// One message taken from the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery<T> {
    pub id: String,
    pub task: T,
    /// How many times the stream has handed this message out, this time included.
    pub deliveries: u64,
}

/// What a reclaim pass found.
#[derive(Debug, Clone, PartialEq)]
pub struct Reclaimed<T> {
    /// Taken over by the reclaiming consumer, to be run again.
    pub retry: Vec<Delivery<T>>,
    /// Delivered more than the limit: moved to the dead-letter stream.
    pub dead: Vec<Delivery<T>>,
}

#[derive(Clone)]
pub struct Queue {
    client: redis::Client,
    conn: ConnectionManager,
    stream: String,
    group: String,
    dead_stream: String,
    delayed: String,
    epoch: String,
    max_deliveries: u64,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("stream", &self.stream)
            .field("group", &self.group)
            .finish()
    }
}

fn redis_err(e: redis::RedisError) -> StoreError {
    StoreError::Queue(e.to_string())
}

/// Longer than any blocking read (`read`'s `block_ms` must stay under it).
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

async fn manager(client: &redis::Client) -> Result<ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(std::time::Duration::from_secs(5)));
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(redis_err)
}

impl Queue {
    /// Connects (reconnecting by itself after a Redis restart) and creates the consumer group.
    pub async fn connect(url: &str, stream: &str, max_deliveries: u64) -> Result<Queue> {
        let client = redis::Client::open(url).map_err(redis_err)?;
        let conn = manager(&client).await?;
        let queue = Queue {
            client,
            conn,
            stream: stream.to_string(),
            group: format!("{stream}:workers"),
            dead_stream: format!("{stream}:dead"),
            delayed: format!("{stream}:delayed"),
            epoch: format!("{stream}:epoch"),
            max_deliveries,
        };
        queue.ensure_group().await?;
        Ok(queue)
    }

    /// The same queue on a connection of its own. Blocking reads hold their connection until
    /// they return, so each reader needs one, or it would stall every other command (lease
    /// renewals, acks) multiplexed on a shared connection.
    pub async fn reader(&self) -> Result<Queue> {
        let mut q = self.clone();
        q.conn = manager(&self.client).await?;
        Ok(q)
    }

    /// The sorted set where retries wait out their backoff.
    pub fn delayed_key(&self) -> &str {
        &self.delayed
    }

    /// Creates the stream and group if missing (again after a Redis restart that lost them).
    pub async fn ensure_group(&self) -> Result<()> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn.clone())
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(redis_err(e)),
        }
    }

    pub async fn enqueue<T: Serialize>(&self, task: &T) -> Result<String> {
        self.add(task, None).await
    }

    async fn add<T: Serialize>(&self, message: &T, max_len: Option<u64>) -> Result<String> {
        let json =
            serde_json::to_string(message).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.stream);
        if let Some(n) = max_len {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*")
            .arg(FIELD)
            .arg(json)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)
    }

    /// Adds a hint that may be dropped: the stream is trimmed to about `max_len` entries, so
    /// it cannot grow without bound while nobody reads it.
    pub async fn notify<T: Serialize>(&self, event: &T, max_len: u64) -> Result<String> {
        self.add(event, Some(max_len)).await
    }

    /// The next new message for `consumer`, waiting up to `block_ms` (use a [`Queue::reader`]).
    pub async fn read<T: DeserializeOwned>(
        &self,
        consumer: &str,
        block_ms: u64,
    ) -> Result<Option<Delivery<T>>> {
        type Reply = Option<Vec<(String, Vec<(String, HashMap<String, String>)>)>>;
        let reply: Reply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(&mut self.conn.clone())
            .await
            .or_else(|e| {
                // Redis restarted and lost the group: the scheduler re-enqueues what was on it.
                if e.code() == Some("NOGROUP") {
                    Ok(None)
                } else {
                    Err(redis_err(e))
                }
            })?;
        if reply.is_none() {
            self.ensure_group().await?;
        }
        let Some((id, fields)) = reply
            .into_iter()
            .flatten()
            .flat_map(|(_, entries)| entries)
            .next()
        else {
            return Ok(None);
        };
        let task = decode(&id, &fields)?;
        let deliveries = self.deliveries(&id).await?;
        Ok(Some(Delivery {
            id,
            task,
            deliveries,
        }))
    }

    async fn deliveries(&self, id: &str) -> Result<u64> {
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(id)
            .arg(id)
            .arg(1)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        Ok(pending.first().map_or(0, |p| p.3))
    }

    /// Keeps `consumer`'s lease on message `id`: resets its idle time, counts no delivery.
    pub async fn extend(&self, consumer: &str, id: &str) -> Result<bool> {
        let ids: Vec<String> = redis::cmd("XCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(consumer)
            .arg(0)
            .arg(id)
            .arg("JUSTID")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        Ok(!ids.is_empty())
    }

    /// Done with `id`: acknowledged and removed from the stream.
    pub async fn ack(&self, id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let (_, _): (i64, i64) = redis::pipe()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(id)
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(id)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    /// Takes over messages idle longer than `min_idle_ms` for `consumer`; those delivered more
    /// than the limit go to the dead-letter stream instead, with `reason`.
    pub async fn reclaim<T: DeserializeOwned>(
        &self,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Reclaimed<T>> {
        type Reply = (String, Vec<(String, HashMap<String, String>)>, Vec<String>);
        let (_, entries, _): Reply = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(consumer)
            .arg(min_idle_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        let mut out = Reclaimed {
            retry: Vec::new(),
            dead: Vec::new(),
        };
        for (id, fields) in entries {
            let deliveries = self.deliveries(&id).await?;
            let task = match decode(&id, &fields) {
                Ok(t) => t,
                Err(e) => {
                    // A message no one can read would come back forever: it goes to the
                    // dead letters as it is.
                    let raw = fields.get(FIELD).cloned().unwrap_or_default();
                    let mut pipe = redis::pipe();
                    pipe.cmd("XADD")
                        .arg(&self.dead_stream)
                        .arg("*")
                        .arg(FIELD)
                        .arg(raw)
                        .arg("reason")
                        .arg(e.to_string());
                    self.ack_with(&id, pipe).await?;
                    continue;
                }
            };
            if deliveries > self.max_deliveries {
                let reason = format!(
                    "delivered {deliveries} times (limit {})",
                    self.max_deliveries
                );
                let mut pipe = redis::pipe();
                pipe.cmd("XADD")
                    .arg(&self.dead_stream)
                    .arg("*")
                    .arg(FIELD)
                    .arg(fields.get(FIELD).cloned().unwrap_or_default())
                    .arg("reason")
                    .arg(reason);
                self.ack_with(&id, pipe).await?;
                out.dead.push(Delivery {
                    id,
                    task,
                    deliveries,
                });
            } else {
                out.retry.push(Delivery {
                    id,
                    task,
                    deliveries,
                });
            }
        }
        Ok(out)
    }

    /// Removes the stream and its dead letters (tests, and tearing down a deployment).
    pub async fn delete(&self) -> Result<()> {
        redis::cmd("DEL")
            .arg(&self.stream)
            .arg(&self.dead_stream)
            .arg(&self.delayed)
            .arg(&self.epoch)
            .query_async::<i64>(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    /// How many messages the dead-letter stream holds.
    pub async fn dead_letters(&self) -> Result<u64> {
        redis::cmd("XLEN")
            .arg(&self.dead_stream)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)
    }
}

fn decode<T: DeserializeOwned>(id: &str, fields: &HashMap<String, String>) -> Result<T> {
    let json = fields
        .get(FIELD)
        .ok_or_else(|| StoreError::Invalid(format!("stream entry {id} has no `{FIELD}` field")))?;
    serde_json::from_str(json).map_err(|e| StoreError::Invalid(format!("stream entry {id}: {e}")))
}

/// Sizes of the queue, for /metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Entries in the stream (read or not, not yet acknowledged).
    pub length: u64,
    /// Entries handed to a consumer and not acknowledged.
    pub pending: u64,
    /// Retries waiting for their backoff to pass.
    pub delayed: u64,
    pub dead: u64,
}

impl Queue {
    /// True when this Redis has not seen this queue before: a first start, or a restart that
    /// lost every stream (Redis here keeps nothing on disk). The caller then re-enqueues from
    /// the database, which is the record of truth.
    pub async fn is_new_epoch(&self) -> Result<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(&self.epoch)
            .arg(now_ms())
            .arg("NX")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        Ok(set.is_some())
    }

    /// Acknowledges `id` and schedules `task` to be enqueued again at `due_ms` (Unix ms), in one
    /// transaction.
    pub async fn retry_later<T: Serialize>(&self, id: &str, task: &T, due_ms: u64) -> Result<()> {
        let json = serde_json::to_string(task).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD").arg(&self.delayed).arg(due_ms).arg(json);
        self.ack_with(id, pipe).await
    }

    /// Moves retries whose time has come (`now_ms`) back onto the stream; returns how many.
    /// One script, so the move is atomic: a scheduler dying halfway loses no retry, and two
    /// schedulers cannot both move one.
    pub async fn promote_due(&self, now_ms: u64) -> Result<usize> {
        let moved: usize = redis::cmd("EVAL")
            .arg(PROMOTE_SCRIPT)
            .arg(2)
            .arg(&self.delayed)
            .arg(&self.stream)
            .arg(now_ms)
            .arg(FIELD)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        Ok(moved)
    }

    /// Every task the queue holds: on the stream (waiting or handed out and not yet
    /// acknowledged) and in the delayed set, read in one transaction so that a task moving
    /// between the two is seen in one of them. For the reaper, which re-enqueues unfinished
    /// work the queue does not hold.
    pub async fn outstanding<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        type Entries = Vec<(String, HashMap<String, String>)>;
        let (entries, delayed): (Entries, Vec<String>) = redis::pipe()
            .atomic()
            .cmd("XRANGE")
            .arg(&self.stream)
            .arg("-")
            .arg("+")
            .cmd("ZRANGE")
            .arg(&self.delayed)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        let mut out = Vec::with_capacity(entries.len() + delayed.len());
        for (id, fields) in &entries {
            // An unreadable entry is the reclaimer's to dead-letter; it holds no known task.
            if let Ok(task) = decode(id, fields) {
                out.push(task);
            }
        }
        out.extend(delayed.iter().filter_map(|j| serde_json::from_str(j).ok()));
        Ok(out)
    }

    /// Notes that worker `member` holds the models `key` names warm until `until_ms` (Unix ms):
    /// shards of those models go preferably to it (`warm_holders`).
    pub async fn announce_warm(&self, key: &str, member: &str, until_ms: u64) -> Result<()> {
        let set = format!("{}:warm:{key}", self.stream);
        redis::pipe()
            .cmd("ZADD")
            .arg(&set)
            .arg(until_ms)
            .arg(member)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&set)
            .arg("-inf")
            .arg(now_ms())
            .ignore()
            .cmd("PEXPIREAT")
            .arg(&set)
            .arg(until_ms)
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(redis_err)
    }

    /// The workers whose announcement that they hold `key`'s models warm still holds at
    /// `now_ms`.
    pub async fn warm_holders(&self, key: &str, now_ms: u64) -> Result<Vec<String>> {
        redis::cmd("ZRANGEBYSCORE")
            .arg(format!("{}:warm:{key}", self.stream))
            .arg(now_ms)
            .arg("+inf")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)
    }

    /// Acknowledges `id` and puts `task` back at the end of the stream at once (a worker
    /// shutting down hands its shard back instead of letting its lease run out).
    pub async fn hand_back<T: Serialize>(&self, id: &str, task: &T) -> Result<()> {
        let json = serde_json::to_string(task).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.cmd("XADD")
            .arg(&self.stream)
            .arg("*")
            .arg(FIELD)
            .arg(json);
        self.ack_with(id, pipe).await
    }

    /// Acknowledges `id` and records `task` on the dead-letter stream with `reason`.
    pub async fn dead_letter<T: Serialize>(&self, id: &str, task: &T, reason: &str) -> Result<()> {
        let json = serde_json::to_string(task).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.cmd("XADD")
            .arg(&self.dead_stream)
            .arg("*")
            .arg(FIELD)
            .arg(json)
            .arg("reason")
            .arg(reason);
        self.ack_with(id, pipe).await
    }

    /// Runs `pipe` and acknowledges and deletes `id` in one transaction, so the entry is never
    /// both gone and not yet re-recorded.
    async fn ack_with(&self, id: &str, mut pipe: redis::Pipeline) -> Result<()> {
        pipe.atomic()
            .ignore()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(id)
            .ignore()
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(id)
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(redis_err)
    }

    pub async fn stats(&self) -> Result<QueueStats> {
        let (length, delayed, dead): (u64, u64, u64) = redis::pipe()
            .cmd("XLEN")
            .arg(&self.stream)
            .cmd("ZCARD")
            .arg(&self.delayed)
            .cmd("XLEN")
            .arg(&self.dead_stream)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        let pending: redis::RedisResult<(u64, redis::Value, redis::Value, redis::Value)> =
            redis::cmd("XPENDING")
                .arg(&self.stream)
                .arg(&self.group)
                .query_async(&mut self.conn.clone())
                .await;
        Ok(QueueStats {
            length,
            pending: pending.map_or(0, |p| p.0),
            delayed,
            dead,
        })
    }
}

/// KEYS: delayed set, stream; ARGV: now (ms), field name. Moves up to 100 due entries.
const PROMOTE_SCRIPT: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, task in ipairs(due) do
  redis.call('ZREM', KEYS[1], task)
  redis.call('XADD', KEYS[2], '*', ARGV[2], task)
end
return #due
";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

//! The Redis backend: three connections kept alive by one link task.
//!
//! - a multiplexed connection for commands, shared by every caller;
//! - a second multiplexed connection for blocking stream reads, so that `XREADGROUP BLOCK`
//!   never stalls other commands;
//! - a RESP2 pub/sub connection for subscriptions.
//!
//! The link task connects all three, subscribes every topic, and then watches them: the
//! subscription stream ending, a failed health `PING` or a caller reporting a dropped
//! connection all lead to a full reconnect, with capped backoff and no retry limit. While it
//! is down, every call fails at once with [`BusError::Unavailable`]. Loss and recovery are
//! logged once each.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisError, Value};
use tokio::sync::{Notify, watch};
use tokio_util::task::AbortOnDropHandle;

use super::backend::{
    Backend, BackendEvent, BusError, EventSink, KeyValue, ReadFrom, StreamEntry, Topic, Write,
};
use crate::config::{BackendKind, RedisConfig};

/// How long establishing one connection may take. Loopback and LAN connections take
/// milliseconds; a few seconds covers a slow DNS answer without stalling reconnects.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle link is checked with `PING`. This is what finds half-open connections
/// (a host that vanished without closing its sockets) within about two intervals.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// First reconnect delay; doubled on each failed attempt up to [`RECONNECT_MAX_DELAY`].
const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(100);
/// Reconnect delay cap: a returning Redis is found within this long, at the cost of one
/// connection attempt per interval during a long outage.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);
/// A link must stay up this long before the backoff starts from the beginning again, so that
/// a Redis that accepts and then drops connections is not hammered.
const PROVEN_HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// Response timeout of the blocking connection: above any `BLOCK` the services use (a few
/// seconds), so only a dead connection trips it.
const BLOCKING_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds a client from the config, putting the separately stored password back.
pub fn client(config: &RedisConfig) -> Result<redis::Client, BusError> {
    let invalid = |error: RedisError| BusError::Command {
        operation: "parse redis.url",
        message: error.to_string(),
    };
    let mut info = config
        .url
        .as_str()
        .into_connection_info()
        .map_err(invalid)?;
    if let Some(password) = &config.password {
        let settings = info
            .redis_settings()
            .clone()
            .set_password(password.expose());
        info = info.set_redis_settings(settings);
    }
    redis::Client::open(info).map_err(invalid)
}

/// The live connections, present only while the link is up.
#[derive(Clone)]
struct Connections {
    commands: MultiplexedConnection,
    blocking: MultiplexedConnection,
}

struct Shared {
    client: redis::Client,
    response_timeout: Duration,
    connections: RwLock<Option<Connections>>,
    connected: AtomicBool,
    topics: watch::Sender<BTreeSet<Topic>>,
    /// Woken by a caller that saw the connection drop, so the link reconnects at once.
    connection_dropped: Notify,
    events: EventSink,
}

/// A [`Backend`] on a Redis server. Dropping it stops the link task and closes connections.
pub struct RedisBackend {
    shared: Arc<Shared>,
    _link: AbortOnDropHandle<()>,
}

impl RedisBackend {
    /// Starts the link task; connecting happens in the background, so this never waits for
    /// Redis. `events` receives messages and connection changes.
    pub fn start(config: &RedisConfig, events: EventSink) -> Result<RedisBackend, BusError> {
        let shared = Arc::new(Shared {
            client: client(config)?,
            response_timeout: config.response_timeout(),
            connections: RwLock::new(None),
            connected: AtomicBool::new(false),
            topics: watch::channel(BTreeSet::new()).0,
            connection_dropped: Notify::new(),
            events,
        });
        let link = run_link(Arc::clone(&shared), config.url.clone());
        let link = tokio::spawn(tracing::Instrument::in_current_span(link));
        Ok(RedisBackend {
            shared,
            _link: AbortOnDropHandle::new(link),
        })
    }

    fn connections(&self) -> Result<Connections, BusError> {
        self.shared
            .connections
            .read()
            .expect("connection slot lock is never poisoned: no code panics while holding it")
            .clone()
            .ok_or_else(|| BusError::Unavailable("redis is not connected".into()))
    }

    /// Runs one command on the command connection and converts its reply.
    async fn query<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        command: &redis::Cmd,
    ) -> Result<T, BusError> {
        self.query_on(false, operation, command).await
    }

    /// Runs one command on the blocking connection (`blocking`) or the command connection.
    async fn query_on<T: redis::FromRedisValue>(
        &self,
        blocking: bool,
        operation: &'static str,
        command: &redis::Cmd,
    ) -> Result<T, BusError> {
        let connections = self.connections()?;
        let mut connection = if blocking {
            connections.blocking
        } else {
            connections.commands
        };
        let reply = command.query_async(&mut connection).await;
        reply.map_err(|error| self.command_error(operation, error))
    }

    /// Maps a Redis error, and wakes the link when the error means the connection is gone.
    fn command_error(&self, operation: &'static str, error: RedisError) -> BusError {
        if error.is_connection_dropped() || error.is_io_error() || error.is_unrecoverable_error() {
            self.shared.connection_dropped.notify_one();
            return BusError::Unavailable(format!("{operation}: {error}"));
        }
        if error.is_timeout() {
            self.shared.connection_dropped.notify_one();
            return BusError::Timeout { operation };
        }
        BusError::Command {
            operation,
            message: error.to_string(),
        }
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Redis
    }

    fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    fn set_topics(&self, topics: BTreeSet<Topic>) {
        self.shared.topics.send_replace(topics);
    }

    async fn publish(&self, channel: &str, payload: &str) -> Result<u64, BusError> {
        self.query("PUBLISH", redis::cmd("PUBLISH").arg(channel).arg(payload))
            .await
    }

    async fn subscriber_counts(&self, channels: &[String]) -> Result<Vec<u64>, BusError> {
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        let reply: Vec<(String, u64)> = self
            .query(
                "PUBSUB NUMSUB",
                redis::cmd("PUBSUB").arg("NUMSUB").arg(channels),
            )
            .await?;
        Ok(reply.into_iter().map(|(_, count)| count).collect())
    }

    async fn read_key(&self, key: &str) -> Result<KeyValue, BusError> {
        let kind: String = self.query("TYPE", redis::cmd("TYPE").arg(key)).await?;
        let value = match kind.as_str() {
            "none" => KeyValue::Missing,
            "string" => match self.get(key).await? {
                Some(value) => KeyValue::String(value),
                None => KeyValue::Missing,
            },
            "hash" => KeyValue::Hash(self.hash_get_all(key).await?),
            "list" => KeyValue::List {
                len: self.query("LLEN", redis::cmd("LLEN").arg(key)).await?,
            },
            "set" => KeyValue::Set {
                len: self.query("SCARD", redis::cmd("SCARD").arg(key)).await?,
            },
            "zset" => KeyValue::SortedSet {
                len: self.query("ZCARD", redis::cmd("ZCARD").arg(key)).await?,
            },
            "stream" => KeyValue::Stream {
                len: self.stream_len(key).await?,
            },
            other => {
                return Err(BusError::InvalidReply {
                    operation: "TYPE",
                    message: format!("unsupported key type {other:?}"),
                });
            }
        };
        Ok(value)
    }

    async fn get(&self, key: &str) -> Result<Option<String>, BusError> {
        self.query("GET", redis::cmd("GET").arg(key)).await
    }

    async fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), BusError> {
        let mut command = redis::cmd("SET");
        command.arg(key).arg(value);
        if let Some(ttl) = ttl {
            command.arg("PX").arg(ttl_millis(ttl));
        }
        self.query::<()>("SET", &command).await
    }

    async fn set_if_absent(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<bool, BusError> {
        let mut command = redis::cmd("SET");
        command.arg(key).arg(value).arg("NX");
        if let Some(ttl) = ttl {
            command.arg("PX").arg(ttl_millis(ttl));
        }
        let reply: Option<String> = self.query("SET NX", &command).await?;
        Ok(reply.is_some())
    }

    async fn delete(&self, key: &str) -> Result<bool, BusError> {
        let removed: u64 = self.query("DEL", redis::cmd("DEL").arg(key)).await?;
        Ok(removed > 0)
    }

    async fn hash_get(&self, key: &str, field: &str) -> Result<Option<String>, BusError> {
        self.query("HGET", redis::cmd("HGET").arg(key).arg(field))
            .await
    }

    async fn hash_get_all(&self, key: &str) -> Result<Vec<(String, String)>, BusError> {
        let mut pairs: Vec<(String, String)> = self
            .query("HGETALL", redis::cmd("HGETALL").arg(key))
            .await?;
        pairs.sort();
        Ok(pairs)
    }

    async fn hash_set(&self, key: &str, fields: &[(String, String)]) -> Result<(), BusError> {
        if fields.is_empty() {
            return Ok(());
        }
        self.query::<()>("HSET", redis::cmd("HSET").arg(key).arg(fields))
            .await
    }

    async fn hash_delete(&self, key: &str, fields: &[String]) -> Result<u64, BusError> {
        if fields.is_empty() {
            return Ok(0);
        }
        self.query("HDEL", redis::cmd("HDEL").arg(key).arg(fields))
            .await
    }

    async fn sorted_top(&self, key: &str, limit: usize) -> Result<Vec<(String, f64)>, BusError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let stop = limit.saturating_sub(1);
        self.query(
            "ZRANGE",
            redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(stop)
                .arg("REV")
                .arg("WITHSCORES"),
        )
        .await
    }

    async fn apply(&self, writes: Vec<Write>) -> Result<(), BusError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        pipeline.atomic();
        for write in &writes {
            add_write(&mut pipeline, write);
        }
        let mut connection = self.connections()?.commands;
        let reply: Result<(), RedisError> = pipeline.query_async(&mut connection).await;
        reply.map_err(|error| self.command_error("pipeline", error))
    }

    async fn stream_add(
        &self,
        key: &str,
        fields: &[(String, String)],
        max_len: Option<u64>,
    ) -> Result<String, BusError> {
        let mut command = redis::cmd("XADD");
        command.arg(key);
        if let Some(max_len) = max_len {
            command.arg("MAXLEN").arg("~").arg(max_len);
        }
        command.arg("*");
        for (name, value) in fields {
            command.arg(name).arg(value);
        }
        self.query("XADD", &command).await
    }

    async fn stream_create_group(
        &self,
        key: &str,
        group: &str,
        start: &str,
    ) -> Result<(), BusError> {
        let command = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(group)
            .arg(start)
            .arg("MKSTREAM")
            .to_owned();
        match self.query::<()>("XGROUP CREATE", &command).await {
            Err(BusError::Command { message, .. }) if message.contains("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    async fn stream_read_group(
        &self,
        key: &str,
        group: &str,
        consumer: &str,
        from: ReadFrom,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<StreamEntry>, BusError> {
        let mut command = redis::cmd("XREADGROUP");
        command.arg("GROUP").arg(group).arg(consumer);
        command.arg("COUNT").arg(count.max(1));
        let blocking = from == ReadFrom::New && block.is_some();
        if let (true, Some(block)) = (blocking, block) {
            command.arg("BLOCK").arg(ttl_millis(block));
        }
        let start = match from {
            ReadFrom::New => ">",
            ReadFrom::Pending => "0",
        };
        command.arg("STREAMS").arg(key).arg(start);
        let reply: Option<redis::streams::StreamReadReply> =
            self.query_on(blocking, "XREADGROUP", &command).await?;
        let ids = reply
            .map(|reply| reply.keys.into_iter().flat_map(|key| key.ids).collect())
            .unwrap_or_default();
        convert_entries("XREADGROUP", ids)
    }

    async fn stream_ack(&self, key: &str, group: &str, ids: &[String]) -> Result<u64, BusError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.query("XACK", redis::cmd("XACK").arg(key).arg(group).arg(ids))
            .await
    }

    async fn stream_claim_idle(
        &self,
        key: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, BusError> {
        let count = count.max(1);
        let mut claimed = Vec::new();
        let mut cursor = "0-0".to_string();
        // XAUTOCLAIM scans the pending list in pages; the cursor returns to 0-0 at the end.
        // Each page asks only for what is still missing: an entry claimed beyond `count`
        // would move to this consumer without being returned.
        loop {
            let reply: redis::streams::StreamAutoClaimReply = self
                .query(
                    "XAUTOCLAIM",
                    redis::cmd("XAUTOCLAIM")
                        .arg(key)
                        .arg(group)
                        .arg(consumer)
                        .arg(ttl_millis(min_idle))
                        .arg(&cursor)
                        .arg("COUNT")
                        .arg(count - claimed.len()),
                )
                .await?;
            claimed.extend(convert_entries("XAUTOCLAIM", reply.claimed)?);
            cursor = reply.next_stream_id;
            if cursor == "0-0" || claimed.len() >= count {
                break;
            }
        }
        claimed.truncate(count);
        claimed.sort_by(|a, b| compare_stream_ids(&a.id, &b.id));
        Ok(claimed)
    }

    async fn stream_range(
        &self,
        key: &str,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, BusError> {
        let reply: redis::streams::StreamRangeReply = self
            .query(
                "XRANGE",
                redis::cmd("XRANGE")
                    .arg(key)
                    .arg(start)
                    .arg(end)
                    .arg("COUNT")
                    .arg(count.max(1)),
            )
            .await?;
        convert_entries("XRANGE", reply.ids)
    }

    async fn stream_len(&self, key: &str) -> Result<u64, BusError> {
        self.query("XLEN", redis::cmd("XLEN").arg(key)).await
    }
}

fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn add_write(pipeline: &mut redis::Pipeline, write: &Write) {
    match write {
        Write::Set { key, value, ttl } => {
            let command = pipeline.cmd("SET").arg(key).arg(value);
            if let Some(ttl) = ttl {
                command.arg("PX").arg(ttl_millis(*ttl));
            }
            command.ignore();
        }
        Write::Delete { key } => {
            pipeline.cmd("DEL").arg(key).ignore();
        }
        Write::Expire { key, ttl } => {
            pipeline
                .cmd("PEXPIRE")
                .arg(key)
                .arg(ttl_millis(*ttl))
                .ignore();
        }
        Write::IncrBy { key, delta } => {
            pipeline.cmd("INCRBY").arg(key).arg(delta).ignore();
        }
        Write::HashSet { key, fields } if !fields.is_empty() => {
            pipeline.cmd("HSET").arg(key).arg(fields).ignore();
        }
        Write::HashSet { .. } => {}
        Write::HashIncrBy { key, field, delta } => {
            pipeline
                .cmd("HINCRBY")
                .arg(key)
                .arg(field)
                .arg(delta)
                .ignore();
        }
        Write::SortedIncrBy { key, member, delta } => {
            pipeline
                .cmd("ZINCRBY")
                .arg(key)
                .arg(delta)
                .arg(member)
                .ignore();
        }
        Write::SortedKeepTop { key, keep } => {
            // Ranks count from the lowest score; -(keep + 1) is the highest rank to remove.
            let last = -i64::try_from(*keep).unwrap_or(i64::MAX - 1) - 1;
            pipeline
                .cmd("ZREMRANGEBYRANK")
                .arg(key)
                .arg(0)
                .arg(last)
                .ignore();
        }
    }
}

fn convert_entries(
    operation: &'static str,
    ids: Vec<redis::streams::StreamId>,
) -> Result<Vec<StreamEntry>, BusError> {
    ids.into_iter()
        .map(|entry| {
            let mut fields = Vec::with_capacity(entry.map.len());
            for (name, value) in entry.map {
                let text = match value {
                    Value::BulkString(bytes) => {
                        String::from_utf8(bytes).map_err(|_| BusError::InvalidReply {
                            operation,
                            message: format!("field {name:?} of entry {} is not UTF-8", entry.id),
                        })?
                    }
                    Value::SimpleString(text) => text,
                    Value::Int(number) => number.to_string(),
                    other => {
                        return Err(BusError::InvalidReply {
                            operation,
                            message: format!("field {name:?} has unexpected value {other:?}"),
                        });
                    }
                };
                fields.push((name, text));
            }
            // Redis keeps field order, but the reply type goes through a hash map.
            fields.sort();
            Ok(StreamEntry {
                id: entry.id,
                fields,
                deliveries: entry.delivered_count.map(|count| count as u64),
            })
        })
        .collect()
}

/// Orders stream ids (`<ms>-<seq>`) numerically.
pub fn compare_stream_ids(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(id: &str) -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    }
    parts(a).cmp(&parts(b))
}

/// Reason a connected link ended.
enum LinkLost {
    SubscriptionClosed,
    HealthCheckFailed(String),
    CallerReportedDrop,
    SubscribeFailed(String),
}

impl std::fmt::Display for LinkLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkLost::SubscriptionClosed => f.write_str("subscription connection closed"),
            LinkLost::HealthCheckFailed(error) => write!(f, "health check failed: {error}"),
            LinkLost::CallerReportedDrop => f.write_str("a command saw the connection drop"),
            LinkLost::SubscribeFailed(error) => write!(f, "subscribe failed: {error}"),
        }
    }
}

/// Connects, serves, and reconnects forever. Logs the first failure of an outage and the
/// recovery, never each attempt.
async fn run_link(shared: Arc<Shared>, url: String) {
    let mut failed_attempts: u32 = 0;
    let mut outage_started: Option<Instant> = None;
    loop {
        match connect(&shared).await {
            Ok(ready) => {
                let connected_at = Instant::now();
                match outage_started.take() {
                    Some(started) => {
                        metrics::counter!("almagest_bus_reconnects_total").increment(1);
                        tracing::info!(
                            url = %url,
                            attempts = failed_attempts + 1,
                            outage_ms = started.elapsed().as_millis() as u64,
                            "redis connection restored"
                        );
                    }
                    None => tracing::info!(url = %url, "connected to redis"),
                }
                let lost = serve(&shared, ready).await;
                tracing::warn!(url = %url, reason = %lost, "redis connection lost; reconnecting");
                outage_started = Some(Instant::now());
                if connected_at.elapsed() >= PROVEN_HEALTHY_AFTER {
                    failed_attempts = 0;
                }
            }
            Err(error) => {
                failed_attempts += 1;
                if outage_started.is_none() {
                    outage_started = Some(Instant::now());
                    tracing::warn!(
                        url = %url,
                        error = %error,
                        "cannot connect to redis; retrying until it is reachable"
                    );
                }
            }
        }
        tokio::time::sleep(reconnect_delay(failed_attempts)).await;
    }
}

fn reconnect_delay(failed_attempts: u32) -> Duration {
    let doublings = failed_attempts.saturating_sub(1).min(16);
    (RECONNECT_FIRST_DELAY * 2u32.pow(doublings)).min(RECONNECT_MAX_DELAY)
}

/// A link whose connections all replied to PING and whose topics are subscribed.
struct Ready {
    connections: Connections,
    sink: PubSubSink,
    stream: redis::aio::PubSubStream,
    subscribed: BTreeSet<Topic>,
}

/// Connects all three connections and subscribes the current topics. A server that accepts
/// the socket but rejects commands (`NOAUTH`, `LOADING`) fails here, so it counts as
/// unreachable and is logged once, not as a connection that keeps being lost.
async fn connect(shared: &Shared) -> Result<Ready, RedisError> {
    let command_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(shared.response_timeout));
    let blocking_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(BLOCKING_RESPONSE_TIMEOUT));
    let client = &shared.client;
    let mut commands = client
        .get_multiplexed_async_connection_with_config(&command_config)
        .await?;
    redis::cmd("PING").query_async::<()>(&mut commands).await?;
    let blocking = client
        .get_multiplexed_async_connection_with_config(&blocking_config)
        .await?;
    let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
    let (mut sink, stream) = pubsub.split();
    let mut subscribed = BTreeSet::new();
    let wanted = shared.topics.borrow().clone();
    apply_topics(&mut sink, &mut subscribed, &wanted).await?;
    Ok(Ready {
        connections: Connections { commands, blocking },
        sink,
        stream,
        subscribed,
    })
}

/// Serves a connected link until it fails.
async fn serve(shared: &Shared, ready: Ready) -> LinkLost {
    let Ready {
        connections,
        mut sink,
        mut stream,
        mut subscribed,
    } = ready;
    // Topics may have changed since `connect` read them.
    let mut topics_rx = shared.topics.subscribe();
    let wanted = topics_rx.borrow_and_update().clone();
    if let Err(error) = apply_topics(&mut sink, &mut subscribed, &wanted).await {
        return LinkLost::SubscribeFailed(error.to_string());
    }
    let mut health_connection = connections.commands.clone();
    *shared
        .connections
        .write()
        .expect("connection slot lock is never poisoned") = Some(connections);
    shared.connected.store(true, Ordering::Release);
    (shared.events)(BackendEvent::Connected);

    let lost = watch_link(
        shared,
        &mut sink,
        &mut stream,
        &mut topics_rx,
        &mut subscribed,
        &mut health_connection,
    )
    .await;

    shared.connected.store(false, Ordering::Release);
    *shared
        .connections
        .write()
        .expect("connection slot lock is never poisoned") = None;
    (shared.events)(BackendEvent::Disconnected);
    lost
}

async fn watch_link(
    shared: &Shared,
    sink: &mut PubSubSink,
    stream: &mut redis::aio::PubSubStream,
    topics_rx: &mut watch::Receiver<BTreeSet<Topic>>,
    subscribed: &mut BTreeSet<Topic>,
    health_connection: &mut MultiplexedConnection,
) -> LinkLost {
    let mut health = tokio::time::interval(HEALTH_INTERVAL);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    health.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else {
                    return LinkLost::SubscriptionClosed;
                };
                forward_message(shared, &message);
            }
            changed = topics_rx.changed() => {
                if changed.is_err() {
                    // The backend was dropped; the task is about to be aborted.
                    std::future::pending::<()>().await;
                }
                let wanted = topics_rx.borrow_and_update().clone();
                if let Err(error) = apply_topics(sink, subscribed, &wanted).await {
                    return LinkLost::SubscribeFailed(error.to_string());
                }
            }
            _ = health.tick() => {
                if let Err(error) = check_health(sink, health_connection, shared.response_timeout).await {
                    return LinkLost::HealthCheckFailed(error);
                }
            }
            _ = shared.connection_dropped.notified() => {
                // A timeout may be a slow command rather than a dead link: check before
                // tearing everything down.
                if check_health(sink, health_connection, shared.response_timeout).await.is_err() {
                    return LinkLost::CallerReportedDrop;
                }
            }
        }
    }
}

async fn check_health(
    sink: &mut PubSubSink,
    commands: &mut MultiplexedConnection,
    timeout: Duration,
) -> Result<(), String> {
    let ping = redis::cmd("PING");
    match tokio::time::timeout(timeout, ping.query_async::<()>(commands)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(format!("command connection: {error}")),
        Err(_) => return Err("command connection: PING timed out".into()),
    }
    match tokio::time::timeout(timeout, sink.ping::<Value>()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(format!("subscription connection: {error}")),
        Err(_) => Err("subscription connection: PING timed out".into()),
    }
}

fn forward_message(shared: &Shared, message: &redis::Msg) {
    let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) else {
        metrics::counter!("almagest_bus_messages_invalid_total", "reason" => "not_utf8")
            .increment(1);
        tracing::debug!(
            channel = message.get_channel_name(),
            "dropped a message that is not UTF-8"
        );
        return;
    };
    let pattern = message.get_pattern::<Option<String>>().ok().flatten();
    (shared.events)(BackendEvent::Message {
        channel: message.get_channel_name().to_string(),
        pattern,
        payload: payload.to_string(),
    });
}

/// Subscribes and unsubscribes so that `subscribed` becomes `wanted`.
async fn apply_topics(
    sink: &mut PubSubSink,
    subscribed: &mut BTreeSet<Topic>,
    wanted: &BTreeSet<Topic>,
) -> Result<(), RedisError> {
    let split = |topics: Vec<&Topic>| {
        let mut channels = Vec::new();
        let mut patterns = Vec::new();
        for topic in topics {
            match topic {
                Topic::Channel(name) => channels.push(name.clone()),
                Topic::Pattern(pattern) => patterns.push(pattern.clone()),
            }
        }
        (channels, patterns)
    };
    let (add_channels, add_patterns) = split(wanted.difference(subscribed).collect());
    let (drop_channels, drop_patterns) = split(subscribed.difference(wanted).collect());
    if !add_channels.is_empty() {
        sink.subscribe(&add_channels).await?;
    }
    if !add_patterns.is_empty() {
        sink.psubscribe(&add_patterns).await?;
    }
    if !drop_channels.is_empty() {
        sink.unsubscribe(&drop_channels).await?;
    }
    if !drop_patterns.is_empty() {
        sink.punsubscribe(&drop_patterns).await?;
    }
    *subscribed = wanted.clone();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_doubles_then_caps() {
        assert_eq!(reconnect_delay(0), RECONNECT_FIRST_DELAY);
        assert_eq!(reconnect_delay(1), RECONNECT_FIRST_DELAY);
        assert_eq!(reconnect_delay(2), RECONNECT_FIRST_DELAY * 2);
        assert_eq!(reconnect_delay(50), RECONNECT_MAX_DELAY);
    }

    #[test]
    fn stream_ids_compare_numerically() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_stream_ids("9-0", "10-0"), Less);
        assert_eq!(compare_stream_ids("10-2", "10-10"), Less);
        assert_eq!(compare_stream_ids("10-2", "10-2"), Equal);
    }
}

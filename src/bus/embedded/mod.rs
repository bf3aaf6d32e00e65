//! The embedded backend (`bus.backend = "embedded"`): the bus without Redis, for one daemon
//! on one machine. Publish/subscribe runs in-process ([`pubsub`]); keys, hashes, counters,
//! sorted sets and streams live in one file, `<bus.data_dir>/almagest.redb` ([`store`]).
//! Other processes reach the bus through the admin socket ([`crate::bus::admin`]) that the
//! gateway serves next to the store.
//!
//! # Why redb
//!
//! redb is a pure-Rust embedded key-value store: no C toolchain and no server, so a fresh
//! machine with only Rust builds and runs Almagest. Its commits are atomic copy-on-write
//! B-tree updates with checksums, so a `kill -9` or a power cut leaves the last committed
//! state and the file always opens (redb repairs its allocator state on the next open). It
//! lets each commit choose between `fsync` and none, which maps onto the durability that
//! Redis offers with `appendfsync always` and `everysec`. Its ordered tuple keys make a
//! hash, a sorted set or a stream one contiguous key range, and its file lock keeps a second
//! process out. sled was the alternative; its last release is a 2021 beta with an unstable
//! on-disk format. SQLite would need a C build and a schema for every Redis type.
//!
//! # Differences from Redis
//!
//! The operations follow Redis's semantics for everything the services rely on, and the
//! conformance tests (`tests/it/backend.rs`) run the same cases against both backends.
//! Where they differ:
//!
//! - **Subscribers are in this process.** Only this daemon's services and clients of the
//!   admin socket can subscribe; `redis-cli SUBSCRIBE` has nothing to connect to.
//!   `subscriber_counts` counts those subscribers per exact channel, as `PUBSUB NUMSUB` does.
//!   An admin client that stops reading is dropped after [`pubsub::QUEUE_CAPACITY`] queued
//!   messages (Redis drops a subscriber past its output buffer limit).
//! - **Durability is chosen per write.** String and hash writes, deletes, stream appends,
//!   group creation and acknowledgements are on disk before the call returns (Redis with
//!   `appendfsync always`). Counters (`IncrBy`, `HashIncrBy`, `SortedIncrBy`), `Expire`,
//!   group reads and claims are on disk within one second (`appendfsync everysec`): a crash
//!   loses at most that second of counts, and an entry whose delivery was not yet on disk is
//!   delivered again, which at-least-once readers handle anyway. An `apply` batch is durable
//!   when it contains a `Set`, `Delete` or `HashSet`.
//! - **`MAXLEN ~` trims exactly** to `max_len` entries; Redis trims whole nodes and may keep
//!   up to about a hundred more.
//! - **`sorted_top` reads the whole sorted set** (time linear in its size, memory bounded by
//!   `limit`); Redis reads only the members it returns.
//! - **Expired keys** are invisible at once, as in Redis; their space is reclaimed by a
//!   sweep within about a second.
//! - **`read_key`** answers from the types this backend stores: strings, hashes, sorted sets
//!   and streams (lists and sets never exist here).
//! - **Blocking group reads** wait in-process for an append instead of on a connection.
//! - **One process per data directory.** The store's file lock keeps a second daemon, and
//!   any other program, out of `bus.data_dir` while the daemon runs.
//!
//! Stream ids, `NOGROUP`/`WRONGTYPE`/not-an-integer errors, pending-entry rules (a history
//! read counts as a delivery; a claim drops rows of trimmed entries; a trimmed entry read
//! from the pending list has no fields) and delivery counts (never reported, as with Redis 7)
//! match Redis 7.

mod glob;
pub mod pubsub;
pub mod store;
mod streams;
mod tables;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

use self::pubsub::{Broker, Delivery, SubscriberId};
use self::store::{Durability, Store};
use self::tables::ttl_millis;
use super::backend::{
    Backend, BackendEvent, BusError, EventSink, KeyValue, ReadFrom, StreamEntry, Topic, Write,
};
use crate::config::{BackendKind, BusConfig};

pub use glob::matches as glob_matches;
pub use store::StoreError;

/// A [`Backend`] on an in-process broker and a redb store.
pub struct EmbeddedBackend {
    store: Arc<Store>,
    broker: Arc<Broker>,
    /// The gateway's subscription, delivered through its [`EventSink`].
    gateway: SubscriberId,
    _health: AbortOnDropHandle<()>,
}

impl EmbeddedBackend {
    /// Opens the store in `config.data_dir` (or shares the one this instance already has
    /// open) and reports [`BackendEvent::Connected`] to `events` once it is usable.
    pub fn start(config: &BusConfig, events: EventSink) -> Result<EmbeddedBackend, StoreError> {
        let store = Store::open(&config.data_dir, &config.instance)?;
        let broker = Arc::new(Broker::default());
        let gateway = broker.add(Delivery::Sink(Arc::clone(&events)));
        let mut health = store.health();
        let healthy = *health.borrow_and_update();
        if healthy {
            events(BackendEvent::Connected);
        }
        tracing::info!(path = %store.path().display(), "embedded store open");
        let forward = tokio::spawn(forward_health(health, healthy, events));
        Ok(EmbeddedBackend {
            store,
            broker,
            gateway,
            _health: AbortOnDropHandle::new(forward),
        })
    }

    /// The broker, for subscribers other than the gateway (admin clients).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        self.store.path()
    }

    /// Makes the store fail as a failed commit does, and reopen itself after `down_for`: the
    /// embedded counterpart of stopping Redis, for tests of how callers ride out an outage.
    pub fn simulate_store_failure(&self, down_for: Duration) {
        self.store.simulate_failure(down_for);
    }

    /// Fails the way every call fails while the store is down. Publishing needs no store,
    /// but the trait promises callers one state for the whole bus, as with Redis.
    fn ensure_connected(&self) -> Result<(), BusError> {
        if self.store.is_healthy() {
            Ok(())
        } else {
            Err(BusError::Unavailable(format!(
                "the embedded store {} is not available",
                self.store.path().display()
            )))
        }
    }

    /// One group read without waiting. A read with nothing to deliver changes nothing, so it
    /// is answered from a read transaction, without a commit.
    async fn read_group_once(
        &self,
        key: &str,
        group: &str,
        consumer: &str,
        from: ReadFrom,
        count: usize,
    ) -> Result<Vec<StreamEntry>, BusError> {
        let (key, group, consumer) = (key.to_string(), group.to_string(), consumer.to_string());
        let probe = (key.clone(), group.clone(), consumer.clone());
        let deliverable = self
            .store
            .read("XREADGROUP", move |reader| {
                reader.has_deliverable(&probe.0, &probe.1, &probe.2, from)
            })
            .await?;
        if !deliverable {
            return Ok(Vec::new());
        }
        self.store
            .write(Durability::Deferred, move |tables, batch| {
                tables.stream_read_group(&key, &group, &consumer, from, count, batch.now)
            })
            .await
    }
}

/// Reports store health changes after the first as connection changes.
async fn forward_health(mut health: watch::Receiver<bool>, mut healthy: bool, events: EventSink) {
    while health.changed().await.is_ok() {
        let now = *health.borrow_and_update();
        if now != healthy {
            healthy = now;
            events(if now {
                BackendEvent::Connected
            } else {
                BackendEvent::Disconnected
            });
        }
    }
}

/// Whether a batch must be durable: it writes state rather than only counting.
fn apply_durability(writes: &[Write]) -> Durability {
    let writes_state = writes.iter().any(|write| {
        matches!(
            write,
            Write::Set { .. } | Write::Delete { .. } | Write::HashSet { .. }
        )
    });
    if writes_state {
        Durability::Durable
    } else {
        Durability::Deferred
    }
}

#[async_trait]
impl Backend for EmbeddedBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Embedded
    }

    fn is_connected(&self) -> bool {
        self.store.is_healthy()
    }

    fn set_topics(&self, topics: BTreeSet<Topic>) {
        self.broker.set_topics(self.gateway, topics);
    }

    async fn publish(&self, channel: &str, payload: &str) -> Result<u64, BusError> {
        self.ensure_connected()?;
        Ok(self.broker.publish(channel, payload))
    }

    async fn subscriber_counts(&self, channels: &[String]) -> Result<Vec<u64>, BusError> {
        self.ensure_connected()?;
        Ok(self.broker.subscriber_counts(channels))
    }

    async fn read_key(&self, key: &str) -> Result<KeyValue, BusError> {
        let key = key.to_string();
        self.store
            .read("TYPE", move |reader| reader.read_key(&key))
            .await
    }

    async fn get(&self, key: &str) -> Result<Option<String>, BusError> {
        let key = key.to_string();
        self.store.read("GET", move |reader| reader.get(&key)).await
    }

    async fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), BusError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.store
            .write(Durability::Durable, move |tables, batch| {
                tables.set(&key, &value, ttl.map(ttl_millis), batch.now)
            })
            .await
    }

    async fn set_if_absent(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<bool, BusError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.store
            .write(Durability::Durable, move |tables, batch| {
                tables.set_if_absent(&key, &value, ttl.map(ttl_millis), batch.now)
            })
            .await
    }

    async fn delete(&self, key: &str) -> Result<bool, BusError> {
        let key = key.to_string();
        self.store
            .write(Durability::Durable, move |tables, batch| {
                tables.delete(&key, batch.now)
            })
            .await
    }

    async fn hash_get(&self, key: &str, field: &str) -> Result<Option<String>, BusError> {
        let (key, field) = (key.to_string(), field.to_string());
        self.store
            .read("HGET", move |reader| reader.hash_get(&key, &field))
            .await
    }

    async fn hash_get_all(&self, key: &str) -> Result<Vec<(String, String)>, BusError> {
        let key = key.to_string();
        self.store
            .read("HGETALL", move |reader| reader.hash_get_all(&key))
            .await
    }

    async fn hash_set(&self, key: &str, fields: &[(String, String)]) -> Result<(), BusError> {
        if fields.is_empty() {
            return Ok(());
        }
        let (key, fields) = (key.to_string(), fields.to_vec());
        self.store
            .write(Durability::Durable, move |tables, batch| {
                tables.hash_set(&key, &fields, batch.now)
            })
            .await
    }

    async fn hash_delete(&self, key: &str, fields: &[String]) -> Result<u64, BusError> {
        if fields.is_empty() {
            return Ok(0);
        }
        let (key, fields) = (key.to_string(), fields.to_vec());
        self.store
            .write(Durability::Durable, move |tables, batch| {
                tables.hash_delete(&key, &fields, batch.now)
            })
            .await
    }

    async fn sorted_top(&self, key: &str, limit: usize) -> Result<Vec<(String, f64)>, BusError> {
        let key = key.to_string();
        self.store
            .read("ZRANGE", move |reader| reader.sorted_top(&key, limit))
            .await
    }

    async fn apply(&self, writes: Vec<Write>) -> Result<(), BusError> {
        if writes.is_empty() {
            return Ok(());
        }
        let durability = apply_durability(&writes);
        self.store
            .write(durability, move |tables, batch| {
                tables.apply(&writes, batch.now)
            })
            .await
    }

    async fn stream_add(
        &self,
        key: &str,
        fields: &[(String, String)],
        max_len: Option<u64>,
    ) -> Result<String, BusError> {
        let (key, fields) = (key.to_string(), fields.to_vec());
        self.store
            .write(Durability::Durable, move |tables, batch| {
                let id = tables.stream_add(&key, &fields, max_len, batch.now)?;
                batch.stream_appended = true;
                Ok(id.to_string())
            })
            .await
    }

    async fn stream_create_group(
        &self,
        key: &str,
        group: &str,
        start: &str,
    ) -> Result<(), BusError> {
        let (key, group, start) = (key.to_string(), group.to_string(), start.to_string());
        self.store
            .write(Durability::Durable, move |tables, batch| {
                tables.stream_create_group(&key, &group, &start, batch.now)
            })
            .await
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
        let deadline = block
            .filter(|_| from == ReadFrom::New)
            .map(|block| tokio::time::Instant::now() + block);
        loop {
            // Enabled before reading, so an append between the read and the wait wakes it.
            let appended = self.store.stream_appended();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let entries = self
                .read_group_once(key, group, consumer, from, count)
                .await?;
            let Some(deadline) = deadline else {
                return Ok(entries);
            };
            if !entries.is_empty() {
                return Ok(entries);
            }
            if tokio::time::timeout_at(deadline, appended).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn stream_ack(&self, key: &str, group: &str, ids: &[String]) -> Result<u64, BusError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let (key, group, ids) = (key.to_string(), group.to_string(), ids.to_vec());
        self.store
            .write(Durability::Durable, move |tables, batch| {
                tables.stream_ack(&key, &group, &ids, batch.now)
            })
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
        let min_idle_ms = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let (key, group, consumer) = (key.to_string(), group.to_string(), consumer.to_string());
        let probe = (key.clone(), group.clone());
        let idle = self
            .store
            .read("XAUTOCLAIM", move |reader| {
                reader.has_idle(&probe.0, &probe.1, min_idle_ms)
            })
            .await?;
        if !idle {
            return Ok(Vec::new());
        }
        self.store
            .write(Durability::Deferred, move |tables, batch| {
                tables.stream_claim_idle(&key, &group, &consumer, min_idle_ms, count, batch.now)
            })
            .await
    }

    async fn stream_range(
        &self,
        key: &str,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, BusError> {
        let (key, start, end) = (key.to_string(), start.to_string(), end.to_string());
        self.store
            .read("XRANGE", move |reader| {
                reader.stream_range(&key, &start, &end, count)
            })
            .await
    }

    async fn stream_len(&self, key: &str) -> Result<u64, BusError> {
        let key = key.to_string();
        self.store
            .read("XLEN", move |reader| reader.stream_len(&key))
            .await
    }
}

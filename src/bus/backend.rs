//! The storage and messaging operations the services use, behind one small trait, so that the
//! bus handle can speak to Redis or to an in-process store without the services knowing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::BackendKind;

/// Error of a bus operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// Nothing is connected: the backend is reconnecting or the gateway is restarting.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("{operation} failed: {message}")]
    Command {
        operation: &'static str,
        message: String,
    },
    #[error("{operation} timed out")]
    Timeout { operation: &'static str },
    /// An operation the backend cannot offer, such as Redis-only introspection.
    #[error("{operation} is not available on the {backend} backend")]
    NotAvailable {
        operation: &'static str,
        backend: BackendKind,
    },
    #[error("unexpected reply to {operation}: {message}")]
    InvalidReply {
        operation: &'static str,
        message: String,
    },
}

impl BusError {
    /// Whether retrying later can help: the bus was down or slow.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BusError::Unavailable(_) | BusError::Timeout { .. } | BusError::Command { .. }
        )
    }
}

/// Subscription target: one channel, or every channel matching a glob pattern.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Topic {
    Channel(String),
    Pattern(String),
}

/// Something the backend reports to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendEvent {
    /// A published message on a subscribed channel or pattern.
    Message {
        channel: String,
        pattern: Option<String>,
        payload: String,
    },
    /// The connection is up and every topic is subscribed again.
    Connected,
    /// The connection was lost; the backend is reconnecting.
    Disconnected,
}

/// Callback that receives a backend's events.
pub type EventSink = Arc<dyn Fn(BackendEvent) + Send + Sync>;

/// The value of a key, read according to its type.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyValue {
    Missing,
    String(String),
    Hash(Vec<(String, String)>),
    List { len: u64 },
    Set { len: u64 },
    SortedSet { len: u64 },
    Stream { len: u64 },
}

/// One stream entry: its id and its fields in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: String,
    pub fields: Vec<(String, String)>,
    /// How often the entry was delivered to a consumer group, when the read reports it.
    pub deliveries: Option<u64>,
}

impl StreamEntry {
    /// The value of the first field called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Entries a consumer-group read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// Entries never delivered to any consumer of the group (`>`).
    New,
    /// Entries delivered to this consumer and not acknowledged yet (`0`).
    Pending,
}

/// One write of a batch, applied in order and in one round trip.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Set {
        key: String,
        value: String,
        ttl: Option<Duration>,
    },
    Delete {
        key: String,
    },
    Expire {
        key: String,
        ttl: Duration,
    },
    IncrBy {
        key: String,
        delta: i64,
    },
    HashSet {
        key: String,
        fields: Vec<(String, String)>,
    },
    HashIncrBy {
        key: String,
        field: String,
        delta: i64,
    },
    SortedIncrBy {
        key: String,
        member: String,
        delta: f64,
    },
    /// Keeps the `keep` members with the highest scores and removes the rest.
    SortedKeepTop {
        key: String,
        keep: usize,
    },
}

/// The operations the services use, with Redis semantics.
///
/// Every call fails at once with [`BusError::Unavailable`] while the backend is disconnected;
/// nothing reports success for data it did not store or publish.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn kind(&self) -> BackendKind;

    fn is_connected(&self) -> bool;

    /// Replaces the set of topics to keep subscribed. The backend applies it now if connected
    /// and again after every reconnect.
    fn set_topics(&self, topics: BTreeSet<Topic>);

    /// Publishes `payload` on `channel` and returns how many subscribers received it.
    async fn publish(&self, channel: &str, payload: &str) -> Result<u64, BusError>;

    /// Subscriber counts of exact channels (`PUBSUB NUMSUB`), in the order asked.
    async fn subscriber_counts(&self, channels: &[String]) -> Result<Vec<u64>, BusError>;

    /// Reads a key according to its type.
    async fn read_key(&self, key: &str) -> Result<KeyValue, BusError>;

    async fn get(&self, key: &str) -> Result<Option<String>, BusError>;

    /// Sets a string, with an expiry when `ttl` is given.
    async fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), BusError>;

    /// Sets a string only if the key does not exist; returns whether it was set.
    async fn set_if_absent(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<bool, BusError>;

    /// Deletes a key; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, BusError>;

    async fn hash_get(&self, key: &str, field: &str) -> Result<Option<String>, BusError>;

    async fn hash_get_all(&self, key: &str) -> Result<Vec<(String, String)>, BusError>;

    async fn hash_set(&self, key: &str, fields: &[(String, String)]) -> Result<(), BusError>;

    /// Deletes fields of a hash; returns how many existed.
    async fn hash_delete(&self, key: &str, fields: &[String]) -> Result<u64, BusError>;

    /// The `limit` members with the highest scores, highest first.
    async fn sorted_top(&self, key: &str, limit: usize) -> Result<Vec<(String, f64)>, BusError>;

    /// Applies writes in order in one round trip, as one transaction (`MULTI`/`EXEC`): a
    /// connection lost before `EXEC` applies none of them. A write that fails inside the
    /// transaction (a key of the wrong type) does not undo the others.
    async fn apply(&self, writes: Vec<Write>) -> Result<(), BusError>;

    /// Appends an entry, trimming the stream to about `max_len` entries when given; returns
    /// the new entry's id.
    async fn stream_add(
        &self,
        key: &str,
        fields: &[(String, String)],
        max_len: Option<u64>,
    ) -> Result<String, BusError>;

    /// Creates a consumer group starting at `start` (`$` or `0`), creating the stream if
    /// needed. An existing group is left as it is.
    async fn stream_create_group(
        &self,
        key: &str,
        group: &str,
        start: &str,
    ) -> Result<(), BusError>;

    /// Reads up to `count` entries for `consumer`, waiting up to `block` for new ones.
    /// Blocking reads use their own connection; keep `block` at a few seconds.
    async fn stream_read_group(
        &self,
        key: &str,
        group: &str,
        consumer: &str,
        from: ReadFrom,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<StreamEntry>, BusError>;

    /// Acknowledges entries; returns how many were pending.
    async fn stream_ack(&self, key: &str, group: &str, ids: &[String]) -> Result<u64, BusError>;

    /// Moves entries that other consumers left pending for at least `min_idle` to `consumer`
    /// and returns them (up to `count`), oldest first.
    async fn stream_claim_idle(
        &self,
        key: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, BusError>;

    /// Entries with ids from `start` to `end` inclusive (`-` and `+` for the ends), up to
    /// `count`.
    async fn stream_range(
        &self,
        key: &str,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, BusError>;

    async fn stream_len(&self, key: &str) -> Result<u64, BusError>;
}

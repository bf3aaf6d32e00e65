//! The store's tables and the key-value operations on them (strings, counters, hashes,
//! sorted sets, expiry). Stream operations live in [`super::streams`].
//!
//! Every key has one row in `keys` ([`Meta`]: its type, expiry, size and, for a stream, its
//! last id); its data lives in the table of its type, keyed by `(key, …)` tuples so that a
//! key's rows are one contiguous range. `expiry` indexes keys by expiry time, so the sweep
//! finds expired keys without scanning every key.
//!
//! Operations check types and arguments before they change anything, so an operation that
//! fails with [`Failure::Rejected`] has no effect, as a failed Redis command has none.

use redb::{
    ReadOnlyTable, ReadTransaction, ReadableTable, StorageError, Table, TableDefinition,
    TableError, TypeName, Value, WriteTransaction,
};

use super::streams::StreamId;
use crate::bus::backend::{BusError, KeyValue, Write};

/// Layout version of the tables, stored under [`SCHEMA_KEY`]. A store written by a newer
/// layout is refused instead of misread.
pub const SCHEMA_VERSION: u64 = 1;
pub const SCHEMA_KEY: &str = "version";

pub const SCHEMA: TableDefinition<&str, u64> = TableDefinition::new("schema");
pub const KEYS: TableDefinition<&str, Meta> = TableDefinition::new("keys");
/// `(expires_at_ms, key)` of every key with an expiry.
pub const EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("expiry");
pub const STRINGS: TableDefinition<&str, &str> = TableDefinition::new("strings");
/// `(key, field)` → value.
pub const HASHES: TableDefinition<(&str, &str), &str> = TableDefinition::new("hashes");
/// `(key, member)` → score.
pub const SORTED_SETS: TableDefinition<(&str, &str), f64> = TableDefinition::new("sorted_sets");
/// `(key, id ms, id seq)` → fields, encoded by [`super::streams::encode_fields`].
pub const STREAM_ENTRIES: TableDefinition<(&str, u64, u64), &[u8]> =
    TableDefinition::new("stream_entries");
/// `(key, group)` → last delivered id `(ms, seq)`.
pub const STREAM_GROUPS: TableDefinition<(&str, &str), (u64, u64)> =
    TableDefinition::new("stream_groups");
/// Key of [`STREAM_PENDING`]: `(key, group, id ms, id seq)`.
pub type PendingKey<'a> = (&'a str, &'a str, u64, u64);
/// Value of [`STREAM_PENDING`]: `(consumer, delivered at ms, deliveries)`.
pub type PendingValue<'a> = (&'a str, u64, u64);
/// The entries delivered to a consumer group and not yet acknowledged.
pub const STREAM_PENDING: TableDefinition<PendingKey, PendingValue> =
    TableDefinition::new("stream_pending");

/// The type of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Hash,
    SortedSet,
    Stream,
    /// A type byte this version does not know; every typed operation rejects the key.
    Unknown(u8),
}

impl Kind {
    fn to_byte(self) -> u8 {
        match self {
            Kind::String => 1,
            Kind::Hash => 2,
            Kind::SortedSet => 3,
            Kind::Stream => 4,
            Kind::Unknown(byte) => byte,
        }
    }

    fn from_byte(byte: u8) -> Kind {
        match byte {
            1 => Kind::String,
            2 => Kind::Hash,
            3 => Kind::SortedSet,
            4 => Kind::Stream,
            other => Kind::Unknown(other),
        }
    }
}

/// What the store knows about a key besides its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Unix time in milliseconds at which the key expires; 0 means never.
    pub expires_at: u64,
    /// Fields of a hash, members of a sorted set or entries of a stream; 1 for a string.
    pub len: u64,
    /// The last id a stream handed out (`0-0` for other types), which new ids must exceed.
    pub last_id: StreamId,
}

impl Meta {
    pub fn new(kind: Kind) -> Meta {
        Meta {
            kind,
            expires_at: 0,
            len: 0,
            last_id: StreamId::ZERO,
        }
    }

    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at != 0 && self.expires_at <= now
    }
}

const META_WIDTH: usize = 33;

impl Value for Meta {
    type SelfType<'a> = Meta;
    type AsBytes<'a> = [u8; META_WIDTH];

    fn fixed_width() -> Option<usize> {
        Some(META_WIDTH)
    }

    fn from_bytes<'a>(data: &'a [u8]) -> Meta
    where
        Self: 'a,
    {
        let word = |index: usize| {
            let start = 1 + index * 8;
            data.get(start..start + 8)
                .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
                .map_or(0, u64::from_le_bytes)
        };
        Meta {
            kind: Kind::from_byte(data.first().copied().unwrap_or(0)),
            expires_at: word(0),
            len: word(1),
            last_id: StreamId {
                ms: word(2),
                seq: word(3),
            },
        }
    }

    fn as_bytes<'a, 'b: 'a>(value: &'a Meta) -> [u8; META_WIDTH]
    where
        Self: 'b,
    {
        let mut bytes = [0u8; META_WIDTH];
        bytes[0] = value.kind.to_byte();
        let words = [
            value.expires_at,
            value.len,
            value.last_id.ms,
            value.last_id.seq,
        ];
        for (index, word) in words.iter().enumerate() {
            let start = 1 + index * 8;
            bytes[start..start + 8].copy_from_slice(&word.to_le_bytes());
        }
        bytes
    }

    fn type_name() -> TypeName {
        TypeName::new("almagest::Meta")
    }
}

/// Why an operation did not complete.
#[derive(Debug)]
pub enum Failure {
    /// The request is invalid for the stored data (wrong type, not an integer, no such
    /// group). Nothing was changed; the rest of the batch goes on.
    Rejected(BusError),
    /// The store itself failed; the whole transaction is abandoned.
    Storage(redb::Error),
}

impl From<StorageError> for Failure {
    fn from(error: StorageError) -> Failure {
        Failure::Storage(error.into())
    }
}

impl From<TableError> for Failure {
    fn from(error: TableError) -> Failure {
        Failure::Storage(error.into())
    }
}

pub type OpResult<T> = Result<T, Failure>;

/// A rejection with Redis's wording, so callers that match on it work on both backends.
pub fn rejected(operation: &'static str, message: impl Into<String>) -> Failure {
    Failure::Rejected(BusError::Command {
        operation,
        message: message.into(),
    })
}

pub fn wrong_type(operation: &'static str) -> Failure {
    rejected(
        operation,
        "WRONGTYPE Operation against a key holding the wrong kind of value",
    )
}

/// The first string after every string that starts with `key`'s tuple element: tuple keys
/// compare element by element, so `(key, …)` rows all sort before `(key + "\0", …)`.
pub fn after(key: &str) -> String {
    format!("{key}\0")
}

/// The key's metadata if it exists and has not expired.
pub fn live_meta(
    keys: &impl ReadableTable<&'static str, Meta>,
    key: &str,
    now: u64,
) -> Result<Option<Meta>, StorageError> {
    Ok(keys
        .get(key)?
        .map(|meta| meta.value())
        .filter(|meta| !meta.is_expired(now)))
}

/// The key's live metadata, requiring `kind` (or no key at all).
fn live_of_kind(
    keys: &impl ReadableTable<&'static str, Meta>,
    key: &str,
    kind: Kind,
    operation: &'static str,
    now: u64,
) -> OpResult<Option<Meta>> {
    match live_meta(keys, key, now)? {
        Some(meta) if meta.kind != kind => Err(wrong_type(operation)),
        found => Ok(found),
    }
}

fn parse_integer(text: &str, operation: &'static str) -> OpResult<i64> {
    text.parse::<i64>()
        .map_err(|_| rejected(operation, "ERR value is not an integer or out of range"))
}

fn add_integer(current: i64, delta: i64, operation: &'static str) -> OpResult<i64> {
    current
        .checked_add(delta)
        .ok_or_else(|| rejected(operation, "ERR increment or decrement would overflow"))
}

/// Every table, opened in one write transaction.
pub struct Tables<'txn> {
    pub keys: Table<'txn, &'static str, Meta>,
    pub expiry: Table<'txn, (u64, &'static str), ()>,
    pub strings: Table<'txn, &'static str, &'static str>,
    pub hashes: Table<'txn, (&'static str, &'static str), &'static str>,
    pub sorted_sets: Table<'txn, (&'static str, &'static str), f64>,
    pub entries: Table<'txn, (&'static str, u64, u64), &'static [u8]>,
    pub groups: Table<'txn, (&'static str, &'static str), (u64, u64)>,
    pub pending: Table<'txn, PendingKey<'static>, PendingValue<'static>>,
}

impl<'txn> Tables<'txn> {
    pub fn open(txn: &'txn WriteTransaction) -> Result<Tables<'txn>, TableError> {
        Ok(Tables {
            keys: txn.open_table(KEYS)?,
            expiry: txn.open_table(EXPIRY)?,
            strings: txn.open_table(STRINGS)?,
            hashes: txn.open_table(HASHES)?,
            sorted_sets: txn.open_table(SORTED_SETS)?,
            entries: txn.open_table(STREAM_ENTRIES)?,
            groups: txn.open_table(STREAM_GROUPS)?,
            pending: txn.open_table(STREAM_PENDING)?,
        })
    }

    /// The key's metadata if it is live; an expired key is removed first, so that writing to
    /// it starts from nothing, as in Redis.
    pub fn meta_for_write(&mut self, key: &str, now: u64) -> OpResult<Option<Meta>> {
        let Some(meta) = self.keys.get(key)?.map(|meta| meta.value()) else {
            return Ok(None);
        };
        if meta.is_expired(now) {
            self.remove_key(key, &meta)?;
            return Ok(None);
        }
        Ok(Some(meta))
    }

    /// Like [`Tables::meta_for_write`], requiring `kind` when the key exists.
    pub fn meta_of_kind(
        &mut self,
        key: &str,
        kind: Kind,
        operation: &'static str,
        now: u64,
    ) -> OpResult<Option<Meta>> {
        match self.meta_for_write(key, now)? {
            Some(meta) if meta.kind != kind => Err(wrong_type(operation)),
            found => Ok(found),
        }
    }

    /// Stores `meta` for `key`, keeping the expiry index in step with it.
    pub fn put_meta(&mut self, key: &str, old: Option<&Meta>, meta: &Meta) -> OpResult<()> {
        let old_expiry = old.map_or(0, |old| old.expires_at);
        if old_expiry != meta.expires_at {
            if old_expiry != 0 {
                self.expiry.remove((old_expiry, key))?;
            }
            if meta.expires_at != 0 {
                self.expiry.insert((meta.expires_at, key), ())?;
            }
        }
        self.keys.insert(key, meta)?;
        Ok(())
    }

    /// Removes a key and all its data.
    pub fn remove_key(&mut self, key: &str, meta: &Meta) -> OpResult<()> {
        let next = after(key);
        match meta.kind {
            Kind::String => {
                self.strings.remove(key)?;
            }
            Kind::Hash => self
                .hashes
                .retain_in((key, "")..(next.as_str(), ""), |_, _| false)?,
            Kind::SortedSet => {
                self.sorted_sets
                    .retain_in((key, "")..(next.as_str(), ""), |_, _| false)?;
            }
            Kind::Stream => {
                self.entries
                    .retain_in((key, 0, 0)..=(key, u64::MAX, u64::MAX), |_, _| false)?;
                self.groups
                    .retain_in((key, "")..(next.as_str(), ""), |_, _| false)?;
                self.pending
                    .retain_in((key, "", 0, 0)..(next.as_str(), "", 0, 0), |_, _| false)?;
            }
            Kind::Unknown(_) => {}
        }
        if meta.expires_at != 0 {
            self.expiry.remove((meta.expires_at, key))?;
        }
        self.keys.remove(key)?;
        Ok(())
    }

    /// Removes up to `limit` keys whose expiry has passed; returns how many were removed.
    pub fn sweep_expired(&mut self, now: u64, limit: usize) -> OpResult<usize> {
        let mut due = Vec::new();
        for row in self.expiry.range((0, "")..(now.saturating_add(1), ""))? {
            let (index, _) = row?;
            let (at, key) = index.value();
            due.push((at, key.to_string()));
            if due.len() >= limit {
                break;
            }
        }
        for (at, key) in &due {
            let meta = self.keys.get(key.as_str())?.map(|meta| meta.value());
            match meta {
                Some(meta) if meta.expires_at == *at => self.remove_key(key, &meta)?,
                // An index row without its key cannot be left by this code, but a stale
                // row must not stop the sweep either.
                _ => {
                    self.expiry.remove((*at, key.as_str()))?;
                }
            }
        }
        Ok(due.len())
    }

    pub fn set(&mut self, key: &str, value: &str, ttl_ms: Option<u64>, now: u64) -> OpResult<()> {
        let old = self.meta_for_write(key, now)?;
        if let Some(old) = &old
            && old.kind != Kind::String
        {
            self.remove_key(key, old)?;
        }
        let old = old.filter(|old| old.kind == Kind::String);
        let meta = Meta {
            expires_at: ttl_ms.map_or(0, |ttl| now.saturating_add(ttl)),
            len: 1,
            ..Meta::new(Kind::String)
        };
        self.put_meta(key, old.as_ref(), &meta)?;
        self.strings.insert(key, value)?;
        Ok(())
    }

    pub fn set_if_absent(
        &mut self,
        key: &str,
        value: &str,
        ttl_ms: Option<u64>,
        now: u64,
    ) -> OpResult<bool> {
        if self.meta_for_write(key, now)?.is_some() {
            return Ok(false);
        }
        self.set(key, value, ttl_ms, now)?;
        Ok(true)
    }

    pub fn delete(&mut self, key: &str, now: u64) -> OpResult<bool> {
        let Some(meta) = self.meta_for_write(key, now)? else {
            return Ok(false);
        };
        self.remove_key(key, &meta)?;
        Ok(true)
    }

    /// Sets a key's expiry; returns whether the key exists.
    pub fn expire(&mut self, key: &str, ttl_ms: u64, now: u64) -> OpResult<bool> {
        let Some(old) = self.meta_for_write(key, now)? else {
            return Ok(false);
        };
        let meta = Meta {
            expires_at: now.saturating_add(ttl_ms),
            ..old
        };
        self.put_meta(key, Some(&old), &meta)?;
        Ok(true)
    }

    pub fn incr_by(&mut self, key: &str, delta: i64, now: u64) -> OpResult<i64> {
        let old = self.meta_of_kind(key, Kind::String, "INCRBY", now)?;
        let current = match &old {
            Some(_) => match self.strings.get(key)? {
                Some(value) => parse_integer(value.value(), "INCRBY")?,
                None => 0,
            },
            None => 0,
        };
        let value = add_integer(current, delta, "INCRBY")?;
        let meta = old.unwrap_or(Meta {
            len: 1,
            ..Meta::new(Kind::String)
        });
        self.put_meta(key, old.as_ref(), &meta)?;
        self.strings.insert(key, value.to_string().as_str())?;
        Ok(value)
    }

    pub fn hash_set(&mut self, key: &str, fields: &[(String, String)], now: u64) -> OpResult<()> {
        if fields.is_empty() {
            return Ok(());
        }
        let old = self.meta_of_kind(key, Kind::Hash, "HSET", now)?;
        let mut meta = old.unwrap_or(Meta::new(Kind::Hash));
        for (field, value) in fields {
            if self
                .hashes
                .insert((key, field.as_str()), value.as_str())?
                .is_none()
            {
                meta.len += 1;
            }
        }
        self.put_meta(key, old.as_ref(), &meta)
    }

    /// Deletes fields; a hash left without fields is deleted, as in Redis.
    pub fn hash_delete(&mut self, key: &str, fields: &[String], now: u64) -> OpResult<u64> {
        let Some(old) = self.meta_of_kind(key, Kind::Hash, "HDEL", now)? else {
            return Ok(0);
        };
        let mut removed = 0;
        for field in fields {
            if self.hashes.remove((key, field.as_str()))?.is_some() {
                removed += 1;
            }
        }
        let meta = Meta {
            len: old.len.saturating_sub(removed),
            ..old
        };
        if meta.len == 0 {
            self.remove_key(key, &old)?;
        } else {
            self.put_meta(key, Some(&old), &meta)?;
        }
        Ok(removed)
    }

    pub fn hash_incr_by(&mut self, key: &str, field: &str, delta: i64, now: u64) -> OpResult<i64> {
        let old = self.meta_of_kind(key, Kind::Hash, "HINCRBY", now)?;
        let current = match self.hashes.get((key, field))? {
            Some(value) => Some(
                value
                    .value()
                    .parse::<i64>()
                    .map_err(|_| rejected("HINCRBY", "ERR hash value is not an integer"))?,
            ),
            None => None,
        };
        let value = add_integer(current.unwrap_or(0), delta, "HINCRBY")?;
        let mut meta = old.unwrap_or(Meta::new(Kind::Hash));
        if current.is_none() {
            meta.len += 1;
        }
        self.put_meta(key, old.as_ref(), &meta)?;
        self.hashes
            .insert((key, field), value.to_string().as_str())?;
        Ok(value)
    }

    pub fn sorted_incr_by(
        &mut self,
        key: &str,
        member: &str,
        delta: f64,
        now: u64,
    ) -> OpResult<f64> {
        if delta.is_nan() {
            return Err(rejected("ZINCRBY", "ERR value is not a valid float"));
        }
        let old = self.meta_of_kind(key, Kind::SortedSet, "ZINCRBY", now)?;
        let current = self
            .sorted_sets
            .get((key, member))?
            .map(|score| score.value());
        let score = current.unwrap_or(0.0) + delta;
        if score.is_nan() {
            return Err(rejected(
                "ZINCRBY",
                "ERR resulting score is not a number (NaN)",
            ));
        }
        let mut meta = old.unwrap_or(Meta::new(Kind::SortedSet));
        if current.is_none() {
            meta.len += 1;
        }
        self.put_meta(key, old.as_ref(), &meta)?;
        self.sorted_sets.insert((key, member), score)?;
        Ok(score)
    }

    /// Keeps the `keep` members with the highest scores, as `ZREMRANGEBYRANK key 0
    /// -(keep + 1)` does: ranks order by score, then by member. Returns how many went.
    pub fn sorted_keep_top(&mut self, key: &str, keep: usize, now: u64) -> OpResult<u64> {
        let Some(old) = self.meta_of_kind(key, Kind::SortedSet, "ZREMRANGEBYRANK", now)? else {
            return Ok(0);
        };
        if old.len <= keep as u64 {
            return Ok(0);
        }
        let next = after(key);
        let mut members: Vec<(f64, String)> = Vec::new();
        for row in self.sorted_sets.range((key, "")..(next.as_str(), ""))? {
            let (index, score) = row?;
            members.push((score.value(), index.value().1.to_string()));
        }
        members.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let remove = members.len().saturating_sub(keep);
        for (_, member) in &members[..remove] {
            self.sorted_sets.remove((key, member.as_str()))?;
        }
        let meta = Meta {
            len: old.len.saturating_sub(remove as u64),
            ..old
        };
        if meta.len == 0 {
            self.remove_key(key, &old)?;
        } else {
            self.put_meta(key, Some(&old), &meta)?;
        }
        Ok(remove as u64)
    }
}

impl Tables<'_> {
    /// Applies writes in order, as a Redis pipeline does: a rejected write changes nothing
    /// and the others still apply. Returns the first rejection.
    pub fn apply(&mut self, writes: &[Write], now: u64) -> OpResult<()> {
        let mut first_rejection = None;
        for write in writes {
            let outcome = match write {
                Write::Set { key, value, ttl } => self.set(key, value, ttl.map(ttl_millis), now),
                Write::Delete { key } => self.delete(key, now).map(drop),
                Write::Expire { key, ttl } => self.expire(key, ttl_millis(*ttl), now).map(drop),
                Write::IncrBy { key, delta } => self.incr_by(key, *delta, now).map(drop),
                Write::HashSet { key, fields } => self.hash_set(key, fields, now),
                Write::HashIncrBy { key, field, delta } => {
                    self.hash_incr_by(key, field, *delta, now).map(drop)
                }
                Write::SortedIncrBy { key, member, delta } => {
                    self.sorted_incr_by(key, member, *delta, now).map(drop)
                }
                Write::SortedKeepTop { key, keep } => {
                    self.sorted_keep_top(key, *keep, now).map(drop)
                }
            };
            match outcome {
                Ok(()) => {}
                Err(Failure::Rejected(error)) => {
                    first_rejection.get_or_insert(error);
                }
                Err(storage) => return Err(storage),
            }
        }
        first_rejection.map_or(Ok(()), |error| Err(Failure::Rejected(error)))
    }
}

/// A TTL in milliseconds as the Redis backend sends it: at least 1, so that a zero TTL
/// expires the key at once instead of meaning "no expiry".
pub fn ttl_millis(ttl: std::time::Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Tables opened in a read transaction as they are needed.
pub struct Reader<'txn> {
    txn: &'txn ReadTransaction,
    keys: ReadOnlyTable<&'static str, Meta>,
    pub now: u64,
}

impl<'txn> Reader<'txn> {
    pub fn new(txn: &'txn ReadTransaction, now: u64) -> OpResult<Reader<'txn>> {
        Ok(Reader {
            txn,
            keys: txn.open_table(KEYS)?,
            now,
        })
    }

    pub fn txn(&self) -> &'txn ReadTransaction {
        self.txn
    }

    pub fn meta(&self, key: &str) -> OpResult<Option<Meta>> {
        Ok(live_meta(&self.keys, key, self.now)?)
    }

    pub fn meta_of_kind(
        &self,
        key: &str,
        kind: Kind,
        operation: &'static str,
    ) -> OpResult<Option<Meta>> {
        live_of_kind(&self.keys, key, kind, operation, self.now)
    }

    pub fn get(&self, key: &str) -> OpResult<Option<String>> {
        if self.meta_of_kind(key, Kind::String, "GET")?.is_none() {
            return Ok(None);
        }
        let strings = self.txn.open_table(STRINGS)?;
        Ok(strings.get(key)?.map(|value| value.value().to_string()))
    }

    pub fn hash_get(&self, key: &str, field: &str) -> OpResult<Option<String>> {
        if self.meta_of_kind(key, Kind::Hash, "HGET")?.is_none() {
            return Ok(None);
        }
        let hashes = self.txn.open_table(HASHES)?;
        Ok(hashes
            .get((key, field))?
            .map(|value| value.value().to_string()))
    }

    pub fn hash_get_all(&self, key: &str) -> OpResult<Vec<(String, String)>> {
        if self.meta_of_kind(key, Kind::Hash, "HGETALL")?.is_none() {
            return Ok(Vec::new());
        }
        let hashes = self.txn.open_table(HASHES)?;
        let next = after(key);
        let mut pairs = Vec::new();
        for row in hashes.range((key, "")..(next.as_str(), ""))? {
            let (index, value) = row?;
            pairs.push((index.value().1.to_string(), value.value().to_string()));
        }
        Ok(pairs)
    }

    /// The `limit` members with the highest scores, highest first; equal scores in reverse
    /// member order, as `ZRANGE … REV` returns them. Reads every member of the set.
    pub fn sorted_top(&self, key: &str, limit: usize) -> OpResult<Vec<(String, f64)>> {
        if limit == 0 || self.meta_of_kind(key, Kind::SortedSet, "ZRANGE")?.is_none() {
            return Ok(Vec::new());
        }
        let sorted_sets = self.txn.open_table(SORTED_SETS)?;
        let next = after(key);
        // A min-heap of the best `limit` seen so far, so memory stays at `limit` entries
        // however large the set is.
        let mut best = std::collections::BinaryHeap::with_capacity(limit + 1);
        for row in sorted_sets.range((key, "")..(next.as_str(), ""))? {
            let (index, score) = row?;
            best.push(std::cmp::Reverse(Ranked {
                score: score.value(),
                member: index.value().1.to_string(),
            }));
            if best.len() > limit {
                best.pop();
            }
        }
        let mut top: Vec<Ranked> = best.into_iter().map(|ranked| ranked.0).collect();
        top.sort_by(|a, b| b.cmp(a));
        Ok(top
            .into_iter()
            .map(|ranked| (ranked.member, ranked.score))
            .collect())
    }

    pub fn read_key(&self, key: &str) -> OpResult<KeyValue> {
        let Some(meta) = self.meta(key)? else {
            return Ok(KeyValue::Missing);
        };
        Ok(match meta.kind {
            Kind::String => self.get(key)?.map_or(KeyValue::Missing, KeyValue::String),
            Kind::Hash => KeyValue::Hash(self.hash_get_all(key)?),
            Kind::SortedSet => KeyValue::SortedSet { len: meta.len },
            Kind::Stream => KeyValue::Stream { len: meta.len },
            Kind::Unknown(byte) => {
                return Err(Failure::Rejected(BusError::InvalidReply {
                    operation: "TYPE",
                    message: format!("key {key:?} has unknown type byte {byte}"),
                }));
            }
        })
    }
}

/// A sorted-set member ordered by score, then by member.
#[derive(Debug, PartialEq)]
struct Ranked {
    score: f64,
    member: String,
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| self.member.cmp(&other.member))
    }
}

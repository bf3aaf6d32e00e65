//! Streams: entries with Redis-style ids, exact `MAXLEN` trimming, consumer groups with a
//! pending-entries list, acknowledgement and claiming of idle entries.
//!
//! Delivery times are Unix milliseconds, so idle times keep counting across a restart, as
//! they do in Redis with persistence.

use std::fmt;

use redb::ReadableTable;

use super::tables::{
    Failure, Kind, Meta, OpResult, Reader, STREAM_ENTRIES, STREAM_GROUPS, STREAM_PENDING, Tables,
    rejected,
};
use crate::bus::backend::{ReadFrom, StreamEntry};

/// A stream entry id, `<ms>-<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };
    pub const MAX: StreamId = StreamId {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    /// Parses `<ms>-<seq>`, or `<ms>` alone with `seq` as the sequence number.
    fn parse_with(text: &str, seq: u64) -> Option<StreamId> {
        match text.split_once('-') {
            Some((ms, sequence)) => Some(StreamId {
                ms: ms.parse().ok()?,
                seq: sequence.parse().ok()?,
            }),
            None => Some(StreamId {
                ms: text.parse().ok()?,
                seq,
            }),
        }
    }

    /// Parses an id given as an argument, with Redis's error for an invalid one.
    pub fn parse(text: &str, operation: &'static str) -> OpResult<StreamId> {
        StreamId::parse_with(text, 0).ok_or_else(invalid_id(operation))
    }

    /// The id after this one, or `None` past the last possible id.
    fn next(self) -> Option<StreamId> {
        match self.seq.checked_add(1) {
            Some(seq) => Some(StreamId { ms: self.ms, seq }),
            None => self.ms.checked_add(1).map(|ms| StreamId { ms, seq: 0 }),
        }
    }

    /// The id before this one, or `None` before `0-0`.
    fn previous(self) -> Option<StreamId> {
        match self.seq.checked_sub(1) {
            Some(seq) => Some(StreamId { ms: self.ms, seq }),
            None => self
                .ms
                .checked_sub(1)
                .map(|ms| StreamId { ms, seq: u64::MAX }),
        }
    }

    /// A new entry's id: the current time, or one past `last` when the clock has not moved
    /// past it (a burst in one millisecond, or a clock set back).
    fn after(last: StreamId, now: u64) -> Option<StreamId> {
        if now > last.ms {
            Some(StreamId { ms: now, seq: 0 })
        } else {
            last.next()
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

fn invalid_id(operation: &'static str) -> impl Fn() -> Failure {
    move || {
        rejected(
            operation,
            "ERR Invalid stream ID specified as stream command argument",
        )
    }
}

fn no_group(operation: &'static str, key: &str, group: &str) -> Failure {
    rejected(
        operation,
        format!("NOGROUP No such key '{key}' or consumer group '{group}'"),
    )
}

/// Encodes fields as a sequence of (u32 length, bytes) pairs, name then value.
pub fn encode_fields(fields: &[(String, String)]) -> Vec<u8> {
    let size: usize = fields
        .iter()
        .map(|(name, value)| 8 + name.len() + value.len())
        .sum();
    let mut bytes = Vec::with_capacity(size);
    for text in fields.iter().flat_map(|(name, value)| [name, value]) {
        let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(text.as_bytes());
    }
    bytes
}

/// Decodes what [`encode_fields`] wrote; `None` for bytes it cannot have written.
pub fn decode_fields(mut bytes: &[u8]) -> Option<Vec<(String, String)>> {
    let mut texts = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let text = bytes.get(4..4 + len)?;
        texts.push(String::from_utf8(text.to_vec()).ok()?);
        bytes = &bytes[4 + len..];
    }
    if texts.len() % 2 != 0 {
        return None;
    }
    let mut fields = Vec::with_capacity(texts.len() / 2);
    let mut texts = texts.into_iter();
    while let (Some(name), Some(value)) = (texts.next(), texts.next()) {
        fields.push((name, value));
    }
    Some(fields)
}

fn entry(id: StreamId, bytes: &[u8], operation: &'static str) -> OpResult<StreamEntry> {
    let mut fields = decode_fields(bytes).ok_or_else(|| {
        Failure::Rejected(crate::bus::BusError::InvalidReply {
            operation,
            message: format!("stream entry {id} is not readable"),
        })
    })?;
    // The Redis backend returns fields sorted by name (its reply passes through a hash map).
    fields.sort();
    Ok(StreamEntry {
        id: id.to_string(),
        fields,
        // Redis 7 reports no delivery counts on reads and claims; neither does this store.
        deliveries: None,
    })
}

/// One bound of an `XRANGE`: `-`, `+`, an id, a bare `<ms>`, each optionally exclusive with `(`.
fn range_bound(text: &str, is_start: bool) -> OpResult<Option<StreamId>> {
    let invalid = invalid_id("XRANGE");
    let (exclusive, text) = match text.strip_prefix('(') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let id = match text {
        "-" if !exclusive => StreamId::ZERO,
        "+" if !exclusive => StreamId::MAX,
        _ if is_start => StreamId::parse_with(text, 0).ok_or_else(&invalid)?,
        _ => StreamId::parse_with(text, u64::MAX).ok_or_else(&invalid)?,
    };
    if !exclusive {
        return Ok(Some(id));
    }
    Ok(if is_start { id.next() } else { id.previous() })
}

impl Tables<'_> {
    pub fn stream_add(
        &mut self,
        key: &str,
        fields: &[(String, String)],
        max_len: Option<u64>,
        now: u64,
    ) -> OpResult<StreamId> {
        if fields.is_empty() {
            return Err(rejected(
                "XADD",
                "ERR wrong number of arguments for 'xadd' command",
            ));
        }
        let old = self.meta_of_kind(key, Kind::Stream, "XADD", now)?;
        let mut meta = old.unwrap_or(Meta::new(Kind::Stream));
        let id = StreamId::after(meta.last_id, now).ok_or_else(|| {
            rejected(
                "XADD",
                "ERR The stream has exhausted the last possible ID, unable to add more items",
            )
        })?;
        self.entries
            .insert((key, id.ms, id.seq), encode_fields(fields).as_slice())?;
        meta.len += 1;
        meta.last_id = id;
        if let Some(max_len) = max_len
            && meta.len > max_len
        {
            let excess = meta.len - max_len;
            let trimmed = self.trim_oldest(key, excess)?;
            meta.len -= trimmed;
        }
        self.put_meta(key, old.as_ref(), &meta)?;
        Ok(id)
    }

    /// Deletes the `count` oldest entries; pending-list rows that name them stay, as in Redis.
    fn trim_oldest(&mut self, key: &str, count: u64) -> OpResult<u64> {
        let mut removed = 0;
        let oldest = self
            .entries
            .extract_if((key, 0, 0)..=(key, u64::MAX, u64::MAX), |_, _| true)?;
        for row in oldest.take(count as usize) {
            row?;
            removed += 1;
        }
        Ok(removed)
    }

    pub fn stream_create_group(
        &mut self,
        key: &str,
        group: &str,
        start: &str,
        now: u64,
    ) -> OpResult<()> {
        let old = self.meta_of_kind(key, Kind::Stream, "XGROUP CREATE", now)?;
        let meta = old.unwrap_or(Meta::new(Kind::Stream));
        let start = match start {
            "$" => meta.last_id,
            other => StreamId::parse(other, "XGROUP CREATE")?,
        };
        if self.groups.get((key, group))?.is_some() {
            return Ok(());
        }
        self.put_meta(key, old.as_ref(), &meta)?;
        self.groups.insert((key, group), (start.ms, start.seq))?;
        Ok(())
    }

    /// The group's last delivered id; `NOGROUP` when the stream or the group is missing.
    fn group_cursor(
        &mut self,
        key: &str,
        group: &str,
        operation: &'static str,
        now: u64,
    ) -> OpResult<StreamId> {
        if self
            .meta_of_kind(key, Kind::Stream, operation, now)?
            .is_none()
        {
            return Err(no_group(operation, key, group));
        }
        let cursor = self.groups.get((key, group))?.map(|cursor| cursor.value());
        let (ms, seq) = cursor.ok_or_else(|| no_group(operation, key, group))?;
        Ok(StreamId { ms, seq })
    }

    pub fn stream_read_group(
        &mut self,
        key: &str,
        group: &str,
        consumer: &str,
        from: ReadFrom,
        count: usize,
        now: u64,
    ) -> OpResult<Vec<StreamEntry>> {
        let cursor = self.group_cursor(key, group, "XREADGROUP", now)?;
        let count = count.max(1);
        match from {
            ReadFrom::New => self.deliver_new(key, group, consumer, cursor, count, now),
            ReadFrom::Pending => self.deliver_pending(key, group, consumer, count, now),
        }
    }

    fn deliver_new(
        &mut self,
        key: &str,
        group: &str,
        consumer: &str,
        cursor: StreamId,
        count: usize,
        now: u64,
    ) -> OpResult<Vec<StreamEntry>> {
        let Some(first) = cursor.next() else {
            return Ok(Vec::new());
        };
        let mut delivered = Vec::new();
        let mut ids = Vec::new();
        for row in self
            .entries
            .range((key, first.ms, first.seq)..=(key, u64::MAX, u64::MAX))?
            .take(count)
        {
            let (index, bytes) = row?;
            let (_, ms, seq) = index.value();
            let id = StreamId { ms, seq };
            delivered.push(entry(id, bytes.value(), "XREADGROUP")?);
            ids.push(id);
        }
        for id in &ids {
            self.pending
                .insert((key, group, id.ms, id.seq), (consumer, now, 1))?;
        }
        if let Some(last) = ids.last() {
            self.groups.insert((key, group), (last.ms, last.seq))?;
        }
        Ok(delivered)
    }

    /// Entries pending for `consumer`. Reading them counts as a new delivery, as Redis counts
    /// a history read. An entry trimmed from the stream comes back without fields.
    fn deliver_pending(
        &mut self,
        key: &str,
        group: &str,
        consumer: &str,
        count: usize,
        now: u64,
    ) -> OpResult<Vec<StreamEntry>> {
        let mut mine = Vec::new();
        for row in self
            .pending
            .range((key, group, 0, 0)..=(key, group, u64::MAX, u64::MAX))?
        {
            let (index, owner) = row?;
            let (_, _, ms, seq) = index.value();
            let (owner, _, deliveries) = owner.value();
            if owner == consumer {
                mine.push((StreamId { ms, seq }, deliveries));
                if mine.len() >= count {
                    break;
                }
            }
        }
        let mut delivered = Vec::with_capacity(mine.len());
        for (id, deliveries) in mine {
            let found = match self.entries.get((key, id.ms, id.seq))? {
                Some(bytes) => entry(id, bytes.value(), "XREADGROUP")?,
                None => StreamEntry {
                    id: id.to_string(),
                    fields: Vec::new(),
                    deliveries: None,
                },
            };
            delivered.push(found);
            self.pending.insert(
                (key, group, id.ms, id.seq),
                (consumer, now, deliveries.saturating_add(1)),
            )?;
        }
        Ok(delivered)
    }

    pub fn stream_ack(
        &mut self,
        key: &str,
        group: &str,
        ids: &[String],
        now: u64,
    ) -> OpResult<u64> {
        let ids = ids
            .iter()
            .map(|id| StreamId::parse(id, "XACK"))
            .collect::<OpResult<Vec<_>>>()?;
        if self.meta_of_kind(key, Kind::Stream, "XACK", now)?.is_none() {
            return Ok(0);
        }
        let mut acknowledged = 0;
        for id in ids {
            if self.pending.remove((key, group, id.ms, id.seq))?.is_some() {
                acknowledged += 1;
            }
        }
        Ok(acknowledged)
    }

    /// Gives `consumer` up to `count` entries that have been pending for at least
    /// `min_idle_ms`, oldest first, as `XAUTOCLAIM` does over its whole pending list: each
    /// claim counts as a delivery, and rows of trimmed entries are dropped, not returned.
    pub fn stream_claim_idle(
        &mut self,
        key: &str,
        group: &str,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
        now: u64,
    ) -> OpResult<Vec<StreamEntry>> {
        self.group_cursor(key, group, "XAUTOCLAIM", now)?;
        let count = count.max(1);
        let mut idle = Vec::new();
        for row in self
            .pending
            .range((key, group, 0, 0)..=(key, group, u64::MAX, u64::MAX))?
        {
            let (index, owner) = row?;
            let (_, _, ms, seq) = index.value();
            let (_, delivered_at, deliveries) = owner.value();
            if now.saturating_sub(delivered_at) >= min_idle_ms {
                idle.push((StreamId { ms, seq }, deliveries));
            }
        }
        let mut claimed = Vec::new();
        for (id, deliveries) in idle {
            let bytes = self
                .entries
                .get((key, id.ms, id.seq))?
                .map(|bytes| bytes.value().to_vec());
            let Some(bytes) = bytes else {
                self.pending.remove((key, group, id.ms, id.seq))?;
                continue;
            };
            claimed.push(entry(id, &bytes, "XAUTOCLAIM")?);
            self.pending.insert(
                (key, group, id.ms, id.seq),
                (consumer, now, deliveries.saturating_add(1)),
            )?;
            if claimed.len() >= count {
                break;
            }
        }
        Ok(claimed)
    }
}

impl Reader<'_> {
    fn group_cursor(&self, key: &str, group: &str, operation: &'static str) -> OpResult<StreamId> {
        if self.meta_of_kind(key, Kind::Stream, operation)?.is_none() {
            return Err(no_group(operation, key, group));
        }
        let groups = self.txn().open_table(STREAM_GROUPS)?;
        let cursor = groups.get((key, group))?.map(|cursor| cursor.value());
        let (ms, seq) = cursor.ok_or_else(|| no_group(operation, key, group))?;
        Ok(StreamId { ms, seq })
    }

    /// Whether a group read would deliver anything, with the errors the read would return.
    pub fn has_deliverable(
        &self,
        key: &str,
        group: &str,
        consumer: &str,
        from: ReadFrom,
    ) -> OpResult<bool> {
        let cursor = self.group_cursor(key, group, "XREADGROUP")?;
        match from {
            ReadFrom::New => {
                let Some(first) = cursor.next() else {
                    return Ok(false);
                };
                let entries = self.txn().open_table(STREAM_ENTRIES)?;
                let mut newer =
                    entries.range((key, first.ms, first.seq)..=(key, u64::MAX, u64::MAX))?;
                Ok(newer.next().transpose()?.is_some())
            }
            ReadFrom::Pending => {
                let pending = self.txn().open_table(STREAM_PENDING)?;
                for row in pending.range((key, group, 0, 0)..=(key, group, u64::MAX, u64::MAX))? {
                    let (_, owner) = row?;
                    if owner.value().0 == consumer {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
    }

    /// Whether any entry of the group has been pending for at least `min_idle_ms`, with the
    /// errors a claim would return.
    pub fn has_idle(&self, key: &str, group: &str, min_idle_ms: u64) -> OpResult<bool> {
        self.group_cursor(key, group, "XAUTOCLAIM")?;
        let pending = self.txn().open_table(STREAM_PENDING)?;
        for row in pending.range((key, group, 0, 0)..=(key, group, u64::MAX, u64::MAX))? {
            let (_, owner) = row?;
            let (_, delivered_at, _) = owner.value();
            if self.now.saturating_sub(delivered_at) >= min_idle_ms {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn stream_range(
        &self,
        key: &str,
        start: &str,
        end: &str,
        count: usize,
    ) -> OpResult<Vec<StreamEntry>> {
        let start = range_bound(start, true)?;
        let end = range_bound(end, false)?;
        if self.meta_of_kind(key, Kind::Stream, "XRANGE")?.is_none() {
            return Ok(Vec::new());
        }
        let (Some(start), Some(end)) = (start, end) else {
            return Ok(Vec::new());
        };
        if start > end {
            return Ok(Vec::new());
        }
        let entries = self.txn().open_table(STREAM_ENTRIES)?;
        let mut found = Vec::new();
        for row in entries
            .range((key, start.ms, start.seq)..=(key, end.ms, end.seq))?
            .take(count.max(1))
        {
            let (index, bytes) = row?;
            let (_, ms, seq) = index.value();
            found.push(entry(StreamId { ms, seq }, bytes.value(), "XRANGE")?);
        }
        Ok(found)
    }

    pub fn stream_len(&self, key: &str) -> OpResult<u64> {
        Ok(self
            .meta_of_kind(key, Kind::Stream, "XLEN")?
            .map_or(0, |meta| meta.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_order() {
        let id = StreamId::parse("1700000000000-5", "XACK").ok().unwrap();
        assert_eq!(
            id,
            StreamId {
                ms: 1_700_000_000_000,
                seq: 5
            }
        );
        assert_eq!(id.to_string(), "1700000000000-5");
        assert!(StreamId::parse("x-1", "XACK").is_err());
        assert!(StreamId { ms: 9, seq: 0 } < StreamId { ms: 10, seq: 0 });
    }

    #[test]
    fn new_ids_never_go_back() {
        let last = StreamId { ms: 100, seq: 7 };
        assert_eq!(
            StreamId::after(last, 50),
            Some(StreamId { ms: 100, seq: 8 })
        );
        assert_eq!(
            StreamId::after(last, 100),
            Some(StreamId { ms: 100, seq: 8 })
        );
        assert_eq!(
            StreamId::after(last, 101),
            Some(StreamId { ms: 101, seq: 0 })
        );
        assert_eq!(StreamId::after(StreamId::MAX, 5), None);
    }

    #[test]
    fn fields_round_trip() {
        let fields = vec![
            ("n".to_string(), "{\"text\":\"hi\"}".to_string()),
            ("empty".to_string(), String::new()),
        ];
        assert_eq!(decode_fields(&encode_fields(&fields)), Some(fields));
        assert_eq!(decode_fields(&[1, 0, 0]), None);
    }

    #[test]
    fn range_bounds_accept_redis_forms() {
        let bound = |text, start| range_bound(text, start).ok().unwrap();
        assert_eq!(bound("-", true), Some(StreamId::ZERO));
        assert_eq!(bound("+", false), Some(StreamId::MAX));
        assert_eq!(bound("5", true), Some(StreamId { ms: 5, seq: 0 }));
        assert_eq!(
            bound("5", false),
            Some(StreamId {
                ms: 5,
                seq: u64::MAX
            })
        );
        assert_eq!(bound("(5-1", true), Some(StreamId { ms: 5, seq: 2 }));
        assert_eq!(
            bound("(5-0", false),
            Some(StreamId {
                ms: 4,
                seq: u64::MAX
            })
        );
        assert!(range_bound("(-", true).is_err());
    }
}

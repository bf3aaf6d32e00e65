//! What the dnslog service keeps on the bus, and the writes that put it there.
//!
//! - Daily counts: sorted sets `P:dns:clients|domains|rcodes|qtypes:<day>` and
//!   `P:dns:client:<ip>:<day>`, incremented with `ZINCRBY`, cut to the highest
//!   `max_names_per_day` members, expiring `retention_days` after their day ends.
//! - `P:dnslog:offset:<source>`: a hash with the source's resume point. A file stores
//!   `kind = file` with its device, inode, offset and head fingerprint. A command stores
//!   `kind = command` with the newest line time it printed and the fingerprints of the lines
//!   carrying that time.
//! - `P:dns:devices`: field = device name, value = [`DeviceState`] as JSON.

use std::time::Duration;

use super::aggregate::CountBatch;
use super::presence::DeviceState;
use super::source::{Checkpoint, FilePosition, ReplayMark};
use super::time::Timestamp;
use crate::bus::{Names, Write};

/// Appends the writes of a count batch: increments, the cut to `max_members` and the expiry
/// of every set. Sets whose expiry is already past (a day replayed from an old log) are left
/// out, so that they are not created only to expire at once. Returns how many were left out.
pub fn count_writes(
    names: &Names,
    batch: &CountBatch,
    retention_days: u32,
    max_members: usize,
    now: Timestamp,
    out: &mut Vec<Write>,
) -> usize {
    let now_secs = now.unix_millis().div_euclid(1000);
    let mut expired = 0;
    for set in &batch.sets {
        let ttl_secs = set.key.expires_at(retention_days) - now_secs;
        if ttl_secs <= 0 {
            expired += 1;
            continue;
        }
        let key = set.key.redis_key(names);
        for (member, count) in &set.increments {
            out.push(Write::SortedIncrBy {
                key: key.clone(),
                member: member.clone(),
                delta: *count as f64,
            });
        }
        out.push(Write::SortedKeepTop {
            key: key.clone(),
            keep: max_members,
        });
        out.push(Write::Expire {
            key,
            ttl: Duration::from_secs(ttl_secs.unsigned_abs()),
        });
    }
    expired
}

/// Returns the write that stores a source's resume point. The hash is replaced as a whole
/// (`DEL` then `HSET`), so no field of another kind of source is left behind.
pub fn checkpoint_writes(names: &Names, source: &str, checkpoint: &Checkpoint) -> [Write; 2] {
    let key = names.dnslog_offset(source);
    let mut fields: Vec<(String, String)> = Vec::new();
    match checkpoint {
        Checkpoint::File(position) => {
            fields.push(("kind".into(), "file".into()));
            fields.extend(
                position
                    .to_fields()
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value)),
            );
        }
        Checkpoint::Command(mark) => {
            fields.push(("kind".into(), "command".into()));
            if let Some(newest) = mark.newest {
                fields.push(("newest_ns".into(), newest.unix_nanos().to_string()));
            }
            let hashes: Vec<String> = mark.hashes.iter().map(|h| format!("{h:016x}")).collect();
            fields.push(("hashes".into(), hashes.join(",")));
        }
    }
    [
        Write::Delete { key: key.clone() },
        Write::HashSet { key, fields },
    ]
}

/// Reads a stored resume point; `None` when nothing usable is stored.
pub fn parse_checkpoint(fields: &[(String, String)]) -> Option<Checkpoint> {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    };
    match get("kind")? {
        "file" => FilePosition::from_fields(get).map(Checkpoint::File),
        "command" => {
            let newest = match get("newest_ns") {
                Some(text) => Some(Timestamp::from_unix_nanos(text.parse().ok()?)),
                None => None,
            };
            let hashes = get("hashes")
                .unwrap_or_default()
                .split(',')
                .filter(|hash| !hash.is_empty())
                .map(|hash| u64::from_str_radix(hash, 16).ok())
                .collect::<Option<Vec<u64>>>()?;
            Some(Checkpoint::Command(ReplayMark { newest, hashes }))
        }
        _ => None,
    }
}

/// Returns the write that stores the states of some devices.
pub fn device_writes<'a>(
    names: &Names,
    states: impl Iterator<Item = (&'a str, &'a DeviceState)>,
) -> Option<Write> {
    let fields: Vec<(String, String)> = states
        .map(|(name, state)| {
            let value = serde_json::to_string(state).expect("a device state always serializes");
            (name.to_owned(), value)
        })
        .collect();
    (!fields.is_empty()).then(|| Write::HashSet {
        key: names.dns_devices(),
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dnslog::aggregate::{SetIncrements, SetKey, SetKind};
    use crate::dnslog::source::file::Head;
    use crate::dnslog::time::Day;

    fn day_start(day: &str) -> Timestamp {
        let days = Day::parse(day).unwrap().days_since_epoch();
        Timestamp::from_unix_secs(i64::from(days) * 86_400)
    }

    fn batch(day: &str) -> CountBatch {
        CountBatch {
            sets: vec![SetIncrements {
                key: SetKey {
                    kind: SetKind::Clients,
                    day: Day::parse(day).unwrap(),
                },
                increments: vec![("10.0.0.2".into(), 3)],
            }],
        }
    }

    #[test]
    fn counts_expire_after_retention() {
        let names = Names::new("p");
        let now = day_start("2026-08-21");
        let mut writes = Vec::new();
        let expired = count_writes(&names, &batch("2026-08-21"), 14, 100, now, &mut writes);
        assert_eq!(expired, 0);
        assert_eq!(
            writes.last(),
            Some(&Write::Expire {
                key: "p:dns:clients:2026-08-21".into(),
                ttl: Duration::from_secs(15 * 86_400),
            })
        );
    }

    #[test]
    fn expired_days_are_left_out() {
        let names = Names::new("p");
        let now = day_start("2026-09-30");
        let mut writes = Vec::new();
        let expired = count_writes(&names, &batch("2026-08-21"), 14, 100, now, &mut writes);
        assert_eq!(expired, 1);
        assert!(writes.is_empty());
    }

    /// Stores a checkpoint as hash fields and reads it back.
    fn round_trip(checkpoint: &Checkpoint) -> Option<Checkpoint> {
        let [_, Write::HashSet { fields, .. }] =
            checkpoint_writes(&Names::new("p"), "a", checkpoint)
        else {
            panic!("expected a delete and a hash write");
        };
        parse_checkpoint(&fields)
    }

    #[test]
    fn file_checkpoint_round_trips() {
        let checkpoint = Checkpoint::File(FilePosition {
            device: 2049,
            inode: 77,
            offset: 1234,
            head: Head {
                len: 1024,
                hash: 0xdead_beef,
            },
        });
        assert_eq!(round_trip(&checkpoint), Some(checkpoint));
    }

    #[test]
    fn command_checkpoint_round_trips() {
        let checkpoint = Checkpoint::Command(ReplayMark {
            newest: Some(Timestamp::from_unix_nanos(1_700_000_000_123_456_789)),
            hashes: vec![1, u64::MAX],
        });
        assert_eq!(round_trip(&checkpoint), Some(checkpoint));
    }

    #[test]
    fn unknown_checkpoint_is_ignored() {
        let fields = vec![("kind".to_string(), "socket".to_string())];
        assert_eq!(parse_checkpoint(&fields), None);
    }
}

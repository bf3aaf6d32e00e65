//! Daily query counts, kept in memory between flushes and handed out as plain data for
//! one pipelined Redis call.
//!
//! Per UTC day the counts are: queries per client, queries per name, queries per name for
//! each client, and totals per response code and per query type. Each becomes a Redis
//! sorted set (member = client, name, rcode or type; score = count) that expires
//! `retention_days` after its day ends.

use std::collections::HashMap;
use std::net::IpAddr;

use super::parse::Query;
use super::time::{Day, Timestamp};
use crate::bus::Names;

/// Distinct counters kept in memory before [`Aggregator::is_full`] reports a flush is due, which
/// bounds memory to a few MB (about 100 bytes per counter) however many distinct names a
/// client queries between two flushes.
pub const MAX_PENDING_COUNTERS: usize = 50_000;

/// Member recorded for a query that got no reply (rcode `-` in the log).
pub const NO_RCODE: &str = "-";

/// The sorted set a count belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetKind {
    /// Queries per client address.
    Clients,
    /// Queries per name, all clients together.
    Domains,
    /// Queries per name from one client.
    Client(IpAddr),
    /// Queries per response code.
    Rcodes,
    /// Queries per query type.
    Qtypes,
}

/// A sorted set of one day.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetKey {
    pub kind: SetKind,
    pub day: Day,
}

impl SetKey {
    /// Returns the Redis key: `P:dns:clients:<day>`, `P:dns:domains:<day>`,
    /// `P:dns:client:<ip>:<day>`, `P:dns:rcodes:<day>` or `P:dns:qtypes:<day>`.
    pub fn redis_key(&self, names: &Names) -> String {
        let day = self.day.to_string();
        match &self.kind {
            SetKind::Clients => names.dns_clients(&day),
            SetKind::Domains => names.dns_domains(&day),
            SetKind::Client(ip) => names.dns_client(&ip.to_string(), &day),
            SetKind::Rcodes => names.dns_rcodes(&day),
            SetKind::Qtypes => names.dns_qtypes(&day),
        }
    }

    /// Returns the Unix time (seconds) at which the set expires: `retention_days` after the end of
    /// its day, so a day's counts live as long whenever they were written.
    pub fn expires_at(&self, retention_days: u32) -> i64 {
        let end_of_day = i64::from(self.day.days_since_epoch()) + 1;
        (end_of_day + i64::from(retention_days)) * 86_400
    }
}

/// Increments for one sorted set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetIncrements {
    pub key: SetKey,
    /// `(member, amount)` pairs, each member once.
    pub increments: Vec<(String, u64)>,
}

/// Everything counted since the last flush, as plain data: for each set, `ZINCRBY` per
/// member and one `EXPIREAT`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CountBatch {
    pub sets: Vec<SetIncrements>,
}

impl CountBatch {
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Returns the number of `ZINCRBY` commands the batch needs.
    pub fn increment_count(&self) -> usize {
        self.sets.iter().map(|set| set.increments.len()).sum()
    }
}

#[derive(Default)]
struct DayCounts {
    clients: HashMap<IpAddr, ClientCounts>,
    domains: HashMap<Box<str>, u64>,
    rcodes: HashMap<Box<str>, u64>,
    qtypes: HashMap<Box<str>, u64>,
}

#[derive(Default)]
struct ClientCounts {
    total: u64,
    domains: HashMap<Box<str>, u64>,
}

/// Query counts since the last flush.
#[derive(Default)]
pub struct Aggregator {
    days: HashMap<Day, DayCounts>,
    counters: usize,
    queries: u64,
}

impl Aggregator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a query on the UTC day of `at`. The client's zone is not part of its
    /// identity: it names the server's interface, not the client.
    pub fn add(&mut self, query: &Query<'_>, at: Timestamp) {
        let day = self.days.entry(at.day()).or_default();
        let client = day.clients.entry(query.client).or_insert_with(|| {
            self.counters += 1;
            ClientCounts::default()
        });
        client.total += 1;
        self.counters += increment(&mut client.domains, &query.name);
        self.counters += increment(&mut day.domains, &query.name);
        self.counters += increment(&mut day.rcodes, query.rcode.unwrap_or(NO_RCODE));
        self.counters += increment(&mut day.qtypes, query.qtype);
        self.queries += 1;
    }

    /// Checks whether enough distinct counters are pending that they should be flushed now.
    pub fn is_full(&self) -> bool {
        self.counters >= MAX_PENDING_COUNTERS
    }

    /// Queries counted since the last flush.
    pub fn pending_queries(&self) -> u64 {
        self.queries
    }

    /// Takes everything counted so far and starts again from zero. Names lose their final
    /// dot (`www.example.com`), except the root, which stays `.`.
    pub fn flush(&mut self) -> CountBatch {
        let days = std::mem::take(&mut self.days);
        self.counters = 0;
        self.queries = 0;
        let mut batch = CountBatch::default();
        for (day, counts) in days {
            counts.into_sets(day, &mut batch.sets);
        }
        batch.sets.sort_by(|a, b| a.key.cmp(&b.key));
        batch
    }
}

/// Adds one to `key`'s count; returns 1 when that created a new counter.
fn increment(counts: &mut HashMap<Box<str>, u64>, key: &str) -> usize {
    if let Some(count) = counts.get_mut(key) {
        *count += 1;
        return 0;
    }
    counts.insert(key.into(), 1);
    1
}

impl DayCounts {
    fn into_sets(self, day: Day, sets: &mut Vec<SetIncrements>) {
        let set = |kind, increments| SetIncrements {
            key: SetKey { kind, day },
            increments,
        };
        let client_totals = self
            .clients
            .iter()
            .map(|(ip, counts)| (ip.to_string(), counts.total))
            .collect();
        sets.push(set(SetKind::Clients, client_totals));
        for (ip, counts) in self.clients {
            sets.push(set(SetKind::Client(ip), display_names(counts.domains)));
        }
        sets.push(set(SetKind::Domains, display_names(self.domains)));
        sets.push(set(SetKind::Rcodes, into_members(self.rcodes)));
        sets.push(set(SetKind::Qtypes, into_members(self.qtypes)));
    }
}

fn into_members(counts: HashMap<Box<str>, u64>) -> Vec<(String, u64)> {
    counts
        .into_iter()
        .map(|(member, count)| (member.into_string(), count))
        .collect()
}

/// Converts canonical names to the form shown to people: without the final dot.
fn display_names(counts: HashMap<Box<str>, u64>) -> Vec<(String, u64)> {
    let mut merged: HashMap<String, u64> = HashMap::with_capacity(counts.len());
    for (name, count) in counts {
        let mut name = name.into_string();
        if name.len() > 1 && ends_with_unescaped_dot(&name) {
            name.pop();
        }
        *merged.entry(name).or_default() += count;
    }
    merged.into_iter().collect()
}

/// Checks that the name ends with a dot that is not escaped: one preceded by an even number
/// of backslashes (`a\\.` ends with an escaped backslash and then the final dot).
fn ends_with_unescaped_dot(name: &str) -> bool {
    let Some(rest) = name.strip_suffix('.') else {
        return false;
    };
    let backslashes = rest.bytes().rev().take_while(|&b| b == b'\\').count();
    backslashes % 2 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dnslog::parse::parse;

    fn line(client: &str, name: &str, qtype: &str, rcode: &str) -> String {
        format!(
            r#"[INFO] {client}:5353 - 1 "{qtype} IN {name} udp 40 false 512" {rcode} qr 60 0.001s"#
        )
    }

    fn day(text: &str) -> Day {
        Day::parse(text).unwrap()
    }

    fn at(text: &str) -> Timestamp {
        crate::dnslog::time::parse_rfc3339_prefix(text).unwrap().0
    }

    fn set<'a>(batch: &'a CountBatch, kind: SetKind, on: &str) -> Vec<(&'a str, u64)> {
        let key = SetKey { kind, day: day(on) };
        let mut members: Vec<(&str, u64)> = batch
            .sets
            .iter()
            .find(|set| set.key == key)
            .map(|set| {
                set.increments
                    .iter()
                    .map(|(m, n)| (m.as_str(), *n))
                    .collect()
            })
            .unwrap_or_default();
        members.sort();
        members
    }

    fn count(aggregator: &mut Aggregator, text: &str, time: &str) {
        aggregator.add(&parse(text).unwrap(), at(time));
    }

    #[test]
    fn counts_per_client_and_name() {
        let mut aggregator = Aggregator::new();
        let noon = "2026-08-21T12:00:00Z";
        count(
            &mut aggregator,
            &line("10.0.0.2", "a.example.", "A", "NOERROR"),
            noon,
        );
        count(
            &mut aggregator,
            &line("10.0.0.2", "a.example.", "AAAA", "NOERROR"),
            noon,
        );
        count(
            &mut aggregator,
            &line("10.0.0.3", "b.example.", "A", "NXDOMAIN"),
            noon,
        );
        let batch = aggregator.flush();

        let on = "2026-08-21";
        assert_eq!(
            set(&batch, SetKind::Clients, on),
            [("10.0.0.2", 2), ("10.0.0.3", 1)]
        );
        assert_eq!(
            set(&batch, SetKind::Domains, on),
            [("a.example", 2), ("b.example", 1)]
        );
        let client: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(set(&batch, SetKind::Client(client), on), [("a.example", 2)]);
        assert_eq!(
            set(&batch, SetKind::Rcodes, on),
            [("NOERROR", 2), ("NXDOMAIN", 1)]
        );
        assert_eq!(set(&batch, SetKind::Qtypes, on), [("A", 2), ("AAAA", 1)]);
    }

    #[test]
    fn days_split_at_utc_midnight() {
        let mut aggregator = Aggregator::new();
        let query = line("10.0.0.2", "a.example.", "A", "NOERROR");
        count(&mut aggregator, &query, "2026-08-21T23:59:59.999Z");
        count(&mut aggregator, &query, "2026-08-22T01:30:00+02:00");
        count(&mut aggregator, &query, "2026-08-22T00:00:00Z");
        let batch = aggregator.flush();
        assert_eq!(
            set(&batch, SetKind::Clients, "2026-08-21"),
            [("10.0.0.2", 2)]
        );
        assert_eq!(
            set(&batch, SetKind::Clients, "2026-08-22"),
            [("10.0.0.2", 1)]
        );
    }

    #[test]
    fn no_reply_counts_as_dash() {
        let mut aggregator = Aggregator::new();
        let text = r#"[INFO] 127.0.0.1:48154 - 24028 "PTR IN 17.0.0.10.in-addr.arpa. udp 63 false 4096" - - 0 0.00005195s"#;
        count(&mut aggregator, text, "2026-08-21T12:00:00Z");
        let batch = aggregator.flush();
        assert_eq!(set(&batch, SetKind::Rcodes, "2026-08-21"), [("-", 1)]);
    }

    #[test]
    fn root_name_keeps_its_dot() {
        let mut aggregator = Aggregator::new();
        count(
            &mut aggregator,
            &line("10.0.0.2", ".", "NS", "NOERROR"),
            "2026-08-21T12:00:00Z",
        );
        let batch = aggregator.flush();
        assert_eq!(set(&batch, SetKind::Domains, "2026-08-21"), [(".", 1)]);
    }

    #[test]
    fn final_dot_detection_honours_escapes() {
        assert!(ends_with_unescaped_dot("a.example."));
        assert!(ends_with_unescaped_dot(r"a\\."));
        assert!(!ends_with_unescaped_dot(r"a\."));
        assert!(!ends_with_unescaped_dot("a"));
    }

    #[test]
    fn flush_starts_from_zero() {
        let mut aggregator = Aggregator::new();
        count(
            &mut aggregator,
            &line("10.0.0.2", "a.", "A", "NOERROR"),
            "2026-08-21T12:00:00Z",
        );
        assert_eq!(aggregator.pending_queries(), 1);
        assert!(!aggregator.flush().is_empty());
        assert_eq!(aggregator.pending_queries(), 0);
        assert!(aggregator.flush().is_empty());
    }

    #[test]
    fn full_after_many_distinct_names() {
        let mut aggregator = Aggregator::new();
        let mut n = 0;
        while !aggregator.is_full() {
            let name = format!("n{n}.example.");
            count(
                &mut aggregator,
                &line("10.0.0.2", &name, "A", "NOERROR"),
                "2026-08-21T12:00:00Z",
            );
            n += 1;
        }
        // Each new name adds a per-client and an all-clients counter.
        assert!(n <= MAX_PENDING_COUNTERS / 2 + 1);
    }

    #[test]
    fn redis_keys_follow_layout() {
        let on = day("2026-08-21");
        let client = SetKey {
            kind: SetKind::Client("2001:db8::1".parse().unwrap()),
            day: on,
        };
        assert_eq!(
            client.redis_key(&Names::new("almagest")),
            "almagest:dns:client:2001:db8::1:2026-08-21"
        );
        let clients = SetKey {
            kind: SetKind::Clients,
            day: on,
        };
        assert_eq!(
            clients.redis_key(&Names::new("p")),
            "p:dns:clients:2026-08-21"
        );
    }

    #[test]
    fn sets_expire_after_their_day() {
        let key = SetKey {
            kind: SetKind::Domains,
            day: day("1970-01-01"),
        };
        assert_eq!(key.expires_at(0), 86_400);
        assert_eq!(key.expires_at(14), 15 * 86_400);
    }
}

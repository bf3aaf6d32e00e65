//! The announcement state machine: from one poll of a client and the state stored per info
//! hash, decide which events to publish and what to store next. Pure: no I/O and no clock.
//!
//! Rules, per info hash (never per client id, which changes across client restarts):
//!
//! - `torrent.added` once, when the hash is first seen. A magnet link keeps its hash when
//!   its metadata arrives, so that is still one "added".
//! - `torrent.completed` once, when a torrent seen incomplete is seen complete, or when a
//!   done-hook reported it and the poll does not contradict that. A torrent whose first
//!   determined state is complete (added with its data in place) is marked complete without
//!   an event, unless `notify_added_complete` is set. Checking, moving and missing files
//!   decide nothing, so re-checking a finished torrent never announces it again.
//! - `torrent.error` once per distinct error text; `torrent.removed` once when a hash stored
//!   for this client has been missing from its list for `removal_grace`. The grace matters
//!   because Transmission 3.00 returns an empty list for a moment after it starts, before it
//!   has loaded its torrents.
//! - Baseline: until a client has a baseline marker stored, its first poll stores the state
//!   of every torrent it lists without events, and the caller then stores the marker. A
//!   per-hash check cannot replace the marker, because a client with no torrents stores
//!   nothing and its next new torrent would be swallowed. Torrents found incomplete in the
//!   baseline are still announced when they finish.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::model::{Completeness, InfoHash, Torrent};

/// Maximum length of the name kept in the stored state, in characters (enough for a notice).
const STORED_NAME_CHARS: usize = 256;

/// Announcement state of one torrent, stored as JSON at `P:torrent:seen:<hash>`.
/// Every field has a default, so that state written by an older version still reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    /// Name of the client the torrent was last seen in.
    #[serde(default)]
    pub client: String,
    /// Last name seen, kept for the "removed" notice.
    #[serde(default)]
    pub name: String,
    /// `torrent.added` was published, or the hash was taken into a baseline.
    #[serde(default)]
    pub added: bool,
    /// `torrent.completed` was published, or the torrent was complete when first seen.
    #[serde(default)]
    pub completed: bool,
    /// The torrent was seen incomplete at least once, so its completion is news.
    #[serde(default)]
    pub seen_incomplete: bool,
    /// The hash was taken into a baseline: no completion for it on first sight.
    #[serde(default)]
    pub baselined: bool,
    /// Last error text announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `torrent.removed` was published; cleared if the torrent comes back.
    #[serde(default)]
    pub removed: bool,
    /// First poll that did not list the torrent; cleared when it is listed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_since: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum EventKind {
    #[serde(rename = "torrent.added")]
    Added,
    #[serde(rename = "torrent.completed")]
    Completed,
    #[serde(rename = "torrent.error")]
    Error,
    #[serde(rename = "torrent.removed")]
    Removed,
}

/// One announcement, with what a notice and an event need.
#[derive(Clone, Debug, PartialEq)]
pub struct TorrentEvent {
    pub kind: EventKind,
    pub client: String,
    pub hash: InfoHash,
    /// Untrusted display name.
    pub name: String,
    pub size_bytes: Option<u64>,
    /// Completed only: from the client's added time (or first sight) to its done time (or
    /// this poll).
    pub duration: Option<Duration>,
    /// Error only: the client's error text.
    pub error: Option<String>,
}

/// Everything one diff needs.
pub struct DiffInput<'a> {
    pub client: &'a str,
    pub torrents: &'a [Torrent],
    /// Stored state for the hashes in `torrents` and for every hash stored for this client.
    pub stored: &'a HashMap<InfoHash, Seen>,
    /// Hashes that a done-hook reported for this client since the last diff.
    pub reported_done: &'a HashSet<InfoHash>,
    /// No baseline marker is stored for this client yet: store without announcing.
    pub baseline: bool,
    pub notify_added_complete: bool,
    /// How long a stored torrent must be missing from the list before it counts as removed.
    pub removal_grace: Duration,
    pub now: DateTime<Utc>,
}

#[derive(Debug, Default, PartialEq)]
pub struct DiffOutcome {
    pub events: Vec<TorrentEvent>,
    /// State to store, only for hashes whose state changed.
    pub updates: Vec<(InfoHash, Seen)>,
}

/// Compares one poll with the stored state.
pub fn diff(input: &DiffInput<'_>) -> DiffOutcome {
    let mut outcome = DiffOutcome::default();
    let mut present = HashSet::with_capacity(input.torrents.len());

    for torrent in input.torrents {
        if !present.insert(&torrent.hash) {
            continue;
        }
        let previous = input.stored.get(&torrent.hash);
        let mut seen = previous.cloned().unwrap_or_else(|| Seen {
            first_seen_at: Some(input.now),
            ..Seen::default()
        });
        seen.client = input.client.to_owned();
        seen.name = torrent.name.chars().take(STORED_NAME_CHARS).collect();
        seen.removed = false;
        seen.missing_since = None;

        if previous.is_none() && input.baseline {
            take_into_baseline(&mut seen, torrent);
        } else {
            let hook = input.reported_done.contains(&torrent.hash);
            if !seen.added {
                seen.added = true;
                outcome.events.push(event(EventKind::Added, input, torrent));
            }
            if let Some(event) = track_completion(&mut seen, torrent, hook, input) {
                outcome.events.push(event);
            }
            if let Some(event) = track_error(&mut seen, torrent, input) {
                outcome.events.push(event);
            }
        }
        if previous != Some(&seen) {
            outcome.updates.push((torrent.hash.clone(), seen));
        }
    }

    let mut missing: Vec<_> = input
        .stored
        .iter()
        .filter(|(hash, seen)| {
            seen.client == input.client && !seen.removed && !present.contains(hash)
        })
        .collect();
    missing.sort_by(|left, right| left.0.cmp(right.0));
    for (hash, seen) in missing {
        let mut seen = seen.clone();
        let since = *seen.missing_since.get_or_insert(input.now);
        let grace =
            chrono::Duration::from_std(input.removal_grace).unwrap_or(chrono::TimeDelta::MAX);
        if input.now - since >= grace {
            seen.removed = true;
            outcome.events.push(TorrentEvent {
                kind: EventKind::Removed,
                client: input.client.to_owned(),
                hash: hash.clone(),
                name: seen.name.clone(),
                size_bytes: None,
                duration: None,
                error: None,
            });
        }
        if input.stored.get(hash) != Some(&seen) {
            outcome.updates.push((hash.clone(), seen));
        }
    }
    outcome
}

fn take_into_baseline(seen: &mut Seen, torrent: &Torrent) {
    seen.added = true;
    seen.baselined = true;
    seen.error = torrent.error.clone();
    match torrent.completeness() {
        Completeness::Complete => seen.completed = true,
        Completeness::Incomplete => seen.seen_incomplete = true,
        Completeness::Undetermined => {}
    }
}

fn track_completion(
    seen: &mut Seen,
    torrent: &Torrent,
    hook: bool,
    input: &DiffInput<'_>,
) -> Option<TorrentEvent> {
    if seen.completed {
        return None;
    }
    let announce = match torrent.completeness() {
        Completeness::Incomplete => {
            seen.seen_incomplete = true;
            return None;
        }
        Completeness::Undetermined if !hook => return None,
        Completeness::Undetermined => true,
        Completeness::Complete => {
            let first_sight = !seen.seen_incomplete && !hook;
            !first_sight || (input.notify_added_complete && !seen.baselined)
        }
    };
    seen.completed = true;
    if !announce {
        return None;
    }
    let mut completed = event(EventKind::Completed, input, torrent);
    completed.duration = time_taken(seen, torrent, input.now);
    Some(completed)
}

fn track_error(seen: &mut Seen, torrent: &Torrent, input: &DiffInput<'_>) -> Option<TorrentEvent> {
    if torrent.error == seen.error {
        return None;
    }
    seen.error = torrent.error.clone();
    let text = torrent.error.clone()?;
    let mut error = event(EventKind::Error, input, torrent);
    error.error = Some(text);
    Some(error)
}

fn time_taken(seen: &Seen, torrent: &Torrent, now: DateTime<Utc>) -> Option<Duration> {
    let start = torrent.added_at.or(seen.first_seen_at)?;
    let end = torrent.done_at.filter(|done| *done >= start).unwrap_or(now);
    (end - start).to_std().ok()
}

fn event(kind: EventKind, input: &DiffInput<'_>, torrent: &Torrent) -> TorrentEvent {
    TorrentEvent {
        kind,
        client: input.client.to_owned(),
        hash: torrent.hash.clone(),
        name: torrent.name.clone(),
        size_bytes: torrent.size_bytes,
        duration: None,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::TorrentState;
    use super::*;

    const HASH: &str = "52b98ef9d87424faa7e7af0bfba50885ea9d4c0c";
    const OTHER: &str = "0123456789abcdef0123456789abcdef01234567";

    fn hash(text: &str) -> InfoHash {
        InfoHash::parse(text).unwrap()
    }

    fn torrent(text: &str, state: TorrentState, progress: f64) -> Torrent {
        Torrent {
            hash: hash(text),
            name: "payload.bin".into(),
            size_bytes: Some(300_000),
            progress,
            left_bytes: Some(((1.0 - progress) * 300_000.0) as u64),
            state,
            has_metadata: true,
            added_at: DateTime::from_timestamp(1_000, 0),
            done_at: None,
            error: None,
        }
    }

    fn downloading() -> Torrent {
        torrent(HASH, TorrentState::Downloading, 0.25)
    }

    fn seeding() -> Torrent {
        torrent(HASH, TorrentState::Seeding, 1.0)
    }

    fn checking(progress: f64) -> Torrent {
        torrent(HASH, TorrentState::Checking, progress)
    }

    /// Feeds polls through the diff the way the service does, keeping the stored state.
    struct Harness {
        stored: HashMap<InfoHash, Seen>,
        baseline_taken: bool,
        notify_added_complete: bool,
        now: i64,
    }

    impl Harness {
        fn new() -> Self {
            Self {
                stored: HashMap::new(),
                baseline_taken: false,
                notify_added_complete: false,
                now: 2_000,
            }
        }

        fn poll_with(&mut self, torrents: &[Torrent], reported: &[&str]) -> Vec<EventKind> {
            let reported_done = reported.iter().map(|text| hash(text)).collect();
            let baseline = !self.baseline_taken;
            self.baseline_taken = true;
            self.now += 15;
            let outcome = diff(&DiffInput {
                client: "nas",
                torrents,
                stored: &self.stored,
                reported_done: &reported_done,
                baseline,
                notify_added_complete: self.notify_added_complete,
                removal_grace: Duration::from_secs(15),
                now: DateTime::from_timestamp(self.now, 0).unwrap(),
            });
            for (hash, seen) in outcome.updates {
                self.stored.insert(hash, seen);
            }
            outcome.events.iter().map(|event| event.kind).collect()
        }

        fn poll(&mut self, torrents: &[Torrent]) -> Vec<EventKind> {
            self.poll_with(torrents, &[])
        }

        /// Stores a baseline from a client with one unrelated torrent.
        fn with_baseline() -> Self {
            let mut harness = Self::new();
            harness.poll(&[torrent(OTHER, TorrentState::Seeding, 1.0)]);
            harness
        }
    }

    use EventKind::{Added, Completed, Error, Removed};

    #[test]
    fn first_poll_is_baseline_only() {
        let mut harness = Harness::new();
        assert_eq!(harness.poll(&[downloading()]), vec![]);
        assert!(harness.stored[&hash(HASH)].added);
    }

    #[test]
    fn empty_baseline_then_added() {
        let mut harness = Harness::new();
        assert_eq!(harness.poll(&[]), vec![]);
        assert_eq!(harness.poll(&[downloading()]), vec![Added]);
    }

    #[test]
    fn baselined_download_completes_once() {
        let mut harness = Harness::new();
        harness.poll(&[downloading()]);
        assert_eq!(harness.poll(&[seeding()]), vec![Completed]);
        assert_eq!(harness.poll(&[seeding()]), vec![]);
    }

    #[test]
    fn added_then_completed_once() {
        let mut harness = Harness::with_baseline();
        let other = torrent(OTHER, TorrentState::Seeding, 1.0);
        assert_eq!(harness.poll(&[other.clone(), downloading()]), vec![Added]);
        assert_eq!(harness.poll(&[other.clone(), downloading()]), vec![]);
        assert_eq!(harness.poll(&[other.clone(), seeding()]), vec![Completed]);
        assert_eq!(harness.poll(&[other, seeding()]), vec![]);
    }

    #[test]
    fn added_with_data_has_no_completion() {
        let mut harness = Harness::with_baseline();
        let other = torrent(OTHER, TorrentState::Seeding, 1.0);
        assert_eq!(harness.poll(&[other.clone(), checking(0.0)]), vec![Added]);
        assert_eq!(harness.poll(&[other.clone(), checking(0.6)]), vec![]);
        assert_eq!(harness.poll(&[other, seeding()]), vec![]);
    }

    #[test]
    fn added_complete_notifies_when_asked() {
        let mut harness = Harness::with_baseline();
        harness.notify_added_complete = true;
        let other = torrent(OTHER, TorrentState::Seeding, 1.0);
        assert_eq!(
            harness.poll(&[other.clone(), seeding()]),
            vec![Added, Completed]
        );
        assert_eq!(harness.poll(&[other, seeding()]), vec![]);
    }

    #[test]
    fn baseline_never_notifies_added_complete() {
        let mut harness = Harness::new();
        harness.notify_added_complete = true;
        assert_eq!(harness.poll(&[checking(0.5)]), vec![]);
        assert_eq!(harness.poll(&[seeding()]), vec![]);
    }

    #[test]
    fn recheck_of_finished_torrent_is_silent() {
        let mut harness = Harness::new();
        harness.poll(&[downloading()]);
        harness.poll(&[seeding()]);
        assert_eq!(harness.poll(&[checking(0.1)]), vec![]);
        assert_eq!(harness.poll(&[checking(0.9)]), vec![]);
        assert_eq!(harness.poll(&[seeding()]), vec![]);
    }

    #[test]
    fn checking_between_incomplete_and_complete_completes_once() {
        let mut harness = Harness::with_baseline();
        let other = torrent(OTHER, TorrentState::Seeding, 1.0);
        harness.poll(&[other.clone(), downloading()]);
        assert_eq!(harness.poll(&[other.clone(), checking(0.4)]), vec![]);
        assert_eq!(harness.poll(&[other, seeding()]), vec![Completed]);
    }

    #[test]
    fn complete_by_bytes_left_without_done_time() {
        let mut harness = Harness::new();
        harness.poll(&[downloading()]);
        let mut done = torrent(HASH, TorrentState::Seeding, 0.9999);
        done.left_bytes = Some(0);
        assert_eq!(harness.poll(&[done]), vec![Completed]);
    }

    #[test]
    fn magnet_metadata_arrival_is_one_added() {
        let mut harness = Harness::with_baseline();
        let other = torrent(OTHER, TorrentState::Seeding, 1.0);
        let mut magnet = torrent(HASH, TorrentState::FetchingMetadata, 0.0);
        magnet.has_metadata = false;
        magnet.name = HASH.into();
        magnet.left_bytes = Some(0);
        assert_eq!(harness.poll(&[other.clone(), magnet]), vec![Added]);
        let mut named = downloading();
        named.name = "Real name".into();
        assert_eq!(harness.poll(&[other.clone(), named]), vec![]);
        assert_eq!(harness.poll(&[other, seeding()]), vec![Completed]);
    }

    #[test]
    fn magnet_without_metadata_never_completes() {
        let mut harness = Harness::new();
        let mut magnet = torrent(HASH, TorrentState::Queued, 0.0);
        magnet.has_metadata = false;
        magnet.left_bytes = Some(0);
        harness.poll(&[magnet.clone()]);
        assert_eq!(harness.poll(&[magnet]), vec![]);
        assert!(!harness.stored[&hash(HASH)].completed);
    }

    #[test]
    fn done_hook_completes_during_check() {
        let mut harness = Harness::with_baseline();
        let other = torrent(OTHER, TorrentState::Seeding, 1.0);
        harness.poll(&[other.clone(), checking(0.0)]);
        assert_eq!(
            harness.poll_with(&[other.clone(), checking(0.9)], &[HASH]),
            vec![Completed]
        );
        assert_eq!(harness.poll_with(&[other, seeding()], &[HASH]), vec![]);
    }

    #[test]
    fn done_hook_and_poll_give_one_completion() {
        let mut harness = Harness::new();
        harness.poll(&[downloading()]);
        assert_eq!(harness.poll_with(&[seeding()], &[HASH]), vec![Completed]);
        assert_eq!(harness.poll_with(&[seeding()], &[HASH]), vec![]);
        assert_eq!(harness.poll(&[seeding()]), vec![]);
    }

    #[test]
    fn done_hook_for_incomplete_torrent_is_ignored() {
        let mut harness = Harness::new();
        harness.poll(&[downloading()]);
        assert_eq!(harness.poll_with(&[downloading()], &[HASH]), vec![]);
    }

    #[test]
    fn completion_while_away_is_announced() {
        // The stored state from before a restart records "seen incomplete", and the first poll
        // after the restart finds the torrent complete.
        let mut harness = Harness::new();
        harness.poll(&[downloading()]);
        let mut restarted = Harness::new();
        restarted.stored = harness.stored.clone();
        restarted.baseline_taken = true;
        assert_eq!(restarted.poll(&[seeding()]), vec![Completed]);
        assert_eq!(restarted.poll(&[seeding()]), vec![]);
    }

    #[test]
    fn new_numeric_ids_change_nothing() {
        // The diff never reads client ids, so the same hashes in another order change nothing.
        let mut harness = Harness::new();
        let other = torrent(OTHER, TorrentState::Downloading, 0.1);
        harness.poll(&[downloading(), other.clone()]);
        assert_eq!(harness.poll(&[other, downloading()]), vec![]);
    }

    #[test]
    fn removal_is_announced_once() {
        // Polls are 15 s apart and the grace is 15 s: the second poll without it removes it.
        let mut harness = Harness::new();
        let other = torrent(OTHER, TorrentState::Seeding, 1.0);
        harness.poll(&[downloading(), other.clone()]);
        assert_eq!(harness.poll(std::slice::from_ref(&other)), vec![]);
        assert_eq!(harness.poll(std::slice::from_ref(&other)), vec![Removed]);
        assert_eq!(harness.poll(std::slice::from_ref(&other)), vec![]);
        assert_eq!(harness.poll(&[other, downloading()]), vec![]);
    }

    #[test]
    fn brief_absence_is_not_removal() {
        let mut harness = Harness::new();
        harness.poll(&[downloading()]);
        assert_eq!(harness.poll(&[]), vec![]);
        assert_eq!(harness.poll(&[downloading()]), vec![]);
        assert_eq!(harness.poll(&[]), vec![]);
        assert_eq!(
            harness.stored[&hash(HASH)].missing_since,
            DateTime::from_timestamp(2_060, 0)
        );
    }

    #[test]
    fn error_is_announced_once_per_text() {
        let mut harness = Harness::new();
        harness.poll(&[downloading()]);
        let mut failing = downloading();
        failing.error = Some("No data found".into());
        assert_eq!(harness.poll(&[failing.clone()]), vec![Error]);
        assert_eq!(harness.poll(&[failing.clone()]), vec![]);
        assert_eq!(harness.poll(&[downloading()]), vec![]);
        assert_eq!(harness.poll(&[failing]), vec![Error]);
    }

    #[test]
    fn other_clients_state_is_not_removed() {
        let mut harness = Harness::new();
        harness.stored.insert(
            hash(OTHER),
            Seen {
                client: "qb".into(),
                added: true,
                ..Seen::default()
            },
        );
        harness.poll(&[downloading()]);
        assert_eq!(harness.poll(&[downloading()]), vec![]);
    }

    #[test]
    fn completion_duration_uses_client_times() {
        let mut harness = Harness::new();
        harness.poll(&[downloading()]);
        let mut done = seeding();
        done.done_at = DateTime::from_timestamp(1_600, 0);
        let reported = HashSet::new();
        let outcome = diff(&DiffInput {
            client: "nas",
            torrents: &[done],
            stored: &harness.stored,
            reported_done: &reported,
            baseline: false,
            notify_added_complete: false,
            removal_grace: Duration::from_secs(15),
            now: DateTime::from_timestamp(5_000, 0).unwrap(),
        });
        assert_eq!(outcome.events[0].duration, Some(Duration::from_secs(600)));
    }

    #[test]
    fn seen_reads_older_state() {
        let seen: Seen = serde_json::from_str(r#"{"added":true}"#).unwrap();
        assert!(seen.added);
        assert!(!seen.completed);
    }

    #[test]
    fn seen_round_trips() {
        let seen = Seen {
            client: "nas".into(),
            name: "n".into(),
            added: true,
            completed: true,
            first_seen_at: DateTime::from_timestamp(1_000, 0),
            ..Seen::default()
        };
        let text = serde_json::to_string(&seen).unwrap();
        assert_eq!(serde_json::from_str::<Seen>(&text).unwrap(), seen);
    }
}

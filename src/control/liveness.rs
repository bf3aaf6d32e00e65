//! Up, down, stopped and forgotten: the transitions of registry entries, as a pure state
//! machine. The caller feeds it ping rounds, pongs, goodbyes and bus interruptions with
//! explicit times, stores the entries it returns and announces the changes it reports.
//!
//! Rules:
//!
//! - A round runs from one ping to the next. A service that did not answer during a round
//!   missed one ping; after `missed_pings_for_down` misses in a row an `up` service becomes
//!   `down`, reported once. A service that answers is `up` again; only a `down` → `up` change
//!   is reported, so a service seen for the first time (Almagest starting) is silent.
//! - A service that flaps faster than the threshold never reaches it, so it is never reported.
//! - A goodbye turns an `up` service `stopped`: a stopped service that stays silent is not
//!   down. A `down` service that says goodbye stays `down`, so its return is still reported.
//! - An interruption (the bus was unreachable) voids the open round and resets every miss
//!   count: nobody could answer, so nobody missed anything.
//! - The first round after loading the registry records answers only. The watcher loads it
//!   when it starts watching, which includes every reconnect after a bus outage, and other
//!   instances may still be reconnecting during that round.
//! - An entry with no answer for `forget_after` is removed. Nothing is forgotten before one
//!   full round after loading, so services that answer after a long stop of every instance
//!   are refreshed first.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

use crate::bus::wire::{Pong, RegistryEntry, ServiceState};

/// Upper bound of tracked entries, so that a script inventing service or instance names in
/// pongs cannot grow the registry without bound.
pub const MAX_TRACKED: usize = 1_024;

/// Returns the registry field of a service: `<service>@<instance>`.
pub fn field(service: &str, instance: &str) -> String {
    format!("{service}@{instance}")
}

/// A change worth telling people about.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Missed `missed_pings_for_down` pings in a row; `since` is the time of its last answer.
    Down(RegistryEntry),
    /// Answered again after being down since `down_since`.
    Up {
        entry: RegistryEntry,
        down_since: String,
    },
}

impl Change {
    pub fn entry(&self) -> &RegistryEntry {
        match self {
            Change::Down(entry) | Change::Up { entry, .. } => entry,
        }
    }
}

/// The result of recording a pong: the entry to store, and the change to announce if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub entry: RegistryEntry,
    pub change: Option<Change>,
}

#[derive(Debug, Clone)]
struct Tracked {
    entry: RegistryEntry,
    /// Rounds in a row without an answer.
    missed: u32,
    /// Answered during the open round.
    answered: bool,
}

/// The liveness of every tracked service.
#[derive(Debug)]
pub struct Liveness {
    missed_pings_for_down: u32,
    forget_after: TimeDelta,
    tracked: BTreeMap<String, Tracked>,
    round_open: bool,
    rounds_since_load: u32,
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|time| time.with_timezone(&Utc))
}

impl Liveness {
    pub fn new(missed_pings_for_down: u32, forget_after: Duration) -> Liveness {
        Liveness {
            missed_pings_for_down: missed_pings_for_down.max(1),
            forget_after: TimeDelta::from_std(forget_after).unwrap_or(TimeDelta::MAX),
            tracked: BTreeMap::new(),
            round_open: false,
            rounds_since_load: 0,
        }
    }

    /// Replaces what is tracked with entries read from the registry, keeping their states.
    /// Miss counts start at zero. Returns how many entries were left out over the cap.
    pub fn load(&mut self, entries: impl IntoIterator<Item = RegistryEntry>) -> usize {
        self.clear();
        let mut left_out = 0;
        for entry in entries {
            if self.tracked.len() >= MAX_TRACKED {
                left_out += 1;
                continue;
            }
            let tracked = Tracked {
                entry,
                missed: 0,
                answered: false,
            };
            self.tracked.insert(
                field(&tracked.entry.service, &tracked.entry.instance),
                tracked,
            );
        }
        left_out
    }

    /// Forgets everything, for a watcher that hands over to another instance.
    pub fn clear(&mut self) {
        self.tracked.clear();
        self.round_open = false;
        self.rounds_since_load = 0;
    }

    pub fn missed_pings_for_down(&self) -> u32 {
        self.missed_pings_for_down
    }

    pub fn len(&self) -> usize {
        self.tracked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracked.is_empty()
    }

    /// Returns the current entry of `service@instance`.
    pub fn entry(&self, field: &str) -> Option<&RegistryEntry> {
        self.tracked.get(field).map(|tracked| &tracked.entry)
    }

    /// Starts a round, because a ping went out.
    pub fn start_round(&mut self) {
        for tracked in self.tracked.values_mut() {
            tracked.answered = false;
        }
        self.round_open = true;
    }

    /// Ends the round because the next ping is due. Counts a miss for every service that did
    /// not answer and returns the services that went down with it.
    pub fn end_round(&mut self, now: DateTime<Utc>) -> Vec<Change> {
        if !std::mem::replace(&mut self.round_open, false) {
            return Vec::new();
        }
        self.rounds_since_load = self.rounds_since_load.saturating_add(1);
        let first_round = self.rounds_since_load == 1;
        let mut changes = Vec::new();
        for tracked in self.tracked.values_mut() {
            if tracked.answered || first_round {
                tracked.missed = 0;
                continue;
            }
            tracked.missed = tracked.missed.saturating_add(1);
            let entry = &mut tracked.entry;
            if tracked.missed >= self.missed_pings_for_down && entry.state == ServiceState::Up {
                entry.state = ServiceState::Down;
                entry.since = entry.last_pong_at.clone().unwrap_or_else(|| rfc3339(now));
                changes.push(Change::Down(entry.clone()));
            }
        }
        changes
    }

    /// Voids the open round and restarts every miss count, because the bus was unreachable.
    pub fn interrupt(&mut self) {
        self.round_open = false;
        for tracked in self.tracked.values_mut() {
            tracked.missed = 0;
        }
    }

    /// Records a pong received at `now`, with its round-trip time when it answered our
    /// latest ping. Returns `None` when the entry is new and the cap is reached.
    pub fn record_pong(
        &mut self,
        pong: &Pong,
        rtt: Option<Duration>,
        now: DateTime<Utc>,
    ) -> Option<Recorded> {
        let key = field(&pong.service, &pong.instance);
        let now_text = rfc3339(now);
        let rtt_ms = rtt.map(|rtt| rtt.as_millis().min(u128::from(u64::MAX)) as u64);

        let Some(tracked) = self.tracked.get_mut(&key) else {
            if self.tracked.len() >= MAX_TRACKED {
                return None;
            }
            let entry = RegistryEntry {
                service: pong.service.clone(),
                instance: pong.instance.clone(),
                version: pong.version.clone(),
                state: ServiceState::Up,
                since: now_text.clone(),
                last_pong_at: Some(now_text),
                rtt_ms,
                restarts: pong.restarts,
            };
            let tracked = Tracked {
                entry: entry.clone(),
                missed: 0,
                answered: true,
            };
            self.tracked.insert(key, tracked);
            return Some(Recorded {
                entry,
                change: None,
            });
        };

        tracked.answered = true;
        tracked.missed = 0;
        let entry = &mut tracked.entry;
        let mut change = None;
        if entry.state != ServiceState::Up {
            let previous = std::mem::replace(&mut entry.state, ServiceState::Up);
            let down_since = std::mem::replace(&mut entry.since, now_text.clone());
            if previous == ServiceState::Down {
                change = Some(down_since);
            }
        }

        entry.version = pong.version.clone();
        entry.restarts = pong.restarts;
        entry.last_pong_at = Some(now_text);
        if rtt_ms.is_some() {
            entry.rtt_ms = rtt_ms;
        }
        let entry = entry.clone();
        Some(Recorded {
            change: change.map(|down_since| Change::Up {
                entry: entry.clone(),
                down_since,
            }),
            entry,
        })
    }

    /// Records a goodbye. Returns the entry to store when its state changed.
    pub fn record_goodbye(
        &mut self,
        service: &str,
        instance: &str,
        now: DateTime<Utc>,
    ) -> Option<RegistryEntry> {
        let tracked = self.tracked.get_mut(&field(service, instance))?;
        tracked.missed = 0;
        if tracked.entry.state != ServiceState::Up {
            return None;
        }
        tracked.entry.state = ServiceState::Stopped;
        tracked.entry.since = rfc3339(now);
        Some(tracked.entry.clone())
    }

    /// Marks every `up` service of `instance` as stopped, for a graceful stop of the whole
    /// instance whose goodbyes may not all be received. Returns the entries to store.
    pub fn stop_instance(&mut self, instance: &str, now: DateTime<Utc>) -> Vec<RegistryEntry> {
        let mut stopped = Vec::new();
        for tracked in self.tracked.values_mut() {
            if tracked.entry.instance == instance && tracked.entry.state == ServiceState::Up {
                tracked.entry.state = ServiceState::Stopped;
                tracked.entry.since = rfc3339(now);
                stopped.push(tracked.entry.clone());
            }
        }
        stopped
    }

    /// Removes and returns the entries whose last answer (or last state change, for entries
    /// that never answered) is at least `forget_after` old. Entries whose times cannot be
    /// read are removed too, since nothing could ever make them current again.
    pub fn forget(&mut self, now: DateTime<Utc>) -> Vec<RegistryEntry> {
        if self.rounds_since_load == 0 {
            return Vec::new();
        }
        let forget_after = self.forget_after;
        let mut forgotten = Vec::new();
        self.tracked.retain(|_, tracked| {
            let entry = &tracked.entry;
            let last_seen = entry
                .last_pong_at
                .as_deref()
                .and_then(parse_time)
                .or_else(|| parse_time(&entry.since));
            let keep = last_seen.is_some_and(|seen| now.signed_duration_since(seen) < forget_after);
            if !keep {
                forgotten.push(entry.clone());
            }
            keep
        });
        forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MISSED: u32 = 3;
    const FORGET: Duration = Duration::from_secs(3_600);

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn pong(service: &str, instance: &str) -> Pong {
        Pong {
            id: None,
            service: service.into(),
            instance: instance.into(),
            version: "1.0.0".into(),
            uptime_ms: 1,
            restarts: 0,
        }
    }

    fn liveness() -> Liveness {
        Liveness::new(MISSED, FORGET)
    }

    /// Runs one round at time `t` in which the services in `answering` answer; returns the
    /// changes its end reports.
    fn round(live: &mut Liveness, t: i64, answering: &[&str]) -> Vec<Change> {
        live.start_round();
        for service in answering {
            live.record_pong(&pong(service, "nas"), None, at(t));
        }
        live.end_round(at(t + 1))
    }

    fn state(live: &Liveness, service: &str) -> ServiceState {
        live.entry(&field(service, "nas")).unwrap().state
    }

    #[test]
    fn first_pong_is_up_silently() {
        let mut live = liveness();
        let recorded = live.record_pong(&pong("api", "nas"), None, at(0)).unwrap();
        assert_eq!(recorded.change, None);
        assert_eq!(recorded.entry.state, ServiceState::Up);
        assert_eq!(recorded.entry.since, rfc3339(at(0)));
    }

    #[test]
    fn down_after_threshold_once() {
        let mut live = liveness();
        round(&mut live, 0, &["api"]);
        for t in 1..MISSED as i64 {
            assert_eq!(round(&mut live, t * 10, &[]), Vec::new(), "round {t}");
        }
        let changes = round(&mut live, 100, &[]);
        assert_eq!(changes.len(), 1);
        assert!(matches!(&changes[0], Change::Down(entry) if entry.service == "api"));
        for t in 0..5 {
            assert_eq!(round(&mut live, 200 + t, &[]), Vec::new(), "repeat {t}");
        }
        assert_eq!(state(&live, "api"), ServiceState::Down);
    }

    #[test]
    fn down_since_is_last_answer() {
        let mut live = liveness();
        round(&mut live, 0, &["api"]);
        let mut changes = Vec::new();
        for t in 1..=MISSED as i64 {
            changes = round(&mut live, t * 10, &[]);
        }
        assert_eq!(changes[0].entry().since, rfc3339(at(0)));
    }

    #[test]
    fn up_after_down_once() {
        let mut live = liveness();
        round(&mut live, 0, &["api"]);
        for t in 1..=MISSED as i64 {
            round(&mut live, t, &[]);
        }
        live.start_round();
        let recorded = live.record_pong(&pong("api", "nas"), None, at(50)).unwrap();
        let Some(Change::Up { entry, down_since }) = recorded.change else {
            panic!("no up change: {recorded:?}");
        };
        assert_eq!(entry.state, ServiceState::Up);
        assert_eq!(entry.since, rfc3339(at(50)));
        assert_eq!(down_since, rfc3339(at(0)));
        let again = live.record_pong(&pong("api", "nas"), None, at(51)).unwrap();
        assert_eq!(again.change, None);
    }

    #[test]
    fn flapping_below_threshold_silent() {
        let mut live = liveness();
        for cycle in 0..20 {
            let t = cycle * 100;
            assert_eq!(round(&mut live, t, &["api"]), Vec::new());
            for miss in 1..MISSED as i64 {
                assert_eq!(round(&mut live, t + miss, &[]), Vec::new());
            }
        }
        assert_eq!(state(&live, "api"), ServiceState::Up);
    }

    #[test]
    fn goodbye_prevents_down() {
        let mut live = liveness();
        round(&mut live, 0, &["api"]);
        let stored = live.record_goodbye("api", "nas", at(5)).unwrap();
        assert_eq!(stored.state, ServiceState::Stopped);
        for t in 1..20 {
            assert_eq!(round(&mut live, t * 10, &[]), Vec::new());
        }
        assert_eq!(state(&live, "api"), ServiceState::Stopped);
    }

    #[test]
    fn return_after_goodbye_silent() {
        let mut live = liveness();
        round(&mut live, 0, &["api"]);
        live.record_goodbye("api", "nas", at(5));
        let recorded = live.record_pong(&pong("api", "nas"), None, at(9)).unwrap();
        assert_eq!(recorded.change, None);
        assert_eq!(recorded.entry.state, ServiceState::Up);
    }

    #[test]
    fn goodbye_while_down_keeps_down() {
        let mut live = liveness();
        round(&mut live, 0, &["api"]);
        for t in 1..=MISSED as i64 {
            round(&mut live, t, &[]);
        }
        assert_eq!(live.record_goodbye("api", "nas", at(20)), None);
        assert_eq!(state(&live, "api"), ServiceState::Down);
        let recorded = live.record_pong(&pong("api", "nas"), None, at(30)).unwrap();
        assert!(matches!(recorded.change, Some(Change::Up { .. })));
    }

    #[test]
    fn goodbye_of_unknown_service_ignored() {
        let mut live = liveness();
        assert_eq!(live.record_goodbye("api", "nas", at(0)), None);
        assert!(live.is_empty());
    }

    #[test]
    fn interruption_resets_misses() {
        let mut live = liveness();
        round(&mut live, 0, &["api"]);
        for t in 1..MISSED as i64 {
            round(&mut live, t, &[]);
        }
        live.start_round();
        live.interrupt();
        assert_eq!(live.end_round(at(50)), Vec::new(), "interrupted round");
        for t in 1..MISSED as i64 {
            assert_eq!(round(&mut live, 60 + t, &[]), Vec::new(), "round {t}");
        }
        assert_eq!(round(&mut live, 70, &[]).len(), 1);
    }

    #[test]
    fn first_round_after_load_not_counted() {
        let mut live = liveness();
        round(&mut live, 0, &["api"]);
        let saved = live.entry(&field("api", "nas")).unwrap().clone();
        let mut restarted = liveness();
        restarted.load([saved]);
        for t in 0..MISSED as i64 {
            assert_eq!(round(&mut restarted, 100 + t, &[]), Vec::new(), "round {t}");
        }
        assert_eq!(round(&mut restarted, 200, &[]).len(), 1);
    }

    #[test]
    fn end_without_start_counts_nothing() {
        let mut live = liveness();
        round(&mut live, 0, &["api"]);
        for t in 1..10 {
            assert_eq!(live.end_round(at(t)), Vec::new());
        }
        assert_eq!(state(&live, "api"), ServiceState::Up);
    }

    #[test]
    fn loaded_down_not_announced_again() {
        let mut live = liveness();
        round(&mut live, 0, &["api"]);
        for t in 1..=MISSED as i64 {
            round(&mut live, t, &[]);
        }
        let saved = live.entry(&field("api", "nas")).unwrap().clone();
        let mut restarted = liveness();
        restarted.load([saved]);
        for t in 0..10 {
            assert_eq!(round(&mut restarted, 100 + t, &[]), Vec::new());
        }
        let recorded = restarted
            .record_pong(&pong("api", "nas"), None, at(200))
            .unwrap();
        assert!(matches!(recorded.change, Some(Change::Up { .. })));
    }

    #[test]
    fn loaded_up_answering_silent() {
        let mut live = liveness();
        round(&mut live, 0, &["api", "torrent"]);
        let saved: Vec<_> = ["api", "torrent"]
            .iter()
            .map(|service| live.entry(&field(service, "nas")).unwrap().clone())
            .collect();
        let mut restarted = liveness();
        restarted.load(saved);
        for t in 0..10 {
            assert_eq!(
                round(&mut restarted, 100 + t, &["api", "torrent"]),
                Vec::new()
            );
        }
    }

    #[test]
    fn rtt_kept_when_unmatched() {
        let mut live = liveness();
        live.record_pong(&pong("api", "nas"), Some(Duration::from_millis(7)), at(0));
        let recorded = live.record_pong(&pong("api", "nas"), None, at(1)).unwrap();
        assert_eq!(recorded.entry.rtt_ms, Some(7));
        assert_eq!(recorded.entry.last_pong_at, Some(rfc3339(at(1))));
    }

    #[test]
    fn pong_updates_version_and_restarts() {
        let mut live = liveness();
        live.record_pong(&pong("api", "nas"), None, at(0));
        let mut newer = pong("api", "nas");
        newer.version = "1.1.0".into();
        newer.restarts = 2;
        let recorded = live.record_pong(&newer, None, at(1)).unwrap();
        assert_eq!(recorded.entry.version, "1.1.0");
        assert_eq!(recorded.entry.restarts, 2);
        assert_eq!(recorded.entry.since, rfc3339(at(0)), "state did not change");
    }

    #[test]
    fn forget_after_silence() {
        let mut live = liveness();
        round(&mut live, 0, &["api", "dnslog"]);
        let forget = FORGET.as_secs() as i64;
        round(&mut live, forget - 10, &["dnslog"]);
        assert_eq!(live.forget(at(forget - 1)), Vec::new());
        let forgotten = live.forget(at(forget));
        assert_eq!(forgotten.len(), 1);
        assert_eq!(forgotten[0].service, "api");
        assert_eq!(live.forget(at(forget + 1)), Vec::new(), "forgotten once");
        assert!(live.entry(&field("api", "nas")).is_none());
        assert!(live.entry(&field("dnslog", "nas")).is_some());
    }

    #[test]
    fn forget_waits_for_first_round() {
        let mut live = liveness();
        round(&mut live, 0, &["api"]);
        let saved = live.entry(&field("api", "nas")).unwrap().clone();
        let mut restarted = liveness();
        restarted.load([saved]);
        let much_later = FORGET.as_secs() as i64 * 10;
        assert_eq!(restarted.forget(at(much_later)), Vec::new());
        round(&mut restarted, much_later, &["api"]);
        assert_eq!(restarted.forget(at(much_later + 2)), Vec::new());
    }

    #[test]
    fn forget_removes_unreadable_times() {
        let mut live = liveness();
        round(&mut live, 0, &["api"]);
        let mut broken = live.entry(&field("api", "nas")).unwrap().clone();
        broken.since = "yesterday".into();
        broken.last_pong_at = None;
        live.load([broken]);
        round(&mut live, 1, &[]);
        assert_eq!(live.forget(at(2)).len(), 1);
    }

    #[test]
    fn stop_instance_marks_only_its_up_services() {
        let mut live = liveness();
        live.start_round();
        live.record_pong(&pong("api", "nas"), None, at(0));
        live.record_pong(&pong("api", "pi"), None, at(0));
        let stopped = live.stop_instance("nas", at(1));
        assert_eq!(stopped.len(), 1);
        assert_eq!(stopped[0].instance, "nas");
        assert_eq!(state(&live, "api"), ServiceState::Stopped);
        let other = live.entry(&field("api", "pi")).unwrap();
        assert_eq!(other.state, ServiceState::Up);
    }

    #[test]
    fn cap_limits_new_entries() {
        let mut live = liveness();
        for n in 0..MAX_TRACKED {
            assert!(
                live.record_pong(&pong(&format!("s{n}"), "nas"), None, at(0))
                    .is_some()
            );
        }
        assert!(
            live.record_pong(&pong("one-more", "nas"), None, at(0))
                .is_none()
        );
        assert!(live.record_pong(&pong("s0", "nas"), None, at(1)).is_some());
        assert_eq!(live.len(), MAX_TRACKED);
    }
}

//! Presence of known devices, derived from their DNS queries.
//!
//! A device is home from its first query, and away once it has made no query for its
//! `away_after` time. That is 900 s by default, like Home Assistant's `consider_home`,
//! because phones go quiet for minutes while their owner is in the room. Queries for a
//! device's ignored domains (background traffic that runs without anyone around) do not
//! count.
//!
//! [`Presence`] is a pure state machine: it is fed observations with the line's own time and
//! a clock value, and returns transitions. It never reads the clock itself, so tests replay
//! any history with explicit times, and a restarted service feeds it the stored state and
//! the lines it missed in their own order.
//!
//! The first observation of a device with no stored state sets a baseline silently: a fresh
//! install does not announce everyone at home as arriving.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::time::Timestamp;

/// A known device, as configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Device {
    pub name: String,
    pub owner: Option<String>,
    /// Addresses and networks whose queries are this device's. A single address is a /32
    /// or /128 network.
    pub networks: Vec<IpNet>,
    pub away_after_secs: u64,
    /// Lower-case domains, each with its final dot, whose queries (and their subdomains'
    /// queries) are ignored.
    pub ignore_domains: Vec<String>,
    pub notify_arrivals: bool,
}

/// The known state of a device, exported to Redis and imported after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    pub home: bool,
    /// Time of the newest counted query, in milliseconds since the Unix epoch.
    pub last_seen_ms: i64,
    /// Client address of the newest counted query.
    pub last_ip: IpAddr,
    /// Time the device arrived or left, in milliseconds since the Unix epoch.
    pub since_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransitionKind {
    Arrived,
    Left,
}

/// A device arriving or leaving.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub kind: TransitionKind,
    /// Index of the device in the configured list.
    pub device: usize,
    /// For an arrival, the query's time. For a departure, the moment the device had been
    /// quiet for its `away_after` time.
    pub at: Timestamp,
    /// For an arrival, the client address of the query; for a departure, the last address
    /// the device used.
    pub ip: IpAddr,
    /// For an arrival, how long the device was away (since its last query). For a
    /// departure, how long it had been quiet when it was declared away, which is its
    /// `away_after` time.
    pub away_ms: u64,
    /// Time of the device's last query before this transition.
    pub last_seen: Timestamp,
}

impl Device {
    fn away_after_ms(&self) -> u64 {
        self.away_after_secs.saturating_mul(1000)
    }
}

/// The presence state of all configured devices.
#[derive(Clone, Debug)]
pub struct Presence {
    devices: Vec<Device>,
    /// `(network, device index)`, longest prefix first, so that the most specific match
    /// wins where configured networks overlap.
    networks: Vec<(IpNet, usize)>,
    states: Vec<Option<DeviceState>>,
}

impl Presence {
    pub fn new(devices: Vec<Device>) -> Self {
        let mut networks: Vec<(IpNet, usize)> = devices
            .iter()
            .enumerate()
            .flat_map(|(index, device)| device.networks.iter().map(move |net| (*net, index)))
            .collect();
        networks.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        let states = vec![None; devices.len()];
        Self {
            devices,
            networks,
            states,
        }
    }

    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// Finds the device an address belongs to.
    pub fn device_for(&self, ip: IpAddr) -> Option<usize> {
        let ip = ip.to_canonical();
        self.networks
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|&(_, index)| index)
    }

    /// Records a query from `ip` for `name` (canonical, with its final dot) at `at`, and
    /// returns the transitions it causes. That is none or an arrival, or a departure then
    /// an arrival when the device was silently gone for longer than its `away_after` time.
    pub fn observe(&mut self, ip: IpAddr, name: &str, at: Timestamp) -> Vec<Transition> {
        let Some(index) = self.device_for(ip) else {
            return Vec::new();
        };
        let device = &self.devices[index];
        if is_ignored(name, &device.ignore_domains) {
            return Vec::new();
        }
        let away_after_ms = device.away_after_ms();
        let at_ms = at.unix_millis();

        let Some(state) = &mut self.states[index] else {
            self.states[index] = Some(DeviceState {
                home: true,
                last_seen_ms: at_ms,
                last_ip: ip,
                since_ms: at_ms,
            });
            return Vec::new();
        };
        if at_ms <= state.last_seen_ms {
            // An older line, from a merged stream of several replicas or a catch-up.
            return Vec::new();
        }

        let last_seen = Timestamp::from_unix_millis(state.last_seen_ms);
        let mut transitions = Vec::new();
        if state.home && at.millis_since(last_seen) >= away_after_ms {
            transitions.push(departure(index, state, away_after_ms));
        }
        if !state.home || !transitions.is_empty() {
            transitions.push(Transition {
                kind: TransitionKind::Arrived,
                device: index,
                at,
                ip,
                away_ms: at.millis_since(last_seen),
                last_seen,
            });
            state.home = true;
            state.since_ms = at_ms;
        }
        state.last_seen_ms = at_ms;
        state.last_ip = ip;
        transitions
    }

    /// Declares away every home device that has been quiet for its `away_after` time at
    /// `now`, and returns those departures.
    pub fn tick(&mut self, now: Timestamp) -> Vec<Transition> {
        let mut transitions = Vec::new();
        for (index, slot) in self.states.iter_mut().enumerate() {
            let Some(state) = slot else {
                continue;
            };
            let away_after_ms = self.devices[index].away_after_ms();
            let last_seen = Timestamp::from_unix_millis(state.last_seen_ms);
            if state.home && now.millis_since(last_seen) >= away_after_ms {
                transitions.push(departure(index, state, away_after_ms));
            }
        }
        transitions
    }

    /// Returns the state of every device seen so far, by device name.
    pub fn export(&self) -> Vec<(&str, &DeviceState)> {
        self.devices
            .iter()
            .zip(&self.states)
            .filter_map(|(device, state)| Some((device.name.as_str(), state.as_ref()?)))
            .collect()
    }

    /// Restores stored states by device name. States of devices no longer configured are
    /// ignored; devices without a stored state start unseen.
    pub fn import<'a>(&mut self, stored: impl IntoIterator<Item = (&'a str, DeviceState)>) {
        for (name, state) in stored {
            if let Some(index) = self.devices.iter().position(|d| d.name == name) {
                self.states[index] = Some(state);
            }
        }
    }

    pub fn state(&self, device: usize) -> Option<&DeviceState> {
        self.states.get(device)?.as_ref()
    }
}

/// Marks a home device away at the moment its quiet time reached `away_after_ms`.
fn departure(index: usize, state: &mut DeviceState, away_after_ms: u64) -> Transition {
    let last_seen = Timestamp::from_unix_millis(state.last_seen_ms);
    let at = last_seen.plus_millis(away_after_ms);
    state.home = false;
    state.since_ms = at.unix_millis();
    Transition {
        kind: TransitionKind::Left,
        device: index,
        at,
        ip: state.last_ip,
        away_ms: away_after_ms,
        last_seen,
    }
}

/// Checks whether `name` is one of the domains or below one of them. Both are canonical:
/// lower-case with the final dot.
fn is_ignored(name: &str, domains: &[String]) -> bool {
    domains.iter().any(|domain| {
        name == domain
            || (name.len() > domain.len()
                && name.ends_with(domain.as_str())
                && name.as_bytes()[name.len() - domain.len() - 1] == b'.')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;

    fn device(name: &str, networks: &[&str]) -> Device {
        Device {
            name: name.to_owned(),
            owner: Some("Sam".to_owned()),
            networks: networks.iter().map(|n| n.parse().unwrap()).collect(),
            away_after_secs: 900,
            ignore_domains: Vec::new(),
            notify_arrivals: true,
        }
    }

    fn at(minutes: i64) -> Timestamp {
        Timestamp::from_unix_millis(1_700_000_000_000 + minutes * MINUTE)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn kinds(transitions: &[Transition]) -> Vec<TransitionKind> {
        transitions.iter().map(|t| t.kind).collect()
    }

    fn phone() -> Presence {
        Presence::new(vec![device("phone", &["192.168.1.42/32"])])
    }

    #[test]
    fn first_query_sets_silent_baseline() {
        let mut presence = phone();
        assert!(
            presence
                .observe(ip("192.168.1.42"), "example.org.", at(0))
                .is_empty()
        );
        assert!(presence.state(0).unwrap().home);
    }

    #[test]
    fn unknown_client_is_ignored() {
        let mut presence = phone();
        assert!(
            presence
                .observe(ip("192.168.1.43"), "example.org.", at(0))
                .is_empty()
        );
        assert_eq!(presence.state(0), None);
    }

    #[test]
    fn arrive_leave_arrive() {
        use TransitionKind::*;
        let mut presence = phone();
        let phone_ip = ip("192.168.1.42");
        presence.observe(phone_ip, "a.example.", at(0));
        presence.observe(phone_ip, "a.example.", at(10));
        assert!(presence.tick(at(24)).is_empty());

        let left = presence.tick(at(26));
        assert_eq!(kinds(&left), [Left]);
        assert_eq!(left[0].at, at(25));
        assert_eq!(left[0].away_ms, 15 * MINUTE as u64);
        assert_eq!(left[0].last_seen, at(10));
        assert!(presence.tick(at(30)).is_empty());

        let arrived = presence.observe(phone_ip, "a.example.", at(70));
        assert_eq!(kinds(&arrived), [Arrived]);
        assert_eq!(arrived[0].away_ms, 60 * MINUTE as u64);
        assert_eq!(arrived[0].at, at(70));
        assert_eq!(arrived[0].ip, phone_ip);
        assert!(presence.observe(phone_ip, "a.example.", at(71)).is_empty());
    }

    #[test]
    fn gap_without_tick_leaves_then_arrives() {
        use TransitionKind::*;
        let mut presence = phone();
        presence.observe(ip("192.168.1.42"), "a.example.", at(0));
        let transitions = presence.observe(ip("192.168.1.42"), "a.example.", at(120));
        assert_eq!(kinds(&transitions), [Left, Arrived]);
        assert_eq!(transitions[0].at, at(15));
        assert_eq!(transitions[1].away_ms, 120 * MINUTE as u64);
    }

    #[test]
    fn short_quiet_is_not_absence() {
        let mut presence = phone();
        for minute in [0, 14, 28, 42] {
            assert!(
                presence
                    .observe(ip("192.168.1.42"), "a.example.", at(minute))
                    .is_empty()
            );
        }
        assert!(presence.tick(at(56)).is_empty());
    }

    #[test]
    fn older_line_changes_nothing() {
        let mut presence = phone();
        presence.observe(ip("192.168.1.42"), "a.example.", at(30));
        assert!(
            presence
                .observe(ip("192.168.1.42"), "a.example.", at(0))
                .is_empty()
        );
        assert_eq!(
            presence.state(0).unwrap().last_seen_ms,
            at(30).unix_millis()
        );
    }

    #[test]
    fn ignored_domains_do_not_count() {
        let mut phone = device("phone", &["192.168.1.42/32"]);
        phone.ignore_domains = vec!["icloud.com.".to_owned()];
        let mut presence = Presence::new(vec![phone]);
        let phone_ip = ip("192.168.1.42");
        presence.observe(phone_ip, "a.example.", at(0));
        presence.tick(at(20));
        assert!(
            presence
                .observe(phone_ip, "gateway.icloud.com.", at(30))
                .is_empty()
        );
        assert!(presence.observe(phone_ip, "icloud.com.", at(31)).is_empty());
        assert!(!presence.state(0).unwrap().home);
        let arrived = presence.observe(phone_ip, "noticloud.com.", at(32));
        assert_eq!(kinds(&arrived), [TransitionKind::Arrived]);
    }

    #[test]
    fn privacy_addresses_in_prefix_are_one_device() {
        let mut presence = Presence::new(vec![device("phone", &["2001:db8:1:2::/64"])]);
        presence.observe(ip("2001:db8:1:2:a1b2:c3d4:e5f6:1"), "a.example.", at(0));
        let rotated = presence.observe(ip("2001:db8:1:2:9f8e:7d6c:5b4a:2"), "a.example.", at(5));
        assert!(rotated.is_empty());
        assert_eq!(
            presence.state(0).unwrap().last_ip,
            ip("2001:db8:1:2:9f8e:7d6c:5b4a:2")
        );
        assert!(
            presence
                .observe(ip("2001:db8:1:3::1"), "a.example.", at(6))
                .is_empty()
        );
        assert_eq!(presence.device_for(ip("2001:db8:1:3::1")), None);
    }

    #[test]
    fn most_specific_network_wins() {
        let presence = Presence::new(vec![
            device("lan", &["192.168.1.0/24"]),
            device("phone", &["192.168.1.42/32"]),
        ]);
        assert_eq!(presence.device_for(ip("192.168.1.42")), Some(1));
        assert_eq!(presence.device_for(ip("192.168.1.43")), Some(0));
    }

    #[test]
    fn v4_mapped_address_matches_ipv4() {
        let presence = phone();
        assert_eq!(presence.device_for(ip("::ffff:192.168.1.42")), Some(0));
    }

    #[test]
    fn restart_without_false_arrival() {
        let mut before = phone();
        before.observe(ip("192.168.1.42"), "a.example.", at(0));
        let stored: Vec<(String, DeviceState)> = before
            .export()
            .into_iter()
            .map(|(name, state)| (name.to_owned(), state.clone()))
            .collect();

        let mut after = phone();
        after.import(
            stored
                .iter()
                .map(|(name, state)| (name.as_str(), state.clone())),
        );
        assert!(
            after
                .observe(ip("192.168.1.42"), "a.example.", at(5))
                .is_empty()
        );
        assert!(after.tick(at(10)).is_empty());
    }

    #[test]
    fn restart_catches_arrival_while_down() {
        let mut after = phone();
        let state = DeviceState {
            home: false,
            last_seen_ms: at(0).unix_millis(),
            last_ip: ip("192.168.1.42"),
            since_ms: at(15).unix_millis(),
        };
        after.import([("phone", state)]);
        let arrived = after.observe(ip("192.168.1.42"), "a.example.", at(90));
        assert_eq!(kinds(&arrived), [TransitionKind::Arrived]);
        assert_eq!(arrived[0].away_ms, 90 * MINUTE as u64);
    }

    #[test]
    fn import_ignores_unknown_devices() {
        let mut presence = phone();
        let state = DeviceState {
            home: true,
            last_seen_ms: 0,
            last_ip: ip("10.0.0.1"),
            since_ms: 0,
        };
        presence.import([("tablet", state)]);
        assert!(presence.export().is_empty());
    }

    #[test]
    fn device_state_json_round_trips() {
        let state = DeviceState {
            home: true,
            last_seen_ms: 1_700_000_000_000,
            last_ip: ip("2001:db8::1"),
            since_ms: 1_699_999_000_000,
        };
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<DeviceState>(&json).unwrap(), state);
    }

    #[test]
    fn ignore_matches_whole_labels() {
        let domains = vec!["apple.com.".to_owned()];
        assert!(is_ignored("apple.com.", &domains));
        assert!(is_ignored("gs.apple.com.", &domains));
        assert!(!is_ignored("pineapple.com.", &domains));
        assert!(!is_ignored("com.", &domains));
    }
}

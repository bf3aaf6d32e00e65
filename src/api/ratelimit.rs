//! Request limits: a token bucket per API token, and a block on client addresses that keep
//! failing authentication.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::config::{ApiConfig, RateLimit};

/// Maximum number of client addresses tracked for failed authentication at once. An entry is
/// a few dozen bytes, so the table stays under a megabyte. Past the cap, expired entries are
/// dropped first, then the oldest one.
const MAX_TRACKED_ADDRESSES: usize = 8_192;

/// One token bucket per API token, in config order; `None` for unlimited tokens.
pub struct TokenLimits {
    limiters: Vec<Option<DefaultDirectRateLimiter>>,
    clock: DefaultClock,
}

impl TokenLimits {
    pub fn new(config: &ApiConfig) -> TokenLimits {
        let limiters = config
            .tokens
            .iter()
            .map(|token| token.rate_limit.map(limiter))
            .collect();
        TokenLimits {
            limiters,
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from the bucket of token `index`, or returns how long to wait.
    pub fn check(&self, index: usize) -> Result<(), Duration> {
        let Some(Some(limiter)) = self.limiters.get(index) else {
            return Ok(());
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

fn limiter(limit: RateLimit) -> DefaultDirectRateLimiter {
    let per_minute = NonZeroU32::new(limit.per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_minute(per_minute).allow_burst(burst))
}

/// Outcome of [`AuthFailures::record`], so the caller can log each change once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The first failure of this address in its window.
    First,
    /// Another failure, still under the limit.
    Again,
    /// This failure reached the limit: the address is blocked from now on.
    Blocked,
}

struct Entry {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
}

impl Entry {
    fn is_expired(&self, now: Instant, window: Duration) -> bool {
        match self.blocked_until {
            Some(until) => now >= until,
            None => now.duration_since(self.window_start) >= window,
        }
    }
}

/// Failed authentications per client address. After `max_failures` within `window`, every
/// request from that address is rejected for `block`, before its token is even looked at, so
/// guessing gets no responses. IPv6 clients are counted per /64, the block a single home or
/// host usually gets.
pub struct AuthFailures {
    entries: Mutex<HashMap<IpAddr, Entry>>,
    max_failures: u32,
    window: Duration,
    block: Duration,
}

impl AuthFailures {
    pub fn new(config: &ApiConfig) -> AuthFailures {
        AuthFailures {
            entries: Mutex::new(HashMap::new()),
            max_failures: config.max_auth_failures,
            window: config.auth_failure_window(),
            block: config.auth_block(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.entries
            .lock()
            .expect("failure table lock is never poisoned: no code panics while holding it")
    }

    /// Returns how long `address` stays blocked, or `Ok` when it may try.
    pub fn check(&self, address: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let entries = self.entries();
        match entries
            .get(&address_key(address))
            .and_then(|entry| entry.blocked_until)
        {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Counts one failed authentication from `address`.
    pub fn record(&self, address: IpAddr) -> Recorded {
        let now = Instant::now();
        let key = address_key(address);
        let mut entries = self.entries();
        if !entries.contains_key(&key) && entries.len() >= MAX_TRACKED_ADDRESSES {
            make_room(&mut entries, now, self.window);
        }
        let entry = entries.entry(key).or_insert(Entry {
            window_start: now,
            failures: 0,
            blocked_until: None,
        });
        if entry.is_expired(now, self.window) {
            *entry = Entry {
                window_start: now,
                failures: 0,
                blocked_until: None,
            };
        }
        entry.failures += 1;
        if entry.failures >= self.max_failures && entry.blocked_until.is_none() {
            entry.blocked_until = Some(now + self.block);
            Recorded::Blocked
        } else if entry.failures == 1 {
            Recorded::First
        } else {
            Recorded::Again
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries().len()
    }
}

/// Drops expired entries; if none expired, the one whose window started first.
fn make_room(entries: &mut HashMap<IpAddr, Entry>, now: Instant, window: Duration) {
    entries.retain(|_, entry| !entry.is_expired(now, window));
    if entries.len() < MAX_TRACKED_ADDRESSES {
        return;
    }
    let oldest = entries
        .iter()
        .min_by_key(|(_, entry)| entry.window_start)
        .map(|(address, _)| *address);
    if let Some(oldest) = oldest {
        entries.remove(&oldest);
    }
}

/// Returns the address a client is counted under: IPv4 as is, IPv6 by its /64 network.
pub fn address_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(network))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failures(max: u32, block: Duration) -> AuthFailures {
        AuthFailures {
            entries: Mutex::new(HashMap::new()),
            max_failures: max,
            window: Duration::from_secs(60),
            block,
        }
    }

    #[test]
    fn blocks_after_max_failures() {
        let table = failures(3, Duration::from_secs(60));
        let address: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(table.record(address), Recorded::First);
        assert_eq!(table.record(address), Recorded::Again);
        assert!(table.check(address).is_ok());
        assert_eq!(table.record(address), Recorded::Blocked);
        assert!(table.check(address).is_err());
    }

    #[test]
    fn block_ends_after_its_time() {
        let table = failures(1, Duration::from_millis(20));
        let address: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(table.record(address), Recorded::Blocked);
        std::thread::sleep(Duration::from_millis(30));
        assert!(table.check(address).is_ok());
        assert_eq!(table.record(address), Recorded::Blocked);
    }

    #[test]
    fn other_addresses_unaffected() {
        let table = failures(1, Duration::from_secs(60));
        table.record("192.0.2.7".parse().unwrap());
        assert!(table.check("192.0.2.8".parse().unwrap()).is_ok());
    }

    #[test]
    fn ipv6_counted_per_64() {
        let table = failures(2, Duration::from_secs(60));
        table.record("2001:db8:1:2::1".parse().unwrap());
        table.record("2001:db8:1:2::ffff".parse().unwrap());
        assert!(
            table
                .check("2001:db8:1:2:abcd::9".parse().unwrap())
                .is_err()
        );
        assert!(table.check("2001:db8:1:3::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn table_stays_bounded() {
        let table = failures(5, Duration::from_secs(60));
        for index in 0..(MAX_TRACKED_ADDRESSES as u32 + 100) {
            table.record(IpAddr::from(index.to_be_bytes()));
        }
        assert_eq!(table.len(), MAX_TRACKED_ADDRESSES);
    }

    #[test]
    fn token_bucket_trips_and_refills() {
        let limits = TokenLimits {
            limiters: vec![Some(limiter(RateLimit {
                per_minute: 6_000,
                burst: 2,
            }))],
            clock: DefaultClock::default(),
        };
        assert!(limits.check(0).is_ok());
        assert!(limits.check(0).is_ok());
        let wait = limits.check(0).unwrap_err();
        assert!(wait <= Duration::from_millis(10), "{wait:?}");
        std::thread::sleep(wait + Duration::from_millis(5));
        assert!(limits.check(0).is_ok());
    }
}

//! Counters of the API: Prometheus metrics per route (through the `metrics` facade, rendered
//! at `GET /metrics`) and per-stub counters for `GET /api/redis/metrics/<stub>`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bus::BusError;
use crate::bus::wire::now_rfc3339;

/// Maximum number of stubs with counters at once. Tokens with `*` may name any stub, so the table is
/// capped; past the cap the stub used least recently is forgotten.
const MAX_STUBS: usize = 1_024;

/// Records one finished request: its route, status and duration.
pub fn record_request(route: &'static str, status: u16, elapsed: Duration) {
    metrics::counter!(
        "almagest_api_requests_total",
        "route" => route,
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!("almagest_api_request_duration_seconds", "route" => route)
        .record(elapsed.as_secs_f64());
}

/// Counts a failed bus operation of the API.
pub fn record_bus_error(error: &BusError) {
    let kind = match error {
        BusError::Unavailable(_) => "unavailable",
        BusError::Command { .. } => "command",
        BusError::Timeout { .. } => "timeout",
        BusError::NotAvailable { .. } => "not_available",
        BusError::InvalidReply { .. } => "invalid_reply",
    };
    metrics::counter!("almagest_bus_errors_total", "service" => super::NAME, "kind" => kind)
        .increment(1);
}

/// Counters of one stub since this API started.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StubCounters {
    pub messages: MessageCounts,
    pub rproxy: RproxyCounts,
    /// When the last message was published for this stub, RFC 3339.
    pub last_publish_at: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct MessageCounts {
    pub total: u64,
    /// Refused because the bus was down.
    pub status_503: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct RproxyCounts {
    pub total: u64,
    /// Rejected because no client listened or the bus was down.
    pub status_503: u64,
    /// No reply in time.
    pub status_504: u64,
}

/// Outcome of a request for a stub, for its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Published,
    Unavailable,
    TimedOut,
    /// Any other end (a rejected body, a worker's reply, a queued request).
    Other,
}

struct Slot {
    counters: StubCounters,
    used: Instant,
}

/// Per-stub counters, bounded to [`MAX_STUBS`] entries.
#[derive(Default)]
pub struct StubStats {
    slots: Mutex<HashMap<String, Slot>>,
}

impl StubStats {
    fn update(&self, stub: &str, change: impl FnOnce(&mut StubCounters)) {
        let mut slots = self
            .slots
            .lock()
            .expect("stub stats lock is never poisoned: no code panics while holding it");
        if !slots.contains_key(stub) && slots.len() >= MAX_STUBS {
            let least_recent = slots
                .iter()
                .min_by_key(|(_, slot)| slot.used)
                .map(|(name, _)| name.clone());
            if let Some(name) = least_recent {
                slots.remove(&name);
            }
        }
        let slot = slots.entry(stub.to_string()).or_insert_with(|| Slot {
            counters: StubCounters::default(),
            used: Instant::now(),
        });
        slot.used = Instant::now();
        change(&mut slot.counters);
    }

    /// Counts one publish request for `stub`.
    pub fn record_message(&self, stub: &str, outcome: Outcome) {
        self.update(stub, |counters| {
            counters.messages.total += 1;
            match outcome {
                Outcome::Published => counters.last_publish_at = Some(now_rfc3339()),
                Outcome::Unavailable => counters.messages.status_503 += 1,
                Outcome::TimedOut | Outcome::Other => {}
            }
        });
    }

    /// Counts one rproxy request for `stub`.
    pub fn record_rproxy(&self, stub: &str, outcome: Outcome) {
        self.update(stub, |counters| {
            counters.rproxy.total += 1;
            match outcome {
                Outcome::Unavailable => counters.rproxy.status_503 += 1,
                Outcome::TimedOut => counters.rproxy.status_504 += 1,
                Outcome::Published | Outcome::Other => {}
            }
        });
    }

    /// Returns the counters of `stub`, zero when it was never used or was forgotten.
    pub fn get(&self, stub: &str) -> StubCounters {
        self.slots
            .lock()
            .expect("stub stats lock is never poisoned: no code panics while holding it")
            .get(stub)
            .map(|slot| slot.counters.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_outcome() {
        let stats = StubStats::default();
        stats.record_message("wiki", Outcome::Published);
        stats.record_message("wiki", Outcome::Unavailable);
        stats.record_rproxy("wiki", Outcome::TimedOut);
        stats.record_rproxy("wiki", Outcome::Unavailable);
        let counters = stats.get("wiki");
        assert_eq!(
            counters.messages,
            MessageCounts {
                total: 2,
                status_503: 1
            }
        );
        assert_eq!(
            counters.rproxy,
            RproxyCounts {
                total: 2,
                status_503: 1,
                status_504: 1
            }
        );
        assert!(counters.last_publish_at.is_some());
    }

    #[test]
    fn table_bounded() {
        let stats = StubStats::default();
        for index in 0..MAX_STUBS + 10 {
            stats.record_message(&format!("s{index}"), Outcome::Published);
        }
        assert_eq!(stats.slots.lock().unwrap().len(), MAX_STUBS);
    }
}

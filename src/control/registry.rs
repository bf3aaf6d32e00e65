//! The registry's side in Redis: the hash `P:services` (field `<service>@<instance>`, value a
//! registry entry), the watcher lease `P:control:lease`, and the announcements that go with
//! state changes (notifications and events on `P:events:control`).
//!
//! Several instances may run a control service on one Redis. Only the one holding the lease
//! pings, keeps the registry and announces changes, so nothing is announced twice. The others
//! stand by and take over when the lease expires. The lease holds the instance name, so a
//! control service that restarts within the lease's lifetime takes its own lease back.

use std::time::Duration;

use serde::Serialize;

use super::liveness::{self, Change};
use crate::bus::wire::{RegistryEntry, ServiceState};
use crate::bus::{Bus, BusError, Level, Notification};
use crate::cli::format_uptime;

/// Source of the notifications and events.
const SOURCE: &str = super::NAME;

/// `{"type":"service.down",…}` and its siblings on `P:events:control`.
#[derive(Debug, Serialize)]
struct ServiceEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    service: &'a str,
    instance: &'a str,
    since: &'a str,
}

/// Registry, lease and announcements of one control service.
pub struct Registry {
    bus: Bus,
    lease_ttl: Duration,
}

impl Registry {
    pub fn new(bus: Bus, lease_ttl: Duration) -> Registry {
        Registry { bus, lease_ttl }
    }

    fn instance(&self) -> &str {
        self.bus.instance()
    }

    /// Takes the lease if it is free, or renews it if this instance holds it. Returns whether
    /// this instance holds it now.
    ///
    /// Renewal is a read and a write, not one atomic step. If the lease expires between them
    /// and another instance takes it, both hold it until the next renewal, at most one ping
    /// interval. That is harmless: a new holder starts every miss count at zero, so it cannot
    /// announce anything within that interval.
    pub async fn hold_lease(&self) -> Result<bool, BusError> {
        let backend = self.bus.backend()?;
        let key = self.bus.names().control_lease();
        let instance = self.instance();
        if backend
            .set_if_absent(&key, instance, Some(self.lease_ttl))
            .await?
        {
            return Ok(true);
        }
        match backend.get(&key).await? {
            Some(holder) if holder == instance => {
                backend.set(&key, instance, Some(self.lease_ttl)).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Gives the lease up, if this instance holds it, so that a standby takes over at its next
    /// ping instead of after the lease expires.
    pub async fn release_lease(&self) -> Result<(), BusError> {
        let backend = self.bus.backend()?;
        let key = self.bus.names().control_lease();
        if backend.get(&key).await?.as_deref() == Some(self.instance()) {
            backend.delete(&key).await?;
        }
        Ok(())
    }

    /// Reads every entry. Values that are not registry entries are skipped and counted.
    pub async fn load(&self) -> Result<Vec<RegistryEntry>, BusError> {
        let fields = self
            .bus
            .backend()?
            .hash_get_all(&self.bus.names().services())
            .await?;
        let mut entries = Vec::with_capacity(fields.len());
        for (field, value) in fields {
            match serde_json::from_str::<RegistryEntry>(&value) {
                Ok(entry) => entries.push(entry),
                Err(error) => {
                    metrics::counter!("almagest_control_registry_invalid_total").increment(1);
                    tracing::warn!(field = %field, error = %error, "skipped an invalid registry entry");
                }
            }
        }
        Ok(entries)
    }

    /// Writes entries in one command.
    pub async fn store(&self, entries: &[RegistryEntry]) -> Result<(), BusError> {
        if entries.is_empty() {
            return Ok(());
        }
        let fields: Vec<(String, String)> = entries
            .iter()
            .map(|entry| {
                let value = serde_json::to_string(entry)
                    .expect("a registry entry has only strings and numbers, so it serializes");
                (liveness::field(&entry.service, &entry.instance), value)
            })
            .collect();
        self.bus
            .backend()?
            .hash_set(&self.bus.names().services(), &fields)
            .await
    }

    /// Marks an `up` entry stopped directly in Redis, for a standby that receives a goodbye,
    /// because a watcher that is being replaced does not record it. The watcher never undoes
    /// this, because it writes `up` only for a pong, and a service sends none after its
    /// goodbye. Returns whether the entry changed.
    pub async fn mark_stopped(
        &self,
        service: &str,
        instance: &str,
        since: String,
    ) -> Result<bool, BusError> {
        let backend = self.bus.backend()?;
        let key = self.bus.names().services();
        let field = liveness::field(service, instance);
        let Some(value) = backend.hash_get(&key, &field).await? else {
            return Ok(false);
        };
        let Ok(mut entry) = serde_json::from_str::<RegistryEntry>(&value) else {
            return Ok(false);
        };
        if entry.state != ServiceState::Up {
            return Ok(false);
        }
        entry.state = ServiceState::Stopped;
        entry.since = since;
        self.store(&[entry]).await?;
        Ok(true)
    }

    /// Deletes entries in one command.
    pub async fn remove(&self, entries: &[RegistryEntry]) -> Result<(), BusError> {
        if entries.is_empty() {
            return Ok(());
        }
        let fields: Vec<String> = entries
            .iter()
            .map(|entry| liveness::field(&entry.service, &entry.instance))
            .collect();
        self.bus
            .backend()?
            .hash_delete(&self.bus.names().services(), &fields)
            .await
            .map(|_| ())
    }

    /// Tells people about a change and publishes its event. Failures are logged: the change
    /// is already stored, so retrying would announce it twice.
    pub async fn announce(&self, change: &Change, missed_pings_for_down: u32) {
        let entry = change.entry();
        let name = liveness::field(&entry.service, &entry.instance);
        let (kind, notification) = match change {
            Change::Down(entry) => {
                tracing::warn!(service = %name, last_pong_at = %entry.since, "service down");
                let text = format!(
                    "{name} missed {missed_pings_for_down} pings in a row; its last answer was \
                     at {}.",
                    entry.since
                );
                let notification = Notification::text(text)
                    .with_title(format!("{name} is down"))
                    .with_level(Level::Error);
                ("service.down", notification)
            }
            Change::Up { entry, down_since } => {
                let down_for = downtime(down_since, &entry.since);
                tracing::info!(service = %name, down_for = %down_for, "service up");
                let text = format!(
                    "{name} answers again after {down_for} down (version {}, {} restarts).",
                    entry.version, entry.restarts
                );
                let notification = Notification::text(text)
                    .with_title(format!("{name} is up"))
                    .with_level(Level::Info);
                ("service.up", notification)
            }
        };
        metrics::counter!("almagest_control_announcements_total", "kind" => kind).increment(1);
        if let Err(error) = self.bus.notify(&notification.with_source(SOURCE)).await {
            tracing::warn!(service = %name, error = %error, "could not send the {kind} notice");
        }
        self.publish_event(kind, entry).await;
    }

    /// Publishes the `service.forgotten` event of an entry removed from the registry.
    pub async fn announce_forgotten(&self, entry: &RegistryEntry) {
        let name = liveness::field(&entry.service, &entry.instance);
        tracing::info!(service = %name, last_pong_at = ?entry.last_pong_at, "service forgotten");
        self.publish_event("service.forgotten", entry).await;
    }

    /// Tells people that this instance could not reach Redis for `duration` from `since`:
    /// one notice in place of a "down" for every service.
    pub async fn announce_bus_outage(&self, since: &str, duration: Duration) {
        let instance = self.instance();
        let text = format!(
            "{instance} could not reach Redis for {} from {since}. Services that missed pings \
             meanwhile are not reported down.",
            format_uptime(duration)
        );
        let notification = Notification::text(text)
            .with_title("Redis was unreachable")
            .with_level(Level::Warn)
            .with_source(SOURCE);
        metrics::counter!("almagest_control_announcements_total", "kind" => "bus.outage")
            .increment(1);
        if let Err(error) = self.bus.notify(&notification).await {
            tracing::warn!(error = %error, "could not send the bus outage notice");
        }
    }

    async fn publish_event(&self, kind: &'static str, entry: &RegistryEntry) {
        let event = ServiceEvent {
            kind,
            service: &entry.service,
            instance: &entry.instance,
            since: &entry.since,
        };
        if let Err(error) = self.bus.publish_event(SOURCE, &event).await {
            tracing::warn!(
                service = %liveness::field(&entry.service, &entry.instance),
                error = %error,
                "could not publish the {kind} event"
            );
        }
    }
}

/// Formats the time between two RFC 3339 timestamps as `12m05s`, or `an unknown time`.
fn downtime(from: &str, to: &str) -> String {
    let parse = |text: &str| chrono::DateTime::parse_from_rfc3339(text).ok();
    match (parse(from), parse(to)) {
        (Some(from), Some(to)) => {
            let elapsed = to.signed_duration_since(from).to_std().unwrap_or_default();
            format_uptime(elapsed)
        }
        _ => "an unknown time".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downtime_formats_difference() {
        assert_eq!(
            downtime("2026-12-04T17:00:00.000Z", "2026-12-04T17:12:05.000Z"),
            "12m05s"
        );
    }

    #[test]
    fn downtime_unknown_for_bad_times() {
        assert_eq!(
            downtime("soon", "2026-12-04T17:12:05.000Z"),
            "an unknown time"
        );
    }

    #[test]
    fn event_shape() {
        let event = ServiceEvent {
            kind: "service.down",
            service: "api",
            instance: "nas",
            since: "2026-12-04T17:00:00.000Z",
        };
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "type": "service.down",
                "service": "api",
                "instance": "nas",
                "since": "2026-12-04T17:00:00.000Z"
            })
        );
    }
}

//! The delivery loop: reads `P:notify:stream` with the consumer group `discord` and delivers
//! each entry to Discord, one at a time and in order.
//!
//! An entry is acknowledged only after Discord accepted every part of it, or after it was
//! written to `P:notify:dead`. On start, entries that another consumer left pending for
//! `discord.claim_idle_secs` are claimed, and this consumer's own pending entries (read but
//! not acknowledged before a crash or restart) are delivered again before new ones. A 401 or
//! 403 stops consumption without acknowledging anything: the same entry is tried again every
//! `discord.recheck_secs` until Discord accepts it.

use std::sync::Arc;
use std::time::Duration;

use crate::bus::wire::{Notification, now_rfc3339};
use crate::bus::{Backend, Bus, BusError, ReadFrom, StreamEntry};

use super::config::DiscordConfig;
use super::deliver::{Outcome, Progress, RetryPolicy, Sender, describe};
use super::render::{AllowedMentions, render, route};

/// Consumer group of the notification stream.
pub const GROUP: &str = "discord";

/// Cap of `P:notify:dead`: enough to inspect a bad day, and it cannot grow without bound.
pub const DEAD_MAX_LEN: u64 = 1000;

/// Wait of one blocking read. A few seconds keeps the blocking connection responsive to
/// shutdown and lets a lost bus be noticed soon.
const READ_BLOCK: Duration = Duration::from_secs(5);

/// Entries read at a time. Delivery is one entry at a time anyway, so a small batch keeps
/// little in memory that a crash would leave pending.
const READ_COUNT: usize = 16;

/// First wait after a failed bus operation, doubled up to [`MAX_BUS_BACKOFF`].
const INITIAL_BUS_BACKOFF: Duration = Duration::from_millis(200);

/// Maximum wait between bus retries; the gateway reconnects Redis on its own, so this only
/// bounds how late the loop notices.
const MAX_BUS_BACKOFF: Duration = Duration::from_secs(5);

/// Reads the notification stream and delivers it.
pub struct Consumer {
    pub bus: Bus,
    pub sender: Arc<Sender>,
    pub config: Arc<DiscordConfig>,
    /// Consumer name within the group: the instance name, so that a restarted instance finds
    /// its own pending entries.
    pub name: String,
    pub policy: RetryPolicy,
}

impl Consumer {
    /// Runs until the task is dropped.
    pub async fn run(self) {
        let mentions = AllowedMentions::from_config(&self.config);
        let mut bus_failing = false;
        let mut backoff = INITIAL_BUS_BACKOFF;

        loop {
            let result = self.consume(&mentions).await;
            let Err(error) = result;
            if !bus_failing {
                tracing::warn!(error = %error, "notification stream unavailable, retrying");
                bus_failing = true;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BUS_BACKOFF);
            if self.bus.is_connected() {
                tracing::info!("notification stream available again");
                bus_failing = false;
                backoff = INITIAL_BUS_BACKOFF;
            }
        }
    }

    /// Recovers pending entries, then reads new ones, until a bus operation fails.
    async fn consume(
        &self,
        mentions: &AllowedMentions,
    ) -> Result<std::convert::Infallible, BusError> {
        let stream = self.bus.names().notify_stream();
        let backend = self.bus.backend()?;
        // Start at 0 so entries added before the group existed (the bot never ran) are read.
        backend.stream_create_group(&stream, GROUP, "0").await?;

        let claimed = backend
            .stream_claim_idle(
                &stream,
                GROUP,
                &self.name,
                self.config.claim_idle,
                READ_COUNT,
            )
            .await?;
        if !claimed.is_empty() {
            tracing::info!(
                count = claimed.len(),
                "claimed notifications another consumer left pending"
            );
        }
        loop {
            let backend = self.bus.backend()?;
            // Every entry this loop reads is acknowledged before the next read. So an entry
            // pending here was read under this consumer's name by someone else: the instance
            // before a restart, or its aborted blocking read, which stays in Redis until an
            // entry arrives or the block ends, and takes the entry with it.
            let mut entries = self.read(&backend, ReadFrom::Pending, None).await?;
            if entries.is_empty() {
                entries = self.read(&backend, ReadFrom::New, Some(READ_BLOCK)).await?;
            }
            for entry in entries {
                self.process(&entry, mentions).await?;
            }
        }
    }

    async fn read(
        &self,
        backend: &Arc<dyn Backend>,
        from: ReadFrom,
        block: Option<Duration>,
    ) -> Result<Vec<StreamEntry>, BusError> {
        let stream = self.bus.names().notify_stream();
        backend
            .stream_read_group(&stream, GROUP, &self.name, from, READ_COUNT, block)
            .await
    }

    /// Delivers one entry and then acknowledges it, or writes it to the dead-letter stream
    /// and acknowledges it. Returns an error only when the bus failed, with the entry still
    /// pending, so it is read again.
    async fn process(
        &self,
        entry: &StreamEntry,
        mentions: &AllowedMentions,
    ) -> Result<(), BusError> {
        let payload = entry.get("n").unwrap_or_default();
        let notification = match Notification::decode(payload) {
            Ok(notification) => notification,
            Err(error) => {
                let error = format!("invalid notification: {error}");
                return self.dead_letter(entry, payload, &error, 0).await;
            }
        };
        let Some(destination) = route(&notification, &self.config) else {
            // Only reachable when no destination is configured, and then no consumer runs.
            return self
                .dead_letter(entry, payload, "no destination configured", 0)
                .await;
        };
        let parts = render(&notification, mentions);

        let mut progress = Progress::default();
        let mut stopped = false;
        loop {
            let outcome = self
                .sender
                .deliver(destination, &parts, &mut progress, &self.policy)
                .await;
            match outcome {
                Outcome::Delivered => {
                    if stopped {
                        tracing::info!(entry = %entry.id, "discord accepts notifications again");
                    }
                    metrics::counter!("almagest_discord_delivered_total").increment(1);
                    return self.ack(entry).await;
                }
                Outcome::Dead { error } => {
                    return self
                        .dead_letter(entry, payload, &error, progress.attempts)
                        .await;
                }
                Outcome::Stopped { error } => {
                    if !stopped {
                        tracing::error!(
                            entry = %entry.id,
                            destination = %describe(destination),
                            error = %error,
                            fix = error.remedy(),
                            recheck_secs = self.config.recheck_interval.as_secs(),
                            "discord rejected the credentials; notifications wait until it accepts them"
                        );
                        stopped = true;
                    }
                    tokio::time::sleep(self.config.recheck_interval).await;
                }
            }
        }
    }

    async fn ack(&self, entry: &StreamEntry) -> Result<(), BusError> {
        let stream = self.bus.names().notify_stream();
        let ids = [entry.id.clone()];
        retry_bus(|| async { self.bus.backend()?.stream_ack(&stream, GROUP, &ids).await }).await;
        Ok(())
    }

    /// Writes the entry to `P:notify:dead` with the error, then acknowledges it.
    async fn dead_letter(
        &self,
        entry: &StreamEntry,
        payload: &str,
        error: &str,
        attempts: u32,
    ) -> Result<(), BusError> {
        tracing::warn!(entry = %entry.id, error = %error, attempts, "notification dead-lettered");
        metrics::counter!("almagest_discord_dead_letters_total").increment(1);
        let dead = self.bus.names().notify_dead();
        let fields = [
            ("n".to_owned(), payload.to_owned()),
            ("error".to_owned(), error.to_owned()),
            ("attempts".to_owned(), attempts.to_string()),
            ("at".to_owned(), now_rfc3339()),
        ];
        retry_bus(|| async {
            self.bus
                .backend()?
                .stream_add(&dead, &fields, Some(DEAD_MAX_LEN))
                .await
        })
        .await;
        self.ack(entry).await
    }
}

/// Retries a bus write until it succeeds. Used after Discord accepted (or finally rejected)
/// an entry, where giving up would deliver it twice.
async fn retry_bus<T, F, Fut>(mut operation: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BusError>>,
{
    let mut backoff = INITIAL_BUS_BACKOFF;
    let mut logged = false;
    loop {
        match operation().await {
            Ok(value) => return value,
            Err(error) => {
                if !logged {
                    tracing::warn!(error = %error, "bus write after delivery failed, retrying");
                    logged = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BUS_BACKOFF);
            }
        }
    }
}

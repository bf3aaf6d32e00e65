//! The torrent service actor, under the services supervisor as `torrent@<instance>`.
//!
//! Each configured client has a poll task in the actor's state (dropped with it, so a
//! restarted service leaves none behind). A task lists its client's torrents every
//! `poll_interval_secs`, backing off while the client fails, and sends the result to the
//! actor. The actor loads the stored state of hashes it has not seen yet, runs the diff,
//! stores the new state and only then publishes events and notices: a failure between the two
//! loses an announcement rather than repeating it. A done-hook message on `P:torrent:done`
//! wakes the client's task at once and marks the hash as reported done for the next diff.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ractor::ActorRef;
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;

use super::NAME;
use super::client::{ClientError, TorrentClient};
use super::config::{ClientConfig, TorrentConfig};
use super::diff::{DiffInput, EventKind, Seen, TorrentEvent, diff};
use super::hook::DoneReport;
use super::model::{InfoHash, Torrent};
use super::notice::{Level, event_json, inert, notice};
use crate::bus::wire::{self, Notification};
use crate::bus::{BusError, BusMessage, Topic, Write};
use crate::service::{Context, Service, ServiceError, ServiceMessage};

/// Maximum wait between polls of a failing client: short enough that "back" is noticed
/// within minutes, long enough not to hammer a client that is down for a night.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Shortest time a stored torrent must be missing before it counts as removed; see
/// `removal_grace` in the diff. Two poll periods are used when they are longer.
const MIN_REMOVAL_GRACE: Duration = Duration::from_secs(60);
/// How often the expiry of a present torrent's state key is pushed forward. Once a day keeps
/// the write load negligible against a TTL of days.
const TTL_REFRESH: Duration = Duration::from_secs(86_400);
/// Most done reports kept per client until its next poll; a flood of reports for invented
/// hashes cannot grow the set further.
const MAX_PENDING_REPORTS: usize = 10_000;

pub struct TorrentService;

pub enum TorrentMsg {
    /// A client's poll task finished one poll.
    Polled {
        client: usize,
        result: Result<Vec<Torrent>, ClientError>,
    },
}

pub struct TorrentServiceState {
    clients: Vec<ClientSlot>,
    /// Stored state of every hash listed by a client since start, loaded from the bus on first
    /// sight. Bounded by the clients' lists: removed torrents are dropped.
    cache: HashMap<InfoHash, Cached>,
}

struct Cached {
    seen: Seen,
    /// When the key's expiry was last set.
    written: Instant,
}

struct ClientSlot {
    config: ClientConfig,
    wake: Arc<Notify>,
    _task: AbortOnDropHandle<()>,
    /// Hashes that a done-hook reported since the last poll.
    reported_done: HashSet<InfoHash>,
    /// Whether the baseline marker is stored; `None` until read from the bus.
    baseline_taken: Option<bool>,
    baseline_written: Option<Instant>,
    health: Health,
}

/// Reachability of one client, for "logged once, one notice after `down_after_secs`, one
/// when back".
#[derive(Default)]
struct Health {
    failing_since: Option<Instant>,
    failures: u32,
    down_notified: bool,
}

impl Service for TorrentService {
    const NAME: &'static str = NAME;
    type Config = TorrentConfig;
    type State = TorrentServiceState;
    type Msg = TorrentMsg;

    fn topics(ctx: &Context<Self>) -> Vec<Topic> {
        vec![Topic::Channel(ctx.names().torrent_done())]
    }

    async fn start(ctx: &Context<Self>) -> Result<TorrentServiceState, ServiceError> {
        let mut clients = Vec::with_capacity(ctx.config.clients.len());
        for (index, config) in ctx.config.clients.iter().enumerate() {
            let client = TorrentClient::new(config, ctx.config.request_timeout())?;
            let wake = Arc::new(Notify::new());
            let task = tokio::spawn(poll_loop(
                client,
                index,
                ctx.myself.clone(),
                wake.clone(),
                ctx.config.poll_interval(),
            ));
            tracing::info!(client = %config.name, kind = config.kind.as_str(), url = %config.url, "polling torrent client");
            clients.push(ClientSlot {
                config: config.clone(),
                wake,
                _task: AbortOnDropHandle::new(task),
                reported_done: HashSet::new(),
                baseline_taken: None,
                baseline_written: None,
                health: Health::default(),
            });
        }
        Ok(TorrentServiceState {
            clients,
            cache: HashMap::new(),
        })
    }

    async fn handle(
        ctx: &Context<Self>,
        state: &mut TorrentServiceState,
        message: TorrentMsg,
    ) -> Result<(), ServiceError> {
        match message {
            TorrentMsg::Polled { client, result } => state.polled(ctx, client, result).await,
        }
        Ok(())
    }

    async fn on_message(
        _ctx: &Context<Self>,
        state: &mut TorrentServiceState,
        message: BusMessage,
    ) -> Result<(), ServiceError> {
        state.done_reported(&message.payload);
        Ok(())
    }
}

/// Polls one client until the task is dropped: at once, then every `interval`, or sooner
/// when woken. After failures the wait doubles up to [`MAX_BACKOFF`].
async fn poll_loop(
    mut client: TorrentClient,
    index: usize,
    actor: ActorRef<ServiceMessage<TorrentMsg>>,
    wake: Arc<Notify>,
    interval: Duration,
) {
    let mut delay = Duration::ZERO;
    let mut failures: u32 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wake.notified() => {}
        }
        let result = client.torrents().await;
        if result.is_ok() {
            failures = 0;
            delay = interval;
        } else {
            failures = failures.saturating_add(1);
            let factor = 2u32.saturating_pow(failures.min(16));
            delay = interval
                .saturating_mul(factor)
                .min(MAX_BACKOFF.max(interval));
        }
        let message = TorrentMsg::Polled {
            client: index,
            result,
        };
        if actor.cast(ServiceMessage::Own(message)).is_err() {
            return;
        }
    }
}

impl TorrentServiceState {
    async fn polled(
        &mut self,
        ctx: &Context<TorrentService>,
        index: usize,
        result: Result<Vec<Torrent>, ClientError>,
    ) {
        match result {
            Err(error) => self.client_failed(ctx, index, &error).await,
            Ok(torrents) => {
                self.client_answered(ctx, index).await;
                if let Err(error) = self.announce(ctx, index, &torrents).await {
                    // The state was not stored, so the next poll runs the same diff again.
                    tracing::warn!(client = %self.clients[index].config.name, error = %error, "torrent poll not processed");
                }
            }
        }
    }

    /// Runs the diff for one poll, stores the result, then publishes.
    async fn announce(
        &mut self,
        ctx: &Context<TorrentService>,
        index: usize,
        torrents: &[Torrent],
    ) -> Result<(), BusError> {
        let backend = ctx.bus.backend()?;
        let names = ctx.names();
        let config = &ctx.config;
        let slot = &mut self.clients[index];
        let client = slot.config.name.clone();

        // Load what is stored: the baseline marker and every hash not cached yet.
        let baseline_taken = match slot.baseline_taken {
            Some(taken) => taken,
            None => backend
                .get(&names.torrent_baseline(&client))
                .await?
                .is_some(),
        };
        for torrent in torrents {
            if self.cache.contains_key(&torrent.hash) {
                continue;
            }
            if let Some(seen) =
                load_seen(&*backend, &names.torrent_seen(torrent.hash.as_str())).await?
            {
                self.cache.insert(
                    torrent.hash.clone(),
                    Cached {
                        seen,
                        written: Instant::now(),
                    },
                );
            }
        }

        // Diff against the cache.
        let stored: HashMap<InfoHash, Seen> = self
            .cache
            .iter()
            .map(|(hash, cached)| (hash.clone(), cached.seen.clone()))
            .collect();
        let now = Utc::now();
        let outcome = diff(&DiffInput {
            client: &client,
            torrents,
            stored: &stored,
            reported_done: &slot.reported_done,
            baseline: !baseline_taken,
            notify_added_complete: config.notify_added_complete,
            removal_grace: config
                .poll_interval()
                .saturating_mul(2)
                .max(MIN_REMOVAL_GRACE),
            now,
        });

        // Store first: new state, expiry refreshes, the baseline marker.
        let ttl = config.seen_ttl();
        let mut writes = Vec::new();
        let updated: HashSet<&InfoHash> = outcome.updates.iter().map(|(hash, _)| hash).collect();
        for (hash, seen) in &outcome.updates {
            let value = serde_json::to_string(seen).expect("stored state always serializes");
            writes.push(Write::Set {
                key: names.torrent_seen(hash.as_str()),
                value,
                ttl: Some(ttl),
            });
        }
        for torrent in torrents {
            let stale = self
                .cache
                .get(&torrent.hash)
                .is_some_and(|cached| cached.written.elapsed() >= TTL_REFRESH);
            if stale && !updated.contains(&torrent.hash) {
                writes.push(Write::Expire {
                    key: names.torrent_seen(torrent.hash.as_str()),
                    ttl,
                });
            }
        }
        let marker_stale = slot
            .baseline_written
            .is_none_or(|written| written.elapsed() >= TTL_REFRESH);
        if marker_stale {
            writes.push(Write::Set {
                key: names.torrent_baseline(&client),
                value: wire::now_rfc3339(),
                ttl: Some(ttl),
            });
        }
        backend.apply(writes).await?;

        // The store succeeded: update the cache and the client's bookkeeping.
        let written = Instant::now();
        for torrent in torrents {
            if let Some(cached) = self.cache.get_mut(&torrent.hash)
                && cached.written.elapsed() >= TTL_REFRESH
            {
                cached.written = written;
            }
        }
        for (hash, seen) in outcome.updates {
            if seen.removed {
                self.cache.remove(&hash);
            } else {
                self.cache.insert(hash, Cached { seen, written });
            }
        }
        slot.baseline_taken = Some(true);
        if marker_stale {
            slot.baseline_written = Some(written);
        }
        slot.reported_done.clear();
        if !baseline_taken {
            tracing::info!(client = %client, torrents = torrents.len(), "torrent baseline stored");
        }

        for event in &outcome.events {
            publish(ctx, event, now).await;
        }
        Ok(())
    }

    fn done_reported(&mut self, payload: &str) {
        let report = match DoneReport::parse(payload.as_bytes()) {
            Ok(report) => report,
            Err(error) => {
                metrics::counter!("almagest_torrent_done_reports_invalid_total").increment(1);
                tracing::debug!(error = %error, "ignored an invalid done report");
                return;
            }
        };
        let Some(slot) = self
            .clients
            .iter_mut()
            .find(|slot| slot.config.name == report.client)
        else {
            metrics::counter!("almagest_torrent_done_reports_invalid_total").increment(1);
            tracing::debug!(client = %report.client, "ignored a done report for an unknown client");
            return;
        };
        if slot.reported_done.len() < MAX_PENDING_REPORTS {
            slot.reported_done.insert(report.hash);
        }
        slot.wake.notify_one();
    }

    async fn client_failed(
        &mut self,
        ctx: &Context<TorrentService>,
        index: usize,
        error: &ClientError,
    ) {
        let slot = &mut self.clients[index];
        let health = &mut slot.health;
        health.failures += 1;
        let since = *health.failing_since.get_or_insert_with(|| {
            tracing::warn!(client = %slot.config.name, error = %error, "torrent client unreachable; polling continues with backoff");
            Instant::now()
        });
        if health.down_notified || since.elapsed() < ctx.config.down_after() {
            return;
        }
        let client = inert(&slot.config.name);
        let notification = Notification::text(format!(
            "Torrent client {client} has been unreachable for {}: {}",
            super::notice::format_duration(since.elapsed()),
            inert(&error.to_string()),
        ))
        .with_title("Torrent client unreachable")
        .with_level(wire::Level::Warn);
        health.down_notified = send_notice(ctx, notification).await;
    }

    async fn client_answered(&mut self, ctx: &Context<TorrentService>, index: usize) {
        let slot = &mut self.clients[index];
        let health = std::mem::take(&mut slot.health);
        let Some(since) = health.failing_since else {
            return;
        };
        tracing::info!(client = %slot.config.name, failed_polls = health.failures, "torrent client reachable again");
        if health.down_notified {
            let notification = Notification::text(format!(
                "Torrent client {} is reachable again after {}.",
                inert(&slot.config.name),
                super::notice::format_duration(since.elapsed()),
            ))
            .with_title("Torrent client back");
            send_notice(ctx, notification).await;
        }
    }
}

async fn load_seen(backend: &dyn crate::bus::Backend, key: &str) -> Result<Option<Seen>, BusError> {
    let Some(text) = backend.get(key).await? else {
        return Ok(None);
    };
    match serde_json::from_str(&text) {
        Ok(seen) => Ok(Some(seen)),
        Err(error) => {
            // Announcing once more beats staying silent for a torrent forever.
            tracing::warn!(key, error = %error, "ignored invalid stored torrent state");
            Ok(None)
        }
    }
}

/// Publishes the event on `P:events:torrent` and, where configured, a notice.
async fn publish(ctx: &Context<TorrentService>, event: &TorrentEvent, now: chrono::DateTime<Utc>) {
    if let Err(error) = ctx.bus.publish_event(NAME, &event_json(event, now)).await {
        tracing::warn!(client = %event.client, hash = %event.hash, error = %error, "torrent event not published");
    }
    let config = &ctx.config;
    let wanted = match event.kind {
        EventKind::Added => config.notify_added,
        EventKind::Completed => true,
        EventKind::Error => config.notify_errors,
        EventKind::Removed => config.notify_removed,
    };
    if !wanted {
        return;
    }
    let notice = notice(event);
    let level = match notice.level {
        Level::Info => wire::Level::Info,
        Level::Warn => wire::Level::Warn,
        Level::Error => wire::Level::Error,
    };
    let mut notification = Notification::text(notice.text)
        .with_title(notice.title)
        .with_level(level);
    for (name, value) in notice.fields {
        notification = notification.with_field(name, value);
    }
    send_notice(ctx, notification).await;
}

/// Sends a notice with this service's source and route; returns whether it was stored.
async fn send_notice(ctx: &Context<TorrentService>, notification: Notification) -> bool {
    let mut notification = notification.with_source(NAME);
    notification.route = ctx.config.route.clone();
    match ctx.bus.notify(&notification).await {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(error = %error, title = notification.title.as_deref().unwrap_or(""), "torrent notice not sent");
            false
        }
    }
}

//! The dnslog work loop: stored state in, sources started, lines parsed into counts and
//! presence, everything written back in one transaction per flush.
//!
//! Phases:
//!
//! 1. Load what is stored (device states, each source's resume point), retrying until Redis is
//!    reachable, because only a source with no stored point may start at the end.
//! 2. Start the sources. They send batches into a bounded channel.
//! 3. Parse every line, count it, and feed presence. Once a second (or sooner when the
//!    counts grow large) write the counts, the sources' resume points and the changed device
//!    states in one `MULTI`/`EXEC`, then publish the presence events of that flush.
//!
//! While a write fails (Redis down), the loop stops reading the channel and retries the same
//! write with backoff, so the sources stop at their positions and nothing counted is
//! dropped. A file source then simply waits on disk. A command or standard input is held
//! back by the pipe.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::task::AbortOnDropHandle;

use super::NAME;
use super::aggregate::Aggregator;
use super::config::{DnslogConfig, SourceKind, StartAt};
use super::parse::{SkipCounts, parse};
use super::presence::{DeviceState, Presence, Transition, TransitionKind};
use super::source::command::Backoff;
use super::source::file::POLL_INTERVAL;
use super::source::{
    Batch, Checkpoint, CommandSource, FileSource, FileStart, SourceId, follow_file, read_stream,
    run_command,
};
use super::store;
use super::time::Timestamp;
use crate::bus::wire::Notification;
use crate::bus::{Bus, BusError, Write};
use crate::torrent::notice::format_duration;

/// Batches waiting between the sources and the loop. A file batch is up to 2 MiB of log
/// (about 18,000 query lines, some 3 MB in memory), so 4 keep the queue near 12 MB while
/// still letting a source read ahead of a write.
const SOURCE_QUEUE: usize = 4;
/// Time between flushes: counts show up within a second, and one transaction a second is
/// negligible load for Redis.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// First and longest wait before a failed read or write is tried again. The bus status also
/// wakes a retry at once when Redis is back.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long departures wait for the sources to catch up after a start. Until every file
/// has been read to its end (or this passed), a device's last query may still be in the
/// unread part, and a departure decided on the clock would be false.
const STARTUP_GRACE: Duration = Duration::from_secs(30);

/// A flush that was not stored yet, kept as it is until a retry stores it.
struct Unsent {
    writes: Vec<Write>,
    transitions: Vec<Transition>,
}

pub struct Pipeline {
    config: Arc<DnslogConfig>,
    bus: Bus,
    presence: Presence,
    aggregator: Aggregator,
    /// Resume points received since the last flush, by source index.
    checkpoints: BTreeMap<usize, Checkpoint>,
    /// Devices whose state changed since the last flush.
    changed_devices: BTreeSet<usize>,
    transitions: Vec<Transition>,
    unsent: Option<Unsent>,
    /// Per source: whether it has read everything written before now at least once.
    caught_up: Vec<bool>,
    sources_started: Option<Instant>,
    /// Whether the last bus operation failed, so that only changes are logged.
    failing: bool,
}

impl Pipeline {
    pub fn new(config: Arc<DnslogConfig>, bus: Bus) -> Self {
        let presence = Presence::new(config.devices.clone());
        let caught_up = vec![false; config.sources.len()];
        Self {
            config,
            bus,
            presence,
            aggregator: Aggregator::new(),
            checkpoints: BTreeMap::new(),
            changed_devices: BTreeSet::new(),
            transitions: Vec::new(),
            unsent: None,
            caught_up,
            sources_started: None,
            failing: false,
        }
    }

    /// Runs until `stop` fires (then writes what is counted and returns) or the task is
    /// dropped.
    pub async fn run(mut self, mut status: watch::Receiver<bool>, mut stop: oneshot::Receiver<()>) {
        let stored = tokio::select! {
            stored = self.load_until_ready(&mut status) => stored,
            _ = &mut stop => return,
        };
        let (tx, mut rx) = mpsc::channel(SOURCE_QUEUE);
        let _sources = self.spawn_sources(stored, &tx);
        drop(tx);

        let mut timer = tokio::time::interval(FLUSH_INTERVAL);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = RETRY_FIRST;
        loop {
            if self.unsent.is_some() {
                tokio::select! {
                    _ = &mut stop => break,
                    () = wait_for_retry(&mut status, retry) => {}
                }
                retry = if self.write().await {
                    RETRY_FIRST
                } else {
                    (retry * 2).min(RETRY_MAX)
                };
                continue;
            }
            tokio::select! {
                _ = &mut stop => break,
                Some((id, batch)) = rx.recv() => {
                    self.take(id, batch);
                    if self.aggregator.is_full() {
                        self.write().await;
                    }
                }
                _ = timer.tick() => {
                    self.tick_presence();
                    self.write().await;
                }
            }
        }
        if !self.write().await {
            tracing::warn!("dnslog stopped with counts it could not store");
        }
    }

    /// Reads the stored state, retrying until it succeeds; returns each source's resume point.
    async fn load_until_ready(
        &mut self,
        status: &mut watch::Receiver<bool>,
    ) -> Vec<Option<Checkpoint>> {
        let mut retry = RETRY_FIRST;
        loop {
            match self.load().await {
                Ok(stored) => {
                    self.bus_recovered();
                    return stored;
                }
                Err(error) => {
                    self.bus_failed(&error, "cannot read the stored dnslog state; retrying");
                    wait_for_retry(status, retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    async fn load(&mut self) -> Result<Vec<Option<Checkpoint>>, BusError> {
        let backend = self.bus.backend()?;
        let names = self.bus.names();
        let stored_devices = backend.hash_get_all(&names.dns_devices()).await?;
        let mut states = Vec::new();
        for (device, text) in &stored_devices {
            match serde_json::from_str::<DeviceState>(text) {
                Ok(state) => states.push((device.as_str(), state)),
                Err(error) => {
                    tracing::warn!(device, error = %error, "ignored an invalid stored device state")
                }
            }
        }
        self.presence.import(states);

        let mut checkpoints = Vec::with_capacity(self.config.sources.len());
        for source in &self.config.sources {
            let fields = backend
                .hash_get_all(&names.dnslog_offset(&source.name))
                .await?;
            let checkpoint = store::parse_checkpoint(&fields);
            if checkpoint.is_none() && !fields.is_empty() {
                tracing::warn!(source = %source.name, "ignored an invalid stored source position");
            }
            checkpoints.push(checkpoint);
        }
        Ok(checkpoints)
    }

    /// Starts one task per source; the tasks stop when the returned handles are dropped.
    fn spawn_sources(
        &mut self,
        stored: Vec<Option<Checkpoint>>,
        tx: &mpsc::Sender<(SourceId, Batch)>,
    ) -> Vec<AbortOnDropHandle<()>> {
        self.sources_started = Some(Instant::now());
        let mut tasks = Vec::new();
        for (index, (source, checkpoint)) in self.config.sources.iter().zip(stored).enumerate() {
            let id = SourceId(index);
            let tx = tx.clone();
            let task = match &source.kind {
                SourceKind::File { path, start_at } => {
                    let start = match (checkpoint, start_at) {
                        (Some(Checkpoint::File(position)), _) => FileStart::Resume(position),
                        (_, StartAt::End) => FileStart::End,
                        (_, StartAt::Beginning) => FileStart::Beginning,
                    };
                    tracing::info!(source = %source.name, start = ?start, "following the query log");
                    let file = FileSource {
                        path: path.clone(),
                        start,
                        poll_interval: POLL_INTERVAL,
                    };
                    tokio::spawn(follow_file(id, file, tx))
                }
                SourceKind::Stdin => tokio::spawn(read_stream(id, tokio::io::stdin(), tx)),
                SourceKind::Command { argv, env } => {
                    let replay = match checkpoint {
                        Some(Checkpoint::Command(mark)) => mark,
                        _ => Default::default(),
                    };
                    let command = CommandSource {
                        argv: argv.clone(),
                        env: env.clone(),
                        replay,
                        backoff: Backoff::default(),
                    };
                    tokio::spawn(run_command(id, command, tx))
                }
            };
            tasks.push(AbortOnDropHandle::new(task));
        }
        tasks
    }

    /// Parses, counts and observes the lines of one batch.
    fn take(&mut self, id: SourceId, batch: Batch) {
        let now = Timestamp::now();
        let mut skipped: SkipCounts = batch.skipped;
        let mut queries = 0u64;
        for line in &batch.lines {
            let query = match parse(&line.text) {
                Ok(query) => query,
                Err(kind) => {
                    skipped.add(kind);
                    continue;
                }
            };
            queries += 1;
            // The innermost time a wrapper gave, else CoreDNS's own, else the time read.
            let at = line.timestamp.or(query.timestamp).unwrap_or(now);
            self.aggregator.add(&query, at);
            if let Some(device) = self.presence.device_for(query.client) {
                self.changed_devices.insert(device);
                let transitions = self.presence.observe(query.client, &query.name, at);
                self.transitions.extend(transitions);
            }
        }
        metrics::counter!("almagest_dnslog_queries_total").increment(queries);
        for (kind, count) in skipped.iter() {
            metrics::counter!("almagest_dnslog_lines_skipped_total", "kind" => kind.as_str())
                .increment(count);
        }
        if let Some(checkpoint) = batch.checkpoint {
            self.checkpoints.insert(id.0, checkpoint);
        }
        if batch.caught_up && !self.caught_up[id.0] {
            self.caught_up[id.0] = true;
            tracing::debug!(source = %self.config.sources[id.0].name, "source caught up");
        }
    }

    /// Declares away the devices that have been quiet too long, once the sources allow it.
    fn tick_presence(&mut self) {
        let all_caught_up = self.caught_up.iter().all(|&caught_up| caught_up);
        let grace_over = self
            .sources_started
            .is_some_and(|started| started.elapsed() >= STARTUP_GRACE);
        if !all_caught_up && !grace_over {
            return;
        }
        let transitions = self.presence.tick(Timestamp::now());
        for transition in &transitions {
            self.changed_devices.insert(transition.device);
        }
        self.transitions.extend(transitions);
    }

    /// Stores everything pending in one transaction, then publishes its presence events.
    /// Returns whether nothing is left unsent.
    async fn write(&mut self) -> bool {
        if self.unsent.is_none() {
            let unsent = self.collect();
            if unsent.writes.is_empty() && unsent.transitions.is_empty() {
                return true;
            }
            self.unsent = Some(unsent);
        }
        let Some(unsent) = &self.unsent else {
            return true;
        };
        // NOTE: a connection lost after Redis ran `EXEC` but before its reply arrived looks
        // like a failure, and the retry then counts the same lines a second time.
        let result = match self.bus.backend() {
            Ok(backend) => backend.apply(unsent.writes.clone()).await,
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            self.bus_failed(&error, "cannot store dnslog counts; retrying");
            return false;
        }
        self.bus_recovered();
        let Some(unsent) = self.unsent.take() else {
            return true;
        };
        for transition in &unsent.transitions {
            self.announce(transition).await;
        }
        true
    }

    /// Takes what was counted since the last flush and turns it into writes.
    fn collect(&mut self) -> Unsent {
        let names = self.bus.names();
        let mut writes = Vec::new();
        let counts = self.aggregator.flush();
        let expired = store::count_writes(
            names,
            &counts,
            self.config.retention_days,
            self.config.max_names_per_day,
            Timestamp::now(),
            &mut writes,
        );
        if expired > 0 {
            metrics::counter!("almagest_dnslog_expired_sets_total").increment(expired as u64);
        }
        for (index, checkpoint) in std::mem::take(&mut self.checkpoints) {
            let source = &self.config.sources[index].name;
            writes.extend(store::checkpoint_writes(names, source, &checkpoint));
        }
        let changed = std::mem::take(&mut self.changed_devices);
        let states = changed.iter().filter_map(|&index| {
            let name = self.presence.devices()[index].name.as_str();
            Some((name, self.presence.state(index)?))
        });
        writes.extend(store::device_writes(names, states));
        Unsent {
            writes,
            transitions: std::mem::take(&mut self.transitions),
        }
    }

    /// Publishes a presence event and, for an arrival where configured, a notification.
    async fn announce(&self, transition: &Transition) {
        let device = &self.presence.devices()[transition.device];
        let kind = match transition.kind {
            TransitionKind::Arrived => "presence.arrived",
            TransitionKind::Left => "presence.left",
        };
        metrics::counter!("almagest_dnslog_presence_events_total", "type" => kind).increment(1);
        tracing::info!(device = %device.name, ip = %transition.ip, away_ms = transition.away_ms, "{kind}");
        let event = serde_json::json!({
            "type": kind,
            "at": transition.at.to_rfc3339(),
            "device": device.name,
            "owner": device.owner,
            "ip": transition.ip.to_string(),
            "away_ms": transition.away_ms,
        });
        if let Err(error) = self.bus.publish_event(NAME, &event).await {
            tracing::warn!(device = %device.name, error = %error, "presence event not published");
        }
        if transition.kind != TransitionKind::Arrived || !device.notify_arrivals {
            return;
        }
        let notification = arrival_notice(
            &device.name,
            device.owner.as_deref(),
            transition,
            self.config.route.clone(),
        );
        if let Err(error) = self.bus.notify(&notification).await {
            tracing::warn!(device = %device.name, error = %error, "arrival notice not sent");
        }
    }

    fn bus_failed(&mut self, error: &BusError, message: &'static str) {
        if !self.failing {
            tracing::warn!(error = %error, "{message}");
            self.failing = true;
        }
    }

    fn bus_recovered(&mut self) {
        if std::mem::take(&mut self.failing) {
            tracing::info!("dnslog reaches the bus again");
        }
    }
}

/// Builds the notice for an arrival: "sam-phone (Sam) is home, after 2 h 5 min away." Names
/// and owners come from the config as written, so they are not escaped.
fn arrival_notice(
    device: &str,
    owner: Option<&str>,
    transition: &Transition,
    route: Option<String>,
) -> Notification {
    let label = match owner {
        Some(owner) => format!("{device} ({owner})"),
        None => device.to_string(),
    };
    let away = format_duration(Duration::from_millis(transition.away_ms));
    let mut notification = Notification::text(format!("{label} is home, after {away} away."))
        .with_title("Arrived home")
        .with_source(NAME)
        .with_field("Address", transition.ip.to_string());
    notification.route = route;
    notification
}

/// Waits `delay`, or less when the bus reports that it is connected again.
async fn wait_for_retry(status: &mut watch::Receiver<bool>, delay: Duration) {
    let connected = async {
        loop {
            if status.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if *status.borrow() {
                return;
            }
        }
    };
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = connected => {}
    }
}

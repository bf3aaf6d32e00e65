//! The control service: watches over every service of every instance on the bus, keeps the
//! service registry `P:services`, announces services going down and coming back, and runs
//! the drop folder.
//!
//! One control service at a time watches: the one whose instance holds the lease (see
//! [`registry`]). It pings on `P:control` every `control.ping_interval_secs` with `reply_to`
//! set to `P:control:replies`, records each pong in the registry, and turns missed pings,
//! pongs and goodbyes into state changes with [`liveness`]. The registry lives in Redis, so
//! a control service that restarts, or another instance that takes over, carries on where
//! the last one stopped instead of announcing everything again.
//!
//! While the bus is unreachable nothing is counted as missed. When it returns after an outage
//! longer than the time it takes to call a service down, the watching instance sends one
//! notice about the outage instead of a "down" for every service.
//!
//! The drop folder ([`drop_dir`]) runs in every instance that sets `control.drop_dir`,
//! whether it watches or stands by.

pub mod config;
pub mod drop_dir;
pub mod drop_file;
pub mod liveness;
pub mod registry;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::task::AbortOnDropHandle;

use crate::bus::wire::{Goodbye, Ping, Pong, now_rfc3339};
use crate::bus::{BusMessage, ControlMessage, Topic};
use crate::service::{Context, Service, ServiceError};

pub use config::ControlConfig;
use drop_dir::DropFolder;
use liveness::{Change, Liveness};
use registry::Registry;

/// Service name.
pub const NAME: &str = "control";
/// Lifetime of the lease, in ping intervals. The holder renews it at every ping, so it can
/// miss two renewals (a slow Redis, a busy host) before a standby takes over. A standby
/// takes over from a killed holder within three intervals.
const LEASE_INTERVALS: u32 = 3;

pub struct Control;

/// Whether this instance watches the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Standby,
    Watching,
}

/// A bus outage as this instance saw it.
#[derive(Debug, Clone)]
struct Outage {
    started: Instant,
    started_at: String,
}

pub struct ControlState {
    next_tick: Option<AbortOnDropHandle<()>>,
    registry: Registry,
    liveness: Liveness,
    role: Role,
    connected: bool,
    /// The id and send time of the latest ping.
    last_ping: Option<(String, Instant)>,
    outage: Option<Outage>,
    /// An outage that ended, to be announced if this instance watches once the lease is
    /// settled.
    ended_outage: Option<(Outage, Duration)>,
    drop_folder: Option<DropFolder>,
}

pub enum ControlMsg {
    /// Time for the next ping round.
    Tick,
}

impl Service for Control {
    const NAME: &'static str = NAME;
    type Config = ControlConfig;
    type State = ControlState;
    type Msg = ControlMsg;

    fn topics(ctx: &Context<Self>) -> Vec<Topic> {
        vec![Topic::Channel(ctx.names().control_replies())]
    }

    async fn start(ctx: &Context<Self>) -> Result<ControlState, ServiceError> {
        let config = &ctx.config;
        let lease_ttl = config.ping_interval() * LEASE_INTERVALS;
        let drop_folder = config.drop_dir.clone().map(|dir| {
            DropFolder::start(
                dir,
                config.max_drop_bytes,
                ctx.bus.clone(),
                ctx.settings.clone(),
            )
        });
        Ok(ControlState {
            next_tick: None,
            registry: Registry::new(ctx.bus.clone(), lease_ttl),
            liveness: Liveness::new(config.missed_pings_for_down, config.forget_after()),
            role: Role::Standby,
            connected: false,
            last_ping: None,
            outage: None,
            ended_outage: None,
            drop_folder,
        })
    }

    async fn handle(
        ctx: &Context<Self>,
        state: &mut ControlState,
        message: ControlMsg,
    ) -> Result<(), ServiceError> {
        match message {
            ControlMsg::Tick => state.tick(ctx).await,
        }
        Ok(())
    }

    async fn on_message(
        _ctx: &Context<Self>,
        state: &mut ControlState,
        message: BusMessage,
    ) -> Result<(), ServiceError> {
        match ControlMessage::decode(&message.payload) {
            Ok(ControlMessage::Pong(pong)) => state.record_pong(pong).await,
            Ok(_) => {}
            Err(error) => {
                metrics::counter!("almagest_control_messages_invalid_total", "service" => NAME)
                    .increment(1);
                tracing::debug!(error = %error, "ignored an invalid reply");
            }
        }
        Ok(())
    }

    async fn on_control(
        _ctx: &Context<Self>,
        state: &mut ControlState,
        message: ControlMessage,
    ) -> Result<(), ServiceError> {
        if let ControlMessage::Goodbye(goodbye) = message {
            state.record_goodbye(&goodbye).await;
        }
        Ok(())
    }

    async fn on_bus_status(
        ctx: &Context<Self>,
        state: &mut ControlState,
        connected: bool,
    ) -> Result<(), ServiceError> {
        if let Some(drop_folder) = &state.drop_folder {
            drop_folder.set_bus_connected(connected);
        }
        if connected {
            state.bus_connected(ctx).await;
        } else {
            state.bus_lost();
        }
        Ok(())
    }

    async fn stop(ctx: &Context<Self>, state: &mut ControlState) -> Result<(), ServiceError> {
        state.next_tick = None;
        if let Some(drop_folder) = state.drop_folder.take() {
            drop_folder.stop().await;
        }
        if state.role == Role::Watching {
            state.hand_over(ctx).await;
        }
        Ok(())
    }
}

impl ControlState {
    /// Returns how long missed pings take to make a service down. Shorter bus outages are
    /// not announced either.
    fn time_to_down(ctx: &Context<Control>) -> Duration {
        ctx.config.ping_interval() * ctx.config.missed_pings_for_down
    }

    fn bus_lost(&mut self) {
        self.connected = false;
        self.liveness.interrupt();
        if self.outage.is_none() {
            self.outage = Some(Outage {
                started: Instant::now(),
                started_at: now_rfc3339(),
            });
        }
    }

    async fn bus_connected(&mut self, ctx: &Context<Control>) {
        self.connected = true;
        if let Some(outage) = self.outage.take() {
            let duration = outage.started.elapsed();
            self.ended_outage = Some((outage, duration));
        }
        // Redis may have lost the registry, or another instance may have taken over: read
        // the lease and the registry again before counting anything.
        if self.role == Role::Watching {
            self.role = Role::Standby;
            self.liveness.clear();
        }
        self.tick(ctx).await;
    }

    /// Runs one ping round: settles the lease, ends the previous round, removes expired
    /// entries and pings. Schedules the next tick first, so that rounds last a whole interval
    /// even when a reconnect starts one early.
    async fn tick(&mut self, ctx: &Context<Control>) {
        self.next_tick = Some(ctx.send_after(ctx.config.ping_interval(), ControlMsg::Tick));
        if !self.connected || !self.settle_role(ctx).await {
            return;
        }
        let now = Utc::now();
        let changes = self.liveness.end_round(now);
        self.store_changes(&changes).await;
        self.forget(now).await;
        self.ping(ctx).await;
    }

    /// Takes or renews the lease, and starts or stops watching accordingly. Returns whether
    /// this instance watches. The watching instance announces a bus outage that just ended.
    async fn settle_role(&mut self, ctx: &Context<Control>) -> bool {
        let holds = match self.registry.hold_lease().await {
            Ok(holds) => holds,
            Err(error) => {
                tracing::debug!(error = %error, "cannot read the control lease; skipping this round");
                self.liveness.interrupt();
                return false;
            }
        };
        let ended_outage = self.ended_outage.take();
        let watching = match (holds, self.role) {
            (true, Role::Watching) => true,
            (true, Role::Standby) => self.start_watching().await,
            (false, Role::Watching) => {
                tracing::info!("another instance watches the services now; standing by");
                self.role = Role::Standby;
                self.liveness.clear();
                false
            }
            (false, Role::Standby) => false,
        };
        if !watching {
            if holds {
                // The registry could not be read: the next attempt may still announce it.
                self.ended_outage = ended_outage;
            }
            return false;
        }
        if let Some((outage, duration)) = ended_outage
            && duration >= Self::time_to_down(ctx)
        {
            self.registry
                .announce_bus_outage(&outage.started_at, duration)
                .await;
        }
        true
    }

    /// Loads the registry and starts watching. Returns false when the registry cannot be
    /// read, to try again at the next ping.
    async fn start_watching(&mut self) -> bool {
        let entries = match self.registry.load().await {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(error = %error, "cannot read the service registry; retrying at the next ping");
                return false;
            }
        };
        let left_out = self.liveness.load(entries);
        if left_out > 0 {
            tracing::warn!(left_out, "the registry has more entries than are tracked");
        }
        self.role = Role::Watching;
        tracing::info!(
            services = self.liveness.len(),
            "watching the services on the bus"
        );
        true
    }

    async fn ping(&mut self, ctx: &Context<Control>) {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let ping = ControlMessage::Ping(Ping {
            id: Some(id.clone()),
            reply_to: Some(ctx.names().control_replies()),
        });
        match ctx
            .bus
            .publish(&ctx.names().control(), &ping.encode())
            .await
        {
            Ok(_) => {
                self.last_ping = Some((id, Instant::now()));
                self.liveness.start_round();
            }
            Err(error) => tracing::debug!(error = %error, "ping not sent"),
        }
    }

    async fn record_pong(&mut self, pong: Pong) {
        if self.role != Role::Watching {
            return;
        }
        let rtt = match (&self.last_ping, &pong.id) {
            (Some((sent_id, sent_at)), Some(id)) if sent_id == id => Some(sent_at.elapsed()),
            _ => None,
        };
        let Some(recorded) = self.liveness.record_pong(&pong, rtt, Utc::now()) else {
            metrics::counter!("almagest_control_pongs_untracked_total").increment(1);
            tracing::debug!(
                service = %pong.service,
                instance = %pong.instance,
                "too many services tracked; ignoring a pong"
            );
            return;
        };
        if let Err(error) = self
            .registry
            .store(std::slice::from_ref(&recorded.entry))
            .await
        {
            tracing::debug!(
                service = %liveness::field(&pong.service, &pong.instance),
                error = %error,
                "registry entry not stored"
            );
        }
        if let Some(change) = &recorded.change {
            self.registry
                .announce(change, self.liveness.missed_pings_for_down())
                .await;
        }
    }

    async fn record_goodbye(&mut self, goodbye: &Goodbye) {
        let (service, instance) = (&goodbye.service, &goodbye.instance);
        if self.role == Role::Standby {
            let marked = self
                .registry
                .mark_stopped(service, instance, now_rfc3339())
                .await;
            if let Err(error) = marked {
                tracing::debug!(
                    service = %liveness::field(service, instance),
                    error = %error,
                    "goodbye not recorded"
                );
            }
            return;
        }
        let stored = self.liveness.record_goodbye(service, instance, Utc::now());
        if let Some(entry) = stored {
            let field = liveness::field(service, instance);
            tracing::info!(service = %field, "service said goodbye");
            if let Err(error) = self.registry.store(&[entry]).await {
                tracing::debug!(service = %field, error = %error, "registry entry not stored");
            }
        }
    }

    /// Stores the entries of `changes`, then announces them. A change whose entry could not
    /// be stored is still announced: the state is kept in memory, so it is not repeated.
    async fn store_changes(&mut self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let entries: Vec<_> = changes
            .iter()
            .map(|change| change.entry().clone())
            .collect();
        if let Err(error) = self.registry.store(&entries).await {
            tracing::warn!(changes = entries.len(), error = %error, "registry entries not stored");
        }
        for change in changes {
            self.registry
                .announce(change, self.liveness.missed_pings_for_down())
                .await;
        }
    }

    async fn forget(&mut self, now: DateTime<Utc>) {
        let forgotten = self.liveness.forget(now);
        if forgotten.is_empty() {
            return;
        }
        if let Err(error) = self.registry.remove(&forgotten).await {
            tracing::warn!(entries = forgotten.len(), error = %error, "forgotten registry entries not removed");
        }
        for entry in &forgotten {
            self.registry.announce_forgotten(entry).await;
        }
    }

    /// Hands the watch over on a graceful stop: marks this instance's services stopped,
    /// because their goodbyes arrive while this service is stopping too, and releases the
    /// lease.
    async fn hand_over(&mut self, ctx: &Context<Control>) {
        let stopped = self.liveness.stop_instance(ctx.instance(), Utc::now());
        if let Err(error) = self.registry.store(&stopped).await {
            tracing::debug!(entries = stopped.len(), error = %error, "stopped services not stored");
        }
        if let Err(error) = self.registry.release_lease().await {
            tracing::debug!(error = %error, "control lease not released");
        }
        self.role = Role::Standby;
    }
}

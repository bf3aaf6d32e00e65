//! The supervision tree:
//!
//! ```text
//! root@I (rest-for-one)
//!  ├── gateway@I
//!  └── services@I (one-for-one, transient children, restart cap shared by all)
//!       ├── control@I  ├── api@I  ├── discord@I  …
//! ```
//!
//! The services supervisor is ractor-supervisor's `Supervisor`: it restarts a failed service in
//! place under the same name, with backoff, and fails itself ("meltdown") when more than
//! `supervisor.max_restarts` restarts happen within `supervisor.window_secs`.
//!
//! The root is a small actor of its own. ractor-supervisor's supervisors restart a child
//! supervisor after its meltdown, which would turn the cap into a loop; the root instead
//! reports the meltdown to [`crate::run`], which stops the process with a non-zero exit so
//! that the container runtime restarts it. When the gateway fails, the root kills the services
//! supervisor, restarts the gateway with backoff and then starts the services again, so
//! every subscription is registered with the new gateway.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_supervisor::{
    ChildBackoffFn, ChildSpec, Restart, SpawnFn, Supervisor, SupervisorArguments,
    SupervisorOptions, SupervisorStrategy,
};
use tokio::sync::mpsc;

use crate::bus::Bus;
use crate::bus::gateway::{Gateway, GatewayArgs};
use crate::config::Config;
use crate::service::{Service, ServiceActor, ServiceArgs};

/// First delay before restarting a service or the gateway after its second failure in a row;
/// the first restart is immediate. Doubled per failure up to [`MAX_RESTART_DELAY`].
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(200);
/// Restart delay cap: long enough that a crash loop does not flood the logs, short enough
/// that a service comes back soon after what broke it is fixed.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(10);
/// How long killed actors may take to release their registered names.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Reason the supervision tree gave up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Fatal {
    #[error(
        "restart cap reached: more than {max_restarts} restarts within {window_secs} s \
         (supervisor.max_restarts, supervisor.window_secs); exiting so that the container \
         runtime restarts the process"
    )]
    RestartCapReached { max_restarts: u32, window_secs: u64 },
    #[error("{0}")]
    StartFailed(String),
}

/// Delay before the `failures`-th restart in a row.
pub fn restart_delay(failures: usize) -> Option<Duration> {
    if failures <= 1 {
        return None;
    }
    let doublings = (failures - 2).min(16) as u32;
    Some((FIRST_RESTART_DELAY * 2u32.pow(doublings)).min(MAX_RESTART_DELAY))
}

/// Builds the services supervisor's child spec for service `S`. Each spawn counts as a
/// restart after the first, so pongs can report how often the service was restarted.
pub fn service_spec<S: Service>(config: S::Config, settings: &Arc<Config>, bus: &Bus) -> ChildSpec {
    let config = Arc::new(config);
    let settings = Arc::clone(settings);
    let bus = bus.clone();
    let spawns = Arc::new(AtomicU32::new(0));
    let id = format!("{}@{}", S::NAME, bus.instance());
    let window = settings.supervisor.window();
    let spawn_fn = SpawnFn::new(move |supervisor: ActorCell, id: String| {
        let restarts = spawns.fetch_add(1, Ordering::Relaxed);
        if restarts > 0 {
            metrics::counter!("almagest_service_restarts_total", "service" => S::NAME).increment(1);
            tracing::warn!(service = S::NAME, restarts, "restarting service");
        }
        let args = ServiceArgs::<S> {
            config: Arc::clone(&config),
            settings: Arc::clone(&settings),
            bus: bus.clone(),
            restarts,
        };
        async move {
            let (actor, _) =
                Supervisor::spawn_linked(id, ServiceActor::<S>::default(), args, supervisor)
                    .await?;
            Ok(actor.get_cell())
        }
    });
    ChildSpec {
        id,
        restart: Restart::Transient,
        spawn_fn,
        backoff_fn: Some(ChildBackoffFn::new(|_, failures, _, _| {
            restart_delay(failures)
        })),
        reset_after: Some(window),
    }
}

pub struct Root;

pub struct RootArgs {
    pub config: Arc<Config>,
    pub bus: Bus,
    pub services: Vec<ChildSpec>,
    pub fatal: mpsc::UnboundedSender<Fatal>,
}

pub struct RootState {
    args: RootArgs,
    gateway: Option<ActorCell>,
    services: Option<ActorCell>,
    gateway_spawns: u32,
    /// Consecutive gateway failures, for the restart delay.
    gateway_failures: usize,
    last_gateway_failure: Option<Instant>,
    /// Times of recent restarts of the gateway, for the cap.
    restarts: VecDeque<Instant>,
    stopping: bool,
}

pub enum RootMessage {
    /// Start the gateway, then the services.
    StartChildren,
    /// Stop everything gracefully within `timeout`, then reply.
    Shutdown {
        timeout: Duration,
        reply: RpcReplyPort<()>,
    },
}

impl Actor for Root {
    type Msg = RootMessage;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMessage>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        myself.cast(RootMessage::StartChildren)?;
        Ok(RootState {
            args,
            gateway: None,
            services: None,
            gateway_spawns: 0,
            gateway_failures: 0,
            last_gateway_failure: None,
            restarts: VecDeque::new(),
            stopping: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMessage>,
        message: RootMessage,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RootMessage::StartChildren if !state.stopping => {
                if let Err(error) = state.start_children(&myself).await {
                    state.give_up(&myself, Fatal::StartFailed(error.to_string()));
                }
            }
            RootMessage::StartChildren => {}
            RootMessage::Shutdown { timeout, reply } => {
                state.stopping = true;
                state.stop_children(timeout).await;
                let _ = reply.send(());
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMessage>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        if state.stopping {
            return Ok(());
        }
        let id = cell.get_id();
        if state
            .gateway
            .as_ref()
            .is_some_and(|gateway| gateway.get_id() == id)
        {
            state.gateway = None;
            state.gateway_failed(&myself, &reason).await;
        } else if state
            .services
            .as_ref()
            .is_some_and(|services| services.get_id() == id)
        {
            state.services = None;
            tracing::error!(reason = %reason, "services supervisor stopped");
            let fatal = Fatal::RestartCapReached {
                max_restarts: state.args.config.supervisor.max_restarts,
                window_secs: state.args.config.supervisor.window_secs,
            };
            state.give_up(&myself, fatal);
        }
        Ok(())
    }
}

impl RootState {
    fn instance(&self) -> &str {
        self.args.bus.instance()
    }

    async fn start_children(
        &mut self,
        myself: &ActorRef<RootMessage>,
    ) -> Result<(), ActorProcessingErr> {
        let gateway_args = GatewayArgs {
            config: Arc::clone(&self.args.config),
            bus: self.args.bus.clone(),
            restarts: self.gateway_spawns,
        };
        self.gateway_spawns += 1;
        let (gateway, _) = Actor::spawn_linked(
            Some(self.args.bus.gateway_name()),
            Gateway,
            gateway_args,
            myself.get_cell(),
        )
        .await?;
        self.gateway = Some(gateway.get_cell());

        let supervisor = &self.args.config.supervisor;
        let options = SupervisorOptions {
            strategy: SupervisorStrategy::OneForOne,
            max_restarts: supervisor.max_restarts as usize,
            max_window: supervisor.window(),
            reset_after: None,
        };
        let arguments = SupervisorArguments {
            child_specs: self.args.services.clone(),
            options,
        };
        let name = format!("services@{}", self.instance());
        let (services, _) =
            Supervisor::spawn_linked(name, Supervisor, arguments, myself.get_cell()).await?;
        self.services = Some(services.get_cell());
        Ok(())
    }

    /// Kills the services, then restarts the gateway (and after it the services) with backoff,
    /// unless the cap is reached.
    async fn gateway_failed(&mut self, myself: &ActorRef<RootMessage>, reason: &str) {
        tracing::warn!(reason = %reason, "gateway stopped; restarting it and every service");
        if let Some(services) = self.services.take() {
            // Killing a supervisor kills its children without waiting for them, and their
            // registered names must be free before the services start again.
            let children = services.get_children();
            services.unlink(myself.get_cell());
            let _ = services.kill_and_wait(Some(KILL_TIMEOUT)).await;
            for child in children {
                let _ = child.kill_and_wait(Some(KILL_TIMEOUT)).await;
            }
        }
        let now = Instant::now();
        let window = self.args.config.supervisor.window();
        self.restarts.push_back(now);
        while self
            .restarts
            .front()
            .is_some_and(|at| now.duration_since(*at) >= window)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() > self.args.config.supervisor.max_restarts as usize {
            let fatal = Fatal::RestartCapReached {
                max_restarts: self.args.config.supervisor.max_restarts,
                window_secs: self.args.config.supervisor.window_secs,
            };
            self.give_up(myself, fatal);
            return;
        }
        let quiet_since_last = self
            .last_gateway_failure
            .is_none_or(|at| now.duration_since(at) >= window);
        self.gateway_failures = if quiet_since_last {
            1
        } else {
            self.gateway_failures + 1
        };
        self.last_gateway_failure = Some(now);
        match restart_delay(self.gateway_failures) {
            Some(delay) => {
                myself.send_after(delay, || RootMessage::StartChildren);
            }
            None => {
                let _ = myself.cast(RootMessage::StartChildren);
            }
        }
    }

    fn give_up(&mut self, myself: &ActorRef<RootMessage>, fatal: Fatal) {
        // The caller of `run` logs the reason; logging it here too would say it twice.
        self.stopping = true;
        let _ = self.args.fatal.send(fatal);
        myself.stop(Some("fatal".into()));
    }

    /// Stops the services first, so they can still say goodbye through the gateway, then the
    /// gateway. Whatever is left after `timeout` is killed when the root stops.
    async fn stop_children(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        if let Some(services) = self.services.take() {
            services
                .stop_children_and_wait(Some("shutdown".into()), Some(timeout))
                .await;
            let left = deadline.saturating_duration_since(Instant::now());
            if services
                .stop_and_wait(Some("shutdown".into()), Some(left))
                .await
                .is_err()
            {
                tracing::warn!(
                    timeout_secs = timeout.as_secs(),
                    "services did not stop within the shutdown deadline; killing them"
                );
                services.kill();
            }
        }
        if let Some(gateway) = self.gateway.take() {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(500));
            if gateway
                .stop_and_wait(Some("shutdown".into()), Some(left))
                .await
                .is_err()
            {
                tracing::warn!("gateway did not stop within the shutdown deadline; killing it");
                gateway.kill();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_restart_is_immediate() {
        assert_eq!(restart_delay(1), None);
    }

    #[test]
    fn restart_delay_doubles_then_caps() {
        assert_eq!(restart_delay(2), Some(FIRST_RESTART_DELAY));
        assert_eq!(restart_delay(3), Some(FIRST_RESTART_DELAY * 2));
        assert_eq!(restart_delay(40), Some(MAX_RESTART_DELAY));
    }
}

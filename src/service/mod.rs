//! What every service has in common, so that a service implements only its own work.
//!
//! A service implements [`Service`]. The generic actor [`ServiceActor`] hosts it under the
//! services supervisor and takes care of the lifecycle: it subscribes the service's topics
//! and the control channel from `pre_start` (so a restarted service is routed again), answers
//! pings with a pong, runs the crash drill, counts invalid control messages, sends a goodbye
//! on a graceful stop. Every callback runs inside an `actor` span named after the actor
//! (`control@nas`), so log lines say which service and instance wrote them.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::Instrument;

use crate::bus::wire::{Crash, Goodbye, Pong};
use crate::bus::{Bus, BusMessage, ControlMessage, Delivery, Names, Topic};
use crate::config::Config;

/// The error type of service callbacks. A returned error stops the actor, and the services
/// supervisor restarts it with backoff, like a panic.
pub type ServiceError = ActorProcessingErr;

/// How long the goodbye on a graceful stop may take.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// The span of one actor's callbacks. It has no parent: ractor otherwise runs a handler inside
/// the span of whoever sent the message, which would name the wrong actor in the logs.
pub fn actor_span(name: &str) -> tracing::Span {
    tracing::info_span!(parent: None, "actor", actor = %name)
}

/// Who is answering: a service (or the gateway) of one instance, since when, after how many
/// restarts.
#[derive(Debug, Clone)]
pub struct Identity {
    pub service: &'static str,
    pub instance: String,
    pub started: Instant,
    pub restarts: u32,
}

impl Identity {
    pub fn new(service: &'static str, instance: &str, restarts: u32) -> Identity {
        Identity {
            service,
            instance: instance.to_string(),
            started: Instant::now(),
            restarts,
        }
    }

    pub fn pong(&self, id: Option<String>) -> Pong {
        Pong {
            id,
            service: self.service.to_string(),
            instance: self.instance.clone(),
            version: crate::VERSION.to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            restarts: self.restarts,
        }
    }

    pub fn goodbye(&self) -> Goodbye {
        Goodbye {
            service: self.service.to_string(),
            instance: self.instance.clone(),
        }
    }

    /// Whether a crash drill message names this service (and this instance, if it names one).
    pub fn is_crash_target(&self, crash: &Crash) -> bool {
        crash.service == self.service
            && crash
                .instance
                .as_deref()
                .is_none_or(|instance| instance == self.instance)
    }

    /// The actor's registered name, `<service>@<instance>`.
    pub fn actor_name(&self) -> String {
        format!("{}@{}", self.service, self.instance)
    }
}

/// What a service gets in every callback.
pub struct Context<S: Service> {
    /// The service's own config section.
    pub config: Arc<S::Config>,
    /// The whole config, for the few settings that are shared.
    pub settings: Arc<Config>,
    pub bus: Bus,
    /// The hosting actor, for timers and for tasks that report back.
    pub myself: ActorRef<ServiceMessage<S::Msg>>,
    pub identity: Identity,
}

impl<S: Service> Context<S> {
    pub fn names(&self) -> &Names {
        self.bus.names()
    }

    pub fn instance(&self) -> &str {
        self.bus.instance()
    }

    /// Sends the service one of its own messages. Fails only while the actor is stopping.
    pub fn send(&self, message: S::Msg) {
        let _ = self.myself.cast(ServiceMessage::Own(message));
    }

    /// Sends `make()` to the service every `period`, starting after one period. The timer
    /// stops when the returned handle is dropped, so keep it in the service's state.
    pub fn send_interval<F>(
        &self,
        period: Duration,
        make: F,
    ) -> tokio_util::task::AbortOnDropHandle<()>
    where
        F: Fn() -> S::Msg + Send + 'static,
    {
        let handle = self
            .myself
            .send_interval(period, move || ServiceMessage::Own(make()));
        tokio_util::task::AbortOnDropHandle::new(handle)
    }

    /// Sends `message` to the service once after `delay`. Dropping the handle cancels it.
    pub fn send_after(
        &self,
        delay: Duration,
        message: S::Msg,
    ) -> tokio_util::task::AbortOnDropHandle<()> {
        let myself = self.myself.clone();
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = myself.cast(ServiceMessage::Own(message));
        }))
    }
}

/// A service hosted by [`ServiceActor`]. Callbacks run one at a time on the actor; long work
/// belongs in tasks the state owns, which report back with [`Context::send`].
pub trait Service: Sized + Send + Sync + 'static {
    /// Name in actor names, pongs, registry entries, events and logs.
    const NAME: &'static str;
    type Config: Send + Sync + 'static;
    type State: Send + 'static;
    /// The service's own messages (timer ticks, task results).
    type Msg: Send + 'static;

    /// Channels and patterns to subscribe besides the control channel.
    fn topics(_ctx: &Context<Self>) -> Vec<Topic> {
        Vec::new()
    }

    /// Builds the state. Must not fail because the bus is down: the bus may connect later,
    /// and [`Service::on_bus_status`] says when.
    fn start(ctx: &Context<Self>)
    -> impl Future<Output = Result<Self::State, ServiceError>> + Send;

    fn handle(
        ctx: &Context<Self>,
        state: &mut Self::State,
        message: Self::Msg,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send;

    /// A message on one of [`Service::topics`].
    fn on_message(
        _ctx: &Context<Self>,
        _state: &mut Self::State,
        _message: BusMessage,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send {
        async { Ok(()) }
    }

    /// A valid control message other than ping and crash (goodbye, rebuild, rollback, …).
    fn on_control(
        _ctx: &Context<Self>,
        _state: &mut Self::State,
        _message: ControlMessage,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send {
        async { Ok(()) }
    }

    /// The bus connected or disconnected. Also called once right after start.
    fn on_bus_status(
        _ctx: &Context<Self>,
        _state: &mut Self::State,
        _connected: bool,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send {
        async { Ok(()) }
    }

    /// A graceful stop: stop intake and drain. Not called after a panic.
    fn stop(
        _ctx: &Context<Self>,
        _state: &mut Self::State,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send {
        async { Ok(()) }
    }
}

/// Messages of a hosted service.
pub enum ServiceMessage<M> {
    Bus(Delivery),
    Own(M),
}

impl<M> From<Delivery> for ServiceMessage<M> {
    fn from(delivery: Delivery) -> Self {
        ServiceMessage::Bus(delivery)
    }
}

impl<M> TryFrom<ServiceMessage<M>> for Delivery {
    type Error = ();

    fn try_from(message: ServiceMessage<M>) -> Result<Self, Self::Error> {
        match message {
            ServiceMessage::Bus(delivery) => Ok(delivery),
            ServiceMessage::Own(_) => Err(()),
        }
    }
}

/// Start arguments of a hosted service.
pub struct ServiceArgs<S: Service> {
    pub config: Arc<S::Config>,
    pub settings: Arc<Config>,
    pub bus: Bus,
    pub restarts: u32,
}

/// The actor that hosts a [`Service`].
pub struct ServiceActor<S>(PhantomData<fn() -> S>);

impl<S> Default for ServiceActor<S> {
    fn default() -> Self {
        ServiceActor(PhantomData)
    }
}

pub struct HostState<S: Service> {
    ctx: Context<S>,
    state: S::State,
    control: String,
    span: tracing::Span,
}

impl<S: Service> Actor for ServiceActor<S> {
    type Msg = ServiceMessage<S::Msg>;
    type State = HostState<S>;
    type Arguments = ServiceArgs<S>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ServiceArgs<S>,
    ) -> Result<HostState<S>, ActorProcessingErr> {
        let identity = Identity::new(S::NAME, args.bus.instance(), args.restarts);
        let span = actor_span(&identity.actor_name());
        let ctx = Context {
            config: args.config,
            settings: args.settings,
            bus: args.bus,
            myself: myself.clone(),
            identity,
        };
        let control = ctx.names().control();
        let state = async {
            let mut topics = S::topics(&ctx);
            topics.push(Topic::Channel(control.clone()));
            ctx.bus.subscribe(topics, myself.get_derived()).await?;
            let state = match S::start(&ctx).await {
                Ok(state) => state,
                Err(error) => {
                    // The supervisor reports this only as a failed start, without the cause.
                    tracing::error!(error = %error, "service failed to start");
                    return Err(error);
                }
            };
            tracing::info!(restarts = ctx.identity.restarts, "service started");
            Ok::<_, ActorProcessingErr>(state)
        }
        .instrument(span.clone())
        .await?;
        Ok(HostState {
            ctx,
            state,
            control,
            span,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        host: &mut HostState<S>,
    ) -> Result<(), ActorProcessingErr> {
        let span = host.span.clone();
        host.dispatch(message).instrument(span).await
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        host: &mut HostState<S>,
    ) -> Result<(), ActorProcessingErr> {
        let span = host.span.clone();
        host.stop().instrument(span).await;
        Ok(())
    }
}

impl<S: Service> HostState<S> {
    async fn dispatch(&mut self, message: ServiceMessage<S::Msg>) -> Result<(), ServiceError> {
        match message {
            ServiceMessage::Bus(Delivery::Message(message))
                if message.pattern.is_none() && message.channel == self.control =>
            {
                self.handle_control(&message.payload).await
            }
            ServiceMessage::Bus(Delivery::Message(message)) => {
                S::on_message(&self.ctx, &mut self.state, message).await
            }
            ServiceMessage::Bus(Delivery::Status(connected)) => {
                S::on_bus_status(&self.ctx, &mut self.state, connected).await
            }
            ServiceMessage::Own(message) => S::handle(&self.ctx, &mut self.state, message).await,
        }
    }

    /// Lets the service drain, then says goodbye so the stop is not taken for an outage.
    async fn stop(&mut self) {
        if let Err(error) = S::stop(&self.ctx, &mut self.state).await {
            tracing::warn!(error = %error, "service did not stop cleanly");
        }
        let goodbye = ControlMessage::Goodbye(self.ctx.identity.goodbye()).encode();
        let sent = tokio::time::timeout(
            GOODBYE_TIMEOUT,
            self.ctx.bus.publish(&self.control, &goodbye),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::debug!(error = %error, "goodbye not sent"),
            Err(_) => tracing::debug!("goodbye timed out"),
        }
        tracing::info!("service stopped");
    }

    async fn handle_control(&mut self, payload: &str) -> Result<(), ServiceError> {
        let message = match ControlMessage::decode(payload) {
            Ok(message) => message,
            Err(error) => {
                metrics::counter!("almagest_control_messages_invalid_total", "service" => S::NAME)
                    .increment(1);
                tracing::debug!(error = %error, "ignored an invalid control message");
                return Ok(());
            }
        };
        match message {
            ControlMessage::Ping(ping) => {
                let reply_to = ping
                    .reply_to
                    .clone()
                    .unwrap_or_else(|| self.ctx.names().control_replies());
                let pong = ControlMessage::Pong(self.ctx.identity.pong(ping.id)).encode();
                if let Err(error) = self.ctx.bus.publish(&reply_to, &pong).await {
                    tracing::debug!(error = %error, "pong not sent");
                }
                Ok(())
            }
            ControlMessage::Crash(crash) if self.ctx.identity.is_crash_target(&crash) => {
                if self.ctx.settings.crash_drill_allowed() {
                    tracing::warn!("crash drill: the service panics now, as requested");
                    panic!(
                        "crash drill: {} asked to crash",
                        self.ctx.identity.actor_name()
                    );
                }
                tracing::warn!(
                    "crash drill ignored: set control.allow_crash_command = true to allow it"
                );
                Ok(())
            }
            ControlMessage::Crash(_) => Ok(()),
            other => S::on_control(&self.ctx, &mut self.state, other).await,
        }
    }
}

//! The gateway actor: the first child of the root supervisor. It creates the backend, installs
//! it into the [`Bus`] handle and routes every subscribed message to the actors that asked for
//! it. Routes to actors that have stopped are dropped on the next message or subscription.
//! The gateway answers pings itself, so `almagest ping` shows whether the bus is alive. With
//! the embedded backend it also serves the admin socket, through which other processes
//! reach the bus.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort};

use super::admin::AdminEndpoint;
use super::backend::{Backend, BackendEvent, EventSink, Topic};
use super::embedded::EmbeddedBackend;
use super::redis::RedisBackend;
use super::wire::ControlMessage;
use super::{Bus, BusMessage, Delivery, Installed, Subscriber};
use crate::config::{BackendKind, Config};
use crate::service::{Identity, actor_span};
use tracing::Instrument;

/// Service name of the gateway in pongs and the registry.
pub const NAME: &str = "gateway";
/// How long the goodbye on a graceful stop may take before the gateway stops anyway.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Gateway;

pub struct GatewayArgs {
    pub config: Arc<Config>,
    pub bus: Bus,
    /// How often this gateway was restarted before, for its pongs.
    pub restarts: u32,
}

pub struct GatewayState {
    bus: Bus,
    backend: Arc<dyn Backend>,
    _installed: Installed,
    routes: BTreeMap<Topic, Vec<Subscriber>>,
    identity: Identity,
    control: String,
    crash_allowed: bool,
    connected: bool,
    /// The admin socket, served for the embedded backend only: with Redis, other processes
    /// reach the bus through Redis.
    admin: Option<AdminEndpoint>,
    span: tracing::Span,
}

pub enum GatewayMessage {
    /// Route `topics` to `subscriber`.
    Subscribe {
        topics: Vec<Topic>,
        subscriber: Subscriber,
        reply: RpcReplyPort<()>,
    },
    /// A message or connection change from the backend.
    Backend(BackendEvent),
}

impl Actor for Gateway {
    type Msg = GatewayMessage;
    type State = GatewayState;
    type Arguments = GatewayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: GatewayArgs,
    ) -> Result<GatewayState, ActorProcessingErr> {
        let events_target = myself.clone();
        let events: EventSink = Arc::new(move |event| {
            // Fails only when the gateway is stopping, and then nobody needs the event.
            let _ = events_target.cast(GatewayMessage::Backend(event));
        });
        let span = actor_span(&args.bus.gateway_name());
        let mut admin = None;
        let backend: Arc<dyn Backend> = match args.config.bus.backend {
            BackendKind::Redis => {
                let started = span.in_scope(|| RedisBackend::start(&args.config.redis, events));
                Arc::new(started?)
            }
            BackendKind::Embedded => {
                let bus = &args.config.bus;
                let _entered = span.enter();
                // The supervisor reports a failed start without its cause, so log it here.
                let embedded = EmbeddedBackend::start(bus, events).map_err(|error| {
                    tracing::error!(error = %error, "cannot open the embedded store");
                    error
                })?;
                let embedded = Arc::new(embedded);
                let endpoint =
                    AdminEndpoint::start(&bus.data_dir, &bus.instance, Arc::clone(&embedded))
                        .map_err(|error| {
                            tracing::error!(error = %error, "cannot serve the admin socket");
                            error
                        })?;
                admin = Some(endpoint);
                embedded
            }
        };
        let installed = args.bus.install(Arc::clone(&backend));
        let state = GatewayState {
            bus: args.bus.clone(),
            backend,
            _installed: installed,
            routes: BTreeMap::new(),
            identity: Identity::new(NAME, args.bus.instance(), args.restarts),
            control: args.bus.names().control(),
            crash_allowed: args.config.crash_drill_allowed(),
            connected: false,
            admin,
            span,
        };
        state.update_topics();
        state.span.in_scope(|| {
            tracing::info!(backend = %args.config.bus.backend, restarts = args.restarts, "gateway started");
        });
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: GatewayMessage,
        state: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        state.dispatch(message).instrument(span).await;
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        state.say_goodbye().instrument(span).await;
        Ok(())
    }
}

impl GatewayState {
    async fn dispatch(&mut self, message: GatewayMessage) {
        match message {
            GatewayMessage::Subscribe {
                topics,
                subscriber,
                reply,
            } => {
                self.subscribe(topics, subscriber.clone());
                let _ = subscriber.send_message(Delivery::Status(self.connected));
                let _ = reply.send(());
            }
            GatewayMessage::Backend(BackendEvent::Message {
                channel,
                pattern,
                payload,
            }) => {
                if pattern.is_none() && channel == self.control {
                    self.handle_control(&payload).await;
                }
                self.route(BusMessage {
                    channel,
                    pattern,
                    payload,
                });
            }
            GatewayMessage::Backend(BackendEvent::Connected) => self.set_connected(true),
            GatewayMessage::Backend(BackendEvent::Disconnected) => self.set_connected(false),
        }
    }

    async fn say_goodbye(&mut self) {
        let goodbye = ControlMessage::Goodbye(self.identity.goodbye()).encode();
        let sent = tokio::time::timeout(
            GOODBYE_TIMEOUT,
            self.backend.publish(&self.control, &goodbye),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::debug!(error = %error, "gateway goodbye not sent"),
            Err(_) => tracing::debug!("gateway goodbye timed out"),
        }
        // Admin subscribers get the goodbye before their connections close.
        if let Some(admin) = self.admin.take() {
            admin.close(GOODBYE_TIMEOUT).await;
        }
        tracing::info!("gateway stopped");
    }

    fn subscribe(&mut self, topics: Vec<Topic>, subscriber: Subscriber) {
        self.prune_stopped();
        for topic in topics {
            let subscribers = self.routes.entry(topic).or_default();
            if !subscribers
                .iter()
                .any(|known| known.get_id() == subscriber.get_id())
            {
                subscribers.push(subscriber.clone());
            }
        }
        self.update_topics();
    }

    /// Drops routes to actors that have stopped, so restarts do not accumulate routes.
    fn prune_stopped(&mut self) {
        for subscribers in self.routes.values_mut() {
            subscribers.retain(|subscriber| subscriber.get_status() != ActorStatus::Stopped);
        }
        self.routes.retain(|_, subscribers| !subscribers.is_empty());
    }

    /// Tells the backend the topics to keep subscribed: every route plus the control channel.
    fn update_topics(&self) {
        let mut topics: BTreeSet<Topic> = super::topic_set(self.routes.keys());
        topics.insert(Topic::Channel(self.control.clone()));
        self.backend.set_topics(topics);
    }

    fn route(&mut self, message: BusMessage) {
        let topic = match &message.pattern {
            Some(pattern) => Topic::Pattern(pattern.clone()),
            None => Topic::Channel(message.channel.clone()),
        };
        let Some(subscribers) = self.routes.get_mut(&topic) else {
            return;
        };
        subscribers.retain(|subscriber| {
            subscriber
                .send_message(Delivery::Message(message.clone()))
                .is_ok()
        });
        if subscribers.is_empty() {
            self.routes.remove(&topic);
            self.update_topics();
        }
    }

    fn set_connected(&mut self, connected: bool) {
        if self.connected == connected {
            return;
        }
        self.connected = connected;
        let mut told = BTreeSet::new();
        for subscriber in self.routes.values().flatten() {
            if told.insert(subscriber.get_id()) {
                let _ = subscriber.send_message(Delivery::Status(connected));
            }
        }
    }

    /// Answers pings and runs the crash drill for the gateway itself.
    async fn handle_control(&mut self, payload: &str) {
        match ControlMessage::decode(payload) {
            Ok(ControlMessage::Ping(ping)) => {
                let reply_to = ping
                    .reply_to
                    .clone()
                    .unwrap_or_else(|| self.bus.names().control_replies());
                let pong = ControlMessage::Pong(self.identity.pong(ping.id)).encode();
                if let Err(error) = self.backend.publish(&reply_to, &pong).await {
                    tracing::debug!(error = %error, "gateway pong not sent");
                }
            }
            Ok(ControlMessage::Crash(crash)) if self.identity.is_crash_target(&crash) => {
                if self.crash_allowed {
                    tracing::warn!("crash drill: the gateway panics now, as requested");
                    panic!("crash drill: gateway asked to crash");
                }
                tracing::warn!(
                    "crash drill for the gateway ignored: set control.allow_crash_command = true"
                );
            }
            // Services count invalid control messages; counting them here too would double it.
            Ok(_) | Err(_) => {}
        }
    }
}

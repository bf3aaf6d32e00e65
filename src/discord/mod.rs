//! The `discord` service: delivers the notification stream to Discord channels or webhooks,
//! and turns watched Discord messages and slash commands into bus messages. It runs as
//! `discord@<instance>` under the services supervisor.
//!
//! - [`config`]: the `[discord]` section and its validation.
//! - [`render`] and [`split`]: a notification object into Discord messages.
//! - [`deliver`]: sending over HTTP with the retry policy and error classification.
//! - [`consumer`]: the loop that reads `P:notify:stream` and acknowledges what was delivered.
//! - [`incoming`]: watch rules and slash commands, as functions of what arrives.
//! - [`gateway`]: serenity's gateway client, passing messages and commands to the service.
//! - [`commands`] and [`replies`]: slash command responses and their text.
//!
//! Outgoing delivery and the gateway are independent tasks owned by the service's state, so
//! notices go out over HTTP whether or not the gateway is connected, and a restarted service
//! leaves neither running.

pub mod commands;
pub mod config;
pub mod consumer;
pub mod deliver;
pub mod gateway;
pub mod incoming;
pub mod render;
pub mod replies;
pub mod split;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use serenity::all::CommandInteraction;
use serenity::http::Http;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::task::AbortOnDropHandle;

use crate::bus::wire::{Ping, Rebuild};
use crate::bus::{BusMessage, ControlMessage, Notification, Topic};
use crate::service::{Context, Service, ServiceError, ServiceMessage};
use crate::telemetry::LogLimiter;

pub use config::DiscordConfig;
use consumer::Consumer;
use deliver::{RetryPolicy, Sender, build_http};
use gateway::{GatewayEvent, GatewayGuard, GatewaySettings, intents, spawn_gateway};
use incoming::{Command, Invoker, command_options, is_authorised, parse_command, watched_events};

/// Service name.
pub const NAME: &str = "discord";

/// Gateway events waiting for the service. Discord sends a household's messages far slower
/// than the service handles them, so the queue only fills if the service is stuck, and then
/// the gateway waits instead of dropping messages.
const GATEWAY_QUEUE: usize = 256;

/// Commands waiting for a result at once; more are refused, so a flood cannot grow the table.
const MAX_PENDING_COMMANDS: usize = 64;

/// Pongs kept for one `/ping`, so a flood of pongs cannot grow one entry.
const MAX_PONGS: usize = 256;

pub struct Discord;

/// Messages of the discord service.
pub enum DiscordMsg {
    /// Something arrived from the gateway.
    Gateway(GatewayEvent),
    /// A command's wait for results ended.
    CommandDue(String),
}

pub struct DiscordState {
    http: Arc<Http>,
    _consumer: Option<AbortOnDropHandle<()>>,
    _gateway: Option<GatewayGuard>,
    _forward: Option<AbortOnDropHandle<()>>,
    /// Commands waiting for pongs or a rebuild result, by the id of the bus message sent.
    pending: HashMap<String, PendingCommand>,
    /// Interaction responses in flight; dropped (and aborted) with the state.
    tasks: JoinSet<()>,
}

struct PendingCommand {
    interaction: Arc<CommandInteraction>,
    deferred: oneshot::Receiver<()>,
    kind: PendingKind,
    _due: AbortOnDropHandle<()>,
}

enum PendingKind {
    Ping { pongs: Vec<Value>, started: Instant },
    Rebuild { target: String },
}

impl Service for Discord {
    const NAME: &'static str = NAME;
    type Config = DiscordConfig;
    type State = DiscordState;
    type Msg = DiscordMsg;

    fn topics(ctx: &Context<Self>) -> Vec<Topic> {
        vec![
            Topic::Channel(ctx.names().notify()),
            Topic::Channel(ctx.names().control_replies()),
        ]
    }

    async fn start(ctx: &Context<Self>) -> Result<DiscordState, ServiceError> {
        let config = ctx.config.clone();
        let http = Arc::new(build_http(&config));
        let sender = Arc::new(Sender::new(http.clone())?);

        let consumer = if config.delivers() {
            let consumer = Consumer {
                bus: ctx.bus.clone(),
                sender,
                config: config.clone(),
                name: ctx.instance().to_owned(),
                policy: RetryPolicy::new(config.retry_for),
            };
            Some(AbortOnDropHandle::new(tokio::spawn(consumer.run())))
        } else {
            tracing::info!("no discord destination configured: notifications are not delivered");
            None
        };

        let (gateway, forward) = if config.gateway && config.token.is_some() {
            let (events, received) = mpsc::channel(GATEWAY_QUEUE);
            let settings = GatewaySettings {
                intents: intents(!config.rules.is_empty()),
                command_guild: config.guild_id.filter(|_| config.has_commands()),
            };
            let guard = spawn_gateway(http.clone(), settings, events);
            (Some(guard), Some(forward_events(ctx, received)))
        } else {
            (None, None)
        };

        Ok(DiscordState {
            http,
            _consumer: consumer,
            _gateway: gateway,
            _forward: forward,
            pending: HashMap::new(),
            tasks: JoinSet::new(),
        })
    }

    async fn handle(
        ctx: &Context<Self>,
        state: &mut DiscordState,
        message: DiscordMsg,
    ) -> Result<(), ServiceError> {
        match message {
            DiscordMsg::Gateway(GatewayEvent::Message(message)) => {
                for watched in watched_events(&message, &ctx.config.rules) {
                    let channel = ctx.names().channel(&watched.bus_channel);
                    if let Err(error) = ctx.bus.publish_json(&channel, &watched.event).await {
                        tracing::warn!(
                            rule = %watched.event.rule,
                            message_id = %watched.event.message_id,
                            error = %error,
                            "watched message not published"
                        );
                    }
                }
            }
            DiscordMsg::Gateway(GatewayEvent::Command(interaction)) => {
                state.run_command(ctx, Arc::from(interaction)).await;
            }
            DiscordMsg::CommandDue(id) => state.finish_due(&id),
        }
        Ok(())
    }

    async fn on_message(
        ctx: &Context<Self>,
        state: &mut DiscordState,
        message: BusMessage,
    ) -> Result<(), ServiceError> {
        if message.channel == ctx.names().notify() {
            append_notification(ctx, &message.payload).await;
        } else if let Ok(reply) = ControlMessage::decode(&message.payload) {
            state.record_reply(reply);
        }
        Ok(())
    }
}

/// Appends what a script published on `P:notify` to the notification stream.
async fn append_notification(ctx: &Context<Discord>, payload: &str) {
    let notification = match Notification::decode(payload) {
        Ok(notification) => notification,
        Err(error) => {
            static WARNINGS: LogLimiter = LogLimiter::new(Duration::from_secs(60));
            metrics::counter!("almagest_discord_notify_invalid_total").increment(1);
            if let Some(suppressed) = WARNINGS.hit() {
                tracing::warn!(
                    error = %error,
                    similar_since_last_warning = suppressed,
                    "ignored an invalid notification on the notify channel"
                );
            }
            return;
        }
    };
    if let Err(error) = ctx.bus.notify(&notification).await {
        tracing::warn!(error = %error, "published notification lost: the stream is unavailable");
    }
}

/// Passes gateway events to the service's mailbox.
fn forward_events(
    ctx: &Context<Discord>,
    mut received: mpsc::Receiver<GatewayEvent>,
) -> AbortOnDropHandle<()> {
    let myself = ctx.myself.clone();
    AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(event) = received.recv().await {
            if myself
                .cast(ServiceMessage::Own(DiscordMsg::Gateway(event)))
                .is_err()
            {
                break;
            }
        }
    }))
}

impl DiscordState {
    fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        while self.tasks.try_join_next().is_some() {}
        self.tasks.spawn(task);
    }

    /// Handles a slash command: refuses an unauthorised invoker, rejects an invalid command,
    /// or defers the response and starts the command.
    async fn run_command(&mut self, ctx: &Context<Discord>, interaction: Arc<CommandInteraction>) {
        let http = self.http.clone();
        let user = interaction.user.id;
        if !is_authorised(&Invoker::from(&*interaction), &ctx.config) {
            tracing::info!(user = %user, command = %interaction.data.name, "command refused");
            self.spawn(async move { commands::refuse(&http, &interaction).await });
            return;
        }
        let command = match parse_command(&interaction.data.name, &command_options(&interaction)) {
            Ok(command) => command,
            Err(message) => {
                self.spawn(async move { commands::reject(&http, &interaction, &message).await });
                return;
            }
        };
        if self.pending.len() >= MAX_PENDING_COMMANDS && command != Command::Status {
            let message = "Too many commands are waiting for results; try again in a minute.";
            self.spawn(async move { commands::reject(&http, &interaction, message).await });
            return;
        }
        tracing::info!(user = %user, command = ?command, "command received");

        let id = uuid::Uuid::new_v4().simple().to_string();
        let reply_to = Some(ctx.names().control_replies());
        let (request, kind, wait) = match command {
            Command::Status => {
                self.spawn(commands::status(ctx.bus.clone(), http, interaction));
                return;
            }
            Command::Ping => (
                ControlMessage::Ping(Ping {
                    id: Some(id.clone()),
                    reply_to,
                }),
                PendingKind::Ping {
                    pongs: Vec::new(),
                    started: Instant::now(),
                },
                commands::PING_WAIT,
            ),
            Command::Rebuild { target } => (
                ControlMessage::Rebuild(Rebuild {
                    target: target.clone(),
                    tag: None,
                    id: Some(id.clone()),
                    reply_to,
                }),
                PendingKind::Rebuild { target },
                commands::REBUILD_WAIT,
            ),
        };

        let deferred = commands::defer(http.clone(), interaction.clone());
        if let Err(error) = ctx
            .bus
            .publish(&ctx.names().control(), &request.encode())
            .await
        {
            let text = format!("Cannot reach the bus: {error}");
            self.spawn(async move { commands::edit(&http, &interaction, deferred, &text).await });
            return;
        }
        let due = ctx.send_after(wait, DiscordMsg::CommandDue(id.clone()));
        self.pending.insert(
            id,
            PendingCommand {
                interaction,
                deferred,
                kind,
                _due: due,
            },
        );
    }

    /// Collects a pong for a `/ping`, or replies to a `/rebuild` with the builder's result.
    fn record_reply(&mut self, reply: ControlMessage) {
        match reply {
            ControlMessage::Pong(pong) => {
                let Some(id) = pong.id.as_deref() else { return };
                if let Some(PendingCommand {
                    kind: PendingKind::Ping { pongs, .. },
                    ..
                }) = self.pending.get_mut(id)
                    && pongs.len() < MAX_PONGS
                {
                    pongs.push(serde_json::to_value(&pong).unwrap_or_default());
                }
            }
            ControlMessage::RebuildResult(result) => {
                let Some(id) = result.id.clone() else { return };
                let is_rebuild = matches!(
                    self.pending.get(&id),
                    Some(PendingCommand {
                        kind: PendingKind::Rebuild { .. },
                        ..
                    })
                );
                if is_rebuild && let Some(pending) = self.pending.remove(&id) {
                    let value = serde_json::to_value(&result).unwrap_or_default();
                    self.reply(pending, replies::rebuild_text(&value));
                }
            }
            _ => {}
        }
    }

    /// Ends a command's wait: a `/ping` replies with the pongs so far, a `/rebuild` with the
    /// lack of a result.
    fn finish_due(&mut self, id: &str) {
        let Some(pending) = self.pending.remove(id) else {
            return;
        };
        let text = match &pending.kind {
            PendingKind::Ping { pongs, started } => {
                replies::ping_text(pongs, started.elapsed().as_millis() as u64)
            }
            PendingKind::Rebuild { target } => format!(
                "No result from the builder for **{target}** within {} minutes; check its logs.",
                commands::REBUILD_WAIT.as_secs() / 60
            ),
        };
        self.reply(pending, text);
    }

    fn reply(&mut self, pending: PendingCommand, text: String) {
        let http = self.http.clone();
        let PendingCommand {
            interaction,
            deferred,
            ..
        } = pending;
        self.spawn(async move { commands::edit(&http, &interaction, deferred, &text).await });
    }
}

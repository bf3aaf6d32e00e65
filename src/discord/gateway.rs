//! The gateway connection (serenity's client) for incoming messages and slash commands.
//!
//! The connection runs beside outgoing delivery and never blocks it: notices go over HTTP
//! whether or not the gateway is connected. Received messages and commands go to the service
//! as [`GatewayEvent`]s through a bounded channel. Connection changes are logged once each
//! (connected, lost, resumed), not once per reconnect attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serenity::all::{
    ClientBuilder, CommandInteraction, ConnectionStage, Context, EventHandler, GatewayIntents,
    Interaction, Message, Ready, ResumedEvent, ShardManager, ShardStageUpdateEvent,
};
use serenity::http::Http;
use serenity::model::id::GuildId;
use tokio::sync::mpsc;

use super::incoming::{IncomingMessage, command_definitions};

/// First wait before the gateway is tried again after it failed to start or ended.
const INITIAL_RESTART_DELAY: Duration = Duration::from_secs(5);

/// Maximum wait between gateway restarts. A wrong intent or token needs a fix in Discord's
/// developer portal, so ten minutes keeps the failed logins rare while a fix is picked up soon.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(600);

/// Time after which a gateway that has not connected is logged as failing, once. Serenity
/// connects within a few seconds when Discord is reachable.
const CONNECT_WARNING_AFTER: Duration = Duration::from_secs(30);

/// Event the gateway passes to the service.
#[derive(Debug)]
pub enum GatewayEvent {
    /// A message in a channel the bot can read (already converted for the watch rules).
    Message(IncomingMessage),
    /// A slash command invocation, which needs a response within Discord's 3 s deadline.
    Command(Box<CommandInteraction>),
}

/// Builds the intents the bot requests. Watch rules read message content in guild channels, which needs
/// `GUILD_MESSAGES` and the privileged `MESSAGE_CONTENT` intent. Slash commands need no
/// intent, so without rules the bot requests none.
pub fn intents(watches_messages: bool) -> GatewayIntents {
    if watches_messages {
        GatewayIntents::GUILD_MESSAGES | GatewayIntents::MESSAGE_CONTENT
    } else {
        GatewayIntents::empty()
    }
}

/// Settings of the gateway connection.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub intents: GatewayIntents,
    /// Guild to register the slash commands in; `None` registers none.
    pub command_guild: Option<GuildId>,
}

/// Runs the gateway client until the task is dropped, restarting it with a capped backoff
/// when it fails. The shards are shut down when the returned guard is dropped.
pub fn spawn_gateway(
    http: Arc<Http>,
    settings: GatewaySettings,
    events: mpsc::Sender<GatewayEvent>,
) -> GatewayGuard {
    let shard_manager = Arc::new(std::sync::Mutex::new(None));
    let task = tokio::spawn(run(http, settings, events, shard_manager.clone()));
    GatewayGuard {
        task: tokio_util::task::AbortOnDropHandle::new(task),
        shard_manager,
    }
}

/// Owns the gateway task; dropping it stops the task and shuts the shards down.
pub struct GatewayGuard {
    task: tokio_util::task::AbortOnDropHandle<()>,
    shard_manager: Arc<std::sync::Mutex<Option<Arc<ShardManager>>>>,
}

impl Drop for GatewayGuard {
    fn drop(&mut self) {
        self.task.abort();
        // Serenity runs each shard in a task of its own, which outlives an aborted client.
        let manager = self
            .shard_manager
            .lock()
            .ok()
            .and_then(|mut manager| manager.take());
        if let (Some(manager), Ok(runtime)) = (manager, tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move { manager.shutdown_all().await });
        }
    }
}

async fn run(
    http: Arc<Http>,
    settings: GatewaySettings,
    events: mpsc::Sender<GatewayEvent>,
    shard_manager: Arc<std::sync::Mutex<Option<Arc<ShardManager>>>>,
) {
    let connection = Arc::new(ConnectionState::default());
    let mut delay = INITIAL_RESTART_DELAY;
    // Whether the current failure was logged; reset once a connection is made.
    let mut failure_logged = false;

    loop {
        let connections_before = connection.connections.load(Ordering::Relaxed);
        let attempt = run_once(&http, &settings, &events, &connection, &shard_manager);
        tokio::pin!(attempt);
        // Serenity retries a failed WebSocket connection on its own and never returns, so
        // a gateway that cannot connect is noticed by the lack of a connection.
        let result = tokio::select! {
            result = &mut attempt => result,
            () = tokio::time::sleep(CONNECT_WARNING_AFTER) => {
                if !connection.connected.load(Ordering::Relaxed) && !failure_logged {
                    tracing::warn!(
                        after_secs = CONNECT_WARNING_AFTER.as_secs(),
                        "discord gateway not connected yet, still trying; notices are still \
                         delivered over HTTP"
                    );
                    failure_logged = true;
                }
                attempt.await
            }
        };

        connection.connected.store(false, Ordering::Relaxed);
        if connection.connections.load(Ordering::Relaxed) != connections_before {
            failure_logged = false;
            delay = INITIAL_RESTART_DELAY;
        }
        match result {
            Ok(()) if !failure_logged => tracing::warn!("discord gateway client ended, restarting"),
            Err(error) if !failure_logged => {
                tracing::warn!(error = %error, fix = error.remedy(), "discord gateway failed");
            }
            _ => {}
        }
        failure_logged = true;
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RESTART_DELAY);
    }
}

/// Failure that stopped the gateway client.
#[derive(Debug, thiserror::Error)]
enum GatewayError {
    #[error("cannot get the gateway URL: {0}")]
    GatewayUrl(serenity::Error),
    #[error("gateway client failed: {0}")]
    Client(serenity::Error),
}

impl GatewayError {
    fn remedy(&self) -> &'static str {
        use serenity::gateway::GatewayError as Gw;
        match self {
            GatewayError::Client(serenity::Error::Gateway(Gw::InvalidAuthentication)) => {
                "the bot token is invalid: reset it in the Discord developer portal (Bot → \
                 Reset Token) and update the config"
            }
            GatewayError::Client(serenity::Error::Gateway(Gw::DisallowedGatewayIntents)) => {
                "watch rules need the Message Content intent: enable it in the Discord developer \
                 portal (Bot → Privileged Gateway Intents), or remove discord.rules"
            }
            _ => "retrying with backoff; outgoing notices are still delivered over HTTP",
        }
    }
}

async fn run_once(
    http: &Arc<Http>,
    settings: &GatewaySettings,
    events: &mpsc::Sender<GatewayEvent>,
    connection: &Arc<ConnectionState>,
    shard_manager: &std::sync::Mutex<Option<Arc<ShardManager>>>,
) -> Result<(), GatewayError> {
    // Serenity falls back to Discord's public gateway when this request fails, which would
    // bypass `discord.api_proxy`. Requesting the URL first, and failing here, keeps every
    // connection on the configured API.
    let url = http
        .get_gateway()
        .await
        .map_err(GatewayError::GatewayUrl)?
        .url;

    let handler = Handler {
        events: events.clone(),
        command_guild: settings.command_guild,
        connection: connection.clone(),
    };
    let mut client = ClientBuilder::new_with_http(clone_http(http), settings.intents)
        .event_handler(handler)
        .await
        .map_err(GatewayError::Client)?;
    *client.ws_url.lock().await = url;
    if let Ok(mut slot) = shard_manager.lock() {
        *slot = Some(client.shard_manager.clone());
    }

    client.start().await.map_err(GatewayError::Client)
}

/// Serenity's client takes its `Http` by value; this builds an equivalent one (same token,
/// proxy and rate-limiter setting) so the caller keeps its own.
fn clone_http(http: &Http) -> Http {
    let builder = serenity::http::HttpBuilder::new(http.token());
    let builder = match &http.proxy {
        Some(proxy) => builder.proxy(proxy.as_str()),
        None => builder,
    };
    builder
        .ratelimiter_disabled(http.ratelimiter.is_none())
        .build()
}

struct Handler {
    events: mpsc::Sender<GatewayEvent>,
    command_guild: Option<GuildId>,
    connection: Arc<ConnectionState>,
}

/// Connection state shared by the event handler and the restart loop.
#[derive(Default)]
struct ConnectionState {
    connected: AtomicBool,
    /// Count of connections and resumptions, so the restart loop can tell whether an attempt
    /// connected at some point.
    connections: AtomicU64,
}

impl ConnectionState {
    /// Records a connection; returns whether the gateway was disconnected before.
    fn connect(&self) -> bool {
        self.connections.fetch_add(1, Ordering::Relaxed);
        !self.connected.swap(true, Ordering::Relaxed)
    }
}

#[serenity::async_trait]
impl EventHandler for Handler {
    async fn ready(&self, ctx: Context, ready: Ready) {
        if self.connection.connect() {
            tracing::info!(user = %ready.user.name, "discord gateway connected");
        }
        let Some(guild) = self.command_guild else {
            return;
        };
        match guild.set_commands(&ctx.http, command_definitions()).await {
            Ok(commands) => {
                tracing::info!(guild = %guild, count = commands.len(), "slash commands registered");
            }
            Err(error) => {
                tracing::warn!(
                    guild = %guild,
                    error = %error,
                    "slash command registration failed: invite the bot to the guild with the \
                     applications.commands scope"
                );
            }
        }
    }

    async fn resume(&self, _ctx: Context, _event: ResumedEvent) {
        if self.connection.connect() {
            tracing::info!("discord gateway resumed");
        }
    }

    async fn shard_stage_update(&self, _ctx: Context, event: ShardStageUpdateEvent) {
        let lost =
            event.old == ConnectionStage::Connected && event.new != ConnectionStage::Connected;
        if lost && self.connection.connected.swap(false, Ordering::Relaxed) {
            tracing::warn!(stage = ?event.new, "discord gateway disconnected, reconnecting");
        }
    }

    async fn message(&self, _ctx: Context, message: Message) {
        // Waiting for room slows the shard down instead of dropping a message.
        let _ = self
            .events
            .send(GatewayEvent::Message(IncomingMessage::from(&message)))
            .await;
    }

    async fn interaction_create(&self, _ctx: Context, interaction: Interaction) {
        if let Interaction::Command(command) = interaction {
            let _ = self
                .events
                .send(GatewayEvent::Command(Box::new(command)))
                .await;
        }
    }
}

//! The API service: the HTTP door from the outside world (phones, scripts in other homes,
//! webhooks) into the bus. It runs under the services supervisor like every service; its
//! state owns the HTTP server, so a restart closes the old listener and connections.
//!
//! - [`config`]: the `[api]` section.
//! - [`server`]: listener, connections, graceful shutdown.
//! - [`app`]: the checks every request passes (route, blocked address, token, rate limit,
//!   method); [`handlers`]: the routes themselves; [`routes`]: path to route.
//! - [`auth`] tokens, [`ratelimit`] token buckets and failed-login blocks, [`webhook`]
//!   HMAC signatures, [`body`] capped body reading, [`rproxy`] request/reply through Redis,
//!   [`replies`] the actor that routes rproxy replies, [`metrics`] what the API counts,
//!   [`error`] how failures become responses.

pub mod app;
pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod handlers;
pub mod metrics;
pub mod ratelimit;
pub mod replies;
pub mod routes;
pub mod rproxy;
pub mod server;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};

use crate::service::{Context, Service, ServiceError, ServiceMessage};
use app::App;
use replies::RepliesHandle;
use server::Server;

pub use config::ApiConfig;

/// Service name.
pub const NAME: &str = "api";
/// How long [`local_addr`] waits for the actor's reply, which comes from memory.
const LOCAL_ADDR_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Api;

pub struct ApiState {
    server: Server,
    /// Declared after the server, so it is dropped after it: draining requests still get
    /// their replies.
    _replies: RepliesHandle,
}

pub enum ApiMsg {
    /// Asks for the address the server listens on (useful with port 0).
    LocalAddr(RpcReplyPort<SocketAddr>),
}

impl Service for Api {
    const NAME: &'static str = NAME;
    type Config = ApiConfig;
    type State = ApiState;
    type Msg = ApiMsg;

    async fn start(ctx: &Context<Self>) -> Result<ApiState, ServiceError> {
        let app = Arc::new(App::new(Arc::clone(&ctx.config), ctx.bus.clone()));
        // Subscribed before the first request can wait for a reply.
        let replies = RepliesHandle::start(ctx.bus.clone(), Arc::clone(&app.pending)).await?;
        let server = Server::start(ctx.config.listen, app).await?;
        if ctx.config.tokens.is_empty() && ctx.config.webhooks.is_empty() {
            tracing::warn!(
                "no api.tokens and no api.webhooks: every route but /healthz and /readyz \
                 returns 401"
            );
        }
        Ok(ApiState {
            server,
            _replies: replies,
        })
    }

    async fn handle(
        _ctx: &Context<Self>,
        state: &mut ApiState,
        message: ApiMsg,
    ) -> Result<(), ServiceError> {
        match message {
            ApiMsg::LocalAddr(reply) => {
                let _ = reply.send(state.server.local_addr());
            }
        }
        Ok(())
    }

    async fn stop(ctx: &Context<Self>, state: &mut ApiState) -> Result<(), ServiceError> {
        let deadline = drain_deadline(ctx.settings.supervisor.shutdown_timeout());
        if state.server.shutdown(deadline).await {
            tracing::info!("api drained");
        } else {
            tracing::warn!(
                deadline_ms = deadline.as_millis() as u64,
                "api requests still running at the drain deadline were cut off"
            );
        }
        Ok(())
    }
}

/// Returns how long shutdown waits for in-flight requests: half the daemon's shutdown
/// deadline and no more than 5 s, leaving the rest for the other services and goodbyes.
pub fn drain_deadline(shutdown_timeout: Duration) -> Duration {
    (shutdown_timeout / 2).min(Duration::from_secs(5))
}

/// Returns the address the API of `instance` in this process listens on, or `None` when it
/// does not run here.
pub async fn local_addr(instance: &str) -> Option<SocketAddr> {
    let name = format!("{NAME}@{instance}");
    let actor = ActorRef::<ServiceMessage<ApiMsg>>::where_is(name)?;
    let timeout_ms = LOCAL_ADDR_TIMEOUT.as_millis() as u64;
    ractor::call_t!(
        actor,
        |reply| ServiceMessage::Own(ApiMsg::LocalAddr(reply)),
        timeout_ms
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_leaves_time_for_others() {
        assert_eq!(
            drain_deadline(Duration::from_secs(10)),
            Duration::from_secs(5)
        );
        assert_eq!(
            drain_deadline(Duration::from_secs(4)),
            Duration::from_secs(2)
        );
    }
}

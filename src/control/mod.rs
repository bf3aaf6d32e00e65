//! The control service: pings every service of every instance on the bus every
//! `control.ping_interval_secs` and keeps track of who answered.
//!
//! Pings go out on `P:control` with `reply_to` set to `P:control:replies`, which this service
//! subscribes; each pong updates the last-seen table, with its round-trip time.

pub mod config;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_util::task::AbortOnDropHandle;

use crate::bus::wire::{Ping, Pong};
use crate::bus::{BusMessage, ControlMessage, Topic};
use crate::service::{Context, Service, ServiceError};

pub use config::ControlConfig;

/// Service name.
pub const NAME: &str = "control";
/// Upper bound of tracked `service@instance` entries, so that a script inventing instance
/// names cannot grow the table without bound.
const MAX_TRACKED: usize = 1_024;

pub struct Control;

/// The last pong of one service of one instance.
#[derive(Debug, Clone)]
pub struct Seen {
    pub pong: Pong,
    pub at: Instant,
    pub rtt: Option<Duration>,
}

pub struct ControlState {
    _ticker: AbortOnDropHandle<()>,
    /// The id and send time of the latest ping.
    last_ping: Option<(String, Instant)>,
    seen: HashMap<String, Seen>,
}

pub enum ControlMsg {
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
        let ticker = ctx.send_interval(ctx.config.ping_interval(), || ControlMsg::Tick);
        Ok(ControlState {
            _ticker: ticker,
            last_ping: None,
            seen: HashMap::new(),
        })
    }

    async fn handle(
        ctx: &Context<Self>,
        state: &mut ControlState,
        message: ControlMsg,
    ) -> Result<(), ServiceError> {
        match message {
            ControlMsg::Tick => state.ping(ctx).await,
        }
        Ok(())
    }

    async fn on_message(
        _ctx: &Context<Self>,
        state: &mut ControlState,
        message: BusMessage,
    ) -> Result<(), ServiceError> {
        match ControlMessage::decode(&message.payload) {
            Ok(ControlMessage::Pong(pong)) => state.record_pong(pong),
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
            let key = format!("{}@{}", goodbye.service, goodbye.instance);
            if state.seen.remove(&key).is_some() {
                tracing::info!(service = %key, "service said goodbye");
            }
        }
        Ok(())
    }

    async fn on_bus_status(
        ctx: &Context<Self>,
        state: &mut ControlState,
        connected: bool,
    ) -> Result<(), ServiceError> {
        // Ping at once when the bus comes up instead of waiting a whole interval.
        if connected {
            state.ping(ctx).await;
        }
        Ok(())
    }
}

impl ControlState {
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
            Ok(_) => self.last_ping = Some((id, Instant::now())),
            Err(error) => tracing::debug!(error = %error, "ping not sent"),
        }
    }

    fn record_pong(&mut self, pong: Pong) {
        let key = format!("{}@{}", pong.service, pong.instance);
        if !self.seen.contains_key(&key) && self.seen.len() >= MAX_TRACKED {
            tracing::debug!(service = %key, "too many services tracked; ignoring pong");
            return;
        }
        let rtt = match (&self.last_ping, &pong.id) {
            (Some((sent_id, sent_at)), Some(id)) if sent_id == id => Some(sent_at.elapsed()),
            _ => None,
        };
        if !self.seen.contains_key(&key) {
            tracing::info!(service = %key, "service answered");
        }
        self.seen.insert(
            key,
            Seen {
                pong,
                at: Instant::now(),
                rtt,
            },
        );
    }
}

//! The actor that receives rproxy replies on `P:rproxy:<instance>` and hands each one to the
//! request waiting for it.
//!
//! It is separate from the API actor because the API actor stops processing messages when
//! its graceful stop begins, while requests that are draining still wait for their replies.
//! The API state owns it through [`RepliesHandle`], so it stops with that state, after the
//! drain.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::rproxy::{HttpReply, Pending};
use crate::bus::{Bus, BusError, Delivery, Topic};

pub struct Replies;

pub struct RepliesArgs {
    pub bus: Bus,
    pub pending: Arc<Pending>,
}

impl Actor for Replies {
    type Msg = Delivery;
    type State = Arc<Pending>;
    type Arguments = RepliesArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Delivery>,
        args: RepliesArgs,
    ) -> Result<Arc<Pending>, ActorProcessingErr> {
        let channel = args.bus.names().rproxy(args.bus.instance());
        args.bus
            .subscribe(vec![Topic::Channel(channel)], myself.get_derived())
            .await?;
        Ok(args.pending)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Delivery>,
        message: Delivery,
        pending: &mut Arc<Pending>,
    ) -> Result<(), ActorProcessingErr> {
        let Delivery::Message(message) = message else {
            return Ok(());
        };
        match HttpReply::decode(&message.payload) {
            Ok(reply) => {
                let id = reply.id.clone();
                if !pending.complete(reply) {
                    metrics::counter!("almagest_api_rproxy_replies_unmatched_total").increment(1);
                    tracing::debug!(
                        id,
                        "rproxy reply for no waiting request (late or wait=false)"
                    );
                }
            }
            Err(error) => {
                metrics::counter!("almagest_api_rproxy_replies_invalid_total").increment(1);
                // A reply that names its request but is malformed ends that request with 502.
                let id = serde_json::from_str::<serde_json::Value>(&message.payload)
                    .ok()
                    .and_then(|value| value.get("id")?.as_str().map(str::to_string));
                let failed = id.is_some_and(|id| pending.fail(&id, error.to_string()));
                if !failed {
                    tracing::debug!(error = %error, "ignored an invalid rproxy reply");
                }
            }
        }
        Ok(())
    }
}

/// The running reply actor; dropping the handle stops it.
pub struct RepliesHandle {
    actor: ActorRef<Delivery>,
}

impl RepliesHandle {
    /// Starts the actor and returns once its subscription is routed.
    pub async fn start(bus: Bus, pending: Arc<Pending>) -> Result<RepliesHandle, BusError> {
        let (actor, _) = Actor::spawn(None, Replies, RepliesArgs { bus, pending })
            .await
            .map_err(|error| BusError::Unavailable(format!("rproxy reply actor: {error}")))?;
        Ok(RepliesHandle { actor })
    }
}

impl Drop for RepliesHandle {
    fn drop(&mut self) {
        self.actor.stop(None);
    }
}

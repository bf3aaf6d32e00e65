//! The bus: how services publish, subscribe and store state.
//!
//! The gateway actor ([`gateway`]) owns the backend and routes subscribed messages to the
//! actors that asked for them. Everything else goes through the [`Bus`] handle, a cheap
//! clone that calls the backend directly, so a publish is never a round trip through an
//! actor's mailbox. The handle outlives gateway restarts: a new gateway installs its backend
//! into the same handle, and calls fail with [`BusError::Unavailable`] in between.

pub mod admin;
pub mod backend;
pub mod embedded;
pub mod gateway;
pub mod names;
pub mod redis;
pub mod wire;

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::{ActorRef, DerivedActorRef};
use serde::Serialize;

pub use backend::{Backend, BackendEvent, BusError, KeyValue, ReadFrom, StreamEntry, Topic, Write};
pub use names::{Names, Stub};
pub use wire::{ControlMessage, Level, Notification};

use crate::config::Config;

/// How long a subscription request may wait for the gateway. The gateway answers from memory,
/// so only a gateway that is being restarted comes near this.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Cap of a durable stub's stream (`P:qs:<stub>`), enough for a worker that restarts to catch
/// up without the stream growing without bound.
pub const QUEUE_STREAM_MAX_LEN: u64 = 10_000;

/// A message received on a subscribed channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    pub channel: String,
    /// The pattern that matched, for pattern subscriptions.
    pub pattern: Option<String>,
    pub payload: String,
}

/// Message from the gateway to a subscribed actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Message(BusMessage),
    /// The backend connected (`true`) or lost its connection (`false`). Sent once right after
    /// subscribing, then on every change.
    Status(bool),
}

/// A subscriber: any actor whose message type can carry a [`Delivery`].
pub type Subscriber = DerivedActorRef<Delivery>;

struct Inner {
    names: Names,
    instance: String,
    notify_max_len: u64,
    backend: RwLock<Option<Arc<dyn Backend>>>,
}

/// The handle every service uses for bus operations. Cloning is cheap.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("prefix", &self.inner.names.prefix())
            .field("instance", &self.inner.instance)
            .finish()
    }
}

impl Bus {
    pub fn new(config: &Config) -> Bus {
        Bus {
            inner: Arc::new(Inner {
                names: Names::new(&config.bus.prefix),
                instance: config.bus.instance.clone(),
                notify_max_len: config.bus.notify_max_len,
                backend: RwLock::new(None),
            }),
        }
    }

    pub fn names(&self) -> &Names {
        &self.inner.names
    }

    /// This process's `bus.instance`.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Registered name of this instance's gateway actor.
    pub fn gateway_name(&self) -> String {
        format!("{}@{}", gateway::NAME, self.inner.instance)
    }

    /// Makes `backend` the one every call uses until the returned guard is dropped.
    pub(crate) fn install(&self, backend: Arc<dyn Backend>) -> Installed {
        *self.slot() = Some(backend);
        Installed { bus: self.clone() }
    }

    fn slot(&self) -> std::sync::RwLockWriteGuard<'_, Option<Arc<dyn Backend>>> {
        self.inner
            .backend
            .write()
            .expect("backend slot lock is never poisoned: no code panics while holding it")
    }

    /// The current backend, or [`BusError::Unavailable`] when none is installed or it is
    /// disconnected.
    pub fn backend(&self) -> Result<Arc<dyn Backend>, BusError> {
        let backend = self
            .inner
            .backend
            .read()
            .expect("backend slot lock is never poisoned: no code panics while holding it")
            .clone()
            .ok_or_else(|| BusError::Unavailable("the gateway is not running".into()))?;
        if backend.is_connected() {
            Ok(backend)
        } else {
            Err(BusError::Unavailable(format!(
                "the {} backend is not connected",
                backend.kind()
            )))
        }
    }

    pub fn is_connected(&self) -> bool {
        self.backend().is_ok()
    }

    /// Asks the gateway to route messages of `topics` to `subscriber`. The route lasts as long
    /// as the subscriber's actor; a restarted actor subscribes again from its `pre_start`.
    pub async fn subscribe(
        &self,
        topics: Vec<Topic>,
        subscriber: Subscriber,
    ) -> Result<(), BusError> {
        let name = self.gateway_name();
        let gateway = ActorRef::<gateway::GatewayMessage>::where_is(&name)
            .ok_or_else(|| BusError::Unavailable(format!("gateway {name} is not running")))?;
        let timeout_ms = SUBSCRIBE_TIMEOUT.as_millis() as u64;
        ractor::call_t!(
            gateway,
            |reply| gateway::GatewayMessage::Subscribe {
                topics,
                subscriber,
                reply,
            },
            timeout_ms
        )
        .map_err(|error| BusError::Unavailable(format!("gateway {name}: {error}")))
    }

    /// Publishes `payload` on `channel`; returns how many subscribers received it.
    pub async fn publish(&self, channel: &str, payload: &str) -> Result<u64, BusError> {
        self.backend()?.publish(channel, payload).await
    }

    /// Publishes `value` as JSON.
    pub async fn publish_json<T: Serialize>(
        &self,
        channel: &str,
        value: &T,
    ) -> Result<u64, BusError> {
        let payload = serde_json::to_string(value).map_err(|error| BusError::Command {
            operation: "encode message",
            message: error.to_string(),
        })?;
        self.publish(channel, &payload).await
    }

    /// Publishes a service event on `P:events:<service>`. `event` must serialize to a JSON
    /// object with a `"type"`; an `"at"` timestamp is added when missing.
    pub async fn publish_event<T: Serialize>(
        &self,
        service: &str,
        event: &T,
    ) -> Result<u64, BusError> {
        let mut value = serde_json::to_value(event).map_err(|error| BusError::Command {
            operation: "encode event",
            message: error.to_string(),
        })?;
        if let Some(object) = value.as_object_mut() {
            object
                .entry("at")
                .or_insert_with(|| serde_json::Value::String(wire::now_rfc3339()));
        }
        self.publish_json(&self.names().events(service), &value)
            .await
    }

    /// Publishes a message for `stub` on `P:q:<stub>`, and appends it to the capped stream
    /// `P:qs:<stub>` first when the stub is durable, so a worker that was restarting can read
    /// it later. Returns how many subscribers received it.
    pub async fn publish_to_queue(
        &self,
        stub: &Stub,
        payload: &str,
        durable: bool,
    ) -> Result<u64, BusError> {
        let backend = self.backend()?;
        if durable {
            let fields = [("m".to_string(), payload.to_string())];
            backend
                .stream_add(
                    &self.names().queue_stream(stub),
                    &fields,
                    Some(QUEUE_STREAM_MAX_LEN),
                )
                .await?;
        }
        backend.publish(&self.names().queue(stub), payload).await
    }

    /// Tells people something: appends the notification to `P:notify:stream`, from where the
    /// Discord service delivers it. Returns the stream entry id.
    pub async fn notify(&self, notification: &Notification) -> Result<String, BusError> {
        let fields = [("n".to_string(), notification.encode())];
        self.backend()?
            .stream_add(
                &self.names().notify_stream(),
                &fields,
                Some(self.inner.notify_max_len),
            )
            .await
    }
}

/// Keeps a backend installed in a [`Bus`]; dropping it uninstalls the backend.
pub(crate) struct Installed {
    bus: Bus,
}

impl Drop for Installed {
    fn drop(&mut self) {
        *self.bus.slot() = None;
    }
}

/// The topics of a route table, for [`Backend::set_topics`].
pub(crate) fn topic_set<'a>(topics: impl Iterator<Item = &'a Topic>) -> BTreeSet<Topic> {
    topics.cloned().collect()
}

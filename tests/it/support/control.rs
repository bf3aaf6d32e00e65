//! Helpers for the control service's tests: configs of several instances on one bus, a fake
//! service that answers pings on a schedule, and readers of the registry, the notification
//! stream and the ping rounds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use almagest::bus::Names;
use futures_util::StreamExt;

use super::{Subscription, WAIT, wait_until};

/// Config text for instance `instance` on a bus shared with other instances (same `prefix`).
pub fn instance_config(redis_url: &str, prefix: &str, instance: &str, extra: &str) -> String {
    format!(
        "[bus]\nbackend = \"redis\"\ninstance = \"{instance}\"\nprefix = \"{prefix}\"\n\n\
         [redis]\nurl = \"{redis_url}\"\n\n{extra}\n"
    )
}

/// Reads the registry `P:services`: field → entry.
pub async fn registry(
    client: &redis::Client,
    names: &Names,
) -> BTreeMap<String, serde_json::Value> {
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to test redis");
    let fields: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(names.services())
        .query_async(&mut connection)
        .await
        .expect("read the registry");
    fields
        .into_iter()
        .map(|(field, value)| {
            let entry = serde_json::from_str(&value)
                .unwrap_or_else(|error| panic!("registry entry {field} is not JSON: {error}"));
            (field, entry)
        })
        .collect()
}

/// Reads the state of `field` in the registry, if present.
pub async fn registry_state(client: &redis::Client, names: &Names, field: &str) -> Option<String> {
    registry(client, names)
        .await
        .get(field)
        .and_then(|entry| entry["state"].as_str().map(str::to_string))
}

/// Waits until every one of `fields` has `state` in the registry.
pub async fn wait_for_states(
    client: &redis::Client,
    names: &Names,
    fields: &[String],
    state: &str,
) {
    let what = format!("{fields:?} to be {state} in the registry");
    wait_until(WAIT, &what, || async {
        let entries = registry(client, names).await;
        fields.iter().all(|field| {
            entries
                .get(field)
                .is_some_and(|entry| entry["state"] == state)
        })
    })
    .await;
}

/// Reads every notification in `P:notify:stream`, oldest first.
pub async fn notifications(client: &redis::Client, names: &Names) -> Vec<serde_json::Value> {
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to test redis");
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(names.notify_stream())
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .expect("read the notification stream");
    reply
        .ids
        .iter()
        .map(|entry| {
            let text: String = entry.get("n").expect("notification entry has field n");
            serde_json::from_str(&text).expect("notification is JSON")
        })
        .collect()
}

/// Lists the events of `kind` received on a subscription of `P:events:control`, as
/// `service@instance`.
pub fn events_of(events: &Subscription, kind: &str) -> Vec<String> {
    events
        .json()
        .iter()
        .filter(|event| event["type"] == kind)
        .map(|event| {
            format!(
                "{}@{}",
                event["service"].as_str().unwrap_or_default(),
                event["instance"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// Counts how many times `field` appears in `list`.
pub fn count(list: &[String], field: &str) -> usize {
    list.iter().filter(|item| *item == field).count()
}

/// Counts the pings seen on a subscription of `P:control`: one per ping round of the
/// watching instance.
pub fn pings(control: &Subscription) -> usize {
    control
        .json()
        .iter()
        .filter(|message| message["type"] == "ping")
        .count()
}

/// Waits until `rounds` more ping rounds have started.
pub async fn wait_rounds(control: &Subscription, rounds: usize) {
    let target = pings(control) + rounds;
    wait_until(WAIT, &format!("{rounds} more ping rounds"), || async {
        pings(control) >= target
    })
    .await;
}

/// A service that exists only on the bus: it answers pings as `service@instance` when its
/// schedule says so, until it is silenced.
pub struct FakeService {
    pings: Arc<AtomicU32>,
    silenced: Arc<AtomicBool>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl FakeService {
    /// Starts answering pings on `P:control`; `answers(n)` decides for the n-th ping (from 0).
    pub async fn start(
        client: &redis::Client,
        names: &Names,
        service: &str,
        instance: &str,
        answers: impl Fn(u32) -> bool + Send + 'static,
    ) -> FakeService {
        let mut pubsub = client.get_async_pubsub().await.expect("pubsub connection");
        pubsub.subscribe(names.control()).await.expect("subscribe");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis");
        let pings = Arc::new(AtomicU32::new(0));
        let silenced = Arc::new(AtomicBool::new(false));
        let (seen, quiet) = (Arc::clone(&pings), Arc::clone(&silenced));
        let (service, instance) = (service.to_string(), instance.to_string());
        let task = tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let payload = String::from_utf8_lossy(message.get_payload_bytes()).into_owned();
                let Ok(ping) = serde_json::from_str::<serde_json::Value>(&payload) else {
                    continue;
                };
                if ping["type"] != "ping" {
                    continue;
                }
                let Some(reply_to) = ping["reply_to"].as_str() else {
                    continue;
                };
                let n = seen.fetch_add(1, Ordering::SeqCst);
                if quiet.load(Ordering::SeqCst) || !answers(n) {
                    continue;
                }
                let pong = serde_json::json!({
                    "type": "pong", "id": ping["id"], "service": service, "instance": instance,
                    "version": "0.0.1", "uptime_ms": 1, "restarts": 0
                });
                let _: Result<u64, _> = redis::cmd("PUBLISH")
                    .arg(reply_to)
                    .arg(pong.to_string())
                    .query_async(&mut connection)
                    .await;
            }
        });
        FakeService {
            pings,
            silenced,
            _task: tokio_util::task::AbortOnDropHandle::new(task),
        }
    }

    /// Pings received so far.
    pub fn pings(&self) -> u32 {
        self.pings.load(Ordering::SeqCst)
    }

    /// Stops answering, as a hung service would.
    pub fn silence(&self) {
        self.silenced.store(true, Ordering::SeqCst);
    }
}

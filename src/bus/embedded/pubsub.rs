//! In-process publish/subscribe with Redis's delivery rules.
//!
//! A subscriber is what a connection is to Redis: the gateway (through its [`EventSink`]) or
//! one client of the admin socket (through a bounded queue). A message goes to every
//! subscriber of its exact channel, then to every pattern that matches it, once per matching
//! subscription, and [`Broker::publish`] returns how many deliveries that made, as `PUBLISH`
//! does. A queue subscriber that falls [`QUEUE_CAPACITY`] messages behind is dropped, as Redis
//! disconnects a subscriber past its output buffer limit.

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use super::glob;
use crate::bus::BusMessage;
use crate::bus::backend::{BackendEvent, EventSink, Topic};

/// Messages a queue subscriber may have waiting before it is dropped. An admin client reads
/// its socket as fast as the daemon writes; this absorbs bursts (a ping's pongs, a script
/// publishing in a loop) without letting a stalled client hold memory without bound.
pub const QUEUE_CAPACITY: usize = 4_096;

/// Identifies one subscriber of a [`Broker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriberId(u64);

/// Where a subscriber's messages go.
pub enum Delivery {
    Sink(EventSink),
    Queue(mpsc::Sender<BusMessage>),
}

#[derive(Default)]
struct Routes {
    deliveries: HashMap<SubscriberId, Delivery>,
    topics: HashMap<SubscriberId, BTreeSet<Topic>>,
    channels: HashMap<String, Vec<SubscriberId>>,
    patterns: HashMap<String, Vec<SubscriberId>>,
}

impl Routes {
    fn unroute(&mut self, id: SubscriberId) {
        for topic in self.topics.remove(&id).unwrap_or_default() {
            match topic {
                Topic::Channel(channel) => remove_from(&mut self.channels, &channel, id),
                Topic::Pattern(pattern) => remove_from(&mut self.patterns, &pattern, id),
            }
        }
    }

    fn route(&mut self, id: SubscriberId, topics: BTreeSet<Topic>) {
        for topic in &topics {
            match topic {
                Topic::Channel(channel) => self.channels.entry(channel.clone()).or_default(),
                Topic::Pattern(pattern) => self.patterns.entry(pattern.clone()).or_default(),
            }
            .push(id);
        }
        self.topics.insert(id, topics);
    }
}

fn remove_from(map: &mut HashMap<String, Vec<SubscriberId>>, name: &str, id: SubscriberId) {
    if let Some(subscribers) = map.get_mut(name) {
        subscribers.retain(|known| *known != id);
        if subscribers.is_empty() {
            map.remove(name);
        }
    }
}

/// The subscribers of one embedded backend and their topics.
#[derive(Default)]
pub struct Broker {
    routes: RwLock<Routes>,
    next_id: AtomicU64,
}

impl Broker {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Routes> {
        self.routes
            .read()
            .expect("route lock is never poisoned: no code panics while holding it")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Routes> {
        self.routes
            .write()
            .expect("route lock is never poisoned: no code panics while holding it")
    }

    /// Adds a subscriber without topics.
    pub fn add(&self, delivery: Delivery) -> SubscriberId {
        let id = SubscriberId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut routes = self.write();
        routes.deliveries.insert(id, delivery);
        routes.topics.insert(id, BTreeSet::new());
        id
    }

    pub fn remove(&self, id: SubscriberId) {
        let mut routes = self.write();
        routes.unroute(id);
        routes.deliveries.remove(&id);
    }

    /// Replaces the topics of a subscriber.
    pub fn set_topics(&self, id: SubscriberId, topics: BTreeSet<Topic>) {
        let mut routes = self.write();
        if !routes.deliveries.contains_key(&id) {
            return;
        }
        routes.unroute(id);
        routes.route(id, topics);
    }

    /// Delivers `payload` to every matching subscription; returns how many deliveries were
    /// made.
    pub fn publish(&self, channel: &str, payload: &str) -> u64 {
        let mut delivered = 0;
        let mut overflowed = Vec::new();
        {
            let routes = self.read();
            let exact = routes
                .channels
                .get(channel)
                .into_iter()
                .flatten()
                .map(|id| (*id, None));
            let by_pattern = routes
                .patterns
                .iter()
                .filter(|(pattern, _)| glob::matches(pattern, channel))
                .flat_map(|(pattern, ids)| ids.iter().map(move |id| (*id, Some(pattern))));
            for (id, pattern) in exact.chain(by_pattern) {
                let Some(delivery) = routes.deliveries.get(&id) else {
                    continue;
                };
                let message = BusMessage {
                    channel: channel.to_string(),
                    pattern: pattern.cloned(),
                    payload: payload.to_string(),
                };
                if deliver(delivery, message) {
                    delivered += 1;
                } else {
                    overflowed.push(id);
                }
            }
        }
        for id in overflowed {
            tracing::warn!(
                capacity = QUEUE_CAPACITY,
                "dropped an admin subscriber that stopped reading"
            );
            self.remove(id);
        }
        delivered
    }

    /// How many subscribers each exact channel has, not counting pattern subscriptions, as
    /// `PUBSUB NUMSUB` counts.
    pub fn subscriber_counts(&self, channels: &[String]) -> Vec<u64> {
        let routes = self.read();
        channels
            .iter()
            .map(|channel| {
                routes
                    .channels
                    .get(channel)
                    .map_or(0, |ids| ids.len() as u64)
            })
            .collect()
    }
}

/// Hands one message over; `false` when a queue subscriber is full or gone.
fn deliver(delivery: &Delivery, message: BusMessage) -> bool {
    match delivery {
        Delivery::Sink(sink) => {
            sink(BackendEvent::Message {
                channel: message.channel,
                pattern: message.pattern,
                payload: message.payload,
            });
            true
        }
        Delivery::Queue(queue) => queue.try_send(message).is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(list: &[Topic]) -> BTreeSet<Topic> {
        list.iter().cloned().collect()
    }

    #[test]
    fn channel_and_pattern_count_twice() {
        let broker = Broker::default();
        let (queue, mut received) = mpsc::channel(16);
        let id = broker.add(Delivery::Queue(queue));
        broker.set_topics(
            id,
            topics(&[Topic::Channel("a:b".into()), Topic::Pattern("a:*".into())]),
        );
        assert_eq!(broker.publish("a:b", "x"), 2);
        assert_eq!(broker.publish("a:c", "y"), 1);
        assert_eq!(broker.publish("b", "z"), 0);
        assert_eq!(received.try_recv().unwrap().pattern, None);
        assert_eq!(received.try_recv().unwrap().pattern.as_deref(), Some("a:*"));
        assert_eq!(received.try_recv().unwrap().channel, "a:c");
    }

    #[test]
    fn replaced_topics_stop_routing() {
        let broker = Broker::default();
        let (queue, _received) = mpsc::channel(16);
        let id = broker.add(Delivery::Queue(queue));
        broker.set_topics(id, topics(&[Topic::Channel("old".into())]));
        broker.set_topics(id, topics(&[Topic::Channel("new".into())]));
        assert_eq!(broker.publish("old", "x"), 0);
        assert_eq!(
            broker.subscriber_counts(&["old".into(), "new".into()]),
            [0, 1]
        );
        broker.remove(id);
        assert_eq!(broker.publish("new", "x"), 0);
    }

    #[test]
    fn full_queue_drops_subscriber() {
        let broker = Broker::default();
        let (queue, _received) = mpsc::channel(1);
        let id = broker.add(Delivery::Queue(queue));
        broker.set_topics(id, topics(&[Topic::Channel("c".into())]));
        assert_eq!(broker.publish("c", "1"), 1);
        assert_eq!(broker.publish("c", "2"), 0);
        assert_eq!(broker.subscriber_counts(&["c".into()]), [0]);
    }
}

//! The conformance suite of the `Backend` trait: every case is one generic body, run against
//! a real redis-server (with append-only persistence, so restarts keep data) and against the
//! embedded backend in a temporary directory. The harness plays the gateway: it owns the
//! backend, sets its topics and reads its events.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use almagest::bus::backend::{
    Backend, BackendEvent, BusError, EventSink, KeyValue, ReadFrom, StreamEntry, Topic, Write,
};
use almagest::bus::embedded::EmbeddedBackend;
use almagest::bus::redis::RedisBackend;
use almagest::config::{BackendKind, Config};
use tokio::sync::mpsc;

use crate::support::{
    RedisServer, WAIT, config_text, embedded_config_text, on_both_backends, parse_config, unique,
    wait_for, wait_until,
};

on_both_backends!(
    connected_once_at_start,
    publish_counts_receivers,
    patterns_follow_redis_globs,
    subscriber_counts_exact_channels,
    replaced_topics_stop_delivery,
    strings_set_get_delete,
    ttl_expires_keys,
    set_without_ttl_clears_expiry,
    set_if_absent_only_once,
    counters_in_pipeline,
    pipeline_continues_after_rejection,
    hashes_set_get_delete,
    sorted_top_orders_by_score,
    sorted_keep_top_drops_lowest,
    expire_in_pipeline,
    read_key_reports_types,
    wrong_type_rejected,
    stream_add_and_range,
    stream_maxlen_trims_oldest,
    group_reads_new_then_pending,
    group_create_idempotent_from_end,
    group_create_makes_stream,
    group_read_without_group_fails,
    ack_counts_pending_only,
    claim_idle_moves_entries,
    claim_drops_trimmed_entries,
    blocking_read_wakes_on_add,
    blocking_read_times_out_empty,
    restart_keeps_state,
    unavailable_fails_at_once,
);

/// Channel prefix of the probe pattern that shows the harness's subscriptions are active.
const PROBE: &str = "probe-ready:";

/// One backend under test, used as the gateway uses it.
struct Harness {
    kind: BackendKind,
    config: Config,
    backend: Option<Arc<dyn Backend>>,
    /// The same backend as `backend` on the embedded kind, for its own methods.
    embedded: Option<Arc<EmbeddedBackend>>,
    sink: EventSink,
    events: mpsc::UnboundedReceiver<BackendEvent>,
    redis: Option<RedisServer>,
    _data: Option<tempfile::TempDir>,
}

impl Harness {
    async fn start(kind: BackendKind) -> Harness {
        let (events_tx, events) = mpsc::unbounded_channel();
        let sink: EventSink = Arc::new(move |event| {
            let _ = events_tx.send(event);
        });
        let (config, redis, data) = match kind {
            BackendKind::Redis => {
                let redis = RedisServer::start_with(&[
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                ]);
                (
                    parse_config(&config_text(&redis.url(), "")),
                    Some(redis),
                    None,
                )
            }
            BackendKind::Embedded => {
                let data = tempfile::tempdir().expect("create data dir");
                let config = parse_config(&embedded_config_text(data.path(), ""));
                (config, None, Some(data))
            }
        };
        let mut harness = Harness {
            kind,
            config,
            backend: None,
            embedded: None,
            sink,
            events,
            redis,
            _data: data,
        };
        harness.open();
        let first = tokio::time::timeout(WAIT, harness.events.recv()).await;
        assert_eq!(first, Ok(Some(BackendEvent::Connected)), "first event");
        harness
    }

    /// Starts the backend on the harness's config.
    fn open(&mut self) {
        let sink = Arc::clone(&self.sink);
        match self.kind {
            BackendKind::Redis => {
                let backend = RedisBackend::start(&self.config.redis, sink).expect("redis backend");
                self.backend = Some(Arc::new(backend));
            }
            BackendKind::Embedded => {
                let backend = Arc::new(
                    EmbeddedBackend::start(&self.config.bus, sink).expect("embedded backend"),
                );
                self.backend = Some(Arc::clone(&backend) as Arc<dyn Backend>);
                self.embedded = Some(backend);
            }
        }
    }

    fn b(&self) -> &dyn Backend {
        self.backend.as_deref().expect("backend is running")
    }

    /// A key or channel name unique to this test.
    fn name(&self, what: &str) -> String {
        format!("{}:{what}", self.config.bus.prefix)
    }

    /// Makes `topics` the backend's subscriptions and waits until they are active.
    async fn subscribe(&mut self, topics: &[Topic]) {
        // A fresh probe pattern each time: an older one may be active before the new topics.
        let probe_prefix = format!("{PROBE}{}:", unique("p"));
        let mut wanted: BTreeSet<Topic> = topics.iter().cloned().collect();
        wanted.insert(Topic::Pattern(format!("{probe_prefix}*")));
        self.b().set_topics(wanted);
        let probe = format!("{probe_prefix}x");
        // The link subscribes new channels, then every new pattern in one PSUBSCRIBE, so the
        // probe pattern answering means every topic is active.
        wait_until(WAIT, "the subscriptions are active", || async {
            self.b().publish(&probe, "probe").await.unwrap_or(0) > 0
        })
        .await;
    }

    /// The next published message, skipping probes and connection events.
    async fn message(&mut self, timeout: Duration) -> Option<(String, Option<String>, String)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .ok()??;
            if let BackendEvent::Message {
                channel,
                pattern,
                payload,
            } = event
                && !channel.starts_with(PROBE)
            {
                return Some((channel, pattern, payload));
            }
        }
    }

    /// Every message that arrives within `window`.
    async fn messages_within(&mut self, window: Duration) -> Vec<(String, Option<String>, String)> {
        let deadline = Instant::now() + window;
        let mut found = Vec::new();
        while let Some(message) = self
            .message(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            found.push(message);
        }
        found
    }

    /// Stops and starts the store the way each backend is restarted in production: Redis
    /// with its append-only file, the embedded store by closing and reopening its file.
    async fn restart(&mut self) {
        match self.kind {
            BackendKind::Redis => {
                let redis = self.redis.as_mut().expect("redis server");
                redis.stop();
                redis.launch();
                wait_until(WAIT, "redis is back", || async {
                    self.b().publish("x", "x").await.is_ok()
                })
                .await;
            }
            BackendKind::Embedded => {
                self.backend = None;
                self.embedded = None;
                self.open();
            }
        }
    }

    /// Takes the store away: Redis stops; the embedded store fails as on a broken disk and
    /// comes back by itself after `down_for`.
    fn go_down(&mut self, down_for: Duration) {
        match self.kind {
            BackendKind::Redis => self.redis.as_mut().expect("redis server").stop(),
            BackendKind::Embedded => self
                .embedded
                .as_ref()
                .expect("embedded backend")
                .simulate_store_failure(down_for),
        }
    }

    /// Brings Redis back; the embedded store returns by itself.
    fn come_back(&mut self) {
        if let Some(redis) = &mut self.redis {
            redis.launch();
        }
    }
}

fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn ids(entries: &[StreamEntry]) -> Vec<String> {
    entries.iter().map(|entry| entry.id.clone()).collect()
}

/// Whether an error is Redis's rejection with `code` (`WRONGTYPE`, `NOGROUP`, …).
fn is_rejection(result: &Result<impl std::fmt::Debug, BusError>, code: &str) -> bool {
    matches!(result, Err(BusError::Command { message, .. }) if message.contains(code))
}

async fn connected_once_at_start(kind: BackendKind) {
    let mut h = Harness::start(kind).await;
    assert!(h.b().is_connected());
    let later = tokio::time::timeout(Duration::from_millis(300), h.events.recv()).await;
    assert!(later.is_err(), "unexpected event {later:?}");
}

async fn publish_counts_receivers(kind: BackendKind) {
    let mut h = Harness::start(kind).await;
    let channel = h.name("news:today");
    assert_eq!(h.b().publish(&channel, "nobody").await, Ok(0));

    h.subscribe(&[Topic::Channel(channel.clone())]).await;
    assert_eq!(h.b().publish(&channel, "one").await, Ok(1));
    let message = h.message(WAIT).await;
    assert_eq!(message, Some((channel.clone(), None, "one".to_string())));

    let pattern = h.name("news:*");
    h.subscribe(&[
        Topic::Channel(channel.clone()),
        Topic::Pattern(pattern.clone()),
    ])
    .await;
    assert_eq!(h.b().publish(&channel, "two").await, Ok(2));
    let mut received = vec![h.message(WAIT).await, h.message(WAIT).await];
    received.sort();
    assert_eq!(
        received,
        [
            Some((channel.clone(), None, "two".to_string())),
            Some((channel.clone(), Some(pattern), "two".to_string())),
        ]
    );
}

/// Pattern, channel, whether Redis 7 matches them (checked against redis-server 7.0).
const GLOB_CASES: &[(&str, &str, bool)] = &[
    ("q:*", "q:wiki", true),
    ("q:*", "q:", true),
    ("q:*", "qs:wiki", false),
    ("*:done", "torrent:x/y:done", true),
    ("h?llo", "hello", true),
    ("h?llo", "hllo", false),
    ("h[ae]llo", "hallo", true),
    ("h[ae]llo", "hillo", false),
    ("h[^e]llo", "hallo", true),
    ("h[^e]llo", "hello", false),
    ("h[a-c]llo", "hbllo", true),
    ("h[c-a]llo", "hbllo", true),
    ("h[a-c]llo", "hdllo", false),
    ("x\\*", "x*", true),
    ("x\\*", "xy", false),
    ("x[", "x[", false),
    ("x[ab", "xa", true),
    ("x[]", "x]", false),
    ("a*b*c", "a-b-b-c", true),
    ("a*b*c", "a-b-b-", false),
    ("**", "anything", true),
    ("[\\]]", "]", true),
];

async fn patterns_follow_redis_globs(kind: BackendKind) {
    let mut h = Harness::start(kind).await;
    let prefix = h.name("glob:");
    let patterns: BTreeSet<String> = GLOB_CASES
        .iter()
        .map(|(pattern, _, _)| format!("{prefix}{pattern}"))
        .collect();
    let topics: Vec<Topic> = patterns.iter().cloned().map(Topic::Pattern).collect();
    h.subscribe(&topics).await;
    for (pattern, channel, expected) in GLOB_CASES {
        let channel = format!("{prefix}{channel}");
        h.b().publish(&channel, "x").await.expect("publish");
        let matched: Vec<String> = h
            .messages_within(Duration::from_millis(150))
            .await
            .into_iter()
            .filter_map(|(_, pattern, _)| pattern)
            .collect();
        let full_pattern = format!("{prefix}{pattern}");
        assert_eq!(
            matched.contains(&full_pattern),
            *expected,
            "pattern {pattern:?} against channel {channel:?} (matched {matched:?})"
        );
    }
}

async fn subscriber_counts_exact_channels(kind: BackendKind) {
    let mut h = Harness::start(kind).await;
    let (a, b) = (h.name("a"), h.name("b"));
    h.subscribe(&[Topic::Channel(a.clone()), Topic::Pattern(h.name("b*"))])
        .await;
    let counts = h.b().subscriber_counts(&[a, b]).await;
    assert_eq!(counts, Ok(vec![1, 0]));
    assert_eq!(h.b().subscriber_counts(&[]).await, Ok(vec![]));
}

async fn replaced_topics_stop_delivery(kind: BackendKind) {
    let mut h = Harness::start(kind).await;
    let (old, new) = (h.name("old"), h.name("new"));
    h.subscribe(&[Topic::Channel(old.clone())]).await;
    h.subscribe(&[Topic::Channel(new.clone())]).await;
    wait_until(WAIT, "the old channel is unsubscribed", || async {
        h.b().publish(&old, "x").await == Ok(0)
    })
    .await;
    assert_eq!(h.b().publish(&new, "y").await, Ok(1));
}

async fn strings_set_get_delete(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let key = h.name("seen");
    assert_eq!(h.b().get(&key).await, Ok(None));
    h.b().set(&key, "first", None).await.expect("set");
    assert_eq!(h.b().get(&key).await, Ok(Some("first".into())));
    h.b().set(&key, "second", None).await.expect("overwrite");
    assert_eq!(h.b().get(&key).await, Ok(Some("second".into())));
    assert_eq!(h.b().delete(&key).await, Ok(true));
    assert_eq!(h.b().delete(&key).await, Ok(false));
    assert_eq!(h.b().get(&key).await, Ok(None));
}

async fn ttl_expires_keys(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let key = h.name("short");
    h.b()
        .set(&key, "v", Some(Duration::from_millis(300)))
        .await
        .expect("set");
    assert_eq!(h.b().get(&key).await, Ok(Some("v".into())));
    wait_until(WAIT, "the key expires", || async {
        h.b().get(&key).await == Ok(None)
    })
    .await;
    assert_eq!(h.b().read_key(&key).await, Ok(KeyValue::Missing));
    assert_eq!(h.b().delete(&key).await, Ok(false));
}

async fn set_without_ttl_clears_expiry(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let key = h.name("kept");
    h.b()
        .set(&key, "v1", Some(Duration::from_millis(200)))
        .await
        .expect("set with ttl");
    h.b().set(&key, "v2", None).await.expect("set without ttl");
    // Waiting past the first TTL is what this test checks.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.b().get(&key).await, Ok(Some("v2".into())));
}

async fn set_if_absent_only_once(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let key = h.name("torrent:seen:abc");
    let ttl = Some(Duration::from_millis(300));
    assert_eq!(h.b().set_if_absent(&key, "a", ttl).await, Ok(true));
    assert_eq!(h.b().set_if_absent(&key, "b", ttl).await, Ok(false));
    assert_eq!(h.b().get(&key).await, Ok(Some("a".into())));
    wait_until(WAIT, "the first value expires", || async {
        h.b().get(&key).await == Ok(None)
    })
    .await;
    assert_eq!(h.b().set_if_absent(&key, "c", None).await, Ok(true));
    assert_eq!(h.b().delete(&key).await, Ok(true));
    assert_eq!(h.b().set_if_absent(&key, "d", None).await, Ok(true));
    assert_eq!(h.b().get(&key).await, Ok(Some("d".into())));
}

async fn counters_in_pipeline(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let (counter, hash) = (h.name("count"), h.name("stats"));
    let writes = vec![
        Write::IncrBy {
            key: counter.clone(),
            delta: 2,
        },
        Write::IncrBy {
            key: counter.clone(),
            delta: 3,
        },
        Write::HashIncrBy {
            key: hash.clone(),
            field: "hits".into(),
            delta: 7,
        },
        Write::HashIncrBy {
            key: hash.clone(),
            field: "hits".into(),
            delta: -2,
        },
    ];
    h.b().apply(writes).await.expect("apply");
    assert_eq!(h.b().get(&counter).await, Ok(Some("5".into())));
    assert_eq!(h.b().hash_get(&hash, "hits").await, Ok(Some("5".into())));
    assert_eq!(h.b().apply(Vec::new()).await, Ok(()));
}

async fn pipeline_continues_after_rejection(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let (text, after) = (h.name("text"), h.name("after"));
    h.b().set(&text, "not a number", None).await.expect("set");
    let outcome = h
        .b()
        .apply(vec![
            Write::IncrBy {
                key: text.clone(),
                delta: 1,
            },
            Write::Set {
                key: after.clone(),
                value: "applied".into(),
                ttl: None,
            },
        ])
        .await;
    assert!(is_rejection(&outcome, "not an integer"), "{outcome:?}");
    assert_eq!(h.b().get(&text).await, Ok(Some("not a number".into())));
    assert_eq!(h.b().get(&after).await, Ok(Some("applied".into())));
}

async fn hashes_set_get_delete(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let key = h.name("builder:site");
    assert_eq!(h.b().hash_get_all(&key).await, Ok(vec![]));
    h.b()
        .hash_set(&key, &fields(&[("tag", "v1"), ("etag", "abc")]))
        .await
        .expect("hset");
    h.b()
        .hash_set(&key, &fields(&[("tag", "v2")]))
        .await
        .expect("hset again");
    assert_eq!(h.b().hash_get(&key, "tag").await, Ok(Some("v2".into())));
    assert_eq!(h.b().hash_get(&key, "missing").await, Ok(None));
    assert_eq!(
        h.b().hash_get_all(&key).await,
        Ok(fields(&[("etag", "abc"), ("tag", "v2")]))
    );
    let removed = h
        .b()
        .hash_delete(&key, &["etag".into(), "nope".into()])
        .await;
    assert_eq!(removed, Ok(1));
    assert_eq!(h.b().hash_delete(&key, &["tag".into()]).await, Ok(1));
    assert_eq!(h.b().read_key(&key).await, Ok(KeyValue::Missing));
    assert_eq!(h.b().hash_set(&key, &[]).await, Ok(()));
    assert_eq!(h.b().read_key(&key).await, Ok(KeyValue::Missing));
}

async fn sorted_top_orders_by_score(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let key = h.name("dns:domains");
    let increments = [("b", 2.0), ("a", 2.0), ("c", 5.0), ("d", 1.0), ("c", 0.5)];
    let writes = increments
        .iter()
        .map(|(member, delta)| Write::SortedIncrBy {
            key: key.clone(),
            member: member.to_string(),
            delta: *delta,
        })
        .collect();
    h.b().apply(writes).await.expect("apply");
    let top = h.b().sorted_top(&key, 3).await;
    assert_eq!(
        top,
        Ok(vec![
            ("c".into(), 5.5),
            ("b".into(), 2.0),
            ("a".into(), 2.0)
        ])
    );
    assert_eq!(h.b().sorted_top(&key, 0).await, Ok(vec![]));
    assert_eq!(h.b().sorted_top(&key, 10).await.map(|top| top.len()), Ok(4));
    assert_eq!(h.b().sorted_top(&h.name("none"), 5).await, Ok(vec![]));
}

async fn sorted_keep_top_drops_lowest(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let (key, small) = (h.name("dns:domains"), h.name("small"));
    let mut writes: Vec<Write> = [("a", 3.0), ("b", 1.0), ("c", 2.0), ("d", 1.0)]
        .iter()
        .map(|(member, delta)| Write::SortedIncrBy {
            key: key.clone(),
            member: member.to_string(),
            delta: *delta,
        })
        .collect();
    writes.push(Write::SortedKeepTop {
        key: key.clone(),
        keep: 2,
    });
    writes.push(Write::SortedKeepTop {
        key: small.clone(),
        keep: 2,
    });
    h.b().apply(writes).await.expect("apply");
    assert_eq!(
        h.b().sorted_top(&key, 10).await,
        Ok(vec![("a".into(), 3.0), ("c".into(), 2.0)])
    );
    assert_eq!(h.b().read_key(&small).await, Ok(KeyValue::Missing));
}

async fn expire_in_pipeline(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let (key, missing) = (h.name("day"), h.name("missing"));
    h.b()
        .apply(vec![
            Write::SortedIncrBy {
                key: key.clone(),
                member: "10.0.0.2".into(),
                delta: 1.0,
            },
            Write::Expire {
                key: key.clone(),
                ttl: Duration::from_millis(300),
            },
            Write::Expire {
                key: missing.clone(),
                ttl: Duration::from_millis(300),
            },
        ])
        .await
        .expect("apply");
    assert_eq!(h.b().sorted_top(&key, 1).await.map(|top| top.len()), Ok(1));
    wait_until(WAIT, "the sorted set expires", || async {
        h.b().read_key(&key).await == Ok(KeyValue::Missing)
    })
    .await;
    assert_eq!(h.b().read_key(&missing).await, Ok(KeyValue::Missing));
}

async fn read_key_reports_types(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let (text, hash, sorted, stream) = (h.name("t"), h.name("h"), h.name("z"), h.name("s"));
    h.b().set(&text, "v", None).await.expect("set");
    h.b()
        .hash_set(&hash, &fields(&[("f", "v")]))
        .await
        .expect("hset");
    h.b()
        .apply(vec![Write::SortedIncrBy {
            key: sorted.clone(),
            member: "m".into(),
            delta: 1.0,
        }])
        .await
        .expect("zincrby");
    h.b()
        .stream_add(&stream, &fields(&[("n", "1")]), None)
        .await
        .expect("xadd");
    assert_eq!(h.b().read_key(&h.name("none")).await, Ok(KeyValue::Missing));
    assert_eq!(
        h.b().read_key(&text).await,
        Ok(KeyValue::String("v".into()))
    );
    assert_eq!(
        h.b().read_key(&hash).await,
        Ok(KeyValue::Hash(fields(&[("f", "v")])))
    );
    assert_eq!(
        h.b().read_key(&sorted).await,
        Ok(KeyValue::SortedSet { len: 1 })
    );
    assert_eq!(
        h.b().read_key(&stream).await,
        Ok(KeyValue::Stream { len: 1 })
    );
}

async fn wrong_type_rejected(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let (text, hash) = (h.name("text"), h.name("hash"));
    h.b().set(&text, "v", None).await.expect("set");
    h.b()
        .hash_set(&hash, &fields(&[("f", "v")]))
        .await
        .expect("hset");
    assert!(is_rejection(&h.b().get(&hash).await, "WRONGTYPE"));
    assert!(is_rejection(
        &h.b().hash_set(&text, &fields(&[("f", "v")])).await,
        "WRONGTYPE"
    ));
    assert!(is_rejection(&h.b().hash_get_all(&text).await, "WRONGTYPE"));
    assert!(is_rejection(
        &h.b().stream_add(&text, &fields(&[("n", "1")]), None).await,
        "WRONGTYPE"
    ));
    assert!(is_rejection(&h.b().stream_len(&hash).await, "WRONGTYPE"));
    assert!(is_rejection(
        &h.b().stream_create_group(&text, "g", "0").await,
        "WRONGTYPE"
    ));
    // SET replaces a key of any type.
    h.b().set(&hash, "now a string", None).await.expect("set");
    assert_eq!(h.b().get(&hash).await, Ok(Some("now a string".into())));
}

async fn stream_add_and_range(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let key = h.name("notify:stream");
    assert_eq!(h.b().stream_len(&key).await, Ok(0));
    assert_eq!(h.b().stream_range(&key, "-", "+", 10).await, Ok(vec![]));
    let mut added = Vec::new();
    for text in ["a", "b", "c"] {
        let id = h
            .b()
            .stream_add(&key, &fields(&[("n", text), ("at", "now")]), None)
            .await
            .expect("xadd");
        added.push(id);
    }
    assert_eq!(h.b().stream_len(&key).await, Ok(3));
    let all = h
        .b()
        .stream_range(&key, "-", "+", 10)
        .await
        .expect("xrange");
    assert_eq!(ids(&all), added);
    assert_eq!(all[1].get("n"), Some("b"));
    assert_eq!(all[1].fields, fields(&[("at", "now"), ("n", "b")]));
    let first_two = h.b().stream_range(&key, "-", "+", 2).await.expect("xrange");
    assert_eq!(ids(&first_two), added[..2]);
    let from_second = h
        .b()
        .stream_range(&key, &added[1], "+", 10)
        .await
        .expect("xrange");
    assert_eq!(ids(&from_second), added[1..]);
    let after_second = h
        .b()
        .stream_range(&key, &format!("({}", added[1]), "+", 10)
        .await
        .expect("xrange");
    assert_eq!(ids(&after_second), added[2..]);
    let mut sorted = added.clone();
    sorted.sort_by(|a, b| almagest::bus::redis::compare_stream_ids(a, b));
    assert_eq!(sorted, added, "ids increase");
    let empty = h.b().stream_add(&key, &[], None).await;
    assert!(empty.is_err(), "{empty:?}");
}

async fn stream_maxlen_trims_oldest(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let key = h.name("capped");
    let mut first = None;
    let mut last = None;
    for index in 0..300 {
        let id = h
            .b()
            .stream_add(&key, &fields(&[("i", &index.to_string())]), Some(50))
            .await
            .expect("xadd");
        first.get_or_insert(id.clone());
        last = Some(id);
    }
    let len = h.b().stream_len(&key).await.expect("xlen");
    // `MAXLEN ~` keeps at least 50; Redis trims whole nodes of 100 entries.
    assert!((50..=150).contains(&len), "length {len}");
    let first = first.expect("first id");
    let oldest = h.b().stream_range(&key, "-", "+", 1).await.expect("xrange");
    assert_ne!(ids(&oldest), [first]);
    let newest = h
        .b()
        .stream_range(&key, last.as_deref().expect("last id"), "+", 1)
        .await
        .expect("xrange");
    assert_eq!(newest.len(), 1);
}

async fn group_reads_new_then_pending(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let key = h.name("notify:stream");
    let e1 = h
        .b()
        .stream_add(&key, &fields(&[("n", "1")]), None)
        .await
        .expect("xadd");
    h.b()
        .stream_create_group(&key, "discord", "0")
        .await
        .expect("group");
    let read = |from| {
        h.b()
            .stream_read_group(&key, "discord", "c1", from, 10, None)
    };
    let first = read(ReadFrom::New).await.expect("read new");
    assert_eq!(ids(&first), std::slice::from_ref(&e1));
    assert_eq!(first[0].get("n"), Some("1"));
    assert_eq!(read(ReadFrom::New).await, Ok(vec![]));
    let e2 = h
        .b()
        .stream_add(&key, &fields(&[("n", "2")]), None)
        .await
        .expect("xadd");
    assert_eq!(
        ids(&read(ReadFrom::New).await.expect("read")),
        std::slice::from_ref(&e2)
    );
    let pending = read(ReadFrom::Pending).await.expect("read pending");
    assert_eq!(ids(&pending), [e1.clone(), e2.clone()]);
    assert_eq!(pending[1].get("n"), Some("2"));
    let others = h
        .b()
        .stream_read_group(&key, "discord", "c2", ReadFrom::Pending, 10, None)
        .await;
    assert_eq!(others, Ok(vec![]));
    assert_eq!(
        h.b()
            .stream_ack(&key, "discord", std::slice::from_ref(&e1))
            .await,
        Ok(1)
    );
    assert_eq!(ids(&read(ReadFrom::Pending).await.expect("read")), [e2]);
    let limited = h
        .b()
        .stream_read_group(&key, "discord", "c1", ReadFrom::Pending, 1, None)
        .await
        .expect("read");
    assert_eq!(limited.len(), 1);
}

async fn group_create_idempotent_from_end(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let key = h.name("qs:jobs");
    h.b()
        .stream_add(&key, &fields(&[("m", "old")]), None)
        .await
        .expect("xadd");
    h.b()
        .stream_create_group(&key, "workers", "$")
        .await
        .expect("group");
    let read = || {
        h.b()
            .stream_read_group(&key, "workers", "w", ReadFrom::New, 10, None)
    };
    assert_eq!(read().await, Ok(vec![]));
    let new = h
        .b()
        .stream_add(&key, &fields(&[("m", "new")]), None)
        .await
        .expect("xadd");
    assert_eq!(ids(&read().await.expect("read")), [new]);
    h.b()
        .stream_create_group(&key, "workers", "0")
        .await
        .expect("existing group is kept");
    assert_eq!(read().await, Ok(vec![]));
}

async fn group_create_makes_stream(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let key = h.name("notify:stream");
    h.b()
        .stream_create_group(&key, "discord", "$")
        .await
        .expect("group");
    assert_eq!(h.b().read_key(&key).await, Ok(KeyValue::Stream { len: 0 }));
    assert_eq!(h.b().stream_len(&key).await, Ok(0));
    let read = h
        .b()
        .stream_read_group(&key, "discord", "c", ReadFrom::New, 10, None)
        .await;
    assert_eq!(read, Ok(vec![]));
}

async fn group_read_without_group_fails(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let (key, missing) = (h.name("s"), h.name("missing"));
    h.b()
        .stream_add(&key, &fields(&[("n", "1")]), None)
        .await
        .expect("xadd");
    for stream in [&key, &missing] {
        let read = h
            .b()
            .stream_read_group(stream, "nobody", "c", ReadFrom::New, 1, None)
            .await;
        assert!(is_rejection(&read, "NOGROUP"), "{stream}: {read:?}");
        let claim = h
            .b()
            .stream_claim_idle(stream, "nobody", "c", Duration::ZERO, 1)
            .await;
        assert!(is_rejection(&claim, "NOGROUP"), "{stream}: {claim:?}");
    }
}

async fn ack_counts_pending_only(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let key = h.name("s");
    let id = h
        .b()
        .stream_add(&key, &fields(&[("n", "1")]), None)
        .await
        .expect("xadd");
    h.b()
        .stream_create_group(&key, "g", "0")
        .await
        .expect("group");
    assert_eq!(
        h.b().stream_ack(&key, "g", std::slice::from_ref(&id)).await,
        Ok(0)
    );
    h.b()
        .stream_read_group(&key, "g", "c", ReadFrom::New, 10, None)
        .await
        .expect("read");
    assert_eq!(
        h.b().stream_ack(&key, "g", &[id.clone(), id.clone()]).await,
        Ok(1)
    );
    assert_eq!(
        h.b().stream_ack(&key, "g", std::slice::from_ref(&id)).await,
        Ok(0)
    );
    assert_eq!(h.b().stream_ack(&key, "other", &[id]).await, Ok(0));
    assert_eq!(h.b().stream_ack(&h.name("none"), "g", &[]).await, Ok(0));
    let invalid = h.b().stream_ack(&key, "g", &["not-an-id".into()]).await;
    assert!(invalid.is_err(), "{invalid:?}");
}

async fn claim_idle_moves_entries(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let key = h.name("notify:stream");
    h.b()
        .stream_create_group(&key, "g", "$")
        .await
        .expect("group");
    let mut added = Vec::new();
    for text in ["1", "2", "3"] {
        let id = h
            .b()
            .stream_add(&key, &fields(&[("n", text)]), None)
            .await
            .expect("xadd");
        added.push(id);
    }
    h.b()
        .stream_read_group(&key, "g", "c1", ReadFrom::New, 10, None)
        .await
        .expect("read");
    let too_fresh = h
        .b()
        .stream_claim_idle(&key, "g", "c2", Duration::from_secs(60), 10)
        .await;
    assert_eq!(too_fresh, Ok(vec![]));

    let min_idle = Duration::from_millis(200);
    tokio::time::sleep(min_idle + Duration::from_millis(50)).await;
    let claimed = h
        .b()
        .stream_claim_idle(&key, "g", "c2", min_idle, 2)
        .await
        .expect("claim");
    assert_eq!(ids(&claimed), added[..2]);
    assert_eq!(claimed[0].get("n"), Some("1"));
    let mine = h
        .b()
        .stream_read_group(&key, "g", "c2", ReadFrom::Pending, 10, None)
        .await
        .expect("read");
    assert_eq!(ids(&mine), added[..2]);
    let left = h
        .b()
        .stream_read_group(&key, "g", "c1", ReadFrom::Pending, 10, None)
        .await
        .expect("read");
    assert_eq!(ids(&left), added[2..]);
    // The claim and the pending reads just now count as deliveries: nothing is idle yet.
    let again = h
        .b()
        .stream_claim_idle(&key, "g", "c2", min_idle, 10)
        .await
        .expect("claim");
    assert_eq!(again, vec![]);
}

async fn claim_drops_trimmed_entries(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let key = h.name("capped");
    h.b()
        .stream_create_group(&key, "g", "$")
        .await
        .expect("group");
    let first = h
        .b()
        .stream_add(&key, &fields(&[("n", "first")]), None)
        .await
        .expect("xadd");
    h.b()
        .stream_read_group(&key, "g", "c1", ReadFrom::New, 10, None)
        .await
        .expect("read");
    // Enough entries that Redis's node-wise `MAXLEN ~ 1` drops the first node too.
    for index in 0..250 {
        h.b()
            .stream_add(&key, &fields(&[("n", &index.to_string())]), Some(1))
            .await
            .expect("xadd");
    }
    let gone = h.b().stream_range(&key, &first, &first, 1).await;
    assert_eq!(gone, Ok(vec![]), "the first entry was trimmed");
    let pending = h
        .b()
        .stream_read_group(&key, "g", "c1", ReadFrom::Pending, 10, None)
        .await
        .expect("pending read of a trimmed entry");
    assert_eq!(ids(&pending), std::slice::from_ref(&first));
    assert_eq!(pending[0].fields, vec![]);
    let claimed = h
        .b()
        .stream_claim_idle(&key, "g", "c2", Duration::ZERO, 10)
        .await;
    assert_eq!(claimed, Ok(vec![]));
    let after = h
        .b()
        .stream_read_group(&key, "g", "c1", ReadFrom::Pending, 10, None)
        .await;
    assert_eq!(after, Ok(vec![]), "the claim dropped the trimmed entry");
}

async fn blocking_read_wakes_on_add(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let key = h.name("notify:stream");
    h.b()
        .stream_create_group(&key, "g", "$")
        .await
        .expect("group");
    let backend = Arc::clone(h.backend.as_ref().expect("backend"));
    let reader_key = key.clone();
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        backend
            .stream_read_group(
                &reader_key,
                "g",
                "c",
                ReadFrom::New,
                10,
                Some(Duration::from_secs(10)),
            )
            .await
    });
    // The append must come while the read is blocked, so give it a moment to start.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = h
        .b()
        .stream_add(&key, &fields(&[("n", "wake")]), None)
        .await
        .expect("xadd");
    let read = tokio::time::timeout(WAIT, reader)
        .await
        .expect("read returns")
        .expect("read task")
        .expect("read");
    assert_eq!(ids(&read), [id]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woke after {:?}",
        started.elapsed()
    );
}

async fn blocking_read_times_out_empty(kind: BackendKind) {
    let h = Harness::start(kind).await;
    let key = h.name("quiet");
    h.b()
        .stream_create_group(&key, "g", "$")
        .await
        .expect("group");
    let started = Instant::now();
    let read = h
        .b()
        .stream_read_group(
            &key,
            "g",
            "c",
            ReadFrom::New,
            10,
            Some(Duration::from_millis(300)),
        )
        .await;
    assert_eq!(read, Ok(vec![]));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

async fn restart_keeps_state(kind: BackendKind) {
    let mut h = Harness::start(kind).await;
    let (text, temporary, hash, sorted, stream) = (
        h.name("text"),
        h.name("temporary"),
        h.name("hash"),
        h.name("sorted"),
        h.name("stream"),
    );
    h.b().set(&text, "kept", None).await.expect("set");
    h.b()
        .set(&temporary, "until later", Some(Duration::from_secs(600)))
        .await
        .expect("set");
    h.b()
        .hash_set(&hash, &fields(&[("offset", "1234")]))
        .await
        .expect("hset");
    h.b()
        .apply(vec![Write::SortedIncrBy {
            key: sorted.clone(),
            member: "m".into(),
            delta: 3.0,
        }])
        .await
        .expect("zincrby");
    h.b()
        .stream_create_group(&stream, "g", "$")
        .await
        .expect("group");
    let acked = h
        .b()
        .stream_add(&stream, &fields(&[("n", "acked")]), None)
        .await
        .expect("xadd");
    let pending = h
        .b()
        .stream_add(&stream, &fields(&[("n", "pending")]), None)
        .await
        .expect("xadd");
    h.b()
        .stream_read_group(&stream, "g", "c", ReadFrom::New, 10, None)
        .await
        .expect("read");
    h.b()
        .stream_ack(&stream, "g", std::slice::from_ref(&acked))
        .await
        .expect("ack");

    h.restart().await;

    assert_eq!(h.b().get(&text).await, Ok(Some("kept".into())));
    assert_eq!(h.b().get(&temporary).await, Ok(Some("until later".into())));
    assert_eq!(
        h.b().hash_get(&hash, "offset").await,
        Ok(Some("1234".into()))
    );
    assert_eq!(
        h.b().sorted_top(&sorted, 1).await,
        Ok(vec![("m".into(), 3.0)])
    );
    assert_eq!(h.b().stream_len(&stream).await, Ok(2));
    let still_pending = h
        .b()
        .stream_read_group(&stream, "g", "c", ReadFrom::Pending, 10, None)
        .await
        .expect("read pending");
    assert_eq!(ids(&still_pending), [pending]);
    let nothing_new = h
        .b()
        .stream_read_group(&stream, "g", "c", ReadFrom::New, 10, None)
        .await;
    assert_eq!(nothing_new, Ok(vec![]));
}

async fn unavailable_fails_at_once(kind: BackendKind) {
    let mut h = Harness::start(kind).await;
    let key = h.name("k");
    h.go_down(Duration::from_secs(3));
    wait_until(WAIT, "the backend reports the outage", || async {
        !h.b().is_connected()
    })
    .await;
    let started = Instant::now();
    let outcomes = [
        h.b().publish("x", "lost?").await.map(drop),
        h.b().get(&key).await.map(drop),
        h.b().set(&key, "v", None).await.map(drop),
        h.b()
            .stream_add(&key, &fields(&[("n", "1")]), None)
            .await
            .map(drop),
    ];
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "calls took {:?}",
        started.elapsed()
    );
    for outcome in outcomes {
        assert!(
            matches!(outcome, Err(BusError::Unavailable(_))),
            "{outcome:?}"
        );
        assert!(outcome.unwrap_err().is_transient());
    }
    h.come_back();
    wait_for(WAIT, "the backend is back", || async {
        h.b().set(&key, "v", None).await.ok()
    })
    .await;
    assert_eq!(h.b().get(&key).await, Ok(Some("v".into())));
    let mut events = Vec::new();
    while let Ok(event) = h.events.try_recv() {
        if !matches!(event, BackendEvent::Message { .. }) {
            events.push(event);
        }
    }
    assert_eq!(
        events,
        [BackendEvent::Disconnected, BackendEvent::Connected]
    );
}

/// Characters of the random patterns and channels: every glob metacharacter, and few
/// letters, so that classes and ranges often match.
const GLOB_ALPHABET: &[u8] = b"ab-*?[]^\\";

/// A small deterministic generator (xorshift64), so a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn text(&mut self, max_len: u64) -> String {
        let len = 1 + self.next() % max_len;
        (0..len)
            .map(|_| GLOB_ALPHABET[(self.next() % GLOB_ALPHABET.len() as u64) as usize] as char)
            .collect()
    }
}

/// The embedded matcher against Redis itself on random patterns: Redis decides whether a
/// pattern subscription receives each channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glob_agrees_with_redis() {
    let mut h = Harness::start(BackendKind::Redis).await;
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..400 {
        // The round prefix keeps the previous round's pattern, whose unsubscribe Redis may
        // still be processing, from matching this round's channels.
        let pattern = format!("{round}:{}", random.text(6));
        h.subscribe(&[Topic::Pattern(pattern.clone())]).await;
        for _ in 0..8 {
            let channel = format!("{round}:{}", random.text(6));
            let receivers = h.b().publish(&channel, "x").await.expect("publish");
            assert_eq!(
                almagest::bus::embedded::glob_matches(&pattern, &channel),
                receivers == 1,
                "pattern {pattern:?}, channel {channel:?}: redis delivered {receivers}"
            );
        }
    }
}

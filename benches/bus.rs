//! Publish → subscriber latency and throughput, and the latency of a durable stream append
//! (what `notify()` does), on the Redis and the embedded backend side by side:
//!
//! ```text
//! cargo bench --bench bus
//! ```
//!
//! The subscriber is the backend's event sink, which is what the gateway receives. Redis runs
//! as its own `redis-server` on 127.0.0.1 (as beside the daemon in a pod), with the append-only
//! file and `appendfsync always`, as the examples run it; the embedded store lives in a
//! temporary directory. Prints a Markdown table.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use almagest::bus::backend::{Backend, BackendEvent, EventSink, Topic};
use almagest::bus::embedded::EmbeddedBackend;
use almagest::bus::redis::RedisBackend;
use almagest::config::Config;
use tokio::sync::mpsc;

/// Sequential publishes timed one by one.
const LATENCY_SAMPLES: usize = 5_000;
/// Concurrent publishers and messages each, for throughput.
const PUBLISHERS: usize = 4;
const MESSAGES_PER_PUBLISHER: usize = 25_000;
/// Sequential durable appends timed one by one.
const APPEND_SAMPLES: usize = 500;
/// Concurrent appenders and appends each, for durable append throughput.
const APPENDERS: usize = 8;
const APPENDS_PER_APPENDER: usize = 250;
/// A typical event: a JSON object of about a hundred bytes.
const PAYLOAD: &str = r#"{"type":"torrent.completed","at":"2026-12-04T17:00:00Z","client":"nas","hash":"0123456789abcdef"}"#;

struct Sample {
    backend: &'static str,
    publish_p50: Duration,
    publish_p99: Duration,
    publish_rate: f64,
    append_p50: Duration,
    append_p99: Duration,
    append_rate: f64,
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

fn micros(duration: Duration) -> String {
    format!("{:.1} µs", duration.as_secs_f64() * 1e6)
}

/// A redis-server on a free loopback port, stopped on drop.
struct RedisProcess {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisProcess {
    fn start() -> RedisProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server: install the redis-server package");
        RedisProcess {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(text: &str) -> Config {
    Config::from_toml(text, std::path::Path::new("bench.toml"), Default::default())
        .expect("bench config")
}

/// Waits for the backend's first `Connected`, then subscribes `channel`.
async fn subscribe(
    backend: &dyn Backend,
    events: &mut mpsc::UnboundedReceiver<BackendEvent>,
    channel: &str,
) {
    while events.recv().await != Some(BackendEvent::Connected) {}
    backend.set_topics(BTreeSet::from([Topic::Channel(channel.to_string())]));
    while backend.publish(channel, "ready").await.unwrap_or(0) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while tokio::time::timeout(Duration::from_millis(100), events.recv())
        .await
        .is_ok()
    {}
}

async fn next_message(events: &mut mpsc::UnboundedReceiver<BackendEvent>) {
    loop {
        match events.recv().await {
            Some(BackendEvent::Message { .. }) => return,
            Some(_) => {}
            None => panic!("the backend stopped"),
        }
    }
}

async fn measure(
    name: &'static str,
    backend: Arc<dyn Backend>,
    mut events: mpsc::UnboundedReceiver<BackendEvent>,
) -> Sample {
    let channel = "bench:events";
    subscribe(backend.as_ref(), &mut events, channel).await;

    let mut latencies = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..LATENCY_SAMPLES {
        let started = Instant::now();
        backend.publish(channel, PAYLOAD).await.expect("publish");
        next_message(&mut events).await;
        latencies.push(started.elapsed());
    }
    latencies.sort();

    let total = PUBLISHERS * MESSAGES_PER_PUBLISHER;
    let started = Instant::now();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let backend = Arc::clone(&backend);
            tokio::spawn(async move {
                for _ in 0..MESSAGES_PER_PUBLISHER {
                    backend.publish(channel, PAYLOAD).await.expect("publish");
                }
            })
        })
        .collect();
    for _ in 0..total {
        next_message(&mut events).await;
    }
    let publish_rate = total as f64 / started.elapsed().as_secs_f64();
    for publisher in publishers {
        publisher.await.expect("publisher");
    }

    let fields = [("n".to_string(), PAYLOAD.to_string())];
    let mut appends = Vec::with_capacity(APPEND_SAMPLES);
    for _ in 0..APPEND_SAMPLES {
        let started = Instant::now();
        backend
            .stream_add("bench:stream", &fields, Some(10_000))
            .await
            .expect("append");
        appends.push(started.elapsed());
    }
    appends.sort();

    let started = Instant::now();
    let appenders: Vec<_> = (0..APPENDERS)
        .map(|_| {
            let backend = Arc::clone(&backend);
            let fields = fields.clone();
            tokio::spawn(async move {
                for _ in 0..APPENDS_PER_APPENDER {
                    backend
                        .stream_add("bench:stream", &fields, Some(10_000))
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for appender in appenders {
        appender.await.expect("appender");
    }
    let append_rate = (APPENDERS * APPENDS_PER_APPENDER) as f64 / started.elapsed().as_secs_f64();

    Sample {
        backend: name,
        publish_p50: percentile(&latencies, 0.5),
        publish_p99: percentile(&latencies, 0.99),
        publish_rate,
        append_p50: percentile(&appends, 0.5),
        append_p99: percentile(&appends, 0.99),
        append_rate,
    }
}

fn sink() -> (EventSink, mpsc::UnboundedReceiver<BackendEvent>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let sink: EventSink = Arc::new(move |event| {
        let _ = sender.send(event);
    });
    (sink, receiver)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let redis = RedisProcess::start();
    let redis_config = config(&format!(
        "[bus]\nbackend = \"redis\"\ninstance = \"bench\"\n[redis]\nurl = \"redis://127.0.0.1:{}\"\n",
        redis.port
    ));
    let (events, receiver) = sink();
    let backend = RedisBackend::start(&redis_config.redis, events).expect("redis backend");
    let redis_sample = measure("redis", Arc::new(backend), receiver).await;

    let data = tempfile::tempdir().expect("temp dir");
    let embedded_config = config(&format!(
        "[bus]\nbackend = \"embedded\"\ninstance = \"bench\"\ndata_dir = {:?}\n",
        data.path().display().to_string()
    ));
    let (events, receiver) = sink();
    let backend = EmbeddedBackend::start(&embedded_config.bus, events).expect("embedded backend");
    let embedded_sample = measure("embedded", Arc::new(backend), receiver).await;

    println!(
        "| backend | publish → sink p50 | p99 | publish throughput ({PUBLISHERS} publishers) | \
         durable append p50 | p99 | append throughput ({APPENDERS} writers) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for sample in [redis_sample, embedded_sample] {
        println!(
            "| {} | {} | {} | {:.0} msg/s | {} | {} | {:.0} appends/s |",
            sample.backend,
            micros(sample.publish_p50),
            micros(sample.publish_p99),
            sample.publish_rate,
            micros(sample.append_p50),
            micros(sample.append_p99),
            sample.append_rate,
        );
    }
}

//! Core latencies against a real redis-server on a unix socket, with the daemon in-process:
//!
//! - ping round trip: publish a ping, wait for the pongs of the gateway and the control
//!   service; 1,000 pings one after another;
//! - restart: publish the crash drill for the control service and ping every 5 ms until it
//!   answers again; 20 crashes, each after a quiet second so it is a first restart.
//!
//! Run with `cargo bench --bench core`. Prints a Markdown table.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

const PINGS: usize = 1_000;
const CRASHES: usize = 20;

struct Redis {
    child: Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("redis.sock");
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let url = format!("redis+unix://{}", socket.display());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child,
            _dir: dir,
            url,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

struct Client {
    connection: redis::aio::MultiplexedConnection,
    pongs: futures_util::stream::BoxStream<'static, serde_json::Value>,
    control: String,
    reply_to: String,
}

impl Client {
    async fn connect(url: &str, prefix: &str) -> Client {
        let client = redis::Client::open(url).unwrap();
        let reply_to = format!("{prefix}:bench:replies");
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe(&reply_to).await.unwrap();
        let pongs = pubsub
            .into_on_message()
            .filter_map(|message| async move {
                serde_json::from_slice(message.get_payload_bytes()).ok()
            })
            .boxed();
        Client {
            connection: client.get_multiplexed_async_connection().await.unwrap(),
            pongs,
            control: format!("{prefix}:control"),
            reply_to,
        }
    }

    async fn publish(&mut self, payload: String) {
        redis::cmd("PUBLISH")
            .arg(&self.control)
            .arg(payload)
            .query_async::<u64>(&mut self.connection)
            .await
            .unwrap();
    }

    /// Sends ping `id` and returns the pongs (service -> restarts) received within `wait`.
    async fn ping(&mut self, id: &str, wait: Duration, expect: usize) -> HashMap<String, u64> {
        self.ping_matching(id, id, wait, expect).await
    }

    /// Sends ping `id` and returns the pongs (service -> restarts) received within `wait` whose
    /// id starts with `answers_to`, so late answers to earlier pings of a series count too.
    async fn ping_matching(
        &mut self,
        id: &str,
        answers_to: &str,
        wait: Duration,
        expect: usize,
    ) -> HashMap<String, u64> {
        let ping = serde_json::json!({"type":"ping","id":id,"reply_to":self.reply_to});
        self.publish(ping.to_string()).await;
        let mut answers = HashMap::new();
        let deadline = tokio::time::Instant::now() + wait;
        while answers.len() < expect {
            let Ok(Some(pong)) = tokio::time::timeout_at(deadline, self.pongs.next()).await else {
                break;
            };
            let pong_id = pong["id"].as_str().unwrap_or_default();
            if pong_id == id || (answers_to != id && pong_id.starts_with(answers_to)) {
                let service = pong["service"].as_str().unwrap_or_default().to_string();
                answers.insert(service, pong["restarts"].as_u64().unwrap_or_default());
            }
        }
        answers
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    almagest::telemetry::install_crypto_provider();
    let redis = Redis::start();
    let text = format!(
        "[bus]\nbackend = \"redis\"\ninstance = \"bench\"\nprefix = \"bench\"\n[redis]\nurl = \"{}\"\n\
         [supervisor]\nmax_restarts = 1000\nwindow_secs = 1\n\
         [control]\nping_interval_secs = 3600\nallow_crash_command = true\n",
        redis.url
    );
    let config = almagest::config::Config::from_toml(&text, Path::new("bench"), HashMap::new())
        .expect("bench config");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(almagest::run(config, async move {
        let _ = stopped.await;
    }));
    let mut client = Client::connect(&redis.url, "bench").await;
    while client
        .ping("warmup", Duration::from_millis(200), 2)
        .await
        .len()
        < 2
    {}

    let mut round_trips = Vec::with_capacity(PINGS);
    for i in 0..PINGS {
        let started = Instant::now();
        let answers = client.ping(&i.to_string(), Duration::from_secs(5), 2).await;
        assert_eq!(answers.len(), 2, "ping {i} got {answers:?}");
        round_trips.push(started.elapsed());
    }
    round_trips.sort();

    let mut restarts = Vec::with_capacity(CRASHES);
    for crash in 0..CRASHES {
        // A quiet window (window_secs = 1) makes each crash a first restart, without backoff.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let started = Instant::now();
        client
            .publish(r#"{"type":"crash","service":"control"}"#.to_string())
            .await;
        let expected = crash as u64 + 1;
        let mut probe = 0;
        loop {
            probe += 1;
            let answers = client
                .ping_matching(
                    &format!("c{crash}-{probe}"),
                    &format!("c{crash}-"),
                    Duration::from_millis(5),
                    2,
                )
                .await;
            if answers
                .get("control")
                .is_some_and(|restarts| *restarts >= expected)
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "control did not answer after crash {crash}: last answers {answers:?}"
            );
        }
        restarts.push(started.elapsed());
    }
    restarts.sort();

    println!("| measure | samples | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    println!(
        "| ping → pongs of gateway and control | {PINGS} | {} | {} | {} |",
        millis(percentile(&round_trips, 0.5)),
        millis(percentile(&round_trips, 0.99)),
        millis(*round_trips.last().unwrap()),
    );
    println!(
        "| crash drill → first pong after restart | {CRASHES} | {} | {} | {} |",
        millis(percentile(&restarts, 0.5)),
        millis(percentile(&restarts, 0.99)),
        millis(*restarts.last().unwrap()),
    );
    let _ = stop.send(());
    let _ = daemon.await;
}

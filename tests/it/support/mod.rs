//! Shared test helpers: a real `redis-server` per test on a unix socket (or an embedded
//! store in a temporary directory), the daemon in-process or as a child process, and polling
//! with a timeout.

#![allow(dead_code)]

pub mod api;
pub mod bus;
pub mod control;
pub mod dnslog;
pub mod fake_api;
pub mod fake_discord;
pub mod fake_github;
pub mod fake_http;
pub mod fake_kube;
pub mod qbittorrent;
pub mod redis_server;
pub mod torrent_service;
pub mod torrents;
pub mod transmission;

/// Instantiates generic test bodies, each `async fn NAME(kind: BackendKind)`, once per
/// backend: as `on_redis::NAME` and `on_embedded::NAME`.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod on_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(almagest::config::BackendKind::Redis).await;
                }
            )*
        }
        mod on_embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(almagest::config::BackendKind::Embedded).await;
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use almagest::RunError;
use almagest::bus::admin::AdminClient;
use almagest::config::Config;
use futures_util::StreamExt;
use tokio::sync::oneshot;

pub use bus::TestBus;
pub use redis_server::RedisServer;

/// Default time a test waits for a condition. Generous, because CI machines are slow and a
/// test that passes only on a fast machine is worse than a slow test.
pub const WAIT: Duration = Duration::from_secs(20);

/// Polls `condition` every 25 ms until it returns true or `timeout` passes; panics with
/// `what` on timeout.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `probe` until it returns `Some`, then returns the value.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A name unique within this test process: tests share ractor's global actor registry.
pub fn unique(kind: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{kind}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Config text for a test daemon on `redis_url` with a unique instance and prefix; `extra`
/// is appended (sections of the services under test).
pub fn config_text(redis_url: &str, extra: &str) -> String {
    format!(
        "[bus]\nbackend = \"redis\"\ninstance = \"{}\"\nprefix = \"{}\"\n\n[redis]\nurl = \"{redis_url}\"\n\n{extra}\n",
        unique("it"),
        unique("p"),
    )
}

/// Config text for a test daemon on the embedded backend with its store in `data_dir`, a
/// unique instance and prefix; `extra` is appended.
pub fn embedded_config_text(data_dir: &Path, extra: &str) -> String {
    format!(
        "[bus]\nbackend = \"embedded\"\ninstance = \"{}\"\nprefix = \"{}\"\ndata_dir = {:?}\n\n{extra}\n",
        unique("it"),
        unique("p"),
        data_dir.display().to_string(),
    )
}

/// Parses config text; panics with every problem when it is invalid.
pub fn parse_config(text: &str) -> Config {
    Config::from_toml(text, Path::new("test.toml"), HashMap::new())
        .unwrap_or_else(|error| panic!("test config invalid: {error}\n{text}"))
}

/// A daemon running in this process.
pub struct Daemon {
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), RunError>>,
}

impl Daemon {
    pub fn start(config: Config) -> Daemon {
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(almagest::run(config.clone(), async move {
            let _ = shutdown_rx.await;
        }));
        Daemon {
            config,
            shutdown: Some(shutdown),
            handle,
        }
    }

    /// Stops the daemon gracefully and returns how `run` ended.
    pub async fn stop(mut self) -> Result<(), RunError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.handle)
            .await
            .expect("daemon did not stop within 30 s")
            .expect("daemon task panicked")
    }

    /// Waits until `run` returns by itself (for fatal errors).
    pub async fn finished(mut self, timeout: Duration) -> Result<(), RunError> {
        tokio::time::timeout(timeout, &mut self.handle)
            .await
            .expect("daemon did not finish in time")
            .expect("daemon task panicked")
    }

    pub fn names(&self) -> almagest::bus::Names {
        almagest::bus::Names::new(&self.config.bus.prefix)
    }

    pub fn instance(&self) -> &str {
        &self.config.bus.instance
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// The daemon binary as a child process, with its standard error captured in a file.
pub struct DaemonProcess {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

/// The `almagest` binary built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_almagest"))
}

/// A command for the binary with `--config`, without inherited `ALMAGEST__` overrides.
pub fn command(config_path: &Path) -> Command {
    let mut command = Command::new(binary());
    command.arg("--config").arg(config_path);
    for (name, _) in std::env::vars() {
        if name.starts_with("ALMAGEST") {
            command.env_remove(name);
        }
    }
    command.env("RUST_LOG", "info").env_remove("RUST_BACKTRACE");
    command
}

impl DaemonProcess {
    /// Writes `config` to a temporary file and starts `almagest run` on it.
    pub fn spawn(config: &str) -> DaemonProcess {
        let dir = tempfile::tempdir().expect("create temp dir");
        let config_path = dir.path().join("almagest.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log_path = dir.path().join("stderr.log");
        let log = std::fs::File::create(&log_path).expect("create log file");
        let child = command(&config_path)
            .arg("--log-format")
            .arg("json")
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start almagest");
        DaemonProcess {
            child,
            dir,
            config_path,
            log_path,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// How many log lines contain `text`.
    pub fn log_count(&self, text: &str) -> usize {
        self.log()
            .lines()
            .filter(|line| line.contains(text))
            .count()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        let result = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(result, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Waits for the process to exit and returns its status.
    pub async fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for almagest") {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "almagest did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Runs `almagest <args>` on the same config and returns (exit code, stdout, stderr).
    pub fn run_cli(&self, args: &[&str]) -> (i32, String, String) {
        run_cli(&self.config_path, args)
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `almagest --config PATH <args>` and returns (exit code, stdout, stderr).
pub fn run_cli(config_path: &Path, args: &[&str]) -> (i32, String, String) {
    let output = command(config_path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run almagest");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Messages received on one channel or pattern, collected in the background.
pub struct Subscription {
    messages: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl Subscription {
    /// Subscribes through a daemon's admin socket (embedded backend) to `channel` (a pattern
    /// when it contains `*`) and returns once the subscription is active.
    pub async fn start_admin(client: &AdminClient, channel: &str) -> Subscription {
        let (channels, patterns) = if channel.contains('*') {
            (Vec::new(), vec![channel.to_string()])
        } else {
            (vec![channel.to_string()], Vec::new())
        };
        let mut subscription = client
            .subscribe(&channels, &patterns)
            .await
            .expect("subscribe through the admin socket");
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&messages);
        let task = tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                sink.lock()
                    .unwrap()
                    .push((message.channel, message.payload));
            }
        });
        Subscription {
            messages,
            _task: tokio_util::task::AbortOnDropHandle::new(task),
        }
    }

    /// Subscribes to `channel` (a pattern when it contains `*`) and returns once the
    /// subscription is active.
    pub async fn start(client: &redis::Client, channel: &str) -> Subscription {
        let mut pubsub = client.get_async_pubsub().await.expect("pubsub connection");
        if channel.contains('*') {
            pubsub.psubscribe(channel).await.expect("psubscribe");
        } else {
            pubsub.subscribe(channel).await.expect("subscribe");
        }
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&messages);
        let task = tokio::spawn(async move {
            let mut stream = pubsub.into_on_message();
            while let Some(message) = stream.next().await {
                let payload = String::from_utf8_lossy(message.get_payload_bytes()).into_owned();
                sink.lock()
                    .unwrap()
                    .push((message.get_channel_name().to_string(), payload));
            }
        });
        Subscription {
            messages,
            _task: tokio_util::task::AbortOnDropHandle::new(task),
        }
    }

    /// Channels and payloads received so far.
    pub fn messages(&self) -> Vec<(String, String)> {
        self.messages.lock().unwrap().clone()
    }

    /// Payloads received so far.
    pub fn payloads(&self) -> Vec<String> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .map(|(_, payload)| payload.clone())
            .collect()
    }

    /// Payloads received so far, parsed as JSON objects (others are skipped).
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.payloads()
            .iter()
            .filter_map(|payload| serde_json::from_str(payload).ok())
            .collect()
    }
}

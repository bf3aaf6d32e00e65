//! A `redis-server` owned by one test, listening on a unix socket in a temporary directory
//! (TCP turned off with `--port 0`), so tests never touch the Redis on port 6379 and can stop
//! and restart their server without losing its address to another process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct RedisServer {
    dir: tempfile::TempDir,
    socket: PathBuf,
    extra_args: Vec<String>,
    child: Option<Child>,
}

/// The redis-server binary; tests fail with this message when it is missing.
fn redis_server_binary() -> &'static str {
    if Path::new("/usr/bin/redis-server").exists() {
        "/usr/bin/redis-server"
    } else {
        "redis-server"
    }
}

impl RedisServer {
    /// Starts a server without persistence.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// Starts a server with extra arguments, such as `--appendonly yes`.
    pub fn start_with(args: &[&str]) -> RedisServer {
        let mut server = RedisServer::prepare(args);
        server.launch();
        server
    }

    /// Chooses the socket path without starting the server, for tests of a daemon that
    /// starts before its Redis.
    pub fn prepare(args: &[&str]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("almagest-redis")
            .tempdir()
            .expect("create temp dir for redis");
        let socket = dir.path().join("redis.sock");
        RedisServer {
            dir,
            socket,
            extra_args: args.iter().map(|arg| arg.to_string()).collect(),
            child: None,
        }
    }

    /// Starts (or restarts) the server on the same socket and waits until it answers.
    pub fn launch(&mut self) {
        self.launch_with(&[], &self.url());
    }

    /// Restarts the server requiring `password`, so that a test can connect before a daemon
    /// without the password does; `CONFIG SET requirepass ""` lets the daemon in afterwards.
    pub fn launch_with_password(&mut self, password: &str) {
        self.launch_with(
            &["--requirepass", password],
            &self.url_with_password(password),
        );
    }

    fn launch_with(&mut self, args: &[&str], url: &str) {
        assert!(self.child.is_none(), "redis-server is already running");
        let child = Command::new(redis_server_binary())
            .arg("--port")
            .arg("0")
            .arg("--unixsocket")
            .arg(&self.socket)
            .arg("--unixsocketperm")
            .arg("700")
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra_args)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server: install the redis-server package");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !answers_ping(url) {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis+unix:///…/redis.sock`.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// Returns the URL with a password, for a server started by [`RedisServer::launch_with_password`].
    pub fn url_with_password(&self, password: &str) -> String {
        format!("{}?pass={password}", self.url())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis client")
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }

    /// Stops the server with SIGTERM (a clean shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        self.end(libc::SIGTERM);
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.end(libc::SIGKILL);
    }

    fn end(&mut self, signal: i32) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child with a valid signal has no memory effects.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn answers_ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut connection) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
        return false;
    };
    redis::cmd("PING").query::<String>(&mut connection).is_ok()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.end(libc::SIGKILL);
    }
}

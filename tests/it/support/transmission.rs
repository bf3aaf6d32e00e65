//! A real `transmission-daemon` on free loopback ports, with its own config and download
//! folders, no DHT, LPD, PEX or port mapping, so it works offline.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use almagest::config::Secret;
use almagest::torrent::client::TorrentClient;
use almagest::torrent::config::{ClientConfig, ClientKind, Credentials};
use almagest::torrent::model::InfoHash;
use tokio::process::{Child, Command};

use super::torrents::{WAIT, free_port, have_program, terminate};

pub const USERNAME: &str = "almagest";
pub const PASSWORD: &str = "almagest-test-password";

pub struct TransmissionDaemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl TransmissionDaemon {
    /// Starts a daemon, or returns `None` (after printing why) when Transmission is not
    /// installed.
    pub async fn start(test: &str) -> Option<Self> {
        let needed = [
            "transmission-daemon",
            "transmission-remote",
            "transmission-create",
            "transmission-show",
        ];
        if !needed.iter().all(|program| have_program(program, test)) {
            return None;
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::create_dir_all(dir.path().join("config")).expect("config folder");
        std::fs::create_dir_all(dir.path().join("downloads")).expect("download folder");
        let port = free_port();
        let settings = serde_json::json!({
            "rpc-enabled": true,
            "rpc-bind-address": "127.0.0.1",
            "rpc-port": port,
            "rpc-authentication-required": true,
            "rpc-username": USERNAME,
            "rpc-password": PASSWORD,
            "rpc-whitelist-enabled": true,
            "rpc-whitelist": "127.0.0.1",
            "dht-enabled": false,
            "lpd-enabled": false,
            "pex-enabled": false,
            "utp-enabled": false,
            "port-forwarding-enabled": false,
            "peer-port": free_port(),
            "bind-address-ipv4": "127.0.0.1",
            "download-dir": dir.path().join("downloads"),
            "incomplete-dir-enabled": false,
            "message-level": 1,
        });
        std::fs::write(
            dir.path().join("config/settings.json"),
            settings.to_string(),
        )
        .expect("settings written");
        let mut daemon = Self {
            child: None,
            dir,
            port,
        };
        daemon.launch().await;
        Some(daemon)
    }

    /// Starts the daemon on its config folder and waits until its RPC responds.
    pub async fn launch(&mut self) {
        let child = Command::new("transmission-daemon")
            .arg("--foreground")
            .arg("--config-dir")
            .arg(self.dir.path().join("config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("transmission-daemon starts");
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        let mut client = self.client();
        let deadline = Instant::now() + WAIT;
        while let Err(error) = client.torrents().await {
            assert!(
                Instant::now() < deadline,
                "transmission-daemon not ready: {error}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the daemon with SIGTERM (it saves its torrents); [`Self::launch`] starts it again.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child).await;
        }
    }

    /// Stops the daemon with SIGTERM (it saves its torrents) and starts it again.
    pub async fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child).await;
        }
        self.launch().await;
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/transmission/rpc", self.port)
    }

    pub fn config(&self, password: &str) -> ClientConfig {
        ClientConfig {
            name: "transmission".into(),
            kind: ClientKind::Transmission,
            url: self.url().parse().expect("valid URL"),
            credentials: Some(Credentials {
                username: USERNAME.into(),
                password: Secret::new(password),
            }),
        }
    }

    pub fn client(&self) -> TorrentClient {
        TorrentClient::new(&self.config(PASSWORD), Duration::from_secs(10)).expect("client builds")
    }

    pub fn download_dir(&self) -> PathBuf {
        self.dir.path().join("downloads")
    }

    /// Adds a .torrent file with `transmission-remote`.
    pub async fn add(&self, torrent: &Path) {
        self.remote(&["--add".as_ref(), torrent.as_os_str()]).await;
    }

    /// Asks the daemon to verify a torrent's local data.
    pub async fn verify(&self, hash: &InfoHash) {
        self.remote(&[
            "--torrent".as_ref(),
            hash.as_str().as_ref(),
            "--verify".as_ref(),
        ])
        .await;
    }

    async fn remote(&self, arguments: &[&std::ffi::OsStr]) {
        let output = Command::new("transmission-remote")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--authenv")
            .args(arguments)
            .env("TR_AUTH", format!("{USERNAME}:{PASSWORD}"))
            .output()
            .await
            .expect("transmission-remote runs");
        assert!(
            output.status.success(),
            "transmission-remote {arguments:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

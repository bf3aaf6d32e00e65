//! A real `qbittorrent-nox` on free loopback ports, with its own profile and download
//! folders, no DHT, LSD, PeX or UPnP, so it works offline.

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

/// PBKDF2-HMAC-SHA512 of [`PASSWORD`] (100,000 rounds, salt 00..0f) in the form qBittorrent
/// stores in `WebUI\Password_PBKDF2`, computed once with Python's `hashlib.pbkdf2_hmac`.
const PASSWORD_PBKDF2: &str = "@ByteArray(AAECAwQFBgcICQoLDA0ODw==:I3+h0jBZBN27USLrVFq1D9VuEmRRvaIgMityidlBv0+EnakCjFopVZq3D9Q+FUlm+m265IHOxHkOuu+riZicnA==)";

pub struct QbittorrentDaemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// A session of the test's own, for adding and re-checking torrents.
    http: reqwest::Client,
}

impl QbittorrentDaemon {
    pub async fn start(test: &str) -> Option<Self> {
        let needed = [
            "qbittorrent-nox",
            "transmission-create",
            "transmission-show",
        ];
        if !needed.iter().all(|program| have_program(program, test)) {
            return None;
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temporary directory");
        let config_dir = dir.path().join("profile/qBittorrent/config");
        std::fs::create_dir_all(&config_dir).expect("config folder");
        std::fs::create_dir_all(dir.path().join("downloads")).expect("download folder");
        let port = free_port();
        let config = format!(
            "[LegalNotice]\nAccepted=true\n\n\
             [BitTorrent]\nSession\\DHTEnabled=false\nSession\\LSDEnabled=false\n\
             Session\\PeXEnabled=false\nSession\\Port={peer_port}\nSession\\InterfaceAddress=127.0.0.1\n\
             Session\\QueueingSystemEnabled=false\nSession\\DefaultSavePath={downloads}\n\
             Session\\AnonymousModeEnabled=true\n\n\
             [Preferences]\nConnection\\UPnP=false\nWebUI\\Address=127.0.0.1\nWebUI\\Port={port}\n\
             WebUI\\Username={USERNAME}\nWebUI\\Password_PBKDF2=\"{PASSWORD_PBKDF2}\"\n\
             WebUI\\LocalHostAuth=true\nWebUI\\CSRFProtection=true\n",
            peer_port = free_port(),
            downloads = dir.path().join("downloads").display(),
        );
        std::fs::write(config_dir.join("qBittorrent.conf"), config).expect("config written");
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .no_proxy()
            .build()
            .expect("test HTTP client builds");
        let mut daemon = Self {
            child: None,
            dir,
            port,
            http,
        };
        daemon.launch().await;
        Some(daemon)
    }

    async fn launch(&mut self) {
        let child = Command::new("qbittorrent-nox")
            .arg(format!(
                "--profile={}",
                self.dir.path().join("profile").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("qbittorrent-nox starts");
        self.child = Some(child);
        self.wait_ready().await;
        self.login().await;
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        let url = format!("{}/api/v2/app/webapiVersion", self.url());
        while self.http.get(&url).send().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "qbittorrent-nox not ready at {url}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn login(&self) {
        let form = format!("username={USERNAME}&password={PASSWORD}");
        let body = self.post_form("auth/login", form).await;
        assert_eq!(body, "Ok.", "test login failed");
    }

    /// Stops the daemon with SIGTERM (it saves its torrents) and starts it again.
    pub async fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child).await;
        }
        self.launch().await;
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn config(&self, password: &str) -> ClientConfig {
        ClientConfig {
            name: "qbittorrent".into(),
            kind: ClientKind::Qbittorrent,
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

    /// Uploads a .torrent file through `torrents/add` as multipart form data.
    pub async fn add(&self, torrent: &Path) {
        let boundary = "almagest-test-boundary-7d1c";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"torrents\"; \
             filename=\"upload.torrent\"\r\nContent-Type: application/x-bittorrent\r\n\r\n"
        )
        .into_bytes();
        body.extend(std::fs::read(torrent).expect("torrent file readable"));
        body.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
        let response = self
            .http
            .post(format!("{}/api/v2/torrents/add", self.url()))
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await
            .expect("torrents/add answers");
        assert!(
            response.status().is_success(),
            "torrents/add failed: {}",
            response.status()
        );
    }

    pub async fn recheck(&self, hash: &InfoHash) {
        self.post_form("torrents/recheck", format!("hashes={hash}"))
            .await;
    }

    async fn post_form(&self, path: &str, form: String) -> String {
        let response = self
            .http
            .post(format!("{}/api/v2/{path}", self.url()))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap_or_else(|error| panic!("{path} failed: {error}"));
        assert!(
            response.status().is_success(),
            "{path} returned {}",
            response.status()
        );
        response.text().await.unwrap_or_default()
    }
}

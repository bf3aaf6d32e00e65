//! Payloads and .torrent files made on the spot, free ports, process control, and a poller
//! that runs the announcement diff over a real client the way the service does.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use almagest::torrent::client::TorrentClient;
use almagest::torrent::diff::{DiffInput, EventKind, Seen, TorrentEvent, diff};
use almagest::torrent::model::{InfoHash, Torrent, TorrentState};

/// How long a test waits for a daemon to reach a state. Verifying a few hundred kilobytes
/// takes well under a second; the rest is room for a loaded CI machine.
pub const WAIT: Duration = Duration::from_secs(30);

/// Finds a free TCP port on loopback. The port is released before the daemon binds it, so
/// another process could take it in between. The daemon then fails to start, and the test
/// reports that.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// Returns whether `program` is on the PATH, printing why the calling test is skipped if not.
pub fn have_program(program: &str, test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()));
    if !found {
        eprintln!("skipping {test}: {program} is not installed");
    }
    found
}

/// Writes `size` deterministic pseudo-random bytes (seeded by `seed`) to `dir/name`.
pub fn make_payload(dir: &Path, name: &str, size: usize, seed: u64) -> PathBuf {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(size);
    while bytes.len() < size {
        // xorshift64: random enough that no two pieces hash alike.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(size);
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("payload written");
    path
}

/// Creates a .torrent file for `payload` with `transmission-create` and returns its path and
/// info hash. The tracker is a closed loopback port, so nothing leaves the machine.
pub fn make_torrent(payload: &Path, out_dir: &Path) -> (PathBuf, InfoHash) {
    let file_name = payload.file_name().expect("payload has a file name");
    let torrent = out_dir.join(format!(
        "{}.torrent",
        hex_name(file_name.as_encoded_bytes())
    ));
    let status = std::process::Command::new("transmission-create")
        .arg("-o")
        .arg(&torrent)
        .arg("-t")
        .arg("udp://127.0.0.1:9/announce")
        .arg(payload)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("transmission-create runs");
    assert!(
        status.success(),
        "transmission-create failed for {}",
        payload.display()
    );
    let output = std::process::Command::new("transmission-show")
        .arg(&torrent)
        .output()
        .expect("transmission-show runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let hash = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Hash: "))
        .expect("transmission-show prints the info hash");
    (
        torrent,
        InfoHash::parse(hash.trim()).expect("a valid info hash"),
    )
}

/// The file name under which Transmission 3.00 stores a payload: it replaces the characters
/// that Windows reserves with `_` (seen with `transmission-show`), so data put in place for a
/// re-check must use this name.
pub fn on_disk_name(name: &str) -> String {
    name.chars()
        .map(|c| if "\"*:<>?\\|".contains(c) { '_' } else { c })
        .collect()
}

fn hex_name(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(16)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Sends SIGTERM so that a daemon saves its state, then waits for it to exit.
pub async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let pid = i32::try_from(pid).expect("pid fits in i32");
        // SAFETY: kill(2) with a pid of our own child has no memory effects.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(WAIT, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// Runs the announcement diff over a real client, keeping the stored state in memory.
pub struct Poller {
    pub client: TorrentClient,
    pub name: String,
    pub stored: HashMap<InfoHash, Seen>,
    /// The baseline marker that the service stores per client.
    pub baseline_taken: bool,
    pub events: Vec<TorrentEvent>,
    pub notify_added_complete: bool,
}

impl Poller {
    pub fn new(name: &str, client: TorrentClient) -> Self {
        Self {
            client,
            name: name.to_owned(),
            stored: HashMap::new(),
            baseline_taken: false,
            events: Vec::new(),
            notify_added_complete: false,
        }
    }

    /// Polls once, applies the diff and returns the list.
    pub async fn poll(&mut self) -> Vec<Torrent> {
        self.poll_reporting(&HashSet::new()).await
    }

    pub async fn poll_reporting(&mut self, reported_done: &HashSet<InfoHash>) -> Vec<Torrent> {
        let torrents = self
            .client
            .torrents()
            .await
            .expect("client lists its torrents");
        let baseline = !self.baseline_taken;
        let outcome = diff(&DiffInput {
            client: &self.name,
            torrents: &torrents,
            stored: &self.stored,
            reported_done,
            baseline,
            notify_added_complete: self.notify_added_complete,
            removal_grace: Duration::from_secs(60),
            now: chrono::Utc::now(),
        });
        self.events.extend(outcome.events);
        self.stored.extend(outcome.updates);
        self.baseline_taken = true;
        torrents
    }

    /// Polls until `condition` holds for the torrent `hash`, or panics after [`WAIT`].
    pub async fn poll_until(
        &mut self,
        hash: &InfoHash,
        what: &str,
        condition: impl Fn(&Torrent) -> bool,
    ) -> Torrent {
        let deadline = Instant::now() + WAIT;
        loop {
            let torrents = self.poll().await;
            if let Some(torrent) = torrents.iter().find(|torrent| &torrent.hash == hash)
                && condition(torrent)
            {
                return torrent.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {hash} to be {what}: {torrents:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Returns the kinds of the events gathered so far for `hash`.
    pub fn kinds(&self, hash: &InfoHash) -> Vec<EventKind> {
        self.events
            .iter()
            .filter(|event| &event.hash == hash)
            .map(|event| event.kind)
            .collect()
    }
}

/// Waits until a client reports `state` for `hash`, without running the diff.
pub async fn wait_for_state(client: &mut TorrentClient, hash: &InfoHash, state: TorrentState) {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = client.torrent(hash).await.expect("client answers");
        if found.as_ref().is_some_and(|torrent| torrent.state == state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {hash} to be {state:?}: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! Config and observation helpers for tests of the torrent service on the bus.

use std::path::Path;

use almagest::bus::Names;
use almagest::torrent::model::InfoHash;

use super::{RedisServer, Subscription};

/// Builds a `[torrent]` section with one client, polled every second.
pub fn torrent_section(name: &str, kind: &str, url: &str, password: &str, extra: &str) -> String {
    format!(
        "[torrent]\npoll_interval_secs = 1\n{extra}\n\n[[torrent.clients]]\nname = \"{name}\"\n\
         kind = \"{kind}\"\nurl = \"{url}\"\nusername = \"almagest\"\npassword = \"{password}\"\n"
    )
}

/// Events of one type for one hash received so far.
pub fn events(subscription: &Subscription, kind: &str, hash: &InfoHash) -> Vec<serde_json::Value> {
    subscription
        .json()
        .into_iter()
        .filter(|event| event["type"] == kind && event["hash"] == hash.as_str())
        .collect()
}

/// Notification objects in `P:notify:stream`, oldest first.
pub async fn notices(redis: &RedisServer, names: &Names) -> Vec<serde_json::Value> {
    let mut connection = redis.connection().await;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(names.notify_stream())
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .expect("XRANGE of the notify stream");
    entries
        .into_iter()
        .filter_map(|(_, fields)| fields.into_iter().find(|(name, _)| name == "n"))
        .filter_map(|(_, value)| serde_json::from_str(&value).ok())
        .collect()
}

/// Returns whether the service has stored that it saw `hash` incomplete, so that its completion is
/// news and not "added with its data in place".
pub async fn seen_incomplete(redis: &RedisServer, names: &Names, hash: &InfoHash) -> bool {
    let mut connection = redis.connection().await;
    let stored: Option<String> = redis::cmd("GET")
        .arg(names.torrent_seen(hash.as_str()))
        .query_async(&mut connection)
        .await
        .expect("GET of the stored state");
    stored
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|seen| seen["seen_incomplete"] == true)
}

/// Returns whether a key exists.
pub async fn exists(redis: &RedisServer, key: &str) -> bool {
    let mut connection = redis.connection().await;
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<u32>(&mut connection)
        .await
        .expect("EXISTS")
        == 1
}

/// Runs `examples/torrent-done.sh` the way Transmission does, against the test's Redis.
pub fn run_done_hook(redis: &RedisServer, names: &Names, client: &str, hash: &InfoHash) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/torrent-done.sh");
    let output = std::process::Command::new("sh")
        .arg(script)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TR_TORRENT_HASH", hash.as_str())
        .env("ALMAGEST_CLIENT", client)
        .env("ALMAGEST_PREFIX", names.prefix())
        .env("REDIS_SOCKET", redis.socket())
        .output()
        .expect("done-hook script runs");
    assert!(
        output.status.success(),
        "done-hook script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

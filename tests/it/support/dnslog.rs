//! Config, log-writing and observation helpers for tests of the dnslog service.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use super::RedisServer;

/// Returns a `[dnslog]` section with `sources` (TOML inline tables) and `devices` (TOML text of
/// `[[dnslog.devices]]` tables). Counts are kept ten years, so that fixed line dates stay.
pub fn dnslog_section(sources: &[String], devices: &str) -> String {
    format!(
        "[dnslog]\nretention_days = 3650\nsources = [{}]\n\n{devices}\n",
        sources.join(", ")
    )
}

/// Returns a file source that is read from its beginning.
pub fn file_source(path: &Path) -> String {
    format!(
        "{{ file = {:?}, start_at = \"beginning\" }}",
        path.display().to_string()
    )
}

/// Formats a query log line as CoreDNS 1.2.6–1.6.2 prints it: its own RFC 3339 time first.
/// `client` is an address; IPv6 addresses are bracketed here.
pub fn query_line(at: &str, client: &str, name: &str) -> String {
    let client = if client.contains(':') {
        format!("[{client}]")
    } else {
        client.to_string()
    };
    format!(
        "{at} [INFO] {client}:5353 - 1 \"A IN {name} udp 40 false 512\" NOERROR qr,rd,ra 60 0.000100s\n"
    )
}

/// Returns the current time in RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Appends text to a file, creating it when missing.
pub fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the query log for appending");
    file.write_all(text.as_bytes())
        .expect("append to the query log");
}

/// Reads the members and scores of one sorted set.
pub async fn sorted_set(redis: &RedisServer, key: &str) -> BTreeMap<String, f64> {
    let mut connection = redis.connection().await;
    let members: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut connection)
        .await
        .expect("ZRANGE");
    members.into_iter().collect()
}

/// Lists the keys matching a glob pattern (the test's own server, so `KEYS` is fine).
pub async fn keys(redis: &RedisServer, pattern: &str) -> Vec<String> {
    let mut connection = redis.connection().await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut connection)
        .await
        .expect("KEYS");
    keys.sort();
    keys
}

/// Sums the per-domain counts over every day.
pub async fn domain_counts(redis: &RedisServer, prefix: &str) -> BTreeMap<String, f64> {
    let mut total = BTreeMap::new();
    for key in keys(redis, &format!("{prefix}:dns:domains:*")).await {
        for (member, score) in sorted_set(redis, &key).await {
            *total.entry(member).or_insert(0.0) += score;
        }
    }
    total
}

/// Reads a stored device state as JSON.
pub async fn device_state(
    redis: &RedisServer,
    prefix: &str,
    device: &str,
) -> Option<serde_json::Value> {
    let mut connection = redis.connection().await;
    let text: Option<String> = redis::cmd("HGET")
        .arg(format!("{prefix}:dns:devices"))
        .arg(device)
        .query_async(&mut connection)
        .await
        .expect("HGET");
    text.and_then(|text| serde_json::from_str(&text).ok())
}

/// Reads the fields of a hash.
pub async fn hash(redis: &RedisServer, key: &str) -> BTreeMap<String, String> {
    let mut connection = redis.connection().await;
    redis::cmd("HGETALL")
        .arg(key)
        .query_async(&mut connection)
        .await
        .expect("HGETALL")
}

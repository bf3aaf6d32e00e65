//! Local stand-ins for Discord and GitHub, for `examples/demo.sh` on a machine that reaches
//! neither. One HTTP server on 127.0.0.1 serves both APIs:
//!
//! - Discord REST under `/api/v10` (set `discord.api_proxy` to the printed base URL): create
//!   message and execute webhook print each message and return it. The current user and the
//!   gateway URL are served so that the client starts. The gateway WebSocket is not served,
//!   so run the discord service with `gateway = false`.
//! - GitHub's `GET /repos/{owner}/{repo}/releases` (set a builder target's `api_base` to the
//!   base URL), listing one release per folder of `RELEASES_DIR`, newest folder first. The
//!   folder name is the tag and its files are the assets, served under `/download/`.
//!
//! ```sh
//! cargo run --example demo_fakes -- RELEASES_DIR ADDRESS_FILE
//! ```
//!
//! The server binds a free loopback port and writes `127.0.0.1:PORT` to `ADDRESS_FILE` once it
//! listens.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use warp::Filter;
use warp::http::{Method, StatusCode};
use warp::reply::{Reply, Response};

/// Id of the bot user the fake reports.
const BOT_ID: &str = "4000000000000001";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let (Some(releases), Some(address_file)) = (args.next(), args.next()) else {
        return Err("usage: demo_fakes RELEASES_DIR ADDRESS_FILE".into());
    };
    let releases = Arc::new(PathBuf::from(releases));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let base = Arc::new(format!("http://{address}"));
    let next_id = Arc::new(AtomicU64::new(1_000));

    let routes = warp::method()
        .and(warp::path::full())
        .and(warp::body::bytes())
        .map(
            move |method: Method, path: warp::path::FullPath, body: Bytes| {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                route(&method, path.as_str(), &body, &releases, &base, id)
            },
        );
    std::fs::write(&address_file, address.to_string())?;
    println!("fakes: Discord and GitHub on http://{address}");
    warp::serve(routes).incoming(listener).run().await;
    Ok(())
}

fn route(
    method: &Method,
    path: &str,
    body: &[u8],
    releases: &Path,
    base: &str,
    id: u64,
) -> Response {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["api", "v10", "channels", channel, "messages"]) => message(body, channel, id),
        ("POST", ["api", "v10", "webhooks", _id, _token]) => message(body, "webhook", id),
        ("GET", ["api", "v10", "users", "@me"]) => json_reply(bot_user()),
        ("GET", ["api", "v10", "gateway"] | ["api", "v10", "gateway", "bot"]) => {
            let url = format!("{}/gateway-ws", base.replacen("http", "ws", 1));
            json_reply(json!({
                "url": url,
                "shards": 1,
                "session_start_limit": {
                    "total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1
                }
            }))
        }
        ("GET", ["repos", _owner, _repo, "releases"]) => match list_releases(releases, base) {
            Ok(list) => json_reply(Value::Array(list)),
            Err(error) => {
                eprintln!("fakes: cannot list {}: {error}", releases.display());
                status(StatusCode::INTERNAL_SERVER_ERROR)
            }
        },
        ("GET", ["download", tag, name]) => download(releases, tag, name),
        _ => status(StatusCode::NOT_FOUND),
    }
}

/// Prints a Discord message and returns it as Discord would.
fn message(body: &[u8], channel: &str, id: u64) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let mut lines = Vec::new();
    if let Some(content) = body["content"].as_str().filter(|text| !text.is_empty()) {
        lines.push(content.to_string());
    }
    for embed in body["embeds"].as_array().into_iter().flatten() {
        for key in ["title", "description"] {
            if let Some(text) = embed[key].as_str() {
                lines.push(text.to_string());
            }
        }
    }
    println!("discord #{channel}: {}", lines.join(" | "));
    let _ = std::io::stdout().flush();
    json_reply(json!({
        "id": id.to_string(),
        "channel_id": channel,
        "author": bot_user(),
        "content": body["content"].as_str().unwrap_or_default(),
        "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": body.get("embeds").cloned().unwrap_or(json!([])),
        "pinned": false,
        "type": 0,
    }))
}

fn bot_user() -> Value {
    json!({
        "id": BOT_ID,
        "username": "almagest-demo",
        "discriminator": "0",
        "global_name": null,
        "avatar": null,
        "bot": true,
    })
}

/// Lists one release per folder of `releases`, newest modification time first.
fn list_releases(releases: &Path, base: &str) -> std::io::Result<Vec<Value>> {
    let mut folders = Vec::new();
    for entry in std::fs::read_dir(releases)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            folders.push((entry.metadata()?.modified()?, entry.path()));
        }
    }
    folders.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    folders
        .iter()
        .map(|(modified, folder)| release_json(folder, *modified, base))
        .collect()
}

fn release_json(folder: &Path, modified: SystemTime, base: &str) -> std::io::Result<Value> {
    let tag = folder.file_name().unwrap_or_default().to_string_lossy();
    let mut assets = Vec::new();
    for entry in std::fs::read_dir(folder)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        assets.push(json!({
            "id": assets.len(),
            "name": name,
            "size": entry.metadata()?.len(),
            "browser_download_url": format!("{base}/download/{tag}/{name}"),
        }));
    }
    let published: DateTime<Utc> = modified.into();
    Ok(json!({
        "tag_name": tag,
        "name": tag,
        "draft": false,
        "prerelease": false,
        "published_at": published.to_rfc3339_opts(SecondsFormat::Secs, true),
        "assets": assets,
    }))
}

/// Serves one asset file; names that could leave the releases folder are not found.
fn download(releases: &Path, tag: &str, name: &str) -> Response {
    let unsafe_name = |part: &str| part.is_empty() || part.starts_with('.') || part.contains('\\');
    if unsafe_name(tag) || unsafe_name(name) {
        return status(StatusCode::NOT_FOUND);
    }
    match std::fs::read(releases.join(tag).join(name)) {
        Ok(data) => {
            let mut response = data.into_response();
            response.headers_mut().insert(
                "content-type",
                warp::http::HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        Err(_) => status(StatusCode::NOT_FOUND),
    }
}

fn json_reply(body: Value) -> Response {
    warp::reply::json(&body).into_response()
}

fn status(code: StatusCode) -> Response {
    warp::reply::with_status(warp::reply(), code).into_response()
}

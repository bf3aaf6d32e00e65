//! qBittorrent WebUI API v2 client: cookie login, `torrents/info`.
//!
//! Differences between versions that this client handles:
//!
//! - Session cookie: `SID` up to 5.1, `QBT_SID_<port>` from 5.2. A cookie jar stores
//!   whichever the server sets and sends it back, so the name never matters here.
//! - Login: 4.x returns 200 with `Ok.` or `Fails.`, and 5.x returns 204 on success and 401
//!   on bad credentials. Every version returns 403 once it has banned the address after too
//!   many failures, so a failed login is reported and never retried in a loop.
//! - A request with an expired session gets 403; the client logs in again once and retries.
//! - States: 4.x `pausedUP`/`pausedDL` are `stoppedUP`/`stoppedDL` in 5.x; `forcedMetaDL`
//!   exists from 4.6. Unknown state strings map to [`TorrentState::Unknown`].
//! - `completion_on` means "never" as -1 (4.1), 0 (4.2 and later, 4.5.2 included) or
//!   4294967295 (releases that stored it unsigned).
//! - `has_metadata` exists only in newer releases; 4.x reports a magnet link without
//!   metadata with `total_size` -1.
//!
//! This is a thin client on reqwest rather than the `qbit-rs` crate (0.6), which logs in and
//! lists torrents from qBittorrent 4.5.2 correctly but rejects a whole torrent list when one
//! torrent has a state its enum lacks (`forcedMetaDL`), reports a wrong password on 4.x as
//! "Failed to extract cookie from response", and derives `Debug` for its credential type with
//! the password in it.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::cookie::Jar;
use reqwest::header::{CONTENT_TYPE, REFERER};
use serde::Deserialize;
use url::Url;

use super::client::{ClientError, http_client, read_body, request_error};
use super::config::Credentials;
use super::model::{InfoHash, Torrent, TorrentState, unix_time};

pub struct Qbittorrent {
    http: reqwest::Client,
    /// Base URL with a trailing slash, so that joining `api/v2/...` keeps a sub-path.
    base: Url,
    credentials: Option<Credentials>,
    logged_in: bool,
}

impl Qbittorrent {
    pub fn new(
        mut base: Url,
        credentials: Option<Credentials>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(Self {
            http: http_client(timeout, Some(Arc::new(Jar::default())))?,
            base,
            credentials,
            logged_in: false,
        })
    }

    pub async fn torrents(&mut self) -> Result<Vec<Torrent>, ClientError> {
        self.torrent_info(None).await
    }

    pub async fn torrent(&mut self, hash: &InfoHash) -> Result<Option<Torrent>, ClientError> {
        let found = self.torrent_info(Some(hash)).await?;
        Ok(found.into_iter().find(|torrent| &torrent.hash == hash))
    }

    async fn torrent_info(&mut self, hash: Option<&InfoHash>) -> Result<Vec<Torrent>, ClientError> {
        let mut url = self.api_url("torrents/info");
        if let Some(hash) = hash {
            url.query_pairs_mut().append_pair("hashes", hash.as_str());
        }
        let body = self.get(url.clone()).await?;
        let (torrents, skipped) = parse_torrents(&body).map_err(|reason| invalid(&url, reason))?;
        if let Some(first) = skipped.first() {
            tracing::warn!(url = %url, skipped = skipped.len(), error = %first, "skipped invalid torrents in torrents/info response");
        }
        Ok(torrents)
    }

    /// Sends a GET, logging in first when needed and once more when the session expired.
    async fn get(&mut self, url: Url) -> Result<Vec<u8>, ClientError> {
        if self.credentials.is_some() && !self.logged_in {
            self.login().await?;
        }
        let mut response = self.send_get(&url).await?;
        if response.status() == StatusCode::FORBIDDEN && self.credentials.is_some() {
            self.logged_in = false;
            self.login().await?;
            response = self.send_get(&url).await?;
        }
        let status = response.status();
        if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(ClientError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        read_body(url.as_str(), response).await
    }

    async fn send_get(&self, url: &Url) -> Result<reqwest::Response, ClientError> {
        self.http
            .get(url.clone())
            .send()
            .await
            .map_err(|source| request_error(url.as_str(), source))
    }

    async fn login(&mut self) -> Result<(), ClientError> {
        let Some(credentials) = &self.credentials else {
            return Ok(());
        };
        let url = self.api_url("auth/login");
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("username", &credentials.username)
            .append_pair("password", credentials.password.expose())
            .finish();
        let response = self
            .http
            .post(url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            // qBittorrent's CSRF check compares Referer or Origin with the host it serves.
            .header(REFERER, self.base.as_str())
            .body(form)
            .send()
            .await
            .map_err(|source| request_error(url.as_str(), source))?;
        let status = response.status();
        match status {
            StatusCode::NO_CONTENT => {}
            StatusCode::OK => {
                let body = read_body(url.as_str(), response).await?;
                if body.trim_ascii() != b"Ok." {
                    return Err(ClientError::Unauthorized {
                        url: url.to_string(),
                        status: status.as_u16(),
                    });
                }
            }
            StatusCode::UNAUTHORIZED => {
                return Err(ClientError::Unauthorized {
                    url: url.to_string(),
                    status: status.as_u16(),
                });
            }
            StatusCode::FORBIDDEN => {
                return Err(ClientError::Banned {
                    url: url.to_string(),
                });
            }
            _ => {
                return Err(ClientError::Status {
                    url: url.to_string(),
                    status: status.as_u16(),
                });
            }
        }
        self.logged_in = true;
        Ok(())
    }

    fn api_url(&self, path: &str) -> Url {
        self.base
            .join("api/v2/")
            .and_then(|api| api.join(path))
            .expect("a relative path joins onto an http(s) base URL")
    }
}

fn invalid(url: &Url, reason: impl Into<String>) -> ClientError {
    ClientError::InvalidResponse {
        url: url.to_string(),
        reason: reason.into(),
    }
}

/// One entry of `torrents/info`, with only the fields used here.
#[derive(Deserialize)]
struct RawTorrent {
    hash: InfoHash,
    #[serde(default)]
    name: String,
    #[serde(default)]
    size: i64,
    total_size: Option<i64>,
    #[serde(default)]
    progress: f64,
    #[serde(default)]
    amount_left: i64,
    #[serde(default)]
    state: String,
    #[serde(default)]
    added_on: i64,
    #[serde(default)]
    completion_on: i64,
    has_metadata: Option<bool>,
}

impl RawTorrent {
    fn normalise(self) -> Torrent {
        let state = map_state(&self.state);
        let has_metadata = self
            .has_metadata
            .unwrap_or(self.total_size.is_none_or(|size| size >= 0))
            && state != TorrentState::FetchingMetadata;
        let known = |bytes: i64| {
            if has_metadata {
                u64::try_from(bytes).ok()
            } else {
                None
            }
        };
        Torrent {
            hash: self.hash,
            name: self.name,
            size_bytes: known(self.size),
            progress: self.progress.clamp(0.0, 1.0),
            left_bytes: known(self.amount_left),
            state,
            has_metadata,
            added_at: unix_time(self.added_on),
            done_at: unix_time(self.completion_on),
            // The list carries no error text, only the error state.
            error: (state == TorrentState::Error)
                .then(|| "qBittorrent reports an error".to_owned()),
        }
    }
}

fn map_state(state: &str) -> TorrentState {
    match state {
        "error" => TorrentState::Error,
        "missingFiles" => TorrentState::MissingFiles,
        "uploading" | "stalledUP" | "forcedUP" => TorrentState::Seeding,
        "pausedUP" | "stoppedUP" | "pausedDL" | "stoppedDL" => TorrentState::Stopped,
        "queuedUP" | "queuedDL" => TorrentState::Queued,
        // Allocating comes before a check of existing data, so it tells nothing yet.
        "checkingUP" | "checkingDL" | "checkingResumeData" | "allocating" => TorrentState::Checking,
        "downloading" | "stalledDL" | "forcedDL" => TorrentState::Downloading,
        "metaDL" | "forcedMetaDL" => TorrentState::FetchingMetadata,
        "moving" => TorrentState::Moving,
        _ => TorrentState::Unknown,
    }
}

/// Parses a `torrents/info` body. Entries that do not parse are returned as error texts
/// beside the good ones.
pub fn parse_torrents(body: &[u8]) -> Result<(Vec<Torrent>, Vec<String>), String> {
    let entries: Vec<serde_json::Value> =
        serde_json::from_slice(body).map_err(|error| format!("not a JSON array: {error}"))?;
    let mut torrents = Vec::with_capacity(entries.len());
    let mut skipped = Vec::new();
    for entry in entries {
        match RawTorrent::deserialize(entry) {
            Ok(raw) => torrents.push(raw.normalise()),
            Err(error) => skipped.push(error.to_string()),
        }
    }
    Ok((torrents, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `torrents/info` from qBittorrent 4.5.2 (Debian 12), recorded and cut to the fields
    /// used: a seeding torrent, a magnet link without metadata, a paused finished torrent.
    const RECORDED_4_5_2: &str = r#"[
        {"added_on":1796402774,"amount_left":0,"completion_on":1796402783,"hash":"52b98ef9d87424faa7e7af0bfba50885ea9d4c0c","infohash_v1":"52b98ef9d87424faa7e7af0bfba50885ea9d4c0c","infohash_v2":"","name":"payload.bin","progress":1,"size":300000,"state":"stalledUP","total_size":300000},
        {"added_on":1796402774,"amount_left":0,"completion_on":0,"hash":"abcdef0123456789abcdef0123456789abcdef01","infohash_v1":"abcdef0123456789abcdef0123456789abcdef01","infohash_v2":"","name":"Mag \"x\"","progress":0,"size":0,"state":"queuedDL","total_size":-1},
        {"added_on":1796402774,"amount_left":0,"completion_on":1796402783,"hash":"09b7134a2f814cd15bec00bb9414f41e2c0d1741","name":"big.bin","progress":1,"size":3000000,"state":"pausedUP","total_size":3000000}
    ]"#;

    /// The same kind of list in the qBittorrent 5.x form, written from the 5.x WebUI API
    /// documentation and release notes, not recorded from a 5.x daemon: `stoppedUP`,
    /// `forcedMetaDL`, `has_metadata`, and "never" as 4294967295 and -1.
    const DOCUMENTED_5_X: &str = r#"[
        {"added_on":1796402774,"amount_left":0,"completion_on":1796402783,"has_metadata":true,"hash":"52b98ef9d87424faa7e7af0bfba50885ea9d4c0c","name":"payload.bin","progress":1,"size":300000,"state":"stoppedUP","total_size":300000},
        {"added_on":1796402774,"amount_left":0,"completion_on":4294967295,"has_metadata":false,"hash":"abcdef0123456789abcdef0123456789abcdef01","name":"Mag","progress":0,"size":0,"state":"forcedMetaDL","total_size":0},
        {"added_on":1796402774,"amount_left":1000,"completion_on":-1,"has_metadata":true,"hash":"09b7134a2f814cd15bec00bb9414f41e2c0d1741","name":"big.bin","progress":0.5,"size":2000,"state":"stoppedDL","total_size":2000}
    ]"#;

    fn parse(text: &str) -> Vec<Torrent> {
        let (torrents, skipped) = parse_torrents(text.as_bytes()).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        torrents
    }

    #[test]
    fn seeding_torrent_normalises() {
        let torrents = parse(RECORDED_4_5_2);
        assert_eq!(torrents[0].state, TorrentState::Seeding);
        assert_eq!(torrents[0].size_bytes, Some(300_000));
        assert!(torrents[0].done_at.is_some());
    }

    #[test]
    fn magnet_4x_has_no_metadata() {
        let torrents = parse(RECORDED_4_5_2);
        assert!(!torrents[1].has_metadata);
        assert_eq!(torrents[1].done_at, None);
        assert_eq!(torrents[1].name, "Mag \"x\"");
    }

    #[test]
    fn paused_and_stopped_are_stopped() {
        let four = parse(RECORDED_4_5_2);
        let five = parse(DOCUMENTED_5_X);
        assert_eq!(four[2].state, TorrentState::Stopped);
        assert_eq!(five[0].state, TorrentState::Stopped);
        assert_eq!(five[2].state, TorrentState::Stopped);
    }

    #[test]
    fn forced_metadata_download_parses() {
        let five = parse(DOCUMENTED_5_X);
        assert_eq!(five[1].state, TorrentState::FetchingMetadata);
        assert!(!five[1].has_metadata);
    }

    #[test]
    fn never_completion_times_are_none() {
        let five = parse(DOCUMENTED_5_X);
        assert_eq!(five[1].done_at, None);
        assert_eq!(five[2].done_at, None);
    }

    #[test]
    fn unknown_state_is_kept_as_unknown() {
        let body =
            br#"[{"hash":"52b98ef9d87424faa7e7af0bfba50885ea9d4c0c","state":"teleporting"}]"#;
        let (torrents, _) = parse_torrents(body).unwrap();
        assert_eq!(torrents[0].state, TorrentState::Unknown);
    }

    #[test]
    fn html_body_is_an_error() {
        assert!(parse_torrents(b"<html>login</html>").is_err());
    }
}

//! The operations the service needs from a torrent client (list the torrents, look one up
//! by hash) behind one enum over the Transmission and qBittorrent clients, and the HTTP
//! plumbing they share.

use std::sync::Arc;
use std::time::Duration;

use reqwest::cookie::Jar;

use super::config::{ClientConfig, ClientKind};
use super::model::{InfoHash, Torrent};
use super::qbittorrent::Qbittorrent;
use super::transmission::Transmission;

/// Largest response body read from a client. A list of 10,000 torrents with the fields
/// requested here is about 4 MiB; anything far past that is not a torrent list.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Connect timeout: a client on the LAN accepts a connection in milliseconds, so a few
/// seconds separates "down" from "slow" without holding up the poll.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("request to {url} failed: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} returned HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} rejected the credentials (HTTP {status}): check the username and password")]
    Unauthorized { url: String, status: u16 },
    #[error(
        "{url} banned this address after failed logins: fix the credentials and wait for the ban to end"
    )]
    Banned { url: String },
    #[error("{url} returned 409 twice in a row: the session id was not accepted")]
    SessionRejected { url: String },
    #[error("{url} returned a body larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge { url: String },
    #[error("{url} returned an invalid response: {reason}")]
    InvalidResponse { url: String, reason: String },
    #[error("{url} returned an RPC error: {message}")]
    Rpc { url: String, message: String },
    #[error("cannot build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

impl ClientError {
    /// Returns whether the client could not be reached at all (connection refused, reset
    /// before a response, or timed out), as opposed to a client that returned a bad response.
    /// A pooled connection to a daemon that is shutting down fails as a request error, not a
    /// connect error.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Request { source, .. } => {
                source.is_connect() || source.is_timeout() || source.is_request()
            }
            _ => false,
        }
    }
}

/// A configured torrent client of either kind.
pub enum TorrentClient {
    Transmission(Transmission),
    Qbittorrent(Qbittorrent),
}

impl TorrentClient {
    pub fn new(config: &ClientConfig, timeout: Duration) -> Result<Self, ClientError> {
        Ok(match config.kind {
            ClientKind::Transmission => Self::Transmission(Transmission::new(
                config.url.clone(),
                config.credentials.clone(),
                timeout,
            )?),
            ClientKind::Qbittorrent => Self::Qbittorrent(Qbittorrent::new(
                config.url.clone(),
                config.credentials.clone(),
                timeout,
            )?),
        })
    }

    /// Lists every torrent of the client.
    pub async fn torrents(&mut self) -> Result<Vec<Torrent>, ClientError> {
        match self {
            Self::Transmission(client) => client.torrents().await,
            Self::Qbittorrent(client) => client.torrents().await,
        }
    }

    /// Looks up one torrent by info hash; `None` when the client does not have it.
    pub async fn torrent(&mut self, hash: &InfoHash) -> Result<Option<Torrent>, ClientError> {
        match self {
            Self::Transmission(client) => client.torrent(hash).await,
            Self::Qbittorrent(client) => client.torrent(hash).await,
        }
    }
}

/// Builds the HTTP client both kinds use: bounded timeouts, no redirects (an API endpoint
/// that redirects is misconfigured, and a redirect must not carry credentials elsewhere), no
/// proxy from the environment (the clients sit on the LAN).
pub(crate) fn http_client(
    timeout: Duration,
    cookies: Option<Arc<Jar>>,
) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(CONNECT_TIMEOUT.min(timeout))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("almagest/", env!("CARGO_PKG_VERSION")));
    if let Some(jar) = cookies {
        builder = builder.cookie_provider(jar);
    }
    builder.build().map_err(ClientError::Build)
}

/// Reads a response body up to [`MAX_BODY_BYTES`].
pub(crate) async fn read_body(
    url: &str,
    mut response: reqwest::Response,
) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|source| request_error(url, source))?
    {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ClientError::BodyTooLarge {
                url: url.to_owned(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Characters kept of the error for one skipped torrent entry. serde quotes an offending
/// string in full, and a client could send a name of megabytes.
const MAX_ENTRY_ERROR_CHARS: usize = 300;

/// Describes why entry `index` of a torrent list did not decode, with the path of the field
/// at fault (`torrent 3: sizeWhenDone: invalid type: …`), cut to a few hundred characters.
pub(crate) fn entry_error(index: usize, error: &dyn std::fmt::Display) -> String {
    let full = format!("torrent {index}: {error}");
    let mut text: String = full.chars().take(MAX_ENTRY_ERROR_CHARS).collect();
    if text.len() < full.len() {
        text.push('…');
    }
    text
}

/// Wraps a transport error, without the URL that reqwest repeats in its own message.
pub(crate) fn request_error(url: &str, source: reqwest::Error) -> ClientError {
    ClientError::Request {
        url: url.to_owned(),
        source: source.without_url(),
    }
}

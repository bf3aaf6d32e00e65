//! The normalised torrent that both clients produce, so that the diff never looks at a
//! client's own field names, state strings or "never" sentinels.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A torrent's info hash as lower-case hex: 40 digits for a v1 (SHA-1) hash, 64 for a v2
/// (SHA-256) hash.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct InfoHash(String);

impl InfoHash {
    /// Parses a hex info hash in either case.
    pub fn parse(text: &str) -> Result<Self, InvalidInfoHash> {
        let valid_length = text.len() == 40 || text.len() == 64;
        if valid_length && text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            Ok(Self(text.to_ascii_lowercase()))
        } else {
            Err(InvalidInfoHash(text.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for InfoHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid info hash {0:?}: expected 40 or 64 hex digits")]
pub struct InvalidInfoHash(String);

/// Activity of a torrent as its client reports it, in one vocabulary for every client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TorrentState {
    /// Waiting for or fetching the metadata of a magnet link.
    FetchingMetadata,
    Downloading,
    Seeding,
    /// Stopped or paused by the user (Transmission "stopped", qBittorrent `pausedUP`,
    /// `stoppedDL`, ...).
    Stopped,
    Queued,
    /// Verifying local data, queued for it, or loading resume data at client start.
    Checking,
    /// Moving data to another folder.
    Moving,
    /// The client reports files missing; the data on disk is unknown until a re-check.
    MissingFiles,
    /// The client reports an error that stopped the torrent.
    Error,
    /// A state this code does not know (a newer client version).
    Unknown,
}

/// Whether a torrent's data is all there, as far as one poll can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completeness {
    Complete,
    Incomplete,
    /// Checking, moving or missing files. The numbers in flight tell nothing about completion,
    /// so a re-check of a finished torrent does not look like a new download.
    Undetermined,
}

/// One torrent as a client reported it in one poll.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Torrent {
    pub hash: InfoHash,
    /// The client's display name. Untrusted: it comes from the .torrent file or magnet link.
    pub name: String,
    /// Bytes of the wanted files; `None` until the metadata is known.
    pub size_bytes: Option<u64>,
    /// Fraction of the wanted bytes present and verified, 0.0 to 1.0.
    pub progress: f64,
    /// Wanted bytes still missing; `None` until the metadata is known.
    pub left_bytes: Option<u64>,
    pub state: TorrentState,
    /// Whether the client has the torrent's metadata (false for a magnet link still fetching it).
    pub has_metadata: bool,
    pub added_at: Option<DateTime<Utc>>,
    /// When the client says the download finished; `None` where the client reports "never"
    /// (Transmission 3 leaves it unset after a re-check completes a torrent).
    pub done_at: Option<DateTime<Utc>>,
    /// The client's error text, when it reports one that stopped the torrent.
    pub error: Option<String>,
}

impl Torrent {
    /// Classifies the torrent as complete by progress or by bytes left, never while checking.
    pub fn completeness(&self) -> Completeness {
        match self.state {
            TorrentState::Checking | TorrentState::Moving | TorrentState::MissingFiles => {
                return Completeness::Undetermined;
            }
            TorrentState::FetchingMetadata => return Completeness::Incomplete,
            _ => {}
        }
        // A magnet link without metadata reports zero bytes left and zero progress.
        if !self.has_metadata {
            return Completeness::Incomplete;
        }
        if self.progress >= 1.0 || self.left_bytes == Some(0) {
            Completeness::Complete
        } else {
            Completeness::Incomplete
        }
    }
}

/// Converts a client's Unix timestamp to a time, mapping the "never" sentinels to `None`:
/// 0 (Transmission, qBittorrent 4.2 and later), -1 (qBittorrent 4.1 and negative values in
/// general) and 4294967295 (`u32::MAX`, qBittorrent releases that stored the time unsigned).
pub fn unix_time(seconds: i64) -> Option<DateTime<Utc>> {
    if seconds <= 0 || seconds == i64::from(u32::MAX) {
        return None;
    }
    DateTime::from_timestamp(seconds, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn torrent(state: TorrentState, progress: f64, left: Option<u64>) -> Torrent {
        Torrent {
            hash: InfoHash::parse(&"a".repeat(40)).expect("40 hex digits"),
            name: "x".into(),
            size_bytes: Some(10),
            progress,
            left_bytes: left,
            state,
            has_metadata: true,
            added_at: None,
            done_at: None,
            error: None,
        }
    }

    #[test]
    fn info_hash_lowercases_hex() {
        let hash = InfoHash::parse("ABCDEF0123456789ABCDEF0123456789ABCDEF01").unwrap();
        assert_eq!(hash.as_str(), "abcdef0123456789abcdef0123456789abcdef01");
    }

    #[test]
    fn info_hash_rejects_bad_input() {
        assert!(InfoHash::parse("abc").is_err());
        assert!(InfoHash::parse(&"g".repeat(40)).is_err());
        assert!(InfoHash::parse(&"a".repeat(41)).is_err());
        assert!(InfoHash::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn checking_is_undetermined() {
        let checking = torrent(TorrentState::Checking, 0.3, Some(7));
        assert_eq!(checking.completeness(), Completeness::Undetermined);
    }

    #[test]
    fn complete_by_bytes_left_alone() {
        let done = torrent(TorrentState::Seeding, 0.9999, Some(0));
        assert_eq!(done.completeness(), Completeness::Complete);
    }

    #[test]
    fn complete_by_progress_alone() {
        let done = torrent(TorrentState::Stopped, 1.0, None);
        assert_eq!(done.completeness(), Completeness::Complete);
    }

    #[test]
    fn magnet_without_metadata_is_incomplete() {
        let mut magnet = torrent(TorrentState::Queued, 0.0, Some(0));
        magnet.has_metadata = false;
        assert_eq!(magnet.completeness(), Completeness::Incomplete);
    }

    #[test]
    fn never_sentinels_map_to_none() {
        assert_eq!(unix_time(0), None);
        assert_eq!(unix_time(-1), None);
        assert_eq!(unix_time(4_294_967_295), None);
        assert!(unix_time(1_700_000_000).is_some());
    }
}

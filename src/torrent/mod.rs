//! The torrent service: notifies the household when a download starts and when it is done.
//!
//! It polls every configured Transmission and qBittorrent client, compares each list with
//! what was announced per info hash, and publishes `torrent.added` once per hash and
//! `torrent.completed` once per hash (plus optional `torrent.error` and `torrent.removed`).
//! Done-hook scripts in `examples/` can report a completion at once through
//! `P:torrent:done`; the poller and the hook share the stored state, so a completion is
//! announced once whichever sees it first.
//!
//! Split by role: [`config`] (the `[torrent]` section), [`model`] (the normalised torrent),
//! [`transmission`] and [`qbittorrent`] (the two clients, behind [`client::TorrentClient`]),
//! [`diff`] (the announcement state machine), [`notice`] (notice text and event JSON),
//! [`hook`] (the done-hook message).

pub mod client;
pub mod config;
pub mod diff;
pub mod hook;
pub mod model;
pub mod notice;
pub mod qbittorrent;
pub mod service;
pub mod transmission;

pub use service::TorrentService;

/// Service name, in actor names, events (`P:events:torrent`) and logs.
pub const NAME: &str = "torrent";

//! The torrent clients and the announcement diff against real Transmission and qBittorrent
//! daemons, and against fakes that replay other versions' responses.

mod fakes;
mod qbittorrent;
mod service;
mod transmission;

//! Integration tests, in one binary so that the crate is linked once. Each test starts its
//! own redis-server and uses its own bus prefix and instance name.

mod api;
mod builder;
mod control;
mod core;
mod discord;
mod dnslog;
mod drop_folder;
mod support;
mod torrent;

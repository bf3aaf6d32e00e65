//! Integration tests, in one binary so that the crate is linked once. Each test starts its
//! own redis-server or embedded store and uses its own bus prefix and instance name.

mod api;
mod backend;
mod builder;
mod control;
mod core;
mod discord;
mod dnslog;
mod drop_folder;
mod e2e;
mod embedded;
mod faults;
mod support;
mod torrent;

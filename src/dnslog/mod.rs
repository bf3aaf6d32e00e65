//! The `dnslog` service: CoreDNS's query log turned into per-client statistics and presence.
//!
//! It sits under the services supervisor. Lines come from sources (a followed file, standard
//! input, a restarted command) and lose their collector wrappers ([`wrapper`]). Each then
//! becomes a query or a counted skip ([`parse`]). Queries feed daily counters, written to
//! Redis in batches ([`aggregate`], [`store`]), and a presence state machine for known
//! devices ([`presence`]). [`service`] hosts the work loop ([`pipeline`]) as an actor.

pub mod aggregate;
pub mod config;
pub mod name;
pub mod parse;
pub mod pipeline;
pub mod presence;
pub mod service;
pub mod source;
pub mod store;
pub mod time;
pub mod wrapper;

pub use service::Dnslog;

/// Service name, in actor names, events (`P:events:dnslog`) and logs.
pub const NAME: &str = "dnslog";

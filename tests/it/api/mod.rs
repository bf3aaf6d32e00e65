//! The HTTP API against a real redis-server, over real HTTP on loopback.

mod auth;
mod lifecycle;
pub(crate) mod publish;
mod rproxy;
mod webhook;

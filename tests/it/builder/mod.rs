//! The builder: its steps against local fakes of the GitHub and Kubernetes APIs, and the
//! service on a real redis-server.

mod service;
pub(crate) mod steps;

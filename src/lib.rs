//! Almagest: a home server's small automation services as supervised actors on a Redis bus.

pub mod dnslog;

//! Integration tests, in one binary so that the crate is linked once. Each test starts its
//! own redis-server or embedded store and uses its own bus prefix and instance name.

mod backend;
mod core;
mod embedded;
mod support;

//! Integration tests, in one binary so that the crate is linked once. Each test starts its
//! own redis-server and uses its own bus prefix and instance name.

mod api;
mod core;
mod support;

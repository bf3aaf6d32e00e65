//! The discord service against a fake Discord API.

use std::time::{Duration, Instant};

mod delivery;
mod gateway;

/// Polls `condition` every 20 ms until it holds, or panics after `timeout`.
async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

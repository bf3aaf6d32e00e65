//! The discord service against a fake Discord API.

use std::time::{Duration, Instant};

use almagest::discord::config::{DiscordConfig, RawDiscordConfig};

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

/// Parses and validates a `[discord]` section written as TOML, with an empty environment.
fn discord_config(toml_text: &str) -> DiscordConfig {
    let raw: RawDiscordConfig = toml::from_str(toml_text).expect("test config parses");
    raw.validate_with_env(&|_| None)
        .expect("test config is valid")
}

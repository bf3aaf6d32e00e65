//! The discord service against a fake Discord API and a real redis-server.

use almagest::discord::config::DiscordConfig;

mod commands;
mod delivery;
mod gateway;
mod service;

/// Parses and validates the body of a `[discord]` section, with an empty environment.
fn discord_config(section: &str) -> DiscordConfig {
    let text = format!("[discord]\n{section}");
    let config = crate::support::parse_config(&text);
    config.discord.expect("the section is present")
}

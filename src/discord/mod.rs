//! The `discord` service: delivers the notification stream to Discord channels or webhooks,
//! and turns watched Discord messages and slash commands into bus messages.
//!
//! - [`config`]: the `[discord]` section and its validation.
//! - [`render`] and [`split`]: a notification object into Discord messages.
//! - [`deliver`]: sending over HTTP with the retry policy and error classification.
//! - [`incoming`]: watch rules and slash commands, as functions of what arrives.
//! - [`gateway`]: serenity's gateway client, passing messages and commands to the service.
//! - [`replies`]: text of the slash command replies.

pub mod config;
pub mod deliver;
pub mod gateway;
pub mod incoming;
pub mod render;
pub mod replies;
pub mod split;

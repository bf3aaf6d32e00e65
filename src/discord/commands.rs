//! Slash command handling over HTTP: the refusal, the deferred response, and the edit that
//! carries the result.
//!
//! Discord expects a response within 3 s, so every command is first deferred ("thinking…")
//! and the result replaces it later with an edit of the original response. The edit waits
//! for the deferral to finish, because Discord rejects an edit of a response that does not
//! exist yet.

use std::sync::Arc;

use serenity::all::{
    CommandInteraction, CreateAllowedMentions, CreateInteractionResponse,
    CreateInteractionResponseMessage, EditInteractionResponse,
};
use serenity::http::Http;
use tokio::sync::oneshot;

use super::incoming::refusal;
use super::replies::status_text;
use crate::bus::Bus;

/// Maximum wait of a `/rebuild` for the builder's result. An interaction token is valid for
/// 15 minutes; the margin leaves time for the final edit.
pub const REBUILD_WAIT: std::time::Duration = std::time::Duration::from_secs(14 * 60);

/// Time `/ping` collects pongs. Services on the same bus reply within milliseconds.
pub const PING_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Sends the ephemeral refusal to an invoker who may not run commands.
pub async fn refuse(http: &Http, interaction: &CommandInteraction) {
    if let Err(error) = interaction.create_response(http, refusal()).await {
        tracing::warn!(user = %interaction.user.id, error = %error, "refusal not sent");
    }
}

/// Sends an ephemeral error for a command that cannot run, such as an invalid target.
pub async fn reject(http: &Http, interaction: &CommandInteraction, message: &str) {
    let response = CreateInteractionResponse::Message(
        CreateInteractionResponseMessage::new()
            .content(message)
            .allowed_mentions(CreateAllowedMentions::new())
            .ephemeral(true),
    );
    if let Err(error) = interaction.create_response(http, response).await {
        tracing::warn!(command = %interaction.data.name, error = %error, "error reply not sent");
    }
}

/// Defers the response in a task of its own; the receiver completes when Discord has
/// accepted the deferral (or it failed).
pub fn defer(http: Arc<Http>, interaction: Arc<CommandInteraction>) -> oneshot::Receiver<()> {
    let (done, deferred) = oneshot::channel();
    tokio::spawn(async move {
        let response = CreateInteractionResponse::Defer(CreateInteractionResponseMessage::new());
        if let Err(error) = interaction.create_response(&*http, response).await {
            tracing::warn!(command = %interaction.data.name, error = %error, "deferral not sent");
        }
        let _ = done.send(());
    });
    deferred
}

/// Replaces the deferred response with `text`, once the deferral is done.
pub async fn edit(
    http: &Http,
    interaction: &CommandInteraction,
    deferred: oneshot::Receiver<()>,
    text: &str,
) {
    let _ = deferred.await;
    // The edit route names the application, which the gateway reports; the interaction
    // carries it too, so the edit works whichever happened first.
    http.set_application_id(interaction.application_id);
    let edit = EditInteractionResponse::new()
        .content(text)
        .allowed_mentions(CreateAllowedMentions::new());
    if let Err(error) = interaction.edit_response(http, edit).await {
        tracing::warn!(command = %interaction.data.name, error = %error, "command reply not sent");
    }
}

/// Runs `/status`: reads the service registry and replies with it.
pub async fn status(bus: Bus, http: Arc<Http>, interaction: Arc<CommandInteraction>) {
    let deferred = defer(http.clone(), interaction.clone());
    let text = match registry(&bus).await {
        Ok(entries) => status_text(&entries),
        Err(error) => format!("Cannot read the registry: {error}"),
    };
    edit(&http, &interaction, deferred, &text).await;
}

/// Reads the entries of the `P:services` hash, skipping values that are not JSON.
async fn registry(bus: &Bus) -> Result<Vec<serde_json::Value>, crate::bus::BusError> {
    let fields = bus.backend()?.hash_get_all(&bus.names().services()).await?;
    Ok(fields
        .into_iter()
        .filter_map(|(_, value)| serde_json::from_str(&value).ok())
        .collect())
}

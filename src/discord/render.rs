//! Rendering of a notification object into the Discord messages that carry it, and routing
//! it to a destination.
//!
//! A notification with a `title` or `fields` becomes one embed when it fits Discord's embed
//! limits. Anything else, and anything too long for an embed, becomes plain text split into
//! messages of at most 2000 characters. Nothing is dropped or truncated.

use serde::Serialize;
use serenity::model::id::{RoleId, UserId};

use super::config::{Destination, DiscordConfig};
use super::split::{MAX_CONTENT_CHARS, split_text};
use crate::bus::wire::{Level, Notification};

/// Discord's embed limits, in characters.
/// <https://discord.com/developers/docs/resources/message#embed-object-embed-limits>
pub mod embed_limits {
    pub const TITLE: usize = 256;
    pub const DESCRIPTION: usize = 4096;
    pub const FIELDS: usize = 25;
    pub const FIELD_NAME: usize = 256;
    pub const FIELD_VALUE: usize = 1024;
    pub const FOOTER_TEXT: usize = 2048;
    /// Sum of title, description, field names and values, footer text and author name.
    pub const TOTAL: usize = 6000;
}

/// The JSON body of a create-message or execute-webhook request: both take these fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutgoingMessage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub embeds: Vec<Embed>,
    pub allowed_mentions: AllowedMentions,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Embed {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub color: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<EmbedField>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub footer: Option<EmbedFooter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmbedField {
    pub name: String,
    pub value: String,
    pub inline: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmbedFooter {
    pub text: String,
}

/// Mentions in a message that may ping. `parse` is always empty, so `@everyone`, `@here` and
/// any user or role mention in a notice's text stay inert, and only the listed ids ping.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AllowedMentions {
    pub parse: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserId>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<RoleId>,
}

impl AllowedMentions {
    /// Mentions allowed by `discord.mention_user_ids` and `discord.mention_role_ids`.
    pub fn from_config(config: &DiscordConfig) -> Self {
        Self {
            parse: Vec::new(),
            users: config.mention_user_ids.clone(),
            roles: config.mention_role_ids.clone(),
        }
    }
}

/// Sent in place of an empty notification, which Discord would reject.
const EMPTY_TEXT: &str = "(empty notification)";

/// Renders a notification into the messages that carry it, in sending order.
pub fn render(notification: &Notification, mentions: &AllowedMentions) -> Vec<OutgoingMessage> {
    if let Some(embed) = render_embed(notification) {
        return vec![OutgoingMessage {
            content: None,
            embeds: vec![embed],
            allowed_mentions: mentions.clone(),
        }];
    }

    let text = render_plain(notification);
    split_text(&text, MAX_CONTENT_CHARS)
        .into_iter()
        .map(|part| OutgoingMessage {
            content: Some(part.render()),
            embeds: Vec::new(),
            allowed_mentions: mentions.clone(),
        })
        .collect()
}

/// Builds the embed for a notification with a title or fields, or `None` when it has neither
/// or does not fit Discord's embed limits.
pub fn render_embed(notification: &Notification) -> Option<Embed> {
    use embed_limits::*;

    if notification.title.is_none() && notification.fields.is_empty() {
        return None;
    }
    let title = notification
        .title
        .as_deref()
        .filter(|title| !title.trim().is_empty());
    let description = Some(notification.text.as_str()).filter(|text| !text.trim().is_empty());
    let footer = notification
        .source
        .as_deref()
        .filter(|source| !source.trim().is_empty());

    let fits = title.is_none_or(|title| chars(title) <= TITLE)
        && description.is_none_or(|text| chars(text) <= DESCRIPTION)
        && footer.is_none_or(|text| chars(text) <= FOOTER_TEXT)
        && notification.fields.len() <= FIELDS
        && notification.fields.iter().all(|field| {
            let name = chars(&field.name);
            let value = chars(&field.value);
            // Discord rejects an embed field with an empty or blank name or value.
            (1..=FIELD_NAME).contains(&name)
                && (1..=FIELD_VALUE).contains(&value)
                && !field.name.trim().is_empty()
                && !field.value.trim().is_empty()
        });
    let total = title.map_or(0, chars)
        + description.map_or(0, chars)
        + footer.map_or(0, chars)
        + notification
            .fields
            .iter()
            .map(|f| chars(&f.name) + chars(&f.value))
            .sum::<usize>();
    if !fits || total > TOTAL || (title.is_none() && description.is_none() && total == 0) {
        return None;
    }

    Some(Embed {
        title: title.map(str::to_owned),
        description: description.map(str::to_owned),
        color: notification.level.map(level_color),
        fields: notification
            .fields
            .iter()
            .map(|field| EmbedField {
                name: field.name.clone(),
                value: field.value.clone(),
                inline: false,
            })
            .collect(),
        footer: footer.map(|text| EmbedFooter {
            text: text.to_owned(),
        }),
    })
}

/// Renders a notification as plain text: a level marker, the title in bold, the text, one
/// line per field and the source. The result may be longer than one message.
pub fn render_plain(notification: &Notification) -> String {
    let mut lines: Vec<String> = Vec::new();
    let marker = match notification.level {
        Some(Level::Warn) => "⚠️ ",
        Some(Level::Error) => "🚨 ",
        _ => "",
    };

    match notification
        .title
        .as_deref()
        .filter(|title| !title.trim().is_empty())
    {
        Some(title) => {
            lines.push(format!("{marker}**{title}**"));
            push_nonempty(&mut lines, &notification.text);
        }
        None if notification.text.trim().is_empty() => {
            lines.push(format!("{marker}{EMPTY_TEXT}"));
        }
        None => lines.push(format!("{marker}{}", notification.text)),
    }
    for field in &notification.fields {
        lines.push(format!("**{}**: {}", field.name, field.value));
    }
    if let Some(source) = notification
        .source
        .as_deref()
        .filter(|source| !source.is_empty())
    {
        lines.push(format!("— {source}"));
    }
    lines.join("\n")
}

fn push_nonempty(lines: &mut Vec<String>, text: &str) {
    if !text.trim().is_empty() {
        lines.push(text.to_owned());
    }
}

fn chars(text: &str) -> usize {
    text.chars().count()
}

/// Embed side colour by level: blue for info, amber for warn, red for error.
fn level_color(level: Level) -> u32 {
    match level {
        Level::Info => 0x3498DB,
        Level::Warn => 0xF1C40F,
        Level::Error => 0xE74C3C,
    }
}

/// Returns the level's name as it appears in the notification object and in
/// `[discord.routes]`.
pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

/// Picks the destination of a notification: its `route` if configured, else its `level` if
/// configured as a route, else the default. `None` when no destination is configured.
pub fn route<'a>(
    notification: &Notification,
    config: &'a DiscordConfig,
) -> Option<&'a Destination> {
    let by_name = |name: Option<&str>| name.and_then(|name| config.routes.get(name));
    by_name(notification.route.as_deref())
        .or_else(|| by_name(notification.level.map(level_name)))
        .or(config.default_destination.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::wire::Field;

    fn note(text: &str) -> Notification {
        Notification {
            text: text.into(),
            ..Default::default()
        }
    }

    #[test]
    fn plain_text_is_one_message() {
        let messages = render(&note("disk full"), &AllowedMentions::default());
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].content.as_deref(), Some("disk full"));
        assert!(messages[0].embeds.is_empty());
    }

    #[test]
    fn mentions_off_in_json() {
        let messages = render(&note("@everyone look"), &AllowedMentions::default());
        let json = serde_json::to_value(&messages[0]).unwrap();
        assert_eq!(json["allowed_mentions"], serde_json::json!({ "parse": [] }));
    }

    #[test]
    fn configured_mentions_listed() {
        let mentions = AllowedMentions {
            parse: Vec::new(),
            users: vec![UserId::new(7)],
            roles: vec![RoleId::new(9)],
        };
        let json = serde_json::to_value(&render(&note("x"), &mentions)[0]).unwrap();
        assert_eq!(
            json["allowed_mentions"],
            serde_json::json!({ "parse": [], "users": ["7"], "roles": ["9"] })
        );
    }

    #[test]
    fn title_and_fields_become_embed() {
        let notification = Notification {
            text: "all good".into(),
            title: Some("Backup".into()),
            level: Some(Level::Info),
            fields: vec![Field {
                name: "size".into(),
                value: "3 GB".into(),
            }],
            source: Some("cron".into()),
            ..Default::default()
        };
        let messages = render(&notification, &AllowedMentions::default());
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].content, None);
        let embed = &messages[0].embeds[0];
        assert_eq!(embed.title.as_deref(), Some("Backup"));
        assert_eq!(embed.description.as_deref(), Some("all good"));
        assert_eq!(embed.fields[0].value, "3 GB");
        assert_eq!(embed.footer.as_ref().map(|f| f.text.as_str()), Some("cron"));
        assert_eq!(embed.color, Some(0x3498DB));
    }

    #[test]
    fn long_title_falls_back_to_text() {
        let notification = Notification {
            text: "body".into(),
            title: Some("t".repeat(257)),
            ..Default::default()
        };
        let messages = render(&notification, &AllowedMentions::default());
        assert!(messages[0].embeds.is_empty());
        let content = messages[0].content.as_deref().unwrap();
        assert!(content.contains(&"t".repeat(257)));
        assert!(content.ends_with("body"));
    }

    #[test]
    fn long_description_falls_back_to_text() {
        let notification = Notification {
            text: "d".repeat(4097),
            title: Some("title".into()),
            ..Default::default()
        };
        let messages = render(&notification, &AllowedMentions::default());
        assert!(messages.iter().all(|message| message.embeds.is_empty()));
        let total: usize = messages
            .iter()
            .map(|m| m.content.as_deref().unwrap().matches('d').count())
            .sum();
        assert_eq!(total, 4097);
    }

    #[test]
    fn long_field_value_falls_back_to_text() {
        let notification = Notification {
            text: "x".into(),
            fields: vec![Field {
                name: "log".into(),
                value: "v".repeat(1025),
            }],
            ..Default::default()
        };
        assert_eq!(render_embed(&notification), None);
    }

    #[test]
    fn embed_total_over_6000_falls_back() {
        let field = Field {
            name: "n".into(),
            value: "v".repeat(1000),
        };
        let notification = Notification {
            text: "d".repeat(4000),
            title: Some("t".into()),
            fields: vec![field.clone(), field.clone()],
            ..Default::default()
        };
        assert_eq!(render_embed(&notification), None);
    }

    #[test]
    fn embed_at_limits_is_kept() {
        let notification = Notification {
            text: "d".repeat(4096),
            title: Some("t".repeat(256)),
            fields: vec![Field {
                name: "n".into(),
                value: "v".repeat(1024),
            }],
            ..Default::default()
        };
        assert!(render_embed(&notification).is_some());
    }

    #[test]
    fn empty_field_value_falls_back() {
        let notification = Notification {
            text: "x".into(),
            fields: vec![Field {
                name: "n".into(),
                value: " ".into(),
            }],
            ..Default::default()
        };
        assert_eq!(render_embed(&notification), None);
    }

    #[test]
    fn empty_text_gets_placeholder() {
        let messages = render(&note(""), &AllowedMentions::default());
        assert_eq!(messages[0].content.as_deref(), Some(EMPTY_TEXT));
    }

    #[test]
    fn warn_level_marks_plain_text() {
        let notification = Notification {
            level: Some(Level::Warn),
            ..note("hot")
        };
        assert_eq!(render_plain(&notification), "⚠️ hot");
    }

    fn routed(route_name: Option<&str>, level: Option<Level>) -> Option<Destination> {
        let text = "[discord]\ntoken = \"t\"\ndefault_channel_id = 1\n\
                    routes = { alerts = 2, error = 3 }";
        let config = crate::config::Config::from_toml(
            text,
            std::path::Path::new("test.toml"),
            Default::default(),
        )
        .unwrap();
        let discord = config.discord.unwrap();
        let notification = Notification {
            route: route_name.map(str::to_owned),
            level,
            ..note("x")
        };
        route(&notification, &discord).cloned()
    }

    #[test]
    fn routes_by_route_then_level_then_default() {
        use serenity::model::id::ChannelId;
        let channel = |id| Some(Destination::Channel(ChannelId::new(id)));
        assert_eq!(routed(Some("alerts"), Some(Level::Error)), channel(2));
        assert_eq!(routed(Some("unknown"), Some(Level::Error)), channel(3));
        assert_eq!(routed(None, Some(Level::Error)), channel(3));
        assert_eq!(routed(Some("unknown"), Some(Level::Info)), channel(1));
        assert_eq!(routed(None, None), channel(1));
    }
}

//! Handling of what the bot receives: watched messages become `discord.message` bus
//! events, and slash commands are defined, authorised and parsed here. Everything is a
//! function of the incoming message or interaction and the config, so it is tested without
//! the gateway.

use serde::Serialize;
use serenity::all::{
    CommandDataOptionValue, CommandInteraction, CommandOptionType, CreateCommand,
    CreateCommandOption, CreateInteractionResponse, CreateInteractionResponseMessage,
};
use serenity::model::channel::Message;
use serenity::model::id::{ChannelId, MessageId, RoleId, UserId};

use super::config::{DiscordConfig, WatchRule};

/// Longest `/rebuild` target accepted; builder target names are short identifiers.
pub const MAX_TARGET_CHARS: usize = 100;

/// The parts of a Discord message that watch rules look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    pub message_id: MessageId,
    pub channel_id: ChannelId,
    pub author_id: UserId,
    pub author_name: String,
    /// Set for bots and for webhook messages, including this bot's own notices.
    pub author_is_bot: bool,
    pub content: String,
    /// When Discord created the message, RFC 3339.
    pub at: String,
}

impl From<&Message> for IncomingMessage {
    fn from(message: &Message) -> Self {
        Self {
            message_id: message.id,
            channel_id: message.channel_id,
            author_id: message.author.id,
            author_name: message.author.name.clone(),
            author_is_bot: message.author.bot || message.webhook_id.is_some(),
            content: message.content.clone(),
            at: message.timestamp.to_rfc3339().unwrap_or_default(),
        }
    }
}

/// The `discord.message` bus event. Ids are strings, as in Discord's API, because they
/// exceed the integers that JSON readers such as JavaScript keep exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageEvent {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub rule: String,
    pub channel_id: String,
    pub author: Author,
    pub content: String,
    pub message_id: String,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Author {
    pub id: String,
    pub name: String,
}

/// One event to publish: the bus channel (under `bus.prefix`) and the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedEvent {
    pub bus_channel: String,
    pub event: MessageEvent,
}

/// Matches a message against the watch rules: one event per matching rule, in rule order.
/// Messages from bots and webhooks, this bot included, match nothing.
pub fn watched_events(message: &IncomingMessage, rules: &[WatchRule]) -> Vec<WatchedEvent> {
    if message.author_is_bot {
        return Vec::new();
    }
    rules
        .iter()
        .filter(|rule| rule.channel_ids.contains(&message.channel_id))
        .filter(|rule| rule.matcher.is_match(&message.content))
        .map(|rule| WatchedEvent {
            bus_channel: rule.bus_channel.clone(),
            event: MessageEvent {
                kind: "discord.message",
                rule: rule.name.clone(),
                channel_id: message.channel_id.to_string(),
                author: Author {
                    id: message.author_id.to_string(),
                    name: message.author_name.clone(),
                },
                content: message.content.clone(),
                message_id: message.message_id.to_string(),
                at: message.at.clone(),
            },
        })
        .collect()
}

/// A slash command this bot runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/status`: the service registry.
    Status,
    /// `/ping`: a live ping of every service.
    Ping,
    /// `/rebuild <target>`: sends the builder a rebuild command for the target.
    Rebuild { target: String },
}

/// Builds the command definitions registered in the configured guild on start.
pub fn command_definitions() -> Vec<CreateCommand> {
    vec![
        CreateCommand::new("status").description("Show the services and whether they are up"),
        CreateCommand::new("ping").description("Ping every service and show who answers"),
        CreateCommand::new("rebuild")
            .description("Rebuild a release target")
            .add_option(
                CreateCommandOption::new(CommandOptionType::String, "target", "Target name")
                    .required(true)
                    .max_length(MAX_TARGET_CHARS as u16),
            ),
    ]
}

/// Invoker of a command: the user and, inside a guild, the member's roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoker {
    pub user_id: UserId,
    pub role_ids: Vec<RoleId>,
}

impl From<&CommandInteraction> for Invoker {
    fn from(interaction: &CommandInteraction) -> Self {
        Self {
            user_id: interaction.user.id,
            role_ids: interaction
                .member
                .as_ref()
                .map(|m| m.roles.clone())
                .unwrap_or_default(),
        }
    }
}

/// Whether the invoker may run commands: their user id or one of their roles is listed in
/// `discord.allowed_user_ids` or `discord.allowed_role_ids`. With both lists empty, no one is
/// allowed.
pub fn is_authorised(invoker: &Invoker, config: &DiscordConfig) -> bool {
    config.allowed_user_ids.contains(&invoker.user_id)
        || invoker
            .role_ids
            .iter()
            .any(|role| config.allowed_role_ids.contains(role))
}

/// Builds the reply to an invoker who may not run commands, visible only to them.
pub fn refusal() -> CreateInteractionResponse {
    CreateInteractionResponse::Message(
        CreateInteractionResponseMessage::new()
            .content("You are not allowed to run Almagest commands.")
            .ephemeral(true),
    )
}

/// Parses a command by name and options, rejecting unknown names and invalid targets.
pub fn parse_command(
    name: &str,
    options: &[(String, CommandDataOptionValue)],
) -> Result<Command, String> {
    match name {
        "status" => Ok(Command::Status),
        "ping" => Ok(Command::Ping),
        "rebuild" => {
            let target = options.iter().find_map(|(option, value)| match value {
                CommandDataOptionValue::String(target) if option == "target" => Some(target),
                _ => None,
            });
            let Some(target) = target.map(|target| target.trim()) else {
                return Err("missing target: use /rebuild target:<name>".to_owned());
            };
            let valid = !target.is_empty()
                && target.chars().count() <= MAX_TARGET_CHARS
                && target
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !valid {
                return Err(format!(
                    "invalid target {target:?}: use letters, digits and _.- (at most \
                     {MAX_TARGET_CHARS})"
                ));
            }
            Ok(Command::Rebuild {
                target: target.to_owned(),
            })
        }
        other => Err(format!("unknown command /{other}")),
    }
}

/// Collects the option names and values of an interaction, for [`parse_command`].
pub fn command_options(interaction: &CommandInteraction) -> Vec<(String, CommandDataOptionValue)> {
    interaction
        .data
        .options
        .iter()
        .map(|option| (option.name.clone(), option.value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use regex::Regex;

    use super::*;
    use crate::discord::config::Matcher;

    fn message(channel: u64, content: &str) -> IncomingMessage {
        IncomingMessage {
            message_id: MessageId::new(900),
            channel_id: ChannelId::new(channel),
            author_id: UserId::new(42),
            author_name: "ada".into(),
            author_is_bot: false,
            content: content.into(),
            at: "2026-01-02T03:04:05Z".into(),
        }
    }

    fn rule(name: &str, channel: u64, matcher: Matcher) -> WatchRule {
        WatchRule {
            name: name.into(),
            channel_ids: BTreeSet::from([ChannelId::new(channel)]),
            matcher,
            bus_channel: "events:discord".into(),
        }
    }

    fn config(section: &str) -> DiscordConfig {
        let text = format!("[discord]\n{section}");
        let config = crate::config::Config::from_toml(
            &text,
            std::path::Path::new("test.toml"),
            Default::default(),
        )
        .unwrap_or_else(|error| panic!("{error}"));
        config.discord.unwrap()
    }

    #[test]
    fn regex_rule_matches_content() {
        let rules = [rule(
            "deploy",
            1,
            Matcher::Regex(Regex::new(r"^deploy \w+$").unwrap()),
        )];
        let events = watched_events(&message(1, "deploy web"), &rules);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event.rule, "deploy");
        assert_eq!(events[0].event.content, "deploy web");
    }

    #[test]
    fn prefix_rule_matches_start_only() {
        let rules = [rule("bang", 1, Matcher::Prefix("!".into()))];
        assert_eq!(watched_events(&message(1, "!lights off"), &rules).len(), 1);
        assert!(watched_events(&message(1, "lights off!"), &rules).is_empty());
    }

    #[test]
    fn other_channel_not_watched() {
        let rules = [rule("bang", 1, Matcher::Prefix("!".into()))];
        assert!(watched_events(&message(2, "!lights"), &rules).is_empty());
    }

    #[test]
    fn bot_messages_ignored() {
        let rules = [rule("bang", 1, Matcher::Prefix("!".into()))];
        let from_bot = IncomingMessage {
            author_is_bot: true,
            ..message(1, "!lights")
        };
        assert!(watched_events(&from_bot, &rules).is_empty());
    }

    #[test]
    fn every_matching_rule_publishes() {
        let rules = [
            rule("bang", 1, Matcher::Prefix("!".into())),
            rule("lights", 1, Matcher::Regex(Regex::new("lights").unwrap())),
        ];
        let names: Vec<String> = watched_events(&message(1, "!lights"), &rules)
            .into_iter()
            .map(|event| event.event.rule)
            .collect();
        assert_eq!(names, vec!["bang", "lights"]);
    }

    #[test]
    fn event_json_has_documented_shape() {
        let rules = [rule("bang", 1, Matcher::Prefix("!".into()))];
        let event = &watched_events(&message(1, "!x"), &rules)[0].event;
        let json = serde_json::to_value(event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "discord.message",
                "rule": "bang",
                "channel_id": "1",
                "author": { "id": "42", "name": "ada" },
                "content": "!x",
                "message_id": "900",
                "at": "2026-01-02T03:04:05Z",
            })
        );
    }

    #[test]
    fn listed_user_is_authorised() {
        let config = config("guild_id = 5\nallowed_user_ids = [42]\ntoken = \"t\"");
        let invoker = Invoker {
            user_id: UserId::new(42),
            role_ids: vec![],
        };
        assert!(is_authorised(&invoker, &config));
    }

    #[test]
    fn listed_role_is_authorised() {
        let config = config("guild_id = 5\nallowed_role_ids = [\"77\"]\ntoken = \"t\"");
        let invoker = Invoker {
            user_id: UserId::new(1),
            role_ids: vec![RoleId::new(77)],
        };
        assert!(is_authorised(&invoker, &config));
    }

    #[test]
    fn unlisted_user_is_refused() {
        let config =
            config("guild_id = 5\nallowed_user_ids = [42]\nallowed_role_ids = [77]\ntoken = \"t\"");
        let invoker = Invoker {
            user_id: UserId::new(43),
            role_ids: vec![RoleId::new(78)],
        };
        assert!(!is_authorised(&invoker, &config));
    }

    #[test]
    fn nobody_authorised_by_default() {
        let config = config("token = \"t\"");
        let invoker = Invoker {
            user_id: UserId::new(42),
            role_ids: vec![RoleId::new(77)],
        };
        assert!(!is_authorised(&invoker, &config));
    }

    #[test]
    fn refusal_is_ephemeral() {
        let json = serde_json::to_value(refusal()).unwrap();
        assert_eq!(json["type"], 4);
        assert_eq!(json["data"]["flags"], 64);
    }

    #[test]
    fn rebuild_parses_target() {
        let options = vec![(
            "target".to_owned(),
            CommandDataOptionValue::String("web".into()),
        )];
        assert_eq!(
            parse_command("rebuild", &options),
            Ok(Command::Rebuild {
                target: "web".into()
            })
        );
    }

    #[test]
    fn rebuild_rejects_odd_target() {
        let options = vec![(
            "target".to_owned(),
            CommandDataOptionValue::String("web; rm -rf".into()),
        )];
        assert!(parse_command("rebuild", &options).is_err());
    }

    #[test]
    fn rebuild_needs_target() {
        assert!(parse_command("rebuild", &[]).is_err());
    }

    #[test]
    fn definitions_name_three_commands() {
        let names: Vec<String> = command_definitions()
            .iter()
            .map(|command| serde_json::to_value(command).unwrap()["name"].to_string())
            .collect();
        assert_eq!(names, vec!["\"status\"", "\"ping\"", "\"rebuild\""]);
    }
}

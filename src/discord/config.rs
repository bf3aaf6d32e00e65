//! The `[discord]` config section: the raw serde form as written in the file, and its
//! validation into [`DiscordConfig`].
//!
//! Validation reports every problem at once, each naming the full key (such as
//! `discord.routes.alerts`), the bad value and the expected form. Secrets (the bot token and
//! webhook URLs, which carry a token) are resolved here and never printed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use regex::{Regex, RegexBuilder};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serenity::model::id::{ChannelId, GuildId, RoleId, UserId, WebhookId};
use url::Url;

use crate::config::{Context, Problems, Secret, SecretSource};

/// Default for `discord.retry_for_secs`: an hour covers a Discord outage or a router reboot
/// without holding a notice back for so long that it is stale when it arrives.
pub const DEFAULT_RETRY_FOR_SECS: u64 = 3600;

/// Default for `discord.recheck_secs`: after a 401 or 403, delivery is tried again this often.
/// Five minutes keeps the failed requests far below Discord's limit on invalid requests
/// (10,000 per 10 minutes) while a fixed token or permission takes effect soon.
pub const DEFAULT_RECHECK_SECS: u64 = 300;

/// Default for `discord.claim_idle_secs`. An entry another consumer (a previous instance
/// name) left pending this long is taken over on start. A minute is far longer than one
/// delivery attempt, so an entry a live consumer is sending is usually not taken; one it has
/// been retrying for longer is, and may then arrive twice.
pub const DEFAULT_CLAIM_IDLE_SECS: u64 = 60;

/// Bus channel a watch rule publishes to when it names none (under `bus.prefix`).
pub const DEFAULT_RULE_BUS_CHANNEL: &str = "events:discord";

/// Upper bound on the compiled size of a watch rule's regex, so that a pasted pattern cannot
/// make every incoming message expensive to match.
const RULE_REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The `[discord]` section as written in the file. Every field has a default, so that a
/// missing key is reported by [`RawDiscordConfig::validate`] with its full name.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct RawDiscordConfig {
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub guild_id: Option<RawId>,
    pub default_channel_id: Option<RawId>,
    pub default_webhook: Option<RawWebhook>,
    pub routes: BTreeMap<String, RawId>,
    pub webhooks: BTreeMap<String, RawWebhook>,
    pub api_proxy: Option<String>,
    pub retry_for_secs: Option<u64>,
    pub recheck_secs: Option<u64>,
    pub claim_idle_secs: Option<u64>,
    pub gateway: Option<bool>,
    pub allowed_user_ids: Vec<RawId>,
    pub allowed_role_ids: Vec<RawId>,
    pub mention_user_ids: Vec<RawId>,
    pub mention_role_ids: Vec<RawId>,
    pub rules: Vec<RawRule>,
}

/// A Discord id as written: TOML integer or a string of digits (Discord's "Copy ID" gives the
/// digits, and environment overrides arrive as strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawId {
    Int(i128),
    Text(String),
}

impl<'de> Deserialize<'de> for RawId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawIdVisitor;

        impl Visitor<'_> for RawIdVisitor {
            type Value = RawId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Discord id (an integer or a string of digits)")
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<RawId, E> {
                Ok(RawId::Int(value.into()))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<RawId, E> {
                Ok(RawId::Int(value.into()))
            }

            fn visit_i128<E: de::Error>(self, value: i128) -> Result<RawId, E> {
                Ok(RawId::Int(value))
            }

            fn visit_u128<E: de::Error>(self, value: u128) -> Result<RawId, E> {
                Ok(RawId::Int(i128::try_from(value).unwrap_or(-1)))
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<RawId, E> {
                Ok(RawId::Text(value.to_owned()))
            }
        }

        deserializer.deserialize_any(RawIdVisitor)
    }
}

/// A webhook URL as written: the URL inline, or a table naming where to read it from.
#[derive(Debug, Clone)]
pub enum RawWebhook {
    Url(String),
    Table(RawWebhookTable),
}

impl<'de> Deserialize<'de> for RawWebhook {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawWebhookVisitor;

        impl<'de> Visitor<'de> for RawWebhookVisitor {
            type Value = RawWebhook;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a webhook URL, or a table with url, url_file or url_env")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<RawWebhook, E> {
                Ok(RawWebhook::Url(value.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawWebhook, A::Error> {
                let table =
                    RawWebhookTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawWebhook::Table(table))
            }
        }

        deserializer.deserialize_any(RawWebhookVisitor)
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct RawWebhookTable {
    pub url: Option<String>,
    pub url_file: Option<PathBuf>,
    pub url_env: Option<String>,
}

/// One `[[discord.rules]]` entry: which Discord channels to watch, what to match and where to
/// publish a match.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct RawRule {
    pub name: Option<String>,
    pub channel_ids: Vec<RawId>,
    pub regex: Option<String>,
    pub prefix: Option<String>,
    pub bus_channel: Option<String>,
}

/// A Discord webhook parsed from its URL `https://discord.com/api/webhooks/ID/TOKEN`. Requests
/// go to the same API base as the bot's (Discord or `discord.api_proxy`), so only the id and
/// token are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Webhook {
    pub id: WebhookId,
    pub token: Secret,
}

/// Destination of a notice: a channel (posted to by the bot) or a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    Channel(ChannelId),
    Webhook(Webhook),
}

/// Condition a watch rule tests on a message's content.
#[derive(Debug, Clone)]
pub enum Matcher {
    Regex(Regex),
    Prefix(String),
}

impl Serialize for Matcher {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = std::collections::BTreeMap::new();
        match self {
            Matcher::Regex(regex) => map.insert("regex", regex.as_str()),
            Matcher::Prefix(prefix) => map.insert("prefix", prefix.as_str()),
        };
        map.serialize(serializer)
    }
}

impl Matcher {
    pub fn is_match(&self, content: &str) -> bool {
        match self {
            Matcher::Regex(regex) => regex.is_match(content),
            Matcher::Prefix(prefix) => content.starts_with(prefix.as_str()),
        }
    }
}

/// A validated `[[discord.rules]]` entry.
#[derive(Debug, Clone, Serialize)]
pub struct WatchRule {
    pub name: String,
    pub channel_ids: BTreeSet<ChannelId>,
    #[serde(flatten)]
    pub matcher: Matcher,
    /// Bus channel under `bus.prefix`, such as `events:discord`.
    pub bus_channel: String,
}

/// The validated `[discord]` section.
#[derive(Debug, Clone, Serialize)]
pub struct DiscordConfig {
    /// Bot token, or `None` in webhook-only mode.
    pub token: Option<Secret>,
    pub guild_id: Option<GuildId>,
    /// Destination of a notice whose route and level are not configured. It is `None` only
    /// when no destination at all is configured, which turns outgoing delivery off.
    pub default_destination: Option<Destination>,
    /// Route or level name → destination, from `[discord.routes]` and `[discord.webhooks]`.
    pub routes: BTreeMap<String, Destination>,
    /// Base URL that replaces `https://discord.com` in every REST call.
    pub api_proxy: Option<String>,
    /// How long a notice is retried on 429, 5xx and network errors.
    #[serde(rename = "retry_for_secs", serialize_with = "as_secs")]
    pub retry_for: Duration,
    /// How often delivery is tried again after a 401 or 403 stopped it.
    #[serde(rename = "recheck_secs", serialize_with = "as_secs")]
    pub recheck_interval: Duration,
    /// How long another consumer's entry must be pending before this one claims it.
    #[serde(rename = "claim_idle_secs", serialize_with = "as_secs")]
    pub claim_idle: Duration,
    /// Whether the bot connects to the gateway (incoming messages and slash commands).
    pub gateway: bool,
    pub allowed_user_ids: BTreeSet<UserId>,
    pub allowed_role_ids: BTreeSet<RoleId>,
    pub mention_user_ids: Vec<UserId>,
    pub mention_role_ids: Vec<RoleId>,
    pub rules: Vec<WatchRule>,
}

impl DiscordConfig {
    /// Returns whether any destination is configured, so that the notification stream is
    /// consumed.
    pub fn delivers(&self) -> bool {
        self.default_destination.is_some()
    }

    /// Returns whether the bot runs slash commands, which need a guild to be registered in.
    pub fn has_commands(&self) -> bool {
        self.gateway && self.token.is_some() && self.guild_id.is_some()
    }
}

fn as_secs<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(duration.as_secs())
}

impl RawDiscordConfig {
    /// Validates the section, recording every problem in `problems`.
    pub fn validate(&self, problems: &mut Problems, ctx: &Context) -> DiscordConfig {
        let token = SecretSource {
            inline: self.token.as_deref(),
            file: self.token_file.as_deref(),
            env: self.token_env.as_deref(),
        }
        .resolve("discord.token", problems, ctx);
        let has_token = token.is_some() || self.has_token_key();

        let guild_id = self.guild_id.as_ref().and_then(|raw| {
            parse_id(raw)
                .map_err(|message| problems.push("discord.guild_id", message))
                .ok()
        });
        let (default_destination, routes) = self.destinations(has_token, ctx, problems);
        let api_proxy = validate_api_proxy(self.api_proxy.as_deref(), problems);
        let gateway = self.gateway.unwrap_or(true);
        let allowed_user_ids =
            parse_ids("discord.allowed_user_ids", &self.allowed_user_ids, problems);
        let allowed_role_ids =
            parse_ids("discord.allowed_role_ids", &self.allowed_role_ids, problems);
        let mention_user_ids =
            parse_ids("discord.mention_user_ids", &self.mention_user_ids, problems);
        let mention_role_ids =
            parse_ids("discord.mention_role_ids", &self.mention_role_ids, problems);
        let rules = self.watch_rules(problems);

        self.check_incoming(has_token, gateway, problems);

        DiscordConfig {
            token,
            guild_id,
            default_destination,
            routes,
            api_proxy,
            retry_for: Duration::from_secs(self.retry_for_secs.unwrap_or(DEFAULT_RETRY_FOR_SECS)),
            recheck_interval: Duration::from_secs(
                self.recheck_secs.unwrap_or(DEFAULT_RECHECK_SECS).max(1),
            ),
            claim_idle: Duration::from_secs(
                self.claim_idle_secs.unwrap_or(DEFAULT_CLAIM_IDLE_SECS),
            ),
            gateway,
            allowed_user_ids,
            allowed_role_ids,
            mention_user_ids: mention_user_ids.into_iter().collect(),
            mention_role_ids: mention_role_ids.into_iter().collect(),
            rules,
        }
    }

    fn has_token_key(&self) -> bool {
        self.token.is_some() || self.token_file.is_some() || self.token_env.is_some()
    }

    /// Validates the default destination and every route. A route name may be a channel route
    /// or a webhook route, but not both.
    fn destinations(
        &self,
        has_token: bool,
        ctx: &Context,
        problems: &mut Problems,
    ) -> (Option<Destination>, BTreeMap<String, Destination>) {
        let mut routes = BTreeMap::new();

        for (name, raw) in &self.routes {
            let key = format!("discord.routes.{}", key_segment(name));
            check_route_name(&key, name, problems);
            if !has_token {
                problems.push(&key, NEEDS_TOKEN);
            }
            match parse_id(raw) {
                Ok(id) => {
                    routes.insert(name.clone(), Destination::Channel(id));
                }
                Err(message) => problems.push(&key, message),
            }
        }
        for (name, raw) in &self.webhooks {
            let key = format!("discord.webhooks.{}", key_segment(name));
            check_route_name(&key, name, problems);
            if self.routes.contains_key(name) {
                problems.push(
                    &key,
                    format!(
                        "route {name:?} is also in discord.routes: give each route either a \
                         channel id or a webhook"
                    ),
                );
            }
            if let Some(webhook) = resolve_webhook(&key, raw, ctx, problems) {
                routes.insert(name.clone(), Destination::Webhook(webhook));
            }
        }

        let channel = self.default_channel_id.as_ref().and_then(|raw| {
            if !has_token {
                problems.push("discord.default_channel_id", NEEDS_TOKEN);
            }
            parse_id(raw)
                .map_err(|message| problems.push("discord.default_channel_id", message))
                .ok()
        });
        let webhook = self
            .default_webhook
            .as_ref()
            .and_then(|raw| resolve_webhook("discord.default_webhook", raw, ctx, problems));
        if self.default_channel_id.is_some() && self.default_webhook.is_some() {
            problems.push(
                "discord.default_webhook",
                "set either discord.default_channel_id or discord.default_webhook, not both",
            );
        }
        let default = channel
            .map(Destination::Channel)
            .or(webhook.map(Destination::Webhook));
        let has_default = self.default_channel_id.is_some() || self.default_webhook.is_some();
        let has_routes = !self.routes.is_empty() || !self.webhooks.is_empty();
        if has_routes && !has_default {
            problems.push(
                "discord.default_channel_id",
                "missing: routes are configured, so notices without a matching route need a \
                 default; set discord.default_channel_id (bot) or discord.default_webhook",
            );
        }
        (default, routes)
    }

    fn watch_rules(&self, problems: &mut Problems) -> Vec<WatchRule> {
        let mut names = BTreeSet::new();
        let mut rules = Vec::new();

        for (index, raw) in self.rules.iter().enumerate() {
            let key = format!("discord.rules[{index}]");
            let name = match raw.name.as_deref().map(str::trim) {
                Some(name) if !name.is_empty() => name.to_owned(),
                _ => {
                    problems.push(format!("{key}.name"), "missing: give the rule a name");
                    String::new()
                }
            };
            if !name.is_empty() && !names.insert(name.clone()) {
                problems.push(
                    format!("{key}.name"),
                    format!("duplicate rule name {name:?}"),
                );
            }

            let channel_ids = parse_ids(&format!("{key}.channel_ids"), &raw.channel_ids, problems);
            if raw.channel_ids.is_empty() {
                problems.push(
                    format!("{key}.channel_ids"),
                    "missing: list the ids of the Discord channels this rule watches",
                );
            }

            let matcher = rule_matcher(&key, raw, problems);
            let bus_channel = raw
                .bus_channel
                .clone()
                .unwrap_or(DEFAULT_RULE_BUS_CHANNEL.into());
            if !is_bus_name(&bus_channel) {
                problems.push(
                    format!("{key}.bus_channel"),
                    format!(
                        "invalid bus channel {bus_channel:?}: use letters, digits and _.:- \
                         (at most 128, starting with a letter or digit)"
                    ),
                );
            }
            if let Some(matcher) = matcher {
                rules.push(WatchRule {
                    name,
                    channel_ids,
                    matcher,
                    bus_channel,
                });
            }
        }
        rules
    }

    /// Incoming messages and slash commands need a bot on the gateway.
    fn check_incoming(&self, has_token: bool, gateway: bool, problems: &mut Problems) {
        let incoming = [
            ("discord.rules", !self.rules.is_empty()),
            (
                "discord.allowed_user_ids",
                !self.allowed_user_ids.is_empty(),
            ),
            (
                "discord.allowed_role_ids",
                !self.allowed_role_ids.is_empty(),
            ),
            ("discord.guild_id", self.guild_id.is_some()),
        ];
        for (key, used) in incoming {
            if used && !has_token {
                problems.push(key, NEEDS_TOKEN);
            } else if used && !gateway {
                problems.push(
                    key,
                    "needs the gateway, but discord.gateway = false: remove this key or set \
                     discord.gateway = true",
                );
            }
        }
        let allows_someone = !self.allowed_user_ids.is_empty() || !self.allowed_role_ids.is_empty();
        if allows_someone && self.guild_id.is_none() {
            problems.push(
                "discord.guild_id",
                "missing: slash commands are registered in one guild (server); set \
                 discord.guild_id to its id",
            );
        }
    }
}

const NEEDS_TOKEN: &str = "needs a bot token: set discord.token_file, discord.token_env or \
                           discord.token (or use discord.webhooks for webhook-only mode)";

fn resolve_webhook(
    key: &str,
    raw: &RawWebhook,
    ctx: &Context,
    problems: &mut Problems,
) -> Option<Webhook> {
    let table = match raw {
        RawWebhook::Url(url) => RawWebhookTable {
            url: Some(url.clone()),
            ..Default::default()
        },
        RawWebhook::Table(table) => table.clone(),
    };
    let source = SecretSource {
        inline: table.url.as_deref(),
        file: table.url_file.as_deref(),
        env: table.url_env.as_deref(),
    };
    let url_key = format!("{key}.url");
    if !source.is_set() {
        problems.push(url_key, "missing: set url, url_file or url_env");
        return None;
    }
    let url = source.resolve(&url_key, problems, ctx)?;
    parse_webhook_url(url.expose().trim())
        .map_err(|message| problems.push(url_key, message))
        .ok()
}

/// Hosts that serve Discord webhooks.
const WEBHOOK_HOSTS: [&str; 4] = [
    "discord.com",
    "discordapp.com",
    "ptb.discord.com",
    "canary.discord.com",
];

/// Parses `https://discord.com/api[/vN]/webhooks/ID/TOKEN`. The error never contains the URL,
/// because the URL is a secret.
pub fn parse_webhook_url(text: &str) -> Result<Webhook, String> {
    const EXPECTED: &str = "invalid webhook URL (value hidden): expected \
                            https://discord.com/api/webhooks/ID/TOKEN as Discord shows it";

    let url = Url::parse(text).map_err(|_| EXPECTED.to_owned())?;
    let host_ok = url
        .host_str()
        .is_some_and(|host| WEBHOOK_HOSTS.contains(&host));
    if url.scheme() != "https" || !host_ok {
        return Err(EXPECTED.to_owned());
    }

    let segments: Vec<&str> = url
        .path_segments()
        .map(Iterator::collect)
        .unwrap_or_default();
    let rest = match segments.as_slice() {
        ["api", "webhooks", rest @ ..] => rest,
        ["api", version, "webhooks", rest @ ..] if version.starts_with('v') => rest,
        _ => return Err(EXPECTED.to_owned()),
    };
    let [id, token] = rest else {
        return Err(EXPECTED.to_owned());
    };
    let id = id
        .parse::<u64>()
        .ok()
        .filter(|id| *id != 0)
        .ok_or(EXPECTED)?;
    if token.is_empty() {
        return Err(EXPECTED.to_owned());
    }
    Ok(Webhook {
        id: WebhookId::new(id),
        token: Secret::new(*token),
    })
}

fn validate_api_proxy(raw: Option<&str>, problems: &mut Problems) -> Option<String> {
    let raw = raw?;
    let valid = Url::parse(raw).ok().filter(|url| {
        matches!(url.scheme(), "http" | "https")
            && url.host_str().is_some()
            && url.query().is_none()
            && url.fragment().is_none()
    });
    if valid.is_none() {
        problems.push(
            "discord.api_proxy",
            format!(
                "invalid URL {raw:?}: expected an http:// or https:// base URL without query, \
                 such as http://127.0.0.1:8080"
            ),
        );
        return None;
    }
    Some(raw.trim_end_matches('/').to_owned())
}

fn rule_matcher(key: &str, raw: &RawRule, problems: &mut Problems) -> Option<Matcher> {
    match (&raw.regex, &raw.prefix) {
        (Some(_), Some(_)) => {
            problems.push(
                format!("{key}.regex"),
                "set either regex or prefix, not both",
            );
            None
        }
        (None, None) => {
            problems.push(format!("{key}.regex"), "missing: set regex or prefix");
            None
        }
        (None, Some(prefix)) if prefix.is_empty() => {
            problems.push(
                format!("{key}.prefix"),
                "empty prefix: it would match every message",
            );
            None
        }
        (None, Some(prefix)) => Some(Matcher::Prefix(prefix.clone())),
        (Some(pattern), None) => {
            match RegexBuilder::new(pattern)
                .size_limit(RULE_REGEX_SIZE_LIMIT)
                .build()
            {
                Ok(regex) => Some(Matcher::Regex(regex)),
                Err(error) => {
                    problems.push(
                        format!("{key}.regex"),
                        format!("invalid regex {pattern:?}: {error}"),
                    );
                    None
                }
            }
        }
    }
}

/// Parses a Discord id (a snowflake): a positive integer, as a TOML integer or as digits.
fn parse_id<T: From<u64>>(raw: &RawId) -> Result<T, String> {
    let parsed = match raw {
        RawId::Int(value) => u64::try_from(*value).ok(),
        RawId::Text(text) => text.trim().parse::<u64>().ok(),
    };
    match parsed {
        Some(id) if id != 0 => Ok(T::from(id)),
        _ => {
            let shown = match raw {
                RawId::Int(value) => value.to_string(),
                RawId::Text(text) => format!("{text:?}"),
            };
            Err(format!(
                "invalid id {shown}: expected a Discord id, a positive integer such as \
                 123456789012345678 (Developer Mode → Copy ID)"
            ))
        }
    }
}

fn parse_ids<T: From<u64> + Ord>(
    key: &str,
    raws: &[RawId],
    problems: &mut Problems,
) -> BTreeSet<T> {
    let mut ids = BTreeSet::new();
    for (index, raw) in raws.iter().enumerate() {
        match parse_id(raw) {
            Ok(id) => {
                ids.insert(id);
            }
            Err(message) => problems.push(format!("{key}[{index}]"), message),
        }
    }
    ids
}

fn check_route_name(key: &str, name: &str, problems: &mut Problems) {
    if name.trim().is_empty() {
        problems.push(key, "empty route name");
    }
}

/// Quotes a table key that is not a bare TOML key, so the printed key can be pasted back.
fn key_segment(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

/// Returns whether `name` is a valid bus channel or stub name: `[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}`.
fn is_bus_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    first_ok
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;
    use crate::config::{Config, ConfigError};

    const WEBHOOK: &str = "https://discord.com/api/webhooks/123/secret-token";

    fn load(section: &str) -> Result<Config, ConfigError> {
        let env = HashMap::from([("HOOK".to_owned(), WEBHOOK.to_owned())]);
        Config::from_toml(
            &format!("[discord]\n{section}"),
            Path::new("test.toml"),
            env,
        )
    }

    fn validate(section: &str) -> DiscordConfig {
        let config = load(section).unwrap_or_else(|error| panic!("{error}"));
        config.discord.expect("the section is present")
    }

    fn problems(section: &str) -> Vec<(String, String)> {
        let error = load(section).expect_err("the section is invalid");
        error
            .problems()
            .iter()
            .map(|p| (p.key.clone(), p.message.clone()))
            .collect()
    }

    fn problem_keys(section: &str) -> Vec<String> {
        problems(section).into_iter().map(|(key, _)| key).collect()
    }

    #[test]
    fn empty_section_is_valid() {
        let config = validate("");
        assert!(!config.delivers());
        assert_eq!(
            config.retry_for,
            Duration::from_secs(DEFAULT_RETRY_FOR_SECS)
        );
    }

    #[test]
    fn bot_routes_resolve() {
        let config = validate(
            r#"
            token = "abc"
            default_channel_id = "111"
            retry_for_secs = 60
            [discord.routes]
            alerts = 222
            "#,
        );
        assert_eq!(
            config.default_destination,
            Some(Destination::Channel(ChannelId::new(111)))
        );
        assert_eq!(
            config.routes["alerts"],
            Destination::Channel(ChannelId::new(222))
        );
        assert_eq!(config.retry_for, Duration::from_secs(60));
    }

    #[test]
    fn bad_route_id_names_key() {
        let found =
            problems("token = \"t\"\ndefault_channel_id = 1\nroutes = { alerts = \"abc\" }");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "discord.routes.alerts");
        assert!(found[0].1.contains("\"abc\""), "{}", found[0].1);
    }

    #[test]
    fn negative_id_rejected() {
        assert_eq!(
            problem_keys("token = \"t\"\ndefault_channel_id = -5"),
            ["discord.default_channel_id"]
        );
    }

    #[test]
    fn every_problem_reported() {
        let keys = problem_keys(
            r#"
            token = "t"
            token_env = "X"
            api_proxy = "ftp://x"
            routes = { a = 0 }
            "#,
        );
        assert_eq!(
            keys,
            [
                "discord.api_proxy",
                "discord.default_channel_id",
                "discord.routes.a",
                "discord.token"
            ]
        );
    }

    #[test]
    fn channel_route_needs_token() {
        assert_eq!(
            problem_keys("default_channel_id = 1"),
            ["discord.default_channel_id"]
        );
    }

    #[test]
    fn webhook_only_mode_valid() {
        let config = validate(&format!(
            "default_webhook = \"{WEBHOOK}\"\nwebhooks = {{ alerts = {{ url_env = \"HOOK\" }} }}"
        ));
        assert!(config.token.is_none());
        let Some(Destination::Webhook(webhook)) = &config.routes.get("alerts") else {
            panic!("alerts is not a webhook route");
        };
        assert_eq!(webhook.id, WebhookId::new(123));
        assert_eq!(webhook.token.expose(), "secret-token");
    }

    #[test]
    fn webhook_error_hides_url() {
        let found =
            problems("default_webhook = \"https://example.com/api/webhooks/1/very-secret\"");
        assert_eq!(found[0].0, "discord.default_webhook.url");
        assert!(!found[0].1.contains("very-secret"));
    }

    #[test]
    fn missing_webhook_env_names_variable() {
        let found = problems("default_webhook = { url_env = \"NOPE\" }");
        assert_eq!(found[0].0, "discord.default_webhook.url_env");
        assert!(found[0].1.contains("NOPE"), "{}", found[0].1);
    }

    #[test]
    fn unknown_webhook_key_reported() {
        let keys = problem_keys(&format!(
            "default_webhook = {{ url = \"{WEBHOOK}\", ur = 1 }}"
        ));
        assert_eq!(keys, ["discord.default_webhook.ur"]);
    }

    #[test]
    fn route_in_both_tables_rejected() {
        let keys = problem_keys(&format!(
            "token = \"t\"\ndefault_channel_id = 1\nroutes = {{ a = 2 }}\nwebhooks = {{ a = \"{WEBHOOK}\" }}"
        ));
        assert_eq!(keys, ["discord.webhooks.a"]);
    }

    #[test]
    fn token_read_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "file-token\n").unwrap();
        let config = validate(&format!("token_file = {:?}", path.display().to_string()));
        assert_eq!(config.token.unwrap().expose(), "file-token");
    }

    #[test]
    fn secrets_absent_from_output() {
        let config = load(&format!(
            "token = \"bot-secret\"\ndefault_channel_id = 1\nwebhooks = {{ a = \"{WEBHOOK}\" }}"
        ))
        .unwrap();
        let debug = format!("{config:?}");
        let masked = config.to_masked_toml();
        for text in [&debug, &masked] {
            assert!(!text.contains("bot-secret"), "{text}");
            assert!(!text.contains("secret-token"), "{text}");
        }
    }

    #[test]
    fn rule_problems_name_index() {
        let keys = problem_keys(
            r#"
            token = "t"
            [[discord.rules]]
            name = "ok"
            channel_ids = [1]
            prefix = "!"
            [[discord.rules]]
            name = "ok"
            regex = "("
            bus_channel = "bad channel"
            "#,
        );
        assert_eq!(
            keys,
            [
                "discord.rules[1].bus_channel",
                "discord.rules[1].channel_ids",
                "discord.rules[1].name",
                "discord.rules[1].regex"
            ]
        );
    }

    #[test]
    fn rule_serializes_matcher() {
        let config = validate(
            "token = \"t\"\n[[discord.rules]]\nname = \"a\"\nchannel_ids = [1]\nregex = \"x+\"",
        );
        let json = serde_json::to_value(&config.rules[0]).unwrap();
        assert_eq!(json["regex"], "x+");
    }

    #[test]
    fn rules_need_token() {
        let keys =
            problem_keys("[[discord.rules]]\nname = \"a\"\nchannel_ids = [1]\nprefix = \"!\"");
        assert_eq!(keys, ["discord.rules"]);
    }

    #[test]
    fn allowed_users_need_guild() {
        assert_eq!(
            problem_keys("token = \"t\"\nallowed_user_ids = [1]"),
            ["discord.guild_id"]
        );
    }

    #[test]
    fn unknown_key_rejected() {
        assert_eq!(problem_keys("tokn = \"t\""), ["discord.tokn"]);
    }

    #[test]
    fn env_override_sets_channel() {
        let env = HashMap::from([
            (
                "ALMAGEST__DISCORD__DEFAULT_CHANNEL_ID".to_owned(),
                "555".to_owned(),
            ),
            ("ALMAGEST__DISCORD__TOKEN".to_owned(), "t".to_owned()),
        ]);
        let config = Config::from_toml("[discord]\n", Path::new("test.toml"), env).unwrap();
        let discord = config.discord.unwrap();
        assert_eq!(
            discord.default_destination,
            Some(Destination::Channel(ChannelId::new(555)))
        );
    }

    #[test]
    fn webhook_url_forms_parse() {
        for url in [
            "https://discord.com/api/webhooks/5/tok",
            "https://discordapp.com/api/v10/webhooks/5/tok",
            "https://canary.discord.com/api/webhooks/5/tok",
        ] {
            assert_eq!(
                parse_webhook_url(url).map(|hook| hook.id),
                Ok(WebhookId::new(5)),
                "{url}"
            );
        }
    }

    #[test]
    fn webhook_url_wrong_forms_rejected() {
        for url in [
            "http://discord.com/api/webhooks/5/tok",
            "https://discord.com/api/webhooks/5",
            "https://discord.com/api/webhooks/x/tok",
            "https://discord.com.evil.example/api/webhooks/5/tok",
        ] {
            assert!(parse_webhook_url(url).is_err(), "{url}");
        }
    }
}

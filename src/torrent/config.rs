//! The `[torrent]` config section: the raw form that serde reads and its validation into
//! [`TorrentConfig`], with passwords resolved through the shared secret sources.
//!
//! ```toml
//! [torrent]
//! poll_interval_secs = 15
//!
//! [[torrent.clients]]
//! name = "nas"
//! kind = "transmission"
//! url = "http://127.0.0.1:9091/transmission/rpc"
//! username = "almagest"
//! password_file = "/run/secrets/transmission"
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::config::{Context, Problems, Secret, SecretSource};

/// Default poll period. Short enough that "download finished" arrives while people still
/// care, long enough that a list of a few thousand torrents costs the client little.
const DEFAULT_POLL_INTERVAL_SECS: u64 = 15;
/// Default outage before a "client unreachable" notice: a client restart or an update of its
/// container takes under a minute, so five minutes only reports real outages.
const DEFAULT_DOWN_AFTER_SECS: u64 = 300;
/// Default HTTP timeout per request. A local client returns a full list in well under a
/// second, and ten seconds leaves room for a busy NAS without stalling the poll loop.
const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 10;
/// Default lifetime of a torrent's stored state after it was last seen in a poll.
const DEFAULT_SEEN_TTL_DAYS: u64 = 30;

/// The `[torrent]` section as written. Every field has a default, so that validation, not
/// serde, reports what is missing or wrong, with the full key.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawTorrentConfig {
    #[serde(default)]
    pub clients: Vec<RawClientConfig>,
    pub poll_interval_secs: Option<u64>,
    /// Announce a completion for a torrent that was complete when first seen (added with its
    /// data already in place).
    #[serde(default)]
    pub notify_added_complete: bool,
    /// Send a notice when a torrent is added (the event is published either way).
    pub notify_added: Option<bool>,
    /// Send a notice when a client reports an error for a torrent.
    #[serde(default)]
    pub notify_errors: bool,
    /// Send a notice when a torrent disappears from its client.
    #[serde(default)]
    pub notify_removed: bool,
    pub down_after_secs: Option<u64>,
    pub request_timeout_secs: Option<u64>,
    pub seen_ttl_days: Option<u64>,
    /// Notification route for the notices of this service (see `discord.routes`).
    pub route: Option<String>,
}

/// One `[[torrent.clients]]` entry as written.
#[derive(Clone, Default, Deserialize)]
pub struct RawClientConfig {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub url: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
}

impl fmt::Debug for RawClientConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RawClientConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .finish()
    }
}

/// The validated `[torrent]` section.
#[derive(Clone, Debug, Serialize)]
pub struct TorrentConfig {
    pub clients: Vec<ClientConfig>,
    pub poll_interval_secs: u64,
    pub notify_added_complete: bool,
    pub notify_added: bool,
    pub notify_errors: bool,
    pub notify_removed: bool,
    pub down_after_secs: u64,
    pub request_timeout_secs: u64,
    pub seen_ttl_days: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

impl TorrentConfig {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.poll_interval_secs)
    }

    pub fn down_after(&self) -> Duration {
        Duration::from_secs(self.down_after_secs)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn seen_ttl(&self) -> Duration {
        Duration::from_secs(self.seen_ttl_days * 86_400)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    Transmission,
    Qbittorrent,
}

impl ClientKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transmission => "transmission",
            Self::Qbittorrent => "qbittorrent",
        }
    }
}

/// One validated torrent client.
#[derive(Clone, Debug, Serialize)]
pub struct ClientConfig {
    pub name: String,
    pub kind: ClientKind,
    /// Transmission: the RPC URL. qBittorrent: the WebUI base URL.
    #[serde(serialize_with = "serialize_url")]
    pub url: Url,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
}

fn serialize_url<S: serde::Serializer>(url: &Url, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(url.as_str())
}

/// A user name and its password. The password prints and serializes masked.
#[derive(Clone, Debug, Serialize)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl RawTorrentConfig {
    /// Validates the section, reading password files and variables, and records every
    /// problem found under its full key.
    pub fn validate(self, problems: &mut Problems, ctx: &Context) -> TorrentConfig {
        let clients = self.validate_clients(problems, ctx);
        let poll_interval_secs = seconds(
            "torrent.poll_interval_secs",
            self.poll_interval_secs
                .unwrap_or(DEFAULT_POLL_INTERVAL_SECS),
            1..=86_400,
            problems,
        );
        let down_after_secs = seconds(
            "torrent.down_after_secs",
            self.down_after_secs.unwrap_or(DEFAULT_DOWN_AFTER_SECS),
            0..=604_800,
            problems,
        );
        let request_timeout_secs = seconds(
            "torrent.request_timeout_secs",
            self.request_timeout_secs
                .unwrap_or(DEFAULT_REQUEST_TIMEOUT_SECS),
            1..=300,
            problems,
        );
        let seen_ttl_days = self.seen_ttl_days.unwrap_or(DEFAULT_SEEN_TTL_DAYS);
        if !(1..=3650).contains(&seen_ttl_days) {
            problems.push(
                "torrent.seen_ttl_days",
                format!("invalid value {seen_ttl_days}: expected 1 to 3650 days"),
            );
        }
        if let Some(route) = &self.route
            && route.trim().is_empty()
        {
            problems.push(
                "torrent.route",
                "invalid value \"\": expected a route name, or leave the key out",
            );
        }
        TorrentConfig {
            clients,
            poll_interval_secs,
            notify_added_complete: self.notify_added_complete,
            notify_added: self.notify_added.unwrap_or(true),
            notify_errors: self.notify_errors,
            notify_removed: self.notify_removed,
            down_after_secs,
            request_timeout_secs,
            seen_ttl_days,
            route: self.route,
        }
    }

    fn validate_clients(&self, problems: &mut Problems, ctx: &Context) -> Vec<ClientConfig> {
        let mut clients: Vec<ClientConfig> = Vec::new();
        for (index, raw) in self.clients.iter().enumerate() {
            let key = format!("torrent.clients[{index}]");
            let Some(client) = raw.validate(&key, problems, ctx) else {
                continue;
            };
            if clients.iter().any(|other| other.name == client.name) {
                problems.push(
                    format!("{key}.name"),
                    format!(
                        "duplicate name {:?}: every client needs its own name",
                        client.name
                    ),
                );
                continue;
            }
            clients.push(client);
        }
        clients
    }
}

impl RawClientConfig {
    fn validate(&self, key: &str, problems: &mut Problems, ctx: &Context) -> Option<ClientConfig> {
        let name = validate_name(key, self.name.as_deref(), problems);
        let kind = validate_kind(key, self.kind.as_deref(), problems);
        let url = kind.and_then(|kind| validate_url(key, kind, self.url.as_deref(), problems));
        let credentials = self.validate_credentials(key, problems, ctx);
        Some(ClientConfig {
            name: name?,
            kind: kind?,
            url: url?,
            credentials: credentials.ok()?,
        })
    }

    /// Returns the credentials (`Ok(None)` when neither a user name nor a password is set),
    /// or `Err(())` after recording a problem.
    fn validate_credentials(
        &self,
        key: &str,
        problems: &mut Problems,
        ctx: &Context,
    ) -> Result<Option<Credentials>, ()> {
        let source = SecretSource {
            inline: self.password.as_deref(),
            file: self.password_file.as_deref(),
            env: self.password_env.as_deref(),
        };
        let password_key = format!("{key}.password");
        let password = source.resolve(&password_key, problems, ctx);
        if source.is_set() && password.is_none() {
            return Err(());
        }
        match (self.username.as_deref(), password) {
            (Some(""), _) => {
                problems.push(
                    format!("{key}.username"),
                    "invalid value \"\": expected the client's user name, or leave out both \
                     the user name and the password",
                );
                Err(())
            }
            (Some(username), Some(password)) => Ok(Some(Credentials {
                username: username.to_owned(),
                password,
            })),
            (None, None) => Ok(None),
            (Some(_), None) => {
                problems.push(
                    password_key,
                    "missing: a username needs one of password, password_file or password_env",
                );
                Err(())
            }
            (None, Some(_)) => {
                problems.push(
                    format!("{key}.username"),
                    "missing: a password needs a username",
                );
                Err(())
            }
        }
    }
}

fn validate_name(key: &str, name: Option<&str>, problems: &mut Problems) -> Option<String> {
    let Some(name) = name else {
        problems.push(
            format!("{key}.name"),
            "missing: expected a short name such as \"nas\"",
        );
        return None;
    };
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !first_ok || !rest_ok || name.len() > 64 {
        problems.push(
            format!("{key}.name"),
            format!(
                "invalid value {name:?}: use letters, digits and _.- (starting with a letter or \
                 digit, at most 64)"
            ),
        );
        return None;
    }
    Some(name.to_owned())
}

fn validate_kind(key: &str, kind: Option<&str>, problems: &mut Problems) -> Option<ClientKind> {
    match kind {
        Some("transmission") => Some(ClientKind::Transmission),
        Some("qbittorrent") => Some(ClientKind::Qbittorrent),
        Some(other) => {
            problems.push(
                format!("{key}.kind"),
                format!("invalid value {other:?}: expected \"transmission\" or \"qbittorrent\""),
            );
            None
        }
        None => {
            problems.push(
                format!("{key}.kind"),
                "missing: expected \"transmission\" or \"qbittorrent\"",
            );
            None
        }
    }
}

fn validate_url(
    key: &str,
    kind: ClientKind,
    url: Option<&str>,
    problems: &mut Problems,
) -> Option<Url> {
    let key = format!("{key}.url");
    let expected = match kind {
        ClientKind::Transmission => {
            "expected the RPC URL, such as http://127.0.0.1:9091/transmission/rpc"
        }
        ClientKind::Qbittorrent => "expected the WebUI base URL, such as http://127.0.0.1:8080",
    };
    let Some(text) = url else {
        problems.push(key, format!("missing: {expected}"));
        return None;
    };
    let parsed = match Url::parse(text) {
        Ok(parsed) => parsed,
        Err(error) => {
            problems.push(key, format!("invalid URL {text:?} ({error}): {expected}"));
            return None;
        }
    };
    let mut reasons = Vec::new();
    if !matches!(parsed.scheme(), "http" | "https") {
        reasons.push("the scheme must be http or https");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        reasons.push("put credentials in username and password_file, not in the URL");
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        reasons.push("the URL takes no query or fragment");
    }
    if kind == ClientKind::Transmission && parsed.path() == "/" {
        reasons.push("the path is missing (usually /transmission/rpc)");
    }
    if !reasons.is_empty() {
        // A URL with a password is shown without it.
        let mut shown = parsed.clone();
        let _ = shown.set_password(None);
        problems.push(
            key,
            format!(
                "invalid URL \"{shown}\": {}; {expected}",
                reasons.join("; ")
            ),
        );
        return None;
    }
    Some(parsed)
}

fn seconds(
    key: &str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
    problems: &mut Problems,
) -> u64 {
    if !range.contains(&value) {
        problems.push(
            key,
            format!(
                "invalid value {value}: expected {} to {} seconds",
                range.start(),
                range.end()
            ),
        );
    }
    value
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use crate::config::{Config, Problem};

    use super::*;

    fn load(text: &str) -> Result<Config, Vec<Problem>> {
        load_with_env(text, &[])
    }

    fn load_with_env(text: &str, env: &[(&str, &str)]) -> Result<Config, Vec<Problem>> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        Config::from_toml(text, Path::new("test.toml"), env)
            .map_err(|error| error.problems().to_vec())
    }

    fn torrent(text: &str) -> TorrentConfig {
        load(text)
            .expect("config is valid")
            .torrent
            .expect("torrent section present")
    }

    fn problems(text: &str) -> Vec<Problem> {
        load(text).expect_err("config is invalid")
    }

    fn keys(problems: &[Problem]) -> Vec<&str> {
        problems
            .iter()
            .map(|problem| problem.key.as_str())
            .collect()
    }

    #[test]
    fn empty_section_uses_defaults() {
        let config = torrent("[torrent]");
        assert_eq!(config.poll_interval(), Duration::from_secs(15));
        assert_eq!(config.down_after(), Duration::from_secs(300));
        assert!(config.clients.is_empty());
        assert!(config.notify_added);
        assert!(!config.notify_added_complete);
    }

    #[test]
    fn valid_clients_validate() {
        let config = torrent(
            r#"
            [[torrent.clients]]
            name = "nas"
            kind = "transmission"
            url = "http://127.0.0.1:9091/transmission/rpc"
            username = "u"
            password = "p"

            [[torrent.clients]]
            name = "qb"
            kind = "qbittorrent"
            url = "http://127.0.0.1:8080"
            "#,
        );
        assert_eq!(config.clients.len(), 2);
        assert_eq!(config.clients[0].kind, ClientKind::Transmission);
        assert!(config.clients[1].credentials.is_none());
    }

    #[test]
    fn every_problem_is_reported() {
        let found = problems(
            r#"
            [torrent]
            poll_interval_secs = 0
            [[torrent.clients]]
            name = "ok"
            kind = "transmission"
            url = "http://127.0.0.1:9091/transmission/rpc"

            [[torrent.clients]]
            name = "bad name"
            kind = "deluge"
            url = "ftp://x"
            "#,
        );
        let keys = keys(&found);
        assert!(keys.contains(&"torrent.poll_interval_secs"), "{keys:?}");
        assert!(keys.contains(&"torrent.clients[1].name"), "{keys:?}");
        assert!(keys.contains(&"torrent.clients[1].kind"), "{keys:?}");
    }

    #[test]
    fn url_problem_names_key_value_and_form() {
        let found = problems(
            r#"
            [[torrent.clients]]
            name = "a"
            kind = "qbittorrent"
            url = "http://127.0.0.1:8080"
            [[torrent.clients]]
            name = "b"
            kind = "transmission"
            url = "ftp://nas:9091/transmission/rpc"
            "#,
        );
        assert_eq!(keys(&found), vec!["torrent.clients[1].url"]);
        assert!(found[0].message.contains("ftp://nas:9091/transmission/rpc"));
        assert!(
            found[0]
                .message
                .contains("http://127.0.0.1:9091/transmission/rpc")
        );
    }

    #[test]
    fn transmission_url_needs_rpc_path() {
        let found = problems(
            "[[torrent.clients]]\nname = \"a\"\nkind = \"transmission\"\nurl = \"http://nas:9091\"",
        );
        assert!(found[0].message.contains("/transmission/rpc"));
    }

    #[test]
    fn url_password_is_not_echoed() {
        let found = problems(
            "[[torrent.clients]]\nname = \"a\"\nkind = \"qbittorrent\"\nurl = \"http://u:hunter2@nas:8080\"",
        );
        assert!(!found[0].to_string().contains("hunter2"), "{}", found[0]);
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let found = problems(
            r#"
            [[torrent.clients]]
            name = "a"
            kind = "qbittorrent"
            url = "http://127.0.0.1:8080"
            [[torrent.clients]]
            name = "a"
            kind = "qbittorrent"
            url = "http://127.0.0.1:8081"
            "#,
        );
        assert_eq!(keys(&found), vec!["torrent.clients[1].name"]);
    }

    #[test]
    fn two_password_sources_are_rejected() {
        let found = problems(
            r#"
            [[torrent.clients]]
            name = "a"
            kind = "qbittorrent"
            url = "http://127.0.0.1:8080"
            username = "u"
            password = "hunter2"
            password_env = "X"
            "#,
        );
        assert_eq!(keys(&found), vec!["torrent.clients[0].password"]);
        assert!(!found[0].message.contains("hunter2"));
    }

    #[test]
    fn username_without_password_is_rejected() {
        let found = problems(
            "[[torrent.clients]]\nname = \"a\"\nkind = \"qbittorrent\"\nurl = \"http://h:1\"\nusername = \"u\"",
        );
        assert_eq!(keys(&found), vec!["torrent.clients[0].password"]);
    }

    #[test]
    fn password_env_is_read() {
        let config = load_with_env(
            "[[torrent.clients]]\nname = \"a\"\nkind = \"qbittorrent\"\nurl = \"http://h:1\"\n\
             username = \"u\"\npassword_env = \"QB_PASSWORD\"",
            &[("QB_PASSWORD", "hunter2")],
        )
        .unwrap();
        let client = &config.torrent.unwrap().clients[0];
        assert_eq!(
            client.credentials.as_ref().unwrap().password.expose(),
            "hunter2"
        );
    }

    #[test]
    fn masked_output_hides_password() {
        let config = load(
            "[[torrent.clients]]\nname = \"a\"\nkind = \"qbittorrent\"\nurl = \"http://h:1\"\n\
             username = \"u\"\npassword = \"hunter2\"",
        )
        .unwrap();
        assert!(!config.to_masked_toml().contains("hunter2"));
        assert!(!format!("{config:?}").contains("hunter2"));
        let raw = RawClientConfig {
            password: Some("hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{raw:?}").contains("hunter2"));
    }
}

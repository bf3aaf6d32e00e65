//! The `[torrent]` config section: the raw form that serde reads, its validation into
//! [`TorrentConfig`], and password resolution.
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

use serde::Deserialize;
use url::Url;

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
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .finish()
    }
}

/// The validated `[torrent]` section.
#[derive(Clone, Debug)]
pub struct TorrentConfig {
    pub clients: Vec<ClientConfig>,
    pub poll_interval: Duration,
    pub notify_added_complete: bool,
    pub notify_added: bool,
    pub notify_errors: bool,
    pub notify_removed: bool,
    pub down_after: Duration,
    pub request_timeout: Duration,
    pub seen_ttl: Duration,
    pub route: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub name: String,
    pub kind: ClientKind,
    /// Transmission: the RPC URL. qBittorrent: the WebUI base URL.
    pub url: Url,
    pub credentials: Option<Credentials>,
}

/// A user name and its password. The password is never printed.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

/// A secret string whose `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Returns the secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("<redacted>")
    }
}

/// One problem found in the section: the full key, what is wrong and the expected form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl ConfigProblem {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl RawTorrentConfig {
    /// Validates the section, reading password files and variables, and returns every problem
    /// found, not only the first.
    pub fn validate(&self) -> Result<TorrentConfig, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let clients = self.validate_clients(&mut problems);

        let poll_interval = seconds(
            "torrent.poll_interval_secs",
            self.poll_interval_secs
                .unwrap_or(DEFAULT_POLL_INTERVAL_SECS),
            1..=86_400,
            &mut problems,
        );
        let down_after = seconds(
            "torrent.down_after_secs",
            self.down_after_secs.unwrap_or(DEFAULT_DOWN_AFTER_SECS),
            0..=604_800,
            &mut problems,
        );
        let request_timeout = seconds(
            "torrent.request_timeout_secs",
            self.request_timeout_secs
                .unwrap_or(DEFAULT_REQUEST_TIMEOUT_SECS),
            1..=300,
            &mut problems,
        );
        let ttl_days = self.seen_ttl_days.unwrap_or(DEFAULT_SEEN_TTL_DAYS);
        if !(1..=3650).contains(&ttl_days) {
            problems.push(ConfigProblem::new(
                "torrent.seen_ttl_days",
                format!("invalid value {ttl_days}: expected 1 to 3650 days"),
            ));
        }
        if let Some(route) = &self.route
            && route.trim().is_empty()
        {
            problems.push(ConfigProblem::new(
                "torrent.route",
                "invalid value \"\": expected a route name, or leave the key out",
            ));
        }

        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(TorrentConfig {
            clients,
            poll_interval,
            notify_added_complete: self.notify_added_complete,
            notify_added: self.notify_added.unwrap_or(true),
            notify_errors: self.notify_errors,
            notify_removed: self.notify_removed,
            down_after,
            request_timeout,
            seen_ttl: Duration::from_secs(ttl_days * 86_400),
            route: self.route.clone(),
        })
    }

    fn validate_clients(&self, problems: &mut Vec<ConfigProblem>) -> Vec<ClientConfig> {
        let mut clients: Vec<ClientConfig> = Vec::new();
        for (index, raw) in self.clients.iter().enumerate() {
            let key = format!("torrent.clients[{index}]");
            let Some(client) = raw.validate(&key, problems) else {
                continue;
            };
            if clients.iter().any(|other| other.name == client.name) {
                problems.push(ConfigProblem::new(
                    format!("{key}.name"),
                    format!(
                        "duplicate name {:?}: every client needs its own name",
                        client.name
                    ),
                ));
                continue;
            }
            clients.push(client);
        }
        clients
    }
}

impl RawClientConfig {
    fn validate(&self, key: &str, problems: &mut Vec<ConfigProblem>) -> Option<ClientConfig> {
        let before = problems.len();
        let name = validate_name(key, self.name.as_deref(), problems);
        let kind = validate_kind(key, self.kind.as_deref(), problems);
        let url = kind.and_then(|kind| validate_url(key, kind, self.url.as_deref(), problems));
        let credentials = self.validate_credentials(key, problems);
        if problems.len() > before {
            return None;
        }
        Some(ClientConfig {
            name: name?,
            kind: kind?,
            url: url?,
            credentials,
        })
    }

    fn validate_credentials(
        &self,
        key: &str,
        problems: &mut Vec<ConfigProblem>,
    ) -> Option<Credentials> {
        let password = match resolve_secret(
            &format!("{key}.password"),
            self.password.as_deref(),
            self.password_file.as_deref(),
            self.password_env.as_deref(),
        ) {
            Ok(password) => password,
            Err(problem) => {
                problems.push(problem);
                return None;
            }
        };
        match (self.username.as_deref(), password) {
            (Some(""), _) => {
                problems.push(ConfigProblem::new(
                    format!("{key}.username"),
                    "invalid value \"\": expected the client's user name, or leave out both \
                     the user name and the password",
                ));
                None
            }
            (Some(username), Some(password)) => Some(Credentials {
                username: username.to_owned(),
                password,
            }),
            (None, None) => None,
            (Some(_), None) => {
                problems.push(ConfigProblem::new(
                    format!("{key}.password"),
                    "missing: a username needs one of password, password_file or password_env",
                ));
                None
            }
            (None, Some(_)) => {
                problems.push(ConfigProblem::new(
                    format!("{key}.username"),
                    "missing: a password needs a username",
                ));
                None
            }
        }
    }
}

fn validate_name(
    key: &str,
    name: Option<&str>,
    problems: &mut Vec<ConfigProblem>,
) -> Option<String> {
    let Some(name) = name else {
        problems.push(ConfigProblem::new(
            format!("{key}.name"),
            "missing: expected a short name such as \"nas\"",
        ));
        return None;
    };
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !first_ok || !rest_ok || name.len() > 64 {
        problems.push(ConfigProblem::new(
            format!("{key}.name"),
            format!(
                "invalid value {name:?}: use letters, digits and _.- (starting with a letter or \
                 digit, at most 64)"
            ),
        ));
        return None;
    }
    Some(name.to_owned())
}

fn validate_kind(
    key: &str,
    kind: Option<&str>,
    problems: &mut Vec<ConfigProblem>,
) -> Option<ClientKind> {
    match kind {
        Some("transmission") => Some(ClientKind::Transmission),
        Some("qbittorrent") => Some(ClientKind::Qbittorrent),
        Some(other) => {
            problems.push(ConfigProblem::new(
                format!("{key}.kind"),
                format!("invalid value {other:?}: expected \"transmission\" or \"qbittorrent\""),
            ));
            None
        }
        None => {
            problems.push(ConfigProblem::new(
                format!("{key}.kind"),
                "missing: expected \"transmission\" or \"qbittorrent\"",
            ));
            None
        }
    }
}

fn validate_url(
    key: &str,
    kind: ClientKind,
    url: Option<&str>,
    problems: &mut Vec<ConfigProblem>,
) -> Option<Url> {
    let key = format!("{key}.url");
    let expected = match kind {
        ClientKind::Transmission => {
            "expected the RPC URL, such as http://127.0.0.1:9091/transmission/rpc"
        }
        ClientKind::Qbittorrent => "expected the WebUI base URL, such as http://127.0.0.1:8080",
    };
    let Some(text) = url else {
        problems.push(ConfigProblem::new(key, format!("missing: {expected}")));
        return None;
    };
    let parsed = match Url::parse(text) {
        Ok(parsed) => parsed,
        Err(error) => {
            problems.push(ConfigProblem::new(
                key,
                format!("invalid URL {text:?} ({error}): {expected}"),
            ));
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
        problems.push(ConfigProblem::new(
            key,
            format!(
                "invalid URL \"{shown}\": {}; {expected}",
                reasons.join("; ")
            ),
        ));
        return None;
    }
    Some(parsed)
}

fn seconds(
    key: &str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
    problems: &mut Vec<ConfigProblem>,
) -> Duration {
    if !range.contains(&value) {
        problems.push(ConfigProblem::new(
            key,
            format!(
                "invalid value {value}: expected {} to {} seconds",
                range.start(),
                range.end()
            ),
        ));
    }
    Duration::from_secs(value)
}

/// Reads a secret from at most one of its three sources: the inline value, a file (trailing
/// newline trimmed) or a named environment variable. `key` is the inline key, such as
/// `torrent.clients[0].password`; problems name the source key and never the secret.
pub fn resolve_secret(
    key: &str,
    inline: Option<&str>,
    file: Option<&std::path::Path>,
    env: Option<&str>,
) -> Result<Option<Secret>, ConfigProblem> {
    let given = [inline.is_some(), file.is_some(), env.is_some()];
    if given.iter().filter(|given| **given).count() > 1 {
        return Err(ConfigProblem::new(
            key,
            format!("set only one of {key}, {key}_file and {key}_env"),
        ));
    }
    if let Some(value) = inline {
        return Ok(Some(Secret::new(value)));
    }
    if let Some(path) = file {
        return match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(Secret::new(text.trim_end_matches(['\r', '\n'])))),
            Err(error) => Err(ConfigProblem::new(
                format!("{key}_file"),
                format!("cannot read {}: {error}", path.display()),
            )),
        };
    }
    if let Some(name) = env {
        return match std::env::var(name) {
            Ok(value) => Ok(Some(Secret::new(value))),
            Err(_) => Err(ConfigProblem::new(
                format!("{key}_env"),
                format!("environment variable {name:?} is not set or not UTF-8"),
            )),
        };
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> RawTorrentConfig {
        toml::from_str(text).expect("test config parses")
    }

    fn problems(text: &str) -> Vec<ConfigProblem> {
        parse(text).validate().expect_err("config is invalid")
    }

    #[test]
    fn empty_section_uses_defaults() {
        let config = parse("").validate().unwrap();
        assert_eq!(config.poll_interval, Duration::from_secs(15));
        assert_eq!(config.down_after, Duration::from_secs(300));
        assert!(config.clients.is_empty());
        assert!(config.notify_added);
        assert!(!config.notify_added_complete);
    }

    #[test]
    fn valid_clients_validate() {
        let config = parse(
            r#"
            [[clients]]
            name = "nas"
            kind = "transmission"
            url = "http://127.0.0.1:9091/transmission/rpc"
            username = "u"
            password = "p"

            [[clients]]
            name = "qb"
            kind = "qbittorrent"
            url = "http://127.0.0.1:8080"
            "#,
        )
        .validate()
        .unwrap();
        assert_eq!(config.clients.len(), 2);
        assert_eq!(config.clients[0].kind, ClientKind::Transmission);
        assert!(config.clients[1].credentials.is_none());
    }

    #[test]
    fn every_problem_is_reported() {
        let found = problems(
            r#"
            poll_interval_secs = 0
            [[clients]]
            name = "ok"
            kind = "transmission"
            url = "http://127.0.0.1:9091/transmission/rpc"

            [[clients]]
            name = "bad name"
            kind = "deluge"
            url = "ftp://x"
            "#,
        );
        let keys: Vec<&str> = found.iter().map(|problem| problem.key.as_str()).collect();
        assert!(keys.contains(&"torrent.poll_interval_secs"), "{keys:?}");
        assert!(keys.contains(&"torrent.clients[1].name"), "{keys:?}");
        assert!(keys.contains(&"torrent.clients[1].kind"), "{keys:?}");
    }

    #[test]
    fn url_problem_names_key_value_and_form() {
        let found = problems(
            r#"
            [[clients]]
            name = "a"
            kind = "qbittorrent"
            url = "http://127.0.0.1:8080"
            [[clients]]
            name = "b"
            kind = "transmission"
            url = "ftp://nas:9091/transmission/rpc"
            "#,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key, "torrent.clients[1].url");
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
            "[[clients]]\nname = \"a\"\nkind = \"transmission\"\nurl = \"http://nas:9091\"",
        );
        assert!(found[0].message.contains("/transmission/rpc"));
    }

    #[test]
    fn url_password_is_not_echoed() {
        let found = problems(
            "[[clients]]\nname = \"a\"\nkind = \"qbittorrent\"\nurl = \"http://u:hunter2@nas:8080\"",
        );
        assert!(!found[0].to_string().contains("hunter2"), "{}", found[0]);
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let found = problems(
            r#"
            [[clients]]
            name = "a"
            kind = "qbittorrent"
            url = "http://127.0.0.1:8080"
            [[clients]]
            name = "a"
            kind = "qbittorrent"
            url = "http://127.0.0.1:8081"
            "#,
        );
        assert_eq!(found[0].key, "torrent.clients[1].name");
    }

    #[test]
    fn two_password_sources_are_rejected() {
        let found = problems(
            r#"
            [[clients]]
            name = "a"
            kind = "qbittorrent"
            url = "http://127.0.0.1:8080"
            username = "u"
            password = "hunter2"
            password_env = "X"
            "#,
        );
        assert_eq!(found[0].key, "torrent.clients[0].password");
        assert!(!found[0].message.contains("hunter2"));
    }

    #[test]
    fn username_without_password_is_rejected() {
        let found = problems(
            "[[clients]]\nname = \"a\"\nkind = \"qbittorrent\"\nurl = \"http://h:1\"\nusername = \"u\"",
        );
        assert_eq!(found[0].key, "torrent.clients[0].password");
    }

    #[test]
    fn password_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "hunter2\n").unwrap();
        let secret = resolve_secret("k", None, Some(&path), None)
            .unwrap()
            .unwrap();
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn missing_password_file_names_file_key() {
        let problem = resolve_secret(
            "k",
            None,
            Some(std::path::Path::new("/nonexistent/pw")),
            None,
        )
        .unwrap_err();
        assert_eq!(problem.key, "k_file");
    }

    #[test]
    fn debug_output_hides_password() {
        let raw = RawClientConfig {
            password: Some("hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{raw:?}").contains("hunter2"));
        let credentials = Credentials {
            username: "u".into(),
            password: Secret::new("hunter2"),
        };
        assert!(!format!("{credentials:?}").contains("hunter2"));
    }
}

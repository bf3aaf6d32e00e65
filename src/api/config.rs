//! The `[api]` section: listen address, path prefix, limits, tokens and webhook secrets.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::bus::Stub;
use crate::config::{Context, Problems, Secret, SecretSource};

/// `api.listen` when the file does not set it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8411";
/// Environment variable that replaces [`DEFAULT_LISTEN`] without enabling the API. The
/// container image sets it to `0.0.0.0:8411`, so that the API is reachable from outside the
/// container once a config has an `[api]` section, and stays off when it has none.
pub const DEFAULT_LISTEN_ENV: &str = "ALMAGEST_API_DEFAULT_LISTEN";
/// Header that carries a webhook's signature unless the entry names another (GitHub's).
pub const DEFAULT_SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
/// Shortest accepted API token. A token guards an internet-facing door, so it must be long
/// enough that guessing is hopeless even without the failed-login block.
const MIN_TOKEN_LEN: usize = 16;

/// What a token may do besides publishing and request/reply on its stubs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `GET /api/redis/metrics/<stub>` and `GET /metrics`.
    Metrics,
    /// `GET /api/redis/keys/<key>` for keys in `api.readable_keys`.
    Keys,
    /// `GET /api/dns/…`.
    Dns,
    /// `GET /api/status`.
    Status,
}

impl Scope {
    const ALL: [Scope; 4] = [Scope::Metrics, Scope::Keys, Scope::Dns, Scope::Status];

    fn parse(value: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == value)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Metrics => "metrics",
            Scope::Keys => "keys",
            Scope::Dns => "dns",
            Scope::Status => "status",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[api.tokens]]` as written in the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawToken {
    pub name: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub stubs: Vec<String>,
    pub scopes: Vec<String>,
    pub rate_limit_per_minute: Option<u32>,
    pub rate_limit_burst: Option<u32>,
}

/// `[[api.webhooks]]` as written in the file. Several entries for one stub accept any of
/// their secrets, which is how a secret is rotated.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawWebhook {
    pub stub: Option<String>,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub secret_env: Option<String>,
    pub header: Option<String>,
}

/// `[api]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RawApiConfig {
    pub listen: Option<String>,
    pub path_prefix: String,
    pub max_body_bytes: u64,
    pub rproxy_timeout_ms: u64,
    pub durable_stubs: Vec<String>,
    pub readable_keys: Vec<String>,
    pub trusted_proxies: Vec<String>,
    pub rate_limit_per_minute: u32,
    pub rate_limit_burst: u32,
    pub max_auth_failures: u32,
    pub auth_failure_window_secs: u64,
    pub auth_block_secs: u64,
    pub tokens: Vec<RawToken>,
    pub webhooks: Vec<RawWebhook>,
}

impl Default for RawApiConfig {
    fn default() -> Self {
        RawApiConfig {
            listen: None,
            path_prefix: String::new(),
            max_body_bytes: 1024 * 1024,
            rproxy_timeout_ms: 10_000,
            durable_stubs: Vec::new(),
            readable_keys: Vec::new(),
            trusted_proxies: Vec::new(),
            rate_limit_per_minute: 600,
            rate_limit_burst: 60,
            max_auth_failures: 10,
            auth_failure_window_secs: 60,
            auth_block_secs: 300,
            tokens: Vec::new(),
            webhooks: Vec::new(),
        }
    }
}

/// A list of glob patterns, kept as written (for `check-config`) and compiled.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Globs {
    patterns: Vec<String>,
    #[serde(skip)]
    set: GlobSet,
}

impl Globs {
    /// Compiles `patterns`; each invalid one is recorded as a problem at `key[i]`.
    fn compile(key: &str, patterns: &[String], problems: &mut Problems) -> Globs {
        let mut builder = GlobSetBuilder::new();
        for (index, pattern) in patterns.iter().enumerate() {
            match Glob::new(pattern) {
                Ok(glob) => {
                    builder.add(glob);
                }
                Err(error) => problems.push(
                    format!("{key}[{index}]"),
                    format!("invalid glob {pattern:?}: {}", error.kind()),
                ),
            }
        }
        let set = builder.build().unwrap_or_else(|_| GlobSet::empty());
        Globs {
            patterns: patterns.to_vec(),
            set,
        }
    }

    pub fn empty() -> Globs {
        Globs {
            patterns: Vec::new(),
            set: GlobSet::empty(),
        }
    }

    pub fn is_match(&self, value: &str) -> bool {
        self.set.is_match(value)
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// Requests per minute and burst of one token's bucket. Serialized under the config's key
/// names, so that `check-config` output reads back as config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    #[serde(rename = "rate_limit_per_minute")]
    pub per_minute: u32,
    #[serde(rename = "rate_limit_burst")]
    pub burst: u32,
}

/// One API token.
#[derive(Debug, Clone, Serialize)]
pub struct ApiToken {
    pub name: String,
    pub token: Secret,
    /// Stubs the token may publish to and call through rproxy.
    pub stubs: Globs,
    pub scopes: BTreeSet<Scope>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// One webhook secret for one stub.
#[derive(Debug, Clone, Serialize)]
pub struct Webhook {
    pub stub: String,
    pub secret: Secret,
    /// Header carrying `sha256=<hex HMAC-SHA256 of the body>`.
    pub header: String,
}

/// The validated `[api]` section.
#[derive(Debug, Clone, Serialize)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Empty, or `/segment[/segment…]` without a trailing slash. Masked in `check-config`
    /// output because it works as a second secret.
    pub path_prefix: Secret,
    pub max_body_bytes: u64,
    pub rproxy_timeout_ms: u64,
    pub durable_stubs: Globs,
    pub readable_keys: Globs,
    pub trusted_proxies: Vec<IpNet>,
    pub max_auth_failures: u32,
    pub auth_failure_window_secs: u64,
    pub auth_block_secs: u64,
    pub tokens: Vec<ApiToken>,
    pub webhooks: Vec<Webhook>,
}

impl ApiConfig {
    pub fn rproxy_timeout(&self) -> Duration {
        Duration::from_millis(self.rproxy_timeout_ms)
    }

    pub fn auth_failure_window(&self) -> Duration {
        Duration::from_secs(self.auth_failure_window_secs)
    }

    pub fn auth_block(&self) -> Duration {
        Duration::from_secs(self.auth_block_secs)
    }

    /// Whether messages for `stub` are also appended to its capped stream `P:qs:<stub>`.
    pub fn is_durable(&self, stub: &Stub) -> bool {
        self.durable_stubs.is_match(stub.as_str())
    }

    /// Whether `key` may be read through `GET /api/redis/keys/<key>`.
    pub fn is_readable_key(&self, key: &str) -> bool {
        self.readable_keys.is_match(key)
    }

    /// Whether a request from `address` may name the client in `X-Forwarded-For`.
    pub fn is_trusted_proxy(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.trusted_proxies
            .iter()
            .any(|network| network.contains(&address))
    }
}

impl RawApiConfig {
    pub fn validate(self, problems: &mut Problems, ctx: &Context) -> ApiConfig {
        let listen = validate_listen(self.listen.as_deref(), problems, ctx);
        let path_prefix = match normalize_prefix(&self.path_prefix) {
            Ok(prefix) => prefix,
            Err(message) => {
                problems.push("api.path_prefix", message);
                String::new()
            }
        };
        if self.max_body_bytes == 0 {
            problems.push("api.max_body_bytes", "must be at least 1 (bytes)");
        }
        if self.rproxy_timeout_ms == 0 {
            problems.push("api.rproxy_timeout_ms", "must be at least 1 (milliseconds)");
        }
        for (key, value) in [
            (
                "api.auth_failure_window_secs",
                self.auth_failure_window_secs,
            ),
            ("api.auth_block_secs", self.auth_block_secs),
        ] {
            if value == 0 {
                problems.push(key, "must be at least 1 (seconds)");
            }
        }
        if self.max_auth_failures == 0 {
            problems.push("api.max_auth_failures", "must be at least 1");
        }
        let default_limit = rate_limit(
            "api",
            self.rate_limit_per_minute,
            self.rate_limit_burst,
            problems,
        );
        let tokens = validate_tokens(&self.tokens, default_limit, problems, ctx);
        let webhooks = validate_webhooks(&self.webhooks, problems, ctx);
        ApiConfig {
            listen,
            path_prefix: Secret::new(path_prefix),
            max_body_bytes: self.max_body_bytes,
            rproxy_timeout_ms: self.rproxy_timeout_ms,
            durable_stubs: Globs::compile("api.durable_stubs", &self.durable_stubs, problems),
            readable_keys: Globs::compile("api.readable_keys", &self.readable_keys, problems),
            trusted_proxies: validate_proxies(&self.trusted_proxies, problems),
            max_auth_failures: self.max_auth_failures,
            auth_failure_window_secs: self.auth_failure_window_secs,
            auth_block_secs: self.auth_block_secs,
            tokens,
            webhooks,
        }
    }
}

fn validate_listen(value: Option<&str>, problems: &mut Problems, ctx: &Context) -> SocketAddr {
    let fallback: SocketAddr = DEFAULT_LISTEN
        .parse()
        .expect("the default listen address is a valid socket address");
    let (text, origin) = match (value, ctx.env(DEFAULT_LISTEN_ENV)) {
        (Some(text), _) => (text, String::new()),
        (None, Some(text)) => (text, format!(" (the default from {DEFAULT_LISTEN_ENV})")),
        (None, None) => return fallback,
    };
    text.parse().unwrap_or_else(|_| {
        problems.push(
            "api.listen",
            format!("invalid address {text:?}{origin}: use IP:PORT such as {DEFAULT_LISTEN}"),
        );
        fallback
    })
}

/// Brings a path prefix to the form `/a/b`, or empty. Segments may hold the characters that
/// need no percent-encoding in a URL path (RFC 3986 "unreserved").
fn normalize_prefix(value: &str) -> Result<String, String> {
    let trimmed = value.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for segment in trimmed.split('/') {
        let allowed = segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~'));
        if segment.is_empty() || segment == "." || segment == ".." || !allowed {
            return Err(format!(
                "invalid path prefix segment {segment:?}: use letters, digits, '-', '.', '_' \
                 or '~', such as \"/h7Qz3k\""
            ));
        }
    }
    Ok(format!("/{trimmed}"))
}

/// A token bucket of `per_minute` with `burst`; 0 per minute means unlimited.
fn rate_limit(
    key: &str,
    per_minute: u32,
    burst: u32,
    problems: &mut Problems,
) -> Option<RateLimit> {
    if per_minute == 0 {
        return None;
    }
    if burst == 0 {
        problems.push(
            format!("{key}.rate_limit_burst"),
            "must be at least 1 (requests), or set rate_limit_per_minute = 0 for no limit",
        );
    }
    Some(RateLimit {
        per_minute,
        burst: burst.max(1),
    })
}

fn validate_tokens(
    raw: &[RawToken],
    default_limit: Option<RateLimit>,
    problems: &mut Problems,
    ctx: &Context,
) -> Vec<ApiToken> {
    let mut tokens = Vec::new();
    let mut names = HashMap::new();
    let mut values: HashMap<String, usize> = HashMap::new();
    for (index, entry) in raw.iter().enumerate() {
        let key = format!("api.tokens[{index}]");
        let name = match entry.name.as_deref().map(str::trim) {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => {
                problems.push(
                    format!("{key}.name"),
                    "missing: name the token's client, such as \"phone\"",
                );
                format!("tokens[{index}]")
            }
        };
        if let Some(first) = names.insert(name.clone(), index) {
            problems.push(
                format!("{key}.name"),
                format!("{name:?} is also the name of api.tokens[{first}]: names must be unique"),
            );
        }
        let source = SecretSource {
            inline: entry.token.as_deref(),
            file: entry.token_file.as_deref(),
            env: entry.token_env.as_deref(),
        };
        if !source.is_set() {
            problems.push(
                format!("{key}.token"),
                "missing: set token, token_file or token_env",
            );
        }
        let Some(token) = source.resolve(&format!("{key}.token"), problems, ctx) else {
            continue;
        };
        if token.expose().chars().count() < MIN_TOKEN_LEN {
            problems.push(
                format!("{key}.token"),
                format!(
                    "too short: use at least {MIN_TOKEN_LEN} characters, such as the output of \
                     `openssl rand -hex 32`"
                ),
            );
        }
        if let Some(first) = values.insert(token.expose().to_string(), index) {
            problems.push(
                format!("{key}.token"),
                format!("the same token as api.tokens[{first}]: give each client its own"),
            );
        }
        let mut scopes = BTreeSet::new();
        for (position, scope) in entry.scopes.iter().enumerate() {
            match Scope::parse(scope) {
                Some(scope) => {
                    scopes.insert(scope);
                }
                None => problems.push(
                    format!("{key}.scopes[{position}]"),
                    format!("unknown scope {scope:?}: use metrics, keys, dns or status"),
                ),
            }
        }
        let rate_limit = match (entry.rate_limit_per_minute, entry.rate_limit_burst) {
            (None, None) => default_limit,
            (per_minute, burst) => {
                let fallback = default_limit.unwrap_or(RateLimit {
                    per_minute: 0,
                    burst: 1,
                });
                rate_limit(
                    &key,
                    per_minute.unwrap_or(fallback.per_minute),
                    burst.unwrap_or(fallback.burst),
                    problems,
                )
            }
        };
        tokens.push(ApiToken {
            name,
            token,
            stubs: Globs::compile(&format!("{key}.stubs"), &entry.stubs, problems),
            scopes,
            rate_limit,
        });
    }
    tokens
}

fn validate_webhooks(raw: &[RawWebhook], problems: &mut Problems, ctx: &Context) -> Vec<Webhook> {
    let mut webhooks = Vec::new();
    for (index, entry) in raw.iter().enumerate() {
        let key = format!("api.webhooks[{index}]");
        let stub = match entry.stub.as_deref() {
            None => {
                problems.push(
                    format!("{key}.stub"),
                    "missing: name the stub to publish to",
                );
                None
            }
            Some(value) => match Stub::parse(value) {
                Ok(stub) => Some(stub.to_string()),
                Err(error) => {
                    problems.push(format!("{key}.stub"), error.to_string());
                    None
                }
            },
        };
        let header = entry
            .header
            .clone()
            .unwrap_or_else(|| DEFAULT_SIGNATURE_HEADER.to_string());
        if warp::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            problems.push(
                format!("{key}.header"),
                format!("invalid header name {header:?}"),
            );
        }
        let source = SecretSource {
            inline: entry.secret.as_deref(),
            file: entry.secret_file.as_deref(),
            env: entry.secret_env.as_deref(),
        };
        if !source.is_set() {
            problems.push(
                format!("{key}.secret"),
                "missing: set secret, secret_file or secret_env",
            );
        }
        let secret = source.resolve(&format!("{key}.secret"), problems, ctx);
        if let (Some(stub), Some(secret)) = (stub, secret) {
            webhooks.push(Webhook {
                stub,
                secret,
                header,
            });
        }
    }
    webhooks
}

fn validate_proxies(raw: &[String], problems: &mut Problems) -> Vec<IpNet> {
    let mut networks = Vec::new();
    for (index, value) in raw.iter().enumerate() {
        let parsed = value
            .parse::<IpNet>()
            .or_else(|_| value.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(network) => networks.push(network),
            Err(_) => problems.push(
                format!("api.trusted_proxies[{index}]"),
                format!(
                    "invalid address {value:?}: use an IP address or a CIDR such as 10.0.0.0/8"
                ),
            ),
        }
    }
    networks
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    fn parse_with_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect::<HashMap<_, _>>();
        Config::from_toml(text, Path::new("test.toml"), env)
    }

    fn problem_keys(text: &str) -> Vec<String> {
        let error = parse_with_env(text, &[]).unwrap_err();
        error.problems().iter().map(|p| p.key.clone()).collect()
    }

    const TOKEN: &str = "[[api.tokens]]\nname = \"phone\"\ntoken = \"0123456789abcdef\"\n";

    #[test]
    fn defaults_are_local_and_closed() {
        let config = parse_with_env("[api]\n", &[]).unwrap();
        let api = config.api.unwrap();
        assert_eq!(api.listen.to_string(), "127.0.0.1:8411");
        assert_eq!(api.path_prefix.expose(), "");
        assert_eq!(api.max_body_bytes, 1024 * 1024);
        assert!(api.tokens.is_empty());
    }

    #[test]
    fn default_listen_from_environment() {
        let env = [("ALMAGEST_API_DEFAULT_LISTEN", "0.0.0.0:8411")];
        let config = parse_with_env("[api]\n", &env).unwrap();
        assert_eq!(config.api.unwrap().listen.to_string(), "0.0.0.0:8411");
    }

    #[test]
    fn default_listen_variable_alone_leaves_api_off() {
        let env = [("ALMAGEST_API_DEFAULT_LISTEN", "0.0.0.0:8411")];
        let config = parse_with_env("", &env).unwrap();
        assert!(config.api.is_none());
    }

    #[test]
    fn listen_in_file_beats_default_variable() {
        let env = [("ALMAGEST_API_DEFAULT_LISTEN", "0.0.0.0:8411")];
        let config = parse_with_env("[api]\nlisten = \"127.0.0.1:9000\"\n", &env).unwrap();
        assert_eq!(config.api.unwrap().listen.to_string(), "127.0.0.1:9000");
    }

    #[test]
    fn path_prefix_normalized() {
        let config = parse_with_env("[api]\npath_prefix = \"h7Qz3k/\"\n", &[]).unwrap();
        assert_eq!(config.api.unwrap().path_prefix.expose(), "/h7Qz3k");
    }

    #[test]
    fn path_prefix_masked_in_check_config() {
        let config = parse_with_env("[api]\npath_prefix = \"/h7Qz3k\"\n", &[]).unwrap();
        assert!(!config.to_masked_toml().contains("h7Qz3k"));
    }

    #[test]
    fn token_masked_in_check_config() {
        let config = parse_with_env(&format!("[api]\n{TOKEN}"), &[]).unwrap();
        let printed = config.to_masked_toml();
        assert!(!printed.contains("0123456789abcdef"), "{printed}");
        assert!(printed.contains("phone"), "{printed}");
    }

    #[test]
    fn every_api_problem_named() {
        let text = r#"
            [api]
            listen = "localhost"
            path_prefix = "/a b"
            max_body_bytes = 0
            trusted_proxies = ["10.0.0.0/33"]
            durable_stubs = ["[a"]
            [[api.tokens]]
            token = "short"
            scopes = ["admin"]
            [[api.webhooks]]
            stub = "a b"
            secret = "x"
        "#;
        let keys = problem_keys(text);
        for expected in [
            "api.listen",
            "api.path_prefix",
            "api.max_body_bytes",
            "api.trusted_proxies[0]",
            "api.durable_stubs[0]",
            "api.tokens[0].name",
            "api.tokens[0].token",
            "api.tokens[0].scopes[0]",
            "api.webhooks[0].stub",
        ] {
            assert!(
                keys.contains(&expected.to_string()),
                "{expected} missing in {keys:?}"
            );
        }
    }

    #[test]
    fn duplicate_token_rejected() {
        let text = format!("[api]\n{TOKEN}{}", TOKEN.replace("phone", "laptop"));
        assert_eq!(problem_keys(&text), ["api.tokens[1].token"]);
    }

    #[test]
    fn token_without_secret_rejected() {
        let keys = problem_keys("[api]\n[[api.tokens]]\nname = \"x\"\n");
        assert_eq!(keys, ["api.tokens[0].token"]);
    }

    #[test]
    fn durable_stub_globs_match() {
        let config =
            parse_with_env("[api]\ndurable_stubs = [\"jobs.*\", \"wiki\"]\n", &[]).unwrap();
        let api = config.api.unwrap();
        let stub = |value| crate::bus::Stub::parse(value).unwrap();
        assert!(api.is_durable(&stub("jobs.high")));
        assert!(api.is_durable(&stub("wiki")));
        assert!(!api.is_durable(&stub("wiki2")));
    }

    #[test]
    fn trusted_proxies_accept_address_and_network() {
        let text = "[api]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\", \"::1\"]\n";
        let api = parse_with_env(text, &[]).unwrap().api.unwrap();
        assert!(api.is_trusted_proxy("10.1.2.3".parse().unwrap()));
        assert!(api.is_trusted_proxy("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!api.is_trusted_proxy("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn token_rate_limit_overrides_default() {
        let text = format!("[api]\nrate_limit_per_minute = 60\n{TOKEN}rate_limit_burst = 5\n");
        let api = parse_with_env(&text, &[]).unwrap().api.unwrap();
        let limit = api.tokens[0].rate_limit.unwrap();
        assert_eq!((limit.per_minute, limit.burst), (60, 5));
    }

    #[test]
    fn printed_token_limit_reads_back() {
        let text = format!("[api]\n{TOKEN}rate_limit_per_minute = 60\nrate_limit_burst = 5\n");
        let printed = parse_with_env(&text, &[]).unwrap().to_masked_toml();
        assert!(printed.contains("rate_limit_per_minute = 60"), "{printed}");
        assert!(printed.contains("rate_limit_burst = 5"), "{printed}");
        assert!(!printed.contains("[api.tokens.rate_limit]"), "{printed}");
    }

    #[test]
    fn zero_rate_limit_means_unlimited() {
        let text = format!("[api]\nrate_limit_per_minute = 0\n{TOKEN}");
        let api = parse_with_env(&text, &[]).unwrap().api.unwrap();
        assert_eq!(api.tokens[0].rate_limit, None);
    }
}

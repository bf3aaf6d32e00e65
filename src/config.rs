//! Typed configuration: one TOML file plus `ALMAGEST__SECTION__KEY` environment overrides.
//!
//! Loading has two phases. The file and the environment are merged by the `config` crate into
//! one value tree, which is deserialized into raw section structs whose fields all have
//! defaults. Every leaf of the tree is also tried on its own, so that unknown keys and wrong
//! types are all found in one pass instead of stopping at the first. Then each section
//! validates its values (ranges, URLs, secrets) into the [`Config`] the daemon runs with. Every
//! problem is reported at once, each naming its key, the value found and what is expected.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::bus::names::{validate_instance, validate_prefix};

/// Prefix of environment variables that override config keys: `ALMAGEST__BUS__PREFIX`.
pub const ENV_PREFIX: &str = "ALMAGEST";
/// Separator between the prefix, sections and keys of an override variable.
pub const ENV_SEPARATOR: &str = "__";
/// Config file used when `--config` is not given.
pub const DEFAULT_PATH: &str = "config/almagest.toml";

/// Failure to load a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}; pass --config PATH or create the file")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{}", format_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// Problems found in the file's values, empty for a read or parse failure.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

fn format_problems(path: &Path, problems: &[Problem]) -> String {
    let mut text = format!(
        "invalid config {}: {} problem{}",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for problem in problems {
        text.push_str("\n  ");
        text.push_str(&problem.to_string());
    }
    text
}

/// One invalid or unknown key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// Dotted key path, with list indices: `torrent.clients[1].url`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Collector of problems, handed to every section's validation.
#[derive(Debug, Default)]
pub struct Problems {
    items: BTreeSet<Problem>,
}

impl Problems {
    /// Records a problem with `key`; duplicates are kept once.
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.items.insert(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn into_vec(self) -> Vec<Problem> {
        self.items.into_iter().collect()
    }
}

/// Inputs of validation besides the config tree: the environment, for `*_env` secrets.
pub struct Context<'a> {
    env: &'a HashMap<String, String>,
}

impl Context<'_> {
    /// Value of an environment variable, as the daemon saw it at load time.
    pub fn env(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }
}

/// A secret value (token, password, webhook URL). It prints and serializes masked.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(********)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("********")
    }
}

/// The three ways to give a secret: inline, from a file, or from a named variable.
#[derive(Debug, Default, Clone, Copy)]
pub struct SecretSource<'a> {
    pub inline: Option<&'a str>,
    pub file: Option<&'a Path>,
    pub env: Option<&'a str>,
}

impl SecretSource<'_> {
    pub fn is_set(&self) -> bool {
        self.inline.is_some() || self.file.is_some() || self.env.is_some()
    }

    /// Resolves the secret named `key` (for example `api.tokens[0].token`), whose alternatives
    /// are `<key>_file` and `<key>_env`. Returns `None` and records a problem when more than
    /// one is set, or when the file or variable cannot be read or is empty; returns `None`
    /// silently when none is set.
    pub fn resolve(&self, key: &str, problems: &mut Problems, ctx: &Context) -> Option<Secret> {
        let given = [
            self.inline.is_some(),
            self.file.is_some(),
            self.env.is_some(),
        ];
        if given.iter().filter(|set| **set).count() > 1 {
            problems.push(
                key,
                format!("set only one of `{key}`, `{key}_file` and `{key}_env`"),
            );
            return None;
        }
        let (value, origin) = if let Some(value) = self.inline {
            (value.to_string(), key.to_string())
        } else if let Some(path) = self.file {
            match std::fs::read_to_string(path) {
                Ok(text) => (text, format!("{key}_file")),
                Err(error) => {
                    problems.push(
                        format!("{key}_file"),
                        format!("cannot read secret file {}: {error}", path.display()),
                    );
                    return None;
                }
            }
        } else if let Some(name) = self.env {
            match ctx.env(name) {
                Some(value) => (value.to_string(), format!("{key}_env")),
                None => {
                    problems.push(
                        format!("{key}_env"),
                        format!("environment variable {name} is not set"),
                    );
                    return None;
                }
            }
        } else {
            return None;
        };
        // Files written by editors and `echo` end with a newline that is never part of a token.
        let value = value.trim_end_matches(['\n', '\r']).to_string();
        if value.is_empty() {
            problems.push(origin, "the secret is empty");
            return None;
        }
        Some(Secret(value))
    }
}

/// Log output settings. `RUST_LOG` and `--log-format` take precedence.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct LogConfig {
    /// A tracing filter directive such as `info` or `almagest=debug,warn`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogFormat {
    Text,
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        match value.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("invalid value {value:?}: use \"text\" or \"json\"")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum BackendKind {
    Redis,
    Embedded,
}

impl TryFrom<String> for BackendKind {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        match value.as_str() {
            "redis" => Ok(BackendKind::Redis),
            "embedded" => Ok(BackendKind::Embedded),
            _ => Err(format!(
                "invalid value {value:?}: use \"embedded\" or \"redis\""
            )),
        }
    }
}

/// Level names that a filter directive may consist of alone.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a tracing filter. A bare word that is not a level is a valid directive for
/// tracing (it enables one target and silences the rest), but in a config file it is a typo
/// such as `warning` that would turn every log line off.
fn validate_log_level(filter: &str) -> Result<(), String> {
    let hint = "use a level (off, error, warn, info, debug, trace) or directives such as \
                \"info,almagest=debug\"";
    for directive in filter.split(',').map(str::trim) {
        let is_level = LOG_LEVELS.contains(&directive.to_ascii_lowercase().as_str());
        if !is_level && !directive.contains('=') {
            return Err(format!(
                "invalid directive {directive:?} in {filter:?}: {hint}"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(drop)
        .map_err(|error| format!("invalid filter {filter:?}: {error}; {hint}"))
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Redis => "redis",
            BackendKind::Embedded => "embedded",
        })
    }
}

/// The bus: which backend, how names are prefixed, what this process is called.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct BusConfig {
    pub backend: BackendKind,
    pub prefix: String,
    /// This process's name in actor names, pongs and the registry; empty means the hostname.
    pub instance: String,
    /// Directory of the embedded backend's store and admin socket, relative to the working
    /// directory unless absolute.
    pub data_dir: PathBuf,
    /// Approximate cap (`MAXLEN ~`) of the notification stream.
    pub notify_max_len: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            // Runs on a fresh machine without Redis; the container image overrides it.
            backend: BackendKind::Embedded,
            prefix: "almagest".into(),
            instance: String::new(),
            data_dir: PathBuf::from("data"),
            notify_max_len: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawRedisConfig {
    pub url: String,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// How long one command may take before it counts as failed.
    pub response_timeout_ms: u64,
}

impl Default for RawRedisConfig {
    fn default() -> Self {
        RawRedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            password: None,
            password_file: None,
            password_env: None,
            response_timeout_ms: 5_000,
        }
    }
}

/// Redis connection settings.
#[derive(Debug, Clone, Serialize)]
pub struct RedisConfig {
    /// The URL with any password taken out (it lives in `password`).
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    pub response_timeout_ms: u64,
}

impl RedisConfig {
    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }

    fn validate(raw: RawRedisConfig, problems: &mut Problems, ctx: &Context) -> RedisConfig {
        let source = SecretSource {
            inline: raw.password.as_deref(),
            file: raw.password_file.as_deref(),
            env: raw.password_env.as_deref(),
        };
        let mut password = source.resolve("redis.password", problems, ctx);
        let mut url = raw.url.clone();
        match url::Url::parse(&raw.url) {
            Ok(mut parsed) => {
                if !matches!(parsed.scheme(), "redis" | "rediss" | "redis+unix" | "unix") {
                    problems.push(
                        "redis.url",
                        format!(
                            "unsupported scheme {:?}: use redis://HOST:PORT, rediss://HOST:PORT \
                             or redis+unix:///PATH",
                            parsed.scheme()
                        ),
                    );
                }
                if let Some(inline) = take_url_password(&mut parsed) {
                    if password.is_some() {
                        problems.push(
                            "redis.url",
                            "the URL carries a password and redis.password is set too: keep one",
                        );
                    } else {
                        password = Some(Secret(inline));
                    }
                    url = parsed.to_string();
                }
            }
            Err(error) => problems.push(
                "redis.url",
                format!(
                    "invalid URL {:?}: {error}; expected redis://HOST:PORT or redis+unix:///PATH",
                    raw.url
                ),
            ),
        }
        if raw.response_timeout_ms == 0 {
            problems.push(
                "redis.response_timeout_ms",
                "must be at least 1 (milliseconds)",
            );
        }
        RedisConfig {
            url,
            password,
            response_timeout_ms: raw.response_timeout_ms,
        }
    }
}

/// Removes the password from a Redis URL and returns it decoded. TCP URLs carry it as
/// `redis://:PASSWORD@host`, unix socket URLs as `redis+unix:///path?pass=PASSWORD`.
fn take_url_password(url: &mut url::Url) -> Option<String> {
    let mut password = url.password().map(|inline| {
        url::form_urlencoded::parse(format!("p={inline}").as_bytes())
            .next()
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default()
    });
    if password.is_some() {
        let _ = url.set_password(None);
    }
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    if pairs.iter().any(|(name, _)| name == "pass") {
        let mut kept = Vec::new();
        for (name, value) in pairs {
            if name == "pass" {
                password = Some(value);
            } else {
                kept.push((name, value));
            }
        }
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
    }
    password
}

/// Restart policy of the services supervisor and the shutdown deadline.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct SupervisorConfig {
    /// Restarts allowed within `window_secs`, counted over all services together.
    pub max_restarts: u32,
    pub window_secs: u64,
    /// How long a graceful stop may take before the remaining actors are killed.
    pub shutdown_timeout_secs: u64,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            max_restarts: 5,
            window_secs: 60,
            shutdown_timeout_secs: 10,
        }
    }
}

impl SupervisorConfig {
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    fn validate(&self, problems: &mut Problems) {
        if self.window_secs == 0 {
            problems.push("supervisor.window_secs", "must be at least 1 (seconds)");
        }
        if self.shutdown_timeout_secs == 0 {
            problems.push(
                "supervisor.shutdown_timeout_secs",
                "must be at least 1 (seconds)",
            );
        }
    }
}

/// The whole file as written, before validation. Sections that are absent disable their
/// service.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    log: LogConfig,
    bus: BusConfig,
    redis: RawRedisConfig,
    supervisor: SupervisorConfig,
    control: Option<crate::control::config::RawControlConfig>,
    discord: Option<crate::discord::config::RawDiscordConfig>,
    torrent: Option<crate::torrent::config::RawTorrentConfig>,
    builder: Option<crate::builder::config::RawBuilderConfig>,
    api: Option<crate::api::config::RawApiConfig>,
    dnslog: Option<crate::dnslog::config::RawDnslogConfig>,
}

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The file this was loaded from, if any.
    #[serde(skip)]
    pub path: Option<PathBuf>,
    pub log: LogConfig,
    pub bus: BusConfig,
    pub redis: RedisConfig,
    pub supervisor: SupervisorConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control: Option<crate::control::config::ControlConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discord: Option<crate::discord::config::DiscordConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torrent: Option<crate::torrent::config::TorrentConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub builder: Option<crate::builder::config::BuilderConfig>,
    pub api: Option<crate::api::config::ApiConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dnslog: Option<crate::dnslog::config::DnslogConfig>,
}

impl Config {
    /// Loads `path` with overrides from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, std::env::vars().collect())
    }

    /// Loads `path` with overrides from `env` instead of the process environment.
    pub fn load_with_env(path: &Path, env: HashMap<String, String>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::from_toml(&text, path, env)?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn from_toml(
        text: &str,
        origin: &Path,
        env: HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let tree = merge_sources(text, origin, &env)?;
        let mut problems = Problems::default();
        let raw: Option<RawConfig> = deserialize_tree(tree, &mut problems);
        let ctx = Context { env: &env };
        let config = raw.map(|raw| Config::validate(raw, &mut problems, &ctx));
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid {
                path: origin.to_path_buf(),
                problems: annotate_env_origin(problems.into_vec(), &env),
            }),
        }
    }

    fn validate(raw: RawConfig, problems: &mut Problems, ctx: &Context) -> Config {
        let mut bus = raw.bus;
        if bus.instance.is_empty() {
            bus.instance = default_instance();
        }
        if let Err(message) = validate_prefix(&bus.prefix) {
            problems.push("bus.prefix", message);
        }
        if let Err(message) = validate_instance(&bus.instance) {
            problems.push("bus.instance", message);
        }
        if bus.data_dir.as_os_str().is_empty() {
            problems.push(
                "bus.data_dir",
                "must not be empty: name the embedded backend's directory, such as \"data\"",
            );
        }
        if bus.notify_max_len == 0 {
            problems.push("bus.notify_max_len", "must be at least 1 (entries)");
        }
        if let Err(message) = validate_log_level(&raw.log.level) {
            problems.push("log.level", message);
        }
        raw.supervisor.validate(problems);
        let redis = RedisConfig::validate(raw.redis, problems, ctx);
        let control = raw.control.map(|section| section.validate(problems, ctx));
        let discord = raw.discord.map(|section| section.validate(problems, ctx));
        let torrent = raw.torrent.map(|section| section.validate(problems, ctx));
        let builder = raw.builder.map(|section| section.validate(problems, ctx));
        let api = raw.api.map(|section| section.validate(problems, ctx));
        let dnslog = raw.dnslog.and_then(|section| {
            section
                .validate()
                .map_err(|found| {
                    for problem in found {
                        problems.push(problem.key, problem.message);
                    }
                })
                .ok()
        });
        Config {
            path: None,
            log: raw.log,
            bus,
            redis,
            supervisor: raw.supervisor,
            control,
            discord,
            torrent,
            builder,
            api,
            dnslog,
        }
    }

    /// Names of the services this config enables, in start order.
    pub fn enabled_services(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.control.is_some() {
            names.push(crate::control::NAME);
        }
        if self.discord.is_some() {
            names.push(crate::discord::NAME);
        }
        if self.torrent.is_some() {
            names.push(crate::torrent::NAME);
        }
        if self.builder.is_some() {
            names.push(crate::builder::NAME);
        }
        if self.api.is_some() {
            names.push(crate::api::NAME);
        }
        if self.dnslog.is_some() {
            names.push(crate::dnslog::NAME);
        }
        names
    }

    /// The effective config as TOML, with every secret masked.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|error| format!("# cannot print the config: {error}\n"))
    }
}

/// The hostname, or `almagest` when it cannot be read. Pod manifests set `bus.instance`
/// because a pod's hostname changes on every redeploy.
fn default_instance() -> String {
    let name = gethostname::gethostname().to_string_lossy().into_owned();
    if name.is_empty() {
        "almagest".to_string()
    } else {
        name
    }
}

/// Merges the TOML text and the `ALMAGEST__…` variables of `env` into one tree.
fn merge_sources(
    text: &str,
    origin: &Path,
    env: &HashMap<String, String>,
) -> Result<config::Value, ConfigError> {
    let overrides: config::Map<String, String> = env
        .iter()
        .filter(|(name, _)| name.starts_with(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let merged = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR)
                .source(Some(overrides)),
        )
        .build()
        .map_err(|error| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: error.to_string(),
        })?;
    merged
        .try_deserialize::<config::Value>()
        .map_err(|error| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: error.to_string(),
        })
}

/// Deserializes `tree` into `T`, recording every unknown key and every type error.
///
/// serde stops at the first error, so each leaf of the tree is first deserialized alone in a
/// copy of the tree that contains nothing else. This works because every raw config field
/// has a default: a tree with a single leaf is complete. List entries before the leaf are
/// padded with empty tables so that reported indices match the file. Leaves with a wrong
/// type are then left out, so that the rest can still be deserialized and validated.
fn deserialize_tree<T: DeserializeOwned>(
    tree: config::Value,
    problems: &mut Problems,
) -> Option<T> {
    let mut leaves = Vec::new();
    collect_leaves(&tree, &mut Vec::new(), &mut leaves);
    let mut tree = tree;
    for (path, leaf) in leaves {
        let single = rebuild_single(&path, leaf);
        if try_deserialize::<T>(single, problems).is_none() {
            remove_leaf(&mut tree, &path);
        }
    }
    try_deserialize::<T>(tree, problems)
}

/// Replaces the leaf at `path` with an empty table, which every field's default accepts.
fn remove_leaf(tree: &mut config::Value, path: &[Step]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let child = match (&mut tree.kind, first) {
        (config::ValueKind::Table(map), Step::Key(key)) => {
            if rest.is_empty() {
                map.remove(key);
                return;
            }
            map.get_mut(key)
        }
        (config::ValueKind::Array(items), Step::Index(index)) => {
            if rest.is_empty() {
                if let Some(item) = items.get_mut(*index) {
                    *item = config::Value::new(None, config::ValueKind::Table(config::Map::new()));
                }
                return;
            }
            items.get_mut(*index)
        }
        _ => None,
    };
    if let Some(child) = child {
        remove_leaf(child, rest);
    }
}

#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

fn collect_leaves(
    value: &config::Value,
    path: &mut Vec<Step>,
    out: &mut Vec<(Vec<Step>, config::Value)>,
) {
    match &value.kind {
        config::ValueKind::Table(map) if !map.is_empty() => {
            for (key, child) in map {
                path.push(Step::Key(key.clone()));
                collect_leaves(child, path, out);
                path.pop();
            }
        }
        config::ValueKind::Array(items) if items.iter().any(is_table) => {
            for (index, child) in items.iter().enumerate() {
                path.push(Step::Index(index));
                collect_leaves(child, path, out);
                path.pop();
            }
        }
        _ => out.push((path.clone(), value.clone())),
    }
}

fn is_table(value: &config::Value) -> bool {
    matches!(value.kind, config::ValueKind::Table(_))
}

fn rebuild_single(path: &[Step], leaf: config::Value) -> config::Value {
    let Some((first, rest)) = path.split_first() else {
        return leaf;
    };
    let inner = rebuild_single(rest, leaf);
    match first {
        Step::Key(key) => {
            let mut map = config::Map::new();
            map.insert(key.clone(), inner);
            config::Value::new(None, config::ValueKind::Table(map))
        }
        Step::Index(index) => {
            let empty = config::Value::new(None, config::ValueKind::Table(config::Map::new()));
            let mut items = vec![empty; *index];
            items.push(inner);
            config::Value::new(None, config::ValueKind::Array(items))
        }
    }
}

fn try_deserialize<T: DeserializeOwned>(tree: config::Value, problems: &mut Problems) -> Option<T> {
    let mut unknown = Vec::new();
    // serde_ignored writes `?` for each `Option` on the way; the file has no such segment.
    let mut record = |path: serde_ignored::Path| unknown.push(path.to_string().replace(".?", ""));
    let ignored = serde_ignored::Deserializer::new(tree, &mut record);
    let result = serde_path_to_error::deserialize::<_, T>(ignored);
    for key in unknown {
        problems.push(key, "unknown key: check its spelling and section");
    }
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            let key = error.path().to_string();
            problems.push(key, clean_serde_message(&error.inner().to_string()));
            None
        }
    }
}

/// Drops the origin suffix that the `config` crate appends, because the key is already named.
fn clean_serde_message(message: &str) -> String {
    let message = match message.find(" for key `") {
        Some(at) => &message[..at],
        None => message,
    };
    match message.find(" in the environment") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

/// Appends the environment variable to problems whose key was set by one.
fn annotate_env_origin(problems: Vec<Problem>, env: &HashMap<String, String>) -> Vec<Problem> {
    let by_key: BTreeMap<String, &String> = env
        .keys()
        .filter_map(|name| {
            let rest = name.strip_prefix(&format!("{ENV_PREFIX}{ENV_SEPARATOR}"))?;
            Some((rest.to_lowercase().replace(ENV_SEPARATOR, "."), name))
        })
        .collect();
    problems
        .into_iter()
        .map(|mut problem| {
            if let Some(name) = by_key.get(&problem.key) {
                problem.message.push_str(&format!(" (set by {name})"));
            }
            problem
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"), HashMap::new())
    }

    fn problem_keys(text: &str, env: &[(&str, &str)]) -> Vec<String> {
        let env = env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let error = Config::from_toml(text, Path::new("test.toml"), env).unwrap_err();
        error.problems().iter().map(|p| p.key.clone()).collect()
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.bus.prefix, "almagest");
        assert_eq!(config.bus.backend, BackendKind::Embedded);
        assert_eq!(config.supervisor.max_restarts, 5);
        assert!(config.control.is_none());
        assert!(!config.bus.instance.is_empty());
    }

    #[test]
    fn every_problem_reported_at_once() {
        let text = r#"
            [bus]
            prefx = "x"
            [supervisor]
            max_restarts = "many"
            window_secs = -1
            [redis]
            url = "http://example"
            [control]
            ping_interval_secs = "often"
            colour = "blue"
        "#;
        let keys = problem_keys(text, &[]);
        for expected in [
            "bus.prefx",
            "supervisor.max_restarts",
            "supervisor.window_secs",
            "control.ping_interval_secs",
            "control.colour",
        ] {
            assert!(
                keys.contains(&expected.to_string()),
                "{expected} missing in {keys:?}"
            );
        }
    }

    #[test]
    fn semantic_problems_after_types() {
        let keys = problem_keys(
            "[redis]\nurl = \"http://h\"\n[bus]\nprefix = \"a b\"\n[supervisor]\nwindow_secs = 0",
            &[],
        );
        assert_eq!(keys, ["bus.prefix", "redis.url", "supervisor.window_secs"]);
    }

    #[test]
    fn environment_overrides_scalar() {
        let env = HashMap::from([
            (
                "ALMAGEST__SUPERVISOR__MAX_RESTARTS".to_string(),
                "9".to_string(),
            ),
            ("ALMAGEST__BUS__PREFIX".to_string(), "home".to_string()),
        ]);
        let config = Config::from_toml("", Path::new("t.toml"), env).unwrap();
        assert_eq!(config.supervisor.max_restarts, 9);
        assert_eq!(config.bus.prefix, "home");
    }

    #[test]
    fn environment_problem_names_variable() {
        let env = HashMap::from([(
            "ALMAGEST__SUPERVISOR__MAX_RESTARTS".to_string(),
            "lots".to_string(),
        )]);
        let error = Config::from_toml("", Path::new("t.toml"), env).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("ALMAGEST__SUPERVISOR__MAX_RESTARTS"),
            "{text}"
        );
    }

    #[test]
    fn secret_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "hunter2\n").unwrap();
        let text = format!("[redis]\npassword_file = {:?}", file.display().to_string());
        let config = parse(&text).unwrap();
        assert_eq!(config.redis.password.unwrap().expose(), "hunter2");

        let env = HashMap::from([("PW".to_string(), "s3cret".to_string())]);
        let config =
            Config::from_toml("[redis]\npassword_env = \"PW\"", Path::new("t"), env).unwrap();
        assert_eq!(config.redis.password.unwrap().expose(), "s3cret");
    }

    #[test]
    fn two_secret_sources_rejected() {
        let env = HashMap::from([("PW".to_string(), "x".to_string())]);
        let error = Config::from_toml(
            "[redis]\npassword = \"a\"\npassword_env = \"PW\"",
            Path::new("t"),
            env,
        )
        .unwrap_err();
        assert_eq!(error.problems()[0].key, "redis.password");
    }

    #[test]
    fn url_password_moved_and_masked() {
        let config = parse("[redis]\nurl = \"redis://:p%40ss@127.0.0.1:7000/2\"").unwrap();
        assert_eq!(config.redis.password.as_ref().unwrap().expose(), "p@ss");
        assert!(!config.redis.url.contains("p%40ss"));
        let printed = config.to_masked_toml();
        assert!(!printed.contains("p@ss"), "{printed}");
        assert!(!printed.contains("p%40ss"), "{printed}");
    }

    #[test]
    fn log_level_typo_rejected() {
        for level in ["verbose", "warning", "info,almagest"] {
            let error = parse(&format!("[log]\nlevel = \"{level}\"")).unwrap_err();
            let text = error.to_string();
            assert!(text.contains("log.level"), "{level}: {text}");
            assert!(text.contains("use a level"), "{level}: {text}");
        }
        for level in [
            "debug",
            "WARN",
            "info,almagest=debug",
            "almagest[span]=trace",
        ] {
            let result = parse(&format!("[log]\nlevel = \"{level}\""));
            assert!(result.is_ok(), "{level}: {:?}", result.err());
        }
    }

    #[test]
    fn backend_typo_names_choices() {
        let error = parse("[bus]\nbackend = \"redsi\"").unwrap_err().to_string();
        assert!(error.contains("bus.backend"), "{error}");
        assert!(error.contains("use \"embedded\" or \"redis\""), "{error}");
        assert!(!error.contains("BackendKind"), "{error}");
        let env = HashMap::from([("ALMAGEST__LOG__FORMAT".to_string(), "xml".to_string())]);
        let error = Config::from_toml("", Path::new("test.toml"), env)
            .unwrap_err()
            .to_string();
        assert!(error.contains("log.format"), "{error}");
        assert!(error.contains("use \"text\" or \"json\""), "{error}");
    }

    #[test]
    fn unix_url_password_moved() {
        let config =
            parse("[redis]\nurl = \"redis+unix:///run/r.sock?db=2&pass=s%26cret\"").unwrap();
        assert_eq!(config.redis.password.as_ref().unwrap().expose(), "s&cret");
        assert_eq!(config.redis.url, "redis+unix:///run/r.sock?db=2");
    }

    #[test]
    fn secret_debug_is_masked() {
        let secret = Secret::new("abc");
        assert_eq!(format!("{secret:?}"), "Secret(********)");
    }
}

//! The `[dnslog]` config section: the raw form read from TOML, and its validation into
//! [`DnslogConfig`].
//!
//! ```toml
//! [dnslog]
//! sources = [
//!     { file = "/var/log/coredns/query.log" },
//!     { command = ["kubectl", "logs", "-f", "--timestamps", "--since=10m",
//!                  "-n", "kube-system", "deploy/coredns"], env = ["KUBECONFIG"] },
//! ]
//! retention_days = 14
//!
//! [[dnslog.devices]]
//! name = "sam-phone"
//! owner = "Sam"
//! ip = "192.168.1.42"
//! ipv6_prefix = "2001:db8:1:2::/64"
//! ignore_domains = ["icloud.com", "push.apple.com"]
//! ```

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::presence::Device;

/// Days a day's counts are kept after the day ends, unless configured.
///
/// Two weeks cover the previous week in full, whichever day one looks. The cost is an
/// estimate: a household of 20 devices querying 3,000 distinct names a day stores about
/// 40,000 sorted-set members a day, some 5 MB in Redis, so about 70 MB in all.
pub const DEFAULT_RETENTION_DAYS: u32 = 14;

/// Quiet time after which a device counts as away, unless configured: 15 minutes, like
/// Home Assistant's `consider_home`, because phones go quiet for minutes while in use.
pub const DEFAULT_AWAY_AFTER_SECS: u64 = 900;

/// Members kept per sorted set and day, unless configured; the lowest counts are dropped
/// beyond it. The API shows the top entries, and 10,000 bounds a day's set at about 1 MB
/// even when a client queries random names.
pub const DEFAULT_MAX_NAMES_PER_DAY: usize = 10_000;

const MAX_RETENTION_DAYS: u32 = 3_650;
const MAX_AWAY_AFTER_SECS: u64 = 7 * 86_400;

/// The `[dnslog]` section as written. Every field may be absent; [`validate`] reports what
/// is missing or wrong.
///
/// [`validate`]: RawDnslogConfig::validate
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawDnslogConfig {
    pub sources: Vec<RawSource>,
    pub devices: Vec<RawDevice>,
    pub retention_days: Option<u32>,
    pub max_names_per_day: Option<usize>,
    pub route: Option<String>,
}

/// One entry of `dnslog.sources`: exactly one of `file`, `stdin = true` or `command`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawSource {
    pub file: Option<String>,
    pub stdin: Option<bool>,
    pub command: Option<Vec<String>>,
    /// For a command: names of variables passed on from Almagest's environment.
    pub env: Option<Vec<String>>,
    /// For a file never read before: `end` (the default) or `beginning`.
    pub start_at: Option<String>,
    /// The name the source's position is stored under; defaults to its path or command.
    pub name: Option<String>,
}

/// One `[[dnslog.devices]]` entry.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawDevice {
    pub name: Option<String>,
    pub owner: Option<String>,
    pub ip: Option<OneOrMany>,
    pub cidr: Option<OneOrMany>,
    pub ipv6_prefix: Option<OneOrMany>,
    pub away_after_secs: Option<u64>,
    pub ignore_domains: Option<Vec<String>>,
    pub notify_arrivals: Option<bool>,
}

/// A string or a list of strings.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn as_slice(&self) -> &[String] {
        match self {
            OneOrMany::One(one) => std::slice::from_ref(one),
            OneOrMany::Many(many) => many,
        }
    }
}

/// The validated `[dnslog]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DnslogConfig {
    pub sources: Vec<SourceConfig>,
    pub devices: Vec<Device>,
    pub retention_days: u32,
    pub max_names_per_day: usize,
    /// Notification route of arrival notices (see `discord.routes`); the default channel
    /// when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceConfig {
    /// Unique among the sources; the key its position is stored under.
    pub name: String,
    pub kind: SourceKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    File { path: PathBuf, start_at: StartAt },
    Stdin,
    Command { argv: Vec<String>, env: Vec<String> },
}

/// The place a file never read before is started from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    End,
    Beginning,
}

/// One problem in the section, with the full key it is about.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigProblem {
    /// The full key, such as `dnslog.devices[2].cidr`.
    pub key: String,
    /// The problem, with the value and the expected form.
    pub message: String,
}

/// Collects problems while validating.
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            key: key.into(),
            message: message.into(),
        });
    }
}

impl RawDnslogConfig {
    /// Checks every key and returns the typed section, or every problem found.
    pub fn validate(&self) -> Result<DnslogConfig, Vec<ConfigProblem>> {
        let mut problems = Problems(Vec::new());
        let sources = validate_sources(&self.sources, &mut problems);
        let devices = validate_devices(&self.devices, &mut problems);

        let retention_days = self.retention_days.unwrap_or(DEFAULT_RETENTION_DAYS);
        if retention_days == 0 || retention_days > MAX_RETENTION_DAYS {
            problems.push(
                "dnslog.retention_days",
                format!("invalid value {retention_days}: expected 1 to {MAX_RETENTION_DAYS} days"),
            );
        }
        let max_names_per_day = self.max_names_per_day.unwrap_or(DEFAULT_MAX_NAMES_PER_DAY);
        if max_names_per_day == 0 {
            problems.push(
                "dnslog.max_names_per_day",
                "invalid value 0: expected a positive number of names",
            );
        }

        let route = self.route.clone();
        if route.as_ref().is_some_and(|route| route.trim().is_empty()) {
            problems.push(
                "dnslog.route",
                "empty route: remove the key to use the default channel, or name a route of `discord.routes`",
            );
        }

        if !problems.0.is_empty() {
            return Err(problems.0);
        }
        Ok(DnslogConfig {
            sources,
            devices,
            retention_days,
            max_names_per_day,
            route,
        })
    }
}

fn validate_sources(raw: &[RawSource], problems: &mut Problems) -> Vec<SourceConfig> {
    let mut sources = Vec::new();
    let mut names = HashSet::new();
    let mut stdin_key: Option<String> = None;
    for (index, source) in raw.iter().enumerate() {
        let key = format!("dnslog.sources[{index}]");
        let Some(kind) = validate_source_kind(source, &key, problems) else {
            continue;
        };
        if kind == SourceKind::Stdin {
            if let Some(first) = &stdin_key {
                problems.push(&key, format!("standard input is already read by {first}"));
            }
            stdin_key.get_or_insert(key.clone());
        }
        let name = source
            .name
            .clone()
            .unwrap_or_else(|| default_source_name(&kind));
        if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
            problems.push(
                format!("{key}.name"),
                format!("invalid name {name:?}: expected 1 to 256 printable characters"),
            );
        } else if !names.insert(name.clone()) {
            problems.push(
                format!("{key}.name"),
                format!("duplicate source name {name:?}: give each source a different `name`"),
            );
        }
        sources.push(SourceConfig { name, kind });
    }
    sources
}

fn validate_source_kind(
    source: &RawSource,
    key: &str,
    problems: &mut Problems,
) -> Option<SourceKind> {
    let stdin = source.stdin.unwrap_or(false);
    let chosen = [source.file.is_some(), stdin, source.command.is_some()];
    if chosen.iter().filter(|&&set| set).count() != 1 {
        problems.push(
            key,
            "expected exactly one of `file = \"PATH\"`, `stdin = true` or `command = [PROGRAM, ARGS…]`",
        );
        return None;
    }
    if source.env.is_some() && source.command.is_none() {
        problems.push(format!("{key}.env"), "only a `command` source takes `env`");
    }
    if source.start_at.is_some() && source.file.is_none() {
        problems.push(
            format!("{key}.start_at"),
            "only a `file` source takes `start_at`",
        );
    }

    if let Some(path) = &source.file {
        let start_at = match source.start_at.as_deref() {
            None | Some("end") => StartAt::End,
            Some("beginning") => StartAt::Beginning,
            Some(other) => {
                problems.push(
                    format!("{key}.start_at"),
                    format!("invalid value {other:?}: expected \"end\" or \"beginning\""),
                );
                StartAt::End
            }
        };
        if path.is_empty() {
            problems.push(
                format!("{key}.file"),
                "empty path: expected the query log's path",
            );
        }
        return Some(SourceKind::File {
            path: PathBuf::from(path),
            start_at,
        });
    }
    if stdin {
        return Some(SourceKind::Stdin);
    }

    let argv = source.command.clone().unwrap_or_default();
    if argv.first().is_none_or(|program| program.is_empty()) {
        problems.push(
            format!("{key}.command"),
            "empty command: expected [PROGRAM, ARGS…], such as [\"kubectl\", \"logs\", \"-f\", …]",
        );
    }
    let env = source.env.clone().unwrap_or_default();
    for (i, name) in env.iter().enumerate() {
        if let Some(message) = check_env_name(name) {
            problems.push(format!("{key}.env[{i}]"), message);
        }
    }
    Some(SourceKind::Command { argv, env })
}

/// Returns why a variable name cannot be passed to a command, if it cannot.
fn check_env_name(name: &str) -> Option<String> {
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Some(format!(
            "invalid variable name {name:?}: expected letters, digits and _, such as KUBECONFIG"
        ));
    }
    if name.to_ascii_uppercase().starts_with("ALMAGEST") {
        return Some(format!(
            "variable {name:?} is Almagest's own configuration and may hold secrets: it is never passed to commands"
        ));
    }
    None
}

fn default_source_name(kind: &SourceKind) -> String {
    match kind {
        SourceKind::File { path, .. } => format!("file:{}", path.display()),
        SourceKind::Stdin => "stdin".to_owned(),
        SourceKind::Command { argv, .. } => format!("command:{}", argv.join(" ")),
    }
}

fn validate_devices(raw: &[RawDevice], problems: &mut Problems) -> Vec<Device> {
    let mut devices = Vec::new();
    let mut names = HashSet::new();
    for (index, device) in raw.iter().enumerate() {
        let key = format!("dnslog.devices[{index}]");
        let name = device.name.clone().unwrap_or_default();
        if name.trim().is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            problems.push(
                format!("{key}.name"),
                format!("invalid name {name:?}: expected 1 to 64 printable characters, such as \"sam-phone\""),
            );
        } else if !names.insert(name.clone()) {
            problems.push(
                format!("{key}.name"),
                format!("duplicate device name {name:?}"),
            );
        }

        let networks = validate_networks(device, &key, problems);
        let away_after_secs = device.away_after_secs.unwrap_or(DEFAULT_AWAY_AFTER_SECS);
        if away_after_secs == 0 || away_after_secs > MAX_AWAY_AFTER_SECS {
            problems.push(
                format!("{key}.away_after_secs"),
                format!(
                    "invalid value {away_after_secs}: expected 1 to {MAX_AWAY_AFTER_SECS} seconds"
                ),
            );
        }
        let ignore_domains = validate_domains(device, &key, problems);

        devices.push(Device {
            name,
            owner: device
                .owner
                .clone()
                .filter(|owner| !owner.trim().is_empty()),
            networks,
            away_after_secs,
            ignore_domains,
            notify_arrivals: device.notify_arrivals.unwrap_or(true),
        });
    }
    devices
}

fn validate_networks(device: &RawDevice, key: &str, problems: &mut Problems) -> Vec<IpNet> {
    let mut networks = Vec::new();
    let lists = [
        ("ip", &device.ip),
        ("cidr", &device.cidr),
        ("ipv6_prefix", &device.ipv6_prefix),
    ];
    for (field, values) in lists {
        let Some(values) = values else {
            continue;
        };
        let many = matches!(values, OneOrMany::Many(_));
        for (i, value) in values.as_slice().iter().enumerate() {
            let value_key = if many {
                format!("{key}.{field}[{i}]")
            } else {
                format!("{key}.{field}")
            };
            match parse_network(field, value.trim()) {
                Ok(net) => networks.push(net),
                Err(message) => problems.push(value_key, message),
            }
        }
    }
    if networks.is_empty()
        && [&device.ip, &device.cidr, &device.ipv6_prefix]
            .iter()
            .all(|v| v.is_none())
    {
        problems.push(
            key,
            "missing address: set `ip`, `cidr` or `ipv6_prefix` (one or more) so queries can be matched to the device",
        );
    }
    networks
}

fn parse_network(field: &str, value: &str) -> Result<IpNet, String> {
    match field {
        "ip" => {
            let ip: IpAddr = value.parse().map_err(|_| {
                format!("invalid address {value:?}: expected an IPv4 or IPv6 address such as 192.168.1.42")
            })?;
            Ok(IpNet::from(ip.to_canonical()))
        }
        "cidr" => parse_prefix(value, "such as 192.168.1.0/24"),
        _ => {
            let net = parse_prefix(value, "such as 2001:db8:1:2::/64")?;
            if !matches!(net, IpNet::V6(_)) {
                return Err(format!(
                    "invalid IPv6 prefix {value:?}: expected an IPv6 network such as 2001:db8:1:2::/64"
                ));
            }
            Ok(net)
        }
    }
}

fn parse_prefix(value: &str, example: &str) -> Result<IpNet, String> {
    let net: IpNet = value.parse().map_err(|_| {
        format!("invalid network {value:?}: expected an address and prefix length {example}")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "network {value:?} has host bits set: did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

fn validate_domains(device: &RawDevice, key: &str, problems: &mut Problems) -> Vec<String> {
    let mut domains = Vec::new();
    for (i, domain) in device.ignore_domains.iter().flatten().enumerate() {
        let trimmed = domain.trim().trim_end_matches('.');
        let valid = !trimmed.is_empty()
            && trimmed
                .split('.')
                .all(|label| !label.is_empty() && label.len() <= 63)
            && !trimmed.contains(|c: char| c.is_whitespace() || c.is_control() || c == '"');
        if !valid {
            problems.push(
                format!("{key}.ignore_domains[{i}]"),
                format!("invalid domain {domain:?}: expected a name such as \"icloud.com\""),
            );
            continue;
        }
        domains.push(format!("{}.", trimmed.to_ascii_lowercase()));
    }
    domains
}

#[cfg(test)]
mod tests;

//! The `[builder]` config section: raw serde structs as written in TOML, and `validate()`,
//! which turns them into [`BuilderConfig`] and records every problem at once, each naming its
//! full key (`builder.targets[0].asset_pattern`), the bad value and the expected form.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{GlobBuilder, GlobMatcher};
use regex::Regex;
use semver::VersionReq;
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

use crate::config::{Context, Problems, Secret, SecretSource};

/// GitHub's REST API. Gitea and Forgejo serve the same routes under `https://HOST/api/v1`.
pub const DEFAULT_API_BASE: &str = "https://api.github.com";

/// The directory in which Kubernetes mounts a pod's service-account token and cluster CA.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

const DEFAULT_KEEP_RELEASES: u64 = 3;
const MAX_KEEP_RELEASES: u64 = 100;
/// Five minutes keeps one target at 12 requests an hour: unauthenticated GitHub clients get
/// 60 an hour per address, and a 304 counts against that limit without a token.
const DEFAULT_POLL_INTERVAL_SECS: u64 = 300;
const DEFAULT_COMMAND_TIMEOUT_SECS: u64 = 600;
/// 512 MiB: far above a site or a wiki dump, small enough that a wrong asset cannot fill
/// the volume.
const DEFAULT_MAX_ASSET_BYTES: u64 = 512 * 1024 * 1024;
/// 2 GiB of unpacked content, which stops a compression bomb long before the disk is full.
const DEFAULT_MAX_UNPACKED_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Variables a command inherits from the daemon when set. Everything else is cleared, so
/// `ALMAGEST__*` secrets and the daemon's other variables never reach a command.
pub const INHERITED_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
];

/// The `[builder]` section as written.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawBuilderConfig {
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    #[serde(default)]
    pub kubernetes: RawKubernetes,
}

/// One `[[builder.targets]]` entry as written.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawTarget {
    pub name: Option<String>,
    /// `owner/name`.
    pub repo: Option<String>,
    pub api_base: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    /// Glob matched against the whole asset name, such as `site-*.tar.gz`.
    pub asset_pattern: Option<String>,
    pub volume: Option<PathBuf>,
    pub command: Option<Vec<String>>,
    pub command_timeout_secs: Option<u64>,
    /// Extra variable names the command inherits besides [`INHERITED_ENV`].
    #[serde(default)]
    pub command_env: Vec<String>,
    /// `namespace/name` of a Deployment to restart after a build.
    pub restart_deployment: Option<String>,
    pub keep_releases: Option<u64>,
    #[serde(default)]
    pub include_prereleases: bool,
    #[serde(default)]
    pub build_on_start: bool,
    pub poll_interval_secs: Option<u64>,
    pub tag_pattern: Option<String>,
    pub version_req: Option<String>,
    pub max_asset_bytes: Option<u64>,
    pub max_unpacked_bytes: Option<u64>,
}

/// `[builder.kubernetes]`: where `restart_deployment` sends its request. Every key defaults to
/// the in-cluster values, so a pod with a service account needs none of them.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawKubernetes {
    /// Default: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    pub api_base: Option<String>,
    pub token_file: Option<PathBuf>,
    /// CA bundle for an `https` API server. Default: the service account's `ca.crt`.
    pub ca_file: Option<PathBuf>,
}

/// The validated `[builder]` section. It serializes as written, with the token masked.
#[derive(Debug, Clone, Serialize)]
pub struct BuilderConfig {
    pub targets: Vec<TargetConfig>,
    pub kubernetes: KubernetesConfig,
}

/// `owner/name` of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    pub owner: String,
    pub name: String,
}

impl fmt::Display for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// `namespace/name` of a Deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for Deployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The asset glob, with its source text kept for messages.
#[derive(Debug, Clone)]
pub struct AssetPattern {
    pub text: String,
    pub matcher: GlobMatcher,
}

impl AssetPattern {
    pub fn is_match(&self, asset_name: &str) -> bool {
        self.matcher.is_match(asset_name)
    }
}

impl fmt::Display for AssetPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One validated target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetConfig {
    pub name: String,
    #[serde(serialize_with = "as_text")]
    pub repo: Repo,
    /// Without a trailing slash.
    #[serde(serialize_with = "as_text")]
    pub api_base: Url,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Set exactly when `volume` is set.
    #[serde(
        serialize_with = "option_as_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub asset_pattern: Option<AssetPattern>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<PathBuf>,
    /// Non-empty when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    pub command_timeout_secs: u64,
    pub command_env: Vec<String>,
    #[serde(
        serialize_with = "option_as_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub restart_deployment: Option<Deployment>,
    pub keep_releases: usize,
    pub include_prereleases: bool,
    pub build_on_start: bool,
    pub poll_interval_secs: u64,
    #[serde(
        serialize_with = "option_as_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub tag_pattern: Option<Regex>,
    #[serde(
        serialize_with = "option_as_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub version_req: Option<VersionReq>,
    pub max_asset_bytes: u64,
    pub max_unpacked_bytes: u64,
}

impl TargetConfig {
    pub fn command_timeout(&self) -> Duration {
        Duration::from_secs(self.command_timeout_secs)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.poll_interval_secs)
    }
}

/// The Kubernetes API address and credentials.
#[derive(Debug, Clone, Serialize)]
pub struct KubernetesConfig {
    /// `None` outside a cluster when no `api_base` is configured; a restart then fails with
    /// that reason.
    #[serde(
        serialize_with = "option_as_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub api_base: Option<Url>,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
}

fn as_text<S: Serializer, T: fmt::Display>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn option_as_text<S: Serializer, T: fmt::Display>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.collect_str(value),
        None => serializer.serialize_none(),
    }
}

impl RawBuilderConfig {
    /// Validates the section, recording every problem rather than the first. The result is
    /// only used when no problem was recorded.
    pub fn validate(&self, problems: &mut Problems, ctx: &Context) -> BuilderConfig {
        let mut targets = Vec::new();
        for (index, raw) in self.targets.iter().enumerate() {
            let key = format!("builder.targets[{index}]");
            if let Some(target) = raw.validate(&key, problems, ctx) {
                targets.push(target);
            }
        }
        check_unique_targets(&targets, problems);
        BuilderConfig {
            targets,
            kubernetes: self.kubernetes.validate(problems, ctx),
        }
    }
}

fn check_unique_targets(targets: &[TargetConfig], problems: &mut Problems) {
    for (index, target) in targets.iter().enumerate() {
        let earlier = &targets[..index];
        if earlier.iter().any(|other| other.name == target.name) {
            problems.push(
                format!("builder.targets[{index}].name"),
                format!(
                    "{:?} is used by an earlier target: names must \
                 be unique",
                    target.name
                ),
            );
        }
        let Some(volume) = &target.volume else {
            continue;
        };
        if earlier
            .iter()
            .any(|other| other.volume.as_ref() == Some(volume))
        {
            problems.push(
                format!("builder.targets[{index}].volume"),
                format!(
                    "{} is used by an earlier target: each \
                 target needs its own volume",
                    volume.display()
                ),
            );
        }
    }
}

impl RawTarget {
    /// Returns `None` when a key that identifies the target is invalid.
    fn validate(&self, key: &str, problems: &mut Problems, ctx: &Context) -> Option<TargetConfig> {
        let name = self.validate_name(key, problems);
        let repo = self.validate_repo(key, problems);
        let api_base = validate_url(
            &format!("{key}.api_base"),
            self.api_base.as_deref().unwrap_or(DEFAULT_API_BASE),
            problems,
        );
        let token = SecretSource {
            inline: self.token.as_deref(),
            file: self.token_file.as_deref(),
            env: self.token_env.as_deref(),
        }
        .resolve(&format!("{key}.token"), problems, ctx);

        let (asset_pattern, volume) = self.validate_volume(key, problems);
        let command = self.validate_command(key, problems);
        let command_env = self.validate_command_env(key, problems);
        let restart_deployment = self.validate_deployment(key, problems);
        if asset_pattern.is_none() && command.is_none() && restart_deployment.is_none() {
            problems.push(
                key,
                "nothing to do: set asset_pattern and volume, command, or \
                 restart_deployment",
            );
        }

        let keep_releases = self.keep_releases.unwrap_or(DEFAULT_KEEP_RELEASES);
        if !(1..=MAX_KEEP_RELEASES).contains(&keep_releases) {
            problems.push(
                format!("{key}.keep_releases"),
                format!(
                    "{keep_releases} is out of range: expected 1 to \
                 {MAX_KEEP_RELEASES}"
                ),
            );
        }

        let poll_interval_secs = positive(
            &format!("{key}.poll_interval_secs"),
            self.poll_interval_secs
                .unwrap_or(DEFAULT_POLL_INTERVAL_SECS),
            problems,
        );
        let command_timeout_secs = positive(
            &format!("{key}.command_timeout_secs"),
            self.command_timeout_secs
                .unwrap_or(DEFAULT_COMMAND_TIMEOUT_SECS),
            problems,
        );
        let max_asset_bytes = positive(
            &format!("{key}.max_asset_bytes"),
            self.max_asset_bytes.unwrap_or(DEFAULT_MAX_ASSET_BYTES),
            problems,
        );
        let max_unpacked_bytes = positive(
            &format!("{key}.max_unpacked_bytes"),
            self.max_unpacked_bytes
                .unwrap_or(DEFAULT_MAX_UNPACKED_BYTES),
            problems,
        );

        let tag_pattern = self.tag_pattern.as_deref().and_then(|text| {
            Regex::new(text)
                .map_err(|error| {
                    problems.push(
                        format!("{key}.tag_pattern"),
                        format!("invalid regex {text:?}: {error}"),
                    )
                })
                .ok()
        });
        let version_req = self.version_req.as_deref().and_then(|text| {
            VersionReq::parse(text)
                .map_err(|error| {
                    problems.push(
                        format!("{key}.version_req"),
                        format!(
                            "invalid semver requirement {text:?}: {error}: \
                         expected a form such as \">=1.2, <2\" or \"^3\""
                        ),
                    )
                })
                .ok()
        });

        Some(TargetConfig {
            name: name?,
            repo: repo?,
            api_base: api_base?,
            token,
            asset_pattern,
            volume,
            command,
            command_timeout_secs,
            command_env,
            restart_deployment,
            keep_releases: usize::try_from(keep_releases).unwrap_or(1),
            include_prereleases: self.include_prereleases,
            build_on_start: self.build_on_start,
            poll_interval_secs,
            tag_pattern,
            version_req,
            max_asset_bytes,
            max_unpacked_bytes,
        })
    }

    fn validate_name(&self, key: &str, problems: &mut Problems) -> Option<String> {
        let Some(name) = &self.name else {
            problems.push(
                format!("{key}.name"),
                "missing: give the target a short name",
            );
            return None;
        };
        if !is_target_name(name) {
            problems.push(
                format!("{key}.name"),
                format!(
                    "invalid name {name:?}: use letters, digits and _.- (at most 64, \
                 starting with a letter or digit)"
                ),
            );
            return None;
        }
        Some(name.clone())
    }

    fn validate_repo(&self, key: &str, problems: &mut Problems) -> Option<Repo> {
        let Some(repo) = &self.repo else {
            problems.push(format!("{key}.repo"), "missing: expected \"owner/name\"");
            return None;
        };
        let parts = repo.split_once('/');
        match parts {
            Some((owner, name)) if is_repo_part(owner) && is_repo_part(name) => Some(Repo {
                owner: owner.to_string(),
                name: name.to_string(),
            }),
            _ => {
                problems.push(
                    format!("{key}.repo"),
                    format!(
                        "invalid repository {repo:?}: expected \"owner/name\" made of \
                     letters, digits and _.-"
                    ),
                );
                None
            }
        }
    }

    fn validate_volume(
        &self,
        key: &str,
        problems: &mut Problems,
    ) -> (Option<AssetPattern>, Option<PathBuf>) {
        let pattern = self.asset_pattern.as_deref().and_then(|text| {
            let glob = GlobBuilder::new(text).literal_separator(true).build();
            match glob {
                Ok(glob) if !text.is_empty() => Some(AssetPattern {
                    text: text.to_string(),
                    matcher: glob.compile_matcher(),
                }),
                Ok(_) => {
                    problems.push(
                        format!("{key}.asset_pattern"),
                        "empty: expected a glob such as \"site-*.tar.gz\"",
                    );
                    None
                }
                Err(error) => {
                    problems.push(
                        format!("{key}.asset_pattern"),
                        format!(
                            "invalid glob {text:?}: {error}: expected a glob \
                         such as \"site-*.tar.gz\""
                        ),
                    );
                    None
                }
            }
        });
        let volume = self.volume.as_ref().and_then(|path| {
            if path.is_absolute() {
                Some(path.clone())
            } else {
                problems.push(
                    format!("{key}.volume"),
                    format!(
                        "{} is relative: expected an absolute directory path",
                        path.display()
                    ),
                );
                None
            }
        });
        match (&self.asset_pattern, &self.volume) {
            (Some(_), None) => problems.push(
                format!("{key}.volume"),
                "missing: asset_pattern needs a volume to unpack the asset into",
            ),
            (None, Some(_)) => problems.push(
                format!("{key}.asset_pattern"),
                "missing: a volume holds unpacked assets, so name the \
                 asset to download",
            ),
            _ => {}
        }
        (pattern, volume)
    }

    fn validate_command(&self, key: &str, problems: &mut Problems) -> Option<Vec<String>> {
        let command = self.command.as_ref()?;
        match command.first() {
            None => {
                problems.push(
                    format!("{key}.command"),
                    "empty: expected an argument vector such as \
                     [\"/usr/local/bin/reindex\", \"--quiet\"], or remove the key",
                );
                None
            }
            Some(program) if program.is_empty() => {
                problems.push(format!("{key}.command[0]"), "empty program name");
                None
            }
            Some(_) => Some(command.clone()),
        }
    }

    fn validate_command_env(&self, key: &str, problems: &mut Problems) -> Vec<String> {
        for (index, name) in self.command_env.iter().enumerate() {
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                problems.push(
                    format!("{key}.command_env[{index}]"),
                    format!(
                        "invalid variable name {name:?}: use letters, \
                     digits and _"
                    ),
                );
            } else if name.starts_with("ALMAGEST_") {
                problems.push(
                    format!("{key}.command_env[{index}]"),
                    format!(
                        "{name:?} is reserved: ALMAGEST_* variables \
                     hold the daemon's settings and secrets"
                    ),
                );
            }
        }
        self.command_env.clone()
    }

    fn validate_deployment(&self, key: &str, problems: &mut Problems) -> Option<Deployment> {
        let text = self.restart_deployment.as_ref()?;
        match text.split_once('/') {
            Some((namespace, name)) if is_dns_label(namespace) && is_dns_subdomain(name) => {
                Some(Deployment {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                })
            }
            _ => {
                problems.push(
                    format!("{key}.restart_deployment"),
                    format!(
                        "invalid deployment {text:?}: expected \
                     \"namespace/name\" in lowercase letters, digits and -"
                    ),
                );
                None
            }
        }
    }
}

impl RawKubernetes {
    fn validate(&self, problems: &mut Problems, ctx: &Context) -> KubernetesConfig {
        let account = Path::new(SERVICE_ACCOUNT_DIR);
        let api_base = match &self.api_base {
            Some(text) => validate_url("builder.kubernetes.api_base", text, problems),
            None => in_cluster_api_base(ctx),
        };
        KubernetesConfig {
            api_base,
            token_file: self
                .token_file
                .clone()
                .unwrap_or_else(|| account.join("token")),
            ca_file: self
                .ca_file
                .clone()
                .unwrap_or_else(|| account.join("ca.crt")),
        }
    }
}

/// Returns the API server address Kubernetes gives every pod through its environment.
fn in_cluster_api_base(ctx: &Context) -> Option<Url> {
    let host = ctx.env("KUBERNETES_SERVICE_HOST")?.to_string();
    let port = ctx.env("KUBERNETES_SERVICE_PORT").unwrap_or("443");
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Url::parse(&format!("https://{host}:{port}")).ok()
}

fn validate_url(key: &str, text: &str, problems: &mut Problems) -> Option<Url> {
    let trimmed = text.trim_end_matches('/');
    match Url::parse(trimmed) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url),
        Ok(_) | Err(_) => {
            problems.push(
                key,
                format!(
                    "invalid URL {text:?}: expected http:// or https:// with a host, such \
                 as \"{DEFAULT_API_BASE}\" or \"https://git.example.org/api/v1\""
                ),
            );
            None
        }
    }
}

fn positive(key: &str, value: u64, problems: &mut Problems) -> u64 {
    if value == 0 {
        problems.push(key, "0 is out of range: expected a positive number");
    }
    value
}

/// Target names become Redis key parts and file names, so they stay short and plain.
pub fn is_target_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    first_ok
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn is_repo_part(part: &str) -> bool {
    !part.is_empty()
        && part != "."
        && part != ".."
        && part.len() <= 100
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// RFC 1123 label, as Kubernetes requires for namespaces.
fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && !text.starts_with('-')
        && !text.ends_with('-')
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// RFC 1123 subdomain, as Kubernetes requires for Deployment names.
fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads a whole config whose builder tables are written without the `builder.` prefix.
    fn parse(toml_text: &str) -> Result<BuilderConfig, Vec<String>> {
        let text = format!(
            "[builder]\n{}",
            toml_text
                .replace("[[targets]]", "[[builder.targets]]")
                .replace("[kubernetes]", "[builder.kubernetes]")
        );
        let env = std::collections::HashMap::from([("GITHUB_TOKEN".to_string(), "t".to_string())]);
        match crate::config::Config::from_toml(&text, Path::new("test.toml"), env) {
            Ok(config) => Ok(config.builder.expect("the builder section is present")),
            Err(error) => Err(error.problems().iter().map(|p| p.to_string()).collect()),
        }
    }

    fn problems(toml_text: &str) -> Vec<String> {
        parse(toml_text).expect_err("config should be invalid")
    }

    const MINIMAL: &str = r#"
        [[targets]]
        name = "wiki"
        repo = "acme/wiki"
        asset_pattern = "wiki-*.tar.gz"
        volume = "/srv/wiki"
    "#;

    #[test]
    fn minimal_target_gets_defaults() {
        let config = parse(MINIMAL).expect("minimal config is valid");
        let target = &config.targets[0];
        assert_eq!(target.api_base.as_str(), "https://api.github.com/");
        assert_eq!(target.keep_releases, 3);
        assert_eq!(target.poll_interval(), Duration::from_secs(300));
        assert!(!target.include_prereleases);
        assert!(!target.build_on_start);
        assert!(
            target
                .asset_pattern
                .as_ref()
                .unwrap()
                .is_match("wiki-1.2.0.tar.gz")
        );
    }

    #[test]
    fn empty_section_is_valid() {
        let config = parse("").expect("no targets is valid");
        assert!(config.targets.is_empty());
    }

    #[test]
    fn every_problem_is_reported() {
        let found = problems(
            r#"
            [[targets]]
            repo = "acme"
            asset_pattern = "[oops"
            command = []
            restart_deployment = "Default/Wiki"
            keep_releases = 0
            tag_pattern = "(unclosed"
            version_req = "not a req"
            command_env = ["ALMAGEST__API__TOKEN"]
            "#,
        );
        let keys = [
            "builder.targets[0].name:",
            "builder.targets[0].repo:",
            "builder.targets[0].asset_pattern:",
            "builder.targets[0].volume:",
            "builder.targets[0].command:",
            "builder.targets[0].restart_deployment:",
            "builder.targets[0].keep_releases:",
            "builder.targets[0].tag_pattern:",
            "builder.targets[0].version_req:",
            "builder.targets[0].command_env[0]:",
        ];
        for key in keys {
            assert!(
                found.iter().any(|problem| problem.starts_with(key)),
                "no problem for {key} in {found:#?}"
            );
        }
    }

    #[test]
    fn problem_names_value_and_form() {
        let found = problems(
            r#"
            [[targets]]
            name = "wiki"
            repo = "acme/wiki"
            command = ["true"]
            restart_deployment = "wiki"
            "#,
        );
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("\"wiki\""), "{}", found[0]);
        assert!(found[0].contains("namespace/name"), "{}", found[0]);
    }

    #[test]
    fn duplicate_names_and_volumes_rejected() {
        let found = problems(&format!("{MINIMAL}{MINIMAL}"));
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("builder.targets[1].name:"))
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("builder.targets[1].volume:"))
        );
    }

    #[test]
    fn relative_volume_rejected() {
        let found = problems(
            r#"
            [[targets]]
            name = "wiki"
            repo = "acme/wiki"
            asset_pattern = "*.zip"
            volume = "srv/wiki"
            "#,
        );
        assert!(
            found[0].starts_with("builder.targets[0].volume:"),
            "{found:?}"
        );
    }

    #[test]
    fn target_without_steps_rejected() {
        let found = problems("[[targets]]\nname = \"a\"\nrepo = \"o/r\"\n");
        assert!(found[0].contains("nothing to do"), "{found:?}");
    }

    #[test]
    fn two_token_sources_rejected() {
        let found = problems(
            r#"
            [[targets]]
            name = "a"
            repo = "o/r"
            command = ["true"]
            token = "x"
            token_env = "GITHUB_TOKEN"
            "#,
        );
        assert!(
            found[0].starts_with("builder.targets[0].token:"),
            "{found:?}"
        );
    }

    #[test]
    fn token_file_is_read_and_masked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "ghp_secret\n").unwrap();
        let text = format!(
            "[[targets]]\nname = \"a\"\nrepo = \"o/r\"\ncommand = [\"true\"]\ntoken_file = {:?}",
            path.display().to_string()
        );
        let config = parse(&text).unwrap();
        let token = config.targets[0].token.as_ref().unwrap();
        assert_eq!(token.expose(), "ghp_secret");
        let printed = toml::to_string(&config).unwrap();
        assert!(!printed.contains("ghp_secret"), "{printed}");
        assert!(printed.contains("repo = \"o/r\""), "{printed}");
    }

    #[test]
    fn missing_token_file_names_key() {
        let found = problems(
            "[[targets]]\nname = \"a\"\nrepo = \"o/r\"\ncommand = [\"true\"]\n\
             token_file = \"/nonexistent/token\"",
        );
        assert!(
            found[0].starts_with("builder.targets[0].token_file:"),
            "{found:?}"
        );
    }

    #[test]
    fn gitea_api_base_accepted() {
        let config = parse(
            r#"
            [[targets]]
            name = "a"
            repo = "o/r"
            api_base = "https://git.example.org/api/v1/"
            command = ["true"]
            "#,
        )
        .unwrap();
        assert_eq!(
            config.targets[0].api_base.as_str(),
            "https://git.example.org/api/v1"
        );
    }

    #[test]
    fn kubernetes_keys_override_defaults() {
        let config = parse(
            r#"
            [kubernetes]
            api_base = "http://127.0.0.1:6443"
            token_file = "/tmp/token"
            "#,
        )
        .unwrap();
        let kubernetes = config.kubernetes;
        assert_eq!(
            kubernetes.api_base.unwrap().as_str(),
            "http://127.0.0.1:6443/"
        );
        assert_eq!(kubernetes.token_file, Path::new("/tmp/token"));
        assert_eq!(
            kubernetes.ca_file,
            Path::new(SERVICE_ACCOUNT_DIR).join("ca.crt")
        );
    }
}

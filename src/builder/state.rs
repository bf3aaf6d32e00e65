//! A target's stored state (the hash `P:builder:<target>`) and the polling decision made from
//! it, both free of I/O.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};

use super::config::TargetConfig;
use super::releases::Release;
use super::select::{Filter, VersionKey, select_candidate};

/// Polling tries a failing release this many times in all, one poll interval apart. After
/// that only a newer release or a manual `rebuild` builds again, so a broken release does not
/// send a failure notice every poll.
pub const MAX_AUTOMATIC_ATTEMPTS: u32 = 3;

/// The fields of `P:builder:<target>`. Every field is optional, and unknown fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetState {
    /// The highest release built or recorded as the baseline; polling builds only above it.
    pub built_tag: Option<String>,
    pub built_published_at: Option<DateTime<Utc>>,
    /// When `built_tag` was last built; unset for a baseline.
    pub built_at: Option<DateTime<Utc>>,
    /// The release `current` points at, which differs from `built_tag` after a rollback.
    pub current_tag: Option<String>,
    pub etag: Option<String>,
    /// `ok`, `baseline` or `failed: REASON` for the last build or rollback.
    pub last_result: Option<String>,
    pub last_tag: Option<String>,
    pub last_at: Option<DateTime<Utc>>,
    /// The release whose build failed last, and how many automatic attempts it had.
    pub failed_tag: Option<String>,
    pub failed_attempts: u32,
}

fn time_text(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl TargetState {
    /// Reads the hash; malformed times and counts read as unset.
    pub fn from_fields(fields: &HashMap<String, String>) -> Self {
        let text = |name: &str| fields.get(name).filter(|v| !v.is_empty()).cloned();
        let time = |name: &str| {
            fields
                .get(name)
                .and_then(|value| DateTime::parse_from_rfc3339(value).ok())
                .map(|time| time.with_timezone(&Utc))
        };
        TargetState {
            built_tag: text("built_tag"),
            built_published_at: time("built_published_at"),
            built_at: time("built_at"),
            current_tag: text("current_tag"),
            etag: text("etag"),
            last_result: text("last_result"),
            last_tag: text("last_tag"),
            last_at: time("last_at"),
            failed_tag: text("failed_tag"),
            failed_attempts: text("failed_attempts")
                .and_then(|value| value.parse().ok())
                .unwrap_or(0),
        }
    }

    /// Returns the hash fields to write. Unset fields are written empty, so they replace old
    /// values.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let text = |value: &Option<String>| value.clone().unwrap_or_default();
        let time =
            |value: &Option<DateTime<Utc>>| value.as_ref().map(time_text).unwrap_or_default();
        vec![
            ("built_tag", text(&self.built_tag)),
            ("built_published_at", time(&self.built_published_at)),
            ("built_at", time(&self.built_at)),
            ("current_tag", text(&self.current_tag)),
            ("etag", text(&self.etag)),
            ("last_result", text(&self.last_result)),
            ("last_tag", text(&self.last_tag)),
            ("last_at", time(&self.last_at)),
            ("failed_tag", text(&self.failed_tag)),
            ("failed_attempts", self.failed_attempts.to_string()),
        ]
    }

    fn built_key(&self) -> Option<VersionKey> {
        let tag = self.built_tag.as_deref()?;
        Some(VersionKey::new(tag, self.built_published_at))
    }

    /// Records `release` as the baseline: polling builds only releases above it.
    pub fn record_baseline(&mut self, release: &Release, at: DateTime<Utc>) {
        self.built_tag = Some(release.tag_name.clone());
        self.built_published_at = release.published_at;
        self.last_result = Some("baseline".to_string());
        self.last_tag = Some(release.tag_name.clone());
        self.last_at = Some(at);
    }

    /// Records a successful build. `built_tag` only moves up, so a manual build of an older
    /// release is not replaced at the next poll.
    pub fn record_built(&mut self, release: &Release, at: DateTime<Utc>) {
        let key = VersionKey::of(release);
        if self.built_key().is_none_or(|built| key >= built) {
            self.built_tag = Some(release.tag_name.clone());
            self.built_published_at = release.published_at;
        }
        self.built_at = Some(at);
        self.current_tag = Some(release.tag_name.clone());
        self.record_success(&release.tag_name, at);
    }

    /// Records a successful rollback to `tag`; `built_tag` stays, so polling does not build
    /// the release that was rolled back from.
    pub fn record_rollback(&mut self, tag: &str, at: DateTime<Utc>) {
        self.current_tag = Some(tag.to_string());
        self.record_success(tag, at);
    }

    fn record_success(&mut self, tag: &str, at: DateTime<Utc>) {
        self.last_result = Some("ok".to_string());
        self.last_tag = Some(tag.to_string());
        self.last_at = Some(at);
        self.failed_tag = None;
        self.failed_attempts = 0;
    }

    /// Records a failed build or rollback of `tag`.
    pub fn record_failure(&mut self, tag: &str, reason: &str, at: DateTime<Utc>) {
        self.last_result = Some(format!("failed: {reason}"));
        self.last_tag = Some(tag.to_string());
        self.last_at = Some(at);
        if self.failed_tag.as_deref() == Some(tag) {
            self.failed_attempts = self.failed_attempts.saturating_add(1);
        } else {
            self.failed_tag = Some(tag.to_string());
            self.failed_attempts = 1;
        }
    }
}

/// The action a poll takes on a fresh releases list.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision<'r> {
    /// Nothing to build.
    Idle,
    /// First poll without stored state: record this release without building it.
    Baseline(&'r Release),
    Build(&'r Release),
    /// The release to build has no asset matching the pattern yet (assets are often uploaded
    /// after the release is published); the next poll looks again.
    AwaitAsset(&'r Release),
    /// The release failed [`MAX_AUTOMATIC_ATTEMPTS`] times.
    GaveUp(&'r Release),
}

/// Decides what to do with `releases`. `stored` tells whether any state was stored for the
/// target, and `has_current` whether its volume has a `current` link (always true without a
/// volume). A volume that lost `current` while the state records a build (an emptied volume) gets the candidate built again even when it is not newer.
pub fn decide<'r>(
    target: &TargetConfig,
    releases: &'r [Release],
    state: &TargetState,
    stored: bool,
    has_current: bool,
) -> Decision<'r> {
    let filter = Filter {
        include_prereleases: target.include_prereleases,
        tag_pattern: target.tag_pattern.as_ref(),
        version_req: target.version_req.as_ref(),
    };
    let Some(candidate) = select_candidate(releases, &filter) else {
        return Decision::Idle;
    };
    if !stored && !target.build_on_start {
        return Decision::Baseline(candidate);
    }
    let newer = state
        .built_key()
        .is_none_or(|built| VersionKey::of(candidate) > built);
    let volume_lost = target.volume.is_some() && !has_current && state.built_tag.is_some();
    if !newer && !volume_lost {
        return Decision::Idle;
    }
    if state.failed_tag.as_deref() == Some(candidate.tag_name.as_str())
        && state.failed_attempts >= MAX_AUTOMATIC_ATTEMPTS
    {
        return Decision::GaveUp(candidate);
    }
    let asset_ready = target.asset_pattern.as_ref().is_none_or(|pattern| {
        candidate
            .assets
            .iter()
            .any(|asset| pattern.is_match(&asset.name))
    });
    if asset_ready {
        Decision::Build(candidate)
    } else {
        Decision::AwaitAsset(candidate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::releases::Asset;
    use crate::config::Config;
    use std::path::Path;

    fn target(extra: &str) -> TargetConfig {
        let text = format!(
            "[[builder.targets]]\nname = \"wiki\"\nrepo = \"acme/wiki\"\n\
             asset_pattern = \"*.tar.gz\"\nvolume = \"/srv/wiki\"\n{extra}"
        );
        let config = Config::from_toml(&text, Path::new("test.toml"), HashMap::new()).unwrap();
        config.builder.unwrap().targets.remove(0)
    }

    fn release(tag: &str, published: &str, with_asset: bool) -> Release {
        let assets = if with_asset {
            vec![Asset {
                name: "site.tar.gz".to_string(),
                ..Asset::default()
            }]
        } else {
            Vec::new()
        };
        Release {
            tag_name: tag.to_string(),
            published_at: Some(published.parse().unwrap()),
            assets,
            ..Release::default()
        }
    }

    fn built(tag: &str) -> TargetState {
        TargetState {
            built_tag: Some(tag.to_string()),
            ..TargetState::default()
        }
    }

    #[test]
    fn first_poll_records_baseline() {
        let releases = [release("v1.0.0", "2024-01-01T00:00:00Z", true)];
        let decision = decide(&target(""), &releases, &TargetState::default(), false, true);
        assert_eq!(decision, Decision::Baseline(&releases[0]));
    }

    #[test]
    fn build_on_start_builds_first_poll() {
        let releases = [release("v1.0.0", "2024-01-01T00:00:00Z", true)];
        let target = target("build_on_start = true");
        let decision = decide(&target, &releases, &TargetState::default(), false, false);
        assert_eq!(decision, Decision::Build(&releases[0]));
    }

    #[test]
    fn newer_release_is_built() {
        let releases = [
            release("v1.1.0", "2024-02-01T00:00:00Z", true),
            release("v1.0.0", "2024-01-01T00:00:00Z", true),
        ];
        let decision = decide(&target(""), &releases, &built("v1.0.0"), true, true);
        assert_eq!(decision, Decision::Build(&releases[0]));
    }

    #[test]
    fn older_tag_published_later_ignored() {
        let releases = [
            release("v1.0.1", "2024-09-01T00:00:00Z", true),
            release("v2.0.0", "2024-02-01T00:00:00Z", true),
        ];
        let decision = decide(&target(""), &releases, &built("v2.0.0"), true, true);
        assert_eq!(decision, Decision::Idle);
    }

    #[test]
    fn missing_asset_waits() {
        let releases = [release("v1.1.0", "2024-02-01T00:00:00Z", false)];
        let decision = decide(&target(""), &releases, &built("v1.0.0"), true, true);
        assert_eq!(decision, Decision::AwaitAsset(&releases[0]));
    }

    #[test]
    fn emptied_volume_rebuilds_built_release() {
        let releases = [release("v1.0.0", "2024-01-01T00:00:00Z", true)];
        let decision = decide(&target(""), &releases, &built("v1.0.0"), true, false);
        assert_eq!(decision, Decision::Build(&releases[0]));
    }

    #[test]
    fn repeated_failure_gives_up() {
        let releases = [release("v1.1.0", "2024-02-01T00:00:00Z", true)];
        let mut state = built("v1.0.0");
        let at = Utc::now();
        for _ in 0..MAX_AUTOMATIC_ATTEMPTS {
            assert_eq!(
                decide(&target(""), &releases, &state, true, true),
                Decision::Build(&releases[0])
            );
            state.record_failure("v1.1.0", "command failed", at);
        }
        let decision = decide(&target(""), &releases, &state, true, true);
        assert_eq!(decision, Decision::GaveUp(&releases[0]));
    }

    #[test]
    fn manual_older_build_keeps_watermark() {
        let mut state = built("v3.0.0");
        let old = release("v1.0.0", "2024-01-01T00:00:00Z", true);
        state.record_built(&old, Utc::now());
        assert_eq!(state.built_tag.as_deref(), Some("v3.0.0"));
        assert_eq!(state.current_tag.as_deref(), Some("v1.0.0"));
    }

    #[test]
    fn fields_round_trip() {
        let mut state = built("v1.0.0");
        state.etag = Some("W/\"abc\"".to_string());
        state.record_failure(
            "v1.1.0",
            "download failed",
            "2024-05-01T00:00:00Z".parse().unwrap(),
        );
        let fields: HashMap<String, String> = state
            .to_fields()
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect();
        assert_eq!(TargetState::from_fields(&fields), state);
    }
}

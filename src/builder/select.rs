//! Candidate selection, free of I/O: which release, if any, a target should build next.
//!
//! Releases are ordered by the semantic version in their tag (`v1.2.3`, `1.2`, `site-v2.0.0`,
//! `pkg@3.1.0-rc.1`). Tags without one fall back to their publish time and rank below every
//! tag with one, so one odd tag such as `nightly` never outranks the versioned releases.

use chrono::{DateTime, Utc};
use regex::Regex;
use semver::{BuildMetadata, Prerelease, Version, VersionReq};
use std::sync::LazyLock;

use super::releases::Release;

/// Optional words ending in `-`, `_`, `/` or `@` (`release-`, `site-`, `pkg@`), an optional
/// `v`, one to three numbers, and then a semver pre-release and build suffix. The suffix is
/// only read after a full `MAJOR.MINOR.PATCH`, so a date tag such as `2024-01-15` is not taken
/// for version 2024 with pre-release `01-15`.
static TAG_VERSION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:[A-Za-z][A-Za-z0-9_.]*[-_/@])*[vV]?(\d+)(?:\.(\d+)(?:\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+([0-9A-Za-z.-]+))?)?)?$",
    )
    .expect("the tag version regex is valid")
});

/// Reads the semantic version in a tag; a missing minor or patch number counts as 0.
pub fn tag_version(tag: &str) -> Option<Version> {
    let captures = TAG_VERSION.captures(tag)?;
    let number = |index: usize| -> Option<u64> {
        match captures.get(index) {
            Some(text) => text.as_str().parse().ok(),
            None => Some(0),
        }
    };
    let pre = match captures.get(4) {
        Some(text) => Prerelease::new(text.as_str()).ok()?,
        None => Prerelease::EMPTY,
    };
    let build = match captures.get(5) {
        Some(text) => BuildMetadata::new(text.as_str()).ok()?,
        None => BuildMetadata::EMPTY,
    };
    Some(Version {
        major: number(1)?,
        minor: number(2)?,
        patch: number(3)?,
        pre,
        build,
    })
}

/// Order of releases: every versioned tag ranks above every unversioned one; versions compare
/// by semver precedence, unversioned tags by publish time and then by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum VersionKey {
    Published(Option<DateTime<Utc>>, String),
    Semver(Version),
}

impl VersionKey {
    pub fn new(tag: &str, published_at: Option<DateTime<Utc>>) -> Self {
        match tag_version(tag) {
            Some(version) => VersionKey::Semver(version),
            None => VersionKey::Published(published_at, tag.to_string()),
        }
    }

    pub fn of(release: &Release) -> Self {
        Self::new(&release.tag_name, release.published_at)
    }
}

/// The per-target filters a release must pass to be a candidate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter<'a> {
    pub include_prereleases: bool,
    pub tag_pattern: Option<&'a Regex>,
    pub version_req: Option<&'a VersionReq>,
}

impl Filter<'_> {
    /// Checks one release; drafts never pass. A release counts as a pre-release when the API
    /// flags it or when its tag has a semver pre-release part.
    pub fn accepts(&self, release: &Release) -> bool {
        if release.draft {
            return false;
        }
        let version = tag_version(&release.tag_name);
        let tagged_pre = version.as_ref().is_some_and(|v| !v.pre.is_empty());
        if !self.include_prereleases && (release.prerelease || tagged_pre) {
            return false;
        }
        if let Some(pattern) = self.tag_pattern
            && !pattern.is_match(&release.tag_name)
        {
            return false;
        }
        match (self.version_req, version) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(req), Some(version)) => req_matches(req, version, self.include_prereleases),
        }
    }
}

/// Matches a version against a requirement. `VersionReq::matches` rejects every pre-release
/// of a version the requirement does not name, but with pre-releases included `2.1.0-rc.1`
/// should satisfy `^2`, so its pre-release part is dropped before a second match.
fn req_matches(req: &VersionReq, mut version: Version, include_prereleases: bool) -> bool {
    if req.matches(&version) {
        return true;
    }
    if include_prereleases && !version.pre.is_empty() {
        version.pre = Prerelease::EMPTY;
        return req.matches(&version);
    }
    false
}

/// Returns the highest release the filter accepts.
pub fn select_candidate<'r>(releases: &'r [Release], filter: &Filter<'_>) -> Option<&'r Release> {
    releases
        .iter()
        .filter(|release| filter.accepts(release))
        .max_by_key(|release| VersionKey::of(release))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(tag: &str, published: &str) -> Release {
        Release {
            tag_name: tag.to_string(),
            published_at: Some(published.parse().unwrap()),
            ..Release::default()
        }
    }

    fn version(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    #[test]
    fn tag_prefixes_are_stripped() {
        let cases = [
            ("v1.2.3", "1.2.3"),
            ("1.2.3", "1.2.3"),
            ("V2.0.0", "2.0.0"),
            ("release-1.4.0", "1.4.0"),
            ("site-v3.1.4", "3.1.4"),
            ("pkg@0.9.1", "0.9.1"),
            ("release/2.0.1", "2.0.1"),
            ("v1.2", "1.2.0"),
            ("v7", "7.0.0"),
            ("v2.0.0-rc.1", "2.0.0-rc.1"),
            ("v1.0.0+build.5", "1.0.0+build.5"),
            ("2024.01.15", "2024.1.15"),
        ];
        for (tag, expected) in cases {
            assert_eq!(tag_version(tag), Some(version(expected)), "tag {tag}");
        }
    }

    #[test]
    fn non_version_tags_have_none() {
        for tag in [
            "nightly",
            "2024-01-15",
            "v1.2-rc1",
            "",
            "v",
            "1.0.0-rc.01",
            "$(touch x)",
        ] {
            assert_eq!(tag_version(tag), None, "tag {tag:?}");
        }
    }

    #[test]
    fn semver_order_beats_publish_order() {
        let releases = [
            release("v1.10.0", "2024-01-01T00:00:00Z"),
            release("v1.9.0", "2024-06-01T00:00:00Z"),
        ];
        let chosen = select_candidate(&releases, &Filter::default()).unwrap();
        assert_eq!(chosen.tag_name, "v1.10.0");
    }

    #[test]
    fn unversioned_tags_fall_back_to_publish_time() {
        let releases = [
            release("build-b", "2024-01-01T00:00:00Z"),
            release("build-a", "2024-06-01T00:00:00Z"),
        ];
        let chosen = select_candidate(&releases, &Filter::default()).unwrap();
        assert_eq!(chosen.tag_name, "build-a");
    }

    #[test]
    fn versioned_tags_outrank_unversioned() {
        let releases = [
            release("v1.0.0", "2024-01-01T00:00:00Z"),
            release("nightly", "2024-06-01T00:00:00Z"),
        ];
        let chosen = select_candidate(&releases, &Filter::default()).unwrap();
        assert_eq!(chosen.tag_name, "v1.0.0");
    }

    #[test]
    fn prereleases_skipped_by_default() {
        let mut flagged = release("v2.0.0", "2024-06-01T00:00:00Z");
        flagged.prerelease = true;
        let releases = [
            flagged,
            release("v2.1.0-beta.1", "2024-07-01T00:00:00Z"),
            release("v1.0.0", "2024-01-01T00:00:00Z"),
        ];
        let stable = select_candidate(&releases, &Filter::default()).unwrap();
        assert_eq!(stable.tag_name, "v1.0.0");
        let any = Filter {
            include_prereleases: true,
            ..Filter::default()
        };
        assert_eq!(
            select_candidate(&releases, &any).unwrap().tag_name,
            "v2.1.0-beta.1"
        );
    }

    #[test]
    fn drafts_never_selected() {
        let mut draft = release("v9.0.0", "2024-06-01T00:00:00Z");
        draft.draft = true;
        let releases = [draft];
        let any = Filter {
            include_prereleases: true,
            ..Filter::default()
        };
        assert!(select_candidate(&releases, &any).is_none());
    }

    #[test]
    fn tag_pattern_filters() {
        let pattern = Regex::new("^site-").unwrap();
        let releases = [
            release("site-v1.0.0", "2024-01-01T00:00:00Z"),
            release("api-v5.0.0", "2024-01-01T00:00:00Z"),
        ];
        let filter = Filter {
            tag_pattern: Some(&pattern),
            ..Filter::default()
        };
        assert_eq!(
            select_candidate(&releases, &filter).unwrap().tag_name,
            "site-v1.0.0"
        );
    }

    #[test]
    fn version_req_filters() {
        let req = VersionReq::parse("^1").unwrap();
        let releases = [
            release("v1.4.0", "2024-01-01T00:00:00Z"),
            release("v2.0.0", "2024-01-02T00:00:00Z"),
            release("nightly", "2024-01-03T00:00:00Z"),
        ];
        let filter = Filter {
            version_req: Some(&req),
            ..Filter::default()
        };
        assert_eq!(
            select_candidate(&releases, &filter).unwrap().tag_name,
            "v1.4.0"
        );
    }

    #[test]
    fn version_req_admits_included_prereleases() {
        let req = VersionReq::parse("^2").unwrap();
        let releases = [release("v2.1.0-rc.1", "2024-01-01T00:00:00Z")];
        let filter = Filter {
            include_prereleases: true,
            version_req: Some(&req),
            ..Filter::default()
        };
        assert!(select_candidate(&releases, &filter).is_some());
    }

    #[test]
    fn version_key_orders_prerelease_below_release() {
        let rc = VersionKey::new("v2.0.0-rc.1", None);
        let stable = VersionKey::new("v2.0.0", None);
        assert!(rc < stable);
    }
}

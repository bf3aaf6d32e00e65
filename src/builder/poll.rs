//! One target's polling: lists releases through the client, keeps the last list for polls
//! answered with 304, and turns the list and the stored state into a [`PollOutcome`].
//! Failures are logged once when they start and once when they end, never on every poll.

use std::time::SystemTime;

use super::config::TargetConfig;
use super::releases::{Listing, Release, ReleasesClient, ReleasesError};
use super::select::{Filter, select_candidate};
use super::state::{Decision, TargetState, decide};

/// What one poll found for its target.
#[derive(Debug, Clone, PartialEq)]
pub enum PollOutcome {
    Idle,
    Baseline(Release),
    Build(Release),
    /// The newest release has no matching asset yet.
    AwaitAsset(String),
    /// The newest release failed every automatic attempt.
    GaveUp(String),
    /// The repository is missing or hidden from the token.
    NotFound,
    RateLimited(SystemTime),
    Failed(String),
}

/// Polls one target.
pub struct Poller {
    client: ReleasesClient,
    /// The list behind the client's ETag, reused when the API answers 304.
    releases: Option<Vec<Release>>,
    /// The problem logged last (not found, an error), so a repeat is not logged again.
    problem: Option<String>,
    /// The tag whose missing asset was logged last.
    awaited: Option<String>,
}

impl Poller {
    pub fn new(client: ReleasesClient) -> Self {
        Poller {
            client,
            releases: None,
            problem: None,
            awaited: None,
        }
    }

    /// Returns the ETag of the last list, for storing with the target's state.
    pub fn etag(&self) -> Option<&str> {
        self.client.etag()
    }

    /// Returns the client, for fetching a release by tag.
    pub fn client(&mut self) -> &mut ReleasesClient {
        &mut self.client
    }

    /// Returns the newest release the target's filters accept, from the last list.
    pub fn newest(&self, target: &TargetConfig) -> Option<&Release> {
        select_candidate(self.releases.as_deref()?, &filter(target))
    }

    /// Lists releases and returns the newest one the target's filters accept.
    pub async fn newest_release(
        &mut self,
        target: &TargetConfig,
    ) -> Result<Option<Release>, String> {
        match self.refresh(target).await {
            Ok(true) => Ok(self.newest(target).cloned()),
            Ok(false) => Err(format!(
                "repository {} not found, or the token cannot see it",
                target.repo
            )),
            Err(ReleasesError::RateLimited { until, .. }) => Err(format!(
                "rate limited by the releases API until {}",
                chrono::DateTime::<chrono::Utc>::from(until).to_rfc3339()
            )),
            Err(error) => Err(error.to_string()),
        }
    }

    /// Brings the cached list up to date; `Ok(false)` when the repository is not found.
    async fn refresh(&mut self, target: &TargetConfig) -> Result<bool, ReleasesError> {
        let filter = filter(target);
        // Without a cached list a 304 would leave nothing to decide on.
        if self.releases.is_none() {
            self.client.set_etag(None);
        }
        let listing = self
            .client
            .list(|releases| select_candidate(releases, &filter).is_some())
            .await?;
        match listing {
            Listing::Modified {
                releases, skipped, ..
            } => {
                if skipped > 0 {
                    tracing::warn!(target = %target.name, skipped, "skipped malformed entries in the releases list");
                }
                self.releases = Some(releases);
                Ok(true)
            }
            Listing::NotModified => Ok(true),
            Listing::NotFound => {
                self.releases = None;
                Ok(false)
            }
        }
    }

    /// Lists releases and decides. `stored` and `has_current` are as for [`decide`].
    pub async fn poll(
        &mut self,
        target: &TargetConfig,
        state: &TargetState,
        stored: bool,
        has_current: bool,
    ) -> PollOutcome {
        match self.refresh(target).await {
            Ok(true) => {}
            Ok(false) => {
                self.report_problem(target, "repository not found, or the token cannot see it");
                return PollOutcome::NotFound;
            }
            Err(ReleasesError::RateLimited { until, .. }) => {
                return PollOutcome::RateLimited(until);
            }
            Err(error) => {
                let message = error.to_string();
                self.report_problem(target, &message);
                return PollOutcome::Failed(message);
            }
        }
        self.clear_problem(target);

        let releases = self.releases.as_deref().unwrap_or_default();
        match decide(target, releases, state, stored, has_current) {
            Decision::Idle => PollOutcome::Idle,
            Decision::Baseline(release) => PollOutcome::Baseline(release.clone()),
            Decision::Build(release) => PollOutcome::Build(release.clone()),
            Decision::AwaitAsset(release) => {
                if self.awaited.as_deref() != Some(release.tag_name.as_str()) {
                    tracing::info!(target = %target.name, tag = %release.tag_name, "release has no matching asset yet; waiting");
                    self.awaited = Some(release.tag_name.clone());
                }
                PollOutcome::AwaitAsset(release.tag_name.clone())
            }
            Decision::GaveUp(release) => PollOutcome::GaveUp(release.tag_name.clone()),
        }
    }

    fn report_problem(&mut self, target: &TargetConfig, message: &str) {
        if self.problem.as_deref() != Some(message) {
            tracing::warn!(target = %target.name, repo = %target.repo, error = %message, "polling releases failed");
            self.problem = Some(message.to_string());
        }
    }

    fn clear_problem(&mut self, target: &TargetConfig) {
        if self.problem.take().is_some() {
            tracing::info!(target = %target.name, repo = %target.repo, "polling releases works again");
        }
    }
}

fn filter(target: &TargetConfig) -> Filter<'_> {
    Filter {
        include_prereleases: target.include_prereleases,
        tag_pattern: target.tag_pattern.as_ref(),
        version_req: target.version_req.as_ref(),
    }
}

//! Client for the releases API of GitHub and of compatible forges (Gitea, Forgejo): lists a
//! repository's releases with conditional requests, follows pages while the caller has not
//! found a candidate, and honours rate limits.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, ETAG, HeaderMap, HeaderValue, IF_NONE_MATCH, LINK, RETRY_AFTER,
};
use reqwest::{Response, StatusCode};
use serde::Deserialize;
use url::Url;

use super::config::Repo;
use crate::config::Secret;

/// GitHub allows 100 releases a page and Gitea 50 by default, so 50 works on both.
pub const PER_PAGE: usize = 50;
/// Five pages reach 250 releases back, enough to get past a run of pre-releases without
/// spending a rate-limit window on one poll.
pub const MAX_PAGES: usize = 5;
/// A page of 50 releases with long notes stays under 1 MiB; 8 MiB leaves room and still
/// bounds what a misbehaving server can make the daemon hold.
const MAX_PAGE_BYTES: u64 = 8 * 1024 * 1024;
/// GitHub's rate-limit windows last an hour. A header promising a longer wait counts as an
/// hour, so a bogus value cannot stop polling for good.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(3600);
/// GitHub's documentation tells clients hit by a secondary rate limit without `retry-after`
/// to wait at least a minute.
const SECONDARY_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// Connect and whole-request timeout for API pages (not for asset downloads).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One release as the API returns it; fields the builder does not use are ignored.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Release {
    pub tag_name: String,
    #[serde(default)]
    pub draft: bool,
    #[serde(default)]
    pub prerelease: bool,
    #[serde(default)]
    pub published_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub assets: Vec<Asset>,
}

/// One release asset.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Asset {
    pub name: String,
    #[serde(default)]
    pub size: u64,
    /// GitHub's API URL of the asset, which serves the file with
    /// `Accept: application/octet-stream` and works for private repositories. Gitea has none.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub browser_download_url: Option<String>,
    /// `sha256:HEX` on GitHub since 2025; absent elsewhere.
    #[serde(default)]
    pub digest: Option<String>,
}

/// The result of listing releases once.
#[derive(Debug, Clone, PartialEq)]
pub enum Listing {
    /// The list changed (or was fetched for the first time).
    Modified {
        releases: Vec<Release>,
        etag: Option<String>,
        /// Entries that were not release objects and were skipped.
        skipped: usize,
    },
    /// 304: the first page is unchanged since the ETag the client sent.
    NotModified,
    /// 404: the repository does not exist or the token cannot see it.
    NotFound,
}

#[derive(Debug, thiserror::Error)]
pub enum ReleasesError {
    #[error("rate limited by {api}: waiting until {}", DateTime::<Utc>::from(*.until).to_rfc3339())]
    RateLimited { api: String, until: SystemTime },
    #[error("request to {url} failed: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} returned {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("invalid releases list from {url}: {reason}")]
    InvalidBody { url: String, reason: String },
}

/// Builds the HTTP client every builder request uses.
pub fn http_client(timeout: Option<Duration>) -> Result<reqwest::Client, reqwest::Error> {
    // The crate builds reqwest without a default crypto provider; installing one twice is
    // harmless (the second call returns an error that is ignored).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("almagest/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10));
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    builder.build()
}

/// A releases client for one repository. It keeps the last listing's ETag and its
/// rate-limit window between polls.
pub struct ReleasesClient {
    http: reqwest::Client,
    api_base: Url,
    repo: Repo,
    token: Option<Secret>,
    etag: Option<String>,
    blocked_until: Option<SystemTime>,
    /// Whether the current rate-limit episode was logged, so it is logged once.
    rate_limit_logged: bool,
}

impl ReleasesClient {
    pub fn new(api_base: Url, repo: Repo, token: Option<Secret>) -> Result<Self, ReleasesError> {
        let http = http_client(Some(REQUEST_TIMEOUT)).map_err(|source| ReleasesError::Request {
            url: api_base.to_string(),
            source,
        })?;
        Ok(ReleasesClient {
            http,
            api_base,
            repo,
            token,
            etag: None,
            blocked_until: None,
            rate_limit_logged: false,
        })
    }

    /// Returns the ETag sent with the next listing, if any.
    pub fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }

    /// Sets the ETag to send; `None` makes the next listing unconditional.
    pub fn set_etag(&mut self, etag: Option<String>) {
        self.etag = etag;
    }

    /// Returns the end of the current rate-limit window, if one is in force.
    pub fn blocked_until(&self) -> Option<SystemTime> {
        self.blocked_until
            .filter(|until| *until > SystemTime::now())
    }

    /// Lists releases, newest first as the API orders them. Further pages are read only while
    /// `found` returns false for everything read so far, the last page was full, and fewer
    /// than [`MAX_PAGES`] were read. A 304 on the first page returns `NotModified`.
    pub async fn list(
        &mut self,
        found: impl Fn(&[Release]) -> bool,
    ) -> Result<Listing, ReleasesError> {
        let first = self.releases_url();
        let response = self.get_page(first.clone(), true).await?;
        match response.status() {
            StatusCode::NOT_MODIFIED => return Ok(Listing::NotModified),
            StatusCode::NOT_FOUND => return Ok(Listing::NotFound),
            _ => {}
        }
        let etag = header_text(response.headers(), ETAG.as_str());
        let mut next = next_link(response.headers());
        let (mut releases, mut skipped, mut full) = read_page(response, &first).await?;

        let mut pages = 1;
        while !found(&releases) && full && pages < MAX_PAGES {
            let url = match next.take() {
                Some(url) => url,
                None => self.page_url(pages + 1),
            };
            let response = self.get_page(url.clone(), false).await?;
            if response.status() == StatusCode::NOT_FOUND {
                break;
            }
            next = next_link(response.headers());
            let (more, more_skipped, more_full) = read_page(response, &url).await?;
            releases.extend(more);
            skipped += more_skipped;
            full = more_full;
            pages += 1;
        }

        self.etag = etag.clone();
        Ok(Listing::Modified {
            releases,
            etag,
            skipped,
        })
    }

    /// Fetches the release of one tag; `None` when the API has no release for it. The tag
    /// is percent-encoded as one path segment, so a `/` or `..` in it stays inside the URL.
    pub async fn release_by_tag(&mut self, tag: &str) -> Result<Option<Release>, ReleasesError> {
        // Git forbids a tag made of dots, and in a URL path such a segment would climb.
        if tag.is_empty() || tag.chars().all(|c| c == '.') {
            return Ok(None);
        }
        let url = self.tag_url(tag);
        let response = self.get_page(url.clone(), false).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let invalid = |reason: String| ReleasesError::InvalidBody {
            url: url.to_string(),
            reason,
        };
        let body = read_capped(response, MAX_PAGE_BYTES)
            .await
            .map_err(|error| invalid(error.to_string()))?;
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|error| invalid(format!("expected a release object: {error}")))
    }

    /// Encodes every byte outside RFC 3986's unreserved set, `%` and `/` included.
    fn tag_url(&self, tag: &str) -> Url {
        let base = self.api_base.as_str().trim_end_matches('/');
        let encoded: String = tag
            .bytes()
            .map(|byte| match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(byte).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        let text = format!(
            "{base}/repos/{}/{}/releases/tags/{encoded}",
            self.repo.owner, self.repo.name
        );
        Url::parse(&text).expect("a URL made of a valid base and encoded parts is valid")
    }

    fn releases_url(&self) -> Url {
        self.page_url(1)
    }

    /// `per_page` is GitHub's page size parameter and `limit` Gitea's; each ignores the other.
    fn page_url(&self, page: usize) -> Url {
        let base = self.api_base.as_str().trim_end_matches('/');
        let text = format!(
            "{base}/repos/{}/{}/releases?per_page={PER_PAGE}&limit={PER_PAGE}&page={page}",
            self.repo.owner, self.repo.name
        );
        Url::parse(&text).expect("a URL made of a valid base and checked repo parts is valid")
    }

    /// Sends one GET. A rate-limit response becomes `RateLimited`, and any other failure
    /// except 304 and 404 becomes an error.
    async fn get_page(&mut self, url: Url, conditional: bool) -> Result<Response, ReleasesError> {
        if let Some(until) = self.blocked_until() {
            return Err(self.rate_limited(until));
        }
        let mut request = self
            .http
            .get(url.clone())
            .header(ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, auth_header(token));
        }
        if conditional && let Some(etag) = &self.etag {
            request = request.header(IF_NONE_MATCH, etag.as_str());
        }
        let response = request
            .send()
            .await
            .map_err(|source| ReleasesError::Request {
                url: url.to_string(),
                source,
            })?;

        let status = response.status();
        let now = SystemTime::now();
        if matches!(
            status,
            StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
        ) {
            let headers = response.headers().clone();
            let body = read_text(response, 4096).await;
            if let Some(until) = rate_limit_end(status, &headers, &body, now) {
                self.blocked_until = Some(until);
                self.log_rate_limit(until);
                return Err(self.rate_limited(until));
            }
            return Err(ReleasesError::Status {
                url: url.to_string(),
                status,
                body: excerpt(&body),
            });
        }
        // An exhausted budget on a successful response blocks the next request until the reset.
        if header_number(response.headers(), "x-ratelimit-remaining") == Some(0) {
            self.blocked_until = header_number(response.headers(), "x-ratelimit-reset")
                .map(|reset| clamp_wait(epoch(reset), now));
        }
        if status.is_success() || matches!(status, StatusCode::NOT_MODIFIED | StatusCode::NOT_FOUND)
        {
            if self.rate_limit_logged {
                self.rate_limit_logged = false;
                tracing::info!(api = %self.api_base, repo = %self.repo, "releases API responds again after a rate limit");
            }
            return Ok(response);
        }
        let body = read_text(response, 4096).await;
        Err(ReleasesError::Status {
            url: url.to_string(),
            status,
            body: excerpt(&body),
        })
    }

    fn log_rate_limit(&mut self, until: SystemTime) {
        if !self.rate_limit_logged {
            self.rate_limit_logged = true;
            tracing::warn!(
                api = %self.api_base,
                repo = %self.repo,
                until = %DateTime::<Utc>::from(until).to_rfc3339(),
                "rate limited by the releases API; waiting"
            );
        }
    }

    fn rate_limited(&self, until: SystemTime) -> ReleasesError {
        ReleasesError::RateLimited {
            api: self.api_base.to_string(),
            until,
        }
    }
}

/// `token` is the scheme GitHub, Gitea and Forgejo all accept for personal access tokens.
pub fn auth_header(token: &Secret) -> HeaderValue {
    let mut value = HeaderValue::from_str(&format!("token {}", token.expose()))
        .unwrap_or_else(|_| HeaderValue::from_static("token invalid"));
    value.set_sensitive(true);
    value
}

/// Returns when a rate limit ends, if a 403 or 429 is one: by `retry-after` first, then by an
/// exhausted `x-ratelimit-remaining` with its reset, then by a body mentioning "rate limit"
/// (a secondary limit), which waits a minute. Other 403s are real permission errors.
pub fn rate_limit_end(
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
    now: SystemTime,
) -> Option<SystemTime> {
    if let Some(seconds) = header_number(headers, RETRY_AFTER.as_str()) {
        return Some(clamp_wait(now + Duration::from_secs(seconds), now));
    }
    if header_number(headers, "x-ratelimit-remaining") == Some(0) {
        let reset = header_number(headers, "x-ratelimit-reset").map(epoch);
        return Some(clamp_wait(
            reset.unwrap_or(now + SECONDARY_RATE_LIMIT_WAIT),
            now,
        ));
    }
    if status == StatusCode::TOO_MANY_REQUESTS || body.to_ascii_lowercase().contains("rate limit") {
        return Some(now + SECONDARY_RATE_LIMIT_WAIT);
    }
    None
}

fn epoch(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
}

/// Keeps a wait between one second (a reset already past still means "not now") and
/// [`MAX_RATE_LIMIT_WAIT`].
fn clamp_wait(until: SystemTime, now: SystemTime) -> SystemTime {
    let wait = until.duration_since(now).unwrap_or_default();
    now + wait.clamp(Duration::from_secs(1), MAX_RATE_LIMIT_WAIT)
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_string)
}

fn header_number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Returns the `rel="next"` URL of an RFC 8288 `Link` header, which GitHub and Gitea both
/// send.
fn next_link(headers: &HeaderMap) -> Option<Url> {
    let value = headers.get(LINK)?.to_str().ok()?;
    value.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|param| param.trim().replace(' ', "") == "rel=\"next\"");
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        if is_next {
            Url::parse(target).ok()
        } else {
            None
        }
    })
}

/// Reads one page: its releases, how many entries were skipped as malformed, and whether the
/// page was full (so another may follow).
async fn read_page(
    response: Response,
    url: &Url,
) -> Result<(Vec<Release>, usize, bool), ReleasesError> {
    let invalid = |reason: String| ReleasesError::InvalidBody {
        url: url.to_string(),
        reason,
    };
    let body = read_capped(response, MAX_PAGE_BYTES)
        .await
        .map_err(|error| invalid(error.to_string()))?;
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&body)
        .map_err(|error| invalid(format!("expected a JSON array of releases: {error}")))?;
    let full = entries.len() >= PER_PAGE;
    let total = entries.len();
    let releases: Vec<Release> = entries
        .into_iter()
        .filter_map(|entry| serde_json::from_value(entry).ok())
        .collect();
    let skipped = total - releases.len();
    Ok((releases, skipped, full))
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the body failed: {0}")]
    Stream(#[from] reqwest::Error),
}

/// Reads a whole body, failing once it passes `limit` bytes.
pub async fn read_capped(response: Response, limit: u64) -> Result<Vec<u8>, ReadError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit)
    {
        return Err(ReadError::TooLarge { limit });
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(ReadError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn read_text(response: Response, limit: u64) -> String {
    match read_capped(response, limit).await {
        Ok(body) => String::from_utf8_lossy(&body).into_owned(),
        Err(error) => format!("({error})"),
    }
}

/// Returns the first 200 characters of an error body, on one line.
fn excerpt(body: &str) -> String {
    let line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn retry_after_wins() {
        let now = SystemTime::now();
        let map = headers(&[("retry-after", "30"), ("x-ratelimit-remaining", "0")]);
        let until = rate_limit_end(StatusCode::FORBIDDEN, &map, "", now).unwrap();
        assert_eq!(until, now + Duration::from_secs(30));
    }

    #[test]
    fn exhausted_budget_waits_for_reset() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let map = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1120"),
        ]);
        let until = rate_limit_end(StatusCode::FORBIDDEN, &map, "", now).unwrap();
        assert_eq!(until, epoch(1120));
    }

    #[test]
    fn reset_far_ahead_is_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let map = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "999999"),
        ]);
        let until = rate_limit_end(StatusCode::FORBIDDEN, &map, "", now).unwrap();
        assert_eq!(until, now + MAX_RATE_LIMIT_WAIT);
    }

    #[test]
    fn secondary_limit_found_in_body() {
        let now = SystemTime::now();
        let body = r#"{"message":"You have exceeded a secondary rate limit."}"#;
        let until = rate_limit_end(StatusCode::FORBIDDEN, &HeaderMap::new(), body, now);
        assert_eq!(until, Some(now + SECONDARY_RATE_LIMIT_WAIT));
    }

    #[test]
    fn plain_forbidden_is_not_rate_limit() {
        let body = r#"{"message":"Resource not accessible by personal access token"}"#;
        let map = headers(&[("x-ratelimit-remaining", "4999")]);
        assert_eq!(
            rate_limit_end(StatusCode::FORBIDDEN, &map, body, SystemTime::now()),
            None
        );
    }

    #[test]
    fn next_link_is_parsed() {
        let map = headers(&[(
            "link",
            r#"<https://api.example/repos/o/r/releases?page=2>; rel="next", <https://api.example/repos/o/r/releases?page=9>; rel="last""#,
        )]);
        let next = next_link(&map).unwrap();
        assert_eq!(
            next.as_str(),
            "https://api.example/repos/o/r/releases?page=2"
        );
    }

    #[test]
    fn release_json_parses() {
        let json = r#"{"tag_name":"v1.0.0","draft":false,"prerelease":false,
            "published_at":"2024-05-01T12:00:00Z","name":null,
            "assets":[{"name":"site.tar.gz","size":12,"digest":"sha256:00",
            "browser_download_url":"https://example/site.tar.gz","download_count":3}]}"#;
        let release: Release = serde_json::from_str(json).unwrap();
        assert_eq!(release.tag_name, "v1.0.0");
        assert_eq!(release.assets[0].digest.as_deref(), Some("sha256:00"));
    }

    #[test]
    fn tag_url_keeps_tag_in_one_segment() {
        let repo = Repo {
            owner: "acme".to_string(),
            name: "wiki".to_string(),
        };
        let api = Url::parse("https://git.example.org/api/v1").unwrap();
        let client = ReleasesClient::new(api, repo, None).unwrap();
        for tag in ["../x", "a?b#c", "%2e%2e", "v1 $(x);y"] {
            let url = client.tag_url(tag);
            let segments: Vec<&str> = url.path_segments().unwrap().collect();
            assert_eq!(segments.len(), 8, "{tag:?} gave {url}");
            assert!(url.query().is_none() && url.fragment().is_none(), "{url}");
            assert!(!url.path().contains("/../"), "{url}");
        }
    }

    #[test]
    fn token_header_is_sensitive() {
        let value = auth_header(&Secret::new("abc"));
        assert!(value.is_sensitive());
    }
}

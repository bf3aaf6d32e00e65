//! A fake of GitHub's releases API: `GET /repos/{owner}/{repo}/releases` with pages, ETags
//! and rate limits, and the asset files its JSON links to.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::fake_api::{FakeHttp, Recorded, respond};
use warp::http::Response;

/// A release to publish on the fake.
#[derive(Debug, Clone)]
pub struct FakeRelease {
    pub tag: String,
    pub published_at: String,
    pub prerelease: bool,
    pub draft: bool,
    pub assets: Vec<FakeAsset>,
}

#[derive(Debug, Clone)]
pub struct FakeAsset {
    pub name: String,
    pub content: Vec<u8>,
    /// The `digest` field; by default the true SHA-256 of `content`.
    pub digest: Option<String>,
}

impl FakeRelease {
    pub fn new(tag: &str, published_at: &str) -> Self {
        FakeRelease {
            tag: tag.to_string(),
            published_at: published_at.to_string(),
            prerelease: false,
            draft: false,
            assets: Vec::new(),
        }
    }

    pub fn prerelease(mut self) -> Self {
        self.prerelease = true;
        self
    }

    pub fn asset(mut self, name: &str, content: Vec<u8>) -> Self {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&content)));
        self.assets.push(FakeAsset {
            name: name.to_string(),
            content,
            digest: Some(digest),
        });
        self
    }

    pub fn asset_with_digest(mut self, name: &str, content: Vec<u8>, digest: &str) -> Self {
        self.assets.push(FakeAsset {
            name: name.to_string(),
            content,
            digest: Some(digest.to_string()),
        });
        self
    }
}

#[derive(Default)]
struct State {
    /// Newest first, as GitHub lists them.
    releases: Vec<FakeRelease>,
    /// While set, every request gets a 403 rate-limit answer with this reset time.
    rate_limited_until: Option<SystemTime>,
    /// Answered with 404 for every releases request.
    missing: bool,
}

/// The fake API; dropping it stops the server.
pub struct FakeGithub {
    pub http: FakeHttp,
    state: Arc<Mutex<State>>,
}

impl FakeGithub {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let base = Arc::new(Mutex::new(String::new()));
        let (handler_state, handler_base) = (state.clone(), base.clone());
        let http = FakeHttp::start(Arc::new(move |request: &Recorded| {
            let state = handler_state.lock().unwrap();
            let base = handler_base.lock().unwrap().clone();
            answer(&state, &base, request)
        }))
        .await;
        *base.lock().unwrap() = http.base();
        FakeGithub { http, state }
    }

    pub fn api_base(&self) -> String {
        self.http.base()
    }

    /// Publishes a release as the newest in the list.
    pub fn publish(&self, release: FakeRelease) {
        self.state.lock().unwrap().releases.insert(0, release);
    }

    /// Answers every request with a 403 rate limit that resets after `wait`.
    pub fn rate_limit_for(&self, wait: Duration) {
        self.state.lock().unwrap().rate_limited_until = Some(SystemTime::now() + wait);
    }

    pub fn set_missing(&self, missing: bool) {
        self.state.lock().unwrap().missing = missing;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.http.requests()
    }

    /// Requests for release lists, leaving out asset downloads.
    pub fn list_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|request| request.path.ends_with("/releases"))
            .collect()
    }
}

fn answer(state: &State, base: &str, request: &Recorded) -> Response<Vec<u8>> {
    if let Some(until) = state.rate_limited_until
        && SystemTime::now() < until
    {
        let reset = until
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 1;
        return Response::builder()
            .status(403)
            .header("x-ratelimit-remaining", "0")
            .header("x-ratelimit-reset", reset.to_string())
            .body(br#"{"message":"API rate limit exceeded for 127.0.0.1."}"#.to_vec())
            .unwrap();
    }
    if request.path.starts_with("/download/") {
        return download(state, request);
    }
    if let Some((_, tag)) = request.path.split_once("/releases/tags/") {
        return by_tag(state, base, tag);
    }
    if !request.path.ends_with("/releases") || request.header("user-agent").is_none() {
        return respond(404, r#"{"message":"Not Found"}"#);
    }
    if state.missing {
        return respond(404, r#"{"message":"Not Found"}"#);
    }
    list(state, base, request)
}

/// One page of the list. The ETag covers the page's JSON, so it changes with any release.
fn list(state: &State, base: &str, request: &Recorded) -> Response<Vec<u8>> {
    let per_page: usize = request
        .param("per_page")
        .and_then(|value| value.parse().ok())
        .unwrap_or(30);
    let page: usize = request
        .param("page")
        .and_then(|value| value.parse().ok())
        .unwrap_or(1);
    let start = (page - 1) * per_page;
    let entries: Vec<Value> = state
        .releases
        .iter()
        .skip(start)
        .take(per_page)
        .map(|release| release_json(base, release))
        .collect();
    let body = serde_json::to_vec(&entries).unwrap();
    let etag = format!("W/\"{}\"", hex::encode(&Sha256::digest(&body)[..8]));
    if request.header("if-none-match") == Some(etag.as_str()) {
        return Response::builder()
            .status(304)
            .header("etag", etag)
            .body(Vec::new())
            .unwrap();
    }
    let mut response = Response::builder()
        .status(200)
        .header("etag", etag)
        .header("content-type", "application/json")
        .header("x-ratelimit-remaining", "4999");
    if start + per_page < state.releases.len() {
        let next = format!(
            "<{base}{}?per_page={per_page}&page={}>; rel=\"next\"",
            request.path,
            page + 1
        );
        response = response.header("link", next);
    }
    response.body(body).unwrap()
}

fn by_tag(state: &State, base: &str, encoded_tag: &str) -> Response<Vec<u8>> {
    let found = state
        .releases
        .iter()
        .find(|release| urlencode(&release.tag) == encoded_tag);
    match found {
        Some(release) => respond(200, release_json(base, release).to_string()),
        None => respond(404, r#"{"message":"Not Found"}"#),
    }
}

fn release_json(base: &str, release: &FakeRelease) -> Value {
    let assets: Vec<Value> = release
        .assets
        .iter()
        .enumerate()
        .map(|(index, asset)| {
            json!({
                "id": index,
                "name": asset.name,
                "size": asset.content.len(),
                "digest": asset.digest,
                "download_count": 0,
                "browser_download_url":
                    format!("{base}/download/{}/{}", urlencode(&release.tag), asset.name),
            })
        })
        .collect();
    json!({
        "tag_name": release.tag,
        "name": release.tag,
        "draft": release.draft,
        "prerelease": release.prerelease,
        "published_at": release.published_at,
        "body": "Release notes",
        "assets": assets,
    })
}

fn download(state: &State, request: &Recorded) -> Response<Vec<u8>> {
    let rest = request.path.trim_start_matches("/download/");
    let found = state.releases.iter().find_map(|release| {
        let prefix = format!("{}/", urlencode(&release.tag));
        let name = rest.strip_prefix(&prefix)?;
        release.assets.iter().find(|asset| asset.name == name)
    });
    match found {
        Some(asset) => respond(200, asset.content.clone()),
        None => respond(404, "Not Found"),
    }
}

/// Percent-encodes everything but unreserved characters, as a path segment needs.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

//! A fake Discord REST API on 127.0.0.1 for tests.
//!
//! It responds to the calls the discord service makes with the shapes Discord documents: create
//! message, execute webhook, edit an interaction's original response, interaction callbacks,
//! guild command registration, the current user, and the gateway URL (pointing back at this
//! server, which refuses the WebSocket upgrade, so a client never falls back to Discord's real
//! gateway). Like Discord, it rejects message content over 2000 characters, empty messages and
//! embeds over the limits with a 400. Every request is recorded, and replies can be scripted:
//! 429 with `retry_after`, 500, 400, 404, 401 or 403.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio_util::task::AbortOnDropHandle;
use warp::Filter;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::{Reply, Response};

/// Application (and bot user) id the fake reports.
pub const APPLICATION_ID: u64 = 4_000_000_000_000_001;

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path without the query, such as `/api/v10/channels/1/messages`.
    pub path: String,
    pub query: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    /// The body parsed as JSON, or `Value::Null` when empty or not JSON.
    pub body: Value,
    pub at: Instant,
}

impl RecordedRequest {
    /// Returns whether this is a create-message or execute-webhook call.
    pub fn is_message_post(&self) -> bool {
        self.method == "POST"
            && (self.path.ends_with("/messages") && self.path.contains("/channels/")
                || self.path.contains("/webhooks/"))
    }

    /// Returns the message content, or "" when the body has none.
    pub fn content(&self) -> &str {
        self.body["content"].as_str().unwrap_or_default()
    }
}

/// Reply the fake sends in place of the normal one.
#[derive(Debug, Clone, PartialEq)]
pub enum Scripted {
    /// The normal reply, as if nothing were scripted.
    Normal,
    /// 429 with Discord's body `{"message","retry_after","global"}` and a `Retry-After` header.
    RateLimited { retry_after_secs: f64, global: bool },
    /// The status with Discord's JSON error body for it (400, 401, 403, 404, 500, 502, ...).
    Status(u16),
}

#[derive(Default)]
struct State {
    requests: Vec<RecordedRequest>,
    script: VecDeque<Scripted>,
    /// Answer to every scripted-capable request once the script is empty.
    persistent: Option<Scripted>,
    /// Answer to every scripted-capable request until the instant, when no script applies.
    until: Option<(Scripted, Instant)>,
    /// Message posts answered with a 2xx, in arrival order.
    delivered: Vec<RecordedRequest>,
    next_id: u64,
}

/// The running fake; the server stops when this is dropped.
pub struct FakeDiscord {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _server: AbortOnDropHandle<()>,
}

impl FakeDiscord {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake");
        let addr = listener.local_addr().expect("fake address");
        let state = Arc::new(Mutex::new(State {
            next_id: 1_000,
            ..State::default()
        }));

        let filter_state = state.clone();
        let routes = warp::method()
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .map(
                move |method: Method, path: warp::path::FullPath, query, headers, body| {
                    let request = record(method, path.as_str(), query, &headers, body);
                    answer(&filter_state, addr, request)
                },
            );
        let server = tokio::spawn(warp::serve(routes).incoming(listener).run());
        Self {
            addr,
            state,
            _server: AbortOnDropHandle::new(server),
        }
    }

    /// Base URL to use as `discord.api_proxy`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Returns every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Create-message and execute-webhook requests so far, whatever they were answered.
    pub fn message_posts(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(RecordedRequest::is_message_post)
            .collect()
    }

    /// Answers the next requests (all but the gateway URL) with these replies, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Scripted>) {
        self.lock().script.extend(replies);
    }

    /// Answers every request (all but the gateway URL) with `reply` once the script is
    /// used up, until set back to `None`.
    pub fn answer_always(&self, reply: Option<Scripted>) {
        self.lock().persistent = reply;
    }

    /// Answers every request (all but the gateway URL) with `reply` for `period` from now,
    /// once the script is used up.
    pub fn answer_for(&self, reply: Scripted, period: Duration) {
        self.lock().until = Some((reply, Instant::now() + period));
    }

    /// Message posts answered with a 2xx so far, in arrival order.
    pub fn delivered_posts(&self) -> Vec<RecordedRequest> {
        self.lock().delivered.clone()
    }

    /// Waits until `count` message posts arrived, or panics after `timeout`.
    pub async fn wait_for_posts(&self, count: usize, timeout: Duration) -> Vec<RecordedRequest> {
        let deadline = Instant::now() + timeout;
        loop {
            let posts = self.message_posts();
            if posts.len() >= count {
                return posts;
            }
            assert!(
                Instant::now() < deadline,
                "expected {count} message posts within {timeout:?}, got {}",
                posts.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake state lock")
    }
}

fn record(
    method: Method,
    path: &str,
    query: String,
    headers: &HeaderMap,
    body: Bytes,
) -> RecordedRequest {
    RecordedRequest {
        method: method.as_str().to_owned(),
        path: path.to_owned(),
        query,
        headers: headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    value.to_str().unwrap_or("<binary>").to_owned(),
                )
            })
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        at: Instant::now(),
    }
}

fn answer(state: &Mutex<State>, addr: SocketAddr, request: RecordedRequest) -> Response {
    let response = reply(state, addr, request.clone());
    if response.status().is_success() && request.is_message_post() {
        state
            .lock()
            .expect("fake state lock")
            .delivered
            .push(request);
    }
    response
}

fn reply(state: &Mutex<State>, addr: SocketAddr, request: RecordedRequest) -> Response {
    let mut state = state.lock().expect("fake state lock");
    state.requests.push(request.clone());
    let path = request
        .path
        .strip_prefix("/api/v10")
        .unwrap_or(&request.path)
        .to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();

    match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["gateway"]) => {
            return json_reply(StatusCode::OK, json!({ "url": gateway_url(addr) }));
        }
        ("GET", ["gateway", "bot"]) => {
            return json_reply(
                StatusCode::OK,
                json!({
                    "url": gateway_url(addr),
                    "shards": 1,
                    "session_start_limit": {
                        "total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1
                    }
                }),
            );
        }
        ("GET", ["gateway-ws"]) => return status_reply(StatusCode::NOT_FOUND),
        _ => {}
    }

    let timed = state
        .until
        .clone()
        .filter(|(_, until)| Instant::now() < *until)
        .map(|(reply, _)| reply);
    let scripted = state
        .script
        .pop_front()
        .or(timed)
        .or_else(|| state.persistent.clone());
    if let Some(scripted) = scripted.filter(|scripted| *scripted != Scripted::Normal) {
        return scripted_reply(&scripted);
    }

    state.next_id += 1;
    let id = state.next_id.to_string();
    match (request.method.as_str(), segments.as_slice()) {
        ("POST", ["channels", channel_id, "messages"]) => {
            message_reply(&request.body, channel_id, &id, None)
        }
        ("POST", ["webhooks", webhook_id, _token]) => {
            if request.query.split('&').any(|pair| pair == "wait=true") {
                message_reply(&request.body, "1", &id, Some(webhook_id))
            } else {
                validate_message(&request.body)
                    .unwrap_or_else(|| status_reply(StatusCode::NO_CONTENT))
            }
        }
        ("PATCH", ["webhooks", _application, _token, "messages", "@original"]) => {
            message_reply(&request.body, "1", &id, None)
        }
        ("POST", ["interactions", _id, _token, "callback"]) => status_reply(StatusCode::NO_CONTENT),
        ("PUT", ["applications", _application, "guilds", guild_id, "commands"]) => {
            commands_reply(&request.body, Some(guild_id), &mut state.next_id)
        }
        ("PUT", ["applications", _application, "commands"]) => {
            commands_reply(&request.body, None, &mut state.next_id)
        }
        ("GET", ["users", "@me"]) => json_reply(StatusCode::OK, bot_user()),
        _ => error_reply(StatusCode::NOT_FOUND, 0, "404: Not Found"),
    }
}

fn gateway_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/gateway-ws")
}

fn bot_user() -> Value {
    json!({
        "id": APPLICATION_ID.to_string(),
        "username": "almagest",
        "discriminator": "0",
        "global_name": null,
        "avatar": null,
        "bot": true,
    })
}

fn message_reply(body: &Value, channel_id: &str, id: &str, webhook_id: Option<&str>) -> Response {
    if let Some(error) = validate_message(body) {
        return error;
    }
    let mut message = json!({
        "id": id,
        "channel_id": channel_id,
        "author": bot_user(),
        "content": body["content"].as_str().unwrap_or_default(),
        "timestamp": "2026-01-01T00:00:00.000000+00:00",
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": body.get("embeds").cloned().unwrap_or(json!([])),
        "pinned": false,
        "type": 0,
    });
    if let Some(webhook_id) = webhook_id {
        message["webhook_id"] = json!(webhook_id);
    }
    json_reply(StatusCode::OK, message)
}

/// Checks a message body against Discord's limits; `Some` is the 400 Discord would send.
fn validate_message(body: &Value) -> Option<Response> {
    let chars = |value: &Value| value.as_str().map_or(0, |text| text.chars().count());
    let content = chars(&body["content"]);
    let embeds = body["embeds"].as_array().cloned().unwrap_or_default();

    if content == 0 && embeds.is_empty() {
        return Some(error_reply(
            StatusCode::BAD_REQUEST,
            50006,
            "Cannot send an empty message",
        ));
    }
    if content > 2000 {
        return Some(form_error("content", "Must be 2000 or fewer in length."));
    }
    for embed in &embeds {
        let fields = embed["fields"].as_array().cloned().unwrap_or_default();
        let mut total = chars(&embed["title"]) + chars(&embed["description"]);
        total += chars(&embed["footer"]["text"]);
        if chars(&embed["title"]) > 256 || chars(&embed["description"]) > 4096 || fields.len() > 25
        {
            return Some(form_error(
                "embeds.0",
                "Embed size exceeds maximum size of 6000",
            ));
        }
        for field in &fields {
            let (name, value) = (chars(&field["name"]), chars(&field["value"]));
            if name == 0 || name > 256 || value == 0 || value > 1024 {
                return Some(form_error("embeds.0.fields", "Invalid embed field"));
            }
            total += name + value;
        }
        if total > 6000 {
            return Some(form_error(
                "embeds.0",
                "Embed size exceeds maximum size of 6000",
            ));
        }
    }
    None
}

fn commands_reply(body: &Value, guild_id: Option<&str>, next_id: &mut u64) -> Response {
    let commands: Vec<Value> = body
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut command| {
            *next_id += 1;
            command["id"] = json!(next_id.to_string());
            command["application_id"] = json!(APPLICATION_ID.to_string());
            command["guild_id"] = json!(guild_id);
            command["version"] = json!("1");
            if command.get("type").is_none() {
                command["type"] = json!(1);
            }
            command
        })
        .collect();
    json_reply(StatusCode::OK, Value::Array(commands))
}

fn scripted_reply(scripted: &Scripted) -> Response {
    match *scripted {
        Scripted::RateLimited {
            retry_after_secs,
            global,
        } => {
            let mut response = json_reply(
                StatusCode::TOO_MANY_REQUESTS,
                json!({
                    "message": "You are being rate limited.",
                    "retry_after": retry_after_secs,
                    "global": global,
                }),
            );
            let headers = response.headers_mut();
            let whole_secs = retry_after_secs.ceil() as u64;
            headers.insert("retry-after", HeaderValue::from(whole_secs));
            let scope = if global { "global" } else { "user" };
            headers.insert("x-ratelimit-scope", HeaderValue::from_static(scope));
            response
        }
        Scripted::Normal => unreachable!("a normal answer is not scripted"),
        Scripted::Status(code) => {
            let status = StatusCode::from_u16(code).expect("scripted status is a valid code");
            match code {
                400 => form_error("content", "Invalid Form Body"),
                401 => error_reply(status, 0, "401: Unauthorized"),
                403 => error_reply(status, 50013, "Missing Permissions"),
                404 => error_reply(status, 10003, "Unknown Channel"),
                502 => {
                    let mut response = "<html>502 Bad Gateway</html>".into_response();
                    *response.status_mut() = status;
                    response
                }
                _ => error_reply(status, 0, &format!("{code}: {}", status.as_str())),
            }
        }
    }
}

fn form_error(path: &str, message: &str) -> Response {
    let errors =
        json!({ path: { "_errors": [{ "code": "BASE_TYPE_BAD_LENGTH", "message": message }] } });
    json_reply(
        StatusCode::BAD_REQUEST,
        json!({ "code": 50035, "errors": errors, "message": "Invalid Form Body" }),
    )
}

fn error_reply(status: StatusCode, code: u32, message: &str) -> Response {
    json_reply(status, json!({ "code": code, "message": message }))
}

fn json_reply(status: StatusCode, body: Value) -> Response {
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

fn status_reply(status: StatusCode) -> Response {
    warp::reply::with_status(warp::reply(), status).into_response()
}

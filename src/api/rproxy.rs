//! Request/reply through Redis: an HTTP request becomes an `http.request` message on
//! `P:q:<stub>`, a worker publishes an `http.reply` with the same id on the `reply_to`
//! channel (`P:rproxy:<instance>`), and the reply becomes the HTTP response.
//!
//! The API actor subscribes the reply channel and hands each reply to [`Pending::complete`],
//! which wakes the request waiting for that id. Waiting requests are capped, and each one
//! removes its entry when it ends (reply, timeout or client gone), so nothing accumulates.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use warp::http::header::{AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HeaderName};
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::Response;

use super::error::ApiError;

/// Maximum number of requests waiting for a reply at once. Each keeps a client connection
/// open. More than this on a home server means workers are stuck, so rejecting is better
/// than piling up.
const MAX_PENDING: usize = 1_024;

/// Headers that describe one connection rather than the request (RFC 9110, section 7.6.1),
/// plus credentials meant for this API. None of them is forwarded in either direction.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// `{"type":"http.request","id","reply_to","method","path","query","headers","body",
/// "body_base64"}` on `P:q:<stub>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    pub reply_to: String,
    pub method: String,
    /// The path after `/api/rproxy/<stub>`, starting with `/`.
    pub path: String,
    /// The query string without `?` and without the API's own `wait` parameter.
    pub query: String,
    /// Lower-case names, values in order.
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: String,
    /// Whether `body` is base64 (the request body was not UTF-8).
    pub body_base64: bool,
}

/// `{"id","status","headers","body","body_base64"}` from a worker; only `id` and `status`
/// are required.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct HttpReply {
    pub id: String,
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub body_base64: bool,
}

impl HttpRequest {
    /// Builds the message for one HTTP request.
    pub fn new(
        id: String,
        reply_to: String,
        method: &Method,
        path: &str,
        query: &str,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> HttpRequest {
        let (body, body_base64) = match std::str::from_utf8(body) {
            Ok(text) => (text.to_string(), false),
            Err(_) => (BASE64.encode(body), true),
        };
        HttpRequest {
            kind: "http.request".to_string(),
            id,
            reply_to,
            method: method.as_str().to_string(),
            path: path.to_string(),
            query: strip_wait(query),
            headers: forwarded_headers(headers),
            body,
            body_base64,
        }
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("an http.request always serializes")
    }
}

/// Whether the query contains `wait=false`, which requests no waiting for the reply.
pub fn wants_no_wait(query: &str) -> bool {
    url::form_urlencoded::parse(query.as_bytes())
        .any(|(name, value)| name == "wait" && value.eq_ignore_ascii_case("false"))
}

/// Removes the `wait` parameter from the query, because it is for the API, not the worker.
fn strip_wait(query: &str) -> String {
    if !query
        .split('&')
        .any(|pair| pair == "wait" || pair.starts_with("wait="))
    {
        return query.to_string();
    }
    query
        .split('&')
        .filter(|pair| !(pair.is_empty() || *pair == "wait" || pair.starts_with("wait=")))
        .collect::<Vec<_>>()
        .join("&")
}

/// Names listed in `Connection`, which are hop-by-hop for this message too.
fn connection_options(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect()
}

fn is_hop_by_hop(name: &str, options: &[String]) -> bool {
    HOP_BY_HOP.contains(&name) || options.iter().any(|option| option == name)
}

/// Returns the request headers a worker gets: all but hop-by-hop ones and `Authorization`.
fn forwarded_headers(headers: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let options = connection_options(headers);
    let mut forwarded: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if *name == AUTHORIZATION || is_hop_by_hop(name.as_str(), &options) {
            continue;
        }
        forwarded
            .entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    forwarded
}

impl HttpReply {
    pub fn decode(payload: &str) -> Result<HttpReply, serde_json::Error> {
        serde_json::from_str(payload)
    }

    /// Turns the reply into the HTTP response; an invalid status or body is a 502.
    /// Hop-by-hop headers and `Content-Length` are dropped (the server sets the length), and
    /// so are headers whose name or value HTTP does not allow.
    pub fn into_response(self) -> Result<Response, ApiError> {
        let status = StatusCode::from_u16(self.status)
            .ok()
            .filter(|status| status.as_u16() >= 200)
            .ok_or_else(|| {
                ApiError::BadGateway(format!(
                    "the worker replied with invalid status {}: use 200 to 599",
                    self.status
                ))
            })?;
        let body = if self.body_base64 {
            BASE64.decode(self.body.as_bytes()).map_err(|error| {
                ApiError::BadGateway(format!("the worker's body is not valid base64: {error}"))
            })?
        } else {
            self.body.into_bytes()
        };
        let mut response = Response::new(body.into());
        *response.status_mut() = status;
        let options: Vec<String> = self
            .headers
            .get("connection")
            .map(|values| {
                values
                    .iter()
                    .map(|value| value.to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default();
        let mut skipped = 0u64;
        for (name, values) in &self.headers {
            let lower = name.to_ascii_lowercase();
            if lower == CONTENT_LENGTH.as_str() || is_hop_by_hop(&lower, &options) {
                continue;
            }
            let Ok(name) = HeaderName::from_bytes(lower.as_bytes()) else {
                skipped += values.len() as u64;
                continue;
            };
            for value in values {
                match HeaderValue::from_str(value) {
                    Ok(value) => {
                        response.headers_mut().append(name.clone(), value);
                    }
                    Err(_) => skipped += 1,
                }
            }
        }
        if skipped > 0 {
            metrics::counter!("almagest_api_rproxy_reply_headers_invalid_total").increment(skipped);
            tracing::debug!(skipped, "dropped invalid headers of an rproxy reply");
        }
        Ok(response)
    }
}

/// The outcome of a wait: the worker's reply, or why its reply was unusable.
pub type ReplyOutcome = Result<HttpReply, String>;

/// Requests waiting for their reply, by id.
#[derive(Default)]
pub struct Pending {
    waiting: Mutex<HashMap<String, oneshot::Sender<ReplyOutcome>>>,
}

/// One waiting request. Dropping it removes the entry, whether a reply came or not.
pub struct Waiter {
    id: String,
    pending: Arc<Pending>,
    receiver: oneshot::Receiver<ReplyOutcome>,
}

impl Waiter {
    pub fn receiver(&mut self) -> &mut oneshot::Receiver<ReplyOutcome> {
        &mut self.receiver
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut table = self.pending.table();
        table.remove(&self.id);
        metrics::gauge!("almagest_api_rproxy_pending").set(table.len() as f64);
    }
}

impl Pending {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<ReplyOutcome>>> {
        self.waiting
            .lock()
            .expect("pending table lock is never poisoned: no code panics while holding it")
    }

    /// Registers `id` before its request is published, so that even an instant reply finds
    /// it. Fails with 503 when [`MAX_PENDING`] requests already wait.
    pub fn register(self: &Arc<Self>, id: &str) -> Result<Waiter, ApiError> {
        let (sender, receiver) = oneshot::channel();
        let mut table = self.table();
        if table.len() >= MAX_PENDING {
            return Err(ApiError::Unavailable(format!(
                "{MAX_PENDING} requests are already waiting for replies: retry later"
            )));
        }
        table.insert(id.to_string(), sender);
        metrics::gauge!("almagest_api_rproxy_pending").set(table.len() as f64);
        Ok(Waiter {
            id: id.to_string(),
            pending: Arc::clone(self),
            receiver,
        })
    }

    /// Hands a reply to the request waiting for its id. Returns false when none waits,
    /// because it timed out, its client left, or it was sent with `wait=false`.
    pub fn complete(&self, reply: HttpReply) -> bool {
        let id = reply.id.clone();
        self.resolve(&id, Ok(reply))
    }

    /// Tells the request waiting for `id` that its reply was invalid, so that it returns 502
    /// at once instead of 504 after the timeout. Returns false when none waits.
    pub fn fail(&self, id: &str, reason: String) -> bool {
        self.resolve(id, Err(reason))
    }

    fn resolve(&self, id: &str, outcome: ReplyOutcome) -> bool {
        let sender = self.table().remove(id);
        match sender {
            Some(sender) => sender.send(outcome).is_ok(),
            None => false,
        }
    }

    /// Ends every wait, so that each waiting request returns 503 at once.
    pub fn abandon_all(&self) {
        self.table().clear();
    }

    pub fn len(&self) -> usize {
        self.table().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn request_drops_hop_by_hop_and_authorization() {
        let headers = headers(&[
            ("authorization", "Bearer secret-token-value"),
            ("connection", "keep-alive, x-trace"),
            ("x-trace", "1"),
            ("te", "trailers"),
            ("accept", "text/plain"),
            ("accept", "application/json"),
        ]);
        let request = HttpRequest::new(
            "id1".into(),
            "p:rproxy:nas".into(),
            &Method::POST,
            "/a",
            "x=1&wait=false",
            &headers,
            &Bytes::from_static(b"hi"),
        );
        assert_eq!(request.headers.keys().collect::<Vec<_>>(), ["accept"]);
        assert_eq!(
            request.headers["accept"],
            ["text/plain", "application/json"]
        );
        assert_eq!(request.query, "x=1");
        assert!(!request.encode().contains("secret-token-value"));
    }

    #[test]
    fn binary_body_sent_as_base64() {
        let request = HttpRequest::new(
            "id".into(),
            "r".into(),
            &Method::PUT,
            "/",
            "",
            &HeaderMap::new(),
            &Bytes::from_static(b"\xff\x00"),
        );
        assert!(request.body_base64);
        assert_eq!(request.body, "/wA=");
    }

    #[test]
    fn wait_false_detected() {
        assert!(wants_no_wait("a=1&wait=false"));
        assert!(!wants_no_wait("wait=true"));
        assert!(!wants_no_wait(""));
    }

    #[test]
    fn reply_becomes_response() {
        let reply = HttpReply::decode(
            r#"{"id":"1","status":201,"headers":{"Content-Type":["text/plain"],"Content-Length":["99"],"Connection":["close"]},"body":"aGk=","body_base64":true}"#,
        )
        .unwrap();
        let response = reply.into_response().unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()["content-type"], "text/plain");
        assert!(response.headers().get("content-length").is_none());
        assert!(response.headers().get("connection").is_none());
    }

    #[test]
    fn reply_with_bad_status_is_502() {
        let reply = HttpReply::decode(r#"{"id":"1","status":42}"#).unwrap();
        let error = reply.into_response().unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn waiter_removed_on_drop() {
        let pending = Arc::new(Pending::default());
        let waiter = pending.register("a").unwrap();
        assert_eq!(pending.len(), 1);
        drop(waiter);
        assert!(pending.is_empty());
    }

    #[tokio::test]
    async fn reply_reaches_waiter() {
        let pending = Arc::new(Pending::default());
        let mut waiter = pending.register("a").unwrap();
        let reply = HttpReply::decode(r#"{"id":"a","status":200}"#).unwrap();
        assert!(pending.complete(reply.clone()));
        assert_eq!(waiter.receiver().await.unwrap(), Ok(reply.clone()));
        assert!(!pending.complete(reply));
    }

    #[tokio::test]
    async fn invalid_reply_fails_waiter() {
        let pending = Arc::new(Pending::default());
        let mut waiter = pending.register("a").unwrap();
        assert!(pending.fail("a", "missing field `status`".into()));
        assert_eq!(
            waiter.receiver().await.unwrap(),
            Err("missing field `status`".to_string())
        );
        assert!(!pending.fail("a", "again".into()));
    }
}

//! The request path shared by every route: find the route, reject blocked clients,
//! authenticate, apply the token's rate limit and check the method, then hand over to the
//! route's handler and record the outcome.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde_json::json;
use warp::http::header::HeaderName;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::reply::Response;

use super::auth::{AuthFailure, Token, Tokens};
use super::body::BodyStream;
use super::config::{ApiConfig, Scope};
use super::error::{ApiError, json_response, plain_not_found};
use super::metrics::{StubStats, record_request};
use super::ratelimit::{AuthFailures, Recorded, TokenLimits};
use super::routes::Route;
use super::rproxy::Pending;
use super::webhook::WebhookKeys;
use crate::bus::{Bus, BusError};

/// One HTTP request as the handlers see it.
pub struct Request {
    pub method: Method,
    /// The raw (percent-encoded) path.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    pub headers: HeaderMap,
    /// The TCP peer: the client, or a reverse proxy in front of it.
    pub peer: SocketAddr,
    pub body: BodyStream,
}

/// Everything the handlers share. One per start of the API service.
pub struct App {
    pub config: Arc<ApiConfig>,
    pub bus: Bus,
    pub tokens: Tokens,
    pub limits: TokenLimits,
    pub failures: AuthFailures,
    pub webhooks: WebhookKeys,
    pub pending: Arc<Pending>,
    pub stats: StubStats,
    /// True from bind until shutdown starts; `/readyz` reports it.
    pub serving: AtomicBool,
}

impl App {
    pub fn new(config: Arc<ApiConfig>, bus: Bus) -> App {
        App {
            tokens: Tokens::new(&config.tokens),
            limits: TokenLimits::new(&config),
            failures: AuthFailures::new(&config),
            webhooks: WebhookKeys::new(&config.webhooks),
            pending: Arc::new(Pending::default()),
            stats: StubStats::default(),
            serving: AtomicBool::new(false),
            config,
            bus,
        }
    }

    /// Answers one request and records its route, status and duration.
    pub async fn handle(&self, request: Request) -> Response {
        let started = Instant::now();
        let route = match Route::parse(&request.path, self.config.path_prefix.expose()) {
            Ok(Some(route)) => route,
            Ok(None) => {
                record_request("not_found", 404, started.elapsed());
                return plain_not_found();
            }
            Err(error) => {
                let response = error.into_response();
                record_request(
                    "invalid_path",
                    response.status().as_u16(),
                    started.elapsed(),
                );
                return response;
            }
        };
        let label = route.label();
        let response = self.dispatch(route, request).await.unwrap_or_else(|error| {
            if let ApiError::Bus(bus_error) = &error {
                super::metrics::record_bus_error(bus_error);
                // The gateway logs an outage once, so a failure per request during it goes to
                // the debug log and the counter only.
                if matches!(
                    bus_error,
                    BusError::Unavailable(_) | BusError::Timeout { .. }
                ) {
                    tracing::debug!(route = label, error = %bus_error, "bus unavailable");
                } else {
                    tracing::warn!(route = label, error = %bus_error, "bus operation failed");
                }
            }
            error.into_response()
        });
        record_request(label, response.status().as_u16(), started.elapsed());
        response
    }

    async fn dispatch(&self, route: Route, request: Request) -> Result<Response, ApiError> {
        match route {
            Route::Healthz => {
                route.check_method(&request.method)?;
                Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))
            }
            Route::Readyz => {
                route.check_method(&request.method)?;
                Ok(self.readiness())
            }
            Route::Webhook(ref stub) => {
                let client = self.client_address(&request);
                self.check_blocked(client)?;
                route.check_method(&request.method)?;
                self.webhook(stub, client, request).await
            }
            _ => {
                let client = self.client_address(&request);
                self.check_blocked(client)?;
                let index = self.authenticate(&request.headers, client, route.label())?;
                let token = self.tokens.get(index);
                self.check_rate(index, token)?;
                route.check_method(&request.method)?;
                self.dispatch_authenticated(route, token, request).await
            }
        }
    }

    async fn dispatch_authenticated(
        &self,
        route: Route,
        token: &Token,
        request: Request,
    ) -> Result<Response, ApiError> {
        match route {
            Route::Publish(stub) => self.publish(token, &stub, request).await,
            Route::Rproxy { stub, path } => self.rproxy(token, &stub, &path, request).await,
            Route::StubMetrics(stub) => {
                require_scope(token, Scope::Metrics)?;
                self.stub_metrics(&stub).await
            }
            Route::Key(key) => {
                require_scope(token, Scope::Keys)?;
                self.read_key(&key).await
            }
            Route::Status => {
                require_scope(token, Scope::Status)?;
                self.status().await
            }
            Route::DnsClients => {
                require_scope(token, Scope::Dns)?;
                self.dns_clients(&request.query).await
            }
            Route::DnsTop => {
                require_scope(token, Scope::Dns)?;
                self.dns_top(&request.query).await
            }
            Route::Metrics => {
                require_scope(token, Scope::Metrics)?;
                prometheus_text()
            }
            Route::Healthz | Route::Readyz | Route::Webhook(_) => {
                unreachable!("dispatch handles health checks and webhooks before authentication")
            }
        }
    }

    fn readiness(&self) -> Response {
        let bus = self.bus.is_connected();
        let serving = self.serving.load(Ordering::Acquire);
        let status = if bus && serving {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let body = json!({"ready": bus && serving, "bus_connected": bus, "serving": serving});
        json_response(status, &body)
    }

    /// The client's address: the TCP peer, or, when the peer is a trusted proxy, the
    /// rightmost `X-Forwarded-For` entry that is not a trusted proxy itself.
    pub fn client_address(&self, request: &Request) -> IpAddr {
        let peer = request.peer.ip().to_canonical();
        if !self.config.is_trusted_proxy(peer) {
            return peer;
        }
        let forwarded = HeaderName::from_static("x-forwarded-for");
        let hops: Vec<&str> = request
            .headers
            .get_all(forwarded)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(address) = parse_forwarded_address(hop) else {
                break;
            };
            client = address;
            if !self.config.is_trusted_proxy(address) {
                break;
            }
        }
        client
    }

    fn check_blocked(&self, client: IpAddr) -> Result<(), ApiError> {
        self.failures
            .check(client)
            .map_err(|retry_after| ApiError::TooManyRequests {
                message: "too many failed authentications from this address: retry later".into(),
                retry_after,
            })
    }

    fn authenticate(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
        route: &'static str,
    ) -> Result<usize, ApiError> {
        self.tokens.authenticate(headers).map_err(|failure| {
            self.record_auth_failure(client, route, failure.as_str());
            match failure {
                AuthFailure::Missing => {
                    ApiError::Unauthorized("missing token: send Authorization: Bearer <token>")
                }
                AuthFailure::Unknown => ApiError::Unauthorized("unknown token"),
            }
        })
    }

    /// Counts a failed authentication and logs the first of each address per window and
    /// the moment the address gets blocked, never each attempt.
    pub fn record_auth_failure(&self, client: IpAddr, route: &'static str, reason: &'static str) {
        metrics::counter!("almagest_api_auth_failures_total", "reason" => reason).increment(1);
        match self.failures.record(client) {
            Recorded::First => tracing::warn!(
                client = %client,
                route,
                reason,
                window_secs = self.config.auth_failure_window_secs,
                "authentication failed; further failures from this address in the window are \
                 counted, not logged"
            ),
            Recorded::Blocked => tracing::warn!(
                client = %client,
                failures = self.config.max_auth_failures,
                block_secs = self.config.auth_block_secs,
                "client address blocked after repeated authentication failures"
            ),
            Recorded::Again => {}
        }
    }

    fn check_rate(&self, index: usize, token: &Token) -> Result<(), ApiError> {
        self.limits.check(index).map_err(|retry_after| {
            metrics::counter!("almagest_api_rate_limited_total", "token" => token.name.clone())
                .increment(1);
            ApiError::TooManyRequests {
                message: format!("rate limit of token {:?} reached: retry later", token.name),
                retry_after,
            }
        })
    }
}

fn require_scope(token: &Token, scope: Scope) -> Result<(), ApiError> {
    if token.has_scope(scope) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "token {:?} lacks the scope {scope:?}",
            token.name,
            scope = scope.as_str()
        )))
    }
}

/// An `X-Forwarded-For` entry: an address, maybe with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(address) = entry.parse::<IpAddr>() {
        return Some(address.to_canonical());
    }
    entry
        .parse::<SocketAddr>()
        .ok()
        .map(|address| address.ip().to_canonical())
}

fn prometheus_text() -> Result<Response, ApiError> {
    let text = crate::telemetry::render_metrics()
        .ok_or_else(|| ApiError::Internal("the metrics recorder is not installed".into()))?;
    let mut response = Response::new(text.into());
    response.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// Builds the warp filter that turns each request on a connection from `peer` into a
/// [`Request`] for `app`.
pub fn filter(
    app: Arc<App>,
    peer: SocketAddr,
) -> impl warp::Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static
{
    use futures_util::StreamExt;
    use warp::{Buf, Filter};

    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            move |method, path: warp::path::FullPath, query, headers, body| {
                let app = Arc::clone(&app);
                let body =
                    futures_util::stream::StreamExt::map(body, |chunk: Result<_, warp::Error>| {
                        chunk.map(|mut buffer| {
                            let remaining = Buf::remaining(&buffer);
                            Buf::copy_to_bytes(&mut buffer, remaining)
                        })
                    });
                let request = Request {
                    method,
                    path: path.as_str().to_string(),
                    query,
                    headers,
                    peer,
                    body: body.boxed(),
                };
                async move { app.handle(request).await }
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_entries_parsed() {
        assert_eq!(
            parse_forwarded_address(" 192.0.2.1"),
            "192.0.2.1".parse().ok()
        );
        assert_eq!(
            parse_forwarded_address("192.0.2.1:443"),
            "192.0.2.1".parse().ok()
        );
        assert_eq!(
            parse_forwarded_address("[2001:db8::1]:80"),
            "2001:db8::1".parse().ok()
        );
        assert_eq!(parse_forwarded_address("unknown"), None);
    }
}

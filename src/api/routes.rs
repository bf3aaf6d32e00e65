//! The routes of the API and how a request path maps to one.
//!
//! Health checks sit at the root; everything else sits under `api.path_prefix`. A path that
//! matches no route, or lacks the prefix, maps to nothing, and the caller returns the same
//! plain 404 either way.

use percent_encoding::percent_decode_str;
use subtle::ConstantTimeEq;
use warp::http::Method;

use super::error::ApiError;

/// One route, with what its path carries. Stubs and keys are percent-decoded but not yet
/// validated, so that an invalid one gets a 400 that names the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Readyz,
    /// `/api/redis/publish/<stub>`
    Publish(String),
    /// `/api/rproxy/<stub>[/<path>]`; `path` starts with `/` and stays percent-encoded.
    Rproxy {
        stub: String,
        path: String,
    },
    /// `/api/redis/metrics/<stub>`
    StubMetrics(String),
    /// `/api/redis/keys/<key>`
    Key(String),
    /// `/api/webhook/<stub>`
    Webhook(String),
    /// `/api/status`
    Status,
    /// `/api/dns/clients`
    DnsClients,
    /// `/api/dns/top`
    DnsTop,
    /// `/metrics`
    Metrics,
}

const GET: &[Method] = &[Method::GET, Method::HEAD];
const PUBLISH: &[Method] = &[Method::POST, Method::PUT];
const WEBHOOK: &[Method] = &[Method::POST];

impl Route {
    /// Maps a request path to a route; `None` means 404.
    pub fn parse(path: &str, prefix: &str) -> Result<Option<Route>, ApiError> {
        match path {
            "/healthz" => return Ok(Some(Route::Healthz)),
            "/readyz" => return Ok(Some(Route::Readyz)),
            _ => {}
        }
        let Some(rest) = strip_prefix(path, prefix) else {
            return Ok(None);
        };
        let route = if let Some(stub) = rest.strip_prefix("/api/redis/publish/") {
            Route::Publish(decode(stub)?)
        } else if let Some(tail) = rest.strip_prefix("/api/rproxy/") {
            let (stub, path) = match tail.find('/') {
                Some(at) => (&tail[..at], &tail[at..]),
                None => (tail, "/"),
            };
            Route::Rproxy {
                stub: decode(stub)?,
                path: path.to_string(),
            }
        } else if let Some(stub) = rest.strip_prefix("/api/redis/metrics/") {
            Route::StubMetrics(decode(stub)?)
        } else if let Some(key) = rest.strip_prefix("/api/redis/keys/") {
            Route::Key(decode(key)?)
        } else if let Some(stub) = rest.strip_prefix("/api/webhook/") {
            Route::Webhook(decode(stub)?)
        } else {
            match rest {
                "/api/status" => Route::Status,
                "/api/dns/clients" => Route::DnsClients,
                "/api/dns/top" => Route::DnsTop,
                "/metrics" => Route::Metrics,
                _ => return Ok(None),
            }
        };
        Ok(Some(route))
    }

    /// Label in metrics and logs. It never contains the path, which may hold the prefix.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Publish(_) => "publish",
            Route::Rproxy { .. } => "rproxy",
            Route::StubMetrics(_) => "stub_metrics",
            Route::Key(_) => "keys",
            Route::Webhook(_) => "webhook",
            Route::Status => "status",
            Route::DnsClients => "dns_clients",
            Route::DnsTop => "dns_top",
            Route::Metrics => "metrics",
        }
    }

    /// Returns the methods the route accepts, or `None` when it accepts any.
    pub fn methods(&self) -> Option<&'static [Method]> {
        match self {
            Route::Rproxy { .. } => None,
            Route::Publish(_) => Some(PUBLISH),
            Route::Webhook(_) => Some(WEBHOOK),
            _ => Some(GET),
        }
    }

    /// Fails with 405 when the route does not accept `method`.
    pub fn check_method(&self, method: &Method) -> Result<(), ApiError> {
        match self.methods() {
            Some(allowed) if !allowed.contains(method) => Err(ApiError::MethodNotAllowed {
                method: method.clone(),
                allowed,
            }),
            _ => Ok(()),
        }
    }
}

/// The path after `prefix`, which must be followed by `/`. The comparison takes the same
/// time however much of the prefix matched, because the prefix is a secret.
fn strip_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    if path.len() <= prefix.len() || !path.is_char_boundary(prefix.len()) {
        return None;
    }
    let (head, rest) = path.split_at(prefix.len());
    let matches = bool::from(head.as_bytes().ct_eq(prefix.as_bytes()));
    (matches && rest.starts_with('/')).then_some(rest)
}

fn decode(segment: &str) -> Result<String, ApiError> {
    percent_decode_str(segment)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| ApiError::BadRequest("the path is not UTF-8 after percent-decoding".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(path: &str, prefix: &str) -> Option<Route> {
        Route::parse(path, prefix).unwrap()
    }

    #[test]
    fn health_outside_prefix() {
        assert_eq!(parse("/healthz", "/secret"), Some(Route::Healthz));
        assert_eq!(parse("/secret/healthz", "/secret"), None);
    }

    #[test]
    fn routes_need_prefix() {
        assert_eq!(parse("/api/status", "/secret"), None);
        assert_eq!(parse("/secretx/api/status", "/secret"), None);
        assert_eq!(parse("/secret/api/status", "/secret"), Some(Route::Status));
        assert_eq!(parse("/api/status", ""), Some(Route::Status));
    }

    #[test]
    fn stub_percent_decoded() {
        assert_eq!(
            parse("/api/redis/publish/jobs%3Ahigh", ""),
            Some(Route::Publish("jobs:high".into()))
        );
    }

    #[test]
    fn rproxy_keeps_tail_path() {
        assert_eq!(
            parse("/api/rproxy/wiki/pages/a%20b", ""),
            Some(Route::Rproxy {
                stub: "wiki".into(),
                path: "/pages/a%20b".into()
            })
        );
        assert_eq!(
            parse("/api/rproxy/wiki", ""),
            Some(Route::Rproxy {
                stub: "wiki".into(),
                path: "/".into()
            })
        );
    }

    #[test]
    fn key_may_contain_slash() {
        assert_eq!(
            parse("/api/redis/keys/almagest:builder:a/b", ""),
            Some(Route::Key("almagest:builder:a/b".into()))
        );
    }

    #[test]
    fn unknown_paths_map_to_nothing() {
        for path in [
            "/",
            "/api",
            "/api/redis",
            "/api/status/",
            "/metrics/x",
            "/favicon.ico",
        ] {
            assert_eq!(parse(path, ""), None, "{path}");
        }
    }

    #[test]
    fn publish_rejects_get() {
        let error = Route::Publish("x".into())
            .check_method(&Method::GET)
            .unwrap_err();
        assert_eq!(error.status(), warp::http::StatusCode::METHOD_NOT_ALLOWED);
    }
}

//! Every way a request can fail, and the response each one becomes: a JSON object
//! `{"error": MESSAGE}` with the matching status, except the plain 404 for paths that do
//! not exist.

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use warp::http::header::{ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use warp::http::{HeaderValue, Method, StatusCode};
use warp::reply::Response;

use crate::bus::BusError;

/// How long a client should wait before retrying while the bus is down: about two reconnect
/// attempts of the Redis link.
const BUS_RETRY_AFTER: Duration = Duration::from_secs(5);

/// A request that failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No such path. The response reveals nothing else.
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("method {method} is not allowed here: use {}", join_methods(allowed))]
    MethodNotAllowed {
        method: Method,
        allowed: &'static [Method],
    },
    #[error("the body took too long to arrive")]
    BodyTimeout,
    #[error("the body is larger than the limit of {cap} bytes (api.max_body_bytes)")]
    PayloadTooLarge { cap: u64 },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after: Duration,
    },
    /// The bus failed; the message was not published.
    #[error("{0}")]
    Bus(BusError),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    BadGateway(String),
    #[error("no reply within {timeout_ms} ms (api.rproxy_timeout_ms)")]
    GatewayTimeout { timeout_ms: u64 },
    #[error("{0}")]
    NotImplemented(String),
    #[error("{0}")]
    Internal(String),
}

fn join_methods(methods: &[Method]) -> String {
    methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<BusError> for ApiError {
    fn from(error: BusError) -> Self {
        ApiError::Bus(error)
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Bus(error) => match error {
                BusError::Unavailable(_) | BusError::Timeout { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                BusError::NotAvailable { .. } => StatusCode::NOT_IMPLEMENTED,
                BusError::Command { .. } | BusError::InvalidReply { .. } => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::GatewayTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Returns the message shown to the client. A bus failure is described without the
    /// Redis error text, which may name internal addresses.
    fn public_message(&self) -> String {
        match self {
            ApiError::Bus(BusError::Unavailable(_)) => {
                // A connection that failed during the call may have delivered the command
                // anyway (a Redis that hung and resumed), so this cannot promise "nothing".
                "the message bus is unavailable; the publish was not confirmed: retry later"
                    .to_string()
            }
            ApiError::Bus(BusError::Timeout { .. }) => {
                "the message bus did not respond in time; the message may not have been \
                 published: retry later"
                    .to_string()
            }
            ApiError::Bus(BusError::NotAvailable { operation, backend }) => {
                format!("{operation} is not available on the {backend} backend")
            }
            ApiError::Bus(BusError::Command { operation, .. })
            | ApiError::Bus(BusError::InvalidReply { operation, .. }) => {
                format!("{operation} failed on the message bus; see the daemon's log")
            }
            other => other.to_string(),
        }
    }

    pub fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::NotFound = self {
            return plain_not_found();
        }
        let mut response = json_response(
            status,
            &ErrorBody {
                error: self.public_message(),
            },
        );
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthorized(_) => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::MethodNotAllowed { allowed, .. } => {
                if let Ok(value) = HeaderValue::from_str(&join_methods(allowed)) {
                    headers.insert(ALLOW, value);
                }
            }
            ApiError::TooManyRequests { retry_after, .. } => {
                headers.insert(RETRY_AFTER, retry_after_value(*retry_after));
            }
            ApiError::Bus(_) | ApiError::Unavailable(_)
                if status == StatusCode::SERVICE_UNAVAILABLE =>
            {
                headers.insert(RETRY_AFTER, retry_after_value(BUS_RETRY_AFTER));
            }
            _ => {}
        }
        response
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

/// `Retry-After` in whole seconds, rounded up and at least 1.
fn retry_after_value(wait: Duration) -> HeaderValue {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

/// Builds the 404 of every unknown path: a fixed text that reveals nothing about the server.
pub fn plain_not_found() -> Response {
    let mut response = Response::new(Bytes::from_static(b"not found\n").into());
    *response.status_mut() = StatusCode::NOT_FOUND;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Builds a JSON response with `status`.
pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|error| {
        format!(r#"{{"error":"cannot encode the response: {error}"}}"#).into_bytes()
    });
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_value(Duration::from_millis(1_200)), "2");
        assert_eq!(retry_after_value(Duration::from_millis(0)), "1");
        assert_eq!(retry_after_value(Duration::from_secs(3)), "3");
    }

    #[test]
    fn bus_error_hides_redis_text() {
        let error = ApiError::Bus(BusError::Unavailable("redis at 10.0.0.5 refused".into()));
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!error.public_message().contains("10.0.0.5"));
    }
}

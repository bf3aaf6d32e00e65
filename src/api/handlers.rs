//! The handlers of the authenticated routes and of webhooks. Each runs after the shared
//! checks of [`App::handle`](super::app::App::handle).

use std::net::IpAddr;

use serde::Serialize;
use serde_json::{Map, Value, json};
use warp::http::StatusCode;
use warp::reply::Response;

use super::app::{App, Request};
use super::auth::Token;
use super::body::{decode_content, into_text, read_capped};
use super::error::{ApiError, json_response};
use super::metrics::{Outcome, StubCounters};
use super::rproxy::{HttpRequest, wants_no_wait};
use crate::bus::{BusError, KeyValue, Stub};

/// Default and maximum number of entries of a DNS ranking.
const DNS_DEFAULT_LIMIT: usize = 50;
const DNS_MAX_LIMIT: usize = 1_000;

#[derive(Serialize)]
struct Published<'a> {
    channel: &'a str,
    receivers: u64,
}

impl App {
    /// Parses `stub` (400 naming the rule) and checks that `token` may use it (403).
    fn permitted_stub(&self, token: &Token, stub: &str) -> Result<Stub, ApiError> {
        let stub = Stub::parse(stub).map_err(|error| ApiError::BadRequest(error.to_string()))?;
        if !token.allows_stub(stub.as_str()) {
            return Err(ApiError::Forbidden(format!(
                "token {:?} may not use stub {:?}",
                token.name,
                stub.as_str()
            )));
        }
        Ok(stub)
    }

    /// Reads the body as UTF-8 text, within the size cap, decompressing gzip.
    async fn read_text(&self, request: &mut Request) -> Result<String, ApiError> {
        let cap = self.config.max_body_bytes;
        let raw = read_capped(&mut request.body, &request.headers, cap).await?;
        let decoded = decode_content(raw, &request.headers, cap)?;
        into_text(decoded, &request.headers)
    }

    /// `POST|PUT /api/redis/publish/<stub>`.
    pub async fn publish(
        &self,
        token: &Token,
        stub: &str,
        mut request: Request,
    ) -> Result<Response, ApiError> {
        let stub = self.permitted_stub(token, stub)?;
        let result = match self.read_text(&mut request).await {
            Ok(text) => self.publish_text(&stub, &text).await,
            Err(error) => Err(error),
        };
        self.stats
            .record_message(stub.as_str(), message_outcome(&result));
        result
    }

    /// Publishes `text` for `stub`, to its stream too when the stub is durable.
    async fn publish_text(&self, stub: &Stub, text: &str) -> Result<Response, ApiError> {
        if text.is_empty() {
            return Err(ApiError::BadRequest(
                "the body is empty: send the message as the request body".into(),
            ));
        }
        let durable = self.config.is_durable(stub);
        let receivers = self.bus.publish_to_queue(stub, text, durable).await?;
        let channel = self.bus.names().queue(stub);
        Ok(json_response(
            StatusCode::OK,
            &Published {
                channel: &channel,
                receivers,
            },
        ))
    }

    /// `ANY /api/rproxy/<stub>[/<path>]`.
    pub async fn rproxy(
        &self,
        token: &Token,
        stub: &str,
        path: &str,
        mut request: Request,
    ) -> Result<Response, ApiError> {
        let stub = self.permitted_stub(token, stub)?;
        let result = self.forward(&stub, path, &mut request).await;
        let outcome = match &result {
            Err(error) if error.status() == StatusCode::SERVICE_UNAVAILABLE => Outcome::Unavailable,
            Err(ApiError::GatewayTimeout { .. }) => Outcome::TimedOut,
            _ => Outcome::Other,
        };
        self.stats.record_rproxy(stub.as_str(), outcome);
        result
    }

    async fn forward(
        &self,
        stub: &Stub,
        path: &str,
        request: &mut Request,
    ) -> Result<Response, ApiError> {
        let body = read_capped(
            &mut request.body,
            &request.headers,
            self.config.max_body_bytes,
        )
        .await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let channel = self.bus.names().queue(stub);
        let message = HttpRequest::new(
            id.clone(),
            self.bus.names().rproxy(self.bus.instance()),
            &request.method,
            path,
            &request.query,
            &request.headers,
            &body,
        )
        .encode();

        if wants_no_wait(&request.query) {
            self.publish_request(&channel, &message).await?;
            return Ok(json_response(
                StatusCode::ACCEPTED,
                &json!({"id": id, "channel": channel}),
            ));
        }

        // Registered before publishing, so that even an instant reply finds its request.
        let mut waiter = self.pending.register(&id)?;
        self.publish_request(&channel, &message).await?;
        let timeout = self.config.rproxy_timeout();
        match tokio::time::timeout(timeout, waiter.receiver()).await {
            Ok(Ok(Ok(reply))) => reply.into_response(),
            Ok(Ok(Err(reason))) => Err(ApiError::BadGateway(format!(
                "the worker's reply is invalid: {reason}"
            ))),
            Ok(Err(_)) => Err(ApiError::Unavailable(
                "the API is restarting; the request may have reached a worker".into(),
            )),
            Err(_) => Err(ApiError::GatewayTimeout {
                timeout_ms: self.config.rproxy_timeout_ms,
            }),
        }
    }

    /// Publishes an rproxy request; 503 when no client received it. PUBLISH's receiver count
    /// is taken rather than a prior `PUBSUB NUMSUB`, because it is exact for this very
    /// message (no worker can leave in between) and also counts pattern subscribers.
    async fn publish_request(&self, channel: &str, message: &str) -> Result<(), ApiError> {
        let receivers = self.bus.publish(channel, message).await?;
        if receivers == 0 {
            return Err(ApiError::Unavailable(format!(
                "no worker listens on {channel}: start one, then retry"
            )));
        }
        Ok(())
    }

    /// `POST /api/webhook/<stub>`: authenticated by the body's HMAC signature alone.
    pub async fn webhook(
        &self,
        stub: &str,
        client: IpAddr,
        mut request: Request,
    ) -> Result<Response, ApiError> {
        let stub = Stub::parse(stub).map_err(|error| ApiError::BadRequest(error.to_string()))?;
        let cap = self.config.max_body_bytes;
        let raw = read_capped(&mut request.body, &request.headers, cap).await?;
        if let Err(failure) = self.webhooks.verify(stub.as_str(), &request.headers, &raw) {
            self.record_auth_failure(client, "webhook", failure.as_str());
            return Err(ApiError::Unauthorized("missing or invalid signature"));
        }
        let result = match decode_content(raw, &request.headers, cap)
            .and_then(|decoded| into_text(decoded, &request.headers))
        {
            Ok(text) => self.publish_text(&stub, &text).await,
            Err(error) => Err(error),
        };
        self.stats
            .record_message(stub.as_str(), message_outcome(&result));
        result
    }

    /// `GET /api/redis/metrics/<stub>`.
    pub async fn stub_metrics(&self, stub: &str) -> Result<Response, ApiError> {
        let stub = Stub::parse(stub).map_err(|error| ApiError::BadRequest(error.to_string()))?;
        let channel = self.bus.names().queue(&stub);
        let counts = self
            .bus
            .backend()?
            .subscriber_counts(std::slice::from_ref(&channel))
            .await?;
        #[derive(Serialize)]
        struct StubMetrics<'a> {
            stub: &'a str,
            channel: &'a str,
            subscribers: u64,
            #[serde(flatten)]
            counters: StubCounters,
        }
        Ok(json_response(
            StatusCode::OK,
            &StubMetrics {
                stub: stub.as_str(),
                channel: &channel,
                subscribers: counts.first().copied().unwrap_or(0),
                counters: self.stats.get(stub.as_str()),
            },
        ))
    }

    /// `GET /api/redis/keys/<key>`: only keys that match `api.readable_keys`.
    pub async fn read_key(&self, key: &str) -> Result<Response, ApiError> {
        if !self.config.is_readable_key(key) {
            return Err(ApiError::Forbidden(
                "this key is not readable: list a glob that matches it in api.readable_keys".into(),
            ));
        }
        let value = self.bus.backend()?.read_key(key).await?;
        let (kind, field, content) = match value {
            KeyValue::Missing => {
                return Ok(json_response(
                    StatusCode::NOT_FOUND,
                    &json!({"error": "no such key", "key": key}),
                ));
            }
            KeyValue::String(text) => ("string", "value", Value::String(text)),
            KeyValue::Hash(fields) => {
                let map: Map<String, Value> = fields
                    .into_iter()
                    .map(|(name, value)| (name, Value::String(value)))
                    .collect();
                ("hash", "value", Value::Object(map))
            }
            KeyValue::List { len } => ("list", "len", json!(len)),
            KeyValue::Set { len } => ("set", "len", json!(len)),
            KeyValue::SortedSet { len } => ("zset", "len", json!(len)),
            KeyValue::Stream { len } => ("stream", "len", json!(len)),
        };
        let mut body = Map::new();
        body.insert("key".into(), Value::String(key.to_string()));
        body.insert("type".into(), Value::String(kind.into()));
        body.insert(field.into(), content);
        Ok(json_response(StatusCode::OK, &Value::Object(body)))
    }

    /// `GET /api/status`: the registry hash `P:services`, one entry per service and
    /// instance, as the control service wrote it.
    pub async fn status(&self) -> Result<Response, ApiError> {
        let entries = self
            .bus
            .backend()?
            .hash_get_all(&self.bus.names().services())
            .await?;
        let mut services = Vec::new();
        for (field, value) in entries {
            match serde_json::from_str::<Value>(&value) {
                Ok(entry) => services.push(entry),
                Err(error) => {
                    metrics::counter!("almagest_api_registry_entries_invalid_total").increment(1);
                    tracing::debug!(field, error = %error, "skipped an invalid registry entry");
                }
            }
        }
        Ok(json_response(
            StatusCode::OK,
            &json!({"services": services}),
        ))
    }

    /// `GET /api/dns/clients?day=YYYY-MM-DD&limit=N`: clients by query count on a UTC day.
    pub async fn dns_clients(&self, query: &str) -> Result<Response, ApiError> {
        let params = DnsParams::parse(query)?;
        let key = self.bus.names().dns_clients(&params.day);
        let ranking = self.bus.backend()?.sorted_top(&key, params.limit).await?;
        Ok(json_response(
            StatusCode::OK,
            &json!({"day": params.day, "clients": rows("client", ranking)}),
        ))
    }

    /// `GET /api/dns/top?client=IP&day=YYYY-MM-DD&limit=N`: one client's domains by query
    /// count on a UTC day.
    pub async fn dns_top(&self, query: &str) -> Result<Response, ApiError> {
        let params = DnsParams::parse(query)?;
        let client = params.client.ok_or_else(|| {
            ApiError::BadRequest("missing client: add ?client=<IP address>".into())
        })?;
        let key = self.bus.names().dns_client(&client, &params.day);
        let ranking = self.bus.backend()?.sorted_top(&key, params.limit).await?;
        Ok(json_response(
            StatusCode::OK,
            &json!({"day": params.day, "client": client, "domains": rows("domain", ranking)}),
        ))
    }
}

/// Classifies the result of a publish request for the stub's counters.
fn message_outcome(result: &Result<Response, ApiError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Published,
        Err(ApiError::Bus(BusError::Unavailable(_) | BusError::Timeout { .. })) => {
            Outcome::Unavailable
        }
        Err(_) => Outcome::Other,
    }
}

/// Turns a sorted-set ranking into `[{name: member, "queries": count}]`.
fn rows(name: &str, ranking: Vec<(String, f64)>) -> Vec<Value> {
    ranking
        .into_iter()
        .map(|(member, score)| {
            let mut row = Map::new();
            row.insert(name.to_string(), Value::String(member));
            row.insert("queries".into(), json!(score.round() as i64));
            Value::Object(row)
        })
        .collect()
}

/// Query parameters of the DNS routes.
#[derive(Debug, PartialEq, Eq)]
struct DnsParams {
    /// `YYYY-MM-DD`, UTC; today when absent.
    day: String,
    /// The canonical text form of the client's IP address.
    client: Option<String>,
    limit: usize,
}

impl DnsParams {
    fn parse(query: &str) -> Result<DnsParams, ApiError> {
        let mut params = DnsParams {
            day: chrono::Utc::now().format("%Y-%m-%d").to_string(),
            client: None,
            limit: DNS_DEFAULT_LIMIT,
        };
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "day" => {
                    chrono::NaiveDate::parse_from_str(&value, "%Y-%m-%d").map_err(|_| {
                        ApiError::BadRequest(format!("invalid day {value:?}: use YYYY-MM-DD (UTC)"))
                    })?;
                    params.day = value.into_owned();
                }
                "client" => {
                    let address = value.parse::<IpAddr>().map_err(|_| {
                        ApiError::BadRequest(format!(
                            "invalid client {value:?}: use an IP address such as 192.168.1.20"
                        ))
                    })?;
                    params.client = Some(address.to_canonical().to_string());
                }
                "limit" => {
                    params.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|limit| (1..=DNS_MAX_LIMIT).contains(limit))
                        .ok_or_else(|| {
                            ApiError::BadRequest(format!(
                                "invalid limit {value:?}: use 1 to {DNS_MAX_LIMIT}"
                            ))
                        })?;
                }
                _ => {}
            }
        }
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_params_defaults() {
        let params = DnsParams::parse("").unwrap();
        assert_eq!(params.day.len(), 10);
        assert_eq!(params.limit, DNS_DEFAULT_LIMIT);
        assert_eq!(params.client, None);
    }

    #[test]
    fn dns_client_canonical() {
        let params = DnsParams::parse("client=2001:DB8::0:1&day=2026-12-04&limit=5").unwrap();
        assert_eq!(params.client.as_deref(), Some("2001:db8::1"));
        assert_eq!(params.day, "2026-12-04");
        assert_eq!(params.limit, 5);
    }

    #[test]
    fn dns_params_rejected() {
        for query in [
            "day=2026-13-01",
            "day=yesterday",
            "client=nas",
            "limit=0",
            "limit=5000",
        ] {
            assert!(DnsParams::parse(query).is_err(), "{query}");
        }
    }

    #[test]
    fn ranking_rows_named() {
        let rows = rows("client", vec![("10.0.0.7".into(), 12.0)]);
        assert_eq!(rows, [json!({"client": "10.0.0.7", "queries": 12})]);
    }
}

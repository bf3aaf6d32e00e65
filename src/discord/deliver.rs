//! Delivery of rendered messages to Discord over HTTP, with the retry policy.
//!
//! Requests go to the URLs of serenity's routes, with the token of serenity's [`Http`] and
//! its API base (Discord, or `discord.api_proxy` in its place). They are sent here rather
//! than through serenity's request methods because serenity's error type drops the body and
//! headers of a 429, and with a proxy its own rate limiter is off, so `retry_after` must be
//! read here.
//!
//! [`Sender::deliver`] sends every part of one notification in order. It returns
//! [`Outcome::Delivered`] only when Discord accepted all of them, [`Outcome::Dead`] when the
//! notification must go to the dead-letter stream, and [`Outcome::Stopped`] when consumption
//! must stop because the token or a permission is wrong. A caller acknowledges a stream
//! entry only on `Delivered` or after it stored the dead letter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serenity::http::{Http, HttpBuilder, Route};
use serenity::model::id::ChannelId;
use thiserror::Error;
use tokio::time::Instant;

use super::config::{Destination, DiscordConfig, Webhook};
use super::render::OutgoingMessage;

/// Base URL of serenity's routes, which [`Sender`] replaces with `api_proxy` when set.
const DISCORD_BASE: &str = "https://discord.com";

/// Timeout of one request. Discord responds to a create-message call in well under a second,
/// so 15 s lets a slow link finish while a hung connection is still retried within the window.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Maximum length of the error text kept from a Discord error body, so a dead letter stays
/// small.
const MAX_ERROR_BODY_CHARS: usize = 500;

/// Cap on remembered rate-limit buckets; destinations come from the config, so this is only
/// reached by a misuse, and then the map is cleared.
const MAX_BUCKETS: usize = 1024;

/// Builds serenity's HTTP client for the config. With `api_proxy` set, serenity's rate
/// limiter is turned off, because serenity ignores the proxy while its limiter is on.
pub fn build_http(config: &DiscordConfig) -> Http {
    let token = config.token.as_ref().map_or("", |token| token.expose());
    let builder = HttpBuilder::new(token);
    match &config.api_proxy {
        Some(proxy) => builder
            .proxy(proxy.as_str())
            .ratelimiter_disabled(true)
            .build(),
        None => builder.build(),
    }
}

/// Failure of one request, classified by what the caller must do next.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum SendError {
    /// 429: wait `retry_after`, then send again.
    #[error("rate limited (HTTP 429{}), retry after {} ms", if *.global { ", global" } else { "" }, .retry_after.as_millis())]
    RateLimited { retry_after: Duration, global: bool },
    /// 5xx or a network error: send again after a backoff.
    #[error("{0}")]
    Transient(String),
    /// 400, 404 or another 4xx: this message can never be delivered as it is.
    #[error("rejected with HTTP {status}: {detail}")]
    Rejected { status: u16, detail: String },
    /// 401 or 403: the token is invalid or lacks a permission; no message can be delivered.
    #[error("unauthorized with HTTP {status}: {detail}")]
    Unauthorized { status: u16, detail: String },
}

impl SendError {
    /// Returns the fix to log once when consumption stops on this error.
    pub fn remedy(&self) -> &'static str {
        match self {
            SendError::Unauthorized { status: 401, .. } => {
                "the bot token or webhook URL is invalid: reset it in the Discord developer \
                 portal (Bot → Reset Token) or copy the webhook URL again, update the config and \
                 restart"
            }
            SendError::Unauthorized { .. } => {
                "the bot lacks a permission: give it View Channel, Send Messages and Embed Links \
                 in the target channel (Server Settings → Roles or the channel's permissions)"
            }
            _ => "",
        }
    }
}

/// How long and how often a failing notification is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How long a run of retryable failures may last before the notification is dead.
    pub retry_for: Duration,
    /// First backoff after a 5xx or network error; doubled after each failure.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// Backoff from 1 s doubling to 60 s: fast enough to ride out a blip, and at most one
    /// request a minute during a long outage.
    pub fn new(retry_for: Duration) -> Self {
        Self {
            retry_for,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Delivery state of one notification. It is kept across calls to [`Sender::deliver`], so a
/// resumed delivery does not send an accepted part again.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Index of the first part Discord has not accepted yet.
    pub next_part: usize,
    /// Requests sent for this notification.
    pub attempts: u32,
    failing_since: Option<Instant>,
    backoff: Duration,
}

/// Result of delivering one notification.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Discord accepted every part.
    Delivered,
    /// The notification cannot be delivered: a part was rejected, or retryable failures
    /// lasted past the retry window. `error` is the last error.
    Dead { error: String },
    /// The token or a permission is wrong, while the notification itself may be fine. Nothing
    /// is lost: call [`Sender::deliver`] again later with the same [`Progress`].
    Stopped { error: SendError },
}

/// Sends messages to Discord channels (as the bot) or webhooks.
pub struct Sender {
    http: Arc<Http>,
    client: reqwest::Client,
    /// Destination key → earliest time the next request may go, from rate-limit headers.
    buckets: Mutex<HashMap<u64, Instant>>,
}

impl Sender {
    pub fn new(http: Arc<Http>) -> Result<Self, reqwest::Error> {
        crate::telemetry::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Self {
            http,
            client,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Serenity's HTTP client, shared with the gateway client.
    pub fn http(&self) -> &Arc<Http> {
        &self.http
    }

    /// Sends `parts` to `destination` in order, from `progress.next_part` on, retrying as
    /// `policy` sets. Dropping the future stops delivery, and `progress` then still records
    /// which parts Discord accepted.
    pub async fn deliver(
        &self,
        destination: &Destination,
        parts: &[OutgoingMessage],
        progress: &mut Progress,
        policy: &RetryPolicy,
    ) -> Outcome {
        while let Some(part) = parts.get(progress.next_part) {
            self.wait_for_bucket(destination).await;
            progress.attempts += 1;
            let error = match self.send_once(destination, part).await {
                Ok(()) => {
                    if progress.failing_since.take().is_some() {
                        tracing::info!(
                            destination = %describe(destination),
                            attempts = progress.attempts,
                            "discord delivery recovered"
                        );
                    }
                    progress.backoff = Duration::ZERO;
                    progress.next_part += 1;
                    continue;
                }
                Err(error) => error,
            };

            let part_label = format!("part {} of {}", progress.next_part + 1, parts.len());
            let delay = match &error {
                SendError::Rejected { .. } => {
                    return Outcome::Dead {
                        error: format!("{part_label}: {error}"),
                    };
                }
                SendError::Unauthorized { .. } => {
                    progress.failing_since = None;
                    progress.backoff = Duration::ZERO;
                    return Outcome::Stopped { error };
                }
                SendError::RateLimited { retry_after, .. } => *retry_after,
                SendError::Transient(_) => next_backoff(progress, policy),
            };

            let now = Instant::now();
            let since = *progress.failing_since.get_or_insert_with(|| {
                tracing::warn!(
                    destination = %describe(destination),
                    error = %error,
                    "discord delivery failed, retrying"
                );
                now
            });
            let elapsed = now - since;
            if elapsed >= policy.retry_for
                || elapsed + delay > policy.retry_for && is_rate_limit(&error)
            {
                return Outcome::Dead {
                    error: format!(
                        "{part_label}: {error} (gave up after {} attempts over {} s)",
                        progress.attempts,
                        elapsed.as_secs()
                    ),
                };
            }
            tokio::time::sleep(delay.min(policy.retry_for - elapsed)).await;
        }
        Outcome::Delivered
    }

    /// Sends one message, once.
    pub async fn send_once(
        &self,
        destination: &Destination,
        message: &OutgoingMessage,
    ) -> Result<(), SendError> {
        let body = serde_json::to_vec(message).map_err(|error| SendError::Rejected {
            status: 0,
            detail: error.to_string(),
        })?;
        let mut request = self
            .client
            .post(self.url(destination))
            .header(reqwest::header::USER_AGENT, serenity::constants::USER_AGENT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Destination::Channel(_) = destination {
            request = request.header(reqwest::header::AUTHORIZATION, self.http.token());
        }

        let response = request.send().await.map_err(|error| {
            // The URL of a webhook request contains its token.
            SendError::Transient(format!("request failed: {}", error.without_url()))
        })?;
        self.note_rate_limit(destination, response.headers());
        classify(response).await
    }

    /// Builds the URL of the create-message or execute-webhook call on the configured API base.
    fn url(&self, destination: &Destination) -> String {
        let path = match destination {
            Destination::Channel(channel_id) => Route::ChannelMessages {
                channel_id: *channel_id,
            }
            .path(),
            Destination::Webhook(Webhook { id, token }) => {
                let route = Route::WebhookWithToken {
                    webhook_id: *id,
                    token: token.expose(),
                };
                format!("{}?wait=true", route.path()).into()
            }
        };
        match &self.http.proxy {
            Some(proxy) => path.replacen(DISCORD_BASE, proxy.trim_end_matches('/'), 1),
            None => path.into_owned(),
        }
    }

    /// Remembers when the destination's bucket refills if this response used it up.
    fn note_rate_limit(&self, destination: &Destination, headers: &reqwest::header::HeaderMap) {
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        if header("x-ratelimit-remaining") != Some("0") {
            return;
        }
        let Some(reset_after) = header("x-ratelimit-reset-after").and_then(parse_seconds) else {
            return;
        };
        let mut buckets = self
            .buckets
            .lock()
            .expect("bucket map lock is never poisoned");
        if buckets.len() >= MAX_BUCKETS {
            buckets.clear();
        }
        buckets.insert(destination_key(destination), Instant::now() + reset_after);
    }

    async fn wait_for_bucket(&self, destination: &Destination) {
        let until = {
            let mut buckets = self
                .buckets
                .lock()
                .expect("bucket map lock is never poisoned");
            buckets.remove(&destination_key(destination))
        };
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
    }
}

fn is_rate_limit(error: &SendError) -> bool {
    matches!(error, SendError::RateLimited { .. })
}

fn next_backoff(progress: &mut Progress, policy: &RetryPolicy) -> Duration {
    progress.backoff = if progress.backoff.is_zero() {
        policy.initial_backoff
    } else {
        (progress.backoff * 2).min(policy.max_backoff)
    };
    progress.backoff
}

/// Turns a response into `Ok` or a classified error.
async fn classify(response: reqwest::Response) -> Result<(), SendError> {
    let status = response.status().as_u16();
    if response.status().is_success() {
        return Ok(());
    }
    let retry_after_header = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_seconds);
    let body = response.text().await.unwrap_or_default();
    let json: Option<serde_json::Value> = serde_json::from_str(&body).ok();

    match status {
        429 => {
            let from_body = json.as_ref().and_then(|json| json["retry_after"].as_f64());
            let retry_after = from_body
                .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
                .or(retry_after_header)
                // Discord always sends one of the two; a proxy might not.
                .unwrap_or(Duration::from_secs(1));
            let global = json
                .as_ref()
                .and_then(|json| json["global"].as_bool())
                .unwrap_or(false);
            Err(SendError::RateLimited {
                retry_after,
                global,
            })
        }
        401 | 403 => Err(SendError::Unauthorized {
            status,
            detail: error_detail(&json, &body),
        }),
        500..=599 => Err(SendError::Transient(format!(
            "server error HTTP {status}: {}",
            error_detail(&json, &body)
        ))),
        _ => Err(SendError::Rejected {
            status,
            detail: error_detail(&json, &body),
        }),
    }
}

/// Discord's error code, message and field errors, or the start of a non-JSON body.
fn error_detail(json: &Option<serde_json::Value>, body: &str) -> String {
    let detail = match json {
        Some(json) if json.get("message").is_some() => {
            let mut detail = format!(
                "{} (code {})",
                json["message"].as_str().unwrap_or_default(),
                json["code"].as_i64().unwrap_or(0)
            );
            if let Some(errors) = json.get("errors") {
                detail.push_str(&format!(": {errors}"));
            }
            detail
        }
        _ if body.trim().is_empty() => "empty body".to_owned(),
        _ => body.trim().to_owned(),
    };
    truncate_chars(&detail, MAX_ERROR_BODY_CHARS)
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Parses a seconds value such as `1`, `0.25` or `64.57`.
fn parse_seconds(text: &str) -> Option<Duration> {
    text.trim()
        .parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
}

/// Key of a destination's rate-limit bucket: Discord keys channel messages by channel and
/// webhook executions by webhook, and the two id spaces do not overlap.
fn destination_key(destination: &Destination) -> u64 {
    match destination {
        Destination::Channel(channel_id) => channel_id.get(),
        Destination::Webhook(webhook) => webhook.id.get(),
    }
}

/// Names a destination for logs, without the webhook token.
pub fn describe(destination: &Destination) -> String {
    match destination {
        Destination::Channel(ChannelId { .. }) => {
            format!("channel {}", destination_key(destination))
        }
        Destination::Webhook(webhook) => format!("webhook {}", webhook.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fractional_seconds() {
        assert_eq!(parse_seconds("0.25"), Some(Duration::from_millis(250)));
    }

    #[test]
    fn rejects_negative_seconds() {
        assert_eq!(parse_seconds("-1"), None);
    }

    #[test]
    fn error_detail_uses_discord_message() {
        let json = serde_json::json!({ "code": 10003, "message": "Unknown Channel" });
        assert_eq!(
            error_detail(&Some(json), ""),
            "Unknown Channel (code 10003)"
        );
    }

    #[test]
    fn error_detail_truncates_long_body() {
        let body = "x".repeat(2000);
        assert_eq!(
            error_detail(&None, &body).chars().count(),
            MAX_ERROR_BODY_CHARS + 1
        );
    }

    #[test]
    fn backoff_doubles_to_cap() {
        let policy = RetryPolicy::new(Duration::from_secs(3600));
        let mut progress = Progress::default();
        let delays: Vec<u64> = (0..8)
            .map(|_| next_backoff(&mut progress, &policy).as_secs())
            .collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60]);
    }
}

//! The one-shot commands of the CLI: `ping` and `publish`. With the Redis backend they talk to
//! Redis directly, so they work from any machine that reaches it; with the embedded backend
//! they talk to the running daemon through its admin socket in `bus.data_dir`.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::bus::admin::{AdminClient, AdminError};
use crate::bus::wire::{Ping, Pong};
use crate::bus::{ControlMessage, Names, Stub};
use crate::config::{BackendKind, Config};

/// Error of a CLI command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach redis at {url}: {message}")]
    Redis { url: String, message: String },
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Stub(#[from] crate::bus::names::InvalidStub),
    #[error("cannot read the message from standard input: {0}")]
    Stdin(std::io::Error),
    #[error("the message is empty: pass it as an argument or on standard input with -")]
    EmptyMessage,
}

/// One pong received by `almagest ping`.
#[derive(Debug, Clone)]
pub struct PingRow {
    pub pong: Pong,
    pub rtt: Duration,
}

/// Result of `almagest ping`: the pongs, and the expected services that sent none.
#[derive(Debug, Clone, Default)]
pub struct PingReport {
    pub rows: Vec<PingRow>,
    /// `service@instance` of this config's enabled services that sent no pong.
    pub missing: Vec<String>,
}

fn redis_error(config: &Config, error: impl std::fmt::Display) -> CliError {
    CliError::Redis {
        url: config.redis.url.clone(),
        message: error.to_string(),
    }
}

/// How the CLI reaches the bus.
enum Link {
    Redis(Box<redis::Client>),
    Admin(AdminClient),
}

impl Link {
    fn new(config: &Config) -> Result<Link, CliError> {
        match config.bus.backend {
            BackendKind::Redis => crate::bus::redis::client(&config.redis)
                .map(|client| Link::Redis(Box::new(client)))
                .map_err(|error| redis_error(config, error)),
            BackendKind::Embedded => Ok(Link::Admin(AdminClient::new(&config.bus.data_dir))),
        }
    }

    /// Subscribes to `channel` and returns its payloads, once the subscription is active.
    async fn subscribe(
        &self,
        config: &Config,
        channel: &str,
        timeout: Duration,
    ) -> Result<BoxStream<'static, String>, CliError> {
        match self {
            Link::Redis(client) => {
                let mut pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
                    .await
                    .map_err(|_| redis_error(config, "connection timed out"))?
                    .map_err(|error| redis_error(config, error))?;
                pubsub
                    .subscribe(channel)
                    .await
                    .map_err(|error| redis_error(config, error))?;
                let payloads = pubsub.into_on_message().filter_map(|message| async move {
                    String::from_utf8(message.get_payload_bytes().to_vec()).ok()
                });
                Ok(payloads.boxed())
            }
            Link::Admin(client) => {
                let subscription = client.subscribe(&[channel.to_string()], &[]).await?;
                let payloads =
                    futures_util::stream::unfold(subscription, |mut subscription| async move {
                        let message = subscription.next().await?;
                        Some((message.payload, subscription))
                    });
                Ok(payloads.boxed())
            }
        }
    }

    async fn publish(
        &self,
        config: &Config,
        channel: &str,
        payload: &str,
    ) -> Result<u64, CliError> {
        match self {
            Link::Redis(client) => {
                let mut connection = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|error| redis_error(config, error))?;
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .query_async::<u64>(&mut connection)
                    .await
                    .map_err(|error| redis_error(config, error))
            }
            Link::Admin(client) => Ok(client.publish(channel, payload).await?),
        }
    }

    async fn stream_add(
        &self,
        config: &Config,
        key: &str,
        fields: &[(String, String)],
        max_len: u64,
    ) -> Result<String, CliError> {
        match self {
            Link::Redis(client) => {
                let mut connection = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|error| redis_error(config, error))?;
                let mut command = redis::cmd("XADD");
                command
                    .arg(key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(max_len)
                    .arg("*");
                for (name, value) in fields {
                    command.arg(name).arg(value);
                }
                command
                    .query_async::<String>(&mut connection)
                    .await
                    .map_err(|error| redis_error(config, error))
            }
            Link::Admin(client) => Ok(client.stream_add(key, fields, Some(max_len)).await?),
        }
    }
}

/// How long `ping` keeps listening after the last pong once every service this config enables
/// has replied.
const OTHER_INSTANCES_GRACE: Duration = Duration::from_millis(300);

/// Pings every service on the bus and waits up to `timeout` for the pongs. Stops early once
/// the gateway and every service this config enables have answered and no other pong has
/// arrived for [`OTHER_INSTANCES_GRACE`].
pub async fn ping(config: &Config, timeout: Duration) -> Result<PingReport, CliError> {
    let link = Link::new(config)?;
    let names = Names::new(&config.bus.prefix);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let reply_to = format!("{}:cli-{id}", names.control_replies());
    let mut replies = link.subscribe(config, &reply_to, timeout).await?;
    let ping = ControlMessage::Ping(Ping {
        id: Some(id.clone()),
        reply_to: Some(reply_to),
    });
    let sent_at = Instant::now();
    link.publish(config, &names.control(), &ping.encode())
        .await?;

    let instance = &config.bus.instance;
    let mut expected: BTreeSet<String> = std::iter::once(crate::bus::gateway::NAME)
        .chain(config.enabled_services())
        .map(|service| format!("{service}@{instance}"))
        .collect();
    let mut rows = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_pong = tokio::time::Instant::now();
    loop {
        // Other instances on a shared Redis answer too; keep listening a little after this
        // config's services have answered, for as long as pongs keep arriving.
        let wait_until = if expected.is_empty() {
            (last_pong + OTHER_INSTANCES_GRACE).min(deadline)
        } else {
            deadline
        };
        let Ok(Some(payload)) = tokio::time::timeout_at(wait_until, replies.next()).await else {
            break;
        };
        if let Ok(ControlMessage::Pong(pong)) = ControlMessage::decode(&payload) {
            if pong.id.as_deref() != Some(id.as_str()) {
                continue;
            }
            last_pong = tokio::time::Instant::now();
            expected.remove(&format!("{}@{}", pong.service, pong.instance));
            rows.push(PingRow {
                pong,
                rtt: sent_at.elapsed(),
            });
        }
    }
    rows.sort_by(|a, b| {
        (&a.pong.instance, &a.pong.service).cmp(&(&b.pong.instance, &b.pong.service))
    });
    Ok(PingReport {
        rows,
        missing: expected.into_iter().collect(),
    })
}

/// Writes the ping report as a table.
pub fn print_ping_report(
    report: &PingReport,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<10} {:<20} {:<10} {:>10} {:>8} {:>9}",
        "SERVICE", "INSTANCE", "VERSION", "UPTIME", "RESTARTS", "RTT"
    )?;
    for row in &report.rows {
        writeln!(
            out,
            "{:<10} {:<20} {:<10} {:>10} {:>8} {:>7.1}ms",
            row.pong.service,
            row.pong.instance,
            row.pong.version,
            format_uptime(Duration::from_millis(row.pong.uptime_ms)),
            row.pong.restarts,
            row.rtt.as_secs_f64() * 1000.0,
        )?;
    }
    Ok(())
}

/// Formats an uptime as `45s`, `12m05s`, `3h02m` or `4d07h`.
pub fn format_uptime(uptime: Duration) -> String {
    let secs = uptime.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3_600..86_400 => format!("{}h{:02}m", secs / 3_600, secs % 3_600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3_600),
    }
}

/// Publishes `message` for `stub`; `-` reads it from standard input. Returns the channel and
/// how many subscribers received it.
pub async fn publish(
    config: &Config,
    stub: &str,
    message: &str,
) -> Result<(String, u64), CliError> {
    let stub = Stub::parse(stub)?;
    let message = if message == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(CliError::Stdin)?;
        text
    } else {
        message.to_string()
    };
    if message.is_empty() {
        return Err(CliError::EmptyMessage);
    }
    let link = Link::new(config)?;
    let names = Names::new(&config.bus.prefix);
    if config.is_durable_stub(&stub) {
        let fields = [("m".to_string(), message.clone())];
        link.stream_add(
            config,
            &names.queue_stream(&stub),
            &fields,
            crate::bus::QUEUE_STREAM_MAX_LEN,
        )
        .await?;
    }
    let channel = names.queue(&stub);
    let receivers = link.publish(config, &channel, &message).await?;
    let _ = std::io::stdout().flush();
    Ok((channel, receivers))
}

impl Config {
    /// Whether messages for `stub` are also kept in the capped stream `P:qs:<stub>`: the
    /// stub matches a glob of `api.durable_stubs`.
    pub fn is_durable_stub(&self, stub: &Stub) -> bool {
        self.api.as_ref().is_some_and(|api| api.is_durable(stub))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_formats() {
        assert_eq!(format_uptime(Duration::from_secs(45)), "45s");
        assert_eq!(format_uptime(Duration::from_secs(725)), "12m05s");
        assert_eq!(format_uptime(Duration::from_secs(3 * 3600 + 120)), "3h02m");
        assert_eq!(
            format_uptime(Duration::from_secs(4 * 86_400 + 7 * 3600)),
            "4d07h"
        );
    }
}

//! The one-shot commands of the CLI: `ping` and `publish`. With the Redis backend they talk to
//! Redis directly, so they work from any machine that reaches it.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::bus::wire::{Ping, Pong};
use crate::bus::{ControlMessage, Names, Stub};
use crate::config::{BackendKind, Config};

/// Error of a CLI command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach redis at {url}: {message}")]
    Redis { url: String, message: String },
    #[error(transparent)]
    Stub(#[from] crate::bus::names::InvalidStub),
    #[error("cannot read the message from standard input: {0}")]
    Stdin(std::io::Error),
    #[error("the message is empty: pass it as an argument or on standard input with -")]
    EmptyMessage,
    #[error(
        "the {0} backend cannot be reached from another process yet: set bus.backend = \"redis\""
    )]
    NoExternalAccess(BackendKind),
}

/// One answer to `almagest ping`.
#[derive(Debug, Clone)]
pub struct PingRow {
    pub pong: Pong,
    pub rtt: Duration,
}

/// Result of `almagest ping`: the pongs, and the expected services that sent none.
#[derive(Debug, Clone, Default)]
pub struct PingReport {
    pub rows: Vec<PingRow>,
    /// `service@instance` of this config's enabled services that did not answer.
    pub missing: Vec<String>,
}

fn redis_error(config: &Config, error: impl std::fmt::Display) -> CliError {
    CliError::Redis {
        url: config.redis.url.clone(),
        message: error.to_string(),
    }
}

async fn connect(config: &Config) -> Result<redis::Client, CliError> {
    if config.bus.backend != BackendKind::Redis {
        return Err(CliError::NoExternalAccess(config.bus.backend));
    }
    crate::bus::redis::client(&config.redis).map_err(|error| redis_error(config, error))
}

/// Pings every service on the bus and waits up to `timeout` for the pongs. Stops early once
/// the gateway and every service this config enables have answered.
pub async fn ping(config: &Config, timeout: Duration) -> Result<PingReport, CliError> {
    let client = connect(config).await?;
    let names = Names::new(&config.bus.prefix);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let reply_to = format!("{}:cli-{id}", names.control_replies());

    let mut pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
        .await
        .map_err(|_| redis_error(config, "connection timed out"))?
        .map_err(|error| redis_error(config, error))?;
    pubsub
        .subscribe(&reply_to)
        .await
        .map_err(|error| redis_error(config, error))?;
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|error| redis_error(config, error))?;
    let ping = ControlMessage::Ping(Ping {
        id: Some(id.clone()),
        reply_to: Some(reply_to),
    });
    let sent_at = Instant::now();
    redis::cmd("PUBLISH")
        .arg(names.control())
        .arg(ping.encode())
        .query_async::<u64>(&mut connection)
        .await
        .map_err(|error| redis_error(config, error))?;

    let instance = &config.bus.instance;
    let mut expected: BTreeSet<String> = std::iter::once(crate::bus::gateway::NAME)
        .chain(config.enabled_services())
        .map(|service| format!("{service}@{instance}"))
        .collect();
    let mut rows = Vec::new();
    let mut messages = pubsub.on_message();
    let deadline = tokio::time::Instant::now() + timeout;
    while !expected.is_empty() {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, messages.next()).await else {
            break;
        };
        let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) else {
            continue;
        };
        if let Ok(ControlMessage::Pong(pong)) = ControlMessage::decode(payload) {
            if pong.id.as_deref() != Some(id.as_str()) {
                continue;
            }
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
    let client = connect(config).await?;
    let names = Names::new(&config.bus.prefix);
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|error| redis_error(config, error))?;
    if config.is_durable_stub(&stub) {
        redis::cmd("XADD")
            .arg(names.queue_stream(&stub))
            .arg("MAXLEN")
            .arg("~")
            .arg(crate::bus::QUEUE_STREAM_MAX_LEN)
            .arg("*")
            .arg("m")
            .arg(&message)
            .query_async::<String>(&mut connection)
            .await
            .map_err(|error| redis_error(config, error))?;
    }
    let channel = names.queue(&stub);
    let receivers = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(&message)
        .query_async::<u64>(&mut connection)
        .await
        .map_err(|error| redis_error(config, error))?;
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

//! Almagest hosts a home server's small automation services as supervised actors. The
//! services never call each other: they publish and subscribe through a bus (Redis, or an
//! embedded store), which any script on the network can join.
//!
//! ```text
//! root@I (rest-for-one)                    src/supervisor.rs
//!  ├── gateway@I                           src/bus/gateway.rs: backend, subscription routing
//!  └── services@I (one-for-one, capped)
//!       ├── control@I                      src/control/, one folder per service
//!       ├── discord@I, torrent@I, builder@I
//!       └── api@I                          src/api/: the HTTP API
//! ```
//!
//! `I` is `bus.instance`, so several daemons can share a process (tests do) or a Redis.
//! [`run`] starts the tree and stops it when the shutdown future completes.

#[cfg(test)]
mod adversarial;
pub mod api;
pub mod builder;
pub mod bus;
pub mod cli;
pub mod config;
pub mod control;
pub mod discord;
pub mod dnslog;
pub mod service;
pub mod supervisor;
pub mod telemetry;
pub mod torrent;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ractor::Actor;
use ractor_supervisor::ChildSpec;
use tokio::sync::mpsc;

use crate::bus::Bus;
use crate::config::Config;
use crate::supervisor::{Fatal, Root, RootArgs, RootMessage};

/// The version in pongs and the start line.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Error that ended the daemon, other than a requested shutdown.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start the supervision tree: {0}")]
    Spawn(String),
    #[error(transparent)]
    Fatal(#[from] Fatal),
    #[error("the supervision tree stopped unexpectedly")]
    TreeStopped,
}

impl Config {
    /// Whether the crash drill (`{"type":"crash",…}`) may make an actor panic.
    pub fn crash_drill_allowed(&self) -> bool {
        self.control
            .as_ref()
            .is_some_and(|control| control.allow_crash_command)
    }
}

/// Child specs of every enabled service, in start order.
fn service_specs(config: &Arc<Config>, bus: &Bus) -> Vec<ChildSpec> {
    let mut specs = Vec::new();
    if let Some(control) = &config.control {
        specs.push(supervisor::service_spec::<control::Control>(
            control.clone(),
            config,
            bus,
        ));
    }
    if let Some(discord) = &config.discord {
        specs.push(supervisor::service_spec::<discord::Discord>(
            discord.clone(),
            config,
            bus,
        ));
    }
    if let Some(torrent) = &config.torrent {
        specs.push(supervisor::service_spec::<torrent::TorrentService>(
            torrent.clone(),
            config,
            bus,
        ));
    }
    if let Some(builder) = &config.builder {
        specs.push(supervisor::service_spec::<builder::Builder>(
            builder.clone(),
            config,
            bus,
        ));
    }
    if let Some(api) = &config.api {
        specs.push(supervisor::service_spec::<api::Api>(
            api.clone(),
            config,
            bus,
        ));
    }
    if let Some(dnslog) = &config.dnslog {
        specs.push(supervisor::service_spec::<dnslog::Dnslog>(
            dnslog.clone(),
            config,
            bus,
        ));
    }
    specs
}

/// Runs the daemon until `shutdown` completes (then stops gracefully and returns `Ok`) or
/// the supervision tree gives up (then returns the reason).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    telemetry::install_crypto_provider();
    telemetry::install_metrics_recorder();
    let config = Arc::new(config);
    tracing::info!(
        version = VERSION,
        instance = %config.bus.instance,
        backend = %config.bus.backend,
        services = ?config.enabled_services(),
        "starting almagest"
    );
    let bus = Bus::new(&config);
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel();
    let root_args = RootArgs {
        config: Arc::clone(&config),
        bus: bus.clone(),
        services: service_specs(&config, &bus),
        fatal: fatal_tx,
    };
    let root_name = format!("root@{}", config.bus.instance);
    let (root, mut root_done) = Actor::spawn(Some(root_name), Root, root_args)
        .await
        .map_err(|error| RunError::Spawn(error.to_string()))?;

    tokio::select! {
        _ = shutdown => {}
        fatal = fatal_rx.recv() => {
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut root_done).await;
            return Err(fatal.map(RunError::Fatal).unwrap_or(RunError::TreeStopped));
        }
        _ = &mut root_done => {
            return Err(fatal_rx.try_recv().map(RunError::Fatal).unwrap_or(RunError::TreeStopped));
        }
    }

    let timeout = config.supervisor.shutdown_timeout();
    tracing::info!(timeout_secs = timeout.as_secs(), "shutting down");
    // The root needs the whole deadline for its children, plus a moment to answer.
    let call_timeout_ms = (timeout + Duration::from_secs(1)).as_millis() as u64;
    let stopped = ractor::call_t!(
        root,
        |reply| RootMessage::Shutdown { timeout, reply },
        call_timeout_ms
    );
    if stopped.is_err() {
        tracing::warn!("shutdown deadline passed; killing the remaining actors");
        root.kill();
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), root_done).await;
    tracing::info!("stopped");
    Ok(())
}

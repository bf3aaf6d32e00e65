//! The dnslog service actor, under the services supervisor as `dnslog@<instance>`.
//!
//! The actor owns one [`Pipeline`] task behind a drop guard, so a restarted service leaves
//! no source or command behind. The task does all the work (sources, parsing, counts,
//! presence, writes); the actor passes it the bus status. On a graceful stop it signals the
//! task to write what it has counted, and waits for that.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio_util::task::AbortOnDropHandle;

use super::NAME;
use super::config::DnslogConfig;
use super::pipeline::Pipeline;
use crate::service::{Context, Service, ServiceError};

/// How long a graceful stop waits for the last write. One pipelined write takes
/// milliseconds; a Redis that does not reply within this is treated as down.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Dnslog;

/// The service has no messages of its own: its task reports through the bus.
pub enum DnslogMsg {}

pub struct DnslogState {
    bus_status: watch::Sender<bool>,
    stop: Option<oneshot::Sender<()>>,
    pipeline: Option<AbortOnDropHandle<()>>,
}

impl Service for Dnslog {
    const NAME: &'static str = NAME;
    type Config = DnslogConfig;
    type State = DnslogState;
    type Msg = DnslogMsg;

    async fn start(ctx: &Context<Self>) -> Result<DnslogState, ServiceError> {
        let (bus_status, status_rx) = watch::channel(ctx.bus.is_connected());
        let (stop, stop_rx) = oneshot::channel();
        let pipeline = Pipeline::new(Arc::clone(&ctx.config), ctx.bus.clone());
        let task = tokio::spawn(pipeline.run(status_rx, stop_rx));
        tracing::info!(
            sources = ctx.config.sources.len(),
            devices = ctx.config.devices.len(),
            "reading query logs"
        );
        Ok(DnslogState {
            bus_status,
            stop: Some(stop),
            pipeline: Some(AbortOnDropHandle::new(task)),
        })
    }

    async fn handle(
        _ctx: &Context<Self>,
        _state: &mut DnslogState,
        message: DnslogMsg,
    ) -> Result<(), ServiceError> {
        match message {}
    }

    async fn on_bus_status(
        _ctx: &Context<Self>,
        state: &mut DnslogState,
        connected: bool,
    ) -> Result<(), ServiceError> {
        state.bus_status.send_replace(connected);
        Ok(())
    }

    async fn stop(_ctx: &Context<Self>, state: &mut DnslogState) -> Result<(), ServiceError> {
        if let Some(stop) = state.stop.take() {
            let _ = stop.send(());
        }
        if let Some(pipeline) = state.pipeline.take()
            && tokio::time::timeout(STOP_TIMEOUT, pipeline).await.is_err()
        {
            tracing::warn!("dnslog did not write its last counts in time; they are lost");
        }
        Ok(())
    }
}

//! The HTTP server. It binds its listener itself, so a port in use is an error and not a
//! panic. Hyper serves each connection in its own task with the warp filter of [`App`]. A
//! graceful shutdown stops accepting and lets in-flight requests finish.
//!
//! Connection tasks live in a `JoinSet` owned by the accept task, which the [`Server`] owns
//! behind a drop guard: when the API actor restarts, the old listener and every old
//! connection go away with its state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio_util::task::AbortOnDropHandle;

use super::app::{App, filter};

/// Maximum number of connections served at once; further clients wait in the listen
/// backlog. A home server has a handful at a time, and the cap bounds memory and file
/// descriptors under a flood.
const MAX_CONNECTIONS: usize = 1_024;
/// How long a client may take to send its request headers, so that a client sending them
/// byte by byte cannot hold a connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept error such as "too many open files", so the loop does not spin
/// while the process is out of descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(500);
/// Attempts and pause for a bind that finds the address in use. A restarted API races its
/// predecessor, whose listener closes only when the runtime drops the aborted accept task.
/// That takes milliseconds, so ten tries over a second cover it.
const BIND_ATTEMPTS: u32 = 10;
/// How long requests whose rproxy wait was abandoned at the drain deadline get to send their
/// 503 before the server task is aborted.
const ABANDON_GRACE: Duration = Duration::from_millis(500);
const BIND_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Failure to start the server.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} (api.listen): {source}")]
pub struct BindError {
    pub address: SocketAddr,
    pub source: std::io::Error,
}

/// A running server. Dropping it stops it at once; [`Server::shutdown`] stops it gracefully.
pub struct Server {
    local_addr: SocketAddr,
    app: Arc<App>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<AbortOnDropHandle<()>>,
}

impl Server {
    /// Binds `address` and starts serving `app`.
    pub async fn start(address: SocketAddr, app: Arc<App>) -> Result<Server, BindError> {
        let listener = bind(address)
            .await
            .map_err(|source| BindError { address, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| BindError { address, source })?;
        let (shutdown, shutdown_rx) = oneshot::channel();
        app.serving.store(true, Ordering::Release);
        let task = tokio::spawn(tracing::Instrument::in_current_span(serve(
            listener,
            Arc::clone(&app),
            shutdown_rx,
        )));
        tracing::info!(address = %local_addr, "api listening");
        Ok(Server {
            local_addr,
            app,
            shutdown: Some(shutdown),
            task: Some(AbortOnDropHandle::new(task)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, then waits up to `deadline` for in-flight requests; connections
    /// still open after that are closed. Returns whether everything finished in time.
    pub async fn shutdown(&mut self, deadline: Duration) -> bool {
        self.app.serving.store(false, Ordering::Release);
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let Some(mut task) = self.task.take() else {
            return true;
        };
        if tokio::time::timeout(deadline, &mut task).await.is_ok() {
            return true;
        }
        // Requests still waiting for a worker's reply get 503 now, so their clients get a
        // response rather than a closed connection; the rest are cut off.
        self.app.pending.abandon_all();
        if tokio::time::timeout(ABANDON_GRACE, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        false
    }
}

/// Binds `address`, retrying for a moment while it is in use.
async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let mut attempt = 1;
    loop {
        match TcpListener::bind(address).await {
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse && attempt < BIND_ATTEMPTS =>
            {
                attempt += 1;
                tokio::time::sleep(BIND_RETRY_PAUSE).await;
            }
            other => return other,
        }
    }
}

/// Accepts connections until `shutdown` fires, then drains them.
async fn serve(listener: TcpListener, app: Arc<App>, mut shutdown: oneshot::Receiver<()>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            slot = Arc::clone(&slots).acquire_owned() => {
                let Ok(slot) = slot else { break };
                let accepted = tokio::select! {
                    _ = &mut shutdown => break,
                    accepted = listener.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(error = %error, "cannot accept a connection");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(warp::service(filter(Arc::clone(&app), peer)));
                let connection = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                let connection = graceful.watch(connection);
                connections.spawn(async move {
                    let _slot = slot;
                    if let Err(error) = connection.await {
                        tracing::debug!(error = %error, peer = %peer, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    tracing::info!(
        in_flight = graceful.count(),
        "api stopped accepting; draining"
    );
    graceful.shutdown().await;
    while connections.join_next().await.is_some() {}
}

//! The admin socket: how other processes reach the bus of a daemon on the embedded backend,
//! which has no Redis port. The gateway serves it at `<bus.data_dir>/almagest.sock` (mode
//! 0600, so only the daemon's user can connect) while it runs; `almagest ping` and
//! `almagest publish` use it through [`AdminClient`].
//!
//! The protocol is JSON lines: the client writes one request object per line and reads one
//! reply per request, in order.
//!
//! ```text
//! {"op":"ping"}                                   → {"ok":true,"instance":"nas","version":"0.1.0"}
//! {"op":"publish","channel":C,"payload":P}        → {"ok":true,"receivers":N}
//! {"op":"stream_add","key":K,"fields":[["n",V]],"max_len":N}  → {"ok":true,"id":"…"}
//! {"op":"subscribe","channels":[C…],"patterns":[G…]}          → {"ok":true}
//! ```
//!
//! After `subscribe` the connection carries only messages, one per line
//! (`{"channel":C,"pattern":G,"payload":P}`, `pattern` null for exact channels), until either
//! side closes it. A failed request gets `{"ok":false,"error":TEXT}`.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec, LinesCodecError};
use tokio_util::task::AbortOnDropHandle;

use super::BusMessage;
use super::backend::{Backend, Topic};
use super::embedded::EmbeddedBackend;
use super::embedded::pubsub::{Delivery, QUEUE_CAPACITY};

/// How long a client whose request could not be sent looks for the daemon's reason.
const REJECTION_READ_TIMEOUT: Duration = Duration::from_millis(200);

/// The socket's file name inside `bus.data_dir`.
pub const SOCKET_NAME: &str = "almagest.sock";
/// Longest request or message line. Bus messages are notifications and commands of a few
/// kilobytes; this leaves room for a large payload while bounding what one client can make
/// the daemon buffer.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;
/// Most clients connected at once; a script in a loop that never closes its connections
/// cannot exhaust the daemon's file descriptors.
const MAX_CONNECTIONS: usize = 64;
/// Pause after a failed `accept` (out of file descriptors), so the loop does not spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Failure of the admin socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot create the admin socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot reach the daemon at {path}: {source}; is `almagest run` running with \
         bus.backend = \"embedded\" and this bus.data_dir?"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin socket {path}: {message}")]
    Protocol { path: PathBuf, message: String },
    #[error("the daemon rejected the request: {0}")]
    Rejected(String),
}

/// A request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    Publish {
        channel: String,
        payload: String,
    },
    StreamAdd {
        key: String,
        fields: Vec<(String, String)>,
        #[serde(default)]
        max_len: Option<u64>,
    },
    Subscribe {
        #[serde(default)]
        channels: Vec<String>,
        #[serde(default)]
        patterns: Vec<String>,
    },
}

/// A reply line; which fields are set depends on the request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receivers: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Reply {
    fn success() -> Reply {
        Reply {
            ok: true,
            ..Reply::default()
        }
    }

    fn failure(error: impl std::fmt::Display) -> Reply {
        Reply {
            ok: false,
            error: Some(error.to_string()),
            ..Reply::default()
        }
    }
}

/// A message line of a subscribed connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct MessageLine {
    channel: String,
    pattern: Option<String>,
    payload: String,
}

/// The served socket. [`AdminEndpoint::close`] stops it gracefully; dropping it stops
/// serving at once. Either way the socket file is removed, unless another endpoint has
/// replaced it since.
pub struct AdminEndpoint {
    path: PathBuf,
    /// Device and inode of the socket this endpoint created.
    identity: (u64, u64),
    closing: watch::Sender<bool>,
    serve: AbortOnDropHandle<()>,
}

impl AdminEndpoint {
    /// Serves the socket in `data_dir` for `backend`. The caller holds the store's lock, so
    /// no other daemon serves this directory: a socket file found there is left over from a
    /// crash and is replaced.
    pub fn start(
        data_dir: &Path,
        instance: &str,
        backend: Arc<EmbeddedBackend>,
    ) -> Result<AdminEndpoint, AdminError> {
        let path = data_dir.join(SOCKET_NAME);
        let bind_error = |source| AdminError::Bind {
            path: path.clone(),
            source,
        };
        // The socket is bound under a temporary name, made private, then renamed into place,
        // so that it is never reachable with the umask's looser mode.
        let staging = data_dir.join(format!("{SOCKET_NAME}.tmp"));
        remove_if_present(&staging).map_err(bind_error)?;
        let listener = tokio::net::UnixListener::bind(&staging).map_err(bind_error)?;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_error)?;
        std::fs::rename(&staging, &path).map_err(bind_error)?;
        let metadata = std::fs::symlink_metadata(&path).map_err(bind_error)?;
        let closing = watch::Sender::new(false);
        let serve = serve(listener, backend, instance.to_string(), closing.subscribe());
        let serve = tokio::spawn(tracing::Instrument::in_current_span(serve));
        tracing::info!(path = %path.display(), "admin socket listening");
        Ok(AdminEndpoint {
            path,
            identity: (metadata.dev(), metadata.ino()),
            closing,
            serve: AbortOnDropHandle::new(serve),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, lets subscribed clients receive what was published before this call
    /// (a stopping gateway's goodbye), and closes every connection within `timeout`.
    pub async fn close(mut self, timeout: Duration) {
        self.closing.send_replace(true);
        if tokio::time::timeout(timeout, &mut self.serve)
            .await
            .is_err()
        {
            tracing::debug!("admin connections did not close in time; dropping them");
        }
    }
}

impl Drop for AdminEndpoint {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|metadata| (metadata.dev(), metadata.ino()) == self.identity);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Accepts connections until `closing` turns true, then waits for the connections to finish.
/// Aborting it drops the set of connection tasks, which aborts them.
async fn serve(
    listener: tokio::net::UnixListener,
    backend: Arc<EmbeddedBackend>,
    instance: String,
    mut closing: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    let mut failing = false;
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = closed(&mut closing) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                if !failing {
                    tracing::warn!(error = %error, "admin socket cannot accept connections");
                    failing = true;
                }
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        failing = false;
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            connections.spawn(refuse(stream));
            continue;
        };
        let connection = Connection {
            backend: Arc::clone(&backend),
            instance: instance.clone(),
            closing: closing.clone(),
        };
        connections.spawn(async move {
            connection.run(stream).await;
            drop(slot);
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Completes once the endpoint is closing.
async fn closed(closing: &mut watch::Receiver<bool>) {
    // An error means the endpoint is gone, which is closing too.
    let _ = closing.wait_for(|closing| *closing).await;
}

async fn refuse(stream: UnixStream) {
    let (_, write) = stream.into_split();
    let mut lines = FramedWrite::new(write, LinesCodec::new());
    let reply = Reply::failure(format!(
        "too many admin connections (at most {MAX_CONNECTIONS}); close idle ones"
    ));
    let _ = lines.send(encode(&reply)).await;
}

fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|error| {
        format!(r#"{{"ok":false,"error":"cannot encode the reply: {error}"}}"#)
    })
}

type Lines = FramedRead<OwnedReadHalf, LinesCodec>;
type Output = FramedWrite<OwnedWriteHalf, LinesCodec>;

struct Connection {
    backend: Arc<EmbeddedBackend>,
    instance: String,
    closing: watch::Receiver<bool>,
}

impl Connection {
    async fn run(mut self, stream: UnixStream) {
        let (read, write) = stream.into_split();
        let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_LINE_BYTES));
        let mut output = FramedWrite::new(write, LinesCodec::new());
        loop {
            let line = tokio::select! {
                line = lines.next() => line,
                _ = closed(&mut self.closing) => return,
            };
            let Some(line) = line else {
                return;
            };
            let line = match line {
                Ok(line) => line,
                Err(error) => {
                    let _ = output
                        .send(encode(&Reply::failure(line_error(&error))))
                        .await;
                    return;
                }
            };
            let request = match serde_json::from_str::<Request>(&line) {
                Ok(request) => request,
                Err(error) => {
                    let reply = Reply::failure(format!(
                        "invalid request: {error}; send one JSON object per line with \"op\" \
                         ping, publish, stream_add or subscribe"
                    ));
                    if output.send(encode(&reply)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            if let Request::Subscribe { channels, patterns } = request {
                self.stream_messages(channels, patterns, lines, output)
                    .await;
                return;
            }
            let reply = self.execute(request).await;
            if output.send(encode(&reply)).await.is_err() {
                return;
            }
        }
    }

    async fn execute(&self, request: Request) -> Reply {
        match request {
            Request::Ping => Reply {
                instance: Some(self.instance.clone()),
                version: Some(crate::VERSION.to_string()),
                ..Reply::success()
            },
            Request::Publish { channel, payload } => {
                match self.backend.publish(&channel, &payload).await {
                    Ok(receivers) => Reply {
                        receivers: Some(receivers),
                        ..Reply::success()
                    },
                    Err(error) => Reply::failure(error),
                }
            }
            Request::StreamAdd {
                key,
                fields,
                max_len,
            } => match self.backend.stream_add(&key, &fields, max_len).await {
                Ok(id) => Reply {
                    id: Some(id),
                    ..Reply::success()
                },
                Err(error) => Reply::failure(error),
            },
            Request::Subscribe { .. } => Reply::failure("subscribe is handled by the connection"),
        }
    }

    /// Turns the connection into a message stream until the client closes it or stops
    /// reading for [`QUEUE_CAPACITY`] messages.
    async fn stream_messages(
        &mut self,
        channels: Vec<String>,
        patterns: Vec<String>,
        mut lines: Lines,
        mut output: Output,
    ) {
        if channels.is_empty() && patterns.is_empty() {
            let reply = Reply::failure("subscribe needs at least one channel or pattern");
            let _ = output.send(encode(&reply)).await;
            return;
        }
        let topics: BTreeSet<Topic> = channels
            .into_iter()
            .map(Topic::Channel)
            .chain(patterns.into_iter().map(Topic::Pattern))
            .collect();
        let (queue, mut received) = mpsc::channel(QUEUE_CAPACITY);
        let broker = self.backend.broker();
        let subscription = Subscription {
            broker: Arc::clone(broker),
            id: broker.add(Delivery::Queue(queue)),
        };
        broker.set_topics(subscription.id, topics);
        if output.send(encode(&Reply::success())).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = closed(&mut self.closing) => {
                    while let Ok(message) = received.try_recv() {
                        if output.send(encode(&message_line(message))).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                message = received.recv() => {
                    let Some(message) = message else {
                        let reply = Reply::failure("unsubscribed: the client stopped reading");
                        let _ = output.send(encode(&reply)).await;
                        return;
                    };
                    if output.send(encode(&message_line(message))).await.is_err() {
                        return;
                    }
                }
                line = lines.next() => match line {
                    None | Some(Err(_)) => return,
                    Some(Ok(_)) => {
                        let reply = Reply::failure(
                            "a subscribed connection takes no requests: open another connection",
                        );
                        if output.send(encode(&reply)).await.is_err() {
                            return;
                        }
                    }
                },
            }
        }
    }
}

fn line_error(error: &LinesCodecError) -> String {
    match error {
        LinesCodecError::MaxLineLengthExceeded => {
            format!("request line longer than {MAX_LINE_BYTES} bytes")
        }
        LinesCodecError::Io(error) => format!("cannot read the request: {error}"),
    }
}

fn message_line(message: BusMessage) -> MessageLine {
    MessageLine {
        channel: message.channel,
        pattern: message.pattern,
        payload: message.payload,
    }
}

/// Removes an admin client's subscription when its connection ends.
struct Subscription {
    broker: Arc<super::embedded::pubsub::Broker>,
    id: super::embedded::pubsub::SubscriberId,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.broker.remove(self.id);
    }
}

/// A client of a daemon's admin socket.
#[derive(Debug, Clone)]
pub struct AdminClient {
    path: PathBuf,
}

impl AdminClient {
    /// A client of the socket in `data_dir`; nothing is connected until a request.
    pub fn new(data_dir: &Path) -> AdminClient {
        AdminClient {
            path: data_dir.join(SOCKET_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn connect(&self) -> Result<(Lines, Output), AdminError> {
        let stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|source| AdminError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
        let (read, write) = stream.into_split();
        Ok((
            FramedRead::new(read, LinesCodec::new_with_max_length(MAX_LINE_BYTES)),
            FramedWrite::new(write, LinesCodec::new()),
        ))
    }

    fn protocol_error(&self, message: impl Into<String>) -> AdminError {
        AdminError::Protocol {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    async fn exchange(
        &self,
        lines: &mut Lines,
        output: &mut Output,
        request: &Request,
    ) -> Result<Reply, AdminError> {
        if let Err(error) = output.send(encode(request)).await {
            // A daemon that rejects a connection (too many clients) or a request (too large)
            // writes its reason and closes, which fails the send. That reason helps more than the send error.
            let pending = tokio::time::timeout(REJECTION_READ_TIMEOUT, lines.next()).await;
            if let Ok(Some(Ok(line))) = pending
                && let Ok(reply) = serde_json::from_str::<Reply>(&line)
                && !reply.ok
            {
                return Err(AdminError::Rejected(reply.error.unwrap_or_default()));
            }
            return Err(self.protocol_error(format!("cannot send the request: {error}")));
        }
        let line = match lines.next().await {
            Some(Ok(line)) => line,
            Some(Err(error)) => return Err(self.protocol_error(line_error(&error))),
            None => return Err(self.protocol_error("the daemon closed the connection")),
        };
        let reply: Reply = serde_json::from_str(&line)
            .map_err(|error| self.protocol_error(format!("invalid reply {line:?}: {error}")))?;
        if reply.ok {
            Ok(reply)
        } else {
            Err(AdminError::Rejected(reply.error.unwrap_or_default()))
        }
    }

    /// Sends one request on a new connection and returns the reply.
    pub async fn request(&self, request: &Request) -> Result<Reply, AdminError> {
        let (mut lines, mut output) = self.connect().await?;
        self.exchange(&mut lines, &mut output, request).await
    }

    /// Publishes on `channel`; returns how many subscribers received the message.
    pub async fn publish(&self, channel: &str, payload: &str) -> Result<u64, AdminError> {
        let reply = self
            .request(&Request::Publish {
                channel: channel.to_string(),
                payload: payload.to_string(),
            })
            .await?;
        reply
            .receivers
            .ok_or_else(|| self.protocol_error("the publish reply has no receivers"))
    }

    /// Appends a stream entry; returns its id.
    pub async fn stream_add(
        &self,
        key: &str,
        fields: &[(String, String)],
        max_len: Option<u64>,
    ) -> Result<String, AdminError> {
        let reply = self
            .request(&Request::StreamAdd {
                key: key.to_string(),
                fields: fields.to_vec(),
                max_len,
            })
            .await?;
        reply
            .id
            .ok_or_else(|| self.protocol_error("the stream_add reply has no id"))
    }

    /// Subscribes on a connection of its own and returns once the subscription is active.
    pub async fn subscribe(
        &self,
        channels: &[String],
        patterns: &[String],
    ) -> Result<AdminSubscription, AdminError> {
        let (mut lines, mut output) = self.connect().await?;
        let request = Request::Subscribe {
            channels: channels.to_vec(),
            patterns: patterns.to_vec(),
        };
        self.exchange(&mut lines, &mut output, &request).await?;
        Ok(AdminSubscription {
            lines,
            _output: output,
        })
    }
}

/// Messages of a subscribed admin connection.
pub struct AdminSubscription {
    lines: Lines,
    /// Kept open: closing the write half would end the subscription.
    _output: Output,
}

impl AdminSubscription {
    /// The next message; `None` when the connection ended.
    pub async fn next(&mut self) -> Option<BusMessage> {
        let line = self.lines.next().await?.ok()?;
        // A line that is not a message is the daemon's reply ending the subscription.
        let message = serde_json::from_str::<MessageLine>(&line).ok()?;
        Some(BusMessage {
            channel: message.channel,
            pattern: message.pattern,
            payload: message.payload,
        })
    }
}

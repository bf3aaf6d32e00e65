//! What only the embedded backend has: its crash safety under `kill -9`, the lock that keeps
//! a second daemon out of its data directory, and the admin socket.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use almagest::bus::admin::{AdminClient, AdminError, Request};
use almagest::bus::backend::{Backend, EventSink};
use almagest::bus::embedded::EmbeddedBackend;
use almagest::bus::{Names, Notification};
use almagest::config::Config;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::{
    DaemonProcess, WAIT, embedded_config_text, parse_config, wait_for, wait_until,
};

const CONTROL: &str = "[control]\nping_interval_secs = 1\n";
/// Concurrent writers in the crash test: enough that commits are batched and a kill can land
/// in the middle of a batch.
const CRASH_WRITERS: usize = 4;
/// Acknowledged notifications before the kill.
const ACKED_BEFORE_KILL: usize = 300;

fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("almagest-data")
        .tempdir()
        .expect("create data dir")
}

/// Waits until the daemon of `config` answers on its admin socket.
async fn wait_for_daemon(config: &Config) {
    let client = AdminClient::new(&config.bus.data_dir);
    wait_for(WAIT, "the admin socket answers", || async {
        client.request(&Request::Ping).await.ok()
    })
    .await;
}

/// Opens the store of `config` in this process, after its daemon has exited.
fn open_store(config: &Config) -> EmbeddedBackend {
    let sink: EventSink = Arc::new(|_| {});
    EmbeddedBackend::start(&config.bus, sink).expect("the store opens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_writes_loses_no_notification() {
    let data = data_dir();
    let text = embedded_config_text(data.path(), CONTROL);
    let config = parse_config(&text);
    let stream = Names::new(&config.bus.prefix).notify_stream();
    let mut daemon = DaemonProcess::spawn(&text);
    wait_for_daemon(&config).await;

    // Writers append notifications as `notify()` does, through the admin socket, and record
    // every id the daemon acknowledged.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut writers = Vec::new();
    for writer in 0..CRASH_WRITERS {
        let client = AdminClient::new(&config.bus.data_dir);
        let (stream, acked) = (stream.clone(), Arc::clone(&acked));
        let max_len = config.bus.notify_max_len;
        writers.push(tokio::spawn(async move {
            for sequence in 0.. {
                let text = format!("writer {writer} notice {sequence}");
                let fields = [("n".to_string(), Notification::text(text).encode())];
                match client.stream_add(&stream, &fields, Some(max_len)).await {
                    Ok(id) => acked.lock().unwrap().push((id, fields[0].1.clone())),
                    Err(_) => return,
                }
            }
        }));
    }
    wait_until(WAIT, "enough notifications are acknowledged", || async {
        acked.lock().unwrap().len() >= ACKED_BEFORE_KILL
    })
    .await;
    daemon.signal(libc::SIGKILL);
    let status = daemon.wait(WAIT).await;
    assert_eq!(status.code(), None, "killed by a signal");
    for writer in writers {
        tokio::time::timeout(WAIT, writer)
            .await
            .expect("writers stop once the daemon is gone")
            .expect("writer task");
    }

    let mut restarted = DaemonProcess::spawn(&text);
    wait_for_daemon(&config).await;
    restarted.signal(libc::SIGTERM);
    let status = restarted.wait(WAIT).await;
    assert_eq!(status.code(), Some(0), "{}", restarted.log());
    assert_eq!(
        restarted.log_count("repairing the embedded store"),
        1,
        "the kill left an unclean store: {}",
        restarted.log()
    );

    let store = open_store(&config);
    let stored: HashMap<String, String> = store
        .stream_range(&stream, "-", "+", 1_000_000)
        .await
        .expect("read the stream")
        .into_iter()
        .map(|entry| {
            let notification = entry.get("n").unwrap_or_default().to_string();
            (entry.id, notification)
        })
        .collect();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= ACKED_BEFORE_KILL);
    let lost: Vec<&(String, String)> = acked
        .iter()
        .filter(|(id, notification)| stored.get(id) != Some(notification))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged notifications lost, first {:?}",
        lost.len(),
        acked.len(),
        lost.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_daemon_kept_out_of_data_dir() {
    let data = data_dir();
    let first_text = embedded_config_text(data.path(), CONTROL);
    let first_config = parse_config(&first_text);
    let _first = DaemonProcess::spawn(&first_text);
    wait_for_daemon(&first_config).await;

    let mut second = DaemonProcess::spawn(&embedded_config_text(data.path(), CONTROL));
    let status = second.wait(WAIT).await;
    assert_eq!(status.code(), Some(1), "{}", second.log());
    assert!(
        second.log_count("in use by another process") > 0,
        "{}",
        second.log()
    );
    let still_served = AdminClient::new(data.path()).request(&Request::Ping).await;
    assert_eq!(
        still_served.ok().and_then(|reply| reply.instance),
        Some(first_config.bus.instance.clone()),
    );
}

#[test]
fn second_instance_in_process_refused() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = runtime.enter();
    let data = data_dir();
    let first = parse_config(&embedded_config_text(data.path(), ""));
    let second = parse_config(&embedded_config_text(data.path(), ""));
    let _open = open_store(&first);
    let sink: EventSink = Arc::new(|_| {});
    let refused = EmbeddedBackend::start(&second.bus, sink).err();
    let message = refused.map(|error| error.to_string()).unwrap_or_default();
    assert!(message.contains("already open for instance"), "{message:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_replaced_and_private() {
    let data = data_dir();
    let socket = data.path().join(almagest::bus::admin::SOCKET_NAME);
    // What a crashed daemon leaves: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind a stale socket"));
    assert!(socket.exists());

    let text = embedded_config_text(data.path(), CONTROL);
    let config = parse_config(&text);
    let mut daemon = DaemonProcess::spawn(&text);
    wait_for_daemon(&config).await;
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");

    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait(WAIT).await.code(), Some(0));
    assert!(!socket.exists(), "a clean stop removes the socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_without_daemon_names_socket() {
    let data = data_dir();
    let config = parse_config(&embedded_config_text(data.path(), CONTROL));
    let error = almagest::cli::ping(&config, Duration::from_millis(300))
        .await
        .expect_err("nothing serves the socket");
    let message = error.to_string();
    assert!(message.contains("almagest.sock"), "{message}");
    assert!(message.contains("almagest run"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_publish_reaches_subscriber() {
    let data = data_dir();
    let text = embedded_config_text(data.path(), CONTROL);
    let config = parse_config(&text);
    let daemon = DaemonProcess::spawn(&text);
    wait_for_daemon(&config).await;
    let client = AdminClient::new(data.path());
    let queue = Names::new(&config.bus.prefix).queue(&almagest::bus::Stub::parse("wiki").unwrap());
    let mut subscription = client
        .subscribe(&[], &[format!("{}:q:*", config.bus.prefix)])
        .await
        .expect("subscribe");

    let (code, stdout, stderr) = daemon.run_cli(&["publish", "wiki", "reload"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("(1 receiver)"), "{stdout}");
    let message = tokio::time::timeout(WAIT, subscription.next())
        .await
        .expect("message in time")
        .expect("message");
    assert_eq!(message.channel, queue);
    assert_eq!(message.pattern, Some(format!("{}:q:*", config.bus.prefix)));
    assert_eq!(message.payload, "reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rejects_invalid_requests() {
    let data = data_dir();
    let text = embedded_config_text(data.path(), CONTROL);
    let config = parse_config(&text);
    let _daemon = DaemonProcess::spawn(&text);
    wait_for_daemon(&config).await;
    let socket = data.path().join(almagest::bus::admin::SOCKET_NAME);
    let stream = tokio::net::UnixStream::connect(&socket)
        .await
        .expect("connect");
    let (read, mut write) = stream.into_split();
    let mut replies = BufReader::new(read).lines();

    for line in ["not json", r#"{"op":"flush_all"}"#, r#"{"op":"subscribe"}"#] {
        write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write");
        let reply = replies.next_line().await.expect("read").expect("a reply");
        let reply: serde_json::Value = serde_json::from_str(&reply).expect("json reply");
        assert_eq!(reply["ok"], false, "{line}: {reply}");
        assert!(reply["error"].is_string(), "{line}: {reply}");
        if line.contains("subscribe") {
            break;
        }
    }

    let rejected = AdminClient::new(data.path())
        .request(&Request::Publish {
            channel: "x".into(),
            payload: "y".repeat(almagest::bus::admin::MAX_LINE_BYTES + 1),
        })
        .await;
    assert!(
        matches!(&rejected, Err(AdminError::Rejected(message)) if message.contains("longer than")),
        "{rejected:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connection_cap_gives_reason() {
    let data = data_dir();
    let text = embedded_config_text(data.path(), CONTROL);
    let config = parse_config(&text);
    let _daemon = DaemonProcess::spawn(&text);
    wait_for_daemon(&config).await;
    let socket = data.path().join(almagest::bus::admin::SOCKET_NAME);
    // Idle connections that take every slot; one ping on each proves it was admitted.
    let mut idle = Vec::new();
    for _ in 0..64 {
        let stream = tokio::net::UnixStream::connect(&socket)
            .await
            .expect("connect");
        let (read, mut write) = stream.into_split();
        write
            .write_all(b"{\"op\":\"ping\"}\n")
            .await
            .expect("write");
        let mut replies = BufReader::new(read).lines();
        let reply = replies.next_line().await.expect("read").expect("a reply");
        assert!(reply.contains("\"ok\":true"), "{reply}");
        idle.push((replies, write));
    }

    let rejected = AdminClient::new(data.path()).request(&Request::Ping).await;

    assert!(
        matches!(&rejected, Err(AdminError::Rejected(message)) if message.contains("too many admin connections")),
        "{rejected:?}"
    );
}

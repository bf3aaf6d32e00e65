//! The daemon core: pings, restarts, outages, config errors and shutdown. Tests that do not
//! depend on Redis run on both backends (`on_redis::…`, `on_embedded::…`); the outage tests
//! run against a real redis-server only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use almagest::bus::backend::{Backend, BackendEvent, BusError};
use almagest::bus::redis::RedisBackend;
use almagest::config::{BackendKind, Config};

use crate::support::{
    Daemon, DaemonProcess, RedisServer, TestBus, WAIT, config_text, on_both_backends, parse_config,
    run_cli, wait_for, wait_until,
};

on_both_backends!(
    ping_lists_every_service,
    crashed_service_restarts_in_place,
    crash_drill_off_by_default,
    gateway_crash_resubscribes_services,
    restart_cap_exits_nonzero,
    sigterm_stops_cleanly_with_goodbyes,
    sighup_stops_gracefully,
    invalid_control_messages_ignored,
);

const CONTROL: &str = "[control]\nping_interval_secs = 1\nallow_crash_command = true\n";

/// Pings through the library and returns `service -> restarts` of this config's instance
/// once every expected service answered.
pub(crate) async fn answers(config: &Config) -> Option<BTreeMap<String, u32>> {
    let report = almagest::cli::ping(config, Duration::from_millis(500))
        .await
        .ok()?;
    if !report.missing.is_empty() {
        return None;
    }
    Some(
        report
            .rows
            .into_iter()
            .filter(|row| row.pong.instance == config.bus.instance)
            .map(|row| (row.pong.service, row.pong.restarts))
            .collect(),
    )
}

pub(crate) fn crash(service: &str, instance: &str) -> String {
    format!(r#"{{"type":"crash","service":"{service}","instance":"{instance}"}}"#)
}

async fn ping_lists_every_service(kind: BackendKind) {
    let bus = TestBus::start(kind);
    let daemon = DaemonProcess::spawn(&bus.config_text(CONTROL));
    let config_path = daemon.config_path.clone();
    let stdout = wait_for(WAIT, "almagest ping to succeed", || {
        let config_path = config_path.clone();
        async move {
            let (code, stdout, _) = tokio::task::spawn_blocking(move || {
                run_cli(&config_path, &["ping", "--timeout", "1"])
            })
            .await
            .unwrap();
            (code == 0).then_some(stdout)
        }
    })
    .await;
    assert!(stdout.contains("gateway"), "{stdout}");
    assert!(stdout.contains("control"), "{stdout}");
    assert!(stdout.starts_with("SERVICE"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_fails_when_service_missing() {
    let redis = RedisServer::start();
    // The config enables control, but no daemon runs: nothing answers.
    let config = parse_config(&config_text(&redis.url(), CONTROL));
    let report = almagest::cli::ping(&config, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(report.rows.is_empty());
    assert_eq!(report.missing.len(), 2, "{:?}", report.missing);
}

async fn crashed_service_restarts_in_place(kind: BackendKind) {
    let bus = TestBus::start(kind);
    let daemon = Daemon::start(parse_config(&bus.config_text(CONTROL)));
    let before = wait_for(WAIT, "first pongs", || answers(&daemon.config)).await;
    assert_eq!(before.get("control"), Some(&0));

    bus.publish(
        &daemon.config,
        &daemon.names().control(),
        &crash("control", daemon.instance()),
    )
    .await;
    let after = wait_for(WAIT, "control to answer after its restart", || async {
        answers(&daemon.config)
            .await
            .filter(|restarts| restarts.get("control") == Some(&1))
    })
    .await;
    assert_eq!(
        after.get("gateway"),
        Some(&0),
        "the gateway was not restarted"
    );
    daemon.stop().await.expect("clean stop");
}

async fn crash_drill_off_by_default(kind: BackendKind) {
    let bus = TestBus::start(kind);
    let text = bus.config_text("[control]\nping_interval_secs = 1\n");
    let daemon = Daemon::start(parse_config(&text));
    wait_for(WAIT, "first pongs", || answers(&daemon.config)).await;
    bus.publish(
        &daemon.config,
        &daemon.names().control(),
        &crash("control", daemon.instance()),
    )
    .await;
    // A ping published after the crash message is handled after it, so this pong shows
    // whether the crash happened.
    let restarts = wait_for(WAIT, "pongs", || answers(&daemon.config)).await;
    assert_eq!(restarts.get("control"), Some(&0));
    daemon.stop().await.expect("clean stop");
}

async fn gateway_crash_resubscribes_services(kind: BackendKind) {
    let bus = TestBus::start(kind);
    let daemon = Daemon::start(parse_config(&bus.config_text(CONTROL)));
    wait_for(WAIT, "first pongs", || answers(&daemon.config)).await;

    bus.publish(
        &daemon.config,
        &daemon.names().control(),
        &crash("gateway", daemon.instance()),
    )
    .await;
    // Pongs from every service prove that each one subscribed again with the new gateway.
    let restarts = wait_for(WAIT, "pongs after the gateway restart", || async {
        answers(&daemon.config)
            .await
            .filter(|restarts| restarts.get("gateway") == Some(&1))
    })
    .await;
    assert_eq!(restarts.get("control"), Some(&1));
    daemon.stop().await.expect("clean stop");
}

async fn restart_cap_exits_nonzero(kind: BackendKind) {
    let bus = TestBus::start(kind);
    let text = bus.config_text(&format!(
        "{CONTROL}\n[supervisor]\nmax_restarts = 2\nwindow_secs = 600\n"
    ));
    let config = parse_config(&text);
    let mut daemon = DaemonProcess::spawn(&text);
    for restarts in 0..=2u32 {
        wait_for(WAIT, "control to answer", || async {
            answers(&config)
                .await
                .filter(|found| found.get("control") == Some(&restarts))
        })
        .await;
        let control = almagest::bus::Names::new(&config.bus.prefix).control();
        bus.publish(&config, &control, &crash("control", &config.bus.instance))
            .await;
    }
    let status = daemon.wait(WAIT).await;
    assert!(!status.success(), "exit status {status}");
    assert_eq!(
        daemon.log_count("restart cap reached"),
        1,
        "{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_survived_without_traffic() {
    let mut redis = RedisServer::start();
    let text = config_text(&redis.url(), CONTROL);
    let config = parse_config(&text);
    let daemon = DaemonProcess::spawn(&text);
    wait_for(WAIT, "first pongs", || answers(&config)).await;

    redis.stop();
    // The outage itself: fifteen seconds with Redis gone, longer than redis-rs's own retries
    // would last, and with nothing else happening on the bus.
    tokio::time::sleep(Duration::from_secs(15)).await;
    redis.launch();

    let restarts = wait_for(WAIT, "pongs after the outage", || answers(&config)).await;
    assert_eq!(restarts.get("control"), Some(&0), "no service restarted");
    assert_eq!(
        restarts.get("gateway"),
        Some(&0),
        "the gateway did not restart"
    );
    assert_eq!(
        daemon.log_count("redis connection lost"),
        1,
        "{}",
        daemon.log()
    );
    assert_eq!(
        daemon.log_count("redis connection restored"),
        1,
        "{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_before_redis_without_burning_restarts() {
    let mut redis = RedisServer::prepare(&["--save", "", "--appendonly", "no"]);
    let text = config_text(&redis.url(), CONTROL);
    let config = parse_config(&text);
    let daemon = DaemonProcess::spawn(&text);
    wait_until(WAIT, "the daemon reports Redis unreachable", || async {
        daemon.log_count("cannot connect to redis") > 0
    })
    .await;
    // Several reconnect attempts happen in these seconds; only the first one is logged.
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.launch();

    let restarts = wait_for(WAIT, "pongs once Redis is up", || answers(&config)).await;
    assert_eq!(restarts.get("control"), Some(&0));
    assert_eq!(restarts.get("gateway"), Some(&0));
    assert_eq!(
        daemon.log_count("cannot connect to redis"),
        1,
        "{}",
        daemon.log()
    );
    assert_eq!(
        daemon.log_count("redis connection restored"),
        1,
        "{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_exits_2_listing_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[bus]\ninstanse = \"x\"\n[supervisor]\nmax_restarts = \"many\"\n[redis]\nurl = \"http://localhost\"\n",
    )
    .unwrap();
    for command in ["check-config", "run"] {
        let (code, _, stderr) = run_cli(&path, &[command]);
        assert_eq!(code, 2, "{command}: {stderr}");
        assert!(
            stderr.contains("bus.instanse: unknown key"),
            "{command}: {stderr}"
        );
        assert!(
            stderr.contains("supervisor.max_restarts: invalid type"),
            "{command}: {stderr}"
        );
        assert!(
            stderr.contains("redis.url: unsupported scheme"),
            "{command}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, "[redis]\nurl = \"redis://:hunter2@127.0.0.1:1/0\"\n").unwrap();
    let (code, stdout, stderr) = run_cli(&path, &["check-config"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(stdout.contains("password = \"********\""), "{stdout}");
}

/// Process ids whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the parenthesised command name.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|field| field.parse::<i32>().ok());
        if parent == Some(pid) {
            children.push(child);
        }
    }
    children
}

async fn sigterm_stops_cleanly_with_goodbyes(kind: BackendKind) {
    let bus = TestBus::start(kind);
    let text = bus.config_text(CONTROL);
    let config = parse_config(&text);
    let mut daemon = DaemonProcess::spawn(&text);
    wait_for(WAIT, "first pongs", || answers(&config)).await;
    let control = almagest::bus::Names::new(&config.bus.prefix).control();
    let goodbyes = bus.subscribe(&config, &control).await;
    let children = children_of(daemon.pid());

    daemon.signal(libc::SIGTERM);
    // The deadline is supervisor.shutdown_timeout_secs (10 s) plus process exit.
    let status = daemon.wait(Duration::from_secs(12)).await;

    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    let said: Vec<String> = goodbyes
        .json()
        .iter()
        .filter(|message| message["type"] == "goodbye")
        .map(|message| message["service"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(said.contains(&"control".to_string()), "{said:?}");
    assert!(said.contains(&"gateway".to_string()), "{said:?}");
    for child in children {
        assert!(
            !std::path::Path::new(&format!("/proc/{child}")).exists(),
            "child process {child} outlived the daemon"
        );
    }
}

async fn sighup_stops_gracefully(kind: BackendKind) {
    let bus = TestBus::start(kind);
    let text = bus.config_text(CONTROL);
    let config = parse_config(&text);
    let mut daemon = DaemonProcess::spawn(&text);
    wait_for(WAIT, "first pongs", || answers(&config)).await;

    daemon.signal(libc::SIGHUP);
    let status = daemon.wait(Duration::from_secs(12)).await;

    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert_eq!(
        daemon.log_count(r#""signal":"SIGHUP""#),
        1,
        "{}",
        daemon.log()
    );
    assert_eq!(daemon.log_count("service stopped"), 1, "{}", daemon.log());
}

async fn invalid_control_messages_ignored(kind: BackendKind) {
    let bus = TestBus::start(kind);
    let daemon = Daemon::start(parse_config(&bus.config_text(CONTROL)));
    wait_for(WAIT, "first pongs", || answers(&daemon.config)).await;
    let control = daemon.names().control();
    for payload in [
        "{",
        "[1,2]",
        "42",
        r#"{"type":"dance"}"#,
        r#"{"type":"ping","id":[]}"#,
        "",
    ] {
        bus.publish(&daemon.config, &control, payload).await;
    }
    // Only Redis carries payloads that are not UTF-8; the admin socket speaks JSON text.
    if let TestBus::Redis(redis) = &bus {
        let mut connection = redis.connection().await;
        redis::cmd("PUBLISH")
            .arg(&control)
            .arg(&b"\xff\xfe not utf-8"[..])
            .query_async::<u64>(&mut connection)
            .await
            .unwrap();
    }
    let restarts = wait_for(WAIT, "pongs after garbage", || answers(&daemon.config)).await;
    assert_eq!(restarts.get("control"), Some(&0));
    assert_eq!(restarts.get("gateway"), Some(&0));
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_fails_at_once_while_redis_down() {
    let mut redis = RedisServer::start();
    let config = parse_config(&config_text(&redis.url(), ""));
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let sink: almagest::bus::backend::EventSink = Arc::new(move |event| {
        let _ = events_tx.send(event);
    });
    let backend = RedisBackend::start(&config.redis, sink).unwrap();
    wait_until(WAIT, "the backend connects", || async {
        backend.is_connected()
    })
    .await;
    assert_eq!(backend.publish("x", "hello").await, Ok(0));

    redis.stop();
    wait_until(WAIT, "the backend notices", || async {
        !backend.is_connected()
    })
    .await;
    let outcome = tokio::time::timeout(Duration::from_secs(5), backend.publish("x", "lost?")).await;
    let Ok(Err(error)) = outcome else {
        panic!("publish while down must fail at once, got {outcome:?}");
    };
    assert!(matches!(error, BusError::Unavailable(_)), "{error:?}");

    redis.launch();
    wait_until(WAIT, "the backend reconnects", || async {
        backend.is_connected()
    })
    .await;
    assert_eq!(backend.publish("x", "hello again").await, Ok(0));
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert_eq!(
        seen,
        [
            BackendEvent::Connected,
            BackendEvent::Disconnected,
            BackendEvent::Connected
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_password_logged_once() {
    let mut redis = RedisServer::prepare(&["--save", "", "--appendonly", "no"]);
    redis.launch_with_password("right");
    let text = config_text(&redis.url(), &format!("{CONTROL}\n"));
    let text = text.replace("[redis]\n", "[redis]\npassword = \"wrong\"\n");
    let daemon = DaemonProcess::spawn(&text);
    wait_until(WAIT, "the daemon reports Redis unreachable", || async {
        daemon.log_count("cannot connect to redis") > 0
    })
    .await;
    // Several reconnect attempts happen in these seconds; none may look like a working link.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        daemon.log_count("cannot connect to redis"),
        1,
        "{}",
        daemon.log()
    );
    assert_eq!(
        daemon.log_count("connected to redis"),
        0,
        "{}",
        daemon.log()
    );
    assert_eq!(
        daemon.log_count("redis connection lost"),
        0,
        "{}",
        daemon.log()
    );
    assert!(
        !daemon.log().contains("wrong\""),
        "the password leaked: {}",
        daemon.log()
    );
}

//! The torrent service in a daemon on a real redis-server, polling real clients.

use std::time::Duration;

use almagest::torrent::model::TorrentState;
use serde_json::json;

use crate::support::fake_http::{FakeServer, Request, Response};
use crate::support::qbittorrent::QbittorrentDaemon;
use crate::support::torrent_service::{
    events, exists, notices, run_done_hook, seen_incomplete, torrent_section,
};
use crate::support::torrents::{
    free_port, make_payload, make_torrent, on_disk_name, wait_for_state,
};
use crate::support::transmission::{PASSWORD, TransmissionDaemon};
use crate::support::{
    Daemon, RedisServer, Subscription, WAIT, config_text, parse_config, wait_until,
};

/// Starts a daemon and waits until its baseline of `client` is stored.
async fn start_daemon(redis: &RedisServer, text: &str, client: &str) -> Daemon {
    let daemon = Daemon::start(parse_config(text));
    let marker = daemon.names().torrent_baseline(client);
    wait_until(WAIT, "the baseline marker is stored", || {
        exists(redis, &marker)
    })
    .await;
    daemon
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_announces_download_once() {
    let Some(transmission) = TransmissionDaemon::start("service_announces_download_once").await
    else {
        return;
    };
    let redis = RedisServer::start();
    let section = torrent_section("nas", "transmission", &transmission.url(), PASSWORD, "");
    let text = config_text(&redis.url(), &section);
    let daemon = start_daemon(&redis, &text, "nas").await;
    let names = daemon.names();
    let events_channel = names.events("torrent");
    let subscription = Subscription::start(&redis.client(), &events_channel).await;

    // Added without data, then completed by a re-check.
    let source = tempfile::tempdir().unwrap();
    let name = "\"Quoted\" film ☂ @everyone.bin";
    let payload = make_payload(source.path(), name, 200_000, 21);
    let (torrent, hash) = make_torrent(&payload, source.path());
    transmission.add(&torrent).await;
    wait_until(WAIT, "torrent.added", || async {
        !events(&subscription, "torrent.added", &hash).is_empty()
    })
    .await;
    wait_until(WAIT, "the service saw it incomplete", || {
        seen_incomplete(&redis, &names, &hash)
    })
    .await;
    std::fs::copy(
        &payload,
        transmission.download_dir().join(on_disk_name(name)),
    )
    .unwrap();
    transmission.verify(&hash).await;
    wait_until(WAIT, "torrent.completed", || async {
        !events(&subscription, "torrent.completed", &hash).is_empty()
    })
    .await;

    // The event carries the name unchanged; the notice shows it without mentioning anyone.
    let completed = events(&subscription, "torrent.completed", &hash);
    assert_eq!(completed[0]["name"], name);
    assert_eq!(completed[0]["client"], "nas");
    assert_eq!(completed[0]["size_bytes"], 200_000);
    let all = notices(&redis, &names).await;
    let finished: Vec<_> = all
        .iter()
        .filter(|n| n["title"] == "Download finished")
        .collect();
    assert_eq!(finished.len(), 1, "{all:?}");
    let notice_text = finished[0]["text"].as_str().unwrap();
    assert!(!notice_text.contains("@everyone"), "{notice_text}");
    assert!(notice_text.contains("film ☂"), "{notice_text}");
    assert_eq!(finished[0]["source"], "torrent");

    // Across an Almagest restart nothing is repeated. A second torrent's "added" shows that
    // the restarted service has polled.
    daemon.stop().await.unwrap();
    // The same config text keeps instance and prefix, so the new daemon finds the stored state.
    let daemon = Daemon::start(parse_config(&text));
    let second = make_payload(source.path(), "second.bin", 50_000, 22);
    let (second_torrent, second_hash) = make_torrent(&second, source.path());
    transmission.add(&second_torrent).await;
    wait_until(WAIT, "torrent.added of the second torrent", || async {
        !events(&subscription, "torrent.added", &second_hash).is_empty()
    })
    .await;
    assert_eq!(events(&subscription, "torrent.added", &hash).len(), 1);
    assert_eq!(events(&subscription, "torrent.completed", &hash).len(), 1);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_while_stopped_announced_once() {
    let Some(transmission) =
        TransmissionDaemon::start("completion_while_stopped_announced_once").await
    else {
        return;
    };
    let redis = RedisServer::start();
    let section = torrent_section("nas", "transmission", &transmission.url(), PASSWORD, "");
    let text = config_text(&redis.url(), &section);
    let daemon = start_daemon(&redis, &text, "nas").await;
    let names = daemon.names();
    let subscription = Subscription::start(&redis.client(), &names.events("torrent")).await;
    let source = tempfile::tempdir().unwrap();
    let payload = make_payload(source.path(), "while-away.bin", 100_000, 23);
    let (torrent, hash) = make_torrent(&payload, source.path());
    transmission.add(&torrent).await;
    wait_until(WAIT, "torrent.added", || async {
        !events(&subscription, "torrent.added", &hash).is_empty()
    })
    .await;

    // Almagest is stopped while the torrent completes.
    wait_until(WAIT, "the service saw it incomplete", || {
        seen_incomplete(&redis, &names, &hash)
    })
    .await;
    daemon.stop().await.unwrap();
    std::fs::copy(&payload, transmission.download_dir().join("while-away.bin")).unwrap();
    transmission.verify(&hash).await;
    wait_for_state(&mut transmission.client(), &hash, TorrentState::Seeding).await;

    let daemon = Daemon::start(parse_config(&text));
    wait_until(WAIT, "torrent.completed after the restart", || async {
        !events(&subscription, "torrent.completed", &hash).is_empty()
    })
    .await;
    let second = make_payload(source.path(), "later.bin", 50_000, 24);
    let (second_torrent, second_hash) = make_torrent(&second, source.path());
    transmission.add(&second_torrent).await;
    wait_until(WAIT, "torrent.added of the second torrent", || async {
        !events(&subscription, "torrent.added", &second_hash).is_empty()
    })
    .await;
    assert_eq!(events(&subscription, "torrent.completed", &hash).len(), 1);
    assert_eq!(events(&subscription, "torrent.added", &hash).len(), 1);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn done_hook_wakes_the_poll() {
    let Some(transmission) = TransmissionDaemon::start("done_hook_wakes_the_poll").await else {
        return;
    };
    let redis = RedisServer::start();
    // An hour between polls: only the first poll and the hook make the service look.
    let section = torrent_section("nas", "transmission", &transmission.url(), PASSWORD, "")
        .replace("poll_interval_secs = 1", "poll_interval_secs = 3600");
    let text = config_text(&redis.url(), &section);
    let daemon = start_daemon(&redis, &text, "nas").await;
    let names = daemon.names();
    let subscription = Subscription::start(&redis.client(), &names.events("torrent")).await;
    let source = tempfile::tempdir().unwrap();
    let payload = make_payload(source.path(), "hooked & \"quoted\".bin", 100_000, 25);
    let (torrent, hash) = make_torrent(&payload, source.path());
    std::fs::copy(
        &payload,
        transmission
            .download_dir()
            .join(on_disk_name("hooked & \"quoted\".bin")),
    )
    .unwrap();
    transmission.add(&torrent).await;
    wait_for_state(&mut transmission.client(), &hash, TorrentState::Seeding).await;

    run_done_hook(&redis, &names, "nas", &hash);
    wait_until(WAIT, "torrent.completed from the hook", || async {
        !events(&subscription, "torrent.completed", &hash).is_empty()
    })
    .await;
    assert_eq!(events(&subscription, "torrent.added", &hash).len(), 1);

    // A repeated hook call changes nothing; a hook call for a new torrent shows the poll ran.
    run_done_hook(&redis, &names, "nas", &hash);
    let second = make_payload(source.path(), "second.bin", 50_000, 26);
    let (second_torrent, second_hash) = make_torrent(&second, source.path());
    transmission.add(&second_torrent).await;
    run_done_hook(&redis, &names, "nas", &second_hash);
    wait_until(WAIT, "torrent.added of the second torrent", || async {
        !events(&subscription, "torrent.added", &second_hash).is_empty()
    })
    .await;
    assert_eq!(events(&subscription, "torrent.completed", &hash).len(), 1);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_client_notices_once() {
    let redis = RedisServer::start();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/transmission/rpc");
    let section = torrent_section("nas", "transmission", &url, "pw", "down_after_secs = 1");
    let daemon = Daemon::start(parse_config(&config_text(&redis.url(), &section)));
    let names = daemon.names();
    let titled =
        |all: &[serde_json::Value], title: &str| all.iter().filter(|n| n["title"] == title).count();
    wait_until(WAIT, "the unreachable notice", || async {
        titled(&notices(&redis, &names).await, "Torrent client unreachable") == 1
    })
    .await;

    // The client comes up on its port: one "back" notice.
    let _fake = FakeServer::start_on(port, |request: &Request| {
        let body = request.json();
        let arguments = match body["method"].as_str() {
            Some("session-get") => json!({"rpc-version": 17, "version": "4.0.6"}),
            _ => json!({"torrents": []}),
        };
        Response::json(json!({"arguments": arguments, "result": "success"}))
    })
    .await;
    wait_until(Duration::from_secs(60), "the back notice", || async {
        titled(&notices(&redis, &names).await, "Torrent client back") == 1
    })
    .await;
    let all = notices(&redis, &names).await;
    assert_eq!(titled(&all, "Torrent client unreachable"), 1, "{all:?}");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qbittorrent_service_completes_once() {
    let Some(qbittorrent) = QbittorrentDaemon::start("qbittorrent_service_completes_once").await
    else {
        return;
    };
    let redis = RedisServer::start();
    let section = torrent_section(
        "qb",
        "qbittorrent",
        &qbittorrent.url(),
        crate::support::qbittorrent::PASSWORD,
        "",
    );
    let text = config_text(&redis.url(), &section);
    let daemon = start_daemon(&redis, &text, "qb").await;
    let subscription =
        Subscription::start(&redis.client(), &daemon.names().events("torrent")).await;
    let source = tempfile::tempdir().unwrap();
    let payload = make_payload(source.path(), "qb-late.bin", 200_000, 27);
    let (torrent, hash) = make_torrent(&payload, source.path());
    qbittorrent.add(&torrent).await;
    wait_until(WAIT, "torrent.added", || async {
        !events(&subscription, "torrent.added", &hash).is_empty()
    })
    .await;

    let names = daemon.names();
    wait_until(WAIT, "the service saw it incomplete", || {
        seen_incomplete(&redis, &names, &hash)
    })
    .await;
    std::fs::copy(&payload, qbittorrent.download_dir().join("qb-late.bin")).unwrap();
    qbittorrent.recheck(&hash).await;
    wait_until(WAIT, "torrent.completed", || async {
        !events(&subscription, "torrent.completed", &hash).is_empty()
    })
    .await;
    qbittorrent.recheck(&hash).await;
    let second = make_payload(source.path(), "qb-second.bin", 50_000, 28);
    let (second_torrent, second_hash) = make_torrent(&second, source.path());
    qbittorrent.add(&second_torrent).await;
    wait_until(WAIT, "torrent.added of the second torrent", || async {
        !events(&subscription, "torrent.added", &second_hash).is_empty()
    })
    .await;
    assert_eq!(events(&subscription, "torrent.completed", &hash).len(), 1);
    daemon.stop().await.unwrap();
}

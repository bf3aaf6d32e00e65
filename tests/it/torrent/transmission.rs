//! Transmission 3.00 (the Debian package), started by each test.

use std::collections::HashSet;

use almagest::torrent::client::{ClientError, TorrentClient};
use almagest::torrent::diff::EventKind::{Added, Completed};
use almagest::torrent::model::{Completeness, TorrentState};

use crate::support::torrents::{Poller, make_payload, make_torrent};
use crate::support::transmission::TransmissionDaemon;

#[tokio::test]
async fn seeded_torrent_is_added_only() {
    let Some(daemon) = TransmissionDaemon::start("seeded_torrent_is_added_only").await else {
        return;
    };
    let mut poller = Poller::new("transmission", daemon.client());
    poller.poll().await;
    let source = tempfile::tempdir().unwrap();
    let payload = make_payload(&daemon.download_dir(), "seeded.bin", 300_000, 1);
    let (torrent, hash) = make_torrent(&payload, source.path());

    daemon.add(&torrent).await;
    poller
        .poll_until(&hash, "seeding", |t| t.state == TorrentState::Seeding)
        .await;
    for _ in 0..3 {
        poller.poll().await;
    }

    assert_eq!(poller.kinds(&hash), vec![Added]);
}

#[tokio::test]
async fn recheck_with_data_completes_once() {
    let Some(mut daemon) = TransmissionDaemon::start("recheck_with_data_completes_once").await
    else {
        return;
    };
    let mut poller = Poller::new("transmission", daemon.client());
    poller.poll().await;
    let source = tempfile::tempdir().unwrap();
    let payload = make_payload(source.path(), "late.bin", 300_000, 2);
    let (torrent, hash) = make_torrent(&payload, source.path());

    // Added without its data: it stays incomplete.
    daemon.add(&torrent).await;
    let missing = poller
        .poll_until(&hash, "incomplete", |t| {
            t.completeness() == Completeness::Incomplete
        })
        .await;
    assert_eq!(missing.progress, 0.0);
    assert_eq!(poller.kinds(&hash), vec![Added]);

    // The data appears and a re-check finds it.
    std::fs::copy(&payload, daemon.download_dir().join("late.bin")).unwrap();
    daemon.verify(&hash).await;
    let done = poller
        .poll_until(&hash, "seeding", |t| t.state == TorrentState::Seeding)
        .await;
    assert_eq!(
        done.done_at, None,
        "Transmission 3.00 sets no doneDate after a re-check"
    );
    assert_eq!(poller.kinds(&hash), vec![Added, Completed]);

    // Nothing more: further polls, a second re-check, a daemon restart.
    for _ in 0..3 {
        poller.poll().await;
    }
    daemon.verify(&hash).await;
    poller
        .poll_until(&hash, "checked", |t| t.state == TorrentState::Seeding)
        .await;
    daemon.restart().await;
    for _ in 0..3 {
        poller.poll().await;
    }
    assert_eq!(poller.kinds(&hash), vec![Added, Completed]);
}

#[tokio::test]
async fn completion_found_by_stored_state() {
    // A poller that only has the stored state of an earlier one (as after an Almagest restart)
    // announces a completion that happened in between, once.
    let Some(daemon) = TransmissionDaemon::start("completion_found_by_stored_state").await else {
        return;
    };
    let mut before = Poller::new("transmission", daemon.client());
    before.poll().await;
    let source = tempfile::tempdir().unwrap();
    let payload = make_payload(source.path(), "away.bin", 200_000, 3);
    let (torrent, hash) = make_torrent(&payload, source.path());
    daemon.add(&torrent).await;
    before
        .poll_until(&hash, "incomplete", |t| {
            t.completeness() == Completeness::Incomplete
        })
        .await;

    std::fs::copy(&payload, daemon.download_dir().join("away.bin")).unwrap();
    daemon.verify(&hash).await;
    let mut probe = daemon.client();
    crate::support::torrents::wait_for_state(&mut probe, &hash, TorrentState::Seeding).await;

    let mut after = Poller::new("transmission", daemon.client());
    after.stored = before.stored.clone();
    after.baseline_taken = true;
    after.poll().await;
    after.poll().await;
    assert_eq!(after.kinds(&hash), vec![Completed]);
}

#[tokio::test]
async fn hostile_name_arrives_intact() {
    let Some(daemon) = TransmissionDaemon::start("hostile_name_arrives_intact").await else {
        return;
    };
    let name = "\"Quoted\" 'film' 🎬 @everyone & <@1> *x*.bin";
    let source = tempfile::tempdir().unwrap();
    let payload = make_payload(source.path(), name, 50_000, 4);
    let (torrent, hash) = make_torrent(&payload, source.path());
    daemon.add(&torrent).await;

    let mut client = daemon.client();
    let found = client
        .torrent(&hash)
        .await
        .unwrap()
        .expect("torrent listed");

    assert_eq!(found.name, name);
}

#[tokio::test]
async fn done_hook_report_is_deduplicated() {
    let Some(daemon) = TransmissionDaemon::start("done_hook_report_is_deduplicated").await else {
        return;
    };
    let mut poller = Poller::new("transmission", daemon.client());
    poller.poll().await;
    let source = tempfile::tempdir().unwrap();
    let payload = make_payload(source.path(), "hooked.bin", 100_000, 5);
    let (torrent, hash) = make_torrent(&payload, source.path());
    daemon.add(&torrent).await;
    poller
        .poll_until(&hash, "incomplete", |t| {
            t.completeness() == Completeness::Incomplete
        })
        .await;
    std::fs::copy(&payload, daemon.download_dir().join("hooked.bin")).unwrap();
    daemon.verify(&hash).await;
    let mut probe = daemon.client();
    crate::support::torrents::wait_for_state(&mut probe, &hash, TorrentState::Seeding).await;

    let reported = HashSet::from([hash.clone()]);
    poller.poll_reporting(&reported).await;
    poller.poll_reporting(&reported).await;
    poller.poll().await;

    assert_eq!(poller.kinds(&hash), vec![Added, Completed]);
}

#[tokio::test]
async fn wrong_password_is_unauthorized() {
    let Some(daemon) = TransmissionDaemon::start("wrong_password_is_unauthorized").await else {
        return;
    };
    let config = daemon.config("not-the-password");
    let mut client = TorrentClient::new(&config, std::time::Duration::from_secs(5)).unwrap();

    let error = client.torrents().await.unwrap_err();

    assert!(
        matches!(error, ClientError::Unauthorized { status: 401, .. }),
        "{error}"
    );
    assert!(!error.to_string().contains("not-the-password"), "{error}");
}

#[tokio::test]
async fn stopped_daemon_is_unreachable() {
    let Some(daemon) = TransmissionDaemon::start("stopped_daemon_is_unreachable").await else {
        return;
    };
    let mut client = daemon.client();
    drop(daemon);

    // The kill is asynchronous: wait for the first failure.
    let deadline = std::time::Instant::now() + crate::support::torrents::WAIT;
    let error = loop {
        match client.torrents().await {
            Err(error) => break error,
            Ok(_) => assert!(std::time::Instant::now() < deadline, "daemon still answers"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };

    assert!(error.is_unreachable(), "{error}");
}

//! qBittorrent 4.5.2 (the Debian package), started by each test.

use almagest::torrent::client::{ClientError, TorrentClient};
use almagest::torrent::diff::EventKind::{Added, Completed};
use almagest::torrent::model::{Completeness, TorrentState};

use crate::support::qbittorrent::QbittorrentDaemon;
use crate::support::torrents::{Poller, make_payload, make_torrent};

fn seeding(state: TorrentState) -> bool {
    state == TorrentState::Seeding
}

#[tokio::test]
async fn qbittorrent_seeded_torrent_is_added_only() {
    let Some(daemon) = QbittorrentDaemon::start("qbittorrent_seeded_torrent_is_added_only").await
    else {
        return;
    };
    let mut poller = Poller::new("qbittorrent", daemon.client());
    poller.poll().await;
    let source = tempfile::tempdir().unwrap();
    let payload = make_payload(&daemon.download_dir(), "seeded.bin", 300_000, 11);
    let (torrent, hash) = make_torrent(&payload, source.path());

    daemon.add(&torrent).await;
    poller
        .poll_until(&hash, "seeding", |t| seeding(t.state))
        .await;
    for _ in 0..3 {
        poller.poll().await;
    }

    assert_eq!(poller.kinds(&hash), vec![Added]);
}

#[tokio::test]
async fn qbittorrent_recheck_completes_once() {
    let Some(mut daemon) = QbittorrentDaemon::start("qbittorrent_recheck_completes_once").await
    else {
        return;
    };
    let mut poller = Poller::new("qbittorrent", daemon.client());
    poller.poll().await;
    let source = tempfile::tempdir().unwrap();
    let payload = make_payload(source.path(), "late.bin", 300_000, 12);
    let (torrent, hash) = make_torrent(&payload, source.path());

    // Added without its data: it stays incomplete.
    daemon.add(&torrent).await;
    poller
        .poll_until(&hash, "incomplete", |t| {
            t.completeness() == Completeness::Incomplete
        })
        .await;
    assert_eq!(poller.kinds(&hash), vec![Added]);

    // The data appears and a re-check finds it.
    std::fs::copy(&payload, daemon.download_dir().join("late.bin")).unwrap();
    daemon.recheck(&hash).await;
    poller
        .poll_until(&hash, "seeding", |t| seeding(t.state))
        .await;
    assert_eq!(poller.kinds(&hash), vec![Added, Completed]);

    // Nothing more: further polls, a second re-check, a daemon restart (which also expires
    // the client's session, so it logs in again).
    for _ in 0..3 {
        poller.poll().await;
    }
    daemon.recheck(&hash).await;
    poller
        .poll_until(&hash, "checked", |t| seeding(t.state))
        .await;
    daemon.restart().await;
    poller
        .poll_until(&hash, "seeding after restart", |t| seeding(t.state))
        .await;
    for _ in 0..3 {
        poller.poll().await;
    }
    assert_eq!(poller.kinds(&hash), vec![Added, Completed]);
}

#[tokio::test]
async fn qbittorrent_hostile_name_arrives_intact() {
    let Some(daemon) = QbittorrentDaemon::start("qbittorrent_hostile_name_arrives_intact").await
    else {
        return;
    };
    let name = "\"Quoted\" 'film' 🎬 @everyone & <@1> *x*.bin";
    let source = tempfile::tempdir().unwrap();
    let payload = make_payload(source.path(), name, 50_000, 13);
    let (torrent, hash) = make_torrent(&payload, source.path());
    daemon.add(&torrent).await;

    let mut client = daemon.client();
    let mut poller = Poller::new("qbittorrent", daemon.client());
    poller.poll_until(&hash, "listed", |_| true).await;
    let found = client
        .torrent(&hash)
        .await
        .unwrap()
        .expect("torrent listed");

    assert_eq!(found.name, name);
}

#[tokio::test]
async fn qbittorrent_wrong_password_is_unauthorized() {
    let Some(daemon) = QbittorrentDaemon::start("qbittorrent_wrong_password_is_unauthorized").await
    else {
        return;
    };
    let config = daemon.config("not-the-password");
    let mut client = TorrentClient::new(&config, std::time::Duration::from_secs(5)).unwrap();

    let error = client.torrents().await.unwrap_err();

    // qBittorrent 4.x rejects a login with 200 "Fails.".
    assert!(
        matches!(error, ClientError::Unauthorized { status: 200, .. }),
        "{error}"
    );
    assert!(!error.to_string().contains("not-the-password"), "{error}");
}

//! The whole product at once: one daemon with every service on one redis-server, driven the
//! way a home server drives it. HTTP publish and rproxy, torrents completing in a real
//! `transmission-daemon` and a real `qbittorrent-nox`, a new release on the fake releases API,
//! a device arriving in a CoreDNS log, a dropped file, a script's notify, and `almagest ping`.
//! Every notice must reach the fake Discord exactly once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use almagest::bus::{Names, Stub};
use almagest::torrent::model::InfoHash;

use crate::builder::steps::{publish_site_release, volume_target_section};
use crate::support::api::{ADMIN_TOKEN, Api, EchoWorker, api_section};
use crate::support::dnslog::{append, dnslog_section, file_source, now_rfc3339, query_line};
use crate::support::fake_discord::{FakeDiscord, RecordedRequest};
use crate::support::fake_github::FakeGithub;
use crate::support::qbittorrent::{self, QbittorrentDaemon};
use crate::support::torrent_service::{exists, seen_incomplete};
use crate::support::torrents::{make_payload, make_torrent};
use crate::support::transmission::{self, TransmissionDaemon};
use crate::support::{
    Daemon, RedisServer, Subscription, WAIT, config_text, parse_config, wait_until,
};

/// The device whose arrival is announced; it counts as away one second after its last query.
const PHONE: &str = "[[dnslog.devices]]\nname = \"sam-phone\"\nowner = \"Sam\"\n\
                     ip = \"192.168.1.42\"\naway_after_secs = 1\n";
const PHONE_IP: &str = "192.168.1.42";

/// Folders and files the daemon works on.
struct Paths {
    _root: tempfile::TempDir,
    drop_dir: PathBuf,
    volume: PathBuf,
    query_log: PathBuf,
    payloads: PathBuf,
}

impl Paths {
    fn new() -> Paths {
        let root = tempfile::tempdir().expect("create temp dir");
        let paths = Paths {
            drop_dir: root.path().join("drop"),
            volume: root.path().join("volume"),
            query_log: root.path().join("query.log"),
            payloads: root.path().join("payloads"),
            _root: root,
        };
        for dir in [&paths.drop_dir, &paths.volume, &paths.payloads] {
            std::fs::create_dir(dir).expect("create a test folder");
        }
        paths
    }
}

/// Config sections for every service: control with the drop folder, api, discord on the
/// fake, both torrent clients, one builder target with a volume, and dnslog on the query log.
fn sections(
    paths: &Paths,
    discord: &FakeDiscord,
    github: &FakeGithub,
    transmission: &TransmissionDaemon,
    qbittorrent: &QbittorrentDaemon,
) -> String {
    let control = format!(
        "[control]\nping_interval_secs = 1\ndrop_dir = {:?}\n",
        paths.drop_dir.display().to_string()
    );
    let discord = format!(
        "[discord]\ntoken = \"test-token\"\ndefault_channel_id = 10\napi_proxy = \"{}\"\n\
         gateway = false\n",
        discord.url()
    );
    let torrent = format!(
        "[torrent]\npoll_interval_secs = 1\nnotify_added = false\n\n\
         [[torrent.clients]]\nname = \"tr\"\nkind = \"transmission\"\nurl = \"{}\"\n\
         username = \"{}\"\npassword = \"{}\"\n\n\
         [[torrent.clients]]\nname = \"qb\"\nkind = \"qbittorrent\"\nurl = \"{}\"\n\
         username = \"{}\"\npassword = \"{}\"\n",
        transmission.url(),
        transmission::USERNAME,
        transmission::PASSWORD,
        qbittorrent.url(),
        qbittorrent::USERNAME,
        qbittorrent::PASSWORD,
    );
    let builder = volume_target_section(github, &paths.volume);
    let dnslog = dnslog_section(&[file_source(&paths.query_log)], PHONE);
    let api = api_section("");
    format!("{control}\n{api}\n{discord}\n{torrent}\n{builder}\n{dnslog}")
}

/// Returns the message posts whose body mentions `text`, in content or embeds.
fn posts_with(discord: &FakeDiscord, text: &str) -> Vec<RecordedRequest> {
    discord
        .message_posts()
        .into_iter()
        .filter(|post| post.body.to_string().contains(text))
        .collect()
}

async fn wait_for_post(discord: &FakeDiscord, text: &str) {
    wait_until(
        WAIT,
        &format!("a Discord message with {text:?}"),
        || async { !posts_with(discord, text).is_empty() },
    )
    .await;
}

/// Payloads received on `channel` so far.
fn payloads_on(subscription: &Subscription, channel: &str) -> Vec<String> {
    subscription
        .messages()
        .into_iter()
        .filter(|(received_on, _)| received_on == channel)
        .map(|(_, payload)| payload)
        .collect()
}

async fn wait_for_payload(subscription: &Subscription, channel: &str, payload: &str) {
    wait_until(WAIT, &format!("{payload:?} on {channel}"), || async {
        payloads_on(subscription, channel)
            .iter()
            .any(|p| p == payload)
    })
    .await;
}

/// Makes a payload of 100 kB and its .torrent file, and returns both paths and the hash.
fn make_download(paths: &Paths, name: &str, seed: u64) -> (PathBuf, PathBuf, InfoHash) {
    let payload = make_payload(&paths.payloads, name, 100_000, seed);
    let (torrent, hash) = make_torrent(&payload, &paths.payloads);
    (payload, torrent, hash)
}

/// Waits until the torrent service stored that it saw `hash` incomplete, so that putting the
/// data in place makes a completion and not an "added complete".
async fn wait_seen_incomplete(redis: &RedisServer, names: &Names, hash: &InfoHash) {
    wait_until(WAIT, "the service saw the torrent incomplete", || {
        seen_incomplete(redis, names, hash)
    })
    .await;
}

/// Publishes a plain-text notification as a script does with `redis-cli PUBLISH`.
async fn publish_notify(redis: &RedisServer, names: &Names, text: &str) {
    let _: u64 = redis::cmd("PUBLISH")
        .arg(names.notify())
        .arg(text)
        .query_async(&mut redis.connection().await)
        .await
        .expect("PUBLISH to notify");
}

fn copy_into(payload: &Path, dir: &Path) {
    let name = payload.file_name().expect("payload has a file name");
    std::fs::copy(payload, dir.join(name)).expect("copy the payload into the download folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_in_one_daemon() {
    let test = "every_service_in_one_daemon";
    let Some(transmission) = TransmissionDaemon::start(test).await else {
        return;
    };
    let Some(qbittorrent) = QbittorrentDaemon::start(test).await else {
        return;
    };
    let redis = RedisServer::start();
    let discord = FakeDiscord::start().await;
    let github = FakeGithub::start().await;
    publish_site_release(&github, "v1.0.0", "2024-01-01");
    let paths = Paths::new();
    let text = config_text(
        &redis.url(),
        &sections(&paths, &discord, &github, &transmission, &qbittorrent),
    );
    let config = parse_config(&text);
    let names = Names::new(&config.bus.prefix);
    let queues = Subscription::start(&redis.client(), &format!("{}:q:*", names.prefix())).await;
    let dns_events = Subscription::start(&redis.client(), &names.events("dnslog")).await;
    let api = Api::attach(Daemon::start(config.clone())).await;

    // Ready: every service replies to a ping, and the torrent and builder baselines are stored.
    let report = almagest::cli::ping(&config, WAIT).await.expect("ping runs");
    assert!(
        report.missing.is_empty(),
        "no pong from {:?}",
        report.missing
    );
    for service in config.enabled_services() {
        assert!(
            report.rows.iter().any(|row| row.pong.service == service),
            "ping lists no {service}"
        );
    }
    for client in ["tr", "qb"] {
        let marker = names.torrent_baseline(client);
        wait_until(WAIT, "the torrent baseline is stored", || {
            exists(&redis, &marker)
        })
        .await;
    }
    let builder_key = names.builder("wiki");
    wait_until(WAIT, "the builder baseline is stored", || async {
        let stored: Option<String> = redis::cmd("HGET")
            .arg(&builder_key)
            .arg("last_result")
            .query_async(&mut redis.connection().await)
            .await
            .expect("HGET of the builder state");
        stored.as_deref() == Some("baseline")
    })
    .await;

    // HTTP publish reaches a subscriber.
    let stub_channel = names.queue(&Stub::parse("e2e.publish").unwrap());
    let response = api
        .post("/api/redis/publish/e2e.publish")
        .bearer_auth(ADMIN_TOKEN)
        .body("from http")
        .send()
        .await
        .expect("publish request");
    assert!(response.status().is_success(), "{}", response.status());
    wait_for_payload(&queues, &stub_channel, "from http").await;

    // An rproxy call gets its worker's reply.
    let rproxy_channel = names.queue(&Stub::parse("e2e.rproxy").unwrap());
    let _worker = EchoWorker::start(&redis, &rproxy_channel, Duration::ZERO).await;
    let response = api
        .post("/api/rproxy/e2e.rproxy/echo")
        .bearer_auth(ADMIN_TOKEN)
        .body("round trip")
        .send()
        .await
        .expect("rproxy request");
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-echo-path"], "/echo");
    assert_eq!(response.text().await.unwrap(), "round trip");

    // A torrent completes in each client. They go first, so that the torrent service polls
    // many more times while the other steps run, and a repeated announcement would show.
    let (tr_payload, tr_torrent, tr_hash) = make_download(&paths, "e2etransmission.bin", 41);
    transmission.add(&tr_torrent).await;
    wait_seen_incomplete(&redis, &names, &tr_hash).await;
    copy_into(&tr_payload, &transmission.download_dir());
    transmission.verify(&tr_hash).await;

    let (qb_payload, qb_torrent, qb_hash) = make_download(&paths, "e2eqbittorrent.bin", 42);
    qbittorrent.add(&qb_torrent).await;
    wait_seen_incomplete(&redis, &names, &qb_hash).await;
    copy_into(&qb_payload, &qbittorrent.download_dir());
    qbittorrent.recheck(&qb_hash).await;

    wait_for_post(&discord, "e2etransmission.bin").await;
    wait_for_post(&discord, "e2eqbittorrent.bin").await;

    // A device arrives: its first query sets the baseline, it goes away after a second, and
    // its next query is an arrival.
    append(
        &paths.query_log,
        &query_line(&now_rfc3339(), PHONE_IP, "a.example."),
    );
    wait_until(WAIT, "presence.left of sam-phone", || async {
        dns_events
            .json()
            .iter()
            .any(|event| event["type"] == "presence.left")
    })
    .await;
    append(
        &paths.query_log,
        &query_line(&now_rfc3339(), PHONE_IP, "b.example."),
    );
    wait_for_post(&discord, "is home").await;

    // A new release is built into the volume and announced.
    publish_site_release(&github, "v1.1.0", "2024-02-01");
    wait_for_post(&discord, "v1.1.0").await;
    assert_eq!(
        std::fs::read_link(paths.volume.join("current")).ok(),
        Some(PathBuf::from("releases/v1.1.0"))
    );

    // A dropped file is published for the stub named by its file name.
    std::fs::write(paths.drop_dir.join("e2e.drop.txt"), "dropped").expect("drop a file");
    let drop_channel = names.queue(&Stub::parse("e2e.drop").unwrap());
    wait_for_payload(&queues, &drop_channel, "dropped").await;

    // A script's notify reaches Discord.
    publish_notify(&redis, &names, "hello from a script").await;
    wait_for_post(&discord, "hello from a script").await;

    // Discord gets notices in stream order, so once a last notice arrived, every earlier one
    // has been delivered; by then the torrent service has polled many times since completion.
    publish_notify(&redis, &names, "last notice").await;
    wait_for_post(&discord, "last notice").await;
    let posts = discord.message_posts();
    let bodies: Vec<String> = posts.iter().map(|post| post.body.to_string()).collect();
    for text in [
        "e2etransmission.bin",
        "e2eqbittorrent.bin",
        "is home",
        "v1.1.0",
        "hello from a script",
    ] {
        let count = bodies.iter().filter(|body| body.contains(text)).count();
        assert_eq!(count, 1, "messages with {text:?}: {bodies:#?}");
    }
    assert_eq!(payloads_on(&queues, &stub_channel), ["from http"]);
    assert_eq!(payloads_on(&queues, &drop_channel), ["dropped"]);

    api.daemon.stop().await.expect("daemon stops cleanly");
}

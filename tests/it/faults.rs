//! Faults on real components while traffic flows: a Redis crash, the crash drill for every
//! service, a torrent client going away, Discord failing for a while, and SIGTERM under load.
//! Each test checks that nothing acknowledged is lost and nothing is announced twice.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use almagest::bus::{Names, Stub};
use tokio_util::task::AbortOnDropHandle;

use crate::api::publish::stream_messages;
use crate::builder::steps::{publish_site_release, volume_target_section};
use crate::core::{answers, crash};
use crate::support::api::{ADMIN_TOKEN, Api, api_section, client};
use crate::support::dnslog::dnslog_section;
use crate::support::fake_discord::{FakeDiscord, RecordedRequest, Scripted};
use crate::support::fake_github::FakeGithub;
use crate::support::torrent_service::{exists, notices, torrent_section};
use crate::support::torrents::{make_payload, make_torrent};
use crate::support::transmission::{PASSWORD, TransmissionDaemon};
use crate::support::{
    Daemon, DaemonProcess, RedisServer, Subscription, WAIT, config_text, parse_config, wait_for,
    wait_until,
};

/// Builds a `[discord]` section posting to channel 10 of `fake`, without the gateway.
fn discord_section(fake: &FakeDiscord) -> String {
    format!(
        "[discord]\ntoken = \"test-token\"\ndefault_channel_id = 10\napi_proxy = \"{}\"\n\
         gateway = false\nrecheck_secs = 1\n",
        fake.url()
    )
}

fn contents(posts: &[RecordedRequest]) -> Vec<String> {
    posts.iter().map(|post| post.content().to_owned()).collect()
}

/// Appends a notification to `P:notify:stream` as a script would; returns whether Redis
/// acknowledged it.
async fn add_notice(client: &redis::Client, names: &Names, text: &str) -> bool {
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    redis::cmd("XADD")
        .arg(names.notify_stream())
        .arg("*")
        .arg("n")
        .arg(serde_json::json!({ "text": text }).to_string())
        .query_async::<String>(&mut connection)
        .await
        .is_ok()
}

/// Asserts that every acknowledged body is among the stored ones.
fn assert_all_stored(acknowledged: &[String], stored: &[String]) {
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|body| !stored.contains(body))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
}

/// HTTP statuses (or 0 for a transport error) and the bodies a publishing loop got a 2xx
/// for, shared with the test.
#[derive(Default)]
struct PublishLog {
    statuses: Vec<u16>,
    acknowledged: Vec<String>,
}

/// A client that publishes `prefix-N` for N = 0, 1, … to `url` until dropped.
struct Publisher {
    log: Arc<Mutex<PublishLog>>,
    task: AbortOnDropHandle<()>,
}

impl Publisher {
    fn start(url: String, prefix: &'static str) -> Publisher {
        almagest::telemetry::install_crypto_provider();
        let log = Arc::new(Mutex::new(PublishLog::default()));
        let sink = Arc::clone(&log);
        let task = tokio::spawn(async move {
            let http = client();
            for sequence in 0.. {
                let body = format!("{prefix}-{sequence}");
                let status = match http
                    .post(&url)
                    .bearer_auth(ADMIN_TOKEN)
                    .timeout(Duration::from_secs(5))
                    .body(body.clone())
                    .send()
                    .await
                {
                    Ok(response) => response.status().as_u16(),
                    Err(_) => 0,
                };
                {
                    let mut log = sink.lock().unwrap();
                    log.statuses.push(status);
                    if (200..300).contains(&status) {
                        log.acknowledged.push(body);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Publisher {
            log,
            task: AbortOnDropHandle::new(task),
        }
    }

    /// Stops publishing; the log keeps the statuses received so far.
    fn stop(&mut self) {
        self.task.abort();
    }

    fn acknowledged(&self) -> Vec<String> {
        self.log.lock().unwrap().acknowledged.clone()
    }

    fn statuses(&self) -> Vec<u16> {
        self.log.lock().unwrap().statuses.clone()
    }

    /// Returns how many requests got `status`.
    fn count(&self, status: u16) -> usize {
        self.statuses()
            .iter()
            .filter(|&&found| found == status)
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kill_loses_nothing_acknowledged() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let fake = FakeDiscord::start().await;
    let section = format!(
        "{}\n{}",
        api_section("durable_stubs = [\"jobs.*\"]"),
        discord_section(&fake)
    );
    let api = Api::start(&redis, &section).await;
    let names = api.names();
    let stub = Stub::parse("jobs.load").unwrap();
    let mut publisher = Publisher::start(api.url("/api/redis/publish/jobs.load"), "job");

    // Notifications appended while Redis goes away and comes back.
    let noticed = Arc::new(Mutex::new(Vec::<String>::new()));
    let notifier = {
        let (client, names, noticed) = (redis.client(), names.clone(), Arc::clone(&noticed));
        AbortOnDropHandle::new(tokio::spawn(async move {
            for sequence in 0.. {
                let text = format!("notice-{sequence}");
                if add_notice(&client, &names, &text).await {
                    noticed.lock().unwrap().push(text);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }))
    };
    wait_until(WAIT, "traffic is acknowledged before the crash", || async {
        publisher.acknowledged().len() >= 10 && noticed.lock().unwrap().len() >= 10
    })
    .await;

    redis.kill();
    wait_until(WAIT, "the API answers 503 during the outage", || async {
        publisher.count(503) > 0
    })
    .await;
    redis.launch();
    let ok_before = publisher.count(200);
    wait_until(WAIT, "the API answers 200 after the restart", || async {
        publisher.count(200) > ok_before
    })
    .await;
    let notices_before = noticed.lock().unwrap().len();
    wait_until(WAIT, "notifications are acknowledged again", || async {
        noticed.lock().unwrap().len() > notices_before + 5
    })
    .await;
    drop(notifier);
    publisher.stop();

    // Every publish acknowledged with 200 is in the durable stream, once.
    let stored = stream_messages(&redis, &names.queue_stream(&stub)).await;
    assert_all_stored(&publisher.acknowledged(), &stored);
    let mut unique = stored.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), stored.len(), "stored twice: {stored:?}");

    // Every acknowledged notification reaches Discord, in order.
    let noticed = noticed.lock().unwrap().clone();
    wait_until(WAIT, "every acknowledged notice is delivered", || async {
        let delivered = contents(&fake.delivered_posts());
        noticed.iter().all(|text| delivered.contains(text))
    })
    .await;
    let delivered = contents(&fake.delivered_posts());
    let positions: Vec<usize> = noticed
        .iter()
        .map(|text| delivered.iter().position(|found| found == text).unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "notices delivered out of order: {delivered:?}"
    );

    // Subscriptions resume: a queue subscriber and the discord service's `P:notify`.
    let subscriber = Subscription::start(&redis.client(), &names.queue(&stub)).await;
    wait_until(WAIT, "a queue subscriber receives a publish", || async {
        let _ = api
            .post("/api/redis/publish/jobs.load")
            .bearer_auth(ADMIN_TOKEN)
            .body("after")
            .send()
            .await;
        subscriber
            .payloads()
            .iter()
            .any(|payload| payload == "after")
    })
    .await;
    let connection = redis.connection().await;
    wait_until(
        WAIT,
        "the discord service subscribes P:notify again",
        || async {
            redis::cmd("PUBLISH")
                .arg(names.notify())
                .arg("published after the restart")
                .query_async::<u64>(&mut connection.clone())
                .await
                .expect("PUBLISH")
                > 0
        },
    )
    .await;
    wait_until(
        WAIT,
        "a notice published on P:notify is delivered",
        || async {
            contents(&fake.delivered_posts()).contains(&"published after the restart".to_string())
        },
    )
    .await;
    api.daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_services_send_no_duplicates() {
    let Some(transmission) = TransmissionDaemon::start("crashed_services_send_no_duplicates").await
    else {
        return;
    };
    let redis = RedisServer::start();
    let fake = FakeDiscord::start().await;
    let log_dir = tempfile::tempdir().unwrap();
    let log_file = log_dir.path().join("query.log");
    std::fs::write(&log_file, "").unwrap();
    let github = FakeGithub::start().await;
    publish_site_release(&github, "v1.0.0", "2024-01-01");
    let volume = log_dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let sections = [
        "[control]\nping_interval_secs = 1\nallow_crash_command = true\n".to_string(),
        "[supervisor]\nmax_restarts = 20\nwindow_secs = 600\n".to_string(),
        api_section(""),
        discord_section(&fake),
        torrent_section("nas", "transmission", &transmission.url(), PASSWORD, ""),
        dnslog_section(
            &[format!("{{ file = {:?} }}", log_file.display().to_string())],
            "",
        ),
        volume_target_section(&github, &volume),
    ];
    let config = parse_config(&config_text(&redis.url(), &sections.join("\n")));
    let daemon = Daemon::start(config.clone());
    let names = daemon.names();
    let baseline = names.torrent_baseline("nas");
    wait_until(WAIT, "the torrent baseline is stored", || {
        exists(&redis, &baseline)
    })
    .await;
    let client = redis.client();
    let source = tempfile::tempdir().unwrap();
    let mut torrents = 0;
    let mut add_torrent = async || {
        torrents += 1;
        let name = format!("torrent{torrents}.bin");
        let payload = make_payload(source.path(), &name, 20_000, torrents);
        let (torrent, _) = make_torrent(&payload, source.path());
        transmission.add(&torrent).await;
        let condition = format!("the added notice of {name}");
        wait_until(WAIT, &condition, || async {
            fake.delivered_posts()
                .iter()
                .any(|post| post.body.to_string().contains(&name))
        })
        .await;
    };
    add_torrent().await;
    // The empty volume is built once with the release that is there at start.
    wait_until(WAIT, "the build of v1.0.0 is announced", || async {
        fake.delivered_posts()
            .iter()
            .any(|post| post.body.to_string().contains("v1.0.0"))
    })
    .await;

    for service in ["control", "api", "discord", "torrent", "dnslog", "builder"] {
        let before = wait_for(WAIT, "pongs before the crash", || answers(&config)).await;
        let expected = before[service] + 1;
        let mut connection = redis.connection().await;
        let _: u64 = redis::cmd("PUBLISH")
            .arg(names.control())
            .arg(crash(service, daemon.instance()))
            .query_async(&mut connection)
            .await
            .expect("PUBLISH the crash");
        let condition = format!("{service} to answer with restarts {expected}");
        wait_for(WAIT, &condition, || async {
            answers(&config)
                .await
                .filter(|restarts| restarts[service] == expected)
        })
        .await;

        // Traffic after each restart: a torrent the torrent service has to find and a
        // notice the discord service has to deliver.
        add_torrent().await;
        if service == "builder" {
            publish_site_release(&github, "v2.0.0", "2024-02-01");
            wait_until(WAIT, "the build of v2.0.0 is announced", || async {
                fake.delivered_posts()
                    .iter()
                    .any(|post| post.body.to_string().contains("v2.0.0"))
            })
            .await;
        }
        let text = format!("after the {service} restart");
        assert!(add_notice(&client, &names, &text).await, "XADD {text}");
        wait_until(WAIT, &format!("delivery of {text:?}"), || async {
            contents(&fake.delivered_posts()).contains(&text)
        })
        .await;
    }

    // Notices with a title are sent as embeds, so a post is identified by both parts.
    let delivered: Vec<String> = fake
        .delivered_posts()
        .iter()
        .map(|post| format!("{} {}", post.content(), post.body["embeds"]))
        .collect();
    let mut counts = BTreeMap::<&str, usize>::new();
    for text in &delivered {
        *counts.entry(text).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let added = notices(&redis, &names)
        .await
        .iter()
        .filter(|notice| notice["title"] == "Torrent added")
        .count();
    assert_eq!(added, torrents as usize, "one added notice per torrent");
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torrent_client_restart_notices_once() {
    let Some(mut transmission) =
        TransmissionDaemon::start("torrent_client_restart_notices_once").await
    else {
        return;
    };
    let redis = RedisServer::start();
    let section = torrent_section(
        "nas",
        "transmission",
        &transmission.url(),
        PASSWORD,
        "down_after_secs = 1",
    );
    let daemon = Daemon::start(parse_config(&config_text(&redis.url(), &section)));
    let names = daemon.names();
    let baseline = names.torrent_baseline("nas");
    wait_until(WAIT, "the torrent baseline is stored", || {
        exists(&redis, &baseline)
    })
    .await;
    let titled = async |title: &str| {
        notices(&redis, &names)
            .await
            .iter()
            .filter(|notice| notice["title"] == title)
            .count()
    };

    transmission.stop().await;
    wait_until(WAIT, "the unreachable notice", || async {
        titled("Torrent client unreachable").await == 1
    })
    .await;
    transmission.launch().await;
    wait_until(WAIT, "the back notice", || async {
        titled("Torrent client back").await == 1
    })
    .await;

    // A torrent added afterwards is announced, which proves that later polls ran.
    let source = tempfile::tempdir().unwrap();
    let payload = make_payload(source.path(), "after.bin", 20_000, 7);
    let (torrent, _) = make_torrent(&payload, source.path());
    transmission.add(&torrent).await;
    wait_until(WAIT, "the added notice", || async {
        titled("Torrent added").await == 1
    })
    .await;
    assert_eq!(titled("Torrent client unreachable").await, 1);
    assert_eq!(titled("Torrent client back").await, 1);
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_errors_delay_without_loss() {
    let redis = RedisServer::start();
    let fake = FakeDiscord::start().await;
    let config = parse_config(&config_text(&redis.url(), &discord_section(&fake)));
    let daemon = Daemon::start(config.clone());
    let names = daemon.names();
    let client = redis.client();
    assert!(add_notice(&client, &names, "before the errors").await);
    fake.wait_for_posts(1, WAIT).await;

    fake.answer_for(Scripted::Status(500), Duration::from_secs(3));
    let texts: Vec<String> = (0..5).map(|index| format!("notice {index}")).collect();
    for text in &texts {
        assert!(add_notice(&client, &names, text).await, "XADD {text}");
    }
    wait_until(WAIT, "every notice is delivered", || async {
        fake.delivered_posts().len() > texts.len()
    })
    .await;

    let delivered = contents(&fake.delivered_posts());
    assert_eq!(delivered[0], "before the errors");
    assert_eq!(delivered[1..], texts[..], "in order, each once");
    let failed = fake.message_posts().len() - delivered.len();
    assert!(failed > 0, "the fake answered no 500");
    daemon.stop().await.expect("clean stop");
}

/// Returns the address the daemon's API listens on, from its JSON log.
fn logged_api_address(daemon: &DaemonProcess) -> Option<String> {
    daemon.log().lines().find_map(|line| {
        let entry: serde_json::Value = serde_json::from_str(line).ok()?;
        let fields = entry.get("fields").unwrap_or(&entry);
        (fields["message"] == "api listening")
            .then(|| fields["address"].as_str().map(str::to_string))
            .flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drops_nothing() {
    const SHUTDOWN_TIMEOUT_SECS: u64 = 5;
    let redis = RedisServer::start();
    let section = format!(
        "[supervisor]\nshutdown_timeout_secs = {SHUTDOWN_TIMEOUT_SECS}\n{}",
        api_section("durable_stubs = [\"jobs.*\"]")
    );
    let mut daemon = DaemonProcess::spawn(&config_text(&redis.url(), &section));
    let address = wait_for(WAIT, "the api address in the log", || async {
        logged_api_address(&daemon)
    })
    .await;
    let config = parse_config(&std::fs::read_to_string(&daemon.config_path).unwrap());
    let names = Names::new(&config.bus.prefix);
    let stub = Stub::parse("jobs.load").unwrap();
    let subscriber = Subscription::start(&redis.client(), &names.queue(&stub)).await;
    let mut publisher = Publisher::start(
        format!("http://{address}/api/redis/publish/jobs.load"),
        "job",
    );
    wait_until(WAIT, "publishes are acknowledged", || async {
        publisher.acknowledged().len() >= 20
    })
    .await;

    daemon.signal(libc::SIGTERM);
    // The daemon exits within its shutdown timeout; one more second covers the exit of the
    // process after the deadline.
    let status = daemon
        .wait(Duration::from_secs(SHUTDOWN_TIMEOUT_SECS + 1))
        .await;
    publisher.stop();
    assert_eq!(status.code(), Some(0), "{}", daemon.log());

    let acknowledged = publisher.acknowledged();
    let stored = stream_messages(&redis, &names.queue_stream(&stub)).await;
    assert_all_stored(&acknowledged, &stored);
    wait_until(
        WAIT,
        "the subscriber has every acknowledged publish",
        || async {
            let received = subscriber.payloads();
            acknowledged.iter().all(|body| received.contains(body))
        },
    )
    .await;
}

//! The dnslog service in a daemon on a real redis-server, reading real files and commands.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::support::api::{ADMIN_TOKEN, Api, api_section, json_body};
use crate::support::dnslog::{
    append, device_state, dnslog_section, domain_counts, file_source, hash, keys, now_rfc3339,
    query_line, sorted_set,
};
use crate::support::{
    Daemon, RedisServer, Subscription, WAIT, config_text, parse_config, wait_for, wait_until,
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/coredns");
/// A fixed time for lines whose time does not matter, so counts land on a known day.
const DAY: &str = "2026-08-21";

fn at(second: u32) -> String {
    format!("{DAY}T12:{:02}:{:02}.000Z", second / 60 % 60, second % 60)
}

/// Waits until the domains counted over all days are exactly `expected` names, each once.
async fn wait_for_names_once(redis: &RedisServer, prefix: &str, expected: &[String]) {
    let want: BTreeMap<String, f64> = expected
        .iter()
        .map(|name| (name.trim_end_matches('.').to_string(), 1.0))
        .collect();
    wait_until(WAIT, "every name is counted", || async {
        domain_counts(redis, prefix).await.len() >= want.len()
    })
    .await;
    let counted = domain_counts(redis, prefix).await;
    let doubled: Vec<_> = counted.iter().filter(|(_, n)| **n != 1.0).collect();
    assert!(doubled.is_empty(), "counted more than once: {doubled:?}");
    let missing: Vec<_> = want.keys().filter(|n| !counted.contains_key(*n)).collect();
    assert!(missing.is_empty(), "never counted: {missing:?}");
    assert_eq!(counted.len(), want.len(), "unexpected names counted");
}

fn names(prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("{prefix}{i}.example."))
        .collect()
}

fn lines(names: &[String], client: &str) -> String {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| query_line(&at(i as u32), client, name))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_count_into_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("query.log");
    for fixture in ["common.log", "wrapped.log", "malformed.log"] {
        let text = std::fs::read_to_string(Path::new(FIXTURES).join(fixture)).unwrap();
        append(&log, &text);
    }
    let text = config_text(&redis.url(), &dnslog_section(&[file_source(&log)], ""));
    let daemon = Daemon::start(parse_config(&text));
    let prefix = daemon.names().prefix().to_string();

    // 16 queries in common.log, 6 in wrapped.log, none in malformed.log.
    wait_until(WAIT, "22 queries are counted", || async {
        let mut total = 0.0;
        for key in keys(&redis, &format!("{prefix}:dns:clients:*")).await {
            total += sorted_set(&redis, &key).await.values().sum::<f64>();
        }
        total == 22.0
    })
    .await;

    // Wrapped lines count on the day their wrapper's time gives.
    let clients = sorted_set(&redis, &format!("{prefix}:dns:clients:2026-08-21")).await;
    assert_eq!(clients.get("10.42.0.17"), Some(&2.0));
    assert_eq!(clients.get("10.0.0.7"), Some(&1.0));
    assert_eq!(clients.get("10.42.0.18"), Some(&1.0));
    let old = sorted_set(&redis, &format!("{prefix}:dns:clients:2020-09-14")).await;
    assert_eq!(old.get("10.244.0.6"), Some(&1.0));
    let client = sorted_set(
        &redis,
        &format!("{prefix}:dns:client:10.42.0.17:2026-08-21"),
    )
    .await;
    assert_eq!(
        client.get("grafana.monitoring.svc.cluster.local"),
        Some(&2.0)
    );
    let qtypes = sorted_set(&redis, &format!("{prefix}:dns:qtypes:2026-08-21")).await;
    assert_eq!(qtypes.get("AAAA"), Some(&1.0));
    let rcodes = sorted_set(&redis, &format!("{prefix}:dns:rcodes:2026-08-21")).await;
    assert_eq!(rcodes.get("NOERROR"), Some(&4.0));

    // Every set expires.
    let mut connection = redis.connection().await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{prefix}:dns:domains:2026-08-21"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(ttl > 0, "TTL {ttl}");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_loses_and_repeats_nothing() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("query.log");
    let text = config_text(&redis.url(), &dnslog_section(&[file_source(&log)], ""));
    let daemon = Daemon::start(parse_config(&text));
    let prefix = daemon.names().prefix().to_string();

    // A writer that keeps writing through a rename rotation (with late writes to the old
    // file before it reopens) and a copytruncate.
    let all = names("r", 3000);
    let writer = {
        let all = all.clone();
        let log = log.clone();
        std::thread::spawn(move || {
            let open = |path: &Path| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap()
            };
            let mut file = open(&log);
            for (i, name) in all.iter().enumerate() {
                if i == 1000 {
                    std::fs::rename(&log, log.with_extension("log.1")).unwrap();
                }
                if i == 1010 {
                    file = open(&log);
                }
                if i == 2000 {
                    std::fs::copy(&log, log.with_extension("log.2")).unwrap();
                    file.set_len(0).unwrap();
                }
                file.write_all(query_line(&at(i as u32), "10.0.0.2", name).as_bytes())
                    .unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();

    wait_for_names_once(&redis, &prefix, &all).await;
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_where_it_stopped() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("query.log");
    let text = config_text(&redis.url(), &dnslog_section(&[file_source(&log)], ""));
    let all = names("s", 200);

    append(&log, &lines(&all[..100], "10.0.0.2"));
    let daemon = Daemon::start(parse_config(&text));
    let prefix = daemon.names().prefix().to_string();
    wait_for_names_once(&redis, &prefix, &all[..100]).await;
    daemon.stop().await.unwrap();

    // Written while the daemon is down: read after the restart, the first half not again.
    append(&log, &lines(&all[100..], "10.0.0.2"));
    let daemon = Daemon::start(parse_config(&text));
    wait_for_names_once(&redis, &prefix, &all).await;
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_file_source_starts_at_end() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("query.log");
    append(&log, &lines(&names("old", 10), "10.0.0.2"));
    let source = format!("{{ file = {:?} }}", log.display().to_string());
    let text = config_text(&redis.url(), &dnslog_section(&[source], ""));
    let daemon = Daemon::start(parse_config(&text));
    let prefix = daemon.names().prefix().to_string();
    let offset_key = daemon
        .names()
        .dnslog_offset(&format!("file:{}", log.display()));
    wait_until(WAIT, "the start position is stored", || async {
        !hash(&redis, &offset_key).await.is_empty()
    })
    .await;

    let new = names("new", 10);
    append(&log, &lines(&new, "10.0.0.2"));
    wait_for_names_once(&redis, &prefix, &new).await;
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_survive_redis_restart() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("query.log");
    let text = config_text(&redis.url(), &dnslog_section(&[file_source(&log)], ""));
    let all = names("o", 200);
    append(&log, &lines(&all[..100], "10.0.0.2"));
    let daemon = Daemon::start(parse_config(&text));
    let prefix = daemon.names().prefix().to_string();
    wait_for_names_once(&redis, &prefix, &all[..100]).await;

    redis.stop();
    append(&log, &lines(&all[100..], "10.0.0.2"));
    redis.launch();
    wait_for_names_once(&redis, &prefix, &all).await;
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_source_is_restarted() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("runs");
    // Each run prints one line naming its run number, then exits.
    let script = format!(
        "n=$(cat {path} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {path}; \
         echo \"[INFO] 10.0.0.9:53 - 1 \\\"A IN run$n.example. udp 40 false 512\\\" NOERROR qr 60 0.001s\"",
        path = counter.display()
    );
    let source = format!(
        "{{ command = [\"sh\", \"-c\", {script:?}], name = \"runs\" }}",
        script = script
    );
    let text = config_text(&redis.url(), &dnslog_section(&[source], ""));
    let daemon = Daemon::start(parse_config(&text));
    let prefix = daemon.names().prefix().to_string();
    wait_until(WAIT, "three runs are counted", || async {
        let counted = domain_counts(&redis, &prefix).await;
        ["run1.example", "run2.example", "run3.example"]
            .iter()
            .all(|name| counted.get(*name) == Some(&1.0))
    })
    .await;
    daemon.stop().await.unwrap();
}

const SAM: &str = "[[dnslog.devices]]\nname = \"sam-phone\"\nowner = \"Sam\"\n\
                   ip = \"192.168.1.42\"\nipv6_prefix = \"2001:db8:1:2::/64\"\n\
                   away_after_secs = 1\n";

fn presence_events(
    subscription: &Subscription,
    kind: &str,
    device: &str,
) -> Vec<serde_json::Value> {
    subscription
        .json()
        .into_iter()
        .filter(|event| event["type"] == kind && event["device"] == device)
        .collect()
}

/// A daemon with one followed log and `devices`, and a subscription to its events.
struct PresenceRun {
    redis: RedisServer,
    _dir: tempfile::TempDir,
    log: std::path::PathBuf,
    text: String,
    daemon: Option<Daemon>,
    prefix: String,
    events: Subscription,
}

impl PresenceRun {
    async fn start(devices: &str) -> PresenceRun {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("query.log");
        let text = config_text(&redis.url(), &dnslog_section(&[file_source(&log)], devices));
        let daemon = Daemon::start(parse_config(&text));
        let prefix = daemon.names().prefix().to_string();
        let events = Subscription::start(&redis.client(), &daemon.names().events("dnslog")).await;
        PresenceRun {
            redis,
            _dir: dir,
            log,
            text,
            daemon: Some(daemon),
            prefix,
            events,
        }
    }

    /// Stops the daemon gracefully.
    async fn stop(&mut self) {
        let daemon = self.daemon.take().expect("the daemon is running");
        daemon.stop().await.unwrap();
    }

    /// Starts the daemon again with the same config.
    fn restart(&mut self) {
        assert!(self.daemon.is_none(), "the daemon is still running");
        self.daemon = Some(Daemon::start(parse_config(&self.text)));
    }

    /// Appends a query from `client` stamped with the current time.
    fn query(&self, client: &str, name: &str) {
        append(&self.log, &query_line(&now_rfc3339(), client, name));
    }

    fn events(&self, kind: &str, device: &str) -> Vec<serde_json::Value> {
        presence_events(&self.events, kind, device)
    }

    async fn wait_for_event(&self, kind: &str, device: &str) {
        wait_until(WAIT, &format!("{kind} of {device}"), || async {
            !self.events(kind, device).is_empty()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_arrive_leave_arrive() {
    let mut run = PresenceRun::start(SAM).await;

    // First sight sets the baseline silently; a second later the phone counts as gone.
    run.query("192.168.1.42", "a.example.");
    run.wait_for_event("presence.left", "sam-phone").await;
    assert!(run.events("presence.arrived", "sam-phone").is_empty());
    let state = device_state(&run.redis, &run.prefix, "sam-phone")
        .await
        .unwrap();
    assert_eq!(state["home"], false);

    run.query("192.168.1.42", "b.example.");
    run.wait_for_event("presence.arrived", "sam-phone").await;
    let arrived = &run.events("presence.arrived", "sam-phone")[0];
    assert_eq!(arrived["owner"], "Sam");
    assert_eq!(arrived["ip"], "192.168.1.42");
    assert!(arrived["away_ms"].as_u64().unwrap() >= 1000, "{arrived}");
    let left = &run.events("presence.left", "sam-phone")[0];
    assert_eq!(left["away_ms"], 1000);

    let names = almagest::bus::Names::new(&run.prefix);
    let notices = crate::support::torrent_service::notices(&run.redis, &names).await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(
        notices[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("sam-phone (Sam) is home"),
        "{}",
        notices[0]
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_announces_no_false_arrival() {
    // Dana's laptop stays home for an hour of quiet; Sam's phone counts as away after 1 s.
    let devices = format!(
        "{SAM}\n[[dnslog.devices]]\nname = \"dana-laptop\"\nip = \"192.168.1.7\"\n\
         away_after_secs = 3600\n"
    );
    let mut run = PresenceRun::start(&devices).await;
    run.query("192.168.1.7", "a.example.");
    run.query("192.168.1.42", "a.example.");
    run.wait_for_event("presence.left", "sam-phone").await;
    run.stop().await;

    // Both query while the daemon is down. Sam's phone arrived then; Dana's laptop never
    // left.
    let arrived_at = now_rfc3339();
    run.query("192.168.1.7", "b.example.");
    append(
        &run.log,
        &query_line(&arrived_at, "192.168.1.42", "b.example."),
    );
    run.restart();
    run.wait_for_event("presence.arrived", "sam-phone").await;
    let arrived = &run.events("presence.arrived", "sam-phone")[0];
    let event_time = chrono::DateTime::parse_from_rfc3339(arrived["at"].as_str().unwrap()).unwrap();
    let line_time = chrono::DateTime::parse_from_rfc3339(&arrived_at).unwrap();
    assert_eq!(event_time, line_time, "the arrival carries the line's time");
    assert!(run.events("presence.arrived", "dana-laptop").is_empty());
    assert!(run.events("presence.left", "dana-laptop").is_empty());
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_addresses_are_one_device() {
    let mut run = PresenceRun::start(SAM).await;
    run.query("2001:db8:1:2:a1b2:c3d4:e5f6:1", "a.example.");
    run.wait_for_event("presence.left", "sam-phone").await;

    // A new temporary address in the same /64, and one outside it that is nobody's.
    run.query("2001:db8:1:3::1", "b.example.");
    run.query("2001:db8:1:2:9f8e:7d6c:5b4a:2", "b.example.");
    run.wait_for_event("presence.arrived", "sam-phone").await;
    let arrived = run.events("presence.arrived", "sam-phone");
    assert_eq!(arrived.len(), 1);
    assert_eq!(arrived[0]["ip"], "2001:db8:1:2:9f8e:7d6c:5b4a:2");
    let state = device_state(&run.redis, &run.prefix, "sam-phone")
        .await
        .unwrap();
    assert_eq!(state["last_ip"], "2001:db8:1:2:9f8e:7d6c:5b4a:2");
    run.stop().await;
}

/// Returns the `domains` of `GET /api/dns/top` for `client` on [`DAY`].
async fn top_domains(api: &Api, client: &str) -> serde_json::Value {
    let response = api
        .get(&format!("/api/dns/top?client={client}&day={DAY}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    json_body(response).await["domains"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_serves_dnslog_rankings() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("query.log");
    let mut text = String::new();
    for (second, client, name) in [
        (1, "10.0.0.2", "a.example."),
        (2, "10.0.0.2", "A.Example."),
        (3, "10.0.0.2", "a.example."),
        (4, "10.0.0.2", "b.example."),
        (5, "2001:db8::5", "c.example."),
    ] {
        text.push_str(&query_line(&at(second), client, name));
    }
    append(&log, &text);
    let sections = format!(
        "{}\n{}",
        api_section(""),
        dnslog_section(&[file_source(&log)], "")
    );
    let api = Api::start(&redis, &sections).await;

    let clients = wait_for(WAIT, "both clients are ranked", || async {
        let response = api
            .get(&format!("/api/dns/clients?day={DAY}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .ok()?;
        let body = json_body(response).await;
        (body["clients"].as_array()?.len() == 2).then_some(body)
    })
    .await;
    assert_eq!(
        clients["clients"],
        serde_json::json!([
            {"client": "10.0.0.2", "queries": 4},
            {"client": "2001:db8::5", "queries": 1},
        ])
    );

    // Names are compared case-insensitively, and an address may be written in any form.
    assert_eq!(
        top_domains(&api, "10.0.0.2").await,
        serde_json::json!([
            {"domain": "a.example", "queries": 3},
            {"domain": "b.example", "queries": 1},
        ])
    );
    assert_eq!(
        top_domains(&api, "2001:DB8:0::5").await,
        serde_json::json!([{"domain": "c.example", "queries": 1}])
    );
    api.daemon.stop().await.unwrap();
}

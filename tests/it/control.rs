//! The control service against a real redis-server: the registry, down and up announcements
//! across instances, goodbyes, restarts, Redis outages, flapping and forgetting.

use std::time::Duration;

use almagest::bus::Names;

use crate::support::control::{
    FakeService, count, events_of, instance_config, notifications, pings, registry, registry_state,
    wait_for_states, wait_rounds,
};
use crate::support::{
    Daemon, DaemonProcess, RedisServer, Subscription, WAIT, parse_config, unique, wait_until,
};

/// One ping a second; down after three missed pings; the lease lasts three seconds.
const CONTROL: &str = "[control]\nping_interval_secs = 1\nmissed_pings_for_down = 3\n";
/// Rounds after which anything that was going to be announced has been: the lease expiring
/// (three rounds), the threshold (three rounds) and a margin.
const SETTLE_ROUNDS: usize = 8;

/// Returns the registry fields of the gateway and control service of `instance`.
fn core_fields(instance: &str) -> Vec<String> {
    vec![format!("control@{instance}"), format!("gateway@{instance}")]
}

/// A bus of its own: a prefix, and a subscription of the control events and of the pings.
struct Bus {
    names: Names,
    prefix: String,
    events: Subscription,
    control: Subscription,
}

impl Bus {
    async fn watch(redis: &RedisServer) -> Bus {
        let prefix = unique("p");
        let names = Names::new(&prefix);
        let client = redis.client();
        Bus {
            events: Subscription::start(&client, &names.events("control")).await,
            control: Subscription::start(&client, &names.control()).await,
            names,
            prefix,
        }
    }

    fn config(&self, redis: &RedisServer, instance: &str, extra: &str) -> String {
        instance_config(&redis.url(), &self.prefix, instance, extra)
    }

    /// Checks that no event and no notification went out.
    async fn assert_nothing_announced(&self, client: &redis::Client) {
        assert_eq!(self.events.payloads(), Vec::<String>::new());
        assert_eq!(
            notifications(client, &self.names).await,
            Vec::<serde_json::Value>::new()
        );
    }

    /// Waits until `kind` was announced for each of `fields`, lets the rounds that could
    /// repeat it pass, then checks that it came once for each and for nothing else.
    async fn announced_once(&self, kind: &str, fields: &[String]) {
        wait_until(WAIT, &format!("{kind} for {fields:?}"), || async {
            let announced = events_of(&self.events, kind);
            fields.iter().all(|field| announced.contains(field))
        })
        .await;
        wait_rounds(&self.control, SETTLE_ROUNDS).await;
        let announced = events_of(&self.events, kind);
        for field in fields {
            assert_eq!(
                count(&announced, field),
                1,
                "{kind} {field} in {announced:?}"
            );
        }
        assert_eq!(announced.len(), fields.len(), "{kind}: {announced:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_filled_after_ping_round() {
    let redis = RedisServer::start();
    let bus = Bus::watch(&redis).await;
    let instance = unique("nas");
    let daemon = Daemon::start(parse_config(&bus.config(&redis, &instance, CONTROL)));
    let client = redis.client();
    wait_for_states(&client, &bus.names, &core_fields(&instance), "up").await;
    // The round trip is measured against the watcher's own ping, so it appears with the
    // first pong that replies to one. The first pongs may reply to no ping of the watcher.
    let field = format!("control@{instance}");
    wait_until(WAIT, "a measured round trip", || async {
        registry(&client, &bus.names).await[&field]["rtt_ms"].is_u64()
    })
    .await;

    let entry = registry(&client, &bus.names).await[&field].clone();
    assert_eq!(entry["service"], "control");
    assert_eq!(entry["instance"], instance.as_str());
    assert_eq!(entry["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(entry["state"], "up");
    assert_eq!(entry["restarts"], 0);
    assert!(entry["since"].is_string(), "{entry}");
    assert!(entry["last_pong_at"].is_string(), "{entry}");
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instance_down_once_up_once() {
    let redis = RedisServer::start();
    let client = redis.client();
    let bus = Bus::watch(&redis).await;
    let (first, second) = (unique("a"), unique("b"));
    let watcher = Daemon::start(parse_config(&bus.config(&redis, &first, CONTROL)));
    let second_text = bus.config(&redis, &second, CONTROL);
    let mut killed = DaemonProcess::spawn(&second_text);
    let mut everyone = core_fields(&first);
    everyone.extend(core_fields(&second));
    wait_for_states(&client, &bus.names, &everyone, "up").await;

    killed.signal(libc::SIGKILL);
    killed.wait(WAIT).await;
    let gone = core_fields(&second);
    bus.announced_once("service.down", &gone).await;
    wait_for_states(&client, &bus.names, &gone, "down").await;

    let _returned = DaemonProcess::spawn(&second_text);
    bus.announced_once("service.up", &gone).await;
    assert_eq!(events_of(&bus.events, "service.down").len(), 2);

    let notices = notifications(&client, &bus.names).await;
    let titles: Vec<&str> = notices
        .iter()
        .filter_map(|notice| notice["title"].as_str())
        .collect();
    assert_eq!(notices.len(), 4, "{notices:?}");
    for field in &gone {
        assert!(
            titles.contains(&format!("{field} is down").as_str()),
            "{titles:?}"
        );
        assert!(
            titles.contains(&format!("{field} is up").as_str()),
            "{titles:?}"
        );
    }
    watcher.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goodbye_produces_no_down() {
    let redis = RedisServer::start();
    let client = redis.client();
    let bus = Bus::watch(&redis).await;
    let (staying, leaving) = (unique("a"), unique("b"));
    let stays = Daemon::start(parse_config(&bus.config(&redis, &staying, CONTROL)));
    let leaves = Daemon::start(parse_config(&bus.config(&redis, &leaving, CONTROL)));
    let mut everyone = core_fields(&staying);
    everyone.extend(core_fields(&leaving));
    wait_for_states(&client, &bus.names, &everyone, "up").await;

    leaves.stop().await.expect("clean stop");
    wait_for_states(&client, &bus.names, &core_fields(&leaving), "stopped").await;
    wait_rounds(&bus.control, SETTLE_ROUNDS).await;

    bus.assert_nothing_announced(&client).await;
    for field in core_fields(&leaving) {
        assert_eq!(
            registry_state(&client, &bus.names, &field).await.as_deref(),
            Some("stopped"),
            "{field}"
        );
    }
    stays.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_restart_announces_nothing() {
    let redis = RedisServer::start();
    let client = redis.client();
    let bus = Bus::watch(&redis).await;
    let instance = unique("nas");
    let text = bus.config(&redis, &instance, CONTROL);
    let fields = core_fields(&instance);
    let daemon = Daemon::start(parse_config(&text));
    wait_for_states(&client, &bus.names, &fields, "up").await;

    daemon.stop().await.expect("clean stop");
    wait_for_states(&client, &bus.names, &fields, "stopped").await;
    let daemon = Daemon::start(parse_config(&text));
    wait_for_states(&client, &bus.names, &fields, "up").await;
    wait_rounds(&bus.control, SETTLE_ROUNDS).await;

    bus.assert_nothing_announced(&client).await;
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_restart_after_kill_silent() {
    let redis = RedisServer::start();
    let client = redis.client();
    let bus = Bus::watch(&redis).await;
    let instance = unique("nas");
    let text = bus.config(&redis, &instance, CONTROL);
    let fields = core_fields(&instance);
    let mut first = DaemonProcess::spawn(&text);
    wait_for_states(&client, &bus.names, &fields, "up").await;

    first.signal(libc::SIGKILL);
    first.wait(WAIT).await;
    let rounds_before = pings(&bus.control);
    let _second = DaemonProcess::spawn(&text);
    wait_until(WAIT, "the restarted instance to ping", || async {
        pings(&bus.control) > rounds_before
    })
    .await;
    wait_rounds(&bus.control, SETTLE_ROUNDS).await;

    bus.assert_nothing_announced(&client).await;
    for field in &fields {
        assert_eq!(
            registry_state(&client, &bus.names, field).await.as_deref(),
            Some("up"),
            "{field}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_one_notice_no_downs() {
    // Persistence keeps the registry across the restart, so every service is still "up" in
    // it while nothing can answer.
    let mut redis = RedisServer::start_with(&["--appendonly", "yes"]);
    let prefix = unique("p");
    let names = Names::new(&prefix);
    let (first, second) = (unique("a"), unique("b"));
    let mut fields = core_fields(&first);
    fields.extend(core_fields(&second));
    let daemons = [&first, &second]
        .map(|instance| instance_config(&redis.url(), &prefix, instance, CONTROL))
        .map(|text| Daemon::start(parse_config(&text)));
    wait_for_states(&redis.client(), &names, &fields, "up").await;

    redis.stop();
    // The outage itself: longer than three missed pings and than the lease.
    tokio::time::sleep(Duration::from_secs(6)).await;
    redis.launch();
    let client = redis.client();
    let events = Subscription::start(&client, &names.events("control")).await;
    let control = Subscription::start(&client, &names.control()).await;
    wait_until(WAIT, "the outage notice", || async {
        !notifications(&client, &names).await.is_empty()
    })
    .await;
    wait_rounds(&control, SETTLE_ROUNDS).await;

    assert_eq!(events_of(&events, "service.down"), Vec::<String>::new());
    let notices = notifications(&client, &names).await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0]["title"], "Redis was unreachable");
    assert_eq!(notices[0]["level"], "warn");
    for field in &fields {
        assert_eq!(
            registry_state(&client, &names, field).await.as_deref(),
            Some("up"),
            "{field}"
        );
    }
    for daemon in daemons {
        daemon.stop().await.expect("clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_below_threshold_silent() {
    let redis = RedisServer::start();
    let client = redis.client();
    let bus = Bus::watch(&redis).await;
    let instance = unique("nas");
    let daemon = Daemon::start(parse_config(&bus.config(&redis, &instance, CONTROL)));
    let fake_instance = unique("fake");
    let field = format!("flappy@{fake_instance}");
    // Answers one ping in three: two misses in a row, one short of the threshold.
    let flappy = FakeService::start(&client, &bus.names, "flappy", &fake_instance, |n| {
        n % 3 == 0
    })
    .await;
    wait_for_states(&client, &bus.names, std::slice::from_ref(&field), "up").await;
    wait_until(WAIT, "twelve pings to the flapping service", || async {
        flappy.pings() >= 12
    })
    .await;

    assert_eq!(bus.events.payloads(), Vec::<String>::new());
    assert_eq!(
        registry_state(&client, &bus.names, &field).await.as_deref(),
        Some("up")
    );

    // The same service silent for good is announced, which shows the test could fail.
    flappy.silence();
    wait_until(WAIT, "the silenced service announced down", || async {
        events_of(&bus.events, "service.down").contains(&field)
    })
    .await;
    assert_eq!(count(&events_of(&bus.events, "service.down"), &field), 1);
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_instance_forgotten_once() {
    let redis = RedisServer::start();
    let client = redis.client();
    let bus = Bus::watch(&redis).await;
    let instance = unique("nas");
    let section =
        "[control]\nping_interval_secs = 1\nmissed_pings_for_down = 2\nforget_after_secs = 4\n";
    let daemon = Daemon::start(parse_config(&bus.config(&redis, &instance, section)));
    let fake_instance = unique("gone");
    let field = format!("worker@{fake_instance}");
    let fake = FakeService::start(&client, &bus.names, "worker", &fake_instance, |_| true).await;
    wait_for_states(&client, &bus.names, std::slice::from_ref(&field), "up").await;

    fake.silence();
    wait_until(WAIT, "the silent service forgotten", || async {
        events_of(&bus.events, "service.forgotten").contains(&field)
    })
    .await;
    wait_rounds(&bus.control, 3).await;

    let entries = registry(&client, &bus.names).await;
    assert!(!entries.contains_key(&field), "{entries:?}");
    assert_eq!(
        events_of(&bus.events, "service.forgotten"),
        vec![field.clone()]
    );
    assert_eq!(events_of(&bus.events, "service.down"), vec![field]);
    for own in core_fields(&instance) {
        assert!(entries.contains_key(&own), "{own} was forgotten");
    }
    daemon.stop().await.expect("clean stop");
}

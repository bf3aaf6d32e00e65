//! The discord service in a daemon, with a real redis-server and the fake Discord API:
//! stream consumption, acknowledgement, dead letters, the 401 stop and recovery.

use almagest::bus::Names;
use almagest::config::Config;
use redis::aio::MultiplexedConnection;

use crate::support::fake_discord::{FakeDiscord, RecordedRequest, Scripted};
use crate::support::{Daemon, RedisServer, WAIT, config_text, parse_config, wait_for, wait_until};

/// Config of a daemon whose discord service posts to channel 10 of the fake, without the
/// gateway (so no test waits for a WebSocket) and re-checking a 401 every second.
fn daemon_config(redis: &RedisServer, fake: &FakeDiscord, extra: &str) -> Config {
    let section = format!(
        "[discord]\ntoken = \"test-token\"\ndefault_channel_id = 10\napi_proxy = \"{}\"\n\
         gateway = false\nrecheck_secs = 1\n{extra}",
        fake.url()
    );
    parse_config(&config_text(&redis.url(), &section))
}

fn names(config: &Config) -> Names {
    Names::new(&config.bus.prefix)
}

async fn add_entry(connection: &mut MultiplexedConnection, config: &Config, payload: &str) {
    let _: String = redis::cmd("XADD")
        .arg(names(config).notify_stream())
        .arg("*")
        .arg("n")
        .arg(payload)
        .query_async(connection)
        .await
        .expect("XADD");
}

/// Entries the `discord` group read and did not acknowledge.
async fn pending_count(connection: &mut MultiplexedConnection, config: &Config) -> u64 {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(names(config).notify_stream())
        .arg("discord")
        .query_async(connection)
        .await
        .expect("XPENDING");
    match summary {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(count)) => *count as u64,
            _ => 0,
        },
        _ => 0,
    }
}

/// Reads the dead letters as field maps.
async fn dead_letters(
    connection: &mut MultiplexedConnection,
    config: &Config,
) -> Vec<std::collections::HashMap<String, String>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(names(config).notify_dead())
        .arg("-")
        .arg("+")
        .query_async(connection)
        .await
        .expect("XRANGE");
    reply
        .ids
        .into_iter()
        .map(|entry| {
            entry
                .map
                .into_iter()
                .map(|(key, value)| (key, redis::from_redis_value(value).unwrap_or_default()))
                .collect()
        })
        .collect()
}

fn contents(posts: &[RecordedRequest]) -> Vec<String> {
    posts.iter().map(|post| post.content().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_delivered_then_acknowledged() {
    let redis = RedisServer::start();
    let fake = FakeDiscord::start().await;
    let config = daemon_config(&redis, &fake, "");
    let mut connection = redis.connection().await;
    let daemon = Daemon::start(config.clone());

    add_entry(
        &mut connection,
        &config,
        r#"{"text":"backup done","level":"info"}"#,
    )
    .await;
    let posts = fake.wait_for_posts(1, WAIT).await;
    assert_eq!(posts[0].content(), "backup done");
    assert_eq!(
        posts[0].body["allowed_mentions"],
        serde_json::json!({ "parse": [] })
    );
    wait_until(WAIT, "the entry is acknowledged", || {
        let mut connection = connection.clone();
        let config = config.clone();
        async move { pending_count(&mut connection, &config).await == 0 }
    })
    .await;

    daemon.stop().await.expect("daemon stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_while_stopped_delivered_on_start() {
    let redis = RedisServer::start();
    let fake = FakeDiscord::start().await;
    let config = daemon_config(&redis, &fake, "");
    let mut connection = redis.connection().await;

    // No consumer group exists yet: the bot has never run.
    add_entry(&mut connection, &config, "sent while the bot was down").await;
    let daemon = Daemon::start(config.clone());

    let posts = fake.wait_for_posts(1, WAIT).await;
    assert_eq!(posts[0].content(), "sent while the bot was down");
    daemon.stop().await.expect("daemon stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_delivered_in_order() {
    let redis = RedisServer::start();
    let fake = FakeDiscord::start().await;
    let config = daemon_config(&redis, &fake, "");
    let mut connection = redis.connection().await;
    // A 429 and a 500 on the way must not reorder anything.
    fake.script([
        Scripted::Normal,
        Scripted::RateLimited {
            retry_after_secs: 0.2,
            global: false,
        },
        Scripted::Normal,
        Scripted::Status(500),
    ]);
    for index in 0..6 {
        add_entry(&mut connection, &config, &format!("notice {index}")).await;
    }
    let daemon = Daemon::start(config.clone());

    let posts = fake.wait_for_posts(8, WAIT).await;
    let mut delivered = contents(&posts);
    delivered.dedup();
    let expected: Vec<String> = (0..6).map(|index| format!("notice {index}")).collect();
    assert_eq!(delivered, expected);
    daemon.stop().await.expect("daemon stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_publish_appended_and_delivered() {
    let redis = RedisServer::start();
    let fake = FakeDiscord::start().await;
    let config = daemon_config(&redis, &fake, "");
    let mut connection = redis.connection().await;
    let daemon = Daemon::start(config.clone());

    // Publish until the service has subscribed, then exactly once more is not needed: the
    // first publish that reaches it is the one delivered.
    let channel = names(&config).notify();
    wait_until(WAIT, "the service receives P:notify", || {
        let mut connection = connection.clone();
        let channel = channel.clone();
        async move {
            let receivers: u64 = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async::<(String, u64)>(&mut connection)
                .await
                .map(|(_, count)| count)
                .unwrap_or(0);
            receivers > 0
        }
    })
    .await;
    let _: u64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg("disk 91% full")
        .query_async(&mut connection)
        .await
        .expect("PUBLISH");

    let posts = fake.wait_for_posts(1, WAIT).await;
    assert_eq!(posts[0].content(), "disk 91% full");
    let length: u64 = redis::cmd("XLEN")
        .arg(names(&config).notify_stream())
        .query_async(&mut connection)
        .await
        .expect("XLEN");
    assert_eq!(length, 1);
    daemon.stop().await.expect("daemon stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_stops_without_losing() {
    let redis = RedisServer::start();
    let fake = FakeDiscord::start().await;
    let config = daemon_config(&redis, &fake, "");
    let mut connection = redis.connection().await;
    fake.answer_always(Some(Scripted::Status(401)));
    add_entry(&mut connection, &config, "first").await;
    add_entry(&mut connection, &config, "second").await;
    let daemon = Daemon::start(config.clone());

    // The first entry is tried again at each re-check; the second is never attempted. Both
    // were read in one batch and stay pending.
    let posts = fake.wait_for_posts(2, WAIT).await;
    assert!(contents(&posts).iter().all(|content| content == "first"));
    assert_eq!(pending_count(&mut connection, &config).await, 2);
    assert!(dead_letters(&mut connection, &config).await.is_empty());

    // The token is fixed: the next re-check delivers both, in order, and acknowledges them.
    fake.answer_always(None);
    let attempts_before = fake.message_posts().len();
    let delivered = wait_for(WAIT, "both notices delivered", || async {
        let posts = fake.message_posts();
        let after: Vec<String> = contents(&posts[attempts_before..]);
        (after.len() >= 2).then_some(after)
    })
    .await;
    assert_eq!(delivered, ["first", "second"]);
    wait_until(WAIT, "both entries are acknowledged", || {
        let mut connection = connection.clone();
        let config = config.clone();
        async move { pending_count(&mut connection, &config).await == 0 }
    })
    .await;
    assert!(dead_letters(&mut connection, &config).await.is_empty());
    daemon.stop().await.expect("daemon stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_end_in_dead_letters() {
    let redis = RedisServer::start();
    let fake = FakeDiscord::start().await;
    let config = daemon_config(&redis, &fake, "retry_for_secs = 2");
    let mut connection = redis.connection().await;
    fake.answer_always(Some(Scripted::Status(500)));
    add_entry(&mut connection, &config, "never accepted").await;
    let daemon = Daemon::start(config.clone());

    let dead = wait_for(WAIT, "a dead letter", || {
        let mut connection = connection.clone();
        let config = config.clone();
        async move {
            let dead = dead_letters(&mut connection, &config).await;
            (!dead.is_empty()).then_some(dead)
        }
    })
    .await;
    assert_eq!(dead[0]["n"], "never accepted");
    assert!(
        dead[0]["error"].contains("HTTP 500"),
        "{}",
        dead[0]["error"]
    );
    let attempts: u32 = dead[0]["attempts"].parse().unwrap();
    assert!(attempts >= 2, "{attempts} attempts");
    assert!(dead[0].contains_key("at"));
    // The entry is acknowledged right after its dead letter is written, in a second step.
    wait_until(WAIT, "the dead-lettered entry is acknowledged", || {
        let mut connection = connection.clone();
        let config = config.clone();
        async move { pending_count(&mut connection, &config).await == 0 }
    })
    .await;

    let metrics = almagest::telemetry::render_metrics().unwrap_or_default();
    assert!(
        metrics.contains("almagest_discord_dead_letters_total"),
        "{metrics}"
    );
    daemon.stop().await.expect("daemon stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_dead_at_once() {
    let redis = RedisServer::start();
    let fake = FakeDiscord::start().await;
    let config = daemon_config(&redis, &fake, "");
    let mut connection = redis.connection().await;
    fake.script([Scripted::Status(400)]);
    add_entry(&mut connection, &config, "rejected").await;
    add_entry(&mut connection, &config, "accepted").await;
    let daemon = Daemon::start(config.clone());

    let posts = fake.wait_for_posts(2, WAIT).await;
    assert_eq!(contents(&posts), ["rejected", "accepted"]);
    let dead = wait_for(WAIT, "a dead letter", || {
        let mut connection = connection.clone();
        let config = config.clone();
        async move {
            let dead = dead_letters(&mut connection, &config).await;
            (!dead.is_empty()).then_some(dead)
        }
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["attempts"], "1");
    assert!(
        dead[0]["error"].contains("HTTP 400"),
        "{}",
        dead[0]["error"]
    );
    daemon.stop().await.expect("daemon stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_entry_dead_lettered() {
    let redis = RedisServer::start();
    let fake = FakeDiscord::start().await;
    let config = daemon_config(&redis, &fake, "");
    let mut connection = redis.connection().await;
    add_entry(&mut connection, &config, r#"{"text":5}"#).await;
    add_entry(&mut connection, &config, "valid").await;
    let daemon = Daemon::start(config.clone());

    let posts = fake.wait_for_posts(1, WAIT).await;
    assert_eq!(posts[0].content(), "valid");
    let dead = dead_letters(&mut connection, &config).await;
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]["error"].starts_with("invalid notification"),
        "{}",
        dead[0]["error"]
    );
    daemon.stop().await.expect("daemon stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_entry_redelivered_after_restart() {
    let redis = RedisServer::start();
    let fake = FakeDiscord::start().await;
    let config = daemon_config(&redis, &fake, "");
    let mut connection = redis.connection().await;
    fake.answer_always(Some(Scripted::Status(503)));
    add_entry(&mut connection, &config, "survives a restart").await;

    let daemon = Daemon::start(config.clone());
    fake.wait_for_posts(1, WAIT).await;
    daemon.stop().await.expect("daemon stops cleanly");
    assert_eq!(pending_count(&mut connection, &config).await, 1);

    fake.answer_always(None);
    let attempts_before = fake.message_posts().len();
    let daemon = Daemon::start(config.clone());
    let posts = fake.wait_for_posts(attempts_before + 1, WAIT).await;
    assert_eq!(posts[attempts_before].content(), "survives a restart");
    daemon.stop().await.expect("daemon stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_consumer_entries_claimed() {
    let redis = RedisServer::start();
    let fake = FakeDiscord::start().await;
    let config = daemon_config(&redis, &fake, "claim_idle_secs = 0");
    let mut connection = redis.connection().await;
    let stream = names(&config).notify_stream();

    // Another consumer read the entry and crashed before acknowledging it.
    add_entry(&mut connection, &config, "left by a crashed consumer").await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("discord")
        .arg("0")
        .query_async(&mut connection)
        .await
        .expect("XGROUP CREATE");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("discord")
        .arg("old-pod")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut connection)
        .await
        .expect("XREADGROUP");
    assert_eq!(pending_count(&mut connection, &config).await, 1);

    let daemon = Daemon::start(config.clone());
    let posts = fake.wait_for_posts(1, WAIT).await;
    assert_eq!(posts[0].content(), "left by a crashed consumer");
    wait_until(WAIT, "the claimed entry is acknowledged", || {
        let mut connection = connection.clone();
        let config = config.clone();
        async move { pending_count(&mut connection, &config).await == 0 }
    })
    .await;
    daemon.stop().await.expect("daemon stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_only_daemon_delivers() {
    let redis = RedisServer::start();
    let fake = FakeDiscord::start().await;
    let section = format!(
        "[discord]\napi_proxy = \"{}\"\n\
         default_webhook = \"https://discord.com/api/webhooks/42/hook-token\"",
        fake.url()
    );
    let config = parse_config(&config_text(&redis.url(), &section));
    let mut connection = redis.connection().await;
    add_entry(&mut connection, &config, "via webhook").await;
    let daemon = Daemon::start(config.clone());

    let posts = fake.wait_for_posts(1, WAIT).await;
    assert_eq!(posts[0].path, "/api/v10/webhooks/42/hook-token");
    assert_eq!(posts[0].content(), "via webhook");
    // Without a token, nothing but the webhook is called: no gateway, no bot routes.
    assert!(
        fake.requests()
            .iter()
            .all(|request| request.path.contains("/webhooks/"))
    );
    daemon.stop().await.expect("daemon stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_pick_channel_by_level() {
    let redis = RedisServer::start();
    let fake = FakeDiscord::start().await;
    let config = daemon_config(&redis, &fake, "routes = { error = 20, media = 30 }");
    let mut connection = redis.connection().await;
    add_entry(&mut connection, &config, r#"{"text":"a","level":"error"}"#).await;
    add_entry(&mut connection, &config, r#"{"text":"b","route":"media"}"#).await;
    add_entry(
        &mut connection,
        &config,
        r#"{"text":"c","route":"nowhere"}"#,
    )
    .await;
    let daemon = Daemon::start(config.clone());

    let posts = fake.wait_for_posts(3, WAIT).await;
    let paths: Vec<&str> = posts.iter().map(|post| post.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v10/channels/20/messages",
            "/api/v10/channels/30/messages",
            "/api/v10/channels/10/messages"
        ]
    );
    daemon.stop().await.expect("daemon stops cleanly");
}

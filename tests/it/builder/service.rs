//! The builder service in a daemon on a real redis-server, against the fake releases API:
//! baseline, builds on new releases, state, events, notices, and the control commands.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;

use redis::AsyncCommands;
use serde_json::Value;

use super::steps::site;
use crate::support::fake_github::{FakeGithub, FakeRelease};
use crate::support::{
    Daemon, RedisServer, Subscription, WAIT, command, config_text, parse_config, wait_for,
    wait_until,
};

/// A daemon with one builder target `wiki` on the fake API, polling every second.
struct Setup {
    redis: RedisServer,
    github: FakeGithub,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("volume")).unwrap();
        Setup {
            redis: RedisServer::start(),
            github: FakeGithub::start().await,
            dir,
        }
    }

    fn volume(&self) -> PathBuf {
        self.dir.path().join("volume")
    }

    /// Config text with the target; `extra` adds keys to it.
    fn config(&self, extra: &str) -> String {
        let section = format!(
            "[[builder.targets]]\nname = \"wiki\"\nrepo = \"acme/wiki\"\napi_base = \"{}\"\n\
             asset_pattern = \"site-*.tar.gz\"\nvolume = \"{}\"\npoll_interval_secs = 1\n\
             command = [\"sh\", \"-c\", \"echo built $ALMAGEST_TAG; env > ../../env-$ALMAGEST_TAG.txt\"]\n{extra}",
            self.github.api_base(),
            self.volume().display()
        );
        config_text(&self.redis.url(), &section)
    }

    fn current(&self) -> Option<PathBuf> {
        std::fs::read_link(self.volume().join("current")).ok()
    }

    fn publish(&self, tag: &str, date: &str) {
        let asset = format!("site-{tag}.tar.gz");
        let release = FakeRelease::new(tag, &format!("{date}T00:00:00Z")).asset(&asset, site(tag));
        self.github.publish(release);
    }
}

async fn state(redis: &RedisServer, daemon: &Daemon) -> HashMap<String, String> {
    let mut connection = redis.connection().await;
    let key = daemon.names().builder("wiki");
    connection.hgetall(key).await.unwrap()
}

/// The notifications in the notify stream, oldest first.
async fn notices(redis: &RedisServer, daemon: &Daemon) -> Vec<Value> {
    let mut connection = redis.connection().await;
    let entries: redis::streams::StreamRangeReply = connection
        .xrange_all(daemon.names().notify_stream())
        .await
        .unwrap();
    entries
        .ids
        .iter()
        .filter_map(|entry| entry.get::<String>("n"))
        .filter_map(|text| serde_json::from_str(&text).ok())
        .collect()
}

async fn wait_for_state(redis: &RedisServer, daemon: &Daemon, field: &str, value: &str) {
    let what = format!("{field} = {value}");
    wait_until(WAIT, &what, || async {
        state(redis, daemon).await.get(field).map(String::as_str) == Some(value)
    })
    .await;
}

async fn publish(redis: &RedisServer, channel: &str, payload: &str) {
    let mut connection = redis.connection().await;
    let _: u64 = connection.publish(channel, payload).await.unwrap();
}

/// Sends a control command and returns its `rebuild.result`.
async fn control(redis: &RedisServer, daemon: &Daemon, command: &str, id: &str) -> Value {
    let replies = format!("{}:test-replies", daemon.names().control());
    let subscription = Subscription::start(&redis.client(), &replies).await;
    let mut message: Value = serde_json::from_str(command).unwrap();
    message["id"] = Value::from(id);
    message["reply_to"] = Value::from(replies.clone());
    publish(redis, &daemon.names().control(), &message.to_string()).await;
    wait_for(WAIT, "a rebuild.result", || {
        let found = subscription
            .json()
            .into_iter()
            .find(|reply| reply["type"] == "rebuild.result" && reply["id"] == id);
        async move { found }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_poll_records_baseline() {
    let setup = Setup::new().await;
    setup.publish("v1.0.0", "2024-01-01");
    let daemon = Daemon::start(parse_config(&setup.config("")));

    wait_for_state(&setup.redis, &daemon, "last_result", "baseline").await;

    let stored = state(&setup.redis, &daemon).await;
    assert_eq!(stored["built_tag"], "v1.0.0");
    assert_eq!(setup.current(), None);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_release_built_and_reported() {
    let setup = Setup::new().await;
    setup.publish("v1.0.0", "2024-01-01");
    let daemon = Daemon::start(parse_config(&setup.config("")));
    let events =
        Subscription::start(&setup.redis.client(), &daemon.names().events("builder")).await;
    wait_for_state(&setup.redis, &daemon, "last_result", "baseline").await;

    setup.publish("v1.1.0", "2024-02-01");
    wait_for_state(&setup.redis, &daemon, "built_tag", "v1.1.0").await;

    assert_eq!(setup.current(), Some(PathBuf::from("releases/v1.1.0")));
    let stored = state(&setup.redis, &daemon).await;
    assert_eq!(stored["last_result"], "ok");
    assert_eq!(stored["current_tag"], "v1.1.0");
    assert!(!stored["built_at"].is_empty());
    assert!(stored["etag"].starts_with("W/"), "{stored:?}");

    let kinds: Vec<String> = events
        .json()
        .iter()
        .map(|e| e["type"].to_string())
        .collect();
    assert_eq!(kinds, ["\"build.started\"", "\"build.finished\""]);
    let finished = &events.json()[1];
    assert_eq!(finished["tag"], "v1.1.0");
    assert!(finished["duration_ms"].is_u64());
    assert_eq!(finished["output_tail"], "built v1.1.0");

    let notices = notices(&setup.redis, &daemon).await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    let text = notices[0]["text"].as_str().unwrap();
    assert!(text.starts_with("wiki: built v1.1.0 in "), "{text}");
    assert_eq!(notices[0]["source"], "builder");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_build_notifies_with_tail() {
    let setup = Setup::new().await;
    setup.publish("v1.0.0", "2024-01-01");
    let failing = "command = [\"sh\", \"-c\", \"echo cannot index $ALMAGEST_TAG >&2; exit 4\"]";
    let config = setup.config("build_on_start = true").replace(
        "command = [\"sh\", \"-c\", \"echo built $ALMAGEST_TAG; env > ../../env-$ALMAGEST_TAG.txt\"]",
        failing,
    );
    let daemon = Daemon::start(parse_config(&config));

    wait_for_state(&setup.redis, &daemon, "failed_tag", "v1.0.0").await;

    let stored = state(&setup.redis, &daemon).await;
    assert!(
        stored["last_result"].starts_with("failed: command failed"),
        "{stored:?}"
    );
    assert_eq!(setup.current(), None);
    let notices = wait_for(WAIT, "a failure notice", || {
        let redis = &setup.redis;
        let daemon = &daemon;
        async move {
            let found = notices(redis, daemon).await;
            (!found.is_empty()).then_some(found)
        }
    })
    .await;
    let text = notices[0]["text"].as_str().unwrap();
    assert!(text.contains("cannot index v1.0.0"), "{text}");
    assert_eq!(notices[0]["level"], "error");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_rebuild_over_control() {
    let setup = Setup::new().await;
    setup.publish("v1.0.0", "2024-01-01");
    let daemon = Daemon::start(parse_config(&setup.config("build_on_start = true")));
    wait_for_state(&setup.redis, &daemon, "current_tag", "v1.0.0").await;
    setup.publish("v2.0.0", "2024-02-01");
    wait_for_state(&setup.redis, &daemon, "current_tag", "v2.0.0").await;

    let reply = control(
        &setup.redis,
        &daemon,
        r#"{"type":"rollback","target":"wiki"}"#,
        "r1",
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["tag"], "v1.0.0");
    assert_eq!(setup.current(), Some(PathBuf::from("releases/v1.0.0")));
    let stored = state(&setup.redis, &daemon).await;
    assert_eq!(
        stored["built_tag"], "v2.0.0",
        "polling must not undo the rollback"
    );
    assert_eq!(stored["current_tag"], "v1.0.0");

    std::fs::remove_file(setup.volume().join("env-v2.0.0.txt")).unwrap();
    let rebuild = r#"{"type":"rebuild","target":"wiki","tag":"v2.0.0"}"#;
    let reply = control(&setup.redis, &daemon, rebuild, "r2").await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(setup.current(), Some(PathBuf::from("releases/v2.0.0")));
    assert!(
        setup.volume().join("env-v2.0.0.txt").exists(),
        "the command did not run again"
    );

    let reply = control(
        &setup.redis,
        &daemon,
        r#"{"type":"rebuild","target":"wiki"}"#,
        "r3",
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["tag"], "v2.0.0");

    let missing = r#"{"type":"rebuild","target":"wiki","tag":"v9.9.9"}"#;
    let reply = control(&setup.redis, &daemon, missing, "r4").await;
    assert_eq!(reply["ok"], false, "{reply}");

    let unknown = r#"{"type":"rebuild","target":"blog"}"#;
    let reply = control(&setup.redis, &daemon, unknown, "r5").await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("unknown target"),
        "{reply}"
    );
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_env_excludes_daemon_variables() {
    let setup = Setup::new().await;
    setup.publish("v1.0.0", "2024-01-01");
    let config_path = setup.dir.path().join("almagest.toml");
    std::fs::write(&config_path, setup.config("build_on_start = true")).unwrap();
    let log = std::fs::File::create(setup.dir.path().join("stderr.log")).unwrap();
    let mut child = command(&config_path)
        .arg("run")
        .env("ALMAGEST__LOG__LEVEL", "info")
        .env("GITHUB_TOKEN", "ghp_should_not_leak")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();

    let env_file = setup.volume().join("env-v1.0.0.txt");
    wait_until(WAIT, "the build command to run", || {
        let exists = env_file.exists();
        async move { exists }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();

    let text = std::fs::read_to_string(&env_file).unwrap();
    assert!(!text.contains("ALMAGEST__"), "{text}");
    assert!(!text.contains("ghp_should_not_leak"), "{text}");
    assert!(text.contains("ALMAGEST_TAG=v1.0.0"), "{text}");
}

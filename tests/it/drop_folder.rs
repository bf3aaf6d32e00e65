//! The drop folder against real files and a real redis-server: complete files are published
//! once and whole, temporary names wait, invalid files go to `failed/` with a reason, and
//! nothing is lost while Redis is down.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use almagest::bus::Names;

use crate::support::{
    Daemon, RedisServer, Subscription, WAIT, config_text, parse_config, wait_until,
};

/// What a test needs: the daemon, its drop folder and the messages published for any stub.
struct Dropping {
    daemon: Daemon,
    dir: PathBuf,
    queues: Subscription,
    _folder: tempfile::TempDir,
}

/// Config for a daemon whose drop folder is `dir`, with messages up to `max_bytes`.
fn drop_config(redis_url: &str, dir: &Path, max_bytes: u64) -> String {
    config_text(
        redis_url,
        &format!(
            "[control]\nping_interval_secs = 1\ndrop_dir = {:?}\nmax_drop_bytes = {max_bytes}\n",
            dir.display().to_string()
        ),
    )
}

impl Dropping {
    /// Starts a daemon watching a new folder, and waits until a probe file went through it,
    /// so that the watch is in place.
    async fn start(redis: &RedisServer) -> Dropping {
        let folder = tempfile::tempdir().expect("create temp dir");
        let dir = folder.path().join("drop");
        std::fs::create_dir(&dir).expect("create the drop folder");
        let dropping = Dropping::start_in(redis, folder, dir).await;
        dropping.write("probe.txt", "probe");
        dropping.wait_for_messages("probe", 1).await;
        dropping
    }

    async fn start_in(redis: &RedisServer, folder: tempfile::TempDir, dir: PathBuf) -> Dropping {
        let config = parse_config(&drop_config(&redis.url(), &dir, 1_000));
        let names = Names::new(&config.bus.prefix);
        let queues = Subscription::start(&redis.client(), &format!("{}:q:*", names.prefix())).await;
        Dropping {
            daemon: Daemon::start(config),
            dir,
            queues,
            _folder: folder,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).expect("write a dropped file");
    }

    /// Messages received per stub, in order.
    fn messages(&self) -> BTreeMap<String, Vec<String>> {
        let prefix = format!("{}:q:", self.daemon.config.bus.prefix);
        let mut by_stub: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (channel, payload) in self.queues.messages() {
            let stub = channel
                .strip_prefix(&prefix)
                .unwrap_or(&channel)
                .to_string();
            by_stub.entry(stub).or_default().push(payload);
        }
        by_stub
    }

    fn messages_for(&self, stub: &str) -> Vec<String> {
        self.messages().remove(stub).unwrap_or_default()
    }

    async fn wait_for_messages(&self, stub: &str, count: usize) {
        wait_until(WAIT, &format!("{count} messages for {stub}"), || async {
            self.messages_for(stub).len() >= count
        })
        .await;
    }

    /// Drops a file and waits for it, so that everything dropped before was handled.
    async fn sync(&self, stub: &str) {
        self.write(&format!("{stub}.txt"), "sync");
        self.wait_for_messages(stub, 1).await;
    }

    fn in_folder(&self, sub: &str, name: &str) -> bool {
        self.dir.join(sub).join(name).exists()
    }

    async fn stop(self) {
        self.daemon.stop().await.expect("clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_file_published_once_whole() {
    let redis = RedisServer::start();
    let dropping = Dropping::start(&redis).await;
    let mut file = std::fs::File::create(dropping.path("report.txt")).unwrap();
    for chunk in ["first part\n", "second part\n", "third part\n"] {
        file.write_all(chunk.as_bytes()).unwrap();
        file.flush().unwrap();
        // A writer pausing longer than the debounce delay, with the file still open.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    drop(file);
    dropping.wait_for_messages("report", 1).await;
    dropping.sync("after-report").await;

    assert_eq!(
        dropping.messages_for("report"),
        ["first part\nsecond part\nthird part\n"]
    );
    assert!(dropping.in_folder("sent", "report.txt"));
    assert!(!dropping.path("report.txt").exists());
    dropping.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_in_file_published() {
    let redis = RedisServer::start();
    let dropping = Dropping::start(&redis).await;
    let outside = dropping.dir.parent().unwrap().join("outside.txt");
    std::fs::write(&outside, "moved in").unwrap();
    std::fs::rename(&outside, dropping.path("moved.txt")).unwrap();
    dropping.wait_for_messages("moved", 1).await;
    dropping.sync("after-move").await;

    assert_eq!(dropping.messages_for("moved"), ["moved in"]);
    assert!(dropping.in_folder("sent", "moved.txt"));
    dropping.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_files_wait_for_rename() {
    let redis = RedisServer::start();
    let dropping = Dropping::start(&redis).await;
    for name in [
        "notes.swp",
        ".notes.txt.swp",
        "notes.txt~",
        ".#notes.txt",
        "draft.tmp",
    ] {
        dropping.write(name, "not yet");
    }
    dropping.sync("after-temporary").await;

    for stub in ["notes", "draft", ".notes", ".#notes"] {
        assert_eq!(dropping.messages_for(stub), Vec::<String>::new(), "{stub}");
    }
    for name in [
        "notes.swp",
        ".notes.txt.swp",
        "notes.txt~",
        ".#notes.txt",
        "draft.tmp",
    ] {
        assert!(dropping.path(name).exists(), "{name} was moved");
    }

    // An editor that saves by rename: the temporary name becomes the real one.
    std::fs::rename(dropping.path("draft.tmp"), dropping.path("draft.md")).unwrap();
    dropping.wait_for_messages("draft", 1).await;
    assert_eq!(dropping.messages_for("draft"), ["not yet"]);
    dropping.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_files_fail_with_reason() {
    let redis = RedisServer::start();
    let dropping = Dropping::start(&redis).await;
    dropping.write("bad stub!.txt", "hello");
    dropping.write("big.txt", &"x".repeat(1_001));
    std::fs::write(dropping.path("binary.bin"), b"\xff\xfe\x00").unwrap();
    dropping.sync("after-invalid").await;

    let reason = |name: &str| {
        std::fs::read_to_string(dropping.dir.join("failed").join(format!("{name}.reason")))
            .unwrap_or_else(|error| panic!("no reason for {name}: {error}"))
    };
    assert!(dropping.in_folder("failed", "bad stub!.txt"));
    assert!(reason("bad stub!.txt").contains("invalid stub"));
    assert!(dropping.in_folder("failed", "big.txt"));
    assert!(reason("big.txt").contains("control.max_drop_bytes"));
    assert!(dropping.in_folder("failed", "binary.bin"));
    assert!(reason("binary.bin").contains("UTF-8"));
    for stub in ["bad stub!", "big", "binary"] {
        assert_eq!(dropping.messages_for(stub), Vec::<String>::new(), "{stub}");
    }
    dropping.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_files_once_each() {
    let redis = RedisServer::start();
    let dropping = Dropping::start(&redis).await;
    for n in 0..200 {
        dropping.write(&format!("bulk-{n}.txt"), &format!("message {n}"));
    }
    wait_until(WAIT, "200 files moved to sent/", || async {
        (0..200).all(|n| dropping.in_folder("sent", &format!("bulk-{n}.txt")))
    })
    .await;
    dropping.sync("after-bulk").await;

    let messages = dropping.messages();
    for n in 0..200 {
        let stub = format!("bulk-{n}");
        assert_eq!(
            messages.get(&stub).cloned().unwrap_or_default(),
            [format!("message {n}")],
            "{stub}"
        );
    }
    let bulk = messages
        .keys()
        .filter(|stub| stub.starts_with("bulk-"))
        .count();
    assert_eq!(bulk, 200);
    dropping.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_wait_while_redis_down() {
    let mut redis = RedisServer::start();
    let dropping = Dropping::start(&redis).await;
    redis.stop();
    for n in 0..5 {
        dropping.write(&format!("held-{n}.txt"), &format!("held {n}"));
    }
    // The outage itself; the files must still be where they were dropped at its end.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in 0..5 {
        assert!(
            dropping.path(&format!("held-{n}.txt")).exists(),
            "held-{n}.txt"
        );
    }

    // The password keeps the daemon out until this test has subscribed.
    let password = "letmein";
    redis.launch_with_password(password);
    let client = redis::Client::open(redis.url_with_password(password)).unwrap();
    let prefix = dropping.daemon.config.bus.prefix.clone();
    let queues = Subscription::start(&client, &format!("{prefix}:q:*")).await;
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("")
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
    let held = || {
        queues
            .messages()
            .into_iter()
            .filter(|(channel, _)| channel.starts_with(&format!("{prefix}:q:held-")))
            .map(|(_, payload)| payload)
            .collect::<Vec<_>>()
    };
    wait_until(WAIT, "five held files published", || async {
        held().len() >= 5
    })
    .await;
    // A file dropped after the outage comes out after every held one.
    dropping.write("after-outage.txt", "sync");
    let after = format!("{prefix}:q:after-outage");
    wait_until(WAIT, "the file dropped after the outage", || async {
        queues
            .messages()
            .iter()
            .any(|(channel, _)| *channel == after)
    })
    .await;

    let mut payloads = held();
    payloads.sort();
    let expected: Vec<String> = (0..5).map(|n| format!("held {n}")).collect();
    assert_eq!(payloads, expected);
    for n in 0..5 {
        assert!(
            dropping.in_folder("sent", &format!("held-{n}.txt")),
            "held-{n}.txt"
        );
    }
    dropping.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_present_at_start_published() {
    let redis = RedisServer::start();
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path().join("drop");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("early.txt"), "was here first").unwrap();
    std::fs::write(dir.join(".hidden.txt"), "left alone").unwrap();
    let dropping = Dropping::start_in(&redis, folder, dir).await;
    dropping.wait_for_messages("early", 1).await;
    dropping.sync("after-start").await;

    assert_eq!(dropping.messages_for("early"), ["was here first"]);
    assert!(dropping.in_folder("sent", "early.txt"));
    assert!(dropping.path(".hidden.txt").exists());
    dropping.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_folder_watched_again() {
    let redis = RedisServer::start();
    let dropping = Dropping::start(&redis).await;
    std::fs::remove_dir_all(&dropping.dir).unwrap();
    // The daemon creates the folder again when it watches it again.
    wait_until(WAIT, "the drop folder to exist again", || async {
        dropping.dir.join("failed").is_dir()
    })
    .await;
    dropping.write("again.txt", "after the folder came back");
    dropping.wait_for_messages("again", 1).await;

    assert_eq!(
        dropping.messages_for("again"),
        ["after the folder came back"]
    );
    dropping.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_clash_in_sent_numbered() {
    let redis = RedisServer::start();
    let dropping = Dropping::start(&redis).await;
    for round in 0..3 {
        dropping.write("same.txt", &format!("round {round}"));
        dropping.wait_for_messages("same", round + 1).await;
        wait_until(WAIT, "same.txt moved", || async {
            !dropping.path("same.txt").exists()
        })
        .await;
    }

    assert_eq!(
        dropping.messages_for("same"),
        ["round 0", "round 1", "round 2"]
    );
    for name in ["same.txt", "same.1.txt", "same.2.txt"] {
        assert!(dropping.in_folder("sent", name), "{name}");
    }
    dropping.stop().await;
}

use std::collections::HashSet;

use tokio::task::JoinHandle;

use super::*;

/// Backoff short enough that tests see several restarts within a second.
const FAST: Backoff = Backoff {
    initial: Duration::from_millis(20),
    max: Duration::from_millis(100),
    healthy_after: Duration::from_secs(60),
};

fn shell(script: &str, args: &[&str]) -> CommandSource {
    let mut argv = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        script.to_owned(),
        "sh".to_owned(),
    ];
    argv.extend(args.iter().map(|arg| (*arg).to_owned()));
    CommandSource {
        argv,
        env: Vec::new(),
        replay: ReplayMark::default(),
        backoff: FAST,
    }
}

struct Running {
    task: JoinHandle<()>,
    rx: mpsc::Receiver<(SourceId, Batch)>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start(source: CommandSource) -> Running {
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(run_command(SourceId(1), source, tx));
    Running { task, rx }
}

impl Running {
    /// Collects line texts until `done` holds for them, or fails after ten seconds.
    async fn lines_until(&mut self, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(&lines) {
            assert!(
                Instant::now() < deadline,
                "timed out; lines so far: {lines:?}"
            );
            let received = tokio::time::timeout(Duration::from_millis(100), self.rx.recv()).await;
            if let Ok(Some((_, batch))) = received {
                lines.extend(batch.lines.into_iter().map(|line| line.text));
            }
        }
        lines
    }
}

#[tokio::test]
async fn command_restarts_after_exit() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("runs");
    let script =
        r#"n=$(cat "$1" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$1"; echo "run $n""#;
    let mut running = start(shell(script, &[state.to_str().unwrap()]));
    let lines = running.lines_until(|lines| lines.len() >= 3).await;
    assert_eq!(lines[..3], ["run 1", "run 2", "run 3"]);
}

#[tokio::test]
async fn command_restarts_despite_background_child() {
    // The shell exits at once but its background child keeps the output pipe open; the
    // source must still notice the exit and restart.
    let mut running = start(shell("sleep 1000 & echo started", &[]));
    let lines = running.lines_until(|lines| lines.len() >= 2).await;
    assert_eq!(lines[..2], ["started", "started"]);
}

#[tokio::test]
async fn command_replayed_lines_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("runs");
    let script = r#"n=$(cat "$1" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$1"
echo "2026-08-21T09:14:03Z first"
echo "2026-08-21T09:14:03Z second"
echo "2026-08-21T09:14:04Z third"
echo "run $n""#;
    let mut running = start(shell(script, &[state.to_str().unwrap()]));
    let lines = running
        .lines_until(|lines| lines.iter().any(|l| l == "run 3"))
        .await;
    assert_eq!(
        lines,
        ["first", "second", "third", "run 1", "run 2", "run 3"]
    );
}

#[tokio::test]
async fn command_resumes_from_stored_mark() {
    let at = crate::dnslog::time::parse_rfc3339_prefix("2026-08-21T09:14:03Z").map(|(at, _)| at);
    let mut source = shell(
        r#"echo "2026-08-21T09:14:02Z old"; echo "2026-08-21T09:14:05Z new"; sleep 1000"#,
        &[],
    );
    source.replay = ReplayMark {
        newest: at,
        hashes: Vec::new(),
    };
    let mut running = start(source);
    let lines = running.lines_until(|lines| !lines.is_empty()).await;
    assert_eq!(lines, ["new"]);
}

#[tokio::test]
async fn command_environment_is_allow_listed() {
    let mut running = start(CommandSource {
        argv: vec!["env".to_owned()],
        env: vec!["ALMAGEST_DNSLOG_TEST_UNSET".to_owned()],
        replay: ReplayMark::default(),
        backoff: FAST,
    });
    let lines = running
        .lines_until(|lines| lines.iter().any(|l| l.starts_with("PATH=")))
        .await;
    let names: HashSet<&str> = lines
        .iter()
        .filter_map(|line| line.split_once('=').map(|(name, _)| name))
        .collect();
    let allowed: HashSet<&str> = DEFAULT_ENV.into_iter().collect();
    assert!(names.is_subset(&allowed), "unexpected variables: {names:?}");
    // Cargo sets this for every test process, so it shows that the rest was cleared.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    assert!(!names.contains("CARGO_MANIFEST_DIR"));
}

#[tokio::test]
async fn command_group_killed_on_drop() {
    let mut running = start(shell(r#"sleep 1000 & echo "$$ $!"; wait"#, &[]));
    let lines = running.lines_until(|lines| !lines.is_empty()).await;
    let pids: Vec<u32> = lines[0]
        .split(' ')
        .map(|pid| pid.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    for &pid in &pids {
        assert!(is_running(pid), "process {pid} is not running");
    }

    drop(running);
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&pid| is_running(pid)) {
        assert!(
            Instant::now() < deadline,
            "processes {pids:?} outlived their source"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn command_missing_program_keeps_retrying() {
    let mut running = start(CommandSource {
        argv: vec!["/nonexistent/almagest-test-program".to_owned()],
        env: Vec::new(),
        replay: ReplayMark::default(),
        backoff: FAST,
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!running.task.is_finished());
    assert!(running.rx.try_recv().is_err());
}

/// Checks that a process exists and has not exited (a zombie has exited).
fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

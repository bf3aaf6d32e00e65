//! The command step: runs a target's argument vector with an allow-listed environment and a
//! timeout, and keeps the tail of its output for the build report.
//!
//! The command runs in its own process group, so a timeout or a cancelled build also stops
//! whatever the command started.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::config::INHERITED_ENV;

/// Enough for the last twenty or so lines of a failing script, and short enough for one
/// chat message (Discord's limit is 2000 characters).
pub const TAIL_BYTES: usize = 1500;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("starting {program:?} failed: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program:?} failed with {status}")]
    Failed {
        program: String,
        status: ExitStatus,
        tail: String,
    },
    #[error("{program:?} timed out after {} s and was killed", .timeout.as_secs())]
    TimedOut {
        program: String,
        timeout: Duration,
        tail: String,
    },
    #[error("waiting for {program:?} failed: {source}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

impl CommandError {
    /// Returns the output tail, when the command ran.
    pub fn tail(&self) -> Option<&str> {
        match self {
            CommandError::Failed { tail, .. } | CommandError::TimedOut { tail, .. } => Some(tail),
            CommandError::Spawn { .. } | CommandError::Wait { .. } => None,
        }
    }
}

/// A command with its environment, directory and timeout.
#[derive(Debug, Clone)]
pub struct CommandSpec<'a> {
    pub argv: &'a [String],
    /// The complete environment; nothing else is inherited.
    pub env: Vec<(String, String)>,
    pub cwd: Option<&'a Path>,
    pub timeout: Duration,
}

/// Builds a command's environment: the allow-listed variables set in the daemon's
/// environment, the target's `command_env` names, and the build's own variables.
pub fn build_env(
    extra_names: &[String],
    target: &str,
    tag: &str,
    release_dir: Option<&Path>,
) -> Vec<(String, String)> {
    let names = INHERITED_ENV
        .iter()
        .copied()
        .chain(extra_names.iter().map(String::as_str));
    let mut env: Vec<(String, String)> = names
        .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
        .collect();
    env.push(("ALMAGEST_TARGET".to_string(), target.to_string()));
    env.push(("ALMAGEST_TAG".to_string(), tag.to_string()));
    if let Some(dir) = release_dir {
        env.push((
            "ALMAGEST_RELEASE_DIR".to_string(),
            dir.to_string_lossy().into_owned(),
        ));
    }
    env
}

/// Runs the command to completion and returns its output tail.
pub async fn run_command(spec: &CommandSpec<'_>) -> Result<String, CommandError> {
    let program = spec.argv.first().cloned().unwrap_or_default();
    let mut command = Command::new(&program);
    command
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = spec.cwd {
        command.current_dir(cwd);
    }
    let mut child = command.spawn().map_err(|source| CommandError::Spawn {
        program: program.clone(),
        source,
    })?;
    let group = ProcessGroup(child.id().and_then(|pid| i32::try_from(pid).ok()));

    let tail = Arc::new(Mutex::new(Tail::default()));
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let run = async {
        let pipes =
            futures_util::future::join(pump(stdout, tail.clone()), pump(stderr, tail.clone()));
        let (_, status) = futures_util::future::join(pipes, child.wait()).await;
        status
    };
    let outcome = tokio::time::timeout(spec.timeout, run).await;
    let text = tail.lock().expect("the tail lock is never poisoned").text();
    match outcome {
        Err(_) => {
            drop(group);
            let _ = child.wait().await;
            Err(CommandError::TimedOut {
                program,
                timeout: spec.timeout,
                tail: text,
            })
        }
        Ok(Err(source)) => Err(CommandError::Wait { program, source }),
        Ok(Ok(status)) => {
            group.release();
            if status.success() {
                Ok(text)
            } else {
                Err(CommandError::Failed {
                    program,
                    status,
                    tail: text,
                })
            }
        }
    }
}

/// Kills the command's process group when dropped, unless released after a clean exit.
struct ProcessGroup(Option<i32>);

impl ProcessGroup {
    fn release(mut self) {
        self.0 = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // SAFETY: killpg takes plain integers; a group that is gone returns ESRCH.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

async fn pump(pipe: Option<impl AsyncRead + Unpin>, tail: Arc<Mutex<Tail>>) {
    let Some(mut pipe) = pipe else {
        return;
    };
    let mut buffer = [0u8; 4096];
    while let Ok(read) = pipe.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        tail.lock()
            .expect("the tail lock is never poisoned")
            .push(&buffer[..read]);
    }
}

/// The last [`TAIL_BYTES`] of output.
#[derive(Debug, Default)]
struct Tail {
    bytes: VecDeque<u8>,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.bytes.extend(data);
        let excess = self.bytes.len().saturating_sub(TAIL_BYTES);
        self.bytes.drain(..excess);
    }

    /// The tail as text; a character cut at the start becomes U+FFFD.
    fn text(&self) -> String {
        let (front, back) = self.bytes.as_slices();
        let joined = [front, back].concat();
        String::from_utf8_lossy(&joined).trim_end().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[String], timeout: Duration) -> CommandSpec<'_> {
        CommandSpec {
            argv,
            env: build_env(&[], "wiki", "v1.0.0", None),
            cwd: None,
            timeout,
        }
    }

    fn argv(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|part| part.to_string()).collect()
    }

    #[tokio::test]
    async fn output_tail_is_kept() {
        let argv = argv(&["sh", "-c", "echo out; echo err >&2"]);
        let tail = run_command(&spec(&argv, Duration::from_secs(10)))
            .await
            .unwrap();
        assert!(tail.contains("out"), "{tail}");
        assert!(tail.contains("err"), "{tail}");
    }

    #[tokio::test]
    async fn long_output_is_cut_to_tail() {
        let argv = argv(&["sh", "-c", "seq 1 5000"]);
        let tail = run_command(&spec(&argv, Duration::from_secs(10)))
            .await
            .unwrap();
        assert!(tail.len() <= TAIL_BYTES);
        assert!(tail.ends_with("5000"), "{tail}");
    }

    #[tokio::test]
    async fn failure_keeps_tail() {
        let argv = argv(&["sh", "-c", "echo broken; exit 3"]);
        let error = run_command(&spec(&argv, Duration::from_secs(10)))
            .await
            .unwrap_err();
        assert!(matches!(error, CommandError::Failed { .. }));
        assert_eq!(error.tail(), Some("broken"));
    }

    #[tokio::test]
    async fn timeout_kills_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let script = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let argv = argv(&["sh", "-c", &script]);
        let error = run_command(&spec(&argv, Duration::from_millis(300)))
            .await
            .unwrap_err();
        assert!(matches!(error, CommandError::TimedOut { .. }));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !marker.exists(),
            "a child of the command outlived the timeout"
        );
    }

    #[tokio::test]
    async fn missing_program_is_spawn_error() {
        let argv = argv(&["/nonexistent/program"]);
        let error = run_command(&spec(&argv, Duration::from_secs(1)))
            .await
            .unwrap_err();
        assert!(matches!(error, CommandError::Spawn { .. }));
    }

    #[test]
    fn env_has_build_variables_only() {
        let env = build_env(&[], "wiki", "v2", Some(Path::new("/srv/wiki/releases/v2")));
        let names: Vec<&str> = env.iter().map(|(name, _)| name.as_str()).collect();
        assert!(names.contains(&"ALMAGEST_TAG"));
        assert!(names.contains(&"ALMAGEST_RELEASE_DIR"));
        assert!(names.iter().all(|name| !name.starts_with("ALMAGEST__")));
    }
}

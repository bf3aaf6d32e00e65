//! A command whose output is the query log, such as
//! `kubectl logs -f --timestamps --since=10m -n kube-system deploy/coredns`, restarted with
//! backoff whenever it exits.
//!
//! The command runs from its argument vector with a cleared environment plus an allow-list
//! of variables, in a process group of its own that is killed when the source stops, so
//! neither secrets nor processes leak out of Almagest. Lines it prints again after a restart
//! are dropped by a [`ReplayFilter`](super::ReplayFilter) when they carry a time.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use super::stream::LineReader;
use super::{Batch, ReplayFilter, ReplayMark, SourceId, send};

/// Variables every command gets from the daemon's environment when they are set. They are
/// what a program needs to find executables and format text, and the API server's address
/// that `kubectl` needs inside a pod (its service account token is a file, not a variable).
pub const DEFAULT_ENV: [&str; 7] = [
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
];

/// Maximum length of the stderr line kept for the exit message.
const STDERR_LINE_BYTES: usize = 512;

/// Restart delays of a command source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// A run at least this long counts as healthy and resets the delay.
    pub healthy_after: Duration,
}

impl Default for Backoff {
    /// Starts at one second, so that a stream the API server closed is back at once. The
    /// maximum is a minute, so that a command that cannot start costs one attempt a minute.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            healthy_after: Duration::from_secs(60),
        }
    }
}

/// A command to run for its output.
#[derive(Clone, Debug)]
pub struct CommandSource {
    /// Program and arguments; the program is looked up in the allowed `PATH`.
    pub argv: Vec<String>,
    /// Names of the variables passed on from the daemon's environment, in addition to
    /// [`DEFAULT_ENV`].
    pub env: Vec<String>,
    /// The point where the previous run stopped, read from Redis.
    pub replay: ReplayMark,
    pub backoff: Backoff,
}

/// The way one run of the command ended.
enum RunEnd {
    /// The command exited or closed its output.
    Exited(String),
    /// The receiver is gone: stop for good.
    Stopped,
}

/// Runs the command, restarting it with backoff, until the receiver is dropped.
pub async fn run_command(id: SourceId, source: CommandSource, tx: mpsc::Sender<(SourceId, Batch)>) {
    let program = source.argv.first().cloned().unwrap_or_default();
    let mut filter = ReplayFilter::new(source.replay.clone());
    let mut delay = source.backoff.initial;
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let outcome = match spawn(&source) {
            Ok(child) => {
                if failures > 0 {
                    debug!(program, "query log command started");
                }
                run_once(id, child, &mut filter, &tx).await
            }
            Err(error) => Err(format!("cannot start: {error}")),
        };
        let reason = match outcome {
            Ok(RunEnd::Stopped) => return,
            Ok(RunEnd::Exited(reason)) | Err(reason) => reason,
        };

        if started.elapsed() >= source.backoff.healthy_after {
            if failures > 0 {
                info!(program, failures, "query log command recovered");
            }
            failures = 0;
            delay = source.backoff.initial;
        }
        if failures == 0 {
            warn!(
                program,
                reason,
                retry_ms = delay.as_millis() as u64,
                "query log command ended; restarting"
            );
        } else {
            debug!(program, reason, failures, "query log command ended again");
        }
        failures += 1;

        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = tx.closed() => return,
        }
        delay = (delay * 2).min(source.backoff.max);
    }
}

fn spawn(source: &CommandSource) -> std::io::Result<ProcessGroup> {
    let (program, args) = source
        .argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let names = DEFAULT_ENV
        .iter()
        .copied()
        .chain(source.env.iter().map(String::as_str));
    for name in names {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    let child = command.spawn()?;
    let group_id = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .ok_or_else(|| std::io::Error::other("spawned child has no process id"))?;
    Ok(ProcessGroup { child, group_id })
}

/// A child that leads its own process group. Killing the group (on exit and on drop) also
/// ends what a shell started in the background, which would otherwise keep the output pipe
/// open.
struct ProcessGroup {
    child: Child,
    group_id: i32,
}

impl ProcessGroup {
    fn kill(&self) {
        // SAFETY: `kill` has no memory-safety preconditions. Linux keeps a process group's
        // id reserved while any member lives, so the id names this group or, once the group
        // is empty, nothing (ESRCH).
        unsafe {
            libc::kill(-self.group_id, libc::SIGKILL);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads one run's output until the command exits; returns how the run ended.
async fn run_once(
    id: SourceId,
    mut group: ProcessGroup,
    filter: &mut ReplayFilter,
    tx: &mpsc::Sender<(SourceId, Batch)>,
) -> Result<RunEnd, String> {
    let stdout = group.child.stdout.take().ok_or("no stdout pipe")?;
    let stderr = group.child.stderr.take().ok_or("no stderr pipe")?;
    let stderr_task = AbortOnDropHandle::new(tokio::spawn(last_stderr_line(stderr)));

    let mut reader = LineReader::new(stdout, Some(std::mem::take(filter)));
    let mut status = None;
    let read_result = loop {
        // `next_batch` keeps no lines in its future across its await point, so losing the
        // race to `wait` drops nothing.
        tokio::select! {
            batch = reader.next_batch() => match batch {
                Ok(Some(batch)) => {
                    if !send(tx, id, batch).await {
                        return Ok(RunEnd::Stopped);
                    }
                }
                Ok(None) => break Ok(()),
                Err(error) => break Err(error),
            },
            exit = group.child.wait(), if status.is_none() => {
                // Leftover children die with the group, so the output reaches its end
                // after what is already in the pipe.
                status = Some(exit);
                group.kill();
            }
        }
    };
    *filter = reader.into_filter().unwrap_or_default();

    let status = match status {
        Some(status) => status,
        None => group.child.wait().await,
    };
    let status = status.map_err(|error| error.to_string())?;
    let last_stderr = stderr_task.await.unwrap_or_default();
    let mut reason = match read_result {
        Ok(()) => status.to_string(),
        Err(error) => format!("reading output failed: {error}; {status}"),
    };
    if !last_stderr.is_empty() {
        reason.push_str(": ");
        reason.push_str(&last_stderr);
    }
    Ok(RunEnd::Exited(reason))
}

/// Logs the command's stderr at debug level and returns its last non-empty line, cut to
/// [`STDERR_LINE_BYTES`].
async fn last_stderr_line(mut stderr: ChildStderr) -> String {
    let mut buffer = [0u8; 4096];
    let mut current = Vec::new();
    let mut last = String::new();
    loop {
        let read = match stderr.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        for &b in &buffer[..read] {
            if b == b'\n' {
                end_stderr_line(&mut current, &mut last);
            } else if current.len() < STDERR_LINE_BYTES {
                current.push(b);
            }
        }
    }
    end_stderr_line(&mut current, &mut last);
    last
}

fn end_stderr_line(current: &mut Vec<u8>, last: &mut String) {
    let line = String::from_utf8_lossy(current).trim().to_owned();
    current.clear();
    if !line.is_empty() {
        debug!(line, "query log command stderr");
        *last = line;
    }
}

#[cfg(test)]
mod tests;

//! The drop folder: a file `<stub>.<ext>` put into `control.drop_dir` is published to
//! `P:q:<stub>`, then moved to `sent/`. Everything before the last dot is the stub, and a name
//! without a dot is a stub by itself. A file that cannot be published moves to `failed/`, with a
//! `<name>.reason` file beside it.
//!
//! A file counts as complete when it is closed after writing or moved into the folder, never
//! on a create or modify event alone, so a file written slowly is published once and whole.
//! Dot-files and temporary names (`*.tmp`, `*.swp`, `*~`, `.#*`, …) are left alone until they
//! are renamed. While the bus is down, complete files stay where they are and are retried in
//! arrival order when it returns; nothing is deleted.
//!
//! One worker task owns the watcher (a notify-debouncer-full debouncer) and does all file work;
//! [`DropFolder`] owns the task, so dropping it stops both. The worker scans the folder at start,
//! after a queue overflow (the rescan flag) and whenever it re-creates a failed watch.
//!
//! Delivery is at least once: a file is moved after its publish succeeded, so a crash between
//! the two publishes it again after the restart.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::drop_file::{
    FileVersion, Inspection, inspect, list_candidates, move_into, move_to_failed,
};
use crate::bus::{Bus, Stub};
use crate::config::Config;

/// How long the debouncer keeps events before passing them on. It is long enough to pair the
/// two halves of a rename and to merge a burst of writes, and short enough that a dropped
/// file goes out within a fraction of a second.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// A file that a scan finds modified more recently than this is looked at again later rather
/// than published: it may still be open for writing, and its close event will come.
/// NOTE: a scan (at start, after an overflow) cannot tell a finished file from one whose
/// writer paused longer than this with the file open; such a file is published as it is.
const SCAN_SETTLE: Duration = Duration::from_secs(2);
/// First and maximum delay between retries of files that waited for the bus. A reconnect
/// retries at once; the timer covers publishes that failed while the bus looked connected.
const RETRY_FIRST_DELAY: Duration = Duration::from_secs(1);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(30);
/// First and maximum delay between attempts to re-create a failed watch (a folder that cannot
/// be created, an inotify limit that is reached).
const REWATCH_FIRST_DELAY: Duration = Duration::from_secs(1);
const REWATCH_MAX_DELAY: Duration = Duration::from_secs(60);
/// Event batches queued between the debouncer thread and the worker. When the worker falls
/// behind, the debouncer thread waits and the kernel queues further events. If that queue
/// overflows, the rescan flag makes the worker list the folder instead.
const EVENT_BATCHES: usize = 64;
/// Files remembered while waiting for the bus. Files past this stay on disk and are found by
/// the rescan that runs once the list has room again.
const MAX_PENDING: usize = 10_000;
/// Identities of files that were published but could not be moved away, so they are not
/// published again while this process runs.
const MAX_UNMOVED: usize = 10_000;
/// How long a graceful stop waits for the file being published.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// The running drop folder. Dropping it stops the watcher and the worker.
pub struct DropFolder {
    bus_status: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    task: AbortOnDropHandle<()>,
}

impl DropFolder {
    /// Starts watching `dir` in a worker task. A folder that cannot be watched yet is retried
    /// with backoff, so starting never fails.
    pub fn start(dir: PathBuf, max_bytes: u64, bus: Bus, settings: Arc<Config>) -> DropFolder {
        let (bus_status, bus_rx) = watch::channel(bus.is_connected());
        let (stop, stop_rx) = watch::channel(false);
        let (events_tx, events_rx) = mpsc::channel(EVENT_BATCHES);
        let worker = Worker {
            sent: dir.join("sent"),
            failed: dir.join("failed"),
            dir,
            max_bytes,
            bus,
            settings,
            events_tx,
            events: events_rx,
            bus_status: bus_rx,
            stop: stop_rx,
            watcher: None,
            watch_failures: 0,
            rewatch_at: None,
            rescan_at: None,
            pending: VecDeque::new(),
            pending_set: HashSet::new(),
            pending_overflowed: false,
            retry_failures: 0,
            retry_at: None,
            unmoved: HashSet::new(),
        };
        let task = tokio::spawn(worker.run().in_current_span());
        DropFolder {
            bus_status,
            stop,
            task: AbortOnDropHandle::new(task),
        }
    }

    /// Tells the worker that the bus connected or disconnected; files that waited for the
    /// bus are retried at once when it connects.
    pub fn set_bus_connected(&self, connected: bool) {
        self.bus_status.send_replace(connected);
    }

    /// Lets the worker finish the file it is publishing, then stops it.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if tokio::time::timeout(STOP_TIMEOUT, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!("drop folder did not stop in time; aborting it");
        }
    }
}

/// The meaning of an event for the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Trigger {
    /// This file may be complete: it was closed after writing or moved into the folder.
    File(PathBuf),
    /// Events were lost: list the folder.
    Rescan,
    /// The folder itself was removed or moved away: watch it again.
    Rewatch,
}

fn classify(event: &Event, dir: &Path) -> Option<Trigger> {
    if event.need_rescan() {
        return Some(Trigger::Rescan);
    }
    let first = event.paths.first()?;
    match event.kind {
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From))
            if first == dir =>
        {
            Some(Trigger::Rewatch)
        }
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Some(Trigger::File(first.clone())),
        // The debouncer joins the two halves of a rename into one event: [from, to].
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            event.paths.last().cloned().map(Trigger::File)
        }
        _ => None,
    }
}

type Watcher = Debouncer<RecommendedWatcher, RecommendedCache>;

/// Creates the folders and a debouncer that watches `dir` and sends its batches to `events`.
fn watch(dir: &Path, events: mpsc::Sender<DebounceEventResult>) -> Result<Watcher, String> {
    for folder in [dir.to_path_buf(), dir.join("sent"), dir.join("failed")] {
        std::fs::create_dir_all(&folder)
            .map_err(|error| format!("cannot create {}: {error}", folder.display()))?;
    }
    let handler = move |result: DebounceEventResult| {
        // Runs on the debouncer's own thread, where blocking is allowed. It fails only when
        // the worker is gone, and then the events are not needed.
        let _ = events.blocking_send(result);
    };
    let mut debouncer = new_debouncer(DEBOUNCE, None, handler)
        .map_err(|error| format!("cannot start a watcher: {error}"))?;
    debouncer
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|error| format!("cannot watch {}: {error}", dir.display()))?;
    Ok(debouncer)
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::error!(error = %error, "drop folder file work failed");
            None
        }
    }
}

/// Doubling delay for the `failures`-th failure in a row, from `first` up to `max`.
fn backoff(failures: u32, first: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (first * 2u32.pow(doublings)).min(max)
}

/// The result of handling one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Sent,
    Failed,
    Skipped,
    /// The bus is down or failed: try again later.
    Retry,
}

struct Worker {
    dir: PathBuf,
    sent: PathBuf,
    failed: PathBuf,
    max_bytes: u64,
    bus: Bus,
    settings: Arc<Config>,
    events_tx: mpsc::Sender<DebounceEventResult>,
    events: mpsc::Receiver<DebounceEventResult>,
    bus_status: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
    watcher: Option<Watcher>,
    watch_failures: u32,
    rewatch_at: Option<Instant>,
    rescan_at: Option<Instant>,
    /// Complete files waiting for the bus, in arrival order.
    pending: VecDeque<PathBuf>,
    pending_set: HashSet<PathBuf>,
    /// A file was not added to `pending` because it was full; a rescan must find it.
    pending_overflowed: bool,
    retry_failures: u32,
    retry_at: Option<Instant>,
    unmoved: HashSet<FileVersion>,
}

impl Worker {
    async fn run(mut self) {
        tracing::info!(dir = %self.dir.display(), "drop folder starting");
        self.rewatch().await;
        loop {
            let wake = [self.retry_at, self.rescan_at, self.rewatch_at]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                biased;
                _ = self.stop.changed() => break,
                Some(result) = self.events.recv() => self.handle_batch(result).await,
                Ok(()) = self.bus_status.changed() => {
                    let connected = *self.bus_status.borrow_and_update();
                    if connected && !self.pending.is_empty() {
                        self.retry_pending().await;
                    }
                }
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                    self.run_timers().await;
                }
            }
        }
        tracing::info!(dir = %self.dir.display(), "drop folder stopped");
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    async fn run_timers(&mut self) {
        let now = Instant::now();
        if self.rewatch_at.is_some_and(|at| at <= now) {
            self.rewatch().await;
        }
        if self.rescan_at.is_some_and(|at| at <= now) {
            self.rescan_at = None;
            self.scan().await;
        }
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_pending().await;
        }
    }

    /// Drops the current watcher, watches the folder again and lists it, since events may
    /// have been missed meanwhile. On failure, tries again later.
    async fn rewatch(&mut self) {
        self.watcher = None;
        self.rewatch_at = None;
        let dir = self.dir.clone();
        let events = self.events_tx.clone();
        match blocking(move || watch(&dir, events)).await {
            Some(Ok(watcher)) => {
                self.watcher = Some(watcher);
                if self.watch_failures > 0 {
                    tracing::info!(
                        dir = %self.dir.display(),
                        attempts = self.watch_failures + 1,
                        "drop folder watched again"
                    );
                }
                self.watch_failures = 0;
                self.scan().await;
            }
            Some(Err(error)) => {
                self.watch_failures += 1;
                if self.watch_failures == 1 {
                    tracing::warn!(
                        dir = %self.dir.display(),
                        error = %error,
                        "cannot watch the drop folder; retrying"
                    );
                }
                let delay = backoff(self.watch_failures, REWATCH_FIRST_DELAY, REWATCH_MAX_DELAY);
                self.rewatch_at = Some(Instant::now() + delay);
            }
            None => {
                self.watch_failures += 1;
                self.rewatch_at = Some(Instant::now() + REWATCH_MAX_DELAY);
            }
        }
    }

    async fn handle_batch(&mut self, result: DebounceEventResult) {
        let events = match result {
            Ok(events) => events,
            Err(errors) => {
                for error in &errors {
                    tracing::warn!(dir = %self.dir.display(), error = %error, "drop folder watch error; watching again");
                }
                self.rewatch_at
                    .get_or_insert_with(|| Instant::now() + REWATCH_FIRST_DELAY);
                return;
            }
        };
        let mut files = Vec::new();
        let mut rescan = false;
        let mut rewatch = false;
        for event in &events {
            match classify(event, &self.dir) {
                Some(Trigger::File(path)) if !files.contains(&path) => files.push(path),
                Some(Trigger::File(_)) | None => {}
                Some(Trigger::Rescan) => rescan = true,
                Some(Trigger::Rewatch) => rewatch = true,
            }
        }
        if rewatch {
            tracing::warn!(dir = %self.dir.display(), "drop folder was removed or moved; watching it again");
            // The rewatch lists the folder, which covers every file of this batch.
            self.rewatch().await;
            return;
        }
        for path in files {
            if self.stopping() {
                return;
            }
            self.consider(path).await;
        }
        if rescan {
            tracing::info!(dir = %self.dir.display(), "drop folder events were lost; listing the folder");
            self.scan().await;
        }
    }

    /// Lists the folder and handles every file in it, oldest first. Recently modified files
    /// are looked at again after [`SCAN_SETTLE`].
    async fn scan(&mut self) {
        let dir = self.dir.clone();
        let listed = match blocking(move || list_candidates(&dir)).await {
            Some(Ok(listed)) => listed,
            Some(Err(error)) => {
                tracing::warn!(dir = %self.dir.display(), error = %error, "cannot list the drop folder");
                self.rewatch_at
                    .get_or_insert_with(|| Instant::now() + REWATCH_FIRST_DELAY);
                return;
            }
            None => return,
        };
        self.pending_overflowed = false;
        let now = SystemTime::now();
        for (path, modified) in listed {
            if self.stopping() {
                return;
            }
            let age = now.duration_since(modified).unwrap_or_default();
            if age < SCAN_SETTLE {
                let at = Instant::now() + (SCAN_SETTLE - age);
                self.rescan_at = Some(self.rescan_at.map_or(at, |known| known.min(at)));
                continue;
            }
            self.consider(path).await;
        }
    }

    /// Handles a file that may be complete, unless it already waits for the bus.
    async fn consider(&mut self, path: PathBuf) {
        if self.pending_set.contains(&path) {
            return;
        }
        if self.process(&path).await == Outcome::Retry {
            self.add_pending(path);
        }
    }

    fn add_pending(&mut self, path: PathBuf) {
        if self.pending.len() >= MAX_PENDING {
            self.pending_overflowed = true;
            return;
        }
        if self.pending.is_empty() {
            tracing::info!(dir = %self.dir.display(), "drop folder waits for the bus");
        }
        self.pending_set.insert(path.clone());
        self.pending.push_back(path);
        if self.retry_at.is_none() {
            self.retry_failures = self.retry_failures.max(1);
            let delay = backoff(self.retry_failures, RETRY_FIRST_DELAY, RETRY_MAX_DELAY);
            self.retry_at = Some(Instant::now() + delay);
        }
    }

    /// Publishes waiting files in order until one fails again.
    async fn retry_pending(&mut self) {
        self.retry_at = None;
        let waiting = self.pending.len();
        while let Some(path) = self.pending.front().cloned() {
            if self.stopping() {
                return;
            }
            if self.process(&path).await == Outcome::Retry {
                self.retry_failures += 1;
                let delay = backoff(self.retry_failures, RETRY_FIRST_DELAY, RETRY_MAX_DELAY);
                self.retry_at = Some(Instant::now() + delay);
                return;
            }
            self.pending.pop_front();
            self.pending_set.remove(&path);
        }
        self.retry_failures = 0;
        tracing::info!(dir = %self.dir.display(), files = waiting, "drop folder caught up after waiting for the bus");
        if self.pending_overflowed {
            self.scan().await;
        }
    }

    /// Inspects, publishes and moves one file.
    async fn process(&mut self, path: &Path) -> Outcome {
        let (dir, file, max_bytes) = (self.dir.clone(), path.to_path_buf(), self.max_bytes);
        let Some(inspection) = blocking(move || inspect(&dir, &file, max_bytes)).await else {
            return Outcome::Skipped;
        };
        let (stub, text, version) = match inspection {
            Inspection::Skip => return Outcome::Skipped,
            Inspection::Invalid(reason) => return self.fail(path, reason).await,
            Inspection::Ready {
                stub,
                text,
                version,
            } => (stub, text, version),
        };
        if self.unmoved.contains(&version) {
            return Outcome::Skipped;
        }
        let durable = self.settings.is_durable_stub(&stub);
        match self.bus.publish_to_queue(&stub, &text, durable).await {
            Ok(receivers) => {
                self.finish_sent(path, &stub, receivers, version).await;
                Outcome::Sent
            }
            Err(error) if error.is_transient() => {
                tracing::debug!(file = %path.display(), error = %error, "drop folder publish deferred");
                Outcome::Retry
            }
            Err(error) => self.fail(path, format!("publishing failed: {error}")).await,
        }
    }

    async fn finish_sent(
        &mut self,
        path: &Path,
        stub: &Stub,
        receivers: u64,
        version: FileVersion,
    ) {
        metrics::counter!("almagest_control_drop_files_total", "outcome" => "sent").increment(1);
        let (file, sent) = (path.to_path_buf(), self.sent.clone());
        match blocking(move || move_into(&file, &sent, false)).await {
            Some(Ok(target)) => tracing::info!(
                file = %path.display(),
                stub = %stub,
                receivers,
                moved_to = %target.display(),
                "published a dropped file"
            ),
            Some(Err(error)) => {
                tracing::error!(
                    file = %path.display(),
                    stub = %stub,
                    error = %error,
                    "published a dropped file but cannot move it to sent/; it is not published \
                     again while this process runs"
                );
                if self.unmoved.len() < MAX_UNMOVED {
                    self.unmoved.insert(version);
                }
            }
            None => {}
        }
    }

    async fn fail(&mut self, path: &Path, reason: String) -> Outcome {
        metrics::counter!("almagest_control_drop_files_total", "outcome" => "failed").increment(1);
        let (file, failed, why) = (path.to_path_buf(), self.failed.clone(), reason.clone());
        match blocking(move || move_to_failed(&file, &failed, &why)).await {
            Some(Ok(target)) => tracing::warn!(
                file = %path.display(),
                reason = %reason,
                moved_to = %target.display(),
                "dropped file not published"
            ),
            Some(Err(error)) => tracing::error!(
                file = %path.display(),
                reason = %reason,
                error = %error,
                "dropped file not published, and it cannot be moved to failed/"
            ),
            None => {}
        }
        Outcome::Failed
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, Flag, RemoveKind};

    use super::*;

    fn event(kind: EventKind, paths: &[&str]) -> Event {
        let mut event = Event::new(kind);
        for path in paths {
            event = event.add_path(PathBuf::from(path));
        }
        event
    }

    #[test]
    fn close_after_write_triggers() {
        let closed = event(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            &["/d/wiki.txt"],
        );
        assert_eq!(
            classify(&closed, Path::new("/d")),
            Some(Trigger::File("/d/wiki.txt".into()))
        );
    }

    #[test]
    fn create_and_modify_do_not_trigger() {
        let dir = Path::new("/d");
        let created = event(EventKind::Create(CreateKind::File), &["/d/wiki.txt"]);
        let modified = event(
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            &["/d/wiki.txt"],
        );
        assert_eq!(classify(&created, dir), None);
        assert_eq!(classify(&modified, dir), None);
    }

    #[test]
    fn rename_targets_trigger() {
        let dir = Path::new("/d");
        let moved_in = event(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            &["/d/a.txt"],
        );
        let renamed = event(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &["/d/.a.txt.swp", "/d/a.txt"],
        );
        assert_eq!(
            classify(&moved_in, dir),
            Some(Trigger::File("/d/a.txt".into()))
        );
        assert_eq!(
            classify(&renamed, dir),
            Some(Trigger::File("/d/a.txt".into()))
        );
    }

    #[test]
    fn rescan_flag_triggers_rescan() {
        let overflow = Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert_eq!(classify(&overflow, Path::new("/d")), Some(Trigger::Rescan));
    }

    #[test]
    fn folder_removed_triggers_rewatch() {
        let dir = Path::new("/d");
        let removed = event(EventKind::Remove(RemoveKind::Folder), &["/d"]);
        let moved = event(
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            &["/d"],
        );
        let file_removed = event(EventKind::Remove(RemoveKind::File), &["/d/a.txt"]);
        assert_eq!(classify(&removed, dir), Some(Trigger::Rewatch));
        assert_eq!(classify(&moved, dir), Some(Trigger::Rewatch));
        assert_eq!(classify(&file_removed, dir), None);
    }

    #[test]
    fn backoff_doubles_then_caps() {
        let first = Duration::from_secs(1);
        let max = Duration::from_secs(30);
        assert_eq!(backoff(1, first, max), first);
        assert_eq!(backoff(3, first, max), first * 4);
        assert_eq!(backoff(30, first, max), max);
    }
}

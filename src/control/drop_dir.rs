//! The drop folder: a file `<stub>.<ext>` put into `control.drop_dir` is published to
//! `P:q:<stub>` (everything before the last dot is the stub; a name without a dot is a stub by
//! itself), then moved to `sent/`. A file that cannot be published moves to `failed/`, with a
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
use std::ffi::{OsStr, OsString};
use std::io::Read as _;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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

use crate::bus::{Bus, Stub};
use crate::config::Config;

/// How long the debouncer holds events before passing them on. Long enough to pair the two
/// halves of a rename and to merge a burst of writes; short enough that a dropped file goes
/// out within a fraction of a second.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// A file that a scan finds modified more recently than this is looked at again later rather
/// than published: it may still be open for writing, and its close event will come.
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
/// behind, the debouncer thread waits and the kernel queues further events; if that queue
/// overflows, the rescan flag makes the worker list the folder instead.
const EVENT_BATCHES: usize = 64;
/// Files remembered while waiting for the bus. Files past this stay on disk and are found by
/// the rescan that runs once the list has room again.
const MAX_PENDING: usize = 10_000;
/// Identities of files that were published but could not be moved away, so they are not
/// published again while this process runs.
const MAX_UNMOVED: usize = 10_000;
/// How many numbered names (`wiki.1.txt`, `wiki.2.txt`, …) are tried on a name clash.
const MAX_CLASH_SUFFIX: u32 = 100_000;
/// How long a graceful stop waits for the file being published.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Name endings of temporary files (compared ignoring ASCII case), besides dot-files and `*~`.
const TEMPORARY_SUFFIXES: [&str; 5] = [".tmp", ".swp", ".swo", ".swx", ".part"];

/// The running drop folder. Dropping it stops the watcher and the worker.
pub struct DropFolder {
    bus_status: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    task: AbortOnDropHandle<()>,
}

impl DropFolder {
    /// Starts watching `dir` in a worker task. Never fails: a folder that cannot be watched
    /// yet is retried with backoff.
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

/// What an event means for the worker.
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
        | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
            Some(Trigger::File(first.clone()))
        }
        // The debouncer joins the two halves of a rename into one event: [from, to].
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            event.paths.last().cloned().map(Trigger::File)
        }
        _ => None,
    }
}

/// Whether a file name marks a file that is still being written or is not meant for us.
pub fn is_temporary(name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    if bytes.starts_with(b".") || bytes.ends_with(b"~") {
        return true;
    }
    let lower = bytes.to_ascii_lowercase();
    TEMPORARY_SUFFIXES
        .iter()
        .any(|suffix| lower.ends_with(suffix.as_bytes()))
}

/// The stub a file name publishes to: everything before the last dot.
pub fn stub_for(name: &str) -> Result<Stub, String> {
    let stem = match name.rfind('.') {
        Some(dot) if dot > 0 => &name[..dot],
        _ => name,
    };
    Stub::parse(stem).map_err(|error| format!("file name {name:?}: {error}"))
}

/// `wiki.txt` numbered `n`: `wiki.n.txt`; `wiki`: `wiki.n`.
fn numbered_name(name: &OsStr, n: u32) -> OsString {
    let bytes = name.as_bytes();
    let numbered = match bytes.iter().rposition(|byte| *byte == b'.') {
        Some(dot) if dot > 0 => {
            let mut numbered = bytes[..dot].to_vec();
            numbered.extend_from_slice(format!(".{n}").as_bytes());
            numbered.extend_from_slice(&bytes[dot..]);
            numbered
        }
        _ => {
            let mut numbered = bytes.to_vec();
            numbered.extend_from_slice(format!(".{n}").as_bytes());
            numbered
        }
    };
    OsString::from_vec(numbered)
}

/// `failed/<name>.reason` beside a failed file.
fn reason_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".reason");
    file.with_file_name(name)
}

fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

/// Moves `file` into `folder` under its own name, or a numbered one if that is taken (by a
/// file or, with `with_reason`, by a `.reason` file). Returns the new path.
fn move_into(file: &Path, folder: &Path, with_reason: bool) -> std::io::Result<PathBuf> {
    let name = file
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path has no file name"))?;
    std::fs::create_dir_all(folder)?;
    for n in 0..MAX_CLASH_SUFFIX {
        let candidate = if n == 0 {
            name.to_os_string()
        } else {
            numbered_name(name, n)
        };
        let target = folder.join(candidate);
        if exists(&target) || (with_reason && exists(&reason_path(&target))) {
            continue;
        }
        std::fs::rename(file, &target)?;
        return Ok(target);
    }
    Err(std::io::Error::other(format!(
        "{MAX_CLASH_SUFFIX} files with this name are already in {}",
        folder.display()
    )))
}

/// Moves `file` to `failed/` and writes why beside it.
fn move_to_failed(file: &Path, failed: &Path, reason: &str) -> std::io::Result<PathBuf> {
    let target = move_into(file, failed, true)?;
    std::fs::write(reason_path(&target), format!("{reason}\n"))?;
    Ok(target)
}

/// A file's identity and version, to recognise a file that was already published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileVersion {
    device: u64,
    inode: u64,
    len: u64,
    modified_ns: i128,
}

impl FileVersion {
    fn of(metadata: &std::fs::Metadata) -> FileVersion {
        FileVersion {
            device: metadata.dev(),
            inode: metadata.ino(),
            len: metadata.size(),
            modified_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
        }
    }
}

/// What a candidate file turned out to be.
#[derive(Debug)]
enum Inspection {
    /// Not for us (anymore): gone, a folder, a temporary name, outside the folder.
    Skip,
    /// Cannot be published; the reason goes into its `.reason` file.
    Invalid(String),
    Ready {
        stub: Stub,
        text: String,
        version: FileVersion,
    },
}

/// Reads a candidate file, checking its name, type, size and encoding. Symbolic links are
/// never followed, and nothing but regular files is opened.
fn inspect(dir: &Path, path: &Path, max_bytes: u64) -> Inspection {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Inspection::Skip;
    };
    if parent != dir || is_temporary(name) {
        return Inspection::Skip;
    }
    let metadata = match path.symlink_metadata() {
        Ok(metadata) => metadata,
        Err(error) => {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %path.display(), error = %error, "cannot inspect a dropped file");
            }
            return Inspection::Skip;
        }
    };
    if metadata.is_dir() {
        return Inspection::Skip;
    }
    if !metadata.is_file() {
        return Inspection::Invalid(
            "not a regular file: only regular files are published, and symbolic links are \
             not followed"
                .into(),
        );
    }
    let Some(name) = name.to_str() else {
        return Inspection::Invalid("the file name is not valid UTF-8".into());
    };
    let stub = match stub_for(name) {
        Ok(stub) => stub,
        Err(reason) => return Inspection::Invalid(reason),
    };
    if metadata.len() > max_bytes {
        return too_large(metadata.len(), max_bytes);
    }
    read_file(path, max_bytes, stub)
}

fn too_large(len: u64, max_bytes: u64) -> Inspection {
    Inspection::Invalid(format!(
        "the file has {len} bytes, more than control.max_drop_bytes ({max_bytes})"
    ))
}

fn read_file(path: &Path, max_bytes: u64, stub: Stub) -> Inspection {
    // O_NONBLOCK keeps a FIFO swapped in after the check above from blocking the open.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let mut file = match opened {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Inspection::Skip,
        Err(error) => return Inspection::Invalid(format!("cannot open the file: {error}")),
    };
    let metadata = match file.metadata() {
        Ok(metadata) if metadata.is_file() => metadata,
        Ok(_) => return Inspection::Invalid("not a regular file".into()),
        Err(error) => return Inspection::Invalid(format!("cannot read the file: {error}")),
    };
    let mut bytes = Vec::with_capacity(metadata.len().min(max_bytes) as usize);
    if let Err(error) = (&mut file).take(max_bytes + 1).read_to_end(&mut bytes) {
        return Inspection::Invalid(format!("cannot read the file: {error}"));
    }
    if bytes.len() as u64 > max_bytes {
        return too_large(bytes.len() as u64, max_bytes);
    }
    if bytes.is_empty() {
        return Inspection::Invalid("the file is empty: write the message into it".into());
    }
    match String::from_utf8(bytes) {
        Ok(text) => Inspection::Ready {
            stub,
            text,
            version: FileVersion::of(&metadata),
        },
        Err(error) => Inspection::Invalid(format!("the file is not valid UTF-8: {error}")),
    }
}

/// Files in `dir` that are not temporary, oldest first, with their modification times.
fn list_candidates(dir: &Path) -> std::io::Result<Vec<(PathBuf, SystemTime)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if is_temporary(&entry.file_name()) {
            continue;
        }
        let Ok(metadata) = entry.path().symlink_metadata() else {
            continue;
        };
        if metadata.is_dir() {
            continue;
        }
        let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        found.push((entry.path(), modified));
    }
    found.sort_by_key(|(_, modified)| *modified);
    Ok(found)
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
        // the worker is gone, and then nobody needs the events.
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

/// What happened to one file.
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
                self.rewatch_at.get_or_insert_with(|| Instant::now() + REWATCH_FIRST_DELAY);
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

    async fn finish_sent(&mut self, path: &Path, stub: &Stub, receivers: u64, version: FileVersion) {
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
        assert_eq!(classify(&moved_in, dir), Some(Trigger::File("/d/a.txt".into())));
        assert_eq!(classify(&renamed, dir), Some(Trigger::File("/d/a.txt".into())));
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
        let moved = event(EventKind::Modify(ModifyKind::Name(RenameMode::From)), &["/d"]);
        let file_removed = event(EventKind::Remove(RemoveKind::File), &["/d/a.txt"]);
        assert_eq!(classify(&removed, dir), Some(Trigger::Rewatch));
        assert_eq!(classify(&moved, dir), Some(Trigger::Rewatch));
        assert_eq!(classify(&file_removed, dir), None);
    }

    #[test]
    fn temporary_names() {
        for name in [
            ".hidden",
            ".#wiki.txt",
            "wiki.txt~",
            "wiki.tmp",
            "wiki.TMP",
            ".wiki.txt.swp",
            "wiki.swp",
            "wiki.swo",
            "download.part",
        ] {
            assert!(is_temporary(OsStr::new(name)), "{name}");
        }
        for name in ["wiki.txt", "wiki", "tmp.txt", "a.swpx"] {
            assert!(!is_temporary(OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn stub_is_before_last_dot() {
        assert_eq!(stub_for("wiki.txt").unwrap().as_str(), "wiki");
        assert_eq!(stub_for("wiki.reload.json").unwrap().as_str(), "wiki.reload");
        assert_eq!(stub_for("wiki").unwrap().as_str(), "wiki");
    }

    #[test]
    fn invalid_stub_names_file() {
        let reason = stub_for("a b.txt").unwrap_err();
        assert!(reason.contains("\"a b.txt\""), "{reason}");
        assert!(reason.contains("invalid stub"), "{reason}");
    }

    #[test]
    fn numbered_names() {
        assert_eq!(numbered_name(OsStr::new("wiki.txt"), 2), "wiki.2.txt");
        assert_eq!(numbered_name(OsStr::new("wiki"), 1), "wiki.1");
    }

    #[test]
    fn backoff_doubles_then_caps() {
        let first = Duration::from_secs(1);
        let max = Duration::from_secs(30);
        assert_eq!(backoff(1, first, max), first);
        assert_eq!(backoff(3, first, max), first * 4);
        assert_eq!(backoff(30, first, max), max);
    }

    #[test]
    fn clash_gets_numbered_name() {
        let dir = tempfile::tempdir().unwrap();
        let sent = dir.path().join("sent");
        for round in 0..3 {
            let file = dir.path().join("wiki.txt");
            std::fs::write(&file, format!("round {round}")).unwrap();
            move_into(&file, &sent, false).unwrap();
        }
        for name in ["wiki.txt", "wiki.1.txt", "wiki.2.txt"] {
            assert!(sent.join(name).exists(), "{name}");
        }
        assert_eq!(
            std::fs::read_to_string(sent.join("wiki.2.txt")).unwrap(),
            "round 2"
        );
    }

    #[test]
    fn failed_file_gets_reason() {
        let dir = tempfile::tempdir().unwrap();
        let failed = dir.path().join("failed");
        let file = dir.path().join("a b.txt");
        std::fs::write(&file, "x").unwrap();
        let target = move_to_failed(&file, &failed, "bad name").unwrap();
        assert_eq!(target, failed.join("a b.txt"));
        let reason = std::fs::read_to_string(failed.join("a b.txt.reason")).unwrap();
        assert_eq!(reason, "bad name\n");
    }

    #[test]
    fn inspect_reads_valid_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wiki.txt");
        std::fs::write(&file, "reload\n").unwrap();
        let Inspection::Ready { stub, text, .. } = inspect(dir.path(), &file, 100) else {
            panic!("not ready");
        };
        assert_eq!(stub.as_str(), "wiki");
        assert_eq!(text, "reload\n");
    }

    #[test]
    fn inspect_rejects_large_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wiki.txt");
        std::fs::write(&file, "0123456789").unwrap();
        let inspection = inspect(dir.path(), &file, 9);
        assert!(
            matches!(&inspection, Inspection::Invalid(reason) if reason.contains("max_drop_bytes")),
            "{inspection:?}"
        );
    }

    #[test]
    fn inspect_rejects_non_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wiki.txt");
        std::fs::write(&file, b"ok \xff\xfe").unwrap();
        let inspection = inspect(dir.path(), &file, 100);
        assert!(
            matches!(&inspection, Inspection::Invalid(reason) if reason.contains("UTF-8")),
            "{inspection:?}"
        );
    }

    #[test]
    fn inspect_rejects_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wiki.txt");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            inspect(dir.path(), &file, 100),
            Inspection::Invalid(_)
        ));
    }

    #[test]
    fn inspect_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "token").unwrap();
        let drop = dir.path().join("drop");
        std::fs::create_dir(&drop).unwrap();
        let link = drop.join("wiki.txt");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let inspection = inspect(&drop, &link, 100);
        assert!(
            matches!(&inspection, Inspection::Invalid(reason) if reason.contains("regular file")),
            "{inspection:?}"
        );
    }

    #[test]
    fn inspect_skips_temporary_and_outside() {
        let dir = tempfile::tempdir().unwrap();
        let temporary = dir.path().join("wiki.swp");
        std::fs::write(&temporary, "x").unwrap();
        let sub = dir.path().join("sent");
        std::fs::create_dir(&sub).unwrap();
        let inside_sub = sub.join("wiki.txt");
        std::fs::write(&inside_sub, "x").unwrap();
        assert!(matches!(inspect(dir.path(), &temporary, 100), Inspection::Skip));
        assert!(matches!(inspect(dir.path(), &inside_sub, 100), Inspection::Skip));
        assert!(matches!(inspect(dir.path(), &sub, 100), Inspection::Skip));
        let gone = dir.path().join("gone.txt");
        assert!(matches!(inspect(dir.path(), &gone, 100), Inspection::Skip));
    }
}

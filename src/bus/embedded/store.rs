//! The on-disk store: one redb file under `bus.data_dir`, written by one thread and read by
//! any number of blocking tasks.
//!
//! # Writes
//!
//! Every write is a job sent to the writer thread. The thread takes the jobs that are waiting
//! (up to [`MAX_BATCH`]), runs them in order in one write transaction and commits once, then
//! replies to each caller, so concurrent callers share one `fsync` (group commit). A caller
//! gets its reply only after the commit returned.
//!
//! Each job says how durable it must be ([`Durability`]). A batch with a durable job commits
//! with `fsync` ([`redb::Durability::Immediate`]); a batch of deferred jobs commits without
//! it ([`redb::Durability::None`]), and the thread makes such commits durable at the latest
//! [`FLUSH_INTERVAL`] later with an empty durable commit. Either way a commit is atomic, and
//! the commits that survive a crash are a prefix of those made: after a `kill -9` the store
//! opens at its last durable commit, with everything committed before it.
//!
//! # Housekeeping
//!
//! Between batches the thread removes expired keys ([`SWEEP_INTERVAL`], [`SWEEP_BATCH`]),
//! so their pages are reused and the file does not grow with keys nobody reads again, and
//! flushes deferred commits. When a commit fails (a full or failing disk), the thread closes
//! the database, reports the store unhealthy (callers get [`BusError::Unavailable`] at once)
//! and reopens it with capped backoff; redb repairs the file on that open.
//!
//! # One owner per directory
//!
//! redb locks the file (`F_OFD_SETLK` byte-range locks on Linux), so a second process, or a
//! second open in this process, cannot open it. Within the process, [`Store::open`] hands the
//! store that is already open to the same `bus.instance` again, so that a gateway restarted
//! while callers still hold the previous backend shares its store instead of failing on the
//! lock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::{Notify, oneshot, watch};

use super::tables::{Failure, OpResult, Reader, SCHEMA, SCHEMA_KEY, SCHEMA_VERSION, Tables};
use crate::bus::backend::BusError;

/// The store's file name inside `bus.data_dir`.
pub const FILE_NAME: &str = "almagest.redb";
/// redb's page cache. The services' working set (recent stream entries, today's counters,
/// a few hundred keys) is a few megabytes, and the kernel's page cache holds the rest of the
/// file; redb's own default of 1 GiB would be most of a small home server's memory.
const CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Most jobs in one transaction, so one caller's write waits for at most this many others.
const MAX_BATCH: usize = 256;
/// Longest time a deferred commit stays without `fsync`: what a crash can lose of counters
/// and delivery bookkeeping, the same bound as Redis's `appendfsync everysec`.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often expired keys are removed. Expired keys are invisible at once; the sweep only
/// frees their space, so once a second is plenty.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Most expired keys removed per transaction, so a mass expiry (a day of DNS statistics)
/// does not hold up writes; the sweep continues at once while keys are left.
const SWEEP_BATCH: usize = 1_000;
/// First and longest delay between attempts to reopen a failed store.
const REOPEN_FIRST_DELAY: Duration = Duration::from_millis(100);
const REOPEN_MAX_DELAY: Duration = Duration::from_secs(5);
/// How long an open waits for this process's previous handle of the same store to close the
/// file, and how often it tries again meanwhile.
const RELEASE_WAIT: Duration = Duration::from_secs(5);
const RELEASE_POLL: Duration = Duration::from_millis(20);

/// Milliseconds since the Unix epoch: expiry times, stream ids and delivery times.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Failure to open the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot create the data directory {path}: {source}; set bus.data_dir to a writable directory"
    )]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the embedded store {path} is in use by another process: stop the other almagest, or \
         give this one its own bus.data_dir"
    )]
    InUse { path: PathBuf },
    #[error(
        "the embedded store {path} is already open for instance {instance} in this process: \
         give each instance its own bus.data_dir"
    )]
    InUseByInstance { path: PathBuf, instance: String },
    #[error("cannot open the embedded store {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error(
        "the embedded store {path} has table layout {found}, newer than this almagest reads \
         ({SCHEMA_VERSION}): run a newer almagest, or give this one another bus.data_dir"
    )]
    NewerSchema { path: PathBuf, found: u64 },
    #[error("cannot start the embedded store's writer thread: {0}")]
    Thread(std::io::Error),
}

/// How soon a write must survive a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On disk (`fsync`) before the caller gets its reply.
    Durable,
    /// On disk within [`FLUSH_INTERVAL`], or with the next durable write if that is sooner.
    Deferred,
}

impl Durability {
    fn level(self) -> redb::Durability {
        match self {
            Durability::Durable => redb::Durability::Immediate,
            Durability::Deferred => redb::Durability::None,
        }
    }
}

/// What a job can tell the writer about its batch.
pub struct Batch {
    /// The transaction's time, Unix milliseconds, shared by every job of the batch.
    pub now: u64,
    /// Set by a job that appended a stream entry, to wake blocked readers after the commit.
    pub stream_appended: bool,
    /// Set by a job whose storage access failed: the transaction is abandoned.
    failure: Option<redb::Error>,
}

/// Sends a job's result once its batch is committed, or the commit's error.
type Completion = Box<dyn FnOnce(Result<(), BusError>) + Send>;
type RunJob = Box<dyn FnOnce(&mut Tables<'_>, &mut Batch) -> Completion + Send>;

struct Job {
    durability: Durability,
    run: RunJob,
}

/// What the writer thread receives.
enum Command {
    Job(Job),
    /// Fail as a failed commit does and stay down for at least this long (tests of outages).
    SimulateFailure(Duration),
}

struct Shared {
    path: PathBuf,
    /// The open database; `None` while it failed and is being reopened, or after closing.
    database: RwLock<Option<Arc<Database>>>,
    healthy: watch::Sender<bool>,
    /// Why the store is unhealthy, for the errors callers get meanwhile.
    last_error: Mutex<String>,
    stream_appended: Notify,
}

impl Shared {
    fn database(&self) -> Option<Arc<Database>> {
        self.database
            .read()
            .expect("database slot lock is never poisoned: no code panics while holding it")
            .clone()
    }

    fn set_database(&self, database: Option<Arc<Database>>) {
        *self
            .database
            .write()
            .expect("database slot lock is never poisoned: no code panics while holding it") =
            database;
    }

    fn unavailable(&self) -> BusError {
        let reason = self
            .last_error
            .lock()
            .map(|reason| reason.clone())
            .unwrap_or_default();
        BusError::Unavailable(format!(
            "the embedded store {} is not available: {reason}",
            self.path.display()
        ))
    }
}

/// An open store. Dropping the last reference stops the writer thread after a final durable
/// commit; the file is closed once the reads in progress finish.
pub struct Store {
    shared: Arc<Shared>,
    commands: Option<Sender<Command>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

type Registry = BTreeMap<PathBuf, (String, Weak<Store>)>;

/// Stores open in this process, by data directory, with the instance that opened them.
static OPEN_STORES: Mutex<Registry> = Mutex::new(BTreeMap::new());

impl Store {
    /// Opens the store in `dir` for `instance`, creating the directory (mode 0700) and the
    /// file as needed, or returns the store this instance already has open there.
    pub fn open(dir: &Path, instance: &str) -> Result<Arc<Store>, StoreError> {
        create_private_dir(dir)?;
        let dir = dir.canonicalize().map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut open_stores = OPEN_STORES
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let path = dir.join(FILE_NAME);
        // The last handle of this instance's store may be dropping right now (a gateway that
        // panicked), and its file stays locked until the writer thread has closed it.
        let mut closing_here = false;
        if let Some((owner, store)) = open_stores.get(&dir) {
            if owner != instance && store.strong_count() > 0 {
                return Err(StoreError::InUseByInstance {
                    path,
                    instance: owner.clone(),
                });
            }
            if let Some(store) = store.upgrade() {
                return Ok(store);
            }
            closing_here = owner == instance;
        }
        open_stores.retain(|_, (_, store)| store.strong_count() > 0);
        let deadline = Instant::now() + RELEASE_WAIT;
        let store = loop {
            match Store::start(path.clone()) {
                Err(StoreError::InUse { .. }) if closing_here && Instant::now() < deadline => {
                    std::thread::sleep(RELEASE_POLL);
                }
                result => break Arc::new(result?),
            }
        };
        open_stores.insert(dir, (instance.to_string(), Arc::downgrade(&store)));
        Ok(store)
    }

    fn start(path: PathBuf) -> Result<Store, StoreError> {
        let database = open_database(&path)?;
        let shared = Arc::new(Shared {
            path,
            database: RwLock::new(Some(Arc::new(database))),
            healthy: watch::Sender::new(true),
            last_error: Mutex::new(String::new()),
            stream_appended: Notify::new(),
        });
        let (commands, receiver) = std::sync::mpsc::channel();
        let writer = Writer {
            shared: Arc::clone(&shared),
            commands: receiver,
            dirty_since: None,
            next_sweep: Instant::now(),
            outage: None,
        };
        let writer = std::thread::Builder::new()
            .name("almagest-store".into())
            .spawn(move || writer.run())
            .map_err(StoreError::Thread)?;
        Ok(Store {
            shared,
            commands: Some(commands),
            writer: Some(writer),
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    pub fn is_healthy(&self) -> bool {
        *self.shared.healthy.borrow()
    }

    /// Follows health changes: `true` while the store can be used.
    pub fn health(&self) -> watch::Receiver<bool> {
        self.shared.healthy.subscribe()
    }

    /// Notified after every commit that appended a stream entry. Enable the returned future
    /// before checking for entries, so that no append between the check and the wait is missed.
    pub fn stream_appended(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.stream_appended.notified()
    }

    /// Runs `op` in the writer thread and returns its result once it is committed as
    /// `durability` requires.
    pub async fn write<T, F>(&self, durability: Durability, op: F) -> Result<T, BusError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tables<'_>, &mut Batch) -> OpResult<T> + Send + 'static,
    {
        if !self.is_healthy() {
            return Err(self.shared.unavailable());
        }
        let (reply, result) = oneshot::channel();
        let run: RunJob = Box::new(move |tables, batch| {
            let outcome = match op(tables, batch) {
                Ok(value) => Ok(value),
                Err(Failure::Rejected(error)) => Err(error),
                Err(Failure::Storage(error)) => {
                    let failed = BusError::Unavailable(format!("embedded store failed: {error}"));
                    batch.failure = Some(error);
                    Err(failed)
                }
            };
            Box::new(move |commit: Result<(), BusError>| {
                let _ = reply.send(commit.and(outcome));
            })
        });
        let sent = self
            .commands
            .as_ref()
            .is_some_and(|commands| commands.send(Command::Job(Job { durability, run })).is_ok());
        if !sent {
            return Err(self.shared.unavailable());
        }
        // The writer drops a job's reply without sending it only when the store failed.
        result
            .await
            .unwrap_or_else(|_| Err(self.shared.unavailable()))
    }

    /// Makes the store fail as a failed commit does: callers get [`BusError::Unavailable`],
    /// health turns false, and the store reopens itself after `down_for`. For tests of how
    /// the daemon rides out a storage outage.
    pub fn simulate_failure(&self, down_for: Duration) {
        if let Some(commands) = &self.commands {
            let _ = commands.send(Command::SimulateFailure(down_for));
        }
    }

    /// Runs `op` on a read transaction in the blocking thread pool.
    pub async fn read<T, F>(&self, operation: &'static str, op: F) -> Result<T, BusError>
    where
        T: Send + 'static,
        F: FnOnce(&Reader<'_>) -> OpResult<T> + Send + 'static,
    {
        let database = match self.shared.database() {
            Some(database) if self.is_healthy() => database,
            _ => return Err(self.shared.unavailable()),
        };
        let read = tokio::task::spawn_blocking(move || {
            let txn = database
                .begin_read()
                .map_err(|error| Failure::Storage(error.into()))?;
            let reader = Reader::new(&txn, now_ms())?;
            op(&reader)
        });
        match read.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(Failure::Rejected(error))) => Err(error),
            Ok(Err(Failure::Storage(error))) => Err(BusError::Unavailable(format!(
                "{operation}: reading the embedded store {} failed: {error}",
                self.shared.path.display()
            ))),
            Err(error) => Err(BusError::Command {
                operation,
                message: format!("the read task failed: {error}"),
            }),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the queue ends the writer's loop; it then flushes and closes the database.
        self.commands.take();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the embedded store's writer thread panicked");
        }
    }
}

/// Creates `dir` and its missing parents; directories this creates are readable by the
/// owner only, because the store and the admin socket inside are the bus's data.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Opens (or creates) the database, checks its layout version and creates every table, so
/// that read transactions find them.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    let open_error = |message: String| StoreError::Open {
        path: path.to_path_buf(),
        message,
    };
    let repair_logged = Arc::new(AtomicBool::new(false));
    let logged = Arc::clone(&repair_logged);
    let shown = path.display().to_string();
    let database = redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .set_repair_callback(move |_| {
            if !logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(path = %shown, "repairing the embedded store after an unclean stop");
            }
        })
        .create(path)
        .map_err(|error| match error {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                path: path.to_path_buf(),
            },
            other => open_error(other.to_string()),
        })?;
    if repair_logged.load(Ordering::Relaxed) {
        tracing::info!(path = %path.display(), "embedded store repaired");
    }
    let setup = || -> Result<Option<u64>, redb::Error> {
        let txn = database.begin_write()?;
        let newer = {
            let mut schema = txn.open_table(SCHEMA)?;
            let found = schema.get(SCHEMA_KEY)?.map(|version| version.value());
            match found {
                Some(version) if version > SCHEMA_VERSION => Some(version),
                Some(_) => None,
                None => {
                    schema.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
                    None
                }
            }
        };
        if newer.is_some() {
            txn.abort()?;
            return Ok(newer);
        }
        drop(Tables::open(&txn)?);
        txn.commit()?;
        Ok(None)
    };
    match setup() {
        Ok(None) => Ok(database),
        Ok(Some(found)) => Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
        }),
        Err(error) => Err(open_error(error.to_string())),
    }
}

/// A storage outage: from a failed commit until a commit succeeds again.
struct Outage {
    since: Instant,
    /// Failed commits and reopen attempts in this outage, for the backoff.
    failures: u32,
    /// When to try opening the database again; `None` once it is open.
    reopen_at: Option<Instant>,
    reopened: bool,
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    commands: Receiver<Command>,
    /// When the oldest deferred commit not yet made durable was made.
    dirty_since: Option<Instant>,
    next_sweep: Instant,
    outage: Option<Outage>,
}

impl Writer {
    fn run(mut self) {
        loop {
            let wait = self
                .next_deadline()
                .saturating_duration_since(Instant::now());
            match self.commands.recv_timeout(wait) {
                Ok(Command::Job(job)) => {
                    let mut batch = vec![job];
                    let mut simulated = None;
                    while batch.len() < MAX_BATCH && simulated.is_none() {
                        match self.commands.try_recv() {
                            Ok(Command::Job(job)) => batch.push(job),
                            Ok(Command::SimulateFailure(down_for)) => simulated = Some(down_for),
                            Err(_) => break,
                        }
                    }
                    self.run_batch(batch);
                    if let Some(down_for) = simulated {
                        self.simulate_failure(down_for);
                    }
                }
                Ok(Command::SimulateFailure(down_for)) => self.simulate_failure(down_for),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.housekeeping();
        }
        self.flush();
        self.shared.set_database(None);
        self.shared.healthy.send_replace(false);
        *self
            .shared
            .last_error
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = "the store is closed".into();
    }

    fn next_deadline(&self) -> Instant {
        let mut deadline = self.next_sweep;
        if let Some(since) = self.dirty_since {
            deadline = deadline.min(since + FLUSH_INTERVAL);
        }
        if let Some(reopen_at) = self.outage.as_ref().and_then(|outage| outage.reopen_at) {
            deadline = deadline.min(reopen_at);
        }
        deadline
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        let reopen_at = self.outage.as_ref().and_then(|outage| outage.reopen_at);
        if reopen_at.is_some_and(|at| now >= at) {
            self.try_reopen();
        }
        if self
            .dirty_since
            .is_some_and(|since| now >= since + FLUSH_INTERVAL)
        {
            self.flush();
        }
        if now >= self.next_sweep {
            self.sweep();
        }
    }

    /// Runs a batch of jobs in one transaction and answers them after the commit.
    fn run_batch(&mut self, jobs: Vec<Job>) {
        let Some(database) = self.shared.database() else {
            // Dropping the jobs answers their callers with the store's error.
            return;
        };
        let durability = if jobs.iter().any(|job| job.durability == Durability::Durable) {
            Durability::Durable
        } else {
            Durability::Deferred
        };
        let mut batch = Batch {
            now: now_ms(),
            stream_appended: false,
            failure: None,
        };
        let mut completions = Vec::with_capacity(jobs.len());
        let mut jobs = jobs.into_iter();
        let committed = (|| -> Result<(), redb::Error> {
            let mut txn = database.begin_write()?;
            txn.set_durability(durability.level())?;
            {
                let mut tables = Tables::open(&txn)?;
                for job in jobs.by_ref() {
                    completions.push((job.run)(&mut tables, &mut batch));
                    if let Some(error) = batch.failure.take() {
                        return Err(error);
                    }
                }
            }
            txn.commit()?;
            Ok(())
        })();
        match committed {
            Ok(()) => {
                self.committed(durability);
                for completion in completions {
                    completion(Ok(()));
                }
                if batch.stream_appended {
                    self.shared.stream_appended.notify_waiters();
                }
            }
            Err(error) => {
                self.fail(&error);
                let unavailable = self.shared.unavailable();
                for completion in completions {
                    completion(Err(unavailable.clone()));
                }
            }
        }
    }

    /// Makes deferred commits durable with an empty durable commit.
    fn flush(&mut self) {
        if self.dirty_since.is_none() {
            return;
        }
        let Some(database) = self.shared.database() else {
            return;
        };
        let flushed = (|| -> Result<(), redb::Error> {
            let mut txn = database.begin_write()?;
            txn.set_durability(redb::Durability::Immediate)?;
            txn.commit()?;
            Ok(())
        })();
        match flushed {
            Ok(()) => self.dirty_since = None,
            Err(error) => self.fail(&error),
        }
    }

    fn sweep(&mut self) {
        self.next_sweep = Instant::now() + SWEEP_INTERVAL;
        let Some(database) = self.shared.database() else {
            return;
        };
        let swept = (|| -> Result<usize, redb::Error> {
            let mut txn = database.begin_write()?;
            txn.set_durability(redb::Durability::None)?;
            let removed = {
                let mut tables = Tables::open(&txn)?;
                match tables.sweep_expired(now_ms(), SWEEP_BATCH) {
                    Ok(removed) => removed,
                    Err(Failure::Storage(error)) => return Err(error),
                    // Removing keys rejects nothing; if it ever did, stop this sweep.
                    Err(Failure::Rejected(error)) => {
                        return Err(redb::Error::Corrupted(error.to_string()));
                    }
                }
            };
            if removed == 0 {
                txn.abort()?;
            } else {
                txn.commit()?;
            }
            Ok(removed)
        })();
        match swept {
            Ok(0) => {}
            Ok(removed) => {
                self.committed(Durability::Deferred);
                tracing::debug!(removed, "removed expired keys");
                if removed >= SWEEP_BATCH {
                    self.next_sweep = Instant::now();
                }
            }
            Err(error) => self.fail(&error),
        }
    }

    fn committed(&mut self, durability: Durability) {
        match durability {
            Durability::Durable => self.dirty_since = None,
            Durability::Deferred => {
                self.dirty_since.get_or_insert_with(Instant::now);
            }
        }
        if let Some(outage) = self.outage.take_if(|outage| outage.reopen_at.is_none()) {
            tracing::info!(
                path = %self.shared.path.display(),
                failures = outage.failures,
                outage_ms = outage.since.elapsed().as_millis() as u64,
                "embedded store writes work again"
            );
        }
    }

    /// Closes a database whose commit failed and schedules reopening it, after a delay that
    /// grows while commits keep failing (a full disk).
    fn fail(&mut self, error: &redb::Error) {
        self.close_for_reopen(&error.to_string(), Duration::ZERO);
    }

    fn simulate_failure(&mut self, down_for: Duration) {
        self.close_for_reopen("simulated storage failure", down_for);
    }

    fn close_for_reopen(&mut self, reason: &str, at_least: Duration) {
        *self
            .shared
            .last_error
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = reason.to_string();
        self.shared.healthy.send_replace(false);
        self.shared.set_database(None);
        self.dirty_since = None;
        let now = Instant::now();
        let outage = self.outage.get_or_insert_with(|| {
            tracing::error!(
                path = %self.shared.path.display(),
                error = %reason,
                "embedded store write failed; reopening the store"
            );
            Outage {
                since: now,
                failures: 0,
                reopen_at: None,
                reopened: false,
            }
        });
        outage.failures += 1;
        outage.reopen_at = Some(now + reopen_delay(outage.failures).max(at_least));
    }

    fn try_reopen(&mut self) {
        let Some(outage) = &mut self.outage else {
            return;
        };
        match open_database(&self.shared.path) {
            Ok(database) => {
                if !outage.reopened {
                    tracing::info!(
                        path = %self.shared.path.display(),
                        outage_ms = outage.since.elapsed().as_millis() as u64,
                        "embedded store reopened"
                    );
                }
                outage.reopened = true;
                outage.reopen_at = None;
                self.shared.set_database(Some(Arc::new(database)));
                self.shared.healthy.send_replace(true);
            }
            Err(error) => {
                outage.failures += 1;
                outage.reopen_at = Some(Instant::now() + reopen_delay(outage.failures));
                tracing::debug!(error = %error, "cannot reopen the embedded store yet");
            }
        }
    }
}

/// Delay before reopening after the `failures`-th failure of an outage: none after the
/// first, then doubling up to [`REOPEN_MAX_DELAY`].
fn reopen_delay(failures: u32) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let doublings = (failures - 2).min(16);
    (REOPEN_FIRST_DELAY * 2u32.pow(doublings)).min(REOPEN_MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Number of keys in the store, expired or not.
    fn count_keys(store: &Store) -> u64 {
        let database = store.shared.database().expect("store is open");
        let txn = database.begin_read().expect("read transaction");
        let keys = txn
            .open_table(super::super::tables::KEYS)
            .expect("keys table");
        redb::ReadableTableMetadata::len(&keys).expect("count keys")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_keys_swept_and_space_reused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), "sweep-test").expect("open");
        let value = "x".repeat(512);
        let mut sizes = Vec::new();
        for round in 0..4 {
            let value = value.clone();
            store
                .write(Durability::Durable, move |tables, batch| {
                    for index in 0..1_000 {
                        let key = format!("round{round}:key{index}");
                        tables.set(&key, &value, Some(50), batch.now)?;
                    }
                    Ok(())
                })
                .await
                .expect("write keys");
            let deadline = Instant::now() + Duration::from_secs(20);
            while count_keys(&store) > 0 {
                assert!(Instant::now() < deadline, "expired keys were not swept");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // The sweep's commit is deferred; the next flush makes its freed pages reusable.
            tokio::time::sleep(FLUSH_INTERVAL * 2).await;
            let size = std::fs::metadata(store.path()).expect("store file").len();
            sizes.push(size);
        }
        let settled = sizes[1];
        assert!(
            sizes[2..].iter().all(|size| *size <= settled),
            "file kept growing: {sizes:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_instance_shares_open_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = Store::open(dir.path(), "share-test").expect("open");
        let second = Store::open(dir.path(), "share-test").expect("open again");
        assert!(Arc::ptr_eq(&first, &second));
        drop((first, second));
        let reopened = Store::open(dir.path(), "other-instance");
        assert!(reopened.is_ok(), "a closed store can be opened by anyone");
    }

    #[test]
    fn reopen_delay_grows_then_caps() {
        assert_eq!(reopen_delay(1), Duration::ZERO);
        assert_eq!(reopen_delay(2), REOPEN_FIRST_DELAY);
        assert_eq!(reopen_delay(3), REOPEN_FIRST_DELAY * 2);
        assert_eq!(reopen_delay(40), REOPEN_MAX_DELAY);
    }
}

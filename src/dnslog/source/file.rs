//! A file followed like `tail -F`: through rename rotation (logrotate's `create`, kubelet),
//! copytruncate, deletion, and a file that does not exist yet.
//!
//! A file is identified by device and inode plus a fingerprint of its first bytes, and read
//! up to an offset that always ends a complete line. That [`FilePosition`] is what the
//! service stores, so a restarted daemon continues where it stopped. The follower polls
//! instead of using inotify: it works the same on overlay, network and host-path volumes,
//! and a quarter second is well below what counts or presence need.
//!
//! What survives a rotation:
//!
//! - Rename: the old file is read to its end before the new one is opened, and kept open
//!   for [`RETIRED_GRACE`] to catch lines a writer adds before it reopens. Those late lines
//!   are not covered by the stored position.
//! - Copytruncate: the follower notices that the file is shorter, or that its first bytes
//!   changed. It then reads what it had not read yet from the copy, which is a file in the
//!   same directory whose name starts with this one's and whose first bytes match. Lines
//!   written between the copy and the truncation are lost; that is inherent to
//!   copytruncate.

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Batch, Checkpoint, SourceId, fingerprint, send};
use crate::dnslog::parse::SkipKind;
use crate::dnslog::wrapper::{Assembler, Line, MAX_LINE_BYTES};

/// Bytes read per `read` call; large enough that a busy log costs few system calls.
const READ_CHUNK: usize = 256 * 1024;

/// Bytes read per poll before the lines go out as one batch, which bounds a batch's memory
/// (about 10,000 query lines) while catching up on a large file.
const BATCH_BYTES: usize = 2 * 1024 * 1024;

/// Length of the fingerprinted head. 1 KiB covers the first several lines, which differ
/// between two log files because they carry times and client ports.
const HEAD_BYTES: u64 = 1024;

/// How long a renamed file stays open for late writes. A writer that reopens its log on a
/// signal (logrotate's `postrotate`) does so within a second or two.
pub const RETIRED_GRACE: Duration = Duration::from_secs(5);

/// Default time between polls of an idle file.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The identity of a file and how far it has been read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilePosition {
    pub device: u64,
    pub inode: u64,
    /// Bytes read; always the end of a complete line.
    pub offset: u64,
    pub head: Head,
}

/// A fingerprint of a file's first bytes, to tell a file from a truncated and rewritten
/// one with the same inode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub len: u64,
    pub hash: u64,
}

/// The point to start reading a file from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileStart {
    /// Continue from a stored position.
    Resume(FilePosition),
    /// A file never seen before: only lines written from now on.
    End,
    /// Everything in the file.
    Beginning,
}

/// A file to follow.
#[derive(Clone, Debug)]
pub struct FileSource {
    pub path: PathBuf,
    pub start: FileStart,
    pub poll_interval: Duration,
}

/// Follows a file until the receiver is dropped, sending batches of lines.
pub async fn follow_file(id: SourceId, source: FileSource, tx: mpsc::Sender<(SourceId, Batch)>) {
    let path = source.path.display().to_string();
    let mut follower = Follower::new(source.path, source.start);
    let mut was_caught_up = false;
    let mut failing = false;
    loop {
        let polled = tokio::task::spawn_blocking(move || {
            let result = follower.poll(Instant::now());
            (follower, result)
        })
        .await;
        let Ok((returned, result)) = polled else {
            warn!(path, "file follower task failed");
            return;
        };
        follower = returned;

        let caught_up = match result {
            Ok(batch) => {
                if failing {
                    info!(path, "reading the query log again");
                    failing = false;
                }
                let caught_up = batch.caught_up;
                let worth_sending = !batch.lines.is_empty()
                    || batch.skipped.total() > 0
                    || (caught_up && !was_caught_up);
                if worth_sending && !send(&tx, id, batch).await {
                    return;
                }
                caught_up
            }
            Err(error) => {
                if !failing {
                    warn!(path, error = %error, "cannot read the query log; retrying");
                    failing = true;
                }
                true
            }
        };
        was_caught_up = caught_up;
        if caught_up {
            tokio::time::sleep(source.poll_interval).await;
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// The synchronous core of [`follow_file`]: each [`poll`](Follower::poll) reads what is
/// new and checks for rotation.
pub struct Follower {
    path: PathBuf,
    /// How to start; used when the file is first opened.
    start: Option<FileStart>,
    current: Option<Tail>,
    /// The file that was at `path` before a rename, read for late writes until the instant.
    retired: Option<(Tail, Instant)>,
    /// Read buffer, kept between polls.
    buffer: Vec<u8>,
}

/// An open file and the reading state within it.
struct Tail {
    file: File,
    device: u64,
    inode: u64,
    /// Bytes consumed from the file.
    read_offset: u64,
    /// Bytes after the last newline read.
    partial: Vec<u8>,
    /// Dropping the rest of an over-long line, up to its newline.
    discarding: bool,
    /// The offset after the last line that left the assembler without a pending fragment.
    checkpoint_offset: u64,
    head: Head,
    assembler: Assembler,
}

impl Follower {
    pub fn new(path: PathBuf, start: FileStart) -> Self {
        Self {
            path,
            start: Some(start),
            current: None,
            retired: None,
            buffer: vec![0; READ_CHUNK],
        }
    }

    /// Reads what was written since the last poll and follows a rotation.
    pub fn poll(&mut self, now: Instant) -> io::Result<Batch> {
        let mut batch = Batch::default();
        let mut budget = BATCH_BYTES;

        // Opening may find the renamed file of a stored position, which is read first.
        if self.current.is_none() {
            self.open_initial(&mut batch)?;
        }
        if let Some((retired, until)) = &mut self.retired {
            let at_end = retired.read(&mut self.buffer, &mut budget, &mut batch)?;
            if at_end && now >= *until {
                retired.finish(&mut batch);
                self.retired = None;
            }
        }
        let Some(current) = &mut self.current else {
            batch.caught_up = true;
            return Ok(batch);
        };
        // Checked before reading, because after a copytruncate the file may have grown past
        // the old offset again, and reading on from there would return the middle of
        // unrelated lines.
        if current.was_truncated()? {
            read_rest_of_copy(&self.path, current.inode, current.position(), &mut batch)?;
            current.restart()?;
        }
        let at_end = current.read(&mut self.buffer, &mut budget, &mut batch)?;
        if at_end {
            batch.caught_up = !self.follow_rotation(now, &mut batch)?;
        }
        batch.checkpoint = self
            .current
            .as_ref()
            .map(|current| Checkpoint::File(current.position()));
        Ok(batch)
    }

    /// Opens `path` for the first time, honouring the start rule; does nothing while the
    /// file does not exist.
    fn open_initial(&mut self, batch: &mut Batch) -> io::Result<()> {
        let Some((file, meta)) = open_if_exists(&self.path)? else {
            // A file created after the daemon started holds only new lines.
            if self.start == Some(FileStart::End) {
                self.start = Some(FileStart::Beginning);
            }
            return Ok(());
        };
        let start = self.start.take().unwrap_or(FileStart::Beginning);
        let mut tail = Tail::open(file, &meta)?;
        match start {
            FileStart::Beginning => {}
            FileStart::End => tail.skip_to_end(meta.len())?,
            FileStart::Resume(position) => self.resume(&mut tail, &meta, position, batch)?,
        }
        self.current = Some(tail);
        Ok(())
    }

    /// Continues from a stored position: in the same file if it is still there and intact,
    /// else in the renamed or copied file it became, before starting the new file from 0.
    fn resume(
        &mut self,
        tail: &mut Tail,
        meta: &Metadata,
        position: FilePosition,
        batch: &mut Batch,
    ) -> io::Result<()> {
        let same_inode = tail.device == position.device && tail.inode == position.inode;
        if same_inode && meta.len() >= position.offset && head_matches(&tail.file, position.head)? {
            return tail.seek_to(position.offset);
        }
        if same_inode {
            // Truncated while the daemon was down: the unread rest may be in a copy.
            warn!(path = %self.path.display(), "query log was truncated while stopped");
            read_rest_of_copy(&self.path, tail.inode, position, batch)?;
            return Ok(());
        }
        match find_rotated(&self.path, position)? {
            Some(mut old) => {
                info!(
                    path = %self.path.display(),
                    "query log was rotated while stopped; reading the rest of the old file"
                );
                old.seek_to(position.offset)?;
                self.retired = Some((old, Instant::now() + RETIRED_GRACE));
            }
            None => warn!(
                path = %self.path.display(),
                "query log was replaced while stopped and the old file is gone; lines may be lost"
            ),
        }
        Ok(())
    }

    /// Checks `path` after the current file reached its end. Returns `true` when it switched
    /// or restarted the file, because there may then be more to read at once.
    fn follow_rotation(&mut self, now: Instant, batch: &mut Batch) -> io::Result<bool> {
        let Some(current) = &mut self.current else {
            return Ok(false);
        };
        let meta = match fs::metadata(&self.path) {
            Ok(meta) => meta,
            // Deleted or renamed with no successor yet: keep reading the open file.
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(error),
        };
        if meta.dev() != current.device || meta.ino() != current.inode {
            let Some((file, meta)) = open_if_exists(&self.path)? else {
                return Ok(false);
            };
            let next = Tail::open(file, &meta)?;
            let old = std::mem::replace(current, next);
            if let Some((mut older, _)) = self.retired.take() {
                older.finish(batch);
            }
            self.retired = Some((old, now + RETIRED_GRACE));
            return Ok(true);
        }
        if current.was_truncated()? {
            read_rest_of_copy(&self.path, current.inode, current.position(), batch)?;
            current.restart()?;
            return Ok(true);
        }
        Ok(false)
    }
}

impl Tail {
    fn open(file: File, meta: &Metadata) -> io::Result<Self> {
        let head = compute_head(&file, meta.len())?;
        Ok(Self {
            file,
            device: meta.dev(),
            inode: meta.ino(),
            read_offset: 0,
            partial: Vec::new(),
            discarding: false,
            checkpoint_offset: 0,
            head,
            assembler: Assembler::new(),
        })
    }

    fn position(&self) -> FilePosition {
        FilePosition {
            device: self.device,
            inode: self.inode,
            offset: self.checkpoint_offset,
            head: self.head,
        }
    }

    fn seek_to(&mut self, offset: u64) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(offset))?;
        self.read_offset = offset;
        self.checkpoint_offset = offset;
        Ok(())
    }

    /// Starts at the end, skipping the rest of a line being written at that moment.
    fn skip_to_end(&mut self, len: u64) -> io::Result<()> {
        self.seek_to(len)?;
        if len > 0 {
            let mut last = [0u8; 1];
            self.file.read_exact_at(&mut last, len - 1)?;
            self.discarding = last[0] != b'\n';
        }
        Ok(())
    }

    /// Starts over at offset 0 after a truncation.
    fn restart(&mut self) -> io::Result<()> {
        self.seek_to(0)?;
        self.partial.clear();
        self.discarding = false;
        self.assembler = Assembler::new();
        self.head = compute_head(&self.file, self.file.metadata()?.len())?;
        Ok(())
    }

    /// Reads complete lines into the batch until the end of the file or until `budget`
    /// bytes were read; returns whether it reached the end.
    fn read(
        &mut self,
        buffer: &mut [u8],
        budget: &mut usize,
        batch: &mut Batch,
    ) -> io::Result<bool> {
        loop {
            if *budget == 0 {
                return Ok(false);
            }
            let want = buffer.len().min(*budget);
            let read = match self.file.read(&mut buffer[..want]) {
                Ok(0) => return Ok(true),
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            *budget -= read;
            let chunk_start = self.read_offset;
            self.read_offset += read as u64;
            self.split_lines(&buffer[..read], chunk_start, batch);
        }
    }

    fn split_lines(&mut self, chunk: &[u8], chunk_start: u64, batch: &mut Batch) {
        let mut line_start = 0;
        while let Some(newline) = chunk[line_start..].iter().position(|&b| b == b'\n') {
            let line_end = line_start + newline;
            let end_offset = chunk_start + line_end as u64 + 1;
            if self.discarding {
                self.discarding = false;
                self.partial.clear();
            } else if self.partial.is_empty() {
                self.push_line(&chunk[line_start..line_end], batch);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&chunk[line_start..line_end]);
                self.push_line(&line, batch);
            }
            if self.assembler.is_idle() {
                self.checkpoint_offset = end_offset;
            }
            line_start = line_end + 1;
        }

        let rest = &chunk[line_start..];
        if self.discarding {
            return;
        }
        if self.partial.len() + rest.len() > MAX_LINE_BYTES {
            batch.skipped.add(SkipKind::Oversized);
            self.partial.clear();
            self.discarding = true;
            return;
        }
        self.partial.extend_from_slice(rest);
    }

    fn push_line(&mut self, bytes: &[u8], batch: &mut Batch) {
        let text = String::from_utf8_lossy(bytes);
        push_assembled(self.assembler.push(&text), batch);
    }

    /// Hands out what is left when the file is given up: an unterminated last line and any
    /// fragments still waiting.
    fn finish(&mut self, batch: &mut Batch) {
        if !self.partial.is_empty() && !self.discarding {
            let partial = std::mem::take(&mut self.partial);
            self.push_line(&partial, batch);
        }
        for result in self.assembler.finish() {
            push_assembled(Some(result), batch);
        }
    }

    /// Checks whether the file is now shorter than what was read, or starts with other bytes.
    fn was_truncated(&mut self) -> io::Result<bool> {
        let len = self.file.metadata()?.len();
        Ok(len < self.read_offset || !self.check_head()?)
    }

    /// Compares the head fingerprint with the file as it is now, and extends the
    /// fingerprint while the file is shorter than [`HEAD_BYTES`]. Returns `false` when the
    /// first bytes changed.
    fn check_head(&mut self) -> io::Result<bool> {
        if !head_matches(&self.file, self.head)? {
            return Ok(false);
        }
        if self.head.len < HEAD_BYTES {
            self.head = compute_head(&self.file, self.file.metadata()?.len())?;
        }
        Ok(true)
    }
}

fn push_assembled(assembled: Option<Result<Line, SkipKind>>, batch: &mut Batch) {
    match assembled {
        Some(Ok(line)) => batch.lines.push(line),
        Some(Err(kind)) => batch.skipped.add(kind),
        None => {}
    }
}

fn open_if_exists(path: &Path) -> io::Result<Option<(File, Metadata)>> {
    match File::open(path) {
        Ok(file) => {
            let meta = file.metadata()?;
            Ok(Some((file, meta)))
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

fn compute_head(file: &File, len: u64) -> io::Result<Head> {
    let len = len.min(HEAD_BYTES);
    let mut bytes = vec![0u8; len as usize];
    let read = read_fully_at(file, &mut bytes, 0)?;
    Ok(Head {
        len: read as u64,
        hash: fingerprint(&bytes[..read]),
    })
}

fn head_matches(file: &File, head: Head) -> io::Result<bool> {
    let mut bytes = vec![0u8; head.len.min(HEAD_BYTES) as usize];
    let read = read_fully_at(file, &mut bytes, 0)?;
    Ok(read == bytes.len() && fingerprint(&bytes) == head.hash)
}

/// Reads at `offset` until `buffer` is full or the file ends; returns the bytes read.
fn read_fully_at(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read_at(&mut buffer[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// Lists the files next to `path` whose names start with its name (`coredns.log.1`,
/// `0.log.20260821-091403`), newest first.
fn rotation_candidates(path: &Path) -> io::Result<Vec<(PathBuf, Metadata)>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let name = name.to_string_lossy();
    let mut candidates = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let entry_name = entry.file_name();
        let entry_name = entry_name.to_string_lossy();
        if entry_name == name || !entry_name.starts_with(name.as_ref()) {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.is_file() {
            candidates.push((entry.path(), meta));
        }
    }
    candidates.sort_by_key(|(_, meta)| std::cmp::Reverse(meta.mtime()));
    Ok(candidates)
}

/// Finds the file that had `position`'s inode, renamed next to `path`.
fn find_rotated(path: &Path, position: FilePosition) -> io::Result<Option<Tail>> {
    for (candidate, meta) in rotation_candidates(path)? {
        if meta.dev() != position.device || meta.ino() != position.inode {
            continue;
        }
        let file = File::open(&candidate)?;
        if meta.len() >= position.offset && head_matches(&file, position.head)? {
            return Ok(Some(Tail::open(file, &meta)?));
        }
    }
    Ok(None)
}

/// After a copytruncate, reads what had not been read from the copy: the complete lines
/// after `position.offset`, from the newest file next to `path` whose first bytes match.
fn read_rest_of_copy(
    path: &Path,
    truncated_inode: u64,
    position: FilePosition,
    batch: &mut Batch,
) -> io::Result<()> {
    for (candidate, meta) in rotation_candidates(path)? {
        if meta.ino() == truncated_inode || meta.len() < position.offset {
            continue;
        }
        let file = File::open(&candidate)?;
        if !head_matches(&file, position.head)? {
            continue;
        }
        let mut tail = Tail::open(file, &meta)?;
        tail.seek_to(position.offset)?;
        let mut buffer = vec![0; READ_CHUNK];
        let mut budget = usize::MAX;
        tail.read(&mut buffer, &mut budget, batch)?;
        if !tail.partial.is_empty() {
            // The copy ends inside a line whose rest went to the truncated file.
            batch.skipped.add(SkipKind::Truncated);
        }
        for result in tail.assembler.finish() {
            push_assembled(Some(result), batch);
        }
        return Ok(());
    }
    warn!(
        path = %path.display(),
        "query log was truncated but no copy with its first bytes was found; lines may be lost"
    );
    Ok(())
}

impl FilePosition {
    /// Returns the fields stored in Redis.
    pub fn to_fields(&self) -> [(&'static str, String); 5] {
        [
            ("device", self.device.to_string()),
            ("inode", self.inode.to_string()),
            ("offset", self.offset.to_string()),
            ("head_len", self.head.len.to_string()),
            ("head_hash", format!("{:016x}", self.head.hash)),
        ]
    }

    /// Reads the fields written by [`to_fields`](Self::to_fields); `None` when any is
    /// missing or invalid.
    pub fn from_fields<'a>(mut get: impl FnMut(&str) -> Option<&'a str>) -> Option<Self> {
        Some(Self {
            device: get("device")?.parse().ok()?,
            inode: get("inode")?.parse().ok()?,
            offset: get("offset")?.parse().ok()?,
            head: Head {
                len: get("head_len")?.parse().ok()?,
                hash: u64::from_str_radix(get("head_hash")?, 16).ok()?,
            },
        })
    }
}

#[cfg(test)]
mod tests;

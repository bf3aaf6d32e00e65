use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tempfile::TempDir;

use super::*;

fn append(path: &Path, text: &str) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

fn texts(batch: &Batch) -> Vec<String> {
    batch.lines.iter().map(|line| line.text.clone()).collect()
}

fn poll_texts(follower: &mut Follower) -> Vec<String> {
    texts(&follower.poll(Instant::now()).unwrap())
}

/// Polls a few times, which is enough to follow one rotation, and returns the lines read.
fn poll_texts_repeatedly(follower: &mut Follower) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.extend(poll_texts(follower));
    }
    seen
}

/// Reads the whole file once and returns the position a stopping daemon would store.
fn position_after_reading(path: &Path) -> FilePosition {
    let mut follower = Follower::new(path.to_owned(), FileStart::Beginning);
    position(&follower.poll(Instant::now()).unwrap())
}

fn truncate(path: &Path) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(0)
        .unwrap();
}

fn position(batch: &Batch) -> FilePosition {
    match batch.checkpoint {
        Some(Checkpoint::File(position)) => position,
        ref other => panic!("expected a file checkpoint, got {other:?}"),
    }
}

struct Fixture {
    _dir: TempDir,
    path: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coredns.log");
    Fixture { _dir: dir, path }
}

#[test]
fn follower_reads_appended_lines() {
    let f = fixture();
    append(&f.path, "a\nb\n");
    let mut follower = Follower::new(f.path.clone(), FileStart::Beginning);
    assert_eq!(poll_texts(&mut follower), ["a", "b"]);
    append(&f.path, "c\n");
    assert_eq!(poll_texts(&mut follower), ["c"]);
    assert!(poll_texts(&mut follower).is_empty());
}

#[test]
fn follower_waits_for_line_end() {
    let f = fixture();
    append(&f.path, "a\npart");
    let mut follower = Follower::new(f.path.clone(), FileStart::Beginning);
    let batch = follower.poll(Instant::now()).unwrap();
    assert_eq!(texts(&batch), ["a"]);
    assert_eq!(position(&batch).offset, 2);
    append(&f.path, "ial\n");
    assert_eq!(poll_texts(&mut follower), ["partial"]);
}

#[test]
fn follower_start_at_end_skips_old_lines() {
    let f = fixture();
    append(&f.path, "old\nhalf-writ");
    let mut follower = Follower::new(f.path.clone(), FileStart::End);
    assert!(poll_texts(&mut follower).is_empty());
    append(&f.path, "ten\nnew\n");
    assert_eq!(poll_texts(&mut follower), ["new"]);
}

#[test]
fn follower_waits_for_missing_file() {
    let f = fixture();
    let mut follower = Follower::new(f.path.clone(), FileStart::End);
    let batch = follower.poll(Instant::now()).unwrap();
    assert!(batch.lines.is_empty());
    assert!(batch.caught_up);
    assert_eq!(batch.checkpoint, None);
    append(&f.path, "first\n");
    assert_eq!(poll_texts(&mut follower), ["first"]);
}

#[test]
fn follower_follows_rename_rotation() {
    let f = fixture();
    append(&f.path, "a\n");
    let mut follower = Follower::new(f.path.clone(), FileStart::Beginning);
    assert_eq!(poll_texts(&mut follower), ["a"]);

    let rotated = f.path.with_extension("log.1");
    let mut old = OpenOptions::new().append(true).open(&f.path).unwrap();
    fs::rename(&f.path, &rotated).unwrap();
    old.write_all(b"b\n").unwrap();
    append(&f.path, "c\n");

    let seen = poll_texts_repeatedly(&mut follower);
    assert_eq!(seen, ["b", "c"]);

    // A writer that has not reopened its file yet still reaches the reader.
    old.write_all(b"late\n").unwrap();
    assert_eq!(poll_texts(&mut follower), ["late"]);
    assert!(follower.retired.is_some());
    let after_grace = Instant::now() + RETIRED_GRACE;
    follower.poll(after_grace).unwrap();
    assert!(follower.retired.is_none());
}

#[test]
fn follower_follows_copytruncate() {
    let f = fixture();
    append(&f.path, "1\n2\n");
    let mut follower = Follower::new(f.path.clone(), FileStart::Beginning);
    assert_eq!(poll_texts(&mut follower), ["1", "2"]);

    // Lines written after the last poll and before the copy come from the copy.
    append(&f.path, "3\n4\n");
    fs::copy(&f.path, f.path.with_extension("log.1")).unwrap();
    truncate(&f.path);
    append(&f.path, "5\n");

    let seen = poll_texts_repeatedly(&mut follower);
    assert_eq!(seen, ["3", "4", "5"]);
}

#[test]
fn follower_detects_truncation_after_regrowth() {
    let f = fixture();
    append(&f.path, "first line\n");
    let mut follower = Follower::new(f.path.clone(), FileStart::Beginning);
    assert_eq!(poll_texts(&mut follower), ["first line"]);

    fs::copy(&f.path, f.path.with_extension("log.1")).unwrap();
    truncate(&f.path);
    // Longer than what was read before, so only the changed first bytes tell.
    append(&f.path, "another line\nand more\n");

    let seen = poll_texts_repeatedly(&mut follower);
    assert_eq!(seen, ["another line", "and more"]);
}

#[test]
fn follower_resumes_from_position() {
    let f = fixture();
    append(&f.path, "a\nb\n");
    let stored = position_after_reading(&f.path);
    append(&f.path, "c\n");

    let mut second = Follower::new(f.path.clone(), FileStart::Resume(stored));
    assert_eq!(poll_texts(&mut second), ["c"]);
}

#[test]
fn follower_resumes_into_renamed_file() {
    let f = fixture();
    append(&f.path, "a\n");
    let stored = position_after_reading(&f.path);

    // While stopped: more lines, then a rename rotation and a new file.
    append(&f.path, "b\n");
    fs::rename(&f.path, f.path.with_extension("log.1")).unwrap();
    append(&f.path, "c\n");

    let mut second = Follower::new(f.path.clone(), FileStart::Resume(stored));
    let seen = poll_texts_repeatedly(&mut second);
    assert_eq!(seen, ["b", "c"]);
}

#[test]
fn follower_resumes_after_copytruncate() {
    let f = fixture();
    append(&f.path, "a\n");
    let stored = position_after_reading(&f.path);

    append(&f.path, "b\n");
    fs::copy(&f.path, f.path.with_extension("log.1")).unwrap();
    truncate(&f.path);
    append(&f.path, "c\n");

    let mut second = Follower::new(f.path.clone(), FileStart::Resume(stored));
    let seen = poll_texts_repeatedly(&mut second);
    assert_eq!(seen, ["b", "c"]);
}

#[test]
fn follower_resumes_new_file_when_old_gone() {
    let f = fixture();
    append(&f.path, "a\n");
    let stored = position_after_reading(&f.path);

    fs::remove_file(&f.path).unwrap();
    append(&f.path, "fresh\n");
    let mut second = Follower::new(f.path.clone(), FileStart::Resume(stored));
    assert_eq!(poll_texts(&mut second), ["fresh"]);
}

#[test]
fn follower_checkpoint_stays_before_fragments() {
    let f = fixture();
    append(&f.path, "2026-08-21T09:14:03Z stdout F whole\n");
    let mut follower = Follower::new(f.path.clone(), FileStart::Beginning);
    let before = position(&follower.poll(Instant::now()).unwrap()).offset;

    append(&f.path, "2026-08-21T09:14:03Z stdout P frag\n");
    let batch = follower.poll(Instant::now()).unwrap();
    assert!(batch.lines.is_empty());
    assert_eq!(position(&batch).offset, before);

    append(&f.path, "2026-08-21T09:14:03Z stdout F ment\n");
    let batch = follower.poll(Instant::now()).unwrap();
    assert_eq!(texts(&batch), ["fragment"]);
    assert_eq!(
        position(&batch).offset,
        fs::metadata(&f.path).unwrap().len()
    );
}

#[test]
fn follower_skips_oversized_line() {
    let f = fixture();
    let long = "x".repeat(MAX_LINE_BYTES + 1);
    append(&f.path, &format!("a\n{long}\nb\n"));
    let mut follower = Follower::new(f.path.clone(), FileStart::Beginning);
    let batch = follower.poll(Instant::now()).unwrap();
    assert_eq!(texts(&batch), ["a", "b"]);
    assert_eq!(batch.skipped.get(SkipKind::Oversized), 1);
}

#[test]
fn file_position_fields_round_trip() {
    let position = FilePosition {
        device: 2049,
        inode: 1_234_567,
        offset: 8_000_000_000,
        head: Head {
            len: 1024,
            hash: 0xdead_beef_0123_4567,
        },
    };
    let fields = position.to_fields();
    let read = FilePosition::from_fields(|name| {
        fields
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    });
    assert_eq!(read, Some(position));
}

/// How a writer rotates the file it writes.
#[derive(Clone, Copy)]
enum Rotation {
    /// Rename, then reopen the path (a writer that reopens on a signal).
    Rename,
    /// Copy to a new file, then truncate in place; the writer appends throughout.
    CopyTruncate,
}

/// Writes numbered lines continuously, rotating every `per_file` lines, and returns the
/// total written. Rotations are at least 50 ms apart, which the follower's 20 ms poll in
/// these tests always notices before the next one.
fn write_rotating(path: PathBuf, rotation: Rotation, total: usize, per_file: usize) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    for n in 0..total {
        writeln!(file, "line {n:06}").unwrap();
        if n % 50 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        if n > 0 && n % per_file == 0 {
            let copy = path.with_extension(format!("log.{n}"));
            match rotation {
                Rotation::Rename => {
                    fs::rename(&path, &copy).unwrap();
                    let mut next = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .unwrap();
                    writeln!(next, "new {n:06}").unwrap();
                    // A late line into the renamed file, after the follower has had time to
                    // switch to the new one.
                    std::thread::sleep(Duration::from_millis(30));
                    writeln!(file, "late {n:06}").unwrap();
                    file = next;
                }
                Rotation::CopyTruncate => {
                    fs::copy(&path, &copy).unwrap();
                    file.set_len(0).unwrap();
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Follows a file while another thread writes and rotates it; returns every line read,
/// once the last line has arrived.
async fn follow_while_writing(rotation: Rotation) -> (Vec<String>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coredns.log");
    let total = 6_000;
    let late_lines = match rotation {
        Rotation::Rename => 2 * (1..total).filter(|n| n % 1000 == 0).count(),
        Rotation::CopyTruncate => 0,
    };
    let (tx, mut rx) = mpsc::channel(8);
    let source = FileSource {
        path: path.clone(),
        start: FileStart::Beginning,
        poll_interval: Duration::from_millis(20),
    };
    let follow = AbortOnDrop(tokio::spawn(follow_file(SourceId(0), source, tx)));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let done = done.clone();
        std::thread::spawn(move || {
            write_rotating(path, rotation, total, 1000);
            done.store(true, Ordering::SeqCst);
        })
    };

    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let expected = total + late_lines;
    while lines.len() < expected && Instant::now() < deadline {
        if let Ok(Some((_, batch))) =
            tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        {
            lines.extend(batch.lines.into_iter().map(|line| line.text));
        }
    }
    writer.join().unwrap();
    drop(follow);
    (lines, expected)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn assert_each_once(lines: &[String], expected: usize) {
    let unique: HashSet<&String> = lines.iter().collect();
    assert_eq!(unique.len(), lines.len(), "a line was read twice");
    assert_eq!(lines.len(), expected, "lines were lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_rotation_under_writing() {
    let (lines, expected) = follow_while_writing(Rotation::Rename).await;
    assert_each_once(&lines, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_under_writing() {
    let (lines, expected) = follow_while_writing(Rotation::CopyTruncate).await;
    assert_each_once(&lines, expected);
}

//! The sources of query log lines: a followed file ([`file`]), standard input or any other
//! byte stream ([`stream`]), and a command restarted whenever it exits ([`command`]).
//!
//! Every source removes wrappers and joins split lines with its own
//! [`Assembler`](super::wrapper::Assembler), then sends [`Batch`]es into a bounded channel.
//! A full channel makes the source wait, so a slow consumer slows the reading down instead
//! of growing memory. A source stops when the receiving end is dropped.

pub mod command;
pub mod file;
pub mod stream;

use std::collections::VecDeque;

use super::parse::SkipCounts;
use super::time::Timestamp;
use super::wrapper::Line;

pub use command::{CommandSource, run_command};
pub use file::{FilePosition, FileSource, FileStart, follow_file};
pub use stream::read_stream;

/// The position of a source in the configured list, carried by its batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceId(pub usize);

/// Lines read from one source in one go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub lines: Vec<Line>,
    /// Lines the source dropped before parsing (too long).
    pub skipped: SkipCounts,
    /// The point to resume from after a restart, once these lines are accounted for.
    /// `None` for sources that cannot resume (standard input).
    pub checkpoint: Option<Checkpoint>,
    /// The source has nothing more to read at the moment, so it has caught up with what
    /// was written before now.
    pub caught_up: bool,
}

/// The state a source stores so that a restarted daemon neither loses nor repeats lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checkpoint {
    File(FilePosition),
    /// The newest line time a command printed (see [`ReplayFilter`]).
    Command(ReplayMark),
}

/// Sends a batch; returns `false` when the receiver is gone and the source should stop.
async fn send(
    tx: &tokio::sync::mpsc::Sender<(SourceId, Batch)>,
    id: SourceId,
    batch: Batch,
) -> bool {
    tx.send((id, batch)).await.is_ok()
}

/// Number of line fingerprints kept for the newest timestamp.
///
/// Lines with the same timestamp are compared by content. CoreDNS logs with at least
/// millisecond resolution, and 64 queries in one millisecond from one replica is, by
/// estimate, more than a home resolver ever logs.
const REPLAY_HASHES: usize = 64;

/// The newest line time seen, and fingerprints of the lines carrying exactly that time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayMark {
    pub newest: Option<Timestamp>,
    pub hashes: Vec<u64>,
}

/// Drops lines that a restarted command prints again.
///
/// `kubectl logs -f --since=10m` repeats the last ten minutes each time it starts. With
/// `--timestamps` (or CoreDNS's own time prefix) every line has a time, and a line at or
/// before the newest time already seen is a repeat. Older lines are dropped outright, and
/// lines at exactly that time are compared by fingerprint. Lines without a time always
/// pass, because nothing tells a repeat from a new line.
#[derive(Clone, Debug, Default)]
pub struct ReplayFilter {
    newest: Option<Timestamp>,
    hashes: VecDeque<u64>,
}

impl ReplayFilter {
    pub fn new(mark: ReplayMark) -> Self {
        Self {
            newest: mark.newest,
            hashes: mark.hashes.into_iter().collect(),
        }
    }

    /// Checks a line and records it; returns `false` for a repeat.
    pub fn admit(&mut self, line: &Line) -> bool {
        let Some(at) = line.timestamp else {
            return true;
        };
        let hash = fingerprint(line.text.as_bytes());
        match self.newest {
            Some(newest) if at < newest => false,
            Some(newest) if at == newest => {
                if self.hashes.contains(&hash) {
                    return false;
                }
                if self.hashes.len() == REPLAY_HASHES {
                    self.hashes.pop_front();
                }
                self.hashes.push_back(hash);
                true
            }
            _ => {
                self.newest = Some(at);
                self.hashes.clear();
                self.hashes.push_back(hash);
                true
            }
        }
    }

    pub fn mark(&self) -> ReplayMark {
        ReplayMark {
            newest: self.newest,
            hashes: self.hashes.iter().copied().collect(),
        }
    }
}

/// Hashes bytes with FNV-1a, which stays the same across builds and Rust versions, so
/// fingerprints stored in Redis remain comparable after an upgrade.
pub(crate) fn fingerprint(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str, millis: Option<i64>) -> Line {
        Line {
            text: text.to_owned(),
            timestamp: millis.map(Timestamp::from_unix_millis),
        }
    }

    #[test]
    fn replay_filter_drops_older_lines() {
        let mut filter = ReplayFilter::default();
        assert!(filter.admit(&line("a", Some(10))));
        assert!(filter.admit(&line("b", Some(20))));
        assert!(!filter.admit(&line("a", Some(10))));
    }

    #[test]
    fn replay_filter_compares_same_time_lines() {
        let mut filter = ReplayFilter::default();
        assert!(filter.admit(&line("a", Some(10))));
        assert!(filter.admit(&line("b", Some(10))));
        assert!(!filter.admit(&line("a", Some(10))));
        assert!(!filter.admit(&line("b", Some(10))));
        assert!(filter.admit(&line("c", Some(10))));
    }

    #[test]
    fn replay_filter_passes_untimed_lines() {
        let mut filter = ReplayFilter::default();
        assert!(filter.admit(&line("a", None)));
        assert!(filter.admit(&line("a", None)));
    }

    #[test]
    fn replay_filter_resumes_from_mark() {
        let mut first = ReplayFilter::default();
        assert!(first.admit(&line("a", Some(10))));
        assert!(first.admit(&line("b", Some(10))));
        let mut second = ReplayFilter::new(first.mark());
        assert!(!second.admit(&line("a", Some(10))));
        assert!(!second.admit(&line("b", Some(9))));
        assert!(second.admit(&line("c", Some(11))));
    }

    #[test]
    fn fingerprint_is_stable() {
        // FNV-1a test vector for "a".
        assert_eq!(fingerprint(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}

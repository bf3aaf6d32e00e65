//! Lines from a byte stream: standard input, or the output of a command source.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tracing::warn;

use super::{Batch, Checkpoint, ReplayFilter, SourceId, send};
use crate::dnslog::parse::SkipKind;
use crate::dnslog::wrapper::{Assembler, Line, MAX_LINE_BYTES};

/// Bytes buffered from the stream; a pipe delivers at most 64 KiB per read on Linux.
const BUFFER_BYTES: usize = 64 * 1024;

/// Lines per batch while the stream has more data buffered, so that a fast producer still
/// gets its lines out in bounded batches.
const BATCH_LINES: usize = 4096;

/// Reads a stream until it ends or the receiver is dropped, sending batches of lines.
pub async fn read_stream<R: AsyncRead + Unpin>(
    id: SourceId,
    reader: R,
    tx: mpsc::Sender<(SourceId, Batch)>,
) {
    let mut lines = LineReader::new(reader, None);
    loop {
        match lines.next_batch().await {
            Ok(Some(batch)) => {
                if !send(&tx, id, batch).await {
                    return;
                }
            }
            Ok(None) => return,
            Err(error) => {
                warn!(source = id.0, error = %error, "cannot read the query log stream");
                return;
            }
        }
    }
}

/// Splits a stream into lines, assembles them, and drops replayed lines when given a
/// [`ReplayFilter`].
pub(super) struct LineReader<R> {
    reader: BufReader<R>,
    assembler: Assembler,
    filter: Option<ReplayFilter>,
    /// The current line so far.
    line: Vec<u8>,
    /// Dropping the rest of an over-long line, up to its newline.
    discarding: bool,
    ended: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub(super) fn new(reader: R, filter: Option<ReplayFilter>) -> Self {
        Self {
            reader: BufReader::with_capacity(BUFFER_BYTES, reader),
            assembler: Assembler::new(),
            filter,
            line: Vec::new(),
            discarding: false,
            ended: false,
        }
    }

    /// Waits for data, then returns every complete line already buffered (up to
    /// [`BATCH_LINES`]); returns `None` once the stream has ended and everything went out.
    pub(super) async fn next_batch(&mut self) -> std::io::Result<Option<Batch>> {
        if self.ended {
            return Ok(None);
        }
        let mut batch = Batch::default();
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                self.ended = true;
                self.finish(&mut batch);
                batch.caught_up = true;
                return Ok(Some(self.stamp(batch)));
            }
            let (used, complete) = match available.iter().position(|&b| b == b'\n') {
                Some(newline) => (newline + 1, Some(newline)),
                None => (available.len(), None),
            };
            let taken = complete.unwrap_or(used);
            if !self.discarding {
                if self.line.len() + taken > MAX_LINE_BYTES {
                    batch.skipped.add(SkipKind::Oversized);
                    self.line.clear();
                    self.discarding = true;
                } else {
                    self.line.extend_from_slice(&available[..taken]);
                }
            }
            self.reader.consume(used);
            if complete.is_some() {
                self.end_line(&mut batch);
            }

            let has_output = !batch.lines.is_empty() || batch.skipped.total() > 0;
            if batch.lines.len() >= BATCH_LINES {
                return Ok(Some(self.stamp(batch)));
            }
            if has_output && self.reader.buffer().is_empty() {
                batch.caught_up = true;
                return Ok(Some(self.stamp(batch)));
            }
        }
    }

    fn end_line(&mut self, batch: &mut Batch) {
        if std::mem::take(&mut self.discarding) {
            return;
        }
        let bytes = std::mem::take(&mut self.line);
        let text = String::from_utf8_lossy(&bytes);
        match self.assembler.push(&text) {
            Some(Ok(line)) if self.admit(&line) => batch.lines.push(line),
            Some(Ok(_)) | None => {}
            Some(Err(kind)) => batch.skipped.add(kind),
        }
    }

    /// Checks a line against the replay filter, if there is one.
    fn admit(&mut self, line: &Line) -> bool {
        self.filter.as_mut().is_none_or(|filter| filter.admit(line))
    }

    /// Takes an unterminated last line and any waiting fragments at the end of the stream.
    fn finish(&mut self, batch: &mut Batch) {
        if !self.line.is_empty() {
            self.end_line(batch);
        }
        for result in self.assembler.finish() {
            match result {
                Ok(line) => batch.lines.push(line),
                Err(kind) => batch.skipped.add(kind),
            }
        }
        self.discarding = false;
    }

    /// Adds the replay mark as the checkpoint, for a filtered stream.
    fn stamp(&self, mut batch: Batch) -> Batch {
        if let Some(filter) = &self.filter {
            batch.checkpoint = Some(Checkpoint::Command(filter.mark()));
        }
        batch
    }

    /// Returns the replay filter, to carry it across a restart of the command.
    pub(super) fn into_filter(self) -> Option<ReplayFilter> {
        self.filter
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::dnslog::time::parse_rfc3339_prefix;

    async fn collect_until_closed(
        mut rx: mpsc::Receiver<(SourceId, Batch)>,
    ) -> Vec<(SourceId, Batch)> {
        let mut batches = Vec::new();
        while let Some(batch) = rx.recv().await {
            batches.push(batch);
        }
        batches
    }

    #[tokio::test]
    async fn stream_lines_arrive_in_order() {
        let (mut writer, reader) = tokio::io::duplex(1024);
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(read_stream(SourceId(3), reader, tx));
        for i in 0..100 {
            writer
                .write_all(format!("line {i}\n").as_bytes())
                .await
                .unwrap();
        }
        writer.write_all(b"last without newline").await.unwrap();
        drop(writer);
        let batches = tokio::time::timeout(Duration::from_secs(10), collect_until_closed(rx))
            .await
            .unwrap();
        task.await.unwrap();
        let texts: Vec<String> = batches
            .iter()
            .flat_map(|(_, batch)| batch.lines.iter().map(|line| line.text.clone()))
            .collect();
        let mut expected: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        expected.push("last without newline".to_owned());
        assert_eq!(texts, expected);
        assert!(batches.iter().all(|(id, _)| *id == SourceId(3)));
    }

    #[tokio::test]
    async fn stream_joins_cri_fragments() {
        let input = b"2026-08-21T09:14:03Z stdout P abc\n2026-08-21T09:14:03Z stdout F def\n";
        let mut reader = LineReader::new(&input[..], None);
        let batch = reader.next_batch().await.unwrap().unwrap();
        assert_eq!(batch.lines.len(), 1);
        assert_eq!(batch.lines[0].text, "abcdef");
    }

    #[tokio::test]
    async fn stream_skips_oversized_line() {
        let mut input = vec![b'x'; MAX_LINE_BYTES + 10];
        input.extend_from_slice(b"\nnext\n");
        let mut reader = LineReader::new(&input[..], None);
        let mut lines = Vec::new();
        let mut skipped = 0;
        while let Some(batch) = reader.next_batch().await.unwrap() {
            skipped += batch.skipped.get(SkipKind::Oversized);
            lines.extend(batch.lines.into_iter().map(|line| line.text));
        }
        assert_eq!(lines, ["next"]);
        assert_eq!(skipped, 1);
    }

    #[tokio::test]
    async fn stream_filter_drops_replayed_lines() {
        let input = b"2026-08-21T09:14:03Z a\n2026-08-21T09:14:04Z b\n2026-08-21T09:14:03Z a\n";
        let mut reader = LineReader::new(&input[..], Some(ReplayFilter::default()));
        let batch = reader.next_batch().await.unwrap().unwrap();
        let texts: Vec<&str> = batch.lines.iter().map(|line| line.text.as_str()).collect();
        assert_eq!(texts, ["a", "b"]);
        let Some(Checkpoint::Command(mark)) = batch.checkpoint else {
            panic!("filtered stream without replay mark");
        };
        let newest = parse_rfc3339_prefix("2026-08-21T09:14:04Z").map(|(at, _)| at);
        assert_eq!(mark.newest, newest);
    }
}

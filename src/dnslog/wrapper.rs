//! Removal of what log collectors put around CoreDNS's own lines, and the joining of lines
//! that a container runtime split.
//!
//! Recognised, outermost first, and in any nesting that occurs in practice:
//!
//! - Docker's json-file driver: `{"log":"…\n","stream":"stdout","time":"…"}`; a `log` value
//!   without its final newline is a fragment of a longer line.
//! - The CRI format of containerd and CRI-O: `<RFC 3339 time> stdout|stderr F|P <line>`,
//!   where `P` marks a fragment that continues in the next line of the same stream.
//! - `kubectl logs --prefix`: `[pod/<pod>/<container>] `.
//! - An RFC 3339 time and a space: `kubectl logs --timestamps`, and CoreDNS 1.2.6 to 1.6.2,
//!   which put one on every line.
//! - syslog and journald: an RFC 3164 (`<30>Jul  3 13:12:37`) or RFC 5424 header, or the
//!   `journalctl -o short` / `short-iso` time, followed by `host tag[pid]: `.
//! - Go's standard logger date, `2018/08/15 14:37:17 `, which CoreDNS before 1.2.6 printed
//!   before its own messages.
//!
//! When several layers carry a time, the innermost one wins: it is the closest to when
//! CoreDNS wrote the line. A BSD syslog time has no year and no zone and yields none.

use std::borrow::Cow;

use serde::Deserialize;

use super::parse::SkipKind;
use super::time::{
    Timestamp, measure_bsd_syslog_prefix, parse_go_log_prefix, parse_rfc3339_prefix,
};

/// Maximum length of a logical line after joining fragments; longer lines are skipped.
///
/// A CoreDNS query line stays under 2 KiB even for a 255-byte name written entirely in
/// `\DDD` escapes; 64 KiB leaves room for any other plugin's message while bounding the
/// memory a stream of fragments can hold.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Nesting depth at which peeling stops, so that a hostile line cannot make the loop long.
/// Real logs nest at most four layers (CRI, kubectl prefix, kubectl time, CoreDNS time).
const MAX_LAYERS: usize = 8;

/// The output stream a container runtime recorded for a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// The line carried no stream (a plain file, standard input, journald).
    Unknown,
}

/// One physical line with its wrappers removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unwrapped<'a> {
    /// CoreDNS's own text, without the trailing newline.
    pub body: Cow<'a, str>,
    /// The innermost time a wrapper carried.
    pub timestamp: Option<Timestamp>,
    pub stream: Stream,
    /// The runtime split a long line and this is a fragment that continues on the next line
    /// of the same stream (CRI tag `P`, or a Docker `log` value without its newline).
    pub partial: bool,
}

/// Removes every wrapper layer from one physical line.
pub fn unwrap(line: &str) -> Unwrapped<'_> {
    let line = trim_line_end(line);
    if line.starts_with('{')
        && let Some(unwrapped) = unwrap_docker(line)
    {
        return unwrapped;
    }

    let (start, outer_time, stream, partial) = match parse_cri(line) {
        Some(cri) => (
            cri.content_start,
            Some(cri.timestamp),
            cri.stream,
            cri.partial,
        ),
        None => (0, None, Stream::Unknown, false),
    };
    let rest = &line[start..];
    let peeled = peel_text_prefixes(rest);
    Unwrapped {
        body: Cow::Borrowed(&rest[peeled.start..]),
        timestamp: peeled.timestamp.or(outer_time),
        stream,
        partial,
    }
}

fn trim_line_end(line: &str) -> &str {
    let line = line.strip_suffix('\n').unwrap_or(line);
    line.strip_suffix('\r').unwrap_or(line)
}

/// A line of Docker's json-file log driver. Unknown fields (`attrs`) are ignored.
#[derive(Deserialize)]
struct DockerLine<'a> {
    #[serde(borrow)]
    log: Cow<'a, str>,
    #[serde(default, borrow)]
    stream: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    time: Option<Cow<'a, str>>,
}

fn unwrap_docker(line: &str) -> Option<Unwrapped<'static>> {
    let docker: DockerLine<'_> = serde_json::from_str(line).ok()?;
    let mut body = docker.log.into_owned();
    let partial = !body.ends_with('\n');
    let trimmed = trim_line_end(&body).len();
    body.truncate(trimmed);

    let outer_time = docker
        .time
        .as_deref()
        .and_then(parse_rfc3339_prefix)
        .map(|(at, _)| at);
    let stream = match docker.stream.as_deref() {
        Some("stdout") => Stream::Stdout,
        Some("stderr") => Stream::Stderr,
        _ => Stream::Unknown,
    };
    let peeled = peel_text_prefixes(&body);
    body.drain(..peeled.start);
    Some(Unwrapped {
        body: Cow::Owned(body),
        timestamp: peeled.timestamp.or(outer_time),
        stream,
        partial,
    })
}

struct Cri {
    timestamp: Timestamp,
    stream: Stream,
    partial: bool,
    content_start: usize,
}

/// Parses the CRI header `<time> <stream> <tag> `. The tag is `F` or `P`, optionally
/// followed by further `:`-separated tags that the format reserves.
fn parse_cri(line: &str) -> Option<Cri> {
    let (timestamp, used) = parse_rfc3339_prefix(line)?;
    let rest = line[used..].strip_prefix(' ')?;
    let (stream, rest) = if let Some(rest) = rest.strip_prefix("stdout ") {
        (Stream::Stdout, rest)
    } else {
        (Stream::Stderr, rest.strip_prefix("stderr ")?)
    };
    let tag_end = rest.find(' ').unwrap_or(rest.len());
    let partial = match rest[..tag_end].split(':').next() {
        Some("F") => false,
        Some("P") => true,
        _ => return None,
    };
    let content_start = line.len() - rest.len() + (tag_end + 1).min(rest.len());
    Some(Cri {
        timestamp,
        stream,
        partial,
        content_start,
    })
}

struct Peeled {
    start: usize,
    timestamp: Option<Timestamp>,
}

/// Skips the text-only prefixes (everything but Docker and CRI) and returns where the body
/// starts, with the innermost time found.
fn peel_text_prefixes(text: &str) -> Peeled {
    let mut start = 0;
    let mut timestamp = None;
    for _ in 0..MAX_LAYERS {
        let rest = &text[start..];
        let Some((used, found)) = peel_one(rest) else {
            break;
        };
        start += used;
        timestamp = found.or(timestamp);
    }
    Peeled { start, timestamp }
}

/// Recognises one prefix layer at the start of `text`; returns the bytes it uses and the
/// time it carries.
fn peel_one(text: &str) -> Option<(usize, Option<Timestamp>)> {
    let first = *text.as_bytes().first()?;
    match first {
        b'[' => peel_kubectl_pod_prefix(text).map(|used| (used, None)),
        b'<' => peel_syslog_header(text),
        b'0'..=b'9' => {
            if let Some((at, used)) = parse_rfc3339_prefix(text) {
                let rest = text[used..].strip_prefix(' ')?;
                let host_tag = measure_host_and_tag(rest).unwrap_or(0);
                return Some((used + 1 + host_tag, Some(at)));
            }
            let (at, used) = parse_go_log_prefix(text)?;
            Some((used, Some(at)))
        }
        b'A'..=b'Z' => {
            let used = measure_bsd_syslog_prefix(text)?;
            let rest = text[used..].strip_prefix(' ')?;
            let host_tag = measure_host_and_tag(rest)?;
            Some((used + 1 + host_tag, None))
        }
        _ => None,
    }
}

/// `kubectl logs --prefix` writes `[pod/<pod>/<container>] `.
fn peel_kubectl_pod_prefix(text: &str) -> Option<usize> {
    let inner = text.strip_prefix("[pod/")?;
    let end = inner.find("] ")?;
    if inner[..end].contains(' ') {
        return None;
    }
    Some("[pod/".len() + end + 2)
}

/// Measures the `host tag[pid]: ` part that syslog and journald put after their time.
///
/// The host must not start with `[` and the tag must end with `:`, which keeps CoreDNS's
/// own `[INFO] plugin/reload: …` and `10.0.0.1:53 - …` from being taken for it.
fn measure_host_and_tag(text: &str) -> Option<usize> {
    let host_end = text.find(' ')?;
    let host = &text[..host_end];
    if host.is_empty() || host.starts_with('[') || host.contains('"') {
        return None;
    }
    let after_host = &text[host_end + 1..];
    let tag_end = after_host.find(' ').unwrap_or(after_host.len());
    let tag = &after_host[..tag_end];
    if tag.len() < 2 || !tag.ends_with(':') || tag.contains('"') {
        return None;
    }
    Some(host_end + 1 + (tag_end + 1).min(after_host.len()))
}

/// Peels an RFC 5424 (`<PRI>1 TIME HOST APP PROCID MSGID SD MSG`) or RFC 3164
/// (`<PRI>Mmm dd hh:mm:ss HOST TAG: MSG`) header.
fn peel_syslog_header(text: &str) -> Option<(usize, Option<Timestamp>)> {
    let close = text.get(1..5)?.find('>')? + 1;
    let priority = &text[1..close];
    if priority.is_empty() || !priority.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let after_pri = close + 1;
    let rest = &text[after_pri..];
    if let Some(rest) = rest.strip_prefix("1 ") {
        let (used, at) = measure_rfc5424_header(rest)?;
        return Some((after_pri + 2 + used, at));
    }
    let used = measure_bsd_syslog_prefix(rest)?;
    let after_time = rest[used..].strip_prefix(' ')?;
    let host_tag = measure_host_and_tag(after_time)?;
    Some((after_pri + used + 1 + host_tag, None))
}

/// Measures `TIME HOST APP PROCID MSGID SD ` of an RFC 5424 message (after `<PRI>1 `).
fn measure_rfc5424_header(text: &str) -> Option<(usize, Option<Timestamp>)> {
    let at = parse_rfc3339_prefix(text).map(|(at, _)| at);
    let mut pos = 0;
    for _ in 0..5 {
        let end = text[pos..].find(' ')?;
        pos += end + 1;
    }
    let sd = &text[pos..];
    let sd_len = if sd.starts_with('-') {
        1
    } else {
        measure_structured_data(sd)?
    };
    pos += sd_len;
    match text[pos..].strip_prefix(' ') {
        Some(msg) => {
            let bom = if msg.starts_with('\u{feff}') { 3 } else { 0 };
            Some((pos + 1 + bom, at))
        }
        None if pos == text.len() => Some((pos, at)),
        None => None,
    }
}

/// Measures one or more `[id key="value" …]` elements, honouring `\]` and `\"` in values.
fn measure_structured_data(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut pos = 0;
    while bytes.get(pos) == Some(&b'[') {
        let mut in_quotes = false;
        pos += 1;
        loop {
            match *bytes.get(pos)? {
                b'\\' => pos += 1,
                b'"' => in_quotes = !in_quotes,
                b']' if !in_quotes => break,
                _ => {}
            }
            pos += 1;
        }
        pos += 1;
    }
    (pos > 0).then_some(pos)
}

/// A logical line, ready for [`super::parse::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The line with its wrappers removed.
    pub text: String,
    /// The innermost time a wrapper carried (of the first fragment, for joined lines).
    pub timestamp: Option<Timestamp>,
}

struct Pending {
    text: String,
    timestamp: Option<Timestamp>,
    oversized: bool,
}

/// Unwraps physical lines and joins the fragments of split lines, one stream at a time.
///
/// Stdout and stderr fragments are joined separately because a runtime interleaves the two
/// streams in one file. Each source owns one assembler.
#[derive(Default)]
pub struct Assembler {
    pending: [Option<Pending>; 2],
}

impl Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one physical line; returns a complete logical line, an oversized skip, or
    /// `None` while a split line is still incomplete.
    pub fn push(&mut self, raw: &str) -> Option<Result<Line, SkipKind>> {
        let unwrapped = unwrap(raw);
        let slot = &mut self.pending[stream_slot(unwrapped.stream)];
        if unwrapped.partial {
            let pending = slot.get_or_insert_with(|| Pending {
                text: String::new(),
                timestamp: unwrapped.timestamp,
                oversized: false,
            });
            append_bounded(pending, &unwrapped.body);
            return None;
        }

        let Some(mut pending) = slot.take() else {
            if unwrapped.body.len() > MAX_LINE_BYTES {
                return Some(Err(SkipKind::Oversized));
            }
            return Some(Ok(Line {
                text: unwrapped.body.into_owned(),
                timestamp: unwrapped.timestamp,
            }));
        };
        append_bounded(&mut pending, &unwrapped.body);
        Some(finish(pending))
    }

    /// Checks that no fragment is waiting for its continuation, so that everything pushed
    /// so far has come out.
    pub fn is_idle(&self) -> bool {
        self.pending.iter().all(Option::is_none)
    }

    /// Returns the fragments still waiting as lines, for the end of a stream.
    pub fn finish(&mut self) -> Vec<Result<Line, SkipKind>> {
        self.pending
            .iter_mut()
            .filter_map(Option::take)
            .map(finish)
            .collect()
    }
}

fn stream_slot(stream: Stream) -> usize {
    match stream {
        Stream::Stdout | Stream::Unknown => 0,
        Stream::Stderr => 1,
    }
}

fn append_bounded(pending: &mut Pending, fragment: &str) {
    if pending.oversized {
        return;
    }
    if pending.text.len() + fragment.len() > MAX_LINE_BYTES {
        pending.oversized = true;
        pending.text = String::new();
        return;
    }
    pending.text.push_str(fragment);
}

fn finish(pending: Pending) -> Result<Line, SkipKind> {
    if pending.oversized {
        return Err(SkipKind::Oversized);
    }
    Ok(Line {
        text: pending.text,
        timestamp: pending.timestamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const QUERY: &str = r#"[INFO] 10.42.0.17:53211 - 4242 "A IN grafana.monitoring.svc.cluster.local. udp 66 false 1232" NOERROR qr,aa,rd 120 0.000147203s"#;

    fn at(text: &str) -> Option<Timestamp> {
        parse_rfc3339_prefix(text).map(|(at, _)| at)
    }

    #[test]
    fn plain_line_unchanged() {
        let unwrapped = unwrap(QUERY);
        assert_eq!(unwrapped.body, QUERY);
        assert_eq!(unwrapped.timestamp, None);
        assert!(!unwrapped.partial);
    }

    #[test]
    fn cri_full_line() {
        let line = format!("2026-08-21T09:14:03.118349261Z stdout F {QUERY}");
        let unwrapped = unwrap(&line);
        assert_eq!(unwrapped.body, QUERY);
        assert_eq!(unwrapped.timestamp, at("2026-08-21T09:14:03.118349261Z"));
        assert_eq!(unwrapped.stream, Stream::Stdout);
        assert!(!unwrapped.partial);
    }

    #[test]
    fn cri_partial_line_on_stderr() {
        let unwrapped = unwrap("2026-08-21T09:14:03Z stderr P [INFO] 10.0.0.1:5");
        assert_eq!(unwrapped.body, "[INFO] 10.0.0.1:5");
        assert_eq!(unwrapped.stream, Stream::Stderr);
        assert!(unwrapped.partial);
    }

    #[test]
    fn cri_empty_content() {
        let unwrapped = unwrap("2026-08-21T09:14:03Z stdout F");
        assert_eq!(unwrapped.body, "");
    }

    #[test]
    fn cri_unknown_tag_is_not_cri() {
        let unwrapped = unwrap("2026-08-21T09:14:03Z stdout X hello");
        assert_eq!(unwrapped.body, "stdout X hello");
    }

    #[test]
    fn cri_with_coredns_time_prefers_inner() {
        let line =
            format!("2026-08-21T09:14:03.118349261Z stdout F 2026-08-21T09:14:02.5Z {QUERY}");
        let unwrapped = unwrap(&line);
        assert_eq!(unwrapped.body, QUERY);
        assert_eq!(unwrapped.timestamp, at("2026-08-21T09:14:02.5Z"));
    }

    #[test]
    fn docker_json_line() {
        let line = r#"{"log":"[INFO] 10.0.0.7:5353 - 777 \"A IN nas.lan. udp 36 false 512\" NOERROR qr,aa,rd 58 0.0001s\n","stream":"stdout","time":"2026-08-21T09:14:03.1Z"}"#;
        let unwrapped = unwrap(line);
        assert_eq!(
            unwrapped.body,
            r#"[INFO] 10.0.0.7:5353 - 777 "A IN nas.lan. udp 36 false 512" NOERROR qr,aa,rd 58 0.0001s"#
        );
        assert_eq!(unwrapped.timestamp, at("2026-08-21T09:14:03.1Z"));
        assert_eq!(unwrapped.stream, Stream::Stdout);
        assert!(!unwrapped.partial);
    }

    #[test]
    fn docker_json_without_newline_is_partial() {
        let unwrapped =
            unwrap(r#"{"log":"[INFO] 10.0","stream":"stderr","time":"2026-08-21T09:14:03Z"}"#);
        assert!(unwrapped.partial);
        assert_eq!(unwrapped.stream, Stream::Stderr);
    }

    #[test]
    fn json_that_is_not_docker_stays() {
        let unwrapped = unwrap(r#"{"msg":"hello"}"#);
        assert_eq!(unwrapped.body, r#"{"msg":"hello"}"#);
    }

    #[test]
    fn journald_short_prefix() {
        let line = format!("Jul 03 13:12:37 gateway-1 coredns[3064271]: {QUERY}");
        let unwrapped = unwrap(&line);
        assert_eq!(unwrapped.body, QUERY);
        assert_eq!(unwrapped.timestamp, None);
    }

    #[test]
    fn journald_short_iso_prefix() {
        let line = format!("2026-07-03T13:12:37+0200 gateway-1 coredns[3064271]: {QUERY}");
        let unwrapped = unwrap(&line);
        assert_eq!(unwrapped.body, QUERY);
        assert_eq!(unwrapped.timestamp, at("2026-07-03T11:12:37Z"));
    }

    #[test]
    fn syslog_rfc3164_with_priority() {
        let line = format!("<30>Jul  3 13:12:37 gw coredns: {QUERY}");
        assert_eq!(unwrap(&line).body, QUERY);
    }

    #[test]
    fn syslog_rfc5424_with_structured_data() {
        let line = format!(
            r#"<30>1 2026-07-03T13:12:37.5Z gw coredns 812 ID47 [origin ip="10.0.0.1" x="a\]b"] {QUERY}"#
        );
        let unwrapped = unwrap(&line);
        assert_eq!(unwrapped.body, QUERY);
        assert_eq!(unwrapped.timestamp, at("2026-07-03T13:12:37.5Z"));
    }

    #[test]
    fn syslog_rfc5424_without_structured_data() {
        let line = format!("<30>1 2026-07-03T13:12:37Z gw coredns - - - {QUERY}");
        assert_eq!(unwrap(&line).body, QUERY);
    }

    #[test]
    fn kubectl_timestamps_prefix() {
        let line = format!("2026-08-21T09:14:05.000000001Z {QUERY}");
        let unwrapped = unwrap(&line);
        assert_eq!(unwrapped.body, QUERY);
        assert_eq!(unwrapped.timestamp, at("2026-08-21T09:14:05.000000001Z"));
    }

    #[test]
    fn kubectl_prefix_and_timestamps() {
        let line = format!("[pod/coredns-5d78c9869d-abcde/coredns] 2026-08-21T09:14:05Z {QUERY}");
        let unwrapped = unwrap(&line);
        assert_eq!(unwrapped.body, QUERY);
        assert_eq!(unwrapped.timestamp, at("2026-08-21T09:14:05Z"));
    }

    #[test]
    fn kubectl_timestamps_over_coredns_time() {
        let line = format!("2026-08-21T09:14:05.9Z 2026-08-21T09:14:05.340Z {QUERY}");
        let unwrapped = unwrap(&line);
        assert_eq!(unwrapped.body, QUERY);
        assert_eq!(unwrapped.timestamp, at("2026-08-21T09:14:05.340Z"));
    }

    #[test]
    fn go_log_prefix_of_old_coredns() {
        let unwrapped = unwrap("2018/08/15 14:37:17 [INFO] CoreDNS-1.2.2");
        assert_eq!(unwrapped.body, "[INFO] CoreDNS-1.2.2");
        assert_eq!(unwrapped.timestamp, at("2018-08-15T14:37:17Z"));
    }

    #[test]
    fn time_prefix_keeps_coredns_messages() {
        for body in [
            "[INFO] plugin/reload: Running configuration SHA512 = 9c1e",
            "linux/amd64, go1.22.5, 1a2b3c4",
            "panic: runtime error: index out of range",
            "goroutine 1 [running]:",
            r#"10.0.0.1:53 - 1 "A IN x. udp 1 false 512" NOERROR qr 1 1s"#,
        ] {
            let line = format!("2020-09-14T19:12:38.340Z {body}");
            assert_eq!(unwrap(&line).body, body);
        }
    }

    #[test]
    fn trailing_newline_and_carriage_return_removed() {
        assert_eq!(unwrap("hello\r\n").body, "hello");
    }

    #[test]
    fn assembler_joins_cri_fragments() {
        let mut assembler = Assembler::new();
        assert_eq!(
            assembler.push("2026-08-21T09:14:03Z stdout P [INFO] 10.0.0.1:5"),
            None
        );
        assert!(!assembler.is_idle());
        assert_eq!(
            assembler.push("2026-08-21T09:14:04Z stdout P 353 - 7 \"A IN "),
            None
        );
        let line = assembler
            .push("2026-08-21T09:14:05Z stdout F x. udp 1 false 512\" NOERROR qr 1 1s")
            .unwrap()
            .unwrap();
        assert_eq!(
            line.text,
            "[INFO] 10.0.0.1:5353 - 7 \"A IN x. udp 1 false 512\" NOERROR qr 1 1s"
        );
        assert_eq!(line.timestamp, at("2026-08-21T09:14:03Z"));
        assert!(assembler.is_idle());
    }

    #[test]
    fn assembler_keeps_streams_apart() {
        let mut assembler = Assembler::new();
        assert_eq!(assembler.push("2026-08-21T09:14:03Z stdout P out-1 "), None);
        let err = assembler
            .push("2026-08-21T09:14:03Z stderr F err")
            .unwrap()
            .unwrap();
        assert_eq!(err.text, "err");
        let out = assembler
            .push("2026-08-21T09:14:04Z stdout F out-2")
            .unwrap()
            .unwrap();
        assert_eq!(out.text, "out-1 out-2");
    }

    #[test]
    fn assembler_joins_docker_fragments() {
        let mut assembler = Assembler::new();
        assert_eq!(assembler.push(r#"{"log":"abc","stream":"stdout"}"#), None);
        let line = assembler
            .push(r#"{"log":"def\n","stream":"stdout"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(line.text, "abcdef");
    }

    #[test]
    fn assembler_rejects_oversized_join() {
        let mut assembler = Assembler::new();
        let chunk = "x".repeat(16 * 1024);
        for _ in 0..5 {
            assert_eq!(
                assembler.push(&format!("2026-08-21T09:14:03Z stdout P {chunk}")),
                None
            );
        }
        let result = assembler.push("2026-08-21T09:14:03Z stdout F end").unwrap();
        assert_eq!(result, Err(SkipKind::Oversized));
        assert!(assembler.is_idle());
    }

    #[test]
    fn assembler_finish_returns_pending_fragment() {
        let mut assembler = Assembler::new();
        assert_eq!(assembler.push("2026-08-21T09:14:03Z stdout P tail"), None);
        let rest = assembler.finish();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].as_ref().unwrap().text, "tail");
    }

    proptest! {
        #[test]
        fn unwrap_never_panics(line in "\\PC{0,200}") {
            let _ = unwrap(&line);
        }

        #[test]
        fn unwrap_never_panics_on_wrapper_shapes(
            prefix in prop::sample::select(vec![
                "2026-08-21T09:14:03Z stdout F ", "2026-08-21T09:14:03Z stdout P ",
                "<30>1 ", "<30>", "[pod/", "Jul  3 13:12:37 ", "2018/08/15 14:37:17 ",
                "{\"log\":\"", "2026-08-21T09:14:03+02:00 ",
            ]),
            rest in "\\PC{0,60}",
        ) {
            let line = format!("{prefix}{rest}");
            let unwrapped = unwrap(&line);
            prop_assert!(unwrapped.body.len() <= line.len());
        }

        #[test]
        fn cri_round_trip(body in "[ -~]{0,80}", partial: bool, secs in 0i64..4_000_000_000) {
            let at = Timestamp::from_unix_secs(secs);
            let tag = if partial { "P" } else { "F" };
            let line = format!("{} stdout {tag} {body}", at.to_datetime().to_rfc3339());
            let unwrapped = unwrap(&line);
            prop_assert_eq!(unwrapped.partial, partial);
            // The body itself may start with something that looks like another layer.
            prop_assert!(body.ends_with(unwrapped.body.as_ref()));
        }
    }
}

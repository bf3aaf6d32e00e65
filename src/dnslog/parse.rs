//! The CoreDNS query-log line parser: one unwrapped line in, a [`Query`] or a classified
//! [`SkipKind`] out.
//!
//! The `log` plugin's formats, as CoreDNS prints them:
//!
//! ```text
//! common (1.2.6 and later)   {remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do} {>bufsize}" {rcode} {>rflags} {rsize} {duration}
//! combined                   the same, then ` "{>opcode}"`
//! before 1.2.6               {remote}:{port} - [{when}] {>id} "…" … with a Go duration (`1.2ms`, `870µs`)
//! before message ids (2018)  {remote} - [{when}] "…" …
//! ```
//!
//! A `[INFO] ` level in front is optional (the plugin wrote without one before 1.2.6).
//! `{remote}` is an IPv4 address or a bracketed IPv6 address, possibly with a zone or in
//! v4-mapped form. `{rcode}` is a name, a number, or `-` when no reply was written. The
//! flags are a comma list, empty, or `-`. The parser never panics and allocates only for a
//! name that needs decoding (see [`super::name`]).

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::name;
use super::time::{Timestamp, parse_clf_date};

/// One query from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query<'a> {
    /// The client, with v4-mapped IPv6 addresses turned into IPv4.
    pub client: IpAddr,
    /// The IPv6 zone (`wlan0` in `fe80::1%wlan0`).
    pub zone: Option<&'a str>,
    /// The client's port; absent in the oldest format.
    pub port: Option<u16>,
    /// The DNS message id; absent in the oldest format.
    pub id: Option<u16>,
    /// The query type as CoreDNS names it: `A`, `HTTPS`, `TYPE65534` …
    pub qtype: &'a str,
    /// The query class: `IN`, `CH`, `CLASS255` …
    pub qclass: &'a str,
    /// The query name in canonical form (see [`super::name`]), with its final dot.
    pub name: Cow<'a, str>,
    /// `udp` or `tcp`.
    pub proto: &'a str,
    pub request_bytes: u32,
    /// The EDNS0 DO (DNSSEC OK) bit of the query.
    pub dnssec_ok: bool,
    /// The EDNS0 buffer size the client advertised (512 without EDNS0).
    pub bufsize: u32,
    /// The response code (`NOERROR`, `NXDOMAIN`, or a number CoreDNS has no name for);
    /// `None` when CoreDNS wrote no reply (`-`).
    pub rcode: Option<&'a str>,
    /// The response header flags; `None` when CoreDNS wrote no reply (`-`).
    pub flags: Option<Flags>,
    /// `None` when the log has `-`.
    pub response_bytes: Option<u32>,
    /// `None` when the log has `-`.
    pub duration: Option<Duration>,
    /// The opcode, in the combined format only.
    pub opcode: Option<u8>,
    /// The date before the message id in the formats before 1.2.6.
    pub timestamp: Option<Timestamp>,
}

/// The reason a line is not a query. Skipped lines are counted per kind and dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipKind {
    /// An empty line.
    Blank,
    /// The startup banner: server addresses (`.:53`), `CoreDNS-1.11.3`, the platform line.
    Banner,
    /// The reload plugin's lines, also printed at startup.
    Reload,
    /// Another `[INFO]` message, such as lame-duck or readiness notes.
    Info,
    Debug,
    Warning,
    Error,
    Fatal,
    /// A Go panic or fatal error and its stack trace.
    Panic,
    /// A query line that ends before its last field.
    Truncated,
    /// A line that matches none of the above, including a query line with an invalid field.
    Garbled,
    /// A line longer than [`super::wrapper::MAX_LINE_BYTES`] after joining fragments.
    Oversized,
}

impl SkipKind {
    pub const ALL: [SkipKind; 12] = [
        SkipKind::Blank,
        SkipKind::Banner,
        SkipKind::Reload,
        SkipKind::Info,
        SkipKind::Debug,
        SkipKind::Warning,
        SkipKind::Error,
        SkipKind::Fatal,
        SkipKind::Panic,
        SkipKind::Truncated,
        SkipKind::Garbled,
        SkipKind::Oversized,
    ];

    /// Returns the lower-case label used in metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            SkipKind::Blank => "blank",
            SkipKind::Banner => "banner",
            SkipKind::Reload => "reload",
            SkipKind::Info => "info",
            SkipKind::Debug => "debug",
            SkipKind::Warning => "warning",
            SkipKind::Error => "error",
            SkipKind::Fatal => "fatal",
            SkipKind::Panic => "panic",
            SkipKind::Truncated => "truncated",
            SkipKind::Garbled => "garbled",
            SkipKind::Oversized => "oversized",
        }
    }
}

impl fmt::Display for SkipKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Skipped lines counted by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkipCounts([u64; SkipKind::ALL.len()]);

impl SkipCounts {
    pub fn add(&mut self, kind: SkipKind) {
        self.0[kind as usize] += 1;
    }

    pub fn get(&self, kind: SkipKind) -> u64 {
        self.0[kind as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Returns the non-zero counts.
    pub fn iter(&self) -> impl Iterator<Item = (SkipKind, u64)> + '_ {
        SkipKind::ALL
            .iter()
            .map(|&kind| (kind, self.get(kind)))
            .filter(|&(_, count)| count > 0)
    }
}

/// The DNS header flags CoreDNS prints for a reply, in its order `qr,aa,tc,rd,ra,z,ad,cd`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(u8);

impl Flags {
    const NAMES: [&'static str; 8] = ["qr", "aa", "tc", "rd", "ra", "z", "ad", "cd"];

    pub const fn from_bits(bits: u8) -> Self {
        Self(bits)
    }

    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Checks whether the named flag (`"tc"`, `"ad"` …) is set.
    pub fn contains(self, name: &str) -> bool {
        Self::NAMES
            .iter()
            .position(|&n| n == name)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }

    /// Parses a comma list; an empty text is a reply without flags.
    fn parse(text: &str) -> Option<Flags> {
        let mut bits = 0u8;
        if text.is_empty() {
            return Some(Flags(0));
        }
        for name in text.split(',') {
            let index = Self::NAMES.iter().position(|&n| n == name)?;
            bits |= 1 << index;
        }
        Some(Flags(bits))
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (i, name) in Self::NAMES.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// Parses one line with its wrappers already removed (see [`super::wrapper`]).
pub fn parse(line: &str) -> Result<Query<'_>, SkipKind> {
    let line = line.trim_end_matches([' ', '\t', '\r', '\n']);
    if line.is_empty() {
        return Err(SkipKind::Blank);
    }
    let (level, rest) = split_level(line);
    match level {
        Level::Info | Level::None => {}
        Level::Debug => return Err(SkipKind::Debug),
        Level::Warning => return Err(SkipKind::Warning),
        Level::Error => return Err(SkipKind::Error),
        Level::Fatal => return Err(SkipKind::Fatal),
    }
    match parse_query(rest) {
        Ok(query) => Ok(query),
        Err(Failure::End) => Err(SkipKind::Truncated),
        Err(Failure::Invalid) => Err(SkipKind::Garbled),
        Err(Failure::NotQuery) => Err(classify_message(rest, level)),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    None,
    Info,
    Debug,
    Warning,
    Error,
    Fatal,
}

/// Splits CoreDNS's `[LEVEL] ` prefix off a line.
fn split_level(line: &str) -> (Level, &str) {
    const LEVELS: [(&str, Level); 6] = [
        ("[INFO] ", Level::Info),
        ("[ERROR] ", Level::Error),
        ("[WARNING] ", Level::Warning),
        ("[WARN] ", Level::Warning),
        ("[DEBUG] ", Level::Debug),
        ("[FATAL] ", Level::Fatal),
    ];
    if line.starts_with('[') {
        for (prefix, level) in LEVELS {
            if let Some(rest) = line.strip_prefix(prefix) {
                return (level, rest);
            }
        }
    }
    (Level::None, line)
}

/// The reason [`parse_query`] gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// The line does not start like a query.
    NotQuery,
    /// The line ended where a field was expected.
    End,
    /// A field is present but invalid.
    Invalid,
}

/// A position in a line, advanced field by field. Every split is at an ASCII byte, so
/// every slice is valid UTF-8.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    /// Consumes `byte`, failing with `End` at the end of the line.
    fn expect(&mut self, byte: u8) -> Result<(), Failure> {
        match self.text.as_bytes().get(self.pos) {
            None => Err(Failure::End),
            Some(&b) if b == byte => {
                self.pos += 1;
                Ok(())
            }
            Some(_) => Err(Failure::Invalid),
        }
    }

    /// Consumes the text up to (not including) the next space or `stop` byte, or to the end
    /// of the line.
    fn field(&mut self, stop: u8) -> &'a str {
        let rest = self.rest();
        let len = rest
            .bytes()
            .position(|b| b == b' ' || b == stop)
            .unwrap_or(rest.len());
        self.pos += len;
        &rest[..len]
    }

    /// Consumes a field that must be followed by a space.
    fn field_then_space(&mut self) -> Result<&'a str, Failure> {
        let field = self.field(b' ');
        self.expect(b' ')?;
        Ok(field)
    }
}

fn parse_query(text: &str) -> Result<Query<'_>, Failure> {
    let mut cursor = Cursor { text, pos: 0 };
    let remote = cursor.field(b' ');
    let separator = cursor.rest().as_bytes();
    let client = match parse_remote(remote) {
        Ok(client) => client,
        Err(_) if separator.starts_with(b" - ") => return Err(Failure::Invalid),
        Err(_) => return Err(Failure::NotQuery),
    };
    let separator = &separator[..separator.len().min(3)];
    if !b" - ".starts_with(separator) {
        return Err(Failure::NotQuery);
    }
    if separator.len() < 3 {
        return Err(Failure::End);
    }
    cursor.pos += 3;

    let timestamp = parse_legacy_date(&mut cursor)?;
    let id = parse_message_id(&mut cursor)?;
    cursor.expect(b'"')?;
    let question = parse_question(&mut cursor)?;
    cursor.expect(b'"')?;
    cursor.expect(b' ')?;
    let reply = parse_reply(&mut cursor)?;

    Ok(Query {
        client: client.address,
        zone: client.zone,
        port: client.port,
        id,
        qtype: question.qtype,
        qclass: question.qclass,
        name: question.name,
        proto: question.proto,
        request_bytes: question.request_bytes,
        dnssec_ok: question.dnssec_ok,
        bufsize: question.bufsize,
        rcode: reply.rcode,
        flags: reply.flags,
        response_bytes: reply.response_bytes,
        duration: reply.duration,
        opcode: reply.opcode,
        timestamp,
    })
}

struct Remote<'a> {
    address: IpAddr,
    zone: Option<&'a str>,
    port: Option<u16>,
}

/// Parses `1.2.3.4:5`, `[v6]:5`, `[v6%zone]:5`, or without a port (oldest format) `1.2.3.4`,
/// `[v6]` or a bare `v6`.
fn parse_remote(text: &str) -> Result<Remote<'_>, Failure> {
    if let Some(inner) = text.strip_prefix('[') {
        let close = inner.find(']').ok_or(Failure::Invalid)?;
        let (address, zone) = parse_ipv6_with_zone(&inner[..close])?;
        let after = &inner[close + 1..];
        let port = match after {
            "" => None,
            _ => Some(parse_port(
                after.strip_prefix(':').ok_or(Failure::Invalid)?,
            )?),
        };
        return Ok(remote_v6(address, zone, port));
    }
    match text.bytes().filter(|&b| b == b':').count() {
        0 => Ok(Remote {
            address: IpAddr::V4(parse_ipv4(text)?),
            zone: None,
            port: None,
        }),
        1 => {
            let (address, port) = text.split_once(':').ok_or(Failure::Invalid)?;
            Ok(Remote {
                address: IpAddr::V4(parse_ipv4(address)?),
                zone: None,
                port: Some(parse_port(port)?),
            })
        }
        _ => {
            let (address, zone) = parse_ipv6_with_zone(text)?;
            Ok(remote_v6(address, zone, None))
        }
    }
}

/// Turns a v4-mapped address (`::ffff:192.0.2.1`, from a dual-stack socket) into the IPv4
/// client it is; a zone means nothing for it and is dropped.
fn remote_v6<'a>(address: Ipv6Addr, zone: Option<&'a str>, port: Option<u16>) -> Remote<'a> {
    match IpAddr::V6(address).to_canonical() {
        v4 @ IpAddr::V4(_) => Remote {
            address: v4,
            zone: None,
            port,
        },
        v6 => Remote {
            address: v6,
            zone,
            port,
        },
    }
}

fn parse_ipv4(text: &str) -> Result<Ipv4Addr, Failure> {
    text.parse().map_err(|_| Failure::Invalid)
}

fn parse_ipv6_with_zone(text: &str) -> Result<(Ipv6Addr, Option<&str>), Failure> {
    let (address, zone) = match text.split_once('%') {
        Some((address, zone)) => {
            let valid = !zone.is_empty()
                && zone.len() <= 64
                && zone
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !valid {
                return Err(Failure::Invalid);
            }
            (address, Some(zone))
        }
        None => (text, None),
    };
    let address = address.parse().map_err(|_| Failure::Invalid)?;
    Ok((address, zone))
}

fn parse_port(text: &str) -> Result<u16, Failure> {
    parse_decimal(text).ok_or(Failure::Invalid)
}

/// Checks whether a lone token could be the start of a client address cut off by the line's end:
/// hex digits, dots and colons, or a bracket followed by an IPv6 address and zone.
fn looks_like_address_start(text: &str) -> bool {
    if text.is_empty() || text.contains(' ') {
        return false;
    }
    match text.strip_prefix('[') {
        Some(inner) => inner.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'%' | b']' | b'_' | b'-')
        }),
        None => text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b'.' | b':')),
    }
}

/// Reads the optional `[21/Aug/2018:09:14:03 +0000] ` of the formats before 1.2.6.
fn parse_legacy_date(cursor: &mut Cursor<'_>) -> Result<Option<Timestamp>, Failure> {
    if !cursor.rest().starts_with('[') {
        return Ok(None);
    }
    let inner = &cursor.rest()[1..];
    let Some(close) = inner.find(']') else {
        return Err(if inner.len() <= 26 {
            Failure::End
        } else {
            Failure::Invalid
        });
    };
    let timestamp = parse_clf_date(&inner[..close]).ok_or(Failure::Invalid)?;
    cursor.pos += close + 2;
    cursor.expect(b' ')?;
    Ok(Some(timestamp))
}

/// Reads the optional message id and its space; absent in the oldest format, where the
/// question follows directly.
fn parse_message_id(cursor: &mut Cursor<'_>) -> Result<Option<u16>, Failure> {
    if cursor.rest().starts_with('"') {
        return Ok(None);
    }
    let id = cursor.field(b' ');
    if cursor.at_end() && id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Failure::End);
    }
    let id = parse_decimal(id).ok_or(Failure::Invalid)?;
    cursor.expect(b' ')?;
    Ok(Some(id))
}

struct Question<'a> {
    qtype: &'a str,
    qclass: &'a str,
    name: Cow<'a, str>,
    proto: &'a str,
    request_bytes: u32,
    dnssec_ok: bool,
    bufsize: u32,
}

/// Reads `{type} {class} {name} {proto} {size} {>do} {>bufsize}` up to the closing quote.
fn parse_question<'a>(cursor: &mut Cursor<'a>) -> Result<Question<'a>, Failure> {
    let qtype = checked(cursor.field_then_space()?, is_mnemonic)?;
    let qclass = checked(cursor.field_then_space()?, is_mnemonic)?;
    let name = parse_name(cursor)?;
    cursor.expect(b' ')?;
    let proto = checked(cursor.field_then_space()?, |p| {
        (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_lowercase())
    })?;
    let request_bytes = number(cursor.field_then_space()?)?;
    let dnssec_ok = match cursor.field_then_space()? {
        "true" => true,
        "false" => false,
        _ => return Err(Failure::Invalid),
    };
    let bufsize = cursor.field(b'"');
    if cursor.at_end() {
        return Err(Failure::End);
    }
    let bufsize = number(bufsize)?;
    Ok(Question {
        qtype,
        qclass,
        name,
        proto,
        request_bytes,
        dnssec_ok,
        bufsize,
    })
}

/// Reads a presentation-format name up to the first space that no backslash escapes.
fn parse_name<'a>(cursor: &mut Cursor<'a>) -> Result<Cow<'a, str>, Failure> {
    let rest = cursor.rest().as_bytes();
    let mut len = 0;
    loop {
        match rest.get(len) {
            None => return Err(Failure::End),
            Some(b' ') => break,
            Some(b'"') => return Err(Failure::Invalid),
            Some(b'\\') => len += 2,
            Some(_) => len += 1,
        }
    }
    let text = &cursor.rest()[..len];
    cursor.pos += len;
    name::decode(text).map_err(|error| match error {
        name::NameError::Truncated => Failure::End,
        name::NameError::Invalid => Failure::Invalid,
    })
}

struct Reply<'a> {
    rcode: Option<&'a str>,
    flags: Option<Flags>,
    response_bytes: Option<u32>,
    duration: Option<Duration>,
    opcode: Option<u8>,
}

/// Reads `{rcode} {>rflags} {rsize} {duration}` and the combined format's ` "{>opcode}"`.
fn parse_reply<'a>(cursor: &mut Cursor<'a>) -> Result<Reply<'a>, Failure> {
    let rcode = optional(cursor.field_then_space()?, |r| {
        checked(r, is_rcode).map(Some)
    })?;
    let flags = optional(cursor.field_then_space()?, |f| {
        Flags::parse(f).map(Some).ok_or(Failure::Invalid)
    })?;
    let response_bytes = optional(cursor.field_then_space()?, |s| number(s).map(Some))?;
    let duration_text = cursor.field(b' ');
    let duration = optional(duration_text, |d| match parse_duration(d) {
        Some(duration) => Ok(Some(duration)),
        // A number whose unit was cut off by the end of the line.
        None if cursor.at_end() && d.bytes().all(|b| b.is_ascii_digit() || b == b'.') => {
            Err(Failure::End)
        }
        None => Err(Failure::Invalid),
    })?;
    let opcode = parse_opcode(cursor)?;
    Ok(Reply {
        rcode,
        flags,
        response_bytes,
        duration,
        opcode,
    })
}

/// Reads the combined format's ` "{>opcode}"` at the end of the line, if present.
fn parse_opcode(cursor: &mut Cursor<'_>) -> Result<Option<u8>, Failure> {
    if cursor.at_end() {
        return Ok(None);
    }
    cursor.expect(b' ')?;
    cursor.expect(b'"')?;
    let opcode = cursor.field(b'"');
    cursor.expect(b'"')?;
    if !cursor.at_end() {
        return Err(Failure::Invalid);
    }
    let opcode: u8 = parse_decimal(opcode).ok_or(Failure::Invalid)?;
    if opcode > 15 {
        return Err(Failure::Invalid);
    }
    Ok(Some(opcode))
}

/// Applies `parse` unless the field is CoreDNS's empty value `-`.
fn optional<'a, T>(
    text: &'a str,
    parse: impl FnOnce(&'a str) -> Result<Option<T>, Failure>,
) -> Result<Option<T>, Failure> {
    if text == "-" { Ok(None) } else { parse(text) }
}

fn checked(text: &str, valid: impl Fn(&str) -> bool) -> Result<&str, Failure> {
    if valid(text) {
        Ok(text)
    } else {
        Err(Failure::Invalid)
    }
}

/// Type and class mnemonics: `A`, `NSAP-PTR`, `TYPE65534`, `CLASS255`.
fn is_mnemonic(text: &str) -> bool {
    (1..=16).contains(&text.len())
        && text.as_bytes()[0].is_ascii_uppercase()
        && text
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
}

/// Checks for an rcode name (`NOERROR`, `BADCOOKIE`) or the number CoreDNS prints for a
/// code it has no name for (an extended rcode fits in 12 bits).
fn is_rcode(text: &str) -> bool {
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return parse_decimal::<u16>(text).is_some_and(|code| code < 4096);
    }
    is_mnemonic(text)
}

fn number(text: &str) -> Result<u32, Failure> {
    parse_decimal(text).ok_or(Failure::Invalid)
}

/// Parses a plain decimal (no sign, no spaces), at most 19 digits so that it cannot
/// overflow a `u64` before the range check.
fn parse_decimal<T: TryFrom<u64>>(text: &str) -> Option<T> {
    if text.is_empty() || text.len() > 19 {
        return None;
    }
    let mut value = 0u64;
    for b in text.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u64::from(b - b'0');
    }
    T::try_from(value).ok()
}

/// Parses a duration as CoreDNS prints it: seconds with a fraction (`0.037990251s`, since
/// 1.2.6) or Go's `time.Duration` text (`1.234ms`, `870µs`, `1m2.5s`, before 1.2.6).
pub fn parse_duration(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    let mut rest = text.as_bytes();
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let (value, used) = parse_decimal_fraction(rest)?;
        rest = &rest[used..];
        let (unit_nanos, unit_len) = duration_unit(rest)?;
        rest = &rest[unit_len..];
        nanos = nanos.checked_add(value.scaled(unit_nanos))?;
    }
    let nanos = u64::try_from(nanos).ok()?;
    Some(Duration::from_nanos(nanos))
}

/// A decimal number as integer and fractional digits, kept exact.
struct Decimal {
    integer: u128,
    fraction: u128,
    fraction_scale: u128,
}

impl Decimal {
    fn scaled(&self, unit_nanos: u128) -> u128 {
        self.integer.saturating_mul(unit_nanos)
            + self.fraction.saturating_mul(unit_nanos) / self.fraction_scale
    }
}

/// Reads `123` or `1.5` (at least one digit); returns it and the bytes used. Fraction digits
/// beyond the eighteenth are read and ignored, which is below a nanosecond for any unit.
fn parse_decimal_fraction(b: &[u8]) -> Option<(Decimal, usize)> {
    let mut pos = 0;
    let mut integer: u128 = 0;
    while let Some(&c) = b.get(pos).filter(|c| c.is_ascii_digit()) {
        integer = integer.checked_mul(10)?.checked_add(u128::from(c - b'0'))?;
        if integer > u128::from(u64::MAX) {
            return None;
        }
        pos += 1;
    }
    let integer_digits = pos;
    let mut fraction: u128 = 0;
    let mut fraction_scale: u128 = 1;
    if b.get(pos) == Some(&b'.') {
        pos += 1;
        while let Some(&c) = b.get(pos).filter(|c| c.is_ascii_digit()) {
            if fraction_scale < 1_000_000_000_000_000_000 {
                fraction = fraction * 10 + u128::from(c - b'0');
                fraction_scale *= 10;
            }
            pos += 1;
        }
    }
    let has_digits = integer_digits > 0 || fraction_scale > 1;
    has_digits.then_some((
        Decimal {
            integer,
            fraction,
            fraction_scale,
        },
        pos,
    ))
}

/// Reads a Go duration unit; returns nanoseconds per unit and the bytes used. `µ` may be
/// the micro sign (U+00B5, what Go prints) or the Greek letter mu (U+03BC).
fn duration_unit(b: &[u8]) -> Option<(u128, usize)> {
    const UNITS: [(&[u8], u128); 8] = [
        (b"ns", 1),
        (b"us", 1_000),
        ("\u{b5}s".as_bytes(), 1_000),
        ("\u{3bc}s".as_bytes(), 1_000),
        (b"ms", 1_000_000),
        (b"s", 1_000_000_000),
        (b"m", 60_000_000_000),
        (b"h", 3_600_000_000_000),
    ];
    UNITS
        .iter()
        .find(|(unit, _)| b.starts_with(unit))
        .map(|&(unit, nanos)| (nanos, unit.len()))
}

/// Classifies a line that is not a query. `text` is the line after its `[LEVEL] ` prefix.
fn classify_message(text: &str, level: Level) -> SkipKind {
    if is_reload_message(text) {
        return SkipKind::Reload;
    }
    if is_banner(text) {
        return SkipKind::Banner;
    }
    if looks_like_address_start(text) {
        // A query line cut off inside its client address.
        return SkipKind::Truncated;
    }
    if level == Level::Info {
        return SkipKind::Info;
    }
    if is_panic_line(text) {
        return SkipKind::Panic;
    }
    classify_klog(text).unwrap_or(SkipKind::Garbled)
}

fn is_reload_message(text: &str) -> bool {
    text == "Reloading" || text == "Reloading complete" || text.starts_with("plugin/reload: ")
}

/// The startup banner: one line per server address (`.:53`, `dns://example.org.:53`,
/// `tls://.:853`), the version, and `linux/amd64, go1.22.5, 1a2b3c4`.
fn is_banner(text: &str) -> bool {
    if text.starts_with("CoreDNS-") && !text.contains(' ') {
        return true;
    }
    if let Some((platform, rest)) = text.split_once(", go") {
        return platform.contains('/')
            && !platform.contains(' ')
            && rest.starts_with(|c: char| c.is_ascii_digit());
    }
    is_server_address(text)
}

fn is_server_address(text: &str) -> bool {
    let Some((zone, port)) = text.rsplit_once(':') else {
        return false;
    };
    let zone = zone.split_once("://").map_or(zone, |(_, zone)| zone);
    let zone_ok = zone == "." || zone.ends_with('.') || zone.ends_with(']');
    zone_ok && !text.contains(' ') && parse_decimal::<u16>(port).is_some()
}

/// Lines of a Go panic or fatal error: the message, the signal line, goroutine headers,
/// stack frames (`pkg.(*T).Method(…)` followed by a tab-indented `file.go:123 +0x1f`), and
/// the exit status.
fn is_panic_line(text: &str) -> bool {
    const PREFIXES: [&str; 7] = [
        "panic: ",
        "fatal error: ",
        "[signal ",
        "goroutine ",
        "created by ",
        "exit status ",
        "\t",
    ];
    if PREFIXES.iter().any(|p| text.starts_with(p)) {
        return true;
    }
    // A stack frame: a function path without spaces before its argument list.
    match text.find('(') {
        Some(open) if open > 0 => {
            let function = &text[..open];
            !function.contains(' ')
                && function.contains('.')
                && (text.ends_with(')') || text.ends_with(")..."))
        }
        _ => false,
    }
}

/// Kubernetes client-go (klog) lines, which the kubernetes plugin prints:
/// `E0821 09:14:03.118349       1 reflector.go:138] …`.
fn classify_klog(text: &str) -> Option<SkipKind> {
    let b = text.as_bytes();
    let shaped = b.len() > 21
        && b[1..5].iter().all(u8::is_ascii_digit)
        && b[5] == b' '
        && b[8] == b':'
        && b[11] == b':'
        && b[14] == b'.';
    if !shaped {
        return None;
    }
    match b[0] {
        b'I' => Some(SkipKind::Info),
        b'W' => Some(SkipKind::Warning),
        b'E' => Some(SkipKind::Error),
        b'F' => Some(SkipKind::Fatal),
        _ => None,
    }
}

impl fmt::Display for Query<'_> {
    /// Writes the query as CoreDNS's `log` plugin would: the common format, with ` "opcode"`
    /// when there is one, and with the date and without a message id when the query came
    /// from a format that had them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[INFO] ")?;
        match (self.client, self.zone) {
            (IpAddr::V4(v4), _) => write!(f, "{v4}")?,
            (IpAddr::V6(v6), None) => write!(f, "[{v6}]")?,
            (IpAddr::V6(v6), Some(zone)) => write!(f, "[{v6}%{zone}]")?,
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        f.write_str(" - ")?;
        if let Some(at) = self.timestamp {
            let date = at.to_datetime().format("%d/%b/%Y:%H:%M:%S +0000");
            write!(f, "[{date}] ")?;
        }
        if let Some(id) = self.id {
            write!(f, "{id} ")?;
        }

        let mut name = String::with_capacity(self.name.len() + 8);
        name::encode(&self.name, &mut name);
        let (qtype, qclass, proto) = (self.qtype, self.qclass, self.proto);
        let (size, dnssec_ok, bufsize) = (self.request_bytes, self.dnssec_ok, self.bufsize);
        write!(
            f,
            "\"{qtype} {qclass} {name} {proto} {size} {dnssec_ok} {bufsize}\" "
        )?;

        write_or_dash(f, self.rcode)?;
        f.write_str(" ")?;
        write_or_dash(f, self.flags)?;
        f.write_str(" ")?;
        write_or_dash(f, self.response_bytes)?;
        f.write_str(" ")?;
        match self.duration {
            Some(duration) => write_seconds(f, duration)?,
            None => f.write_str("-")?,
        }
        if let Some(opcode) = self.opcode {
            write!(f, " \"{opcode}\"")?;
        }
        Ok(())
    }
}

fn write_or_dash(f: &mut fmt::Formatter<'_>, value: Option<impl fmt::Display>) -> fmt::Result {
    match value {
        Some(value) => write!(f, "{value}"),
        None => f.write_str("-"),
    }
}

/// Seconds as Go's `strconv.FormatFloat(d.Seconds(), 'f', -1, 64)` prints them, exact to the
/// nanosecond: `0.037990251s`, `5s`.
fn write_seconds(f: &mut fmt::Formatter<'_>, duration: Duration) -> fmt::Result {
    let nanos = duration.subsec_nanos();
    if nanos == 0 {
        return write!(f, "{}s", duration.as_secs());
    }
    let fraction = format!("{nanos:09}");
    write!(
        f,
        "{}.{}s",
        duration.as_secs(),
        fraction.trim_end_matches('0')
    )
}

#[cfg(test)]
mod tests;

//! Query names: from CoreDNS's presentation format to the canonical form that counts are
//! kept under, and back.
//!
//! CoreDNS prints a name the way `miekg/dns` presents it: a backslash before a special
//! character (`\ `, `\"`, `\(`, `\;` …) and `\DDD` (three decimal digits) for any other byte
//! outside printable ASCII. The canonical form decodes those escapes and lower-cases ASCII
//! letters (DNS names compare case-insensitively, RFC 4343), except where decoding would
//! lose information:
//!
//! - `\.` and `\\` stay escaped, so that every unescaped dot is still a label boundary;
//! - bytes that are not printable (controls) or not part of valid UTF-8 stay as `\DDD`.
//!
//! The canonical form is a fixed point: parsing its presentation again yields it unchanged.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The reason a name could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    /// The text ended inside an escape.
    Truncated,
    /// An escape is malformed (`\25x`, `\300`) or the name is empty.
    Invalid,
}

/// Decodes a presentation-format name into its canonical form, borrowing when the text
/// already is canonical (no escapes to decode, no upper-case letters).
pub fn decode(text: &str) -> Result<Cow<'_, str>, NameError> {
    if text.is_empty() {
        return Err(NameError::Invalid);
    }
    let bytes = text.as_bytes();
    let first_change = bytes
        .iter()
        .position(|&b| b == b'\\' || b.is_ascii_uppercase());
    let Some(first_change) = first_change else {
        return Ok(Cow::Borrowed(text));
    };
    if !needs_rewrite(&bytes[first_change..])? {
        return Ok(Cow::Borrowed(text));
    }
    decode_owned(text).map(Cow::Owned)
}

/// Checks whether the tail from the first backslash or capital needs rewriting, and checks
/// each escape for validity on the way. Names made of kept escapes only (`\.`, `\\`, control bytes as
/// `\DDD`) stay borrowed.
fn needs_rewrite(bytes: &[u8]) -> Result<bool, NameError> {
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_uppercase() {
            return Ok(true);
        }
        if b != b'\\' {
            i += 1;
            continue;
        }
        match read_escape(bytes, i)? {
            (Escape::Kept, used) => i += used,
            (Escape::Rewritten, _) => return Ok(true),
        }
    }
    Ok(false)
}

enum Escape {
    /// An escape that the canonical form keeps as it is written.
    Kept,
    /// An escape that the canonical form writes differently: decoded, or `\046` as `\.`.
    Rewritten,
}

/// Reads the escape starting at the backslash at `start`; returns its kind and length.
fn read_escape(bytes: &[u8], start: usize) -> Result<(Escape, usize), NameError> {
    let next = *bytes.get(start + 1).ok_or(NameError::Truncated)?;
    if !next.is_ascii_digit() {
        let kind = if next == b'.' || next == b'\\' {
            Escape::Kept
        } else {
            Escape::Rewritten
        };
        return Ok((kind, 2));
    }
    let digits = bytes
        .get(start + 1..start + 4)
        .ok_or(NameError::Truncated)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(NameError::Invalid);
    }
    let value = digits
        .iter()
        .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    let value = u8::try_from(value).map_err(|_| NameError::Invalid)?;
    let kind = match value {
        // Rewritten as `\.` and `\\`.
        b'.' | b'\\' => Escape::Rewritten,
        control if control < 0x20 || control == 0x7f => Escape::Kept,
        _ => Escape::Rewritten,
    };
    Ok((kind, 4))
}

fn decode_owned(text: &str) -> Result<String, NameError> {
    let bytes = text.as_bytes();
    // Decoded bytes; kept escapes are written into it as text, which is ASCII.
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'\\' {
            out.push(b.to_ascii_lowercase());
            i += 1;
            continue;
        }
        let (_, used) = read_escape(bytes, i)?;
        let escaped = &bytes[i + 1..i + used];
        let value = if used == 4 {
            escaped
                .iter()
                .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')) as u8
        } else {
            escaped[0]
        };
        if value == b'.' || value == b'\\' {
            out.extend_from_slice(&[b'\\', value]);
        } else if value < 0x20 || value == 0x7f {
            push_decimal_escape(&mut out, value);
        } else if used == 2 && !value.is_ascii() {
            // A backslash before a non-ASCII character: the character itself follows.
            let len = utf8_len(value);
            out.extend_from_slice(&bytes[i + 1..(i + 1 + len).min(bytes.len())]);
            i += 1 + len;
            continue;
        } else {
            out.push(value.to_ascii_lowercase());
        }
        i += used;
    }
    Ok(valid_utf8_or_escaped(&out))
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

fn push_decimal_escape(out: &mut Vec<u8>, value: u8) {
    out.push(b'\\');
    out.push(b'0' + value / 100);
    out.push(b'0' + value / 10 % 10);
    out.push(b'0' + value % 10);
}

/// Keeps valid UTF-8 as text and writes every byte of an invalid sequence as `\DDD`.
fn valid_utf8_or_escaped(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        for &b in chunk.invalid() {
            let _ = write!(text, "\\{b:03}");
        }
    }
    text
}

/// Writes a canonical name in presentation format, as CoreDNS would print it: special
/// characters behind a backslash and non-ASCII bytes as `\DDD`.
pub fn encode(canonical: &str, out: &mut String) {
    let bytes = canonical.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' {
            // Kept escapes are already in presentation form; a stray backslash is escaped.
            let escape_len = match bytes.get(i + 1) {
                Some(b'.' | b'\\') => 2,
                Some(d) if d.is_ascii_digit() => 4,
                _ => 0,
            };
            match canonical.get(i..i + escape_len) {
                Some(escape) if escape_len > 0 => {
                    out.push_str(escape);
                    i += escape_len;
                }
                _ => {
                    out.push_str("\\\\");
                    i += 1;
                }
            }
            continue;
        }
        match b {
            b' ' | b'"' | b'(' | b')' | b';' | b'@' | b'$' => {
                out.push('\\');
                out.push(char::from(b));
            }
            0x21..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
        i += 1;
    }
}

/// Writes labels of arbitrary bytes in presentation format, as `miekg/dns` does, each
/// followed by a dot.
#[cfg(test)]
pub(crate) fn present(labels: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for label in labels {
        for &b in label {
            match b {
                b'.' | b' ' | b'"' | b'(' | b')' | b';' | b'@' | b'$' | b'\\' => {
                    out.push('\\');
                    out.push(char::from(b));
                }
                0x21..=0x7e => out.push(char::from(b)),
                _ => out.push_str(&format!("\\{b:03}")),
            }
        }
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decoded(text: &str) -> String {
        decode(text).unwrap().into_owned()
    }

    #[test]
    fn plain_name_is_borrowed() {
        assert!(matches!(decode("www.example.com."), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn upper_case_is_lowered() {
        assert_eq!(decoded("WWW.Example.COM."), "www.example.com.");
    }

    #[test]
    fn escaped_space_and_quote_decode() {
        assert_eq!(
            decoded(r#"my\ printer\"s._ipp._tcp.local."#),
            r#"my printer"s._ipp._tcp.local."#
        );
    }

    #[test]
    fn decimal_escape_of_letter_decodes_and_lowers() {
        assert_eq!(decoded(r"\065bc.example."), "abc.example.");
    }

    #[test]
    fn escaped_dot_and_backslash_stay() {
        assert!(matches!(decode(r"a\.b\\c.example."), Ok(Cow::Borrowed(_))));
        assert_eq!(decoded(r"a\046b\092c.example."), r"a\.b\\c.example.");
    }

    #[test]
    fn control_byte_stays_escaped() {
        assert!(matches!(decode(r"a\009b.example."), Ok(Cow::Borrowed(_))));
        assert_eq!(decoded(r"A\009b.example."), r"a\009b.example.");
    }

    #[test]
    fn utf8_bytes_decode_to_text() {
        assert_eq!(decoded(r"caf\195\169.example."), "café.example.");
    }

    #[test]
    fn invalid_utf8_bytes_stay_escaped() {
        assert_eq!(decoded(r"x\255y\195.example."), r"x\255y\195.example.");
    }

    #[test]
    fn malformed_escapes_are_rejected() {
        assert_eq!(decode(r"a\25x.example."), Err(NameError::Invalid));
        assert_eq!(decode(r"a\300.example."), Err(NameError::Invalid));
        assert_eq!(decode(r"example.\"), Err(NameError::Truncated));
        assert_eq!(decode(r"example.\25"), Err(NameError::Truncated));
        assert_eq!(decode(""), Err(NameError::Invalid));
    }

    #[test]
    fn encode_escapes_specials() {
        let mut out = String::new();
        encode("my printer\"s.café.", &mut out);
        assert_eq!(out, r#"my\ printer\"s.caf\195\169."#);
    }

    proptest! {
        #[test]
        fn decode_never_panics(text in "\\PC{0,64}") {
            let _ = decode(&text);
        }

        #[test]
        fn canonical_form_is_fixed_point(labels in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..12), 1..5)) {
            let presented = present(&labels);
            let canonical = decoded(&presented);
            let mut again = String::new();
            encode(&canonical, &mut again);
            prop_assert_eq!(decoded(&again), canonical.clone());
            prop_assert_eq!(decoded(&canonical), canonical);
        }

        #[test]
        fn decoding_keeps_label_count(labels in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..12), 1..5)) {
            let canonical = decoded(&present(&labels));
            let boundaries = count_unescaped_dots(&canonical);
            prop_assert_eq!(boundaries, labels.len());
        }
    }

    fn count_unescaped_dots(text: &str) -> usize {
        let bytes = text.as_bytes();
        let mut count = 0;
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => i += 4,
                b'\\' => i += 2,
                b'.' => {
                    count += 1;
                    i += 1;
                }
                _ => i += 1,
            }
        }
        count
    }
}

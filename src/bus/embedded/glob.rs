//! Glob matching with the semantics of Redis's `PSUBSCRIBE` patterns (`stringmatchlen` in
//! Redis's `util.c`, version 7.0), so a pattern matches the same channels on both backends.
//!
//! - `*` matches any run of bytes, including `:` and `/`; `?` matches one byte.
//! - `[abc]`, `[a-z]` and `[^a-z]` match one byte of (or, with `^`, not of) the class; a range
//!   may be written backwards (`[z-a]`), and an unterminated class ends at the pattern's end.
//! - `\x` matches `x` literally, inside and outside classes.
//!
//! Matching works on bytes, as Redis does, and compares bytes of ranges as signed `char`s the
//! way Redis's C code does on x86-64 and arm64 Linux builds.

/// Deepest recursion of `*`, as in Redis: deeper patterns do not match, so a pattern made of
/// thousands of stars cannot exhaust the stack.
const MAX_NESTING: u32 = 1000;

/// Whether `channel` matches the Redis glob `pattern`.
pub fn matches(pattern: &str, channel: &str) -> bool {
    let mut skip_longer = false;
    match_bytes(pattern.as_bytes(), channel.as_bytes(), &mut skip_longer, 0)
}

/// The byte at `index`, or 0 past the end: the C code reads the string's terminating NUL there.
fn at(bytes: &[u8], index: usize) -> u8 {
    bytes.get(index).copied().unwrap_or(0)
}

/// A byte as the C code compares it in ranges: `char` is signed.
fn signed(byte: u8) -> i32 {
    i32::from(byte as i8)
}

fn match_bytes(pattern: &[u8], string: &[u8], skip_longer: &mut bool, nesting: u32) -> bool {
    if nesting > MAX_NESTING {
        return false;
    }
    let (mut p, mut s) = (0usize, 0usize);
    while p < pattern.len() && s < string.len() {
        match pattern[p] {
            b'*' => {
                while p + 1 < pattern.len() && pattern[p + 1] == b'*' {
                    p += 1;
                }
                if p + 1 == pattern.len() {
                    return true;
                }
                while s < string.len() {
                    if match_bytes(&pattern[p + 1..], &string[s..], skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    s += 1;
                }
                // The rest of the pattern matches nowhere in the rest of the string, so an
                // earlier `*` taking more of the string cannot help either.
                *skip_longer = true;
                return false;
            }
            b'?' => s += 1,
            b'[' => {
                let (matched, end) = match_class(pattern, p + 1, string[s]);
                if !matched {
                    return false;
                }
                p = end;
                s += 1;
            }
            b'\\' if p + 2 <= pattern.len() => {
                p += 1;
                if pattern[p] != string[s] {
                    return false;
                }
                s += 1;
            }
            literal => {
                if literal != string[s] {
                    return false;
                }
                s += 1;
            }
        }
        p += 1;
        if s == string.len() {
            while at(pattern, p) == b'*' {
                p += 1;
            }
            break;
        }
    }
    p >= pattern.len() && s == string.len()
}

/// Matches one byte against the class that starts at `start` (just after `[`). Returns
/// whether it matched and the index of the class's last byte (its `]`, or the pattern's last
/// byte when the class is not terminated).
fn match_class(pattern: &[u8], start: usize, byte: u8) -> (bool, usize) {
    let mut p = start;
    let negated = at(pattern, p) == b'^';
    if negated {
        p += 1;
    }
    let mut matched = false;
    loop {
        let left = pattern.len().saturating_sub(p);
        if at(pattern, p) == b'\\' && left >= 2 {
            p += 1;
            if pattern[p] == byte {
                matched = true;
            }
        } else if at(pattern, p) == b']' && left >= 1 {
            break;
        } else if left == 0 {
            p -= 1;
            break;
        } else if left >= 3 && pattern[p + 1] == b'-' {
            let (mut low, mut high) = (signed(pattern[p]), signed(pattern[p + 2]));
            if low > high {
                std::mem::swap(&mut low, &mut high);
            }
            p += 2;
            if (low..=high).contains(&signed(byte)) {
                matched = true;
            }
        } else if pattern[p] == byte {
            matched = true;
        }
        p += 1;
    }
    (matched != negated, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_and_question_mark() {
        assert!(matches("almagest:q:*", "almagest:q:wiki"));
        assert!(matches("almagest:q:*", "almagest:q:"));
        // The C loop never runs on an empty channel, so not even `*` matches it.
        assert!(!matches("*", ""));
        assert!(matches("a*b*c", "a:x/y:b--c"));
        assert!(!matches("a*b*c", "a:x/y:b--"));
        assert!(matches("h?llo", "hello"));
        assert!(!matches("h?llo", "hllo"));
        assert!(matches("**a**", "bab"));
        assert!(!matches("", "a"));
        assert!(matches("", ""));
    }

    #[test]
    fn classes_ranges_and_negation() {
        assert!(matches("h[ae]llo", "hallo"));
        assert!(!matches("h[ae]llo", "hillo"));
        assert!(matches("h[^e]llo", "hallo"));
        assert!(!matches("h[^e]llo", "hello"));
        assert!(matches("h[a-b]llo", "hbllo"));
        assert!(matches("h[b-a]llo", "hallo"));
        assert!(!matches("h[a-b]llo", "hcllo"));
        assert!(!matches("x[]", "x]"));
        assert!(!matches("x[", "x"));
        assert!(matches("x[ab", "xa"));
        assert!(matches("x[a-", "x-"));
        assert!(matches("[\\]]", "]"));
    }

    #[test]
    fn escapes_match_literally() {
        assert!(matches("a\\*b", "a*b"));
        assert!(!matches("a\\*b", "axb"));
        assert!(matches("a\\?", "a?"));
        assert!(matches("a\\", "a\\"));
    }

    #[test]
    fn deep_star_patterns_stay_bounded() {
        let pattern = "a*".repeat(2_000) + "b";
        let channel = "a".repeat(3_000);
        assert!(!matches(&pattern, &channel));
    }
}

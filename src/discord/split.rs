//! Splitting of long plain text into Discord messages.
//!
//! Discord rejects message content over 2000 characters, counted as Unicode scalar values.
//! Text is cut after a line break where the window has one, else after a space in the second
//! half of the window, else at a character boundary. That boundary is moved back so that it
//! does not split a joined emoji or a run of backticks. A code block that spans a cut is closed at the end of
//! one part and reopened, with its language, at the start of the next. Concatenating the
//! [`Part::body`] of every part gives back the text exactly.

/// Discord's maximum message content length, in Unicode scalar values.
pub const MAX_CONTENT_CHARS: usize = 2000;

/// Appended to a part that ends inside a code block. Its length is reserved in every part.
const FENCE_CLOSE: &str = "\n```";

/// Maximum number of characters a cut moves back to avoid splitting a joined emoji or a
/// backtick run. A longer sequence is cut, and the text is still delivered whole.
const MAX_CUT_BACKTRACK: usize = 16;

/// One message's worth of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Fence line that reopens a code block continued from the previous part (such as
    /// "```rust\n"), or empty.
    pub reopen: String,
    /// The slice of the original text this part carries.
    pub body: String,
    /// Fence that closes a code block continued in the next part, or empty.
    pub close: &'static str,
}

impl Part {
    /// Builds the content to send: reopening fence, body, closing fence.
    pub fn render(&self) -> String {
        let mut content = String::with_capacity(self.reopen.len() + self.body.len() + 4);
        content.push_str(&self.reopen);
        content.push_str(&self.body);
        content.push_str(self.close);
        content
    }
}

/// Splits `text` into parts whose rendered content has at most `max_chars` characters.
///
/// `max_chars` must leave room for a reopened fence; values below 64 are raised to 64.
pub fn split_text(text: &str, max_chars: usize) -> Vec<Part> {
    let max_chars = max_chars.max(64);
    let chars: Vec<char> = text.chars().collect();
    let mut parts = Vec::new();
    let mut start = 0;
    let mut fence = FenceState::default();

    loop {
        let reopen = fence.reopen_line();
        let remaining = chars.len() - start;
        if reopen.is_empty() && remaining <= max_chars {
            parts.push(Part {
                reopen,
                body: chars[start..].iter().collect(),
                close: "",
            });
            return parts;
        }

        // Room for the body: the reopened fence and a closing fence come out of the budget.
        let budget = max_chars - reopen.chars().count() - FENCE_CLOSE.len();
        if remaining <= budget {
            parts.push(Part {
                reopen,
                body: chars[start..].iter().collect(),
                close: "",
            });
            return parts;
        }

        let end = start + cut_offset(&chars[start..], budget);
        let body: String = chars[start..end].iter().collect();
        fence.scan(&body);
        let close = if fence.open { FENCE_CLOSE } else { "" };
        parts.push(Part {
            reopen,
            body,
            close,
        });
        start = end;
    }
}

/// Chooses where to cut `rest`, which is longer than `budget`: just after the last line break
/// within the budget, else after the last space in its second half, else at the budget moved
/// back off a joined character sequence.
fn cut_offset(rest: &[char], budget: usize) -> usize {
    let window = &rest[..budget];
    if let Some(newline) = window.iter().rposition(|c| *c == '\n') {
        return newline + 1;
    }
    let half = budget / 2;
    if let Some(space) = window[half..].iter().rposition(|c| c.is_whitespace()) {
        return half + space + 1;
    }

    let floor = budget.saturating_sub(MAX_CUT_BACKTRACK).max(1);
    (floor..=budget)
        .rev()
        .find(|cut| is_clean_cut(rest[cut - 1], rest[*cut]))
        .unwrap_or(budget)
}

/// Returns whether a cut between `before` and `after` keeps joined sequences whole: no cut after a
/// zero-width joiner or a backtick run's inner backtick, and none before a joiner, a variation
/// selector, a skin-tone modifier or a combining mark.
fn is_clean_cut(before: char, after: char) -> bool {
    let joins_next = before == '\u{200D}' || (before == '`' && after == '`');
    let joins_previous = matches!(after,
        '\u{200D}' | '\u{FE00}'..='\u{FE0F}' | '\u{1F3FB}'..='\u{1F3FF}'
        | '\u{0300}'..='\u{036F}' | '\u{20D0}'..='\u{20FF}' | '\u{E0020}'..='\u{E007F}')
        || is_regional_indicator(before) && is_regional_indicator(after);
    !joins_next && !joins_previous
}

fn is_regional_indicator(c: char) -> bool {
    ('\u{1F1E6}'..='\u{1F1FF}').contains(&c)
}

/// Code-block state at the end of the text scanned so far.
#[derive(Debug, Default)]
struct FenceState {
    open: bool,
    /// Info string of the open block (its language), such as "rust".
    language: String,
    /// Whether the scan stopped in the middle of a line.
    mid_line: bool,
}

impl FenceState {
    /// Updates the state with the next slice of text. A line whose first non-blank characters
    /// are ``` opens or closes a block, unless it also closes itself (```x```).
    fn scan(&mut self, text: &str) {
        for segment in text.split_inclusive('\n') {
            let continues_line = std::mem::replace(&mut self.mid_line, !segment.ends_with('\n'));
            if continues_line {
                continue;
            }
            let line = segment.trim_start_matches([' ', '\t']);
            let Some(info) = line.strip_prefix("```") else {
                continue;
            };
            if info.contains("```") {
                continue;
            }
            if self.open {
                self.open = false;
                self.language.clear();
            } else {
                self.open = true;
                self.language = info.split_whitespace().next().unwrap_or("").to_owned();
            }
        }
    }

    fn reopen_line(&self) -> String {
        if self.open {
            format!("```{}\n", self.language)
        } else {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(parts: &[Part]) -> String {
        parts.iter().map(|part| part.body.as_str()).collect()
    }

    fn max_rendered(parts: &[Part]) -> usize {
        parts
            .iter()
            .map(|part| part.render().chars().count())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn short_text_is_one_part() {
        let parts = split_text("hello", MAX_CONTENT_CHARS);
        assert_eq!(
            parts,
            vec![Part {
                reopen: String::new(),
                body: "hello".into(),
                close: ""
            }]
        );
    }

    #[test]
    fn exactly_max_is_one_part() {
        let text = "é".repeat(MAX_CONTENT_CHARS);
        assert_eq!(split_text(&text, MAX_CONTENT_CHARS).len(), 1);
    }

    #[test]
    fn one_over_max_is_two_parts() {
        let text = "é".repeat(MAX_CONTENT_CHARS + 1);
        let parts = split_text(&text, MAX_CONTENT_CHARS);
        assert_eq!(parts.len(), 2);
        assert_eq!(joined(&parts), text);
    }

    #[test]
    fn cuts_after_last_line_break() {
        let text = format!("{}\n{}", "a".repeat(1500), "b".repeat(1000));
        let parts = split_text(&text, MAX_CONTENT_CHARS);
        assert_eq!(parts[0].body, format!("{}\n", "a".repeat(1500)));
        assert_eq!(parts[1].body, "b".repeat(1000));
    }

    #[test]
    fn cuts_after_space_without_line_break() {
        let text = format!("{} {}", "a".repeat(1500), "b".repeat(1000));
        let parts = split_text(&text, MAX_CONTENT_CHARS);
        assert_eq!(parts[0].body, format!("{} ", "a".repeat(1500)));
    }

    #[test]
    fn hard_cut_keeps_flag_whole() {
        // A flag is two regional indicators; the cut must not fall between them.
        let flag = "\u{1F1E9}\u{1F1EA}";
        let text = format!("{}{}", "x".repeat(MAX_CONTENT_CHARS - 5), flag.repeat(10));
        let parts = split_text(&text, MAX_CONTENT_CHARS);
        let first = parts[0].body.chars().count();
        assert_eq!((first - (MAX_CONTENT_CHARS - 5)) % 2, 0);
        assert_eq!(joined(&parts), text);
    }

    #[test]
    fn hard_cut_keeps_zwj_sequence_whole() {
        let family = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}";
        let text = format!("{}{}", "x".repeat(MAX_CONTENT_CHARS - 6), family.repeat(5));
        let parts = split_text(&text, MAX_CONTENT_CHARS);
        let last_of_first = parts[0].body.chars().last();
        assert_ne!(last_of_first, Some('\u{200D}'));
        assert!(!parts[1].body.starts_with('\u{200D}'));
        assert_eq!(joined(&parts), text);
    }

    #[test]
    fn code_block_closed_and_reopened() {
        let code: String = (0..200).map(|i| format!("let line_{i} = {i};\n")).collect();
        let text = format!("before\n```rust\n{code}```\nafter\n");
        let parts = split_text(&text, MAX_CONTENT_CHARS);
        assert!(parts.len() >= 2);
        assert_eq!(parts[0].close, "\n```");
        assert_eq!(parts[1].reopen, "```rust\n");
        assert_eq!(joined(&parts), text);
        assert!(max_rendered(&parts) <= MAX_CONTENT_CHARS);
    }

    #[test]
    fn rendered_parts_have_balanced_fences() {
        let code: String = (0..400)
            .map(|i| format!("{i:04} ---- ---- ----\n"))
            .collect();
        let text = format!("```\n{code}```\ntail");
        for part in split_text(&text, MAX_CONTENT_CHARS) {
            let fences = part
                .render()
                .lines()
                .filter(|line| line.starts_with("```"))
                .count();
            assert_eq!(fences % 2, 0, "unbalanced part: {:?}", part.render());
        }
    }

    #[test]
    fn inline_fence_line_does_not_toggle() {
        let mut state = FenceState::default();
        state.scan("```x```\n");
        assert!(!state.open);
    }

    #[test]
    fn closed_block_needs_no_reopen() {
        let text = format!("```\ncode\n```\n{}", "word ".repeat(600));
        let parts = split_text(&text, MAX_CONTENT_CHARS);
        assert!(parts.iter().all(|part| part.reopen.is_empty()));
    }

    #[test]
    fn empty_text_is_one_empty_part() {
        let parts = split_text("", MAX_CONTENT_CHARS);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].body, "");
    }

    #[test]
    fn long_text_without_breaks_is_lossless() {
        let text: String = "日本語のテキスト🎉".chars().cycle().take(9_001).collect();
        let parts = split_text(&text, MAX_CONTENT_CHARS);
        assert_eq!(joined(&parts), text);
        assert!(max_rendered(&parts) <= MAX_CONTENT_CHARS);
    }
}

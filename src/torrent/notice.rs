//! Notice text for people and event JSON for machines, from a [`TorrentEvent`].
//!
//! Torrent names come from the author of the .torrent file or magnet link, so in notice text
//! they are made inert for Discord: markdown characters are backslash-escaped, every `@` is
//! followed by a zero-width space (so `@everyone`, `@here` and `<@id>` mention nobody), and
//! control and bidirectional-override characters become spaces. The name still reads the
//! same. Events on the bus carry the name unchanged, as a JSON string.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::diff::{EventKind, TorrentEvent};

/// Maximum length of a name in a notice, in characters, so that a notice stays well inside
/// Discord's 2000-character message limit.
const NOTICE_NAME_CHARS: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// A notice for people, with every untrusted part already made inert.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub title: String,
    pub text: String,
    pub level: Level,
    /// Name and value pairs, such as ("Size", "1.5 GiB").
    pub fields: Vec<(String, String)>,
}

impl Notice {
    /// Builds the notification object of the bus wire format, without `route`.
    pub fn to_json(&self, source: &str) -> Value {
        let fields: Vec<Value> = self
            .fields
            .iter()
            .map(|(name, value)| json!({ "name": name, "value": value }))
            .collect();
        json!({
            "text": self.text,
            "title": self.title,
            "level": self.level.as_str(),
            "fields": fields,
            "source": source,
        })
    }
}

/// Builds the notice for an event.
pub fn notice(event: &TorrentEvent) -> Notice {
    let name = inert(&event.name);
    let client = inert(&event.client);
    let mut fields = vec![("Client".to_owned(), client.clone())];
    if let Some(size) = event.size_bytes {
        fields.push(("Size".to_owned(), format_size(size)));
    }
    let (title, text, level) = match event.kind {
        EventKind::Added => (
            "Torrent added",
            format!("Downloading **{name}** on {client}."),
            Level::Info,
        ),
        EventKind::Completed => {
            let mut text = format!("Finished **{name}**");
            if let Some(size) = event.size_bytes {
                text.push_str(&format!(" ({})", format_size(size)));
            }
            if let Some(duration) = event.duration {
                text.push_str(&format!(" in {}", format_duration(duration)));
                fields.push(("Time taken".to_owned(), format_duration(duration)));
            }
            text.push_str(&format!(" on {client}."));
            ("Download finished", text, Level::Info)
        }
        EventKind::Error => {
            let error = inert(event.error.as_deref().unwrap_or("unknown error"));
            (
                "Torrent error",
                format!("**{name}** on {client} stopped with an error: {error}"),
                Level::Warn,
            )
        }
        EventKind::Removed => (
            "Torrent removed",
            format!("**{name}** was removed from {client}."),
            Level::Info,
        ),
    };
    Notice {
        title: title.to_owned(),
        text,
        level,
        fields,
    }
}

/// Builds the `P:events:torrent` message for an event.
pub fn event_json(event: &TorrentEvent, at: DateTime<Utc>) -> Value {
    let mut message = json!({
        "type": event.kind,
        "at": at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "client": event.client,
        "hash": event.hash,
        "name": event.name,
    });
    if let Some(size) = event.size_bytes {
        message["size_bytes"] = json!(size);
    }
    if let Some(duration) = event.duration {
        message["duration_ms"] = json!(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    }
    if let Some(error) = &event.error {
        message["error"] = json!(error);
    }
    message
}

/// Makes untrusted text inert in Discord markdown while keeping how it reads.
pub fn inert(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for (count, character) in text.chars().enumerate() {
        if count == NOTICE_NAME_CHARS {
            out.push('…');
            break;
        }
        match character {
            '\\' | '*' | '_' | '~' | '`' | '|' | '>' | '<' | '#' | '[' | ']' | '(' | ')' | '-'
            | ':' => {
                out.push('\\');
                out.push(character);
            }
            '@' => out.push_str("@\u{200B}"),
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => out.push(' '),
            character if character.is_control() => out.push(' '),
            character => out.push(character),
        }
    }
    out
}

/// Formats a byte count with binary units: `300 B`, `293.0 KiB`, `1.5 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Formats a duration with its two largest units: `45 s`, `3 min 20 s`, `2 h 5 min`, `3 d 4 h`.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (days, hours, minutes, secs) = (
        seconds / 86_400,
        seconds / 3_600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs} s"),
        (0, 0, _) => format!("{minutes} min {secs} s"),
        (0, _, _) => format!("{hours} h {minutes} min"),
        _ => format!("{days} d {hours} h"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::InfoHash;
    use super::*;

    const HOSTILE: &str = "\"Quotes\" & 'more' 🎬 @everyone <@123> **bold** [x](http://e)";

    fn event(kind: EventKind, name: &str) -> TorrentEvent {
        TorrentEvent {
            kind,
            client: "nas".into(),
            hash: InfoHash::parse("52b98ef9d87424faa7e7af0bfba50885ea9d4c0c").unwrap(),
            name: name.into(),
            size_bytes: Some(1_572_864),
            duration: Some(Duration::from_secs(200)),
            error: None,
        }
    }

    /// Renders text as Discord shows it: escapes and zero-width spaces removed.
    fn rendered(text: &str) -> String {
        let mut out = String::new();
        let mut escaped = false;
        for character in text.chars() {
            if character == '\\' && !escaped {
                escaped = true;
                continue;
            }
            escaped = false;
            if character != '\u{200B}' {
                out.push(character);
            }
        }
        out
    }

    #[test]
    fn hostile_name_reads_the_same() {
        assert_eq!(rendered(&inert(HOSTILE)), HOSTILE);
    }

    #[test]
    fn hostile_name_mentions_nobody() {
        let text = notice(&event(EventKind::Completed, HOSTILE)).text;
        assert!(!text.contains("@everyone"), "{text}");
        assert!(!text.contains("<@123>"), "{text}");
    }

    #[test]
    fn hostile_name_adds_no_markdown() {
        let text = inert(HOSTILE);
        assert!(!text.contains("**"), "{text}");
        assert!(!text.contains("]("), "{text}");
    }

    #[test]
    fn newlines_become_spaces() {
        assert_eq!(inert("a\nb\u{202E}c"), "a b c");
    }

    #[test]
    fn long_name_is_cut() {
        let text = inert(&"a".repeat(500));
        assert_eq!(text.chars().count(), NOTICE_NAME_CHARS + 1);
    }

    #[test]
    fn completed_notice_has_size_time_client() {
        let notice = notice(&event(EventKind::Completed, "Film"));
        assert_eq!(
            notice.text,
            "Finished **Film** (1.5 MiB) in 3 min 20 s on nas."
        );
    }

    #[test]
    fn event_keeps_name_unchanged() {
        let at = DateTime::from_timestamp(1_796_402_755, 0).unwrap();
        let message = event_json(&event(EventKind::Completed, HOSTILE), at);
        assert_eq!(message["name"], HOSTILE);
        assert_eq!(message["type"], "torrent.completed");
        assert_eq!(message["duration_ms"], 200_000);
        assert_eq!(message["at"], "2026-12-04T16:45:55.000Z");
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(format_size(300), "300 B");
        assert_eq!(format_size(300_000), "293.0 KiB");
        assert_eq!(format_size(1_610_612_736), "1.5 GiB");
    }

    #[test]
    fn durations_use_two_units() {
        assert_eq!(format_duration(Duration::from_secs(45)), "45 s");
        assert_eq!(format_duration(Duration::from_secs(7_500)), "2 h 5 min");
        assert_eq!(format_duration(Duration::from_secs(273_600)), "3 d 4 h");
    }
}

//! Text of the slash command replies, built from bus messages: registry entries for
//! `/status`, pongs for `/ping`, the builder's `rebuild.result` for `/rebuild`.
//!
//! An interaction reply has at most 2000 characters like any message, so long lists end
//! with a count of the lines left out.

use serde_json::Value;

use super::split::MAX_CONTENT_CHARS;

/// Renders the service registry (values of the `P:services` hash) for `/status`, one line a
/// service, down services first.
pub fn status_text(entries: &[Value]) -> String {
    if entries.is_empty() {
        return "No services registered yet.".to_owned();
    }
    let mut rows: Vec<(bool, String)> = entries
        .iter()
        .map(|entry| {
            let up = entry["state"].as_str() == Some("up");
            let mut line = format!(
                "{} **{}**@{} {}",
                if up { "🟢" } else { "🔴" },
                text(&entry["service"]),
                text(&entry["instance"]),
                text(&entry["version"]),
            );
            if let Some(rtt) = entry["rtt_ms"].as_u64().filter(|_| up) {
                line.push_str(&format!(", {rtt} ms"));
            }
            if let Some(since) = entry["since"].as_str() {
                line.push_str(&format!(
                    ", {} since {since}",
                    if up { "up" } else { "down" }
                ));
            }
            if let Some(restarts) = entry["restarts"].as_u64().filter(|count| *count > 0) {
                line.push_str(&format!(", {restarts} restarts"));
            }
            (up, line)
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    bounded_lines(rows.into_iter().map(|(_, line)| line).collect())
}

/// Renders the pongs received for a `/ping` within the wait.
pub fn ping_text(pongs: &[Value], waited_ms: u64) -> String {
    if pongs.is_empty() {
        return format!("No service answered within {waited_ms} ms.");
    }
    let mut lines: Vec<String> = pongs
        .iter()
        .map(|pong| {
            format!(
                "🏓 **{}**@{} {}, up {}",
                text(&pong["service"]),
                text(&pong["instance"]),
                text(&pong["version"]),
                pong["uptime_ms"]
                    .as_u64()
                    .map_or("?".to_owned(), duration_text),
            )
        })
        .collect();
    lines.sort();
    lines.insert(
        0,
        format!("{} answered within {waited_ms} ms:", pongs.len()),
    );
    bounded_lines(lines)
}

/// Renders the builder's `rebuild.result`.
pub fn rebuild_text(result: &Value) -> String {
    let target = text(&result["target"]);
    let tag = result["tag"]
        .as_str()
        .map(|tag| format!(" {tag}"))
        .unwrap_or_default();
    let message = result["message"].as_str().unwrap_or_default();
    let text = if result["ok"].as_bool() == Some(true) {
        format!("✅ Rebuilt **{target}**{tag}. {message}")
    } else {
        format!("❌ Rebuild of **{target}**{tag} failed: {message}")
    };
    truncate(text.trim_end())
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "?".to_owned(),
        other => other.to_string(),
    }
}

/// Formats milliseconds as the two largest units, such as "3d 4h" or "5m 2s".
fn duration_text(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, hours, minutes) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, _) => format!("{minutes}m {}s", secs % 60),
        (0, _, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h"),
    }
}

/// Joins lines, leaving out the tail with a count when they exceed one message.
fn bounded_lines(lines: Vec<String>) -> String {
    // Room for the "… and N more" line.
    const RESERVE: usize = 32;
    let mut out = String::new();
    let mut used = 0;
    for (index, line) in lines.iter().enumerate() {
        let cost = line.chars().count() + 1;
        if used + cost > MAX_CONTENT_CHARS - RESERVE {
            out.push_str(&format!("… and {} more", lines.len() - index));
            return out;
        }
        out.push_str(line);
        out.push('\n');
        used += cost;
    }
    out.pop();
    out
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_CONTENT_CHARS - 1) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn status_lists_down_first() {
        let entries = [
            json!({"service":"api","instance":"a","version":"1.0","state":"up","rtt_ms":3}),
            json!({"service":"torrent","instance":"a","version":"1.0","state":"down",
                   "since":"2026-01-01T00:00:00Z"}),
        ];
        let text = status_text(&entries);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "🔴 **torrent**@a 1.0, down since 2026-01-01T00:00:00Z"
        );
        assert_eq!(lines[1], "🟢 **api**@a 1.0, 3 ms");
    }

    #[test]
    fn status_empty_registry() {
        assert_eq!(status_text(&[]), "No services registered yet.");
    }

    #[test]
    fn status_long_list_bounded() {
        let entries: Vec<Value> = (0..500)
            .map(|index| json!({"service": format!("service-{index}"), "state": "up"}))
            .collect();
        let text = status_text(&entries);
        assert!(text.chars().count() <= MAX_CONTENT_CHARS);
        assert!(text.ends_with("more"), "{text}");
    }

    #[test]
    fn ping_lists_pongs() {
        let pongs =
            [json!({"service":"api","instance":"a","version":"1.0","uptime_ms":90_061_000})];
        assert_eq!(
            ping_text(&pongs, 2000),
            "1 answered within 2000 ms:\n🏓 **api**@a 1.0, up 1d 1h"
        );
    }

    #[test]
    fn ping_without_pongs() {
        assert_eq!(ping_text(&[], 2000), "No service answered within 2000 ms.");
    }

    #[test]
    fn rebuild_success_and_failure() {
        let ok =
            json!({"type":"rebuild.result","target":"web","tag":"v2","ok":true,"message":"done"});
        assert_eq!(rebuild_text(&ok), "✅ Rebuilt **web** v2. done");
        let failed =
            json!({"type":"rebuild.result","target":"web","ok":false,"message":"no asset"});
        assert_eq!(
            rebuild_text(&failed),
            "❌ Rebuild of **web** failed: no asset"
        );
    }
}

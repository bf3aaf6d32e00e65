//! The builder's wire formats: `rebuild` and `rollback` commands from the control channel,
//! the `rebuild.result` reply, `build.*` events, and the text of its notices.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::build::{BuildFailure, BuildReport};

/// A builder command from the control channel.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BuilderCommand {
    /// Builds the newest release, or the release of `tag`, even if it was built before.
    Rebuild {
        target: String,
        #[serde(default)]
        tag: Option<String>,
        #[serde(default)]
        id: Option<Value>,
        #[serde(default)]
        reply_to: Option<String>,
    },
    /// Switches back to the release installed before the current one.
    Rollback {
        target: String,
        #[serde(default)]
        id: Option<Value>,
        #[serde(default)]
        reply_to: Option<String>,
    },
}

impl BuilderCommand {
    /// Parses a control message; `None` for messages of other types or malformed ones.
    pub fn parse(text: &str) -> Option<Self> {
        let value: Value = serde_json::from_str(text).ok()?;
        let kind = value.get("type")?.as_str()?;
        if kind != "rebuild" && kind != "rollback" {
            return None;
        }
        serde_json::from_value(value).ok()
    }

    pub fn target(&self) -> &str {
        match self {
            BuilderCommand::Rebuild { target, .. } | BuilderCommand::Rollback { target, .. } => {
                target
            }
        }
    }

    pub fn id(&self) -> Option<&Value> {
        match self {
            BuilderCommand::Rebuild { id, .. } | BuilderCommand::Rollback { id, .. } => id.as_ref(),
        }
    }

    pub fn reply_to(&self) -> Option<&str> {
        match self {
            BuilderCommand::Rebuild { reply_to, .. }
            | BuilderCommand::Rollback { reply_to, .. } => reply_to.as_deref(),
        }
    }
}

/// The reply to a `rebuild` or `rollback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebuildResult {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<Value>,
    pub target: String,
    pub tag: Option<String>,
    pub ok: bool,
    pub message: String,
}

impl RebuildResult {
    pub fn new(
        id: Option<Value>,
        target: &str,
        tag: Option<&str>,
        ok: bool,
        message: String,
    ) -> Self {
        RebuildResult {
            kind: "rebuild.result".to_string(),
            id,
            target: target.to_string(),
            tag: tag.map(str::to_string),
            ok,
            message,
        }
    }
}

/// A `build.started`, `build.finished` or `build.failed` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub at: String,
    pub target: String,
    pub tag: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tail: Option<String>,
}

impl BuildEvent {
    fn new(kind: &str, target: &str, tag: &str) -> Self {
        BuildEvent {
            kind: kind.to_string(),
            at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            target: target.to_string(),
            tag: tag.to_string(),
            duration_ms: None,
            error: None,
            output_tail: None,
        }
    }

    pub fn started(target: &str, tag: &str) -> Self {
        Self::new("build.started", target, tag)
    }

    pub fn finished(target: &str, report: &BuildReport) -> Self {
        BuildEvent {
            duration_ms: Some(millis(report.duration)),
            output_tail: report.output_tail.clone().filter(|tail| !tail.is_empty()),
            ..Self::new("build.finished", target, &report.tag)
        }
    }

    pub fn failed(target: &str, tag: &str, failure: &BuildFailure, duration: Duration) -> Self {
        BuildEvent {
            duration_ms: Some(millis(duration)),
            error: Some(failure.to_string()),
            output_tail: failure.output_tail.clone().filter(|tail| !tail.is_empty()),
            ..Self::new("build.failed", target, tag)
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The text of the notice for a successful build or rollback.
pub fn success_text(target: &str, verb: &str, report: &BuildReport) -> String {
    let seconds = report.duration.as_secs_f64();
    format!("{target}: {verb} {} in {seconds:.1} s", report.tag)
}

/// The text of the notice for a failed build or rollback, with the output tail in a code
/// block when the command ran.
pub fn failure_text(target: &str, tag: &str, failure: &BuildFailure) -> String {
    let mut text = format!("{target}: {tag} failed: {failure}");
    if let Some(tail) = failure
        .output_tail
        .as_deref()
        .filter(|tail| !tail.is_empty())
    {
        // A fence inside the tail would end the code block early.
        let tail = tail.replace("```", "`\u{200b}``");
        text.push_str(&format!("\n```\n{tail}\n```"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::build::Step;

    #[test]
    fn rebuild_parses_with_optional_fields() {
        let command = BuilderCommand::parse(r#"{"type":"rebuild","target":"wiki"}"#).unwrap();
        assert_eq!(
            command,
            BuilderCommand::Rebuild {
                target: "wiki".to_string(),
                tag: None,
                id: None,
                reply_to: None
            }
        );
    }

    #[test]
    fn rollback_keeps_id_and_reply_channel() {
        let text = r#"{"type":"rollback","target":"wiki","id":7,"reply_to":"x:replies"}"#;
        let command = BuilderCommand::parse(text).unwrap();
        assert_eq!(command.id(), Some(&Value::from(7)));
        assert_eq!(command.reply_to(), Some("x:replies"));
    }

    #[test]
    fn other_messages_are_not_commands() {
        assert_eq!(BuilderCommand::parse(r#"{"type":"ping","id":"1"}"#), None);
        assert_eq!(BuilderCommand::parse("ping"), None);
        assert_eq!(BuilderCommand::parse(r#"{"type":"rebuild"}"#), None);
    }

    #[test]
    fn result_has_wire_shape() {
        let result = RebuildResult::new(
            Some(Value::from("a1")),
            "wiki",
            Some("v2"),
            true,
            "built".into(),
        );
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(json["type"], "rebuild.result");
        assert_eq!(json["id"], "a1");
        assert_eq!(json["ok"], true);
    }

    #[test]
    fn failure_text_fences_tail() {
        let failure = BuildFailure {
            step: Step::Command,
            message: "\"sh\" failed with exit status: 1".to_string(),
            output_tail: Some("oops ``` done".to_string()),
        };
        let text = failure_text("wiki", "v2", &failure);
        assert!(
            text.starts_with("wiki: v2 failed: command failed:"),
            "{text}"
        );
        assert_eq!(text.matches("```").count(), 2, "{text}");
    }
}

//! The builder's `build.*` events and the text of its notices. The `rebuild`, `rollback` and
//! `rebuild.result` control messages live with the other control messages in `bus::wire`.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::build::{BuildFailure, BuildReport};

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

//! Wire formats of the bus: control messages, the notification object, registry entries and
//! events. Messages are UTF-8 JSON objects carrying `"type"`, except the notification object
//! and the plain-string shortcuts (`ping`, a notification as plain text).

use serde::{Deserialize, Deserializer, Serialize};

/// Error decoding a control message or a notification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("missing \"type\" field")]
    MissingType,
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("invalid {kind} message: {message}")]
    Invalid { kind: String, message: String },
}

/// A message on `P:control` or a reply channel.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum ControlMessage {
    #[serde(rename = "ping")]
    Ping(Ping),
    #[serde(rename = "pong")]
    Pong(Pong),
    #[serde(rename = "goodbye")]
    Goodbye(Goodbye),
    #[serde(rename = "crash")]
    Crash(Crash),
    #[serde(rename = "rebuild")]
    Rebuild(Rebuild),
    #[serde(rename = "rollback")]
    Rollback(Rollback),
    #[serde(rename = "rebuild.result")]
    RebuildResult(RebuildResult),
}

impl ControlMessage {
    /// Decodes a payload. The plain string `ping` is a ping without id.
    pub fn decode(payload: &str) -> Result<ControlMessage, DecodeError> {
        let trimmed = payload.trim();
        if trimmed == "ping" {
            return Ok(ControlMessage::Ping(Ping::default()));
        }
        let value: serde_json::Value = serde_json::from_str(trimmed)
            .map_err(|error| DecodeError::NotJson(error.to_string()))?;
        let kind = match value.get("type") {
            Some(serde_json::Value::String(kind)) => kind.clone(),
            Some(_) | None if !value.is_object() => {
                return Err(DecodeError::NotJson("expected an object".into()));
            }
            _ => return Err(DecodeError::MissingType),
        };
        fn typed<T: for<'de> Deserialize<'de>>(
            kind: &str,
            value: serde_json::Value,
        ) -> Result<T, DecodeError> {
            serde_json::from_value(value).map_err(|error| DecodeError::Invalid {
                kind: kind.to_string(),
                message: error.to_string(),
            })
        }
        Ok(match kind.as_str() {
            "ping" => ControlMessage::Ping(typed(&kind, value)?),
            "pong" => ControlMessage::Pong(typed(&kind, value)?),
            "goodbye" => ControlMessage::Goodbye(typed(&kind, value)?),
            "crash" => ControlMessage::Crash(typed(&kind, value)?),
            "rebuild" => ControlMessage::Rebuild(typed(&kind, value)?),
            "rollback" => ControlMessage::Rollback(typed(&kind, value)?),
            "rebuild.result" => ControlMessage::RebuildResult(typed(&kind, value)?),
            _ => return Err(DecodeError::UnknownType(kind.chars().take(64).collect())),
        })
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("control messages always serialize")
    }
}

/// Accepts a string or a number as a message id and keeps it as text.
fn id_from_string_or_number<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(serde_json::Number),
    }
    Ok(Option::<Id>::deserialize(deserializer)?.map(|id| match id {
        Id::Text(text) => text,
        Id::Number(number) => number.to_string(),
    }))
}

/// `{"type":"ping","id":ID,"reply_to":CHANNEL}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    #[serde(default, deserialize_with = "id_from_string_or_number")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// The answer of every running service and of the gateway to a ping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    #[serde(default, deserialize_with = "id_from_string_or_number")]
    pub id: Option<String>,
    pub service: String,
    pub instance: String,
    pub version: String,
    pub uptime_ms: u64,
    pub restarts: u32,
}

/// Sent by a service on a graceful stop, so that a redeploy is not taken for an outage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Goodbye {
    pub service: String,
    pub instance: String,
}

/// The crash drill: makes the named service panic, when the config allows it. Without
/// `instance`, that service panics in every instance that allows the drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Crash {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// Rebuilds a builder target, at `tag` or at its newest release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rebuild {
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, deserialize_with = "id_from_string_or_number")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// Switches a builder target back to its previous kept release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollback {
    pub target: String,
    #[serde(default, deserialize_with = "id_from_string_or_number")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// The builder's answer to `rebuild` and `rollback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebuildResult {
    #[serde(default, deserialize_with = "id_from_string_or_number")]
    pub id: Option<String>,
    pub target: String,
    #[serde(default)]
    pub tag: Option<String>,
    pub ok: bool,
    pub message: String,
}

/// Severity of a notification.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    #[default]
    Info,
    Warn,
    Error,
}

/// A named value shown beside a notification's text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Field {
    pub name: String,
    pub value: String,
}

/// Something to tell people. Only `text` is required; a plain string means `{"text": …}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Field>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Notification {
    pub fn text(text: impl Into<String>) -> Notification {
        Notification {
            text: text.into(),
            ..Notification::default()
        }
    }

    pub fn with_title(mut self, title: impl Into<String>) -> Notification {
        self.title = Some(title.into());
        self
    }

    pub fn with_level(mut self, level: Level) -> Notification {
        self.level = Some(level);
        self
    }

    pub fn with_source(mut self, source: impl Into<String>) -> Notification {
        self.source = Some(source.into());
        self
    }

    pub fn with_field(mut self, name: impl Into<String>, value: impl Into<String>) -> Notification {
        self.fields.push(Field {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// Decodes what a script published. A payload that is a JSON object must be a valid
    /// notification object; anything else is the text of a plain notification.
    pub fn decode(payload: &str) -> Result<Notification, DecodeError> {
        let trimmed = payload.trim_start();
        if trimmed.starts_with('{')
            && let Ok(value) = serde_json::from_str::<serde_json::Value>(trimmed)
        {
            return serde_json::from_value(value).map_err(|error| DecodeError::Invalid {
                kind: "notification".into(),
                message: error.to_string(),
            });
        }
        if payload.trim().is_empty() {
            return Err(DecodeError::Invalid {
                kind: "notification".into(),
                message: "empty text".into(),
            });
        }
        Ok(Notification::text(payload))
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("notifications always serialize")
    }
}

/// A service's row in the `P:services` hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistryEntry {
    pub service: String,
    pub instance: String,
    pub version: String,
    pub state: ServiceState,
    /// When `state` last changed (RFC 3339).
    pub since: String,
    pub last_pong_at: Option<String>,
    pub rtt_ms: Option<u64>,
    pub restarts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Up,
    Down,
    /// Said goodbye: stopped on purpose.
    Stopped,
}

/// The current time as an RFC 3339 UTC string with millisecond precision.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ping_decodes() {
        assert_eq!(
            ControlMessage::decode(" ping\n").unwrap(),
            ControlMessage::Ping(Ping::default())
        );
    }

    #[test]
    fn ping_with_numeric_id() {
        let message = ControlMessage::decode(r#"{"type":"ping","id":42}"#).unwrap();
        let ControlMessage::Ping(ping) = message else {
            panic!("not a ping: {message:?}");
        };
        assert_eq!(ping.id.as_deref(), Some("42"));
        assert_eq!(ping.reply_to, None);
    }

    #[test]
    fn unknown_type_is_an_error() {
        let error = ControlMessage::decode(r#"{"type":"dance"}"#).unwrap_err();
        assert_eq!(error, DecodeError::UnknownType("dance".into()));
    }

    #[test]
    fn garbage_is_an_error() {
        for payload in [
            "",
            "{",
            "[1,2]",
            "42",
            r#"{"id":1}"#,
            r#"{"type":7}"#,
            "\u{0}",
        ] {
            assert!(ControlMessage::decode(payload).is_err(), "{payload:?}");
        }
    }

    #[test]
    fn pong_round_trips() {
        let pong = ControlMessage::Pong(Pong {
            id: Some("a".into()),
            service: "control".into(),
            instance: "nas".into(),
            version: "0.1.0".into(),
            uptime_ms: 5,
            restarts: 1,
        });
        let text = pong.encode();
        assert!(text.starts_with(r#"{"type":"pong""#), "{text}");
        assert_eq!(ControlMessage::decode(&text).unwrap(), pong);
    }

    #[test]
    fn rebuild_result_type_name() {
        let text = ControlMessage::RebuildResult(RebuildResult {
            id: None,
            target: "wiki".into(),
            tag: Some("v1".into()),
            ok: true,
            message: "built".into(),
        })
        .encode();
        assert!(text.contains(r#""type":"rebuild.result""#), "{text}");
    }

    #[test]
    fn notification_from_plain_text() {
        let notification = Notification::decode("disk almost full").unwrap();
        assert_eq!(notification, Notification::text("disk almost full"));
    }

    #[test]
    fn notification_from_object() {
        let notification = Notification::decode(
            r#"{"text":"t","level":"warn","fields":[{"name":"a","value":"b"}]}"#,
        )
        .unwrap();
        assert_eq!(notification.level, Some(Level::Warn));
        assert_eq!(notification.fields.len(), 1);
    }

    #[test]
    fn notification_object_without_text_rejected() {
        assert!(Notification::decode(r#"{"title":"t"}"#).is_err());
        assert!(Notification::decode("   ").is_err());
    }

    #[test]
    fn notification_brace_text_stays_text() {
        let notification = Notification::decode("{not json").unwrap();
        assert_eq!(notification.text, "{not json");
    }
}

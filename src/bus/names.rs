//! Channel and key names. Every name sits under `bus.prefix`, so several installs can share
//! one Redis; this module is the only place that spells them.

use std::fmt;

/// Maximum length of a stub, so that a channel name stays short enough to log and index.
const MAX_STUB_LEN: usize = 128;
/// Maximum length of a prefix or an instance name.
const MAX_NAME_LEN: usize = 64;

/// A validated queue name: `[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stub(String);

/// A stub that does not match the allowed form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid stub {value:?}: use 1 to 128 letters, digits, '_', '.', ':' or '-', \
     starting with a letter or digit"
)]
pub struct InvalidStub {
    pub value: String,
}

impl Stub {
    pub fn parse(value: &str) -> Result<Stub, InvalidStub> {
        let mut chars = value.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok =
            chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
        if first_ok && rest_ok && value.len() <= MAX_STUB_LEN {
            Ok(Stub(value.to_string()))
        } else {
            Err(InvalidStub {
                value: value.chars().take(MAX_STUB_LEN + 8).collect(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Stub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_plain_name(value: &str) -> bool {
    let mut chars = value.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && value.len() <= MAX_NAME_LEN
}

/// Checks `bus.prefix`. Glob characters and ':' are excluded because the prefix is also used
/// inside pattern subscriptions and as the first segment of every name.
pub fn validate_prefix(value: &str) -> Result<(), String> {
    if is_plain_name(value) {
        Ok(())
    } else {
        Err(format!(
            "invalid prefix {value:?}: use 1 to 64 letters, digits, '_', '.' or '-', \
             starting with a letter or digit"
        ))
    }
}

/// Checks `bus.instance`, which appears in actor names, channel names and registry fields.
pub fn validate_instance(value: &str) -> Result<(), String> {
    if is_plain_name(value) {
        Ok(())
    } else {
        Err(format!(
            "invalid instance name {value:?}: use 1 to 64 letters, digits, '_', '.' or '-', \
             starting with a letter or digit (a hostname fits)"
        ))
    }
}

/// Builds every channel and key name under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn join(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    /// `P:<name>`: a channel named in the config, such as a Discord watch rule's
    /// `bus_channel`.
    pub fn channel(&self, name: &str) -> String {
        self.join(name)
    }

    /// `P:control`: ping, goodbye, crash, rebuild, rollback.
    pub fn control(&self) -> String {
        self.join("control")
    }

    /// `P:control:replies`: the default `reply_to` of pings and commands.
    pub fn control_replies(&self) -> String {
        self.join("control:replies")
    }

    /// `P:control:lease`: which instance's control service watches the registry.
    pub fn control_lease(&self) -> String {
        self.join("control:lease")
    }

    /// `P:notify`: notifications published by scripts.
    pub fn notify(&self) -> String {
        self.join("notify")
    }

    /// `P:notify:stream`: the durable notification stream.
    pub fn notify_stream(&self) -> String {
        self.join("notify:stream")
    }

    /// `P:notify:dead`: notifications that could not be delivered.
    pub fn notify_dead(&self) -> String {
        self.join("notify:dead")
    }

    /// `P:q:<stub>`: what the API and the drop folder publish for a stub.
    pub fn queue(&self, stub: &Stub) -> String {
        self.join(&format!("q:{stub}"))
    }

    /// `P:qs:<stub>`: the capped stream of a durable stub.
    pub fn queue_stream(&self, stub: &Stub) -> String {
        self.join(&format!("qs:{stub}"))
    }

    /// `P:rproxy:<instance>`: replies to rproxy requests of one instance.
    pub fn rproxy(&self, instance: &str) -> String {
        self.join(&format!("rproxy:{instance}"))
    }

    /// `P:events:<service>`: machine-readable events of a service.
    pub fn events(&self, service: &str) -> String {
        self.join(&format!("events:{service}"))
    }

    /// `P:services`: the registry hash.
    pub fn services(&self) -> String {
        self.join("services")
    }

    /// `P:torrent:done`: done-hook calls.
    pub fn torrent_done(&self) -> String {
        self.join("torrent:done")
    }

    /// `P:torrent:seen:<hash>`: what was announced for a torrent.
    pub fn torrent_seen(&self, hash: &str) -> String {
        self.join(&format!("torrent:seen:{hash}"))
    }

    /// `P:torrent:baseline:<client>`: set once a client's first poll is stored, so that later
    /// polls announce what is new.
    pub fn torrent_baseline(&self, client: &str) -> String {
        self.join(&format!("torrent:baseline:{client}"))
    }

    /// `P:dns:clients:<day>`: queries per client on a UTC day.
    pub fn dns_clients(&self, day: &str) -> String {
        self.join(&format!("dns:clients:{day}"))
    }

    /// `P:dns:domains:<day>`: queries per domain on a UTC day.
    pub fn dns_domains(&self, day: &str) -> String {
        self.join(&format!("dns:domains:{day}"))
    }

    /// `P:dns:client:<ip>:<day>`: one client's domains on a UTC day.
    pub fn dns_client(&self, ip: &str, day: &str) -> String {
        self.join(&format!("dns:client:{ip}:{day}"))
    }

    /// `P:dns:rcodes:<day>`: queries per response code on a UTC day.
    pub fn dns_rcodes(&self, day: &str) -> String {
        self.join(&format!("dns:rcodes:{day}"))
    }

    /// `P:dns:qtypes:<day>`: queries per query type on a UTC day.
    pub fn dns_qtypes(&self, day: &str) -> String {
        self.join(&format!("dns:qtypes:{day}"))
    }

    /// `P:dns:devices`: device → last-seen state.
    pub fn dns_devices(&self) -> String {
        self.join("dns:devices")
    }

    /// `P:dnslog:offset:<source>`: a followed file's identity and offset.
    pub fn dnslog_offset(&self, source: &str) -> String {
        self.join(&format!("dnslog:offset:{source}"))
    }

    /// `P:builder:<target>`: built tag, built at, ETag, last result.
    pub fn builder(&self, target: &str) -> String {
        self.join(&format!("builder:{target}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_accepts_allowed_forms() {
        for value in [
            "a",
            "Z9",
            "wiki.reload",
            "jobs:high-prio_2",
            &"x".repeat(128),
        ] {
            assert!(Stub::parse(value).is_ok(), "{value}");
        }
    }

    #[test]
    fn stub_rejects_other_forms() {
        for value in [
            "",
            "-a",
            ".a",
            "a b",
            "a*",
            "a/b",
            "ä",
            &"x".repeat(129),
            "a\n",
        ] {
            assert!(Stub::parse(value).is_err(), "{value:?}");
        }
    }

    #[test]
    fn stub_error_names_value_and_rule() {
        let message = Stub::parse("a b").unwrap_err().to_string();
        assert!(message.contains("\"a b\""), "{message}");
        assert!(message.contains("letters, digits"), "{message}");
    }

    #[test]
    fn names_use_prefix() {
        let names = Names::new("home");
        let stub = Stub::parse("wiki").unwrap();
        assert_eq!(names.control(), "home:control");
        assert_eq!(names.queue(&stub), "home:q:wiki");
        assert_eq!(names.queue_stream(&stub), "home:qs:wiki");
        assert_eq!(names.rproxy("nas"), "home:rproxy:nas");
        assert_eq!(
            names.dns_client("10.0.0.7", "2026-01-02"),
            "home:dns:client:10.0.0.7:2026-01-02"
        );
    }

    #[test]
    fn prefix_rejects_glob_and_colon() {
        assert!(validate_prefix("almagest").is_ok());
        for value in ["", "a:b", "a*", "a?", "a[b]", "a b"] {
            assert!(validate_prefix(value).is_err(), "{value:?}");
        }
    }
}

//! The `[control]` section.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Context, Problems};

/// Default of `control.forget_after_secs`: seven days. A home server's host can be off for a
/// weekend or a repair and still have its return announced as "up", while an instance that
/// was renamed or retired leaves the registry within a week.
const DEFAULT_FORGET_AFTER_SECS: u64 = 7 * 24 * 3_600;
/// Default of `control.max_drop_bytes`: 1 MiB. Drop-folder messages are commands and small
/// documents; a larger payload would sit in every subscriber's output buffer at once.
const DEFAULT_MAX_DROP_BYTES: u64 = 1024 * 1024;
/// Upper bound of `control.max_drop_bytes`: Redis rejects bulk strings over 512 MiB
/// (`proto-max-bulk-len`).
const MAX_DROP_BYTES_LIMIT: u64 = 512 * 1024 * 1024;

/// `[control]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RawControlConfig {
    pub ping_interval_secs: u64,
    pub missed_pings_for_down: u32,
    pub forget_after_secs: u64,
    pub allow_crash_command: bool,
    pub drop_dir: Option<PathBuf>,
    pub max_drop_bytes: u64,
}

impl Default for RawControlConfig {
    fn default() -> Self {
        RawControlConfig {
            ping_interval_secs: 10,
            missed_pings_for_down: 3,
            forget_after_secs: DEFAULT_FORGET_AFTER_SECS,
            allow_crash_command: false,
            drop_dir: None,
            max_drop_bytes: DEFAULT_MAX_DROP_BYTES,
        }
    }
}

/// Liveness pings, the service registry, the crash drill and the drop folder.
#[derive(Debug, Clone, Serialize)]
pub struct ControlConfig {
    pub ping_interval_secs: u64,
    pub missed_pings_for_down: u32,
    pub forget_after_secs: u64,
    pub allow_crash_command: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_dir: Option<PathBuf>,
    pub max_drop_bytes: u64,
}

impl ControlConfig {
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs)
    }

    pub fn forget_after(&self) -> Duration {
        Duration::from_secs(self.forget_after_secs)
    }
}

impl RawControlConfig {
    pub fn validate(self, problems: &mut Problems, _ctx: &Context) -> ControlConfig {
        if self.ping_interval_secs == 0 {
            problems.push("control.ping_interval_secs", "must be at least 1 (seconds)");
        }
        if self.missed_pings_for_down == 0 {
            problems.push("control.missed_pings_for_down", "must be at least 1");
        }
        let time_to_down = self
            .ping_interval_secs
            .saturating_mul(u64::from(self.missed_pings_for_down));
        if self.forget_after_secs <= time_to_down {
            problems.push(
                "control.forget_after_secs",
                format!(
                    "must be longer than ping_interval_secs × missed_pings_for_down \
                     ({time_to_down} s), or services are forgotten before they count as down"
                ),
            );
        }
        if self
            .drop_dir
            .as_ref()
            .is_some_and(|dir| dir.as_os_str().is_empty())
        {
            problems.push(
                "control.drop_dir",
                "must not be empty: give a folder path or leave the key out",
            );
        }
        if self.max_drop_bytes == 0 || self.max_drop_bytes > MAX_DROP_BYTES_LIMIT {
            problems.push(
                "control.max_drop_bytes",
                format!(
                    "{} is out of range: use 1 to {MAX_DROP_BYTES_LIMIT} (bytes)",
                    self.max_drop_bytes
                ),
            );
        }
        ControlConfig {
            ping_interval_secs: self.ping_interval_secs,
            missed_pings_for_down: self.missed_pings_for_down,
            forget_after_secs: self.forget_after_secs,
            allow_crash_command: self.allow_crash_command,
            drop_dir: self.drop_dir,
            max_drop_bytes: self.max_drop_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use crate::config::Config;

    fn problem_keys(section: &str) -> Vec<String> {
        let text = format!("[control]\n{section}");
        match Config::from_toml(&text, Path::new("t.toml"), HashMap::new()) {
            Ok(_) => Vec::new(),
            Err(error) => error.problems().iter().map(|p| p.key.clone()).collect(),
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(problem_keys(""), Vec::<String>::new());
    }

    #[test]
    fn forget_must_exceed_time_to_down() {
        let keys = problem_keys(
            "ping_interval_secs = 10\nmissed_pings_for_down = 3\nforget_after_secs = 30",
        );
        assert_eq!(keys, ["control.forget_after_secs"]);
    }

    #[test]
    fn max_drop_bytes_range_checked() {
        assert_eq!(
            problem_keys("max_drop_bytes = 0"),
            ["control.max_drop_bytes"]
        );
        assert_eq!(
            problem_keys("max_drop_bytes = 1073741824"),
            ["control.max_drop_bytes"]
        );
    }

    #[test]
    fn empty_drop_dir_rejected() {
        assert_eq!(problem_keys("drop_dir = \"\""), ["control.drop_dir"]);
    }
}

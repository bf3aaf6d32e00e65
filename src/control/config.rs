//! The `[control]` section.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Context, Problems};

/// `[control]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RawControlConfig {
    pub ping_interval_secs: u64,
    pub missed_pings_for_down: u32,
    pub allow_crash_command: bool,
    pub drop_dir: Option<PathBuf>,
}

impl Default for RawControlConfig {
    fn default() -> Self {
        RawControlConfig {
            ping_interval_secs: 10,
            missed_pings_for_down: 3,
            allow_crash_command: false,
            drop_dir: None,
        }
    }
}

/// Liveness pings, the crash drill and the drop folder.
#[derive(Debug, Clone, Serialize)]
pub struct ControlConfig {
    pub ping_interval_secs: u64,
    pub missed_pings_for_down: u32,
    pub allow_crash_command: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_dir: Option<PathBuf>,
}

impl ControlConfig {
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs)
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
        ControlConfig {
            ping_interval_secs: self.ping_interval_secs,
            missed_pings_for_down: self.missed_pings_for_down,
            allow_crash_command: self.allow_crash_command,
            drop_dir: self.drop_dir,
        }
    }
}

//! A bus for one test on either backend: a real `redis-server`, or a directory for the
//! embedded store. Tests that do not need Redis-specific behaviour take a [`BackendKind`] and
//! reach the bus the way a script would: Redis commands, or the daemon's admin socket.

use std::path::Path;

use almagest::bus::admin::AdminClient;
use almagest::config::{BackendKind, Config};

use super::{RedisServer, Subscription, config_text, embedded_config_text};

pub enum TestBus {
    Redis(RedisServer),
    /// The directory of the embedded store and the admin socket.
    Embedded(tempfile::TempDir),
}

impl TestBus {
    pub fn start(kind: BackendKind) -> TestBus {
        match kind {
            BackendKind::Redis => TestBus::Redis(RedisServer::start()),
            BackendKind::Embedded => TestBus::Embedded(
                tempfile::Builder::new()
                    .prefix("almagest-data")
                    .tempdir()
                    .expect("create data dir"),
            ),
        }
    }

    /// Config text for a daemon on this bus, with a unique instance and prefix.
    pub fn config_text(&self, extra: &str) -> String {
        match self {
            TestBus::Redis(redis) => config_text(&redis.url(), extra),
            TestBus::Embedded(dir) => embedded_config_text(dir.path(), extra),
        }
    }

    pub fn data_dir(&self) -> Option<&Path> {
        match self {
            TestBus::Redis(_) => None,
            TestBus::Embedded(dir) => Some(dir.path()),
        }
    }

    /// Publishes as a script would; on the embedded backend the daemon running with `config`
    /// must be up. Returns the receiver count.
    pub async fn publish(&self, config: &Config, channel: &str, payload: &str) -> u64 {
        match self {
            TestBus::Redis(redis) => {
                let mut connection = redis.connection().await;
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .query_async::<u64>(&mut connection)
                    .await
                    .expect("publish")
            }
            TestBus::Embedded(_) => AdminClient::new(&config.bus.data_dir)
                .publish(channel, payload)
                .await
                .expect("publish through the admin socket"),
        }
    }

    /// Subscribes to `channel` as a script would.
    pub async fn subscribe(&self, config: &Config, channel: &str) -> Subscription {
        match self {
            TestBus::Redis(redis) => Subscription::start(&redis.client(), channel).await,
            TestBus::Embedded(_) => {
                Subscription::start_admin(&AdminClient::new(&config.bus.data_dir), channel).await
            }
        }
    }
}

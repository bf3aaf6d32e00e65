//! Process-wide setup: logging, the Prometheus metrics recorder and the TLS crypto provider.
//! Each is installed once per process; repeated calls (several daemons in one test process)
//! are harmless.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Limits a repeated warning (bad input that anyone on the bus can send) to one log line per
/// period, and reports how many occurrences the line stands for.
pub struct LogLimiter {
    period: Duration,
    state: Mutex<LimiterState>,
}

struct LimiterState {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub const fn new(period: Duration) -> LogLimiter {
        LogLimiter {
            period,
            state: Mutex::new(LimiterState {
                last_logged: None,
                suppressed: 0,
            }),
        }
    }

    /// Records one occurrence. Returns `Some(n)` when this one should be logged, `n` being the
    /// occurrences not logged since the previous line; `None` when it should not.
    pub fn hit(&self) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let due = state
            .last_logged
            .is_none_or(|at| at.elapsed() >= self.period);
        if due {
            state.last_logged = Some(Instant::now());
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Libraries that log a warning on every retry of something the services already report
/// once, muted unless the filter names them: serenity logs each failed gateway connection
/// attempt, every few seconds while Discord is unreachable.
const QUIET_BY_DEFAULT: &[&str] = &["serenity"];

/// The filter directives: `RUST_LOG` when set, else `level`, plus an `error` directive for each
/// target of [`QUIET_BY_DEFAULT`] that the filter does not name.
pub fn filter_directives(rust_log: Option<&str>, level: &str) -> String {
    let mut directives = rust_log.unwrap_or(level).to_string();
    for target in QUIET_BY_DEFAULT {
        if !directives.contains(target) {
            directives.push_str(&format!(",{target}=error"));
        }
    }
    directives
}
/// Bucket bounds, in seconds, of every histogram whose name ends in `_seconds`: from a
/// sub-millisecond publish on loopback to a request/reply that waits for a slow worker.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Sets up logging to standard error. `RUST_LOG`, when set, takes precedence over `level`.
pub fn init_logging(level: &str, format: LogFormat) {
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.is_empty());
    let filter = EnvFilter::try_new(filter_directives(rust_log.as_deref(), level))
        .unwrap_or_else(|_| EnvFilter::new(filter_directives(None, "info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .try_init(),
    };
    if let Err(error) = result {
        eprintln!("logging already set up: {error}");
    }
}

/// Logs panics as one error line instead of the default multi-line report on standard error.
/// An actor's panic is an event the supervisor handles, not the end of the process. The
/// backtrace is added only when `RUST_BACKTRACE` asks for it.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|text| text.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic with a non-text payload".to_string());
        let location = info
            .location()
            .map(|location| format!("{}:{}", location.file(), location.line()))
            .unwrap_or_default();
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(panic = %message, location, %backtrace, "panicked");
        } else {
            tracing::error!(panic = %message, location, "panicked");
        }
    }));
}

/// Installs the Prometheus recorder behind the `metrics` facade, once per process.
pub fn install_metrics_recorder() {
    PROMETHEUS.get_or_init(|| {
        // Without buckets the exporter renders histograms as summaries, which cannot be
        // aggregated across instances.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .expect("the latency bucket list is not empty");
        match builder.install_recorder() {
            Ok(handle) => {
                start_metrics_upkeep(handle.clone());
                Some(handle)
            }
            Err(error) => {
                tracing::warn!(error = %error, "metrics recorder not installed");
                None
            }
        }
    });
}

/// How often histogram samples are folded into their buckets.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every few seconds on a thread of its
/// own. `install_recorder` leaves this to the caller, and without it every sample (one per
/// API request) stays in memory until someone reads `/metrics`.
fn start_metrics_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new()
        .name("almagest-metrics".into())
        .spawn(move || {
            loop {
                std::thread::sleep(METRICS_UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(error) = started {
        tracing::warn!(error = %error, "cannot start the metrics upkeep thread; histogram samples accumulate until /metrics is read");
    }
}

/// The Prometheus text rendering of every metric, for the `/metrics` route.
pub fn render_metrics() -> Option<String> {
    PROMETHEUS
        .get()
        .and_then(Option::as_ref)
        .map(PrometheusHandle::render)
}

/// Makes ring the process's rustls crypto provider. Two providers end up in the dependency
/// graph through different crates, and rustls refuses to pick one by itself.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_counts_suppressed() {
        let limiter = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(limiter.hit(), Some(0));
        assert_eq!(limiter.hit(), None);
        assert_eq!(limiter.hit(), None);
        let expired = LogLimiter::new(Duration::ZERO);
        assert_eq!(expired.hit(), Some(0));
        assert_eq!(expired.hit(), Some(0));
    }

    #[test]
    fn serenity_muted_unless_named() {
        assert_eq!(filter_directives(None, "info"), "info,serenity=error");
        assert_eq!(
            filter_directives(Some("debug,serenity=info"), "info"),
            "debug,serenity=info"
        );
    }
}

//! Process-wide setup: logging, the Prometheus metrics recorder and the TLS crypto provider.
//! Each is installed once per process; repeated calls (several daemons in one test process)
//! are harmless.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Sets up logging to standard error. `RUST_LOG`, when set, takes precedence over `level`.
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
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
    PROMETHEUS.get_or_init(|| match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::warn!(error = %error, "metrics recorder not installed");
            None
        }
    });
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

//! The `almagest` command: flags, config, logging, signals, then the library does the work.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use almagest::config::{Config, ConfigError, LogFormat};

/// Exit status for an invalid config or invalid arguments.
const EXIT_INVALID: u8 = 2;

#[derive(Parser)]
#[command(
    name = "almagest",
    version,
    about = "Home-server automation services on a Redis bus"
)]
struct Cli {
    /// Config file (TOML); ALMAGEST__SECTION__KEY variables override its scalar keys.
    #[arg(long, global = true, value_name = "PATH", default_value = almagest::config::DEFAULT_PATH)]
    config: PathBuf,

    /// Log format on standard error; overrides log.format.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the config and print it with secrets masked; exits 2 when it is invalid.
    CheckConfig,
    /// Ping every service on the bus and list the answers; exits 1 when a service this config
    /// enables does not answer.
    Ping {
        /// How long to wait for answers, in seconds.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
    },
    /// Publish a message to the queue P:q:<STUB>.
    Publish {
        /// Queue name: letters, digits, '_', '.', ':' or '-'.
        stub: String,
        /// The message, or - to read it from standard input.
        message: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => return report_config_error(&error),
    };
    let format = cli.log_format.unwrap_or(config.log.format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            almagest::telemetry::init_logging(&config.log.level, format);
            almagest::telemetry::install_panic_hook();
            runtime.block_on(run_daemon(config))
        }
        Command::CheckConfig => {
            print!("{}", config.to_masked_toml());
            ExitCode::SUCCESS
        }
        Command::Ping { timeout } => {
            let Ok(timeout) = Duration::try_from_secs_f64(timeout) else {
                eprintln!("error: invalid --timeout {timeout}: use a positive number of seconds");
                return ExitCode::from(EXIT_INVALID);
            };
            runtime.block_on(ping(config, timeout))
        }
        Command::Publish { stub, message } => runtime.block_on(publish(config, stub, message)),
    }
}

fn report_config_error(error: &ConfigError) -> ExitCode {
    eprintln!("error: {error}");
    match error {
        ConfigError::Invalid { .. } | ConfigError::Parse { .. } => ExitCode::from(EXIT_INVALID),
        ConfigError::Read { .. } => ExitCode::from(EXIT_INVALID),
    }
}

async fn run_daemon(config: Config) -> ExitCode {
    match almagest::run(config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "almagest stopped");
            ExitCode::FAILURE
        }
    }
}

/// Completes on the first SIGINT, SIGTERM or SIGHUP. A second signal ends the process at
/// once. SIGHUP (a closed terminal) stops gracefully too, since there is no config reload.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate), Ok(mut hangup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot listen for signals; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
        _ = hangup.recv() => "SIGHUP",
    };
    tracing::info!(
        signal = name,
        "stopping; send the signal again to exit at once"
    );
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
            _ = hangup.recv() => {}
        }
        eprintln!("second signal: exiting at once");
        std::process::exit(130);
    });
}

async fn ping(config: Config, timeout: Duration) -> ExitCode {
    match almagest::cli::ping(&config, timeout).await {
        Ok(report) => {
            let _ = almagest::cli::print_ping_report(&report, &mut std::io::stdout());
            if report.missing.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "no answer within {:.1} s from: {}",
                    timeout.as_secs_f64(),
                    report.missing.join(", ")
                );
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn publish(config: Config, stub: String, message: String) -> ExitCode {
    match almagest::cli::publish(&config, &stub, &message).await {
        Ok((channel, receivers)) => {
            let noun = if receivers == 1 {
                "receiver"
            } else {
                "receivers"
            };
            println!("published to {channel} ({receivers} {noun})");
            ExitCode::SUCCESS
        }
        Err(almagest::cli::CliError::Stub(error)) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_INVALID)
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

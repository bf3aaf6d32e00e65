//! The builder's actor glue. The actor owns one poll timer and one [`Runner`] per target and
//! only hands jobs to the runners, so a long build never blocks it. Each runner executes its
//! target's jobs (polls, manual rebuilds, rollbacks) one at a time on its own task, which
//! reads and writes the target's state in `P:builder:<target>`, publishes `build.*` events
//! and notices, and answers `rebuild.result`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use chrono::Utc;
use tokio::sync::Mutex;
use tokio_util::task::AbortOnDropHandle;

use super::build::{self, BuildContext, BuildFailure, BuildReport, Step};
use super::config::{BuilderConfig, TargetConfig};
use super::messages::{BuildEvent, failure_text, success_text};
use super::poll::{PollOutcome, Poller};
use super::releases::{Release, ReleasesClient, http_client};
use super::runner::{Runner, Triggered};
use super::state::TargetState;
use super::volume::Volume;
use crate::bus::wire::RebuildResult;
use crate::bus::{Bus, ControlMessage, Level, Notification};
use crate::service::{Context, Service, ServiceError};

/// Service name.
pub const NAME: &str = "builder";

const STATE_UNAVAILABLE: &str = "cannot read the target's state while the bus is down: try again";

pub struct Builder;

pub struct BuilderState {
    targets: Vec<TargetHandle>,
    _tickers: Vec<AbortOnDropHandle<()>>,
}

struct TargetHandle {
    name: String,
    runner: Runner<Job>,
}

pub enum BuilderMsg {
    /// Poll the target at this index.
    Poll(usize),
}

/// Work for one target's runner.
enum Job {
    Poll,
    Rebuild { tag: Option<String>, reply: Reply },
    Rollback { reply: Reply },
}

/// The channel and id of a manual job's `rebuild.result`.
struct Reply {
    id: Option<String>,
    channel: String,
}

impl Service for Builder {
    const NAME: &'static str = NAME;
    type Config = BuilderConfig;
    type State = BuilderState;
    type Msg = BuilderMsg;

    async fn start(ctx: &Context<Self>) -> Result<BuilderState, ServiceError> {
        let context = BuildContext {
            http: http_client(None)?,
            kubernetes: ctx.config.kubernetes.clone(),
        };
        let mut targets = Vec::new();
        let mut tickers = Vec::new();
        for (index, target) in ctx.config.targets.iter().enumerate() {
            let client = ReleasesClient::new(
                target.api_base.clone(),
                target.repo.clone(),
                target.token.clone(),
            )?;
            let worker = Arc::new(Worker {
                target: target.clone(),
                bus: ctx.bus.clone(),
                context: context.clone(),
                poller: Mutex::new(Poller::new(client)),
                bus_down_logged: AtomicBool::new(false),
            });
            let runner = Runner::spawn(move |job| {
                let worker = worker.clone();
                async move { worker.run(job).await }
            });
            targets.push(TargetHandle {
                name: target.name.clone(),
                runner,
            });
            tickers
                .push(ctx.send_interval(target.poll_interval(), move || BuilderMsg::Poll(index)));
        }
        tracing::info!(targets = targets.len(), "builder targets loaded");
        Ok(BuilderState {
            targets,
            _tickers: tickers,
        })
    }

    async fn handle(
        _ctx: &Context<Self>,
        state: &mut BuilderState,
        message: BuilderMsg,
    ) -> Result<(), ServiceError> {
        match message {
            BuilderMsg::Poll(index) => {
                if let Some(target) = state.targets.get(index) {
                    target.trigger_poll();
                }
            }
        }
        Ok(())
    }

    async fn on_bus_status(
        _ctx: &Context<Self>,
        state: &mut BuilderState,
        connected: bool,
    ) -> Result<(), ServiceError> {
        // Poll at once on start and after an outage instead of waiting a whole interval.
        if connected {
            for target in &state.targets {
                target.trigger_poll();
            }
        }
        Ok(())
    }

    async fn on_control(
        ctx: &Context<Self>,
        state: &mut BuilderState,
        message: ControlMessage,
    ) -> Result<(), ServiceError> {
        let (target_name, job) = match message {
            ControlMessage::Rebuild(rebuild) => {
                let reply = reply_for(ctx, rebuild.id, rebuild.reply_to);
                let job = Job::Rebuild {
                    tag: rebuild.tag,
                    reply,
                };
                (rebuild.target, job)
            }
            ControlMessage::Rollback(rollback) => {
                let reply = reply_for(ctx, rollback.id, rollback.reply_to);
                (rollback.target, Job::Rollback { reply })
            }
            _ => return Ok(()),
        };
        let Some(target) = state.targets.iter().find(|t| t.name == target_name) else {
            let names: Vec<&str> = state.targets.iter().map(|t| t.name.as_str()).collect();
            let message = format!(
                "unknown target {target_name:?}: this builder has {}",
                names.join(", ")
            );
            let reply = match job {
                Job::Rebuild { reply, .. } | Job::Rollback { reply } => reply,
                Job::Poll => return Ok(()),
            };
            send_reply(&ctx.bus, reply, &target_name, None, Err(message)).await;
            return Ok(());
        };
        // A manual job replaces a waiting poll or an older manual job, which is answered.
        match target.runner.trigger(job) {
            Triggered::Replaced(Job::Rebuild { reply, .. } | Job::Rollback { reply }) => {
                let message = "superseded by a later request".to_string();
                send_reply(&ctx.bus, reply, &target_name, None, Err(message)).await;
            }
            Triggered::Started | Triggered::Queued | Triggered::Replaced(Job::Poll) => {}
            Triggered::Rejected(_) => {}
        }
        Ok(())
    }
}

impl TargetHandle {
    /// Queues a poll unless a job waits already: a waiting poll makes another pointless, and
    /// a waiting manual job must not be replaced by a timer.
    fn trigger_poll(&self) {
        let _ = self.runner.trigger_with(Job::Poll, |_| false);
    }
}

fn reply_for(ctx: &Context<Builder>, id: Option<String>, reply_to: Option<String>) -> Reply {
    Reply {
        id,
        channel: reply_to.unwrap_or_else(|| ctx.names().control_replies()),
    }
}

async fn send_reply(
    bus: &Bus,
    reply: Reply,
    target: &str,
    tag: Option<&str>,
    outcome: Result<String, String>,
) {
    let (ok, message) = match outcome {
        Ok(message) => (true, message),
        Err(message) => (false, message),
    };
    let result = ControlMessage::RebuildResult(RebuildResult {
        id: reply.id,
        target: target.to_string(),
        tag: tag.map(str::to_string),
        ok,
        message,
    });
    if let Err(error) = bus.publish(&reply.channel, &result.encode()).await {
        tracing::warn!(target, channel = %reply.channel, error = %error, "rebuild.result not sent");
    }
}

/// Everything one target's jobs need; shared by the runner's job futures.
struct Worker {
    target: TargetConfig,
    bus: Bus,
    context: BuildContext,
    poller: Mutex<Poller>,
    bus_down_logged: AtomicBool,
}

/// A build or rollback as the worker reports it.
struct Outcome {
    tag: Option<String>,
    result: Result<String, String>,
}

impl Worker {
    async fn run(&self, job: Job) {
        match job {
            Job::Poll => self.poll().await,
            Job::Rebuild { tag, reply } => {
                let outcome = self.rebuild(tag).await;
                send_reply(
                    &self.bus,
                    reply,
                    &self.target.name,
                    outcome.tag.as_deref(),
                    outcome.result,
                )
                .await;
            }
            Job::Rollback { reply } => {
                let outcome = self.rollback().await;
                send_reply(
                    &self.bus,
                    reply,
                    &self.target.name,
                    outcome.tag.as_deref(),
                    outcome.result,
                )
                .await;
            }
        }
    }

    /// One scheduled poll: decide from the stored state and the releases list, then record
    /// a baseline, build, or do nothing.
    async fn poll(&self) {
        // Deciding without the stored state could take a built release for a first sight,
        // so a poll waits for the bus.
        let Some((mut state, stored)) = self.load_state().await else {
            return;
        };
        let outcome = {
            let mut poller = self.poller.lock().await;
            let outcome = poller
                .poll(&self.target, &state, stored, self.has_current())
                .await;
            let etag = poller.etag().map(str::to_string);
            if etag.is_some() && etag != state.etag {
                state.etag = etag;
                self.save_state(&state).await;
            }
            outcome
        };
        match outcome {
            PollOutcome::Baseline(release) => {
                state.record_baseline(&release, Utc::now());
                self.save_state(&state).await;
                tracing::info!(target = %self.target.name, tag = %release.tag_name, "recorded the newest release as the baseline");
            }
            PollOutcome::Build(release) => {
                let _ = self.build(&release, &mut state).await;
            }
            PollOutcome::GaveUp(_)
            | PollOutcome::Idle
            | PollOutcome::AwaitAsset(_)
            | PollOutcome::NotFound
            | PollOutcome::RateLimited(_)
            | PollOutcome::Failed(_) => {}
        }
    }

    /// A manual rebuild of `tag`, or of the newest release, even when it was built before.
    async fn rebuild(&self, tag: Option<String>) -> Outcome {
        let release = {
            let mut poller = self.poller.lock().await;
            match &tag {
                Some(tag) => match poller.client().release_by_tag(tag).await {
                    Ok(Some(release)) => Ok(release),
                    Ok(None) => Err(format!("no release with tag {tag:?}")),
                    Err(error) => Err(error.to_string()),
                },
                None => match poller.newest_release(&self.target).await {
                    Ok(Some(release)) => Ok(release),
                    Ok(None) => Err("no release matches the target's filters".to_string()),
                    Err(error) => Err(error),
                },
            }
        };
        let release = match release {
            Ok(release) => release,
            Err(message) => {
                return Outcome {
                    tag,
                    result: Err(message),
                };
            }
        };
        let Some((mut state, _)) = self.load_state().await else {
            return Outcome {
                tag: Some(release.tag_name),
                result: Err(STATE_UNAVAILABLE.to_string()),
            };
        };
        let result = self.build(&release, &mut state).await;
        Outcome {
            tag: Some(release.tag_name.clone()),
            result: result
                .map(|report| {
                    format!(
                        "built {} in {:.1} s",
                        report.tag,
                        report.duration.as_secs_f64()
                    )
                })
                .map_err(|failure| failure.to_string()),
        }
    }

    async fn rollback(&self) -> Outcome {
        // Without the stored state, saving the result would overwrite it.
        let Some((mut state, _)) = self.load_state().await else {
            return Outcome {
                tag: None,
                result: Err(STATE_UNAVAILABLE.to_string()),
            };
        };
        let name = &self.target.name;
        let started = Instant::now();
        let tag = self
            .target
            .volume
            .as_ref()
            .and_then(|volume| Volume::new(volume).previous_release().ok());
        let event_tag = tag.clone().unwrap_or_default();
        self.publish_event(&BuildEvent::started(name, &event_tag))
            .await;
        match build::rollback(&self.context, &self.target).await {
            Ok(report) => {
                state.record_rollback(&report.tag, Utc::now());
                self.save_state(&state).await;
                self.report_success("rolled back to", &report).await;
                Outcome {
                    tag: Some(report.tag.clone()),
                    result: Ok(format!("rolled back to {}", report.tag)),
                }
            }
            Err(failure) => {
                if let Some(tag) = &tag {
                    state.record_failure(tag, &failure.to_string(), Utc::now());
                    self.save_state(&state).await;
                }
                self.report_failure(&event_tag, &failure, started.elapsed())
                    .await;
                Outcome {
                    tag,
                    result: Err(failure.to_string()),
                }
            }
        }
    }

    /// Builds `release`, recording the result in `state` and reporting it.
    async fn build(
        &self,
        release: &Release,
        state: &mut TargetState,
    ) -> Result<BuildReport, BuildFailure> {
        let name = &self.target.name;
        let tag = release.tag_name.as_str();
        tracing::info!(target = %name, tag, "build started");
        self.publish_event(&BuildEvent::started(name, tag)).await;
        let started = Instant::now();
        let result = build::build(&self.context, &self.target, release).await;
        match &result {
            Ok(report) => {
                state.record_built(release, Utc::now());
                self.save_state(state).await;
                self.report_success("built", report).await;
            }
            Err(failure) => {
                state.record_failure(tag, &failure.to_string(), Utc::now());
                self.save_state(state).await;
                self.report_failure(tag, failure, started.elapsed()).await;
            }
        }
        result
    }

    async fn report_success(&self, verb: &str, report: &BuildReport) {
        let name = &self.target.name;
        tracing::info!(target = %name, tag = %report.tag, duration_ms = report.duration.as_millis() as u64, pruned = ?report.pruned, "{verb} release");
        metrics::counter!("almagest_builder_builds_total", "target" => name.clone(), "result" => "ok")
            .increment(1);
        self.publish_event(&BuildEvent::finished(name, report))
            .await;
        let notice = Notification::text(success_text(name, verb, report))
            .with_level(Level::Info)
            .with_source(NAME);
        self.notify(&notice).await;
    }

    async fn report_failure(
        &self,
        tag: &str,
        failure: &BuildFailure,
        duration: std::time::Duration,
    ) {
        let name = &self.target.name;
        tracing::warn!(target = %name, tag, step = %failure.step, error = %failure.message, "build failed");
        metrics::counter!("almagest_builder_builds_total", "target" => name.clone(), "result" => "failed")
            .increment(1);
        self.publish_event(&BuildEvent::failed(name, tag, failure, duration))
            .await;
        let level = if failure.step == Step::Check {
            Level::Warn
        } else {
            Level::Error
        };
        let notice = Notification::text(failure_text(name, tag, failure))
            .with_level(level)
            .with_source(NAME);
        self.notify(&notice).await;
    }

    async fn publish_event(&self, event: &BuildEvent) {
        if let Err(error) = self.bus.publish_event(NAME, event).await {
            tracing::debug!(target = %self.target.name, error = %error, "build event not published");
        }
    }

    async fn notify(&self, notice: &Notification) {
        if let Err(error) = self.bus.notify(notice).await {
            tracing::warn!(target = %self.target.name, error = %error, "build notice not sent");
        }
    }

    /// Whether the volume has a `current` link; always true for targets without a volume.
    fn has_current(&self) -> bool {
        self.target.volume.as_ref().is_none_or(|volume| {
            Volume::new(volume)
                .current_link()
                .symlink_metadata()
                .is_ok()
        })
    }

    /// Reads `P:builder:<target>`, returning the state and whether any field was stored.
    /// `None` while the bus is down, logged once per outage.
    async fn load_state(&self) -> Option<(TargetState, bool)> {
        let key = self.bus.names().builder(&self.target.name);
        let fields = match self.bus.backend() {
            Ok(backend) => backend.hash_get_all(&key).await,
            Err(error) => Err(error),
        };
        match fields {
            Ok(fields) => {
                if self.bus_down_logged.swap(false, Ordering::Relaxed) {
                    tracing::info!(target = %self.target.name, "builder state readable again");
                }
                let stored = !fields.is_empty();
                let map: HashMap<String, String> = fields.into_iter().collect();
                Some((TargetState::from_fields(&map), stored))
            }
            Err(error) => {
                if !self.bus_down_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(target = %self.target.name, error = %error, "cannot read builder state; polling waits for the bus");
                }
                None
            }
        }
    }

    async fn save_state(&self, state: &TargetState) {
        let key = self.bus.names().builder(&self.target.name);
        let fields: Vec<(String, String)> = state
            .to_fields()
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect();
        let saved = match self.bus.backend() {
            Ok(backend) => backend.hash_set(&key, &fields).await,
            Err(error) => Err(error),
        };
        if let Err(error) = saved {
            tracing::warn!(target = %self.target.name, error = %error, "cannot store builder state");
        }
    }
}

//! One build of one target: download the asset, unpack it into `releases/<tag>/`, switch
//! `current`, run the command and restart the Deployment, each step only when configured.
//!
//! A failed step stops the build. `current` then points where it pointed before and the new
//! release directory is removed (or the one it replaced is restored), also when a later step
//! failed or the build was cancelled: the undo runs from a drop guard.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;

use super::command::{self, CommandSpec};
use super::config::{KubernetesConfig, TargetConfig};
use super::download::{self, Downloaded};
use super::kube;
use super::releases::{Asset, Release};
use super::unpack;
use super::volume::{Installed, Volume};

/// Shared by every build of the service.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// Client for asset downloads, without an overall timeout: large assets take long.
    pub http: reqwest::Client,
    pub kubernetes: KubernetesConfig,
}

/// The steps of a build, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Check,
    Download,
    Unpack,
    Switch,
    Command,
    Restart,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Check => "check",
            Step::Download => "download",
            Step::Unpack => "unpack",
            Step::Switch => "switch",
            Step::Command => "command",
            Step::Restart => "restart",
        })
    }
}

/// Why a build failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFailure {
    pub step: Step,
    pub message: String,
    /// The command's output tail, when the command ran.
    pub output_tail: Option<String>,
}

impl fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.step, self.message)
    }
}

impl std::error::Error for BuildFailure {}

fn failure(step: Step) -> impl Fn(String) -> BuildFailure {
    move |message| BuildFailure {
        step,
        message,
        output_tail: None,
    }
}

/// What a successful build or rollback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    pub tag: String,
    pub duration: Duration,
    pub asset: Option<Downloaded>,
    pub release_dir: Option<PathBuf>,
    pub output_tail: Option<String>,
    /// Release directories deleted to stay within `keep_releases`.
    pub pruned: Vec<String>,
}

/// Checks a tag for use in the command's environment and in messages. Whether it can be a
/// directory name is checked separately, only for targets with a volume.
pub fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() || tag.len() > 255 {
        return Err(format!("tag {tag:?} must be 1 to 255 bytes long"));
    }
    if tag.chars().any(char::is_control) {
        return Err(format!("tag {tag:?} contains control characters"));
    }
    Ok(())
}

/// The one asset of `release` matching the target's pattern; `Ok(None)` when the target
/// downloads nothing.
pub fn matching_asset<'r>(
    target: &TargetConfig,
    release: &'r Release,
) -> Result<Option<&'r Asset>, String> {
    let Some(pattern) = &target.asset_pattern else {
        return Ok(None);
    };
    let matches: Vec<&Asset> = release
        .assets
        .iter()
        .filter(|asset| pattern.is_match(&asset.name))
        .collect();
    match matches.as_slice() {
        [asset] => Ok(Some(asset)),
        [] => Err(format!(
            "release {:?} has no asset matching {:?}",
            release.tag_name, pattern.text
        )),
        several => {
            let names: Vec<&str> = several.iter().map(|asset| asset.name.as_str()).collect();
            Err(format!(
                "release {:?} has {} assets matching {:?} ({}): make asset_pattern match one",
                release.tag_name,
                names.len(),
                pattern.text,
                names.join(", ")
            ))
        }
    }
}

/// Builds `release` for `target`.
pub async fn build(
    context: &BuildContext,
    target: &TargetConfig,
    release: &Release,
) -> Result<BuildReport, BuildFailure> {
    let started = Instant::now();
    let tag = release.tag_name.as_str();
    check_tag(tag).map_err(failure(Step::Check))?;
    let asset = matching_asset(target, release).map_err(failure(Step::Check))?;
    let volume = target.volume.as_ref().map(Volume::new);
    let mut activation = Activation::new(volume.clone());

    let mut downloaded = None;
    if let (Some(volume), Some(asset)) = (&volume, asset) {
        volume
            .release_dir(tag)
            .map_err(|error| failure(Step::Check)(error.to_string()))?;
        let prepare = volume.clone();
        blocking(move || prepare.prepare().map_err(|error| error.to_string()))
            .await
            .map_err(failure(Step::Download))?;
        let (file, installed) = fetch_and_install(context, target, volume, asset, tag).await?;
        downloaded = Some(file);
        activation.installed = Some(installed);
    }

    let release_dir = activation.release_dir();
    let output_tail = activate(context, target, tag, &mut activation).await?;
    let pruned = activation.commit(Some(target.keep_releases)).await;
    Ok(BuildReport {
        tag: tag.to_string(),
        duration: started.elapsed(),
        asset: downloaded,
        release_dir,
        output_tail,
        pruned,
    })
}

/// Switches back to the release installed before the current one and runs the command and
/// the restart for it.
pub async fn rollback(
    context: &BuildContext,
    target: &TargetConfig,
) -> Result<BuildReport, BuildFailure> {
    let started = Instant::now();
    let Some(volume) = target.volume.as_ref().map(Volume::new) else {
        return Err(failure(Step::Check)(
            "the target has no volume, so it keeps no releases to roll back to".to_string(),
        ));
    };
    let tag = volume
        .previous_release()
        .map_err(|error| failure(Step::Check)(error.to_string()))?;
    let mut activation = Activation::new(Some(volume.clone()));
    let release_dir = Some(volume.releases_dir().join(&tag));
    let output_tail = activate(context, target, &tag, &mut activation).await?;
    activation.commit(None).await;
    Ok(BuildReport {
        tag,
        duration: started.elapsed(),
        asset: None,
        release_dir,
        output_tail,
        pruned: Vec::new(),
    })
}

/// Downloads the asset to a scratch file, unpacks it into a scratch directory and moves that
/// to `releases/<tag>`.
async fn fetch_and_install(
    context: &BuildContext,
    target: &TargetConfig,
    volume: &Volume,
    asset: &Asset,
    tag: &str,
) -> Result<(Downloaded, Installed), BuildFailure> {
    let download_path = Scratch(Some(volume.scratch_path("download")));
    let file = download::download_asset(
        &context.http,
        asset,
        &target.api_base,
        target.token.as_ref(),
        download_path.path(),
        target.max_asset_bytes,
    )
    .await
    .map_err(|error| failure(Step::Download)(error.to_string()))?;

    let mut staging = Scratch(Some(volume.scratch_path("staging")));
    let (archive, dest, name) = (
        file.path.clone(),
        staging.path().to_path_buf(),
        asset.name.clone(),
    );
    let max_bytes = target.max_unpacked_bytes;
    blocking(move || {
        std::fs::create_dir(&dest).map_err(|error| format!("{}: {error}", dest.display()))?;
        unpack::unpack(&archive, &name, &dest, max_bytes).map_err(|error| error.to_string())
    })
    .await
    .map_err(failure(Step::Unpack))?;
    drop(download_path);

    let installed = volume
        .install(staging.path(), tag)
        .map_err(|error| failure(Step::Unpack)(error.to_string()))?;
    // The staging path is now the release itself, or holds the directory it replaced, which
    // `Installed` deletes or restores.
    staging.0 = None;
    Ok((file, installed))
}

/// Switches `current`, runs the command and restarts the Deployment. On failure, everything
/// the activation changed is undone before the error returns.
async fn activate(
    context: &BuildContext,
    target: &TargetConfig,
    tag: &str,
    activation: &mut Activation,
) -> Result<Option<String>, BuildFailure> {
    let result = run_steps(context, target, tag, activation).await;
    if let Err(mut failed) = result {
        if let Err(error) = activation.revert() {
            failed
                .message
                .push_str(&format!("; switching back also failed: {error}"));
        }
        return Err(failed);
    }
    result
}

async fn run_steps(
    context: &BuildContext,
    target: &TargetConfig,
    tag: &str,
    activation: &mut Activation,
) -> Result<Option<String>, BuildFailure> {
    let mut release_dir = None;
    if let Some(volume) = &activation.volume {
        let dir = volume
            .release_dir(tag)
            .map_err(|error| failure(Step::Switch)(error.to_string()))?;
        activation.previous = Some(volume.current_target());
        volume
            .switch_current(Some(tag))
            .map_err(|error| failure(Step::Switch)(error.to_string()))?;
        release_dir = Some(dir);
    }

    let mut output_tail = None;
    if let Some(argv) = &target.command {
        let spec = CommandSpec {
            argv,
            env: command::build_env(
                &target.command_env,
                &target.name,
                tag,
                release_dir.as_deref(),
            ),
            cwd: release_dir.as_deref(),
            timeout: target.command_timeout(),
        };
        match command::run_command(&spec).await {
            Ok(tail) => output_tail = Some(tail),
            Err(error) => {
                return Err(BuildFailure {
                    step: Step::Command,
                    output_tail: error.tail().map(str::to_string),
                    message: error.to_string(),
                });
            }
        }
    }

    if let Some(deployment) = &target.restart_deployment {
        kube::restart_deployment(&context.kubernetes, deployment, Utc::now())
            .await
            .map_err(|error| BuildFailure {
                step: Step::Restart,
                message: error.to_string(),
                output_tail: output_tail.clone(),
            })?;
    }
    Ok(output_tail)
}

/// What a build changed on the volume, undone when dropped before `commit`.
struct Activation {
    volume: Option<Volume>,
    installed: Option<Installed>,
    /// `current`'s target before the switch (`Some(None)`: there was no `current`).
    previous: Option<Option<PathBuf>>,
    settled: bool,
}

impl Activation {
    fn new(volume: Option<Volume>) -> Self {
        Activation {
            volume,
            installed: None,
            previous: None,
            settled: false,
        }
    }

    fn release_dir(&self) -> Option<PathBuf> {
        self.installed
            .as_ref()
            .map(|installed| installed.dir().to_path_buf())
    }

    fn revert(&mut self) -> Result<(), String> {
        self.settled = true;
        let mut problems = Vec::new();
        if let (Some(volume), Some(previous)) = (&self.volume, self.previous.take())
            && let Err(error) = volume.set_current_target(previous.as_deref())
        {
            problems.push(error.to_string());
        }
        if let Some(installed) = self.installed.take()
            && let Err(error) = installed.undo()
        {
            problems.push(error.to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Keeps the changes, deletes a replaced directory and, given `keep`, prunes to that many
    /// releases. Failures here leave the new release live, so they are logged, not returned.
    async fn commit(&mut self, keep: Option<usize>) -> Vec<String> {
        self.settled = true;
        self.previous = None;
        if let Some(installed) = self.installed.take()
            && let Err(error) = installed.commit()
        {
            tracing::warn!(error = %error, "cannot delete the replaced release directory");
        }
        let (Some(volume), Some(keep)) = (self.volume.clone(), keep) else {
            return Vec::new();
        };
        let pruned = blocking(move || volume.prune(keep).map_err(|error| error.to_string())).await;
        pruned.unwrap_or_else(|error| {
            tracing::warn!(error = %error, "cannot prune old releases");
            Vec::new()
        })
    }
}

impl Drop for Activation {
    fn drop(&mut self) {
        if !self.settled
            && let Err(error) = self.revert()
        {
            tracing::error!(error = %error, "cannot undo a cancelled build");
        }
    }
}

/// A scratch file or directory, removed when dropped unless taken.
struct Scratch(Option<PathBuf>);

impl Scratch {
    fn path(&self) -> &Path {
        self.0
            .as_deref()
            .expect("a scratch path is read only before it is taken")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let Some(path) = self.0.take() else {
            return;
        };
        let removed = match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(_) => Ok(()),
        };
        if let Err(error) = removed {
            tracing::warn!(path = %path.display(), error = %error, "cannot remove a scratch file");
        }
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| Err(format!("the blocking task failed: {error}")))
}

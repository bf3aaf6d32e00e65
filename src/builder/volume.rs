//! A target's volume: unpacked releases in `<volume>/releases/<tag>/` and the relative symlink
//! `<volume>/current` that selects one of them. Other containers mount the volume and follow
//! `current`, so it changes only by an atomic rename and is always a relative link.
//!
//! A release directory's modification time records when it was installed: pruning keeps the
//! newest installs and rollback goes to the install before the current one.
//!
//! The functions here block; callers run them on a blocking thread or accept short waits.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

const RELEASES: &str = "releases";
const CURRENT: &str = "current";
/// Prefix of the build's scratch files and directories; release names cannot start with it.
const SCRATCH_PREFIX: &str = ".almagest-";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(
        "tag {tag:?} cannot be a directory name: use letters, digits and ._+- (at most 128, \
         starting with a letter or digit)"
    )]
    UnsafeTag { tag: String },
    #[error("{path} failed: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a symlink: move it away so the builder can manage it")]
    CurrentNotLink { path: PathBuf },
    #[error("no release is kept before {current:?}")]
    NothingToRollBack { current: String },
    #[error("{path} does not point into releases/, so there is no current release")]
    NoCurrent { path: PathBuf },
}

fn io_error(path: &Path, source: io::Error) -> VolumeError {
    VolumeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that a tag can name a release directory. Tags are text from the releases API, so
/// anything that could climb out of `releases/`, hide as a dot file or confuse a shell is
/// rejected rather than rewritten.
pub fn release_dir_name(tag: &str) -> Result<&str, VolumeError> {
    let mut chars = tag.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'));
    if valid {
        Ok(tag)
    } else {
        Err(VolumeError::UnsafeTag {
            tag: tag.to_string(),
        })
    }
}

/// A target's volume directory.
#[derive(Debug, Clone)]
pub struct Volume {
    root: PathBuf,
}

/// A directory just moved into `releases/`, which can be undone until committed.
#[derive(Debug)]
pub enum Installed {
    /// The tag had no directory before.
    New { dir: PathBuf },
    /// The tag's earlier directory was swapped out to `old`, to be deleted on commit or
    /// swapped back on undo.
    Replaced { dir: PathBuf, old: PathBuf },
}

impl Volume {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Volume { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn releases_dir(&self) -> PathBuf {
        self.root.join(RELEASES)
    }

    pub fn current_link(&self) -> PathBuf {
        self.root.join(CURRENT)
    }

    /// Returns the directory of a release after checking the tag.
    pub fn release_dir(&self, tag: &str) -> Result<PathBuf, VolumeError> {
        Ok(self.releases_dir().join(release_dir_name(tag)?))
    }

    /// Creates `releases/` and removes scratch files an interrupted build left behind.
    /// Builds of one target never overlap, so nothing else is using them.
    pub fn prepare(&self) -> Result<(), VolumeError> {
        let releases = self.releases_dir();
        fs::create_dir_all(&releases).map_err(|source| io_error(&releases, source))?;
        for dir in [&self.root, &releases] {
            let entries = fs::read_dir(dir).map_err(|source| io_error(dir, source))?;
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .as_bytes()
                    .starts_with(SCRATCH_PREFIX.as_bytes())
                {
                    let path = entry.path();
                    let removed = match entry.file_type() {
                        Ok(kind) if kind.is_dir() => fs::remove_dir_all(&path),
                        _ => fs::remove_file(&path),
                    };
                    if let Err(error) = removed {
                        tracing::warn!(path = %path.display(), error = %error, "cannot remove a leftover scratch file");
                    }
                }
            }
        }
        Ok(())
    }

    /// Returns a new scratch path in `releases/`. It is on the same file system as the
    /// releases, so a rename moves it into place.
    pub fn scratch_path(&self, kind: &str) -> PathBuf {
        let unique = uuid::Uuid::new_v4().simple();
        self.releases_dir()
            .join(format!("{SCRATCH_PREFIX}{kind}-{unique}"))
    }

    /// Moves a fully unpacked `staging` directory to `releases/<tag>`. An existing directory
    /// of that tag is swapped out in one atomic exchange where the kernel supports it.
    pub fn install(&self, staging: &Path, tag: &str) -> Result<Installed, VolumeError> {
        let dir = self.release_dir(tag)?;
        set_modified_now(staging)?;
        match fs::symlink_metadata(&dir) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::rename(staging, &dir).map_err(|source| io_error(&dir, source))?;
                sync_dir(&self.releases_dir());
                Ok(Installed::New { dir })
            }
            Err(source) => Err(io_error(&dir, source)),
            Ok(_) => {
                exchange(staging, &dir)?;
                sync_dir(&self.releases_dir());
                Ok(Installed::Replaced {
                    dir,
                    old: staging.to_path_buf(),
                })
            }
        }
    }

    /// Returns the tag `current` points at, if it is a link into `releases/`.
    pub fn current_tag(&self) -> Option<String> {
        let target = fs::read_link(self.current_link()).ok()?;
        let mut parts = target.components();
        let first = parts.next()?;
        let name = parts.next()?;
        if first.as_os_str() != RELEASES || parts.next().is_some() {
            return None;
        }
        let name = name.as_os_str().to_str()?;
        release_dir_name(name).ok().map(str::to_string)
    }

    /// Returns the raw target of `current`, if it is a symlink.
    pub fn current_target(&self) -> Option<PathBuf> {
        fs::read_link(self.current_link()).ok()
    }

    /// Points `current` at `releases/<tag>`, or removes it for `None`.
    pub fn switch_current(&self, tag: Option<&str>) -> Result<(), VolumeError> {
        match tag {
            Some(tag) => {
                let target = Path::new(RELEASES).join(release_dir_name(tag)?);
                self.set_current_target(Some(&target))
            }
            None => self.set_current_target(None),
        }
    }

    /// Points `current` at `target`, or removes it for `None`, by renaming a new link over
    /// the old one. Used directly only to restore a target read with `current_target`.
    pub fn set_current_target(&self, target: Option<&Path>) -> Result<(), VolumeError> {
        let link = self.current_link();
        match fs::symlink_metadata(&link) {
            Ok(meta) if !meta.file_type().is_symlink() => {
                return Err(VolumeError::CurrentNotLink { path: link });
            }
            _ => {}
        }
        let Some(target) = target else {
            return match fs::remove_file(&link) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    Err(io_error(&link, error))
                }
                _ => Ok(()),
            };
        };
        let unique = uuid::Uuid::new_v4().simple();
        let temporary = self.root.join(format!("{SCRATCH_PREFIX}current-{unique}"));
        symlink(target, &temporary).map_err(|source| io_error(&temporary, source))?;
        if let Err(source) = fs::rename(&temporary, &link) {
            let _ = fs::remove_file(&temporary);
            return Err(io_error(&link, source));
        }
        sync_dir(&self.root);
        Ok(())
    }

    /// Kept release tags, most recently installed first.
    pub fn kept_releases(&self) -> Result<Vec<String>, VolumeError> {
        let releases = self.releases_dir();
        let entries = match fs::read_dir(&releases) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io_error(&releases, source)),
        };
        let mut kept: Vec<(SystemTime, String)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_str()?.to_string();
                release_dir_name(&name).ok()?;
                let meta = fs::symlink_metadata(entry.path()).ok()?;
                if !meta.is_dir() {
                    return None;
                }
                Some((meta.modified().ok()?, name))
            })
            .collect();
        kept.sort_by(|a, b| b.cmp(a));
        Ok(kept.into_iter().map(|(_, name)| name).collect())
    }

    /// Returns the release installed most recently before the current one.
    pub fn previous_release(&self) -> Result<String, VolumeError> {
        let current = self.current_tag().ok_or_else(|| VolumeError::NoCurrent {
            path: self.current_link(),
        })?;
        let kept = self.kept_releases()?;
        kept.iter()
            .skip_while(|tag| **tag != current)
            .nth(1)
            .cloned()
            .ok_or(VolumeError::NothingToRollBack { current })
    }

    /// Deletes all but the `keep` most recently installed releases, never `current`.
    /// Returns the deleted tags.
    pub fn prune(&self, keep: usize) -> Result<Vec<String>, VolumeError> {
        let current = self.current_tag();
        let mut removed = Vec::new();
        for tag in self.kept_releases()?.into_iter().skip(keep) {
            if current.as_deref() == Some(tag.as_str()) {
                continue;
            }
            let dir = self.releases_dir().join(&tag);
            fs::remove_dir_all(&dir).map_err(|source| io_error(&dir, source))?;
            removed.push(tag);
        }
        Ok(removed)
    }
}

impl Installed {
    pub fn dir(&self) -> &Path {
        match self {
            Installed::New { dir } | Installed::Replaced { dir, .. } => dir,
        }
    }

    /// Removes what the install put in place and restores the earlier directory.
    pub fn undo(self) -> Result<(), VolumeError> {
        match self {
            Installed::New { dir } => {
                fs::remove_dir_all(&dir).map_err(|source| io_error(&dir, source))
            }
            Installed::Replaced { dir, old } => {
                exchange(&old, &dir)?;
                fs::remove_dir_all(&old).map_err(|source| io_error(&old, source))
            }
        }
    }

    /// Deletes the directory an install replaced.
    pub fn commit(self) -> Result<(), VolumeError> {
        match self {
            Installed::New { .. } => Ok(()),
            Installed::Replaced { old, .. } => {
                fs::remove_dir_all(&old).map_err(|source| io_error(&old, source))
            }
        }
    }
}

/// Swaps two paths with `renameat2(RENAME_EXCHANGE)`, so either name always exists for a
/// reader. File systems without the flag get two renames and a short gap.
fn exchange(a: &Path, b: &Path) -> Result<(), VolumeError> {
    let to_c = |path: &Path| {
        CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            io_error(
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"),
            )
        })
    };
    let (ca, cb) = (to_c(a)?, to_c(b)?);
    // SAFETY: both pointers are NUL-terminated strings that outlive the call.
    let result = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if result == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if !matches!(error.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
        return Err(io_error(b, error));
    }
    let parked = a.with_extension("exchange");
    fs::rename(b, &parked).map_err(|source| io_error(b, source))?;
    fs::rename(a, b).map_err(|source| io_error(a, source))?;
    fs::rename(&parked, a).map_err(|source| io_error(&parked, source))
}

fn set_modified_now(dir: &Path) -> Result<(), VolumeError> {
    File::open(dir)
        .and_then(|file| file.set_modified(SystemTime::now()))
        .map_err(|source| io_error(dir, source))
}

/// Makes a rename in `dir` durable. A failure costs only durability after a power loss, so
/// it is logged, not returned.
fn sync_dir(dir: &Path) {
    if let Err(error) = File::open(dir).and_then(|file| file.sync_all()) {
        tracing::debug!(path = %dir.display(), error = %error, "cannot sync directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume() -> (tempfile::TempDir, Volume) {
        let dir = tempfile::tempdir().unwrap();
        let volume = Volume::new(dir.path());
        volume.prepare().unwrap();
        (dir, volume)
    }

    fn install(volume: &Volume, tag: &str, marker: &str) -> Installed {
        let staging = volume.scratch_path("staging");
        fs::create_dir(&staging).unwrap();
        fs::write(staging.join("marker"), marker).unwrap();
        volume.install(&staging, tag).unwrap()
    }

    fn set_age(volume: &Volume, tag: &str, seconds_ago: u64) {
        let dir = volume.release_dir(tag).unwrap();
        let when = SystemTime::now() - std::time::Duration::from_secs(seconds_ago);
        File::open(dir).unwrap().set_modified(when).unwrap();
    }

    #[test]
    fn hostile_tags_rejected() {
        for tag in [
            "$(touch x)",
            "a;b",
            "a/b",
            "..",
            ".hidden",
            "",
            "a b",
            "x\0y",
        ] {
            assert!(release_dir_name(tag).is_err(), "tag {tag:?}");
        }
        for tag in ["v1.2.3", "1.0.0-rc.1", "v1.0.0+build.5", "site_2024"] {
            assert!(release_dir_name(tag).is_ok(), "tag {tag:?}");
        }
    }

    #[test]
    fn current_is_relative_link() {
        let (_dir, volume) = volume();
        install(&volume, "v1", "one").commit().unwrap();
        volume.switch_current(Some("v1")).unwrap();
        let target = fs::read_link(volume.current_link()).unwrap();
        assert_eq!(target, Path::new("releases/v1"));
        assert_eq!(volume.current_tag().as_deref(), Some("v1"));
    }

    #[test]
    fn reinstall_swaps_and_undo_restores() {
        let (_dir, volume) = volume();
        install(&volume, "v1", "first").commit().unwrap();
        let again = install(&volume, "v1", "second");
        let marker = volume.release_dir("v1").unwrap().join("marker");
        assert_eq!(fs::read_to_string(&marker).unwrap(), "second");
        again.undo().unwrap();
        assert_eq!(fs::read_to_string(&marker).unwrap(), "first");
    }

    #[test]
    fn prune_keeps_newest_and_current() {
        let (_dir, volume) = volume();
        for (age, tag) in [(40, "v1"), (30, "v2"), (20, "v3"), (10, "v4")] {
            install(&volume, tag, tag).commit().unwrap();
            set_age(&volume, tag, age);
        }
        volume.switch_current(Some("v1")).unwrap();
        let removed = volume.prune(2).unwrap();
        assert_eq!(removed, vec!["v2".to_string()]);
        assert_eq!(volume.kept_releases().unwrap(), vec!["v4", "v3", "v1"]);
    }

    #[test]
    fn previous_release_follows_install_order() {
        let (_dir, volume) = volume();
        for (age, tag) in [(30, "v1"), (20, "v2"), (10, "v3")] {
            install(&volume, tag, tag).commit().unwrap();
            set_age(&volume, tag, age);
        }
        volume.switch_current(Some("v3")).unwrap();
        assert_eq!(volume.previous_release().unwrap(), "v2");
        volume.switch_current(Some("v2")).unwrap();
        assert_eq!(volume.previous_release().unwrap(), "v1");
        volume.switch_current(Some("v1")).unwrap();
        assert!(volume.previous_release().is_err());
    }

    #[test]
    fn prepare_removes_scratch_files() {
        let (_dir, volume) = volume();
        let scratch = volume.scratch_path("staging");
        fs::create_dir(&scratch).unwrap();
        volume.prepare().unwrap();
        assert!(!scratch.exists());
    }

    #[test]
    fn current_directory_is_not_replaced() {
        let (_dir, volume) = volume();
        fs::create_dir(volume.current_link()).unwrap();
        let error = volume.switch_current(Some("v1")).unwrap_err();
        assert!(matches!(error, VolumeError::CurrentNotLink { .. }));
    }
}

//! The unpack step: extracts a `.tar.gz`, `.tgz` or `.zip` asset into an empty directory
//! without writing anything outside it. Any other asset is placed in the directory as one
//! file. Archives are untrusted. An entry with an absolute path, a `..` component, a link
//! leading out of the directory, a path through a link, or a device or FIFO fails the whole
//! unpack, and the caller discards the directory.
//!
//! The functions here block, so callers run them on a blocking thread.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;

/// A site with tens of thousands of files fits; more entries than this means a broken or
/// hostile archive.
const MAX_ENTRIES: u64 = 100_000;
/// Symlink targets are paths, never content; a longer one is not a real link.
const MAX_LINK_TARGET_BYTES: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    TarGz,
    Zip,
    /// Anything else: placed in the release directory as it is.
    File,
}

impl ArchiveKind {
    pub fn of(asset_name: &str) -> Self {
        let lower = asset_name.to_ascii_lowercase();
        if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            ArchiveKind::TarGz
        } else if lower.ends_with(".zip") {
            ArchiveKind::Zip
        } else {
            ArchiveKind::File
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("reading the archive failed: {0}")]
    Read(#[source] io::Error),
    #[error("reading the zip archive failed: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error("entry {entry:?} rejected: {reason}")]
    UnsafePath { entry: String, reason: &'static str },
    #[error("entry {entry:?} rejected: its link target {target:?} is outside the release")]
    LinkOutside { entry: String, target: String },
    #[error("entry {entry:?} rejected: its link target {target:?} does not exist")]
    LinkMissing { entry: String, target: String },
    #[error("entry {entry:?} rejected: {kind} entries are not allowed")]
    Unsupported { entry: String, kind: String },
    #[error("archive unpacks to more than {limit} bytes (raise max_unpacked_bytes)")]
    TooLarge { limit: u64 },
    #[error("archive has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("writing {path} failed: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Counts of what an unpack wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: u64,
    pub bytes: u64,
}

/// Unpacks `archive` (named `asset_name` in the release) into `dest`, an existing empty
/// directory, writing at most `max_bytes` of file content.
pub fn unpack(
    archive: &Path,
    asset_name: &str,
    dest: &Path,
    max_bytes: u64,
) -> Result<Unpacked, UnpackError> {
    let mut writer = Writer::new(dest, max_bytes);
    match ArchiveKind::of(asset_name) {
        ArchiveKind::TarGz => unpack_tar_gz(archive, &mut writer)?,
        ArchiveKind::Zip => unpack_zip(archive, &mut writer)?,
        ArchiveKind::File => {
            let name = safe_relative_path(asset_name)?;
            if name.components().count() != 1 {
                return Err(unsafe_path(asset_name, "an asset name cannot contain /"));
            }
            let file = File::open(archive).map_err(UnpackError::Read)?;
            writer.file(&name, asset_name, file, false)?;
        }
    }
    writer.check_links()?;
    Ok(Unpacked {
        entries: writer.entries,
        bytes: writer.bytes,
    })
}

fn unpack_tar_gz(archive: &Path, writer: &mut Writer) -> Result<(), UnpackError> {
    let file = File::open(archive).map_err(UnpackError::Read)?;
    let mut tar = tar::Archive::new(GzDecoder::new(file));
    for entry in tar.entries().map_err(UnpackError::Read)? {
        let entry = entry.map_err(UnpackError::Read)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        let executable = entry.header().mode().is_ok_and(|mode| mode & 0o111 != 0);
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        }
        let Some(path) = entry_path(&raw, kind.is_dir())? else {
            continue;
        };
        writer.count_entry()?;
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                writer.file(&path, &raw, entry, executable)?;
            }
            tar::EntryType::Directory => writer.dir(&path, &raw)?,
            tar::EntryType::Symlink => {
                let target = link_target(entry.link_name_bytes(), &raw)?;
                writer.symlink(&path, &raw, &target)?;
            }
            tar::EntryType::Link => {
                let target = link_target(entry.link_name_bytes(), &raw)?;
                writer.hard_link(&path, &raw, &target)?;
            }
            other => {
                return Err(UnpackError::Unsupported {
                    entry: raw,
                    kind: format!("{other:?}"),
                });
            }
        }
    }
    Ok(())
}

fn unpack_zip(archive: &Path, writer: &mut Writer) -> Result<(), UnpackError> {
    let file = File::open(archive).map_err(UnpackError::Read)?;
    let mut zip = zip::ZipArchive::new(file)?;
    for index in 0..zip.len() {
        let mut entry = zip.by_index(index)?;
        let raw = entry.name().to_string();
        let Some(path) = entry_path(&raw, entry.is_dir())? else {
            continue;
        };
        writer.count_entry()?;
        if entry.is_dir() {
            writer.dir(&path, &raw)?;
        } else if entry.is_symlink() {
            let mut target = Vec::new();
            (&mut entry)
                .take(MAX_LINK_TARGET_BYTES)
                .read_to_end(&mut target)
                .map_err(UnpackError::Read)?;
            let target = link_target(Some(target.into()), &raw)?;
            writer.symlink(&path, &raw, &target)?;
        } else {
            let executable = entry.unix_mode().is_some_and(|mode| mode & 0o111 != 0);
            writer.file(&path, &raw, entry, executable)?;
        }
    }
    Ok(())
}

/// Checks an entry's path and returns it relative to the root, or `None` for the archive's
/// root directory entry (`./`), which is skipped.
fn entry_path(raw: &str, is_dir: bool) -> Result<Option<PathBuf>, UnpackError> {
    let trimmed = raw.trim_end_matches('/');
    if is_dir && (trimmed.is_empty() || trimmed == ".") {
        return Ok(None);
    }
    safe_relative_path(raw).map(Some)
}

/// Accepts a non-empty relative path of plain components (`.` is dropped) and rejects
/// absolute paths, `..` and NUL bytes.
fn safe_relative_path(raw: &str) -> Result<PathBuf, UnpackError> {
    if raw.contains('\0') {
        return Err(unsafe_path(raw, "the path contains a NUL byte"));
    }
    let mut path = PathBuf::new();
    for component in Path::new(raw).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_path(raw, "the path contains ..")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_path(raw, "the path is absolute"));
            }
        }
    }
    if path.as_os_str().is_empty() {
        return Err(unsafe_path(raw, "the path is empty"));
    }
    Ok(path)
}

fn unsafe_path(raw: &str, reason: &'static str) -> UnpackError {
    UnpackError::UnsafePath {
        entry: raw.to_string(),
        reason,
    }
}

fn link_target(
    bytes: Option<std::borrow::Cow<'_, [u8]>>,
    raw: &str,
) -> Result<String, UnpackError> {
    let bytes = bytes.ok_or_else(|| unsafe_path(raw, "the link has no target"))?;
    let target = String::from_utf8_lossy(&bytes).into_owned();
    if target.is_empty() || target.contains('\0') {
        return Err(unsafe_path(
            raw,
            "the link target is empty or contains a NUL byte",
        ));
    }
    Ok(target)
}

/// Checks lexically that a symlink at `link` (relative to the root) pointing to `target`
/// resolves inside the root.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    let mut depth = link.components().count().saturating_sub(1);
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Writes entries below `root`, never through a symlink, and counts entries and bytes.
struct Writer {
    root: PathBuf,
    max_bytes: u64,
    bytes: u64,
    entries: u64,
    symlinks: Vec<(PathBuf, String, String)>,
}

impl Writer {
    fn new(root: &Path, max_bytes: u64) -> Self {
        Writer {
            root: root.to_path_buf(),
            max_bytes,
            bytes: 0,
            entries: 0,
            symlinks: Vec::new(),
        }
    }

    fn count_entry(&mut self) -> Result<(), UnpackError> {
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(UnpackError::TooManyEntries);
        }
        Ok(())
    }

    /// Creates the parent directories of `path`. An existing parent must be a real
    /// directory: a symlink there could lead the write outside the root.
    fn parents(&self, path: &Path, raw: &str) -> Result<(), UnpackError> {
        let mut current = self.root.clone();
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        for component in parent.components() {
            current.push(component);
            match fs::symlink_metadata(&current) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(unsafe_path(raw, "the path passes through a symlink"));
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(unsafe_path(raw, "a parent of the path is a file")),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&current).map_err(|source| write_error(&current, source))?;
                }
                Err(source) => return Err(write_error(&current, source)),
            }
        }
        Ok(())
    }

    fn file(
        &mut self,
        path: &Path,
        raw: &str,
        mut content: impl Read,
        executable: bool,
    ) -> Result<(), UnpackError> {
        self.parents(path, raw)?;
        let full = self.root.join(path);
        // create_new fails on any existing name, a symlink included, and O_NOFOLLOW is a
        // second guard against following one.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if executable { 0o755 } else { 0o644 })
            .custom_flags(libc::O_NOFOLLOW)
            .open(&full)
            .map_err(|source| write_error(&full, source))?;
        let remaining = self.max_bytes - self.bytes;
        // One byte past the remaining budget shows whether the entry goes over it.
        let written = io::copy(&mut (&mut content).take(remaining + 1), &mut file)
            .map_err(|source| write_error(&full, source))?;
        if written > remaining {
            return Err(UnpackError::TooLarge {
                limit: self.max_bytes,
            });
        }
        self.bytes += written;
        Ok(())
    }

    fn dir(&mut self, path: &Path, raw: &str) -> Result<(), UnpackError> {
        self.parents(path, raw)?;
        let full = self.root.join(path);
        match fs::symlink_metadata(&full) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(unsafe_path(raw, "a file or link of that name exists")),
            Err(_) => fs::create_dir(&full).map_err(|source| write_error(&full, source)),
        }
    }

    fn symlink(&mut self, path: &Path, raw: &str, target: &str) -> Result<(), UnpackError> {
        if !link_stays_inside(path, Path::new(target)) {
            return Err(UnpackError::LinkOutside {
                entry: raw.to_string(),
                target: target.to_string(),
            });
        }
        self.parents(path, raw)?;
        let full = self.root.join(path);
        symlink(target, &full).map_err(|source| write_error(&full, source))?;
        self.symlinks
            .push((path.to_path_buf(), raw.to_string(), target.to_string()));
        Ok(())
    }

    /// Creates a hard link to an earlier entry, named by its path in the archive. Every
    /// component of that path must be a real directory or file, so the link cannot reach
    /// outside.
    fn hard_link(&mut self, path: &Path, raw: &str, target: &str) -> Result<(), UnpackError> {
        let target_path = safe_relative_path(target)?;
        let mut current = self.root.clone();
        for component in target_path.components() {
            current.push(component);
            let meta = fs::symlink_metadata(&current).map_err(|_| UnpackError::LinkMissing {
                entry: raw.to_string(),
                target: target.to_string(),
            })?;
            if meta.file_type().is_symlink() {
                return Err(unsafe_path(raw, "the link target passes through a symlink"));
            }
        }
        if !current.is_file() {
            return Err(unsafe_path(raw, "a hard link must point to a regular file"));
        }
        self.parents(path, raw)?;
        let full = self.root.join(path);
        fs::hard_link(&current, &full).map_err(|source| write_error(&full, source))
    }

    /// Resolves every symlink once all entries exist. Each target was checked lexically when
    /// written, but a chain of links (`a -> b/..` with `b` itself a link) can still lead out,
    /// and only the resolved path shows it.
    fn check_links(&self) -> Result<(), UnpackError> {
        let root = fs::canonicalize(&self.root).map_err(UnpackError::Read)?;
        for (path, raw, target) in &self.symlinks {
            let resolved =
                fs::canonicalize(self.root.join(path)).map_err(|_| UnpackError::LinkMissing {
                    entry: raw.clone(),
                    target: target.clone(),
                })?;
            if !resolved.starts_with(&root) {
                return Err(UnpackError::LinkOutside {
                    entry: raw.clone(),
                    target: target.clone(),
                });
            }
        }
        Ok(())
    }
}

fn write_error(path: &Path, source: io::Error) -> UnpackError {
    UnpackError::Write {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_kind_by_suffix() {
        assert_eq!(ArchiveKind::of("site-1.0.tar.gz"), ArchiveKind::TarGz);
        assert_eq!(ArchiveKind::of("site.TGZ"), ArchiveKind::TarGz);
        assert_eq!(ArchiveKind::of("site.zip"), ArchiveKind::Zip);
        assert_eq!(ArchiveKind::of("wiki.db"), ArchiveKind::File);
    }

    #[test]
    fn relative_paths_checked() {
        assert_eq!(safe_relative_path("./a/b").unwrap(), Path::new("a/b"));
        assert!(safe_relative_path("/etc/passwd").is_err());
        assert!(safe_relative_path("a/../../b").is_err());
        assert!(safe_relative_path("a/../b").is_err());
        assert!(safe_relative_path("").is_err());
    }

    #[test]
    fn lexical_link_check() {
        assert!(link_stays_inside(Path::new("a/link"), Path::new("../b")));
        assert!(link_stays_inside(
            Path::new("link"),
            Path::new("sub/./file")
        ));
        assert!(!link_stays_inside(Path::new("link"), Path::new("../b")));
        assert!(!link_stays_inside(
            Path::new("a/link"),
            Path::new("../../b")
        ));
        assert!(!link_stays_inside(Path::new("link"), Path::new("/etc")));
    }
}

//! One file of the drop folder: which names are temporary, which stub a name publishes to,
//! what a candidate file contains, and how it moves to `sent/` or `failed/`. Everything here
//! is blocking file work, which the worker in [`super::drop_dir`] runs off the async threads.

use std::ffi::{OsStr, OsString};
use std::io::Read as _;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::bus::Stub;

/// How many numbered names (`wiki.1.txt`, `wiki.2.txt`, …) are tried on a name clash.
const MAX_CLASH_SUFFIX: u32 = 100_000;
/// Name endings of temporary files (compared ignoring ASCII case), besides dot-files and `*~`.
const TEMPORARY_SUFFIXES: [&str; 5] = [".tmp", ".swp", ".swo", ".swx", ".part"];

/// Returns whether a file name marks a file that is still being written or is not meant to be
/// published.
pub fn is_temporary(name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    if bytes.starts_with(b".") || bytes.ends_with(b"~") {
        return true;
    }
    let lower = bytes.to_ascii_lowercase();
    TEMPORARY_SUFFIXES
        .iter()
        .any(|suffix| lower.ends_with(suffix.as_bytes()))
}

/// Returns the stub a file name publishes to: everything before the last dot.
pub fn stub_for(name: &str) -> Result<Stub, String> {
    let stem = match name.rfind('.') {
        Some(dot) if dot > 0 => &name[..dot],
        _ => name,
    };
    Stub::parse(stem).map_err(|error| format!("file name {name:?}: {error}"))
}

/// `wiki.txt` numbered `n`: `wiki.n.txt`; `wiki`: `wiki.n`.
fn numbered_name(name: &OsStr, n: u32) -> OsString {
    let bytes = name.as_bytes();
    let numbered = match bytes.iter().rposition(|byte| *byte == b'.') {
        Some(dot) if dot > 0 => {
            let mut numbered = bytes[..dot].to_vec();
            numbered.extend_from_slice(format!(".{n}").as_bytes());
            numbered.extend_from_slice(&bytes[dot..]);
            numbered
        }
        _ => {
            let mut numbered = bytes.to_vec();
            numbered.extend_from_slice(format!(".{n}").as_bytes());
            numbered
        }
    };
    OsString::from_vec(numbered)
}

/// `failed/<name>.reason` beside a failed file.
fn reason_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".reason");
    file.with_file_name(name)
}

fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

/// Moves `file` into `folder` under its own name, or a numbered one if that is taken (by a
/// file or, with `with_reason`, by a `.reason` file). Returns the new path.
pub(super) fn move_into(file: &Path, folder: &Path, with_reason: bool) -> std::io::Result<PathBuf> {
    let name = file
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path has no file name"))?;
    std::fs::create_dir_all(folder)?;
    for n in 0..MAX_CLASH_SUFFIX {
        let candidate = if n == 0 {
            name.to_os_string()
        } else {
            numbered_name(name, n)
        };
        let target = folder.join(candidate);
        if exists(&target) || (with_reason && exists(&reason_path(&target))) {
            continue;
        }
        std::fs::rename(file, &target)?;
        return Ok(target);
    }
    Err(std::io::Error::other(format!(
        "{MAX_CLASH_SUFFIX} files with this name are already in {}",
        folder.display()
    )))
}

/// Moves `file` to `failed/` and writes why beside it.
pub(super) fn move_to_failed(file: &Path, failed: &Path, reason: &str) -> std::io::Result<PathBuf> {
    let target = move_into(file, failed, true)?;
    std::fs::write(reason_path(&target), format!("{reason}\n"))?;
    Ok(target)
}

/// A file's identity and version, to recognise a file that was already published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct FileVersion {
    device: u64,
    inode: u64,
    len: u64,
    modified_ns: i128,
}

impl FileVersion {
    pub(super) fn of(metadata: &std::fs::Metadata) -> FileVersion {
        FileVersion {
            device: metadata.dev(),
            inode: metadata.ino(),
            len: metadata.size(),
            modified_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
        }
    }
}

/// The verdict on a candidate file.
#[derive(Debug)]
pub(super) enum Inspection {
    /// Not for us (anymore): gone, a folder, a temporary name, outside the folder.
    Skip,
    /// Cannot be published; the reason goes into its `.reason` file.
    Invalid(String),
    Ready {
        stub: Stub,
        text: String,
        version: FileVersion,
    },
}

/// Reads a candidate file, checking its name, type, size and encoding. Symbolic links are
/// never followed, and nothing but regular files is opened.
pub(super) fn inspect(dir: &Path, path: &Path, max_bytes: u64) -> Inspection {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Inspection::Skip;
    };
    if parent != dir || is_temporary(name) {
        return Inspection::Skip;
    }
    let metadata = match path.symlink_metadata() {
        Ok(metadata) => metadata,
        Err(error) => {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %path.display(), error = %error, "cannot inspect a dropped file");
            }
            return Inspection::Skip;
        }
    };
    if metadata.is_dir() {
        return Inspection::Skip;
    }
    if !metadata.is_file() {
        return Inspection::Invalid(
            "not a regular file: only regular files are published, and symbolic links are \
             not followed"
                .into(),
        );
    }
    let Some(name) = name.to_str() else {
        return Inspection::Invalid("the file name is not valid UTF-8".into());
    };
    let stub = match stub_for(name) {
        Ok(stub) => stub,
        Err(reason) => return Inspection::Invalid(reason),
    };
    if metadata.len() > max_bytes {
        return too_large(metadata.len(), max_bytes);
    }
    read_file(path, max_bytes, stub)
}

fn too_large(len: u64, max_bytes: u64) -> Inspection {
    Inspection::Invalid(format!(
        "the file has {len} bytes, more than control.max_drop_bytes ({max_bytes})"
    ))
}

fn read_file(path: &Path, max_bytes: u64, stub: Stub) -> Inspection {
    // O_NONBLOCK keeps a FIFO swapped in after the check above from blocking the open.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let mut file = match opened {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Inspection::Skip,
        Err(error) => return Inspection::Invalid(format!("cannot open the file: {error}")),
    };
    let metadata = match file.metadata() {
        Ok(metadata) if metadata.is_file() => metadata,
        Ok(_) => return Inspection::Invalid("not a regular file".into()),
        Err(error) => return Inspection::Invalid(format!("cannot read the file: {error}")),
    };
    let mut bytes = Vec::with_capacity(metadata.len().min(max_bytes) as usize);
    if let Err(error) = (&mut file).take(max_bytes + 1).read_to_end(&mut bytes) {
        return Inspection::Invalid(format!("cannot read the file: {error}"));
    }
    if bytes.len() as u64 > max_bytes {
        return too_large(bytes.len() as u64, max_bytes);
    }
    if bytes.is_empty() {
        return Inspection::Invalid("the file is empty: write the message into it".into());
    }
    match String::from_utf8(bytes) {
        Ok(text) => Inspection::Ready {
            stub,
            text,
            version: FileVersion::of(&metadata),
        },
        Err(error) => Inspection::Invalid(format!("the file is not valid UTF-8: {error}")),
    }
}

/// Files in `dir` that are not temporary, oldest first, with their modification times.
pub(super) fn list_candidates(dir: &Path) -> std::io::Result<Vec<(PathBuf, SystemTime)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if is_temporary(&entry.file_name()) {
            continue;
        }
        let Ok(metadata) = entry.path().symlink_metadata() else {
            continue;
        };
        if metadata.is_dir() {
            continue;
        }
        let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        found.push((entry.path(), modified));
    }
    found.sort_by_key(|(_, modified)| *modified);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names() {
        for name in [
            ".hidden",
            ".#wiki.txt",
            "wiki.txt~",
            "wiki.tmp",
            "wiki.TMP",
            ".wiki.txt.swp",
            "wiki.swp",
            "wiki.swo",
            "download.part",
        ] {
            assert!(is_temporary(OsStr::new(name)), "{name}");
        }
        for name in ["wiki.txt", "wiki", "tmp.txt", "a.swpx"] {
            assert!(!is_temporary(OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn stub_is_before_last_dot() {
        assert_eq!(stub_for("wiki.txt").unwrap().as_str(), "wiki");
        assert_eq!(
            stub_for("wiki.reload.json").unwrap().as_str(),
            "wiki.reload"
        );
        assert_eq!(stub_for("wiki").unwrap().as_str(), "wiki");
    }

    #[test]
    fn invalid_stub_names_file() {
        let reason = stub_for("a b.txt").unwrap_err();
        assert!(reason.contains("\"a b.txt\""), "{reason}");
        assert!(reason.contains("invalid stub"), "{reason}");
    }

    #[test]
    fn numbered_names() {
        assert_eq!(numbered_name(OsStr::new("wiki.txt"), 2), "wiki.2.txt");
        assert_eq!(numbered_name(OsStr::new("wiki"), 1), "wiki.1");
    }

    #[test]
    fn clash_gets_numbered_name() {
        let dir = tempfile::tempdir().unwrap();
        let sent = dir.path().join("sent");
        for round in 0..3 {
            let file = dir.path().join("wiki.txt");
            std::fs::write(&file, format!("round {round}")).unwrap();
            move_into(&file, &sent, false).unwrap();
        }
        for name in ["wiki.txt", "wiki.1.txt", "wiki.2.txt"] {
            assert!(sent.join(name).exists(), "{name}");
        }
        assert_eq!(
            std::fs::read_to_string(sent.join("wiki.2.txt")).unwrap(),
            "round 2"
        );
    }

    #[test]
    fn failed_file_gets_reason() {
        let dir = tempfile::tempdir().unwrap();
        let failed = dir.path().join("failed");
        let file = dir.path().join("a b.txt");
        std::fs::write(&file, "x").unwrap();
        let target = move_to_failed(&file, &failed, "bad name").unwrap();
        assert_eq!(target, failed.join("a b.txt"));
        let reason = std::fs::read_to_string(failed.join("a b.txt.reason")).unwrap();
        assert_eq!(reason, "bad name\n");
    }

    #[test]
    fn inspect_reads_valid_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wiki.txt");
        std::fs::write(&file, "reload\n").unwrap();
        let Inspection::Ready { stub, text, .. } = inspect(dir.path(), &file, 100) else {
            panic!("not ready");
        };
        assert_eq!(stub.as_str(), "wiki");
        assert_eq!(text, "reload\n");
    }

    #[test]
    fn inspect_rejects_large_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wiki.txt");
        std::fs::write(&file, "0123456789").unwrap();
        let inspection = inspect(dir.path(), &file, 9);
        assert!(
            matches!(&inspection, Inspection::Invalid(reason) if reason.contains("max_drop_bytes")),
            "{inspection:?}"
        );
    }

    #[test]
    fn inspect_rejects_non_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wiki.txt");
        std::fs::write(&file, b"ok \xff\xfe").unwrap();
        let inspection = inspect(dir.path(), &file, 100);
        assert!(
            matches!(&inspection, Inspection::Invalid(reason) if reason.contains("UTF-8")),
            "{inspection:?}"
        );
    }

    #[test]
    fn inspect_rejects_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wiki.txt");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            inspect(dir.path(), &file, 100),
            Inspection::Invalid(_)
        ));
    }

    #[test]
    fn inspect_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "token").unwrap();
        let drop = dir.path().join("drop");
        std::fs::create_dir(&drop).unwrap();
        let link = drop.join("wiki.txt");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let inspection = inspect(&drop, &link, 100);
        assert!(
            matches!(&inspection, Inspection::Invalid(reason) if reason.contains("regular file")),
            "{inspection:?}"
        );
    }

    #[test]
    fn inspect_skips_temporary_and_outside() {
        let dir = tempfile::tempdir().unwrap();
        let temporary = dir.path().join("wiki.swp");
        std::fs::write(&temporary, "x").unwrap();
        let sub = dir.path().join("sent");
        std::fs::create_dir(&sub).unwrap();
        let inside_sub = sub.join("wiki.txt");
        std::fs::write(&inside_sub, "x").unwrap();
        assert!(matches!(
            inspect(dir.path(), &temporary, 100),
            Inspection::Skip
        ));
        assert!(matches!(
            inspect(dir.path(), &inside_sub, 100),
            Inspection::Skip
        ));
        assert!(matches!(inspect(dir.path(), &sub, 100), Inspection::Skip));
        let gone = dir.path().join("gone.txt");
        assert!(matches!(inspect(dir.path(), &gone, 100), Inspection::Skip));
    }
}

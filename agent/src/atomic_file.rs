//! Atomic file writes: a new file is written and fsynced beside its
//! destination, then renamed over it and the directory fsynced, so readers
//! and crashes see the old content or the new one, never half of one.
//! [`stage`] and [`Staged::commit`] split the two halves for a writer that
//! replaces several files together (stage all, then commit all).

use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically (see the module), creating the file
/// with mode 0666 less the umask.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_created(path, bytes, 0o666)
}

/// [`write_atomic`] for a file only its owner may read (mode 0600, from its
/// creation on: no moment where others could open it).
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_created(path, bytes, 0o600)
}

fn write_created(path: &Path, bytes: &[u8], create: u32) -> std::io::Result<()> {
    let staged = stage(path, bytes, create, None)?;
    staged.commit().inspect_err(|_| staged.discard())
}

/// A new file written and fsynced beside its destination, to be renamed
/// over it ([`Staged::commit`]) or removed ([`Staged::discard`]).
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
}

impl Staged {
    /// The destination.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the staged file over its destination and fsyncs the
    /// directory (without that the rename itself may not survive a crash).
    pub fn commit(&self) -> std::io::Result<()> {
        fs::rename(&self.tmp, &self.path)?;
        File::open(&self.dir)?.sync_all()
    }

    /// Removes the staged file, best effort (a leftover temp file is
    /// harmless but untidy).
    pub fn discard(&self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Writes and fsyncs `bytes` in a new temp file beside `path`, created with
/// at most `create` (less the umask: no moment where more may read it), then
/// set to exactly `exact` when given (an operator's explicit mode).
pub fn stage(
    path: &Path,
    bytes: &[u8],
    create: u32,
    exact: Option<u32>,
) -> std::io::Result<Staged> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let staged = Staged {
        tmp,
        path: path.to_path_buf(),
        dir,
    };
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(create)
            .open(&staged.tmp)?;
        if let Some(mode) = exact {
            f.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        f.write_all(bytes)?;
        f.sync_all()
    })();
    match written {
        Ok(()) => Ok(staged),
        Err(e) => {
            staged.discard();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_staged_file_replaces_the_destination_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.conf");
        fs::write(&path, b"old").unwrap();
        let staged = stage(&path, b"new", 0o600, Some(0o640)).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"old");
        staged.commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(mode(&path), 0o640);
        // Nothing left beside it.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_discarded_stage_leaves_the_destination_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.conf");
        fs::write(&path, b"old").unwrap();
        stage(&path, b"new", 0o666, None).unwrap().discard();
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn private_files_are_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_atomic_private(&path, b"secret").unwrap();
        assert_eq!(mode(&path), 0o600);
        write_atomic(&path, b"public").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"public");
    }

    #[test]
    fn a_missing_directory_is_an_error_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("out.conf");
        assert!(write_atomic(&path, b"x").is_err());
        assert!(!path.exists());
    }
}

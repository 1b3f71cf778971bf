//! The agent's disk cache: the last applied snapshot of a group, written
//! atomically (temp file, fsync, rename, fsync of the directory) so a crash at
//! any moment leaves either the old file or the new one, never half of one.
//!
//! The file is an encoded `vane.v1.StoredVersion` (version, hash and the
//! snapshot's bytes). Nothing in it is trusted: loading hands the bytes to the
//! same apply path as a live update, which recomputes the hash over the
//! content and validates it.
//!
//! It may hold private keys (a snapshot's inline `private_key`s): the file is
//! written with mode 0600 and its directory is kept at 0700 (created so, or
//! tightened, with a log line, when it was open to others), so only the
//! agent's user reads it.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;
use vane_proto as pb;

pub use crate::atomic_file::{write_atomic, write_atomic_private};

/// Largest cache file read back (a snapshot is at most a few MiB).
const MAX_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// What the cache holds: a candidate for the apply path.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedSnapshot {
    /// Version the control plane gave it.
    pub version: u64,
    /// Hash the control plane gave it (checked again on apply).
    pub hash: String,
    /// Encoded `vane.v1.Snapshot`.
    pub body: Bytes,
}

/// Why the cache could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// No cache file yet.
    #[error("no cache file at {0}")]
    Missing(PathBuf),
    /// Reading or writing failed.
    #[error("cache file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a cache file (truncated, corrupted, foreign).
    #[error("cache file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The cache of one group in one directory.
#[derive(Debug, Clone)]
pub struct DiskCache {
    dir: PathBuf,
    path: PathBuf,
}

impl DiskCache {
    /// The cache of `group` in `dir` (the file is `<dir>/<group>.snapshot.pb`).
    pub fn new(dir: impl Into<PathBuf>, group: &str) -> Self {
        let dir = dir.into();
        let path = dir.join(format!("{group}.snapshot.pb"));
        Self { dir, path }
    }

    /// The cache file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the cache file. The content is not verified here.
    pub fn load(&self) -> Result<CachedSnapshot, CacheError> {
        let io = |source| CacheError::Io {
            path: self.path.clone(),
            source,
        };
        let corrupt = |reason: String| CacheError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        // Not followed if it is a symbolic link (one planted to /dev/zero
        // would be read forever), and opened without blocking (a FIFO would
        // hang startup); then only a regular file of bounded size is read,
        // and never more than the limit even if it grows meanwhile.
        use std::io::Read as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CacheError::Missing(self.path.clone()));
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
                return Err(corrupt("is a symbolic link".into()));
            }
            Err(e) => return Err(io(e)),
        };
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(corrupt("is not a regular file".into()));
        }
        if meta.len() > MAX_CACHE_BYTES {
            return Err(corrupt(format!(
                "{} bytes is over the limit of {MAX_CACHE_BYTES}",
                meta.len()
            )));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.take(MAX_CACHE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_CACHE_BYTES {
            return Err(corrupt(format!(
                "over the limit of {MAX_CACHE_BYTES} bytes"
            )));
        }
        decode(&bytes).map_err(corrupt)
    }

    /// Writes the cache file atomically and durably.
    pub fn store(&self, snapshot: &CachedSnapshot) -> Result<(), CacheError> {
        let io = |source| CacheError::Io {
            path: self.path.clone(),
            source,
        };
        private_dir(&self.dir).map_err(|source| CacheError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let record = pb::StoredVersion {
            info: Some(pb::VersionInfo {
                version: snapshot.version,
                hash: snapshot.hash.clone(),
                size_bytes: snapshot.body.len() as u64,
                ..pb::VersionInfo::default()
            }),
            snapshot: snapshot.body.clone(),
        };
        write_atomic_private(&self.path, &record.encode_to_vec()).map_err(io)
    }
}

/// Creates `dir` (and its missing parents) with mode 0700, or tightens an
/// existing one of this user's that others may read or enter to 0700,
/// saying so in the log. A shared directory (sticky, like `/tmp`, or
/// another user's) is left as it is, with a warning: the cache file's own
/// mode 0600 still keeps other users out.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
    match fs::metadata(dir) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 == 0 {
                return Ok(());
            }
            // The owner of /proc/self is this process's effective user.
            let ours = fs::metadata("/proc/self").is_ok_and(|me| me.uid() == meta.uid());
            let shared = mode & 0o1000 != 0 || !ours;
            let tightened =
                !shared && fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).is_ok();
            if tightened {
                tracing::warn!(
                    dir = %dir.display(),
                    was = format!("{mode:o}"),
                    "cache directory was open to other users (it may hold private keys); set its mode to 700"
                );
            } else {
                tracing::warn!(
                    dir = %dir.display(),
                    mode = format!("{mode:o}"),
                    "cache directory is shared with other users and was left as it is; the cache file is mode 600, but give the agent a --cache-dir of its own"
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir),
        Err(e) => Err(e),
    }
}

/// Parses the bytes of a cache file; the error says what is wrong with them.
/// The content is not verified here. Public so the fuzz targets
/// (`vane-fuzzing`) run exactly what [`DiskCache::load`] runs.
pub fn decode(bytes: &[u8]) -> Result<CachedSnapshot, String> {
    let stored = pb::StoredVersion::decode(bytes)
        .map_err(|e| format!("not a vane.v1.StoredVersion: {e}"))?;
    let info = stored.info.ok_or_else(|| "no version info".to_string())?;
    if info.version == 0 || info.hash.is_empty() {
        return Err("no version or hash".into());
    }
    Ok(CachedSnapshot {
        version: info.version,
        hash: info.hash,
        body: stored.snapshot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_special_files_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path(), "edge");
        std::os::unix::fs::symlink("/dev/zero", &cache.path).unwrap();
        let e = cache.load().unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        std::fs::remove_file(&cache.path).unwrap();
        std::fs::create_dir(&cache.path).unwrap();
        let e = cache.load().unwrap_err();
        assert!(e.to_string().contains("is not a regular file"), "{e}");
    }

    #[test]
    fn the_file_is_0600_and_its_directory_0700() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let root = tempfile::tempdir().unwrap();
        let snap = CachedSnapshot {
            version: 1,
            hash: "ab".repeat(32),
            body: Bytes::from_static(b"\x0a\x00"),
        };
        // Created by the cache.
        let dir = root.path().join("a/b");
        let cache = DiskCache::new(&dir, "edge");
        cache.store(&snap).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(cache.path()), 0o600);
        // An existing directory open to others is tightened; a file left
        // readable by an older release is replaced by a 0600 one.
        let open = root.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        let cache = DiskCache::new(&open, "edge");
        fs::write(cache.path(), b"old").unwrap();
        fs::set_permissions(cache.path(), fs::Permissions::from_mode(0o644)).unwrap();
        cache.store(&snap).unwrap();
        assert_eq!(mode(&open), 0o700);
        assert_eq!(mode(cache.path()), 0o600);
        assert_eq!(cache.load().unwrap(), snap);
        // A shared directory like /tmp (sticky, open to all) is left as it
        // is; the file is still 0600.
        let shared = root.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        let cache = DiskCache::new(&shared, "edge");
        cache.store(&snap).unwrap();
        let full = fs::metadata(&shared).unwrap().permissions().mode() & 0o7777;
        assert_eq!(full, 0o1777);
        assert_eq!(mode(cache.path()), 0o600);
    }

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path(), "edge");
        assert!(matches!(cache.load(), Err(CacheError::Missing(_))));
        let snap = CachedSnapshot {
            version: 7,
            hash: "ab".repeat(32),
            body: Bytes::from_static(b"\x0a\x00"),
        };
        cache.store(&snap).unwrap();
        assert_eq!(cache.load().unwrap(), snap);

        // Truncation is detected (or yields content that fails its hash later).
        let bytes = fs::read(cache.path()).unwrap();
        fs::write(cache.path(), &bytes[..bytes.len() / 2]).unwrap();
        assert!(cache.load().is_err());

        fs::write(cache.path(), b"garbage garbage garbage").unwrap();
        assert!(matches!(cache.load(), Err(CacheError::Corrupt { .. })));

        // No temp files are left behind.
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }
}

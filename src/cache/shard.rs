//! Shards and who owns them: the thread-per-core contract of the cache, and
//! opening the cache directory.
//!
//! - There is one shard per worker. A key belongs to shard
//!   `crc32(key) % shards` ([`owner_of`]) — stable across restarts.
//! - **Only the owner writes its shard**: fills, refreshes and purges for a key
//!   run on the owner worker, which receives them as [`ShardJob`]s over its
//!   channel (see [`super::owner`]). The `ShardStore` lives in the owner's
//!   thread and is never shared.
//! - **Anyone reads**: every worker serves hits for every key through the
//!   shard's `ShardReader` (a lock-free index shared read-only), straight from
//!   the segment mmaps.
//! - The cache directory is held with an exclusive `flock` for the life of the
//!   process, so two chartcache processes can never share one.
//!
//! Does not own: what is sent to an owner and when (the facade, [`super`]).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::coalesce::Inflight;
use super::error::Error as StoreError;
use super::store::{ShardStore, StoreConfig};

/// Errors opening the cache.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cache directory {path} is not usable: {source}. Fix: create it and make it writable by this user, or pass --cache-dir DIR")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cache directory {path} is in use by another chartcache process{}. Fix: stop it, or give this one its own --cache-dir", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { path: PathBuf, holder: Option<u32> },
    #[error("cache shard {shard} in {path}: {source}")]
    Store {
        shard: usize,
        path: PathBuf,
        source: StoreError,
    },
}

/// Work sent to a shard's owner.
pub enum ShardJob {
    /// Fetch `inflight.key` from upstream and store it (or confirm the stored
    /// copy when `etag` is set and upstream answers 304). An upstream 404 is
    /// remembered in the negative cache when `remember_not_found` is set.
    Fill {
        inflight: Arc<Inflight>,
        etag: Option<String>,
        remember_not_found: bool,
    },
    /// Remove one key (`prefix = false`) or every key starting with `key`;
    /// replies with the number of objects removed.
    Purge {
        key: String,
        prefix: bool,
        reply: std::sync::mpsc::Sender<usize>,
    },
}

/// The shard owning `key` among `shards`, chosen by the key from its first `/` on:
/// a repository's namespace in front of it (`crate::repo`) does not move an object
/// to another shard, so the single-repository form places objects as before
/// namespaces existed (the same object name in two repositories shares a shard).
#[inline]
pub fn owner_of(key: &str, shards: usize) -> usize {
    let placed = key.find('/').map_or(key, |i| &key[i..]);
    (crc32fast::hash(placed.as_bytes()) as usize) % shards.max(1)
}

/// Holds the cache directory's lock file; released when dropped (or when the
/// process dies, including `kill -9`).
pub struct DirLock {
    _file: File,
}

/// Locks `dir`, then opens (and recovers) its `shards` shards, splitting
/// `total_size` evenly between them; each keeps bodies up to `max_object` bytes (its
/// default when `None`: see [`super::store`], Large objects).
pub fn open_stores(
    dir: &Path,
    total_size: u64,
    max_object: Option<u64>,
    shards: usize,
) -> Result<(Vec<ShardStore>, DirLock), Error> {
    let dir_err = |source| Error::Dir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(dir_err)?;
    let lock = lock_dir(dir)?;
    reconcile_layout(dir, shards).map_err(dir_err)?;
    let per_shard = total_size / shards.max(1) as u64;
    let mut stores = Vec::with_capacity(shards);
    for shard in 0..shards {
        let path = dir.join(format!("shard-{shard}"));
        let store = ShardStore::open(StoreConfig {
            dir: path.clone(),
            shard: shard as u32,
            capacity: per_shard,
            max_object,
        })
        .map_err(|source| Error::Store {
            shard,
            path,
            source,
        })?;
        stores.push(store);
    }
    Ok((stores, lock))
}

fn lock_dir(dir: &Path) -> Result<DirLock, Error> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|source| Error::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
    // SAFETY: flock on a valid, owned file descriptor; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let holder = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        return Err(Error::Locked {
            path: dir.to_path_buf(),
            holder,
        });
    }
    let _ = file.set_len(0);
    let _ =
        std::os::unix::fs::FileExt::write_at(&file, std::process::id().to_string().as_bytes(), 0);
    Ok(DirLock { _file: file })
}

/// Keys are spread over shards by `crc32 % shards`, so a cache written with a
/// different worker count would put keys in the wrong shard: start such a
/// cache cold (it is a cache) rather than serve misrouted entries.
fn reconcile_layout(dir: &Path, shards: usize) -> std::io::Result<()> {
    let layout = dir.join("LAYOUT");
    let want = format!("chartcache-cache v1 shards={shards}\n");
    match std::fs::read_to_string(&layout) {
        Ok(have) if have == want => return Ok(()),
        Ok(have) => {
            tracing::warn!(
                dir = %dir.display(),
                was = have.trim(),
                now = want.trim(),
                "worker count changed: starting the cache cold"
            );
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                if entry.file_name().to_string_lossy().starts_with("shard-") {
                    std::fs::remove_dir_all(entry.path())?;
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::write(&layout, want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_is_stable_and_spread() {
        assert_eq!(owner_of("/index.yaml", 4), owner_of("/index.yaml", 4));
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[owner_of(&format!("/chart-{i}.tgz"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn second_lock_on_same_dir_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let _a = lock_dir(d.path()).unwrap();
        let Err(Error::Locked { holder, .. }) = lock_dir(d.path()) else {
            panic!("second lock must fail")
        };
        assert_eq!(holder, Some(std::process::id()));
    }

    #[test]
    fn layout_change_starts_cold() {
        let d = tempfile::tempdir().unwrap();
        reconcile_layout(d.path(), 2).unwrap();
        std::fs::create_dir(d.path().join("shard-1")).unwrap();
        reconcile_layout(d.path(), 2).unwrap();
        assert!(d.path().join("shard-1").exists());
        reconcile_layout(d.path(), 3).unwrap();
        assert!(!d.path().join("shard-1").exists());
    }
}

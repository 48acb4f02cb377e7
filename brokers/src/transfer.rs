//! Moving one partition's dedup state between consumers through an object
//! store: [`Shipper`] ships the state of an open store (rounds in the
//! background, a last one at revoke), [`restore`] builds a store directory
//! from what was shipped (at assign).
//!
//! INTERIM (until the `dedupstore-replicate` crate exists): the store
//! directory is copied after close, so only the final round of a revoke
//! ships anything; background rounds ship nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dedupstore::Store;

use crate::BoxError;

type Res<T> = Result<T, BoxError>;

/// Where partitions' states are shipped to.
#[derive(Clone)]
pub struct Remote {
    root: PathBuf,
}

impl Remote {
    /// An object store on the local file system, rooted at `root`.
    pub fn local(root: &Path) -> Res<Remote> {
        std::fs::create_dir_all(root)?;
        Ok(Remote { root: root.into() })
    }
}

/// Ships one partition's store.
pub struct Shipper {
    store: Arc<Store>,
    dest: PathBuf,
}

impl Shipper {
    /// A shipper of `store` under `name` in `remote`.
    pub fn new(store: Arc<Store>, remote: &Remote, name: &str) -> Res<Shipper> {
        Ok(Shipper {
            store,
            dest: remote.root.join(name),
        })
    }

    /// One background round: `true` if it shipped, and then everything
    /// durable in the store when it started is restorable.
    pub fn ship(&self) -> Res<bool> {
        Ok(false)
    }

    /// The revoke: a final sync, a final round, and the store closed.
    pub fn finish(self) -> Res<()> {
        self.store.sync()?;
        let store =
            Arc::try_unwrap(self.store).map_err(|_| "the store is still in use at revoke")?;
        let dir = store.dir().to_path_buf();
        store.close()?;
        let tmp = self.dest.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            if e.file_type()?.is_file() && e.file_name() != "LOCK" {
                std::fs::copy(e.path(), tmp.join(e.file_name()))?;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dest);
        std::fs::rename(&tmp, &self.dest)?;
        Ok(())
    }
}

/// Builds the store of partition `name` in `dir` (new or empty) from what
/// was shipped; `false` if nothing was ever shipped (then `dir` is left for
/// a fresh store).
pub fn restore(remote: &Remote, name: &str, dir: &Path) -> Res<bool> {
    let src = remote.root.join(name);
    if !src.exists() {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    for e in std::fs::read_dir(&src)? {
        let e = e?;
        std::fs::copy(e.path(), dir.join(e.file_name()))?;
    }
    Ok(true)
}

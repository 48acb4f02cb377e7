//! Moving one partition's dedup state between consumers through an object
//! store, with `dedupstore-replicate`: [`Shipper`] ships the state of an
//! open store (rounds in the background, a last one at revoke), [`restore`]
//! builds a store directory from the latest round shipped (at assign).
//! Each partition is the prefix `<name>` in the object store.

use std::path::Path;
use std::sync::Arc;

use dedupstore::Store;
use dedupstore_replicate::{ReplicateOptions, Replicator};
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;

use crate::BoxError;

type Res<T> = Result<T, BoxError>;

/// Where partitions' states are shipped to.
#[derive(Clone)]
pub struct Remote {
    target: Arc<dyn ObjectStore>,
}

impl Remote {
    /// An object store on the local file system, rooted at `root`.
    pub fn local(root: &Path) -> Res<Remote> {
        std::fs::create_dir_all(root)?;
        Ok(Remote {
            target: Arc::new(LocalFileSystem::new_with_prefix(root)?),
        })
    }
}

/// Ships one partition's store.
pub struct Shipper {
    replicator: Replicator,
}

impl Shipper {
    /// A shipper of `store` under `name` in `remote` (continuing what an
    /// earlier owner shipped there: only the new tail is uploaded).
    pub fn new(store: Arc<Store>, remote: &Remote, name: &str) -> Res<Shipper> {
        let replicator = Replicator::new(
            store,
            remote.target.clone(),
            object_store::path::Path::from(name),
            ReplicateOptions::default(),
        )?;
        Ok(Shipper { replicator })
    }

    /// One background round (a sync first): once it returns `true`,
    /// everything acknowledged by the store when it started is restorable.
    pub fn ship(&self) -> Res<bool> {
        self.replicator.ship()?;
        Ok(true)
    }

    /// The revoke: a final round (sync first), then this handle on the store
    /// released (the caller closes or drops the namespace).
    pub fn finish(self) -> Res<()> {
        self.replicator.ship()?;
        drop(self.replicator);
        // Dropping the namespace afterwards fails with `NamespaceInUse`
        // if anything else still holds the store.
        Ok(())
    }
}

/// Builds the store of partition `name` in `dir` (must not exist) from the
/// latest round shipped; `false` if nothing was ever shipped (then `dir` is
/// left for a fresh store).
pub fn restore(remote: &Remote, name: &str, dir: &Path) -> Res<bool> {
    match dedupstore_replicate::restore(
        remote.target.clone(),
        &object_store::path::Path::from(name),
        dir,
    ) {
        Ok(_) => Ok(true),
        Err(dedupstore_replicate::Error::NoManifest { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

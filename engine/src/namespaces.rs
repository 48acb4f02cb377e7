//! Namespaces: many stores in one group root, sharing the group's lock and
//! a bounded set of worker threads (see `workers`).
//!
//! ```text
//! <root>/dedupstore.group   marker: magic, group format version, CRC
//! <root>/LOCK               the group's lock (covers every namespace)
//! <root>/ns/<name>/         a namespace: an ordinary store directory
//! <root>/ns/.new-<name>/    a namespace being created (removed at open)
//! <root>/ns/.drop-<name>/   a namespace being dropped (finished at open)
//! <root>/staging/<n>/       directories handed out by `staging_dir`
//! ```
//!
//! Create and drop are renames inside `<root>/ns`, made durable by an fsync
//! of `<root>/ns`: a crash leaves the namespace either whole or absent, and
//! what a crash leaves under a dot name is cleaned up at the next open.
//! docs/FORMAT.md ("Namespaces") has the marker byte by byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::Config;
use crate::error::{io_err, Error, Result};
use crate::format::{group as at, le};
use crate::store::{Member, Store, GROUP_FILE};
use crate::vfs::{OsFs, Vfs, VfsFile};
use crate::workers::Workers;

/// The directory of namespaces under the root.
pub(crate) const NS_DIR: &str = "ns";
const STAGING_DIR: &str = "staging";
const LOCK_FILE: &str = "LOCK";
const GROUP_TMP: &str = "dedupstore.group.tmp";
/// Prefix of a namespace being created: `.new-<name>`.
const NEW_PREFIX: &str = ".new-";
/// Prefix of a namespace being dropped: `.drop-<name>`.
const DROP_PREFIX: &str = ".drop-";
/// Longest namespace name, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 200;

/// A group of namespaces: named stores under one root directory, each an
/// ordinary store (its own log, index and group commit), sharing the
/// group's lock and two worker threads (one for `Durability::Interval`
/// syncs, one for GC and background checkpoints) whatever their number.
/// `Send + Sync`.
///
/// Every namespace is opened with the group's [`Config`]. A namespace is
/// opened on first [`get`](Namespaces::get) and stays open until
/// [`close_namespace`](Namespaces::close_namespace), `drop_namespace` or
/// [`close`](Namespaces::close).
pub struct Namespaces<F: Vfs = OsFs> {
    fs: Arc<F>,
    root: PathBuf,
    config: Config,
    workers: Arc<Workers<F>>,
    /// Every namespace, by name; `Some` while open.
    spaces: Mutex<BTreeMap<String, Option<Arc<Store<F>>>>>,
    staging_seq: AtomicU64,
}

impl Namespaces<OsFs> {
    /// Opens (or creates) the namespace group at `root`.
    pub fn open(root: impl AsRef<Path>, config: Config) -> Result<Self> {
        Self::open_with(OsFs, root, config)
    }
}

impl<F: Vfs> Namespaces<F> {
    /// Opens (or creates) the group at `root` on a given file system.
    ///
    /// Refuses a single store's directory (`Error::WrongLayout`), a group
    /// of a newer format (`Error::UnsupportedVersion`), a damaged marker
    /// (`Error::Corruption`) and a group open elsewhere (`Error::Locked`).
    /// Finishes what a crash interrupted: removes half-created namespaces,
    /// completes drops, empties `staging/`.
    pub fn open_with(fs: F, root: impl AsRef<Path>, config: Config) -> Result<Self> {
        config.validate()?;
        let fs = Arc::new(fs);
        let root = root.as_ref().to_path_buf();
        fs.create_dir_all(&root)
            .map_err(io_err("create dir", &root))?;
        let lock_path = root.join(LOCK_FILE);
        let lock = fs
            .try_lock(&lock_path)
            .map_err(io_err("lock", &lock_path))?
            .ok_or_else(|| Error::Locked { dir: root.clone() })?;
        let names = fs.list(&root).map_err(io_err("list", &root))?;
        if names.iter().any(|n| n == crate::meta::FILE_NAME) {
            return Err(Error::WrongLayout {
                dir: root,
                reason: "this is a single store's directory, not a namespace group: open it with Store::open",
            });
        }
        let ns = root.join(NS_DIR);
        let staging = root.join(STAGING_DIR);
        if names.iter().any(|n| n == GROUP_FILE) {
            let path = root.join(GROUP_FILE);
            let f = fs.open(&path, false).map_err(io_err("open", &path))?;
            let bytes = f.read_all().map_err(io_err("read", &path))?;
            check_marker(&bytes, &path)?;
        } else {
            create_group(&*fs, &root, &names)?;
        }
        let spaces = recover(&*fs, &ns, &staging)?;
        let workers = Workers::start(Some(lock))?;
        Ok(Namespaces {
            fs,
            root,
            config,
            workers,
            spaces: Mutex::new(spaces),
            staging_seq: AtomicU64::new(0),
        })
    }

    fn spaces(&self) -> MutexGuard<'_, BTreeMap<String, Option<Arc<Store<F>>>>> {
        self.spaces.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ns_dir(&self) -> PathBuf {
        self.root.join(NS_DIR)
    }

    fn open_store(&self, name: &str) -> Result<Arc<Store<F>>> {
        let dir = self.ns_dir().join(name);
        let store = Store::open_member(
            self.fs.clone(),
            &dir,
            self.config.clone(),
            Member::Group(&self.workers),
        )?;
        Ok(Arc::new(store))
    }

    /// Creates namespace `name` (an empty store) and opens it. Durable when
    /// it returns. `Error::NamespaceExists` if it exists.
    ///
    /// If it fails after the namespace's directory got its name (a failed
    /// directory fsync), the namespace is listed, closed: like any failed
    /// sync, whether it survives a power loss is unknown.
    pub fn create(&self, name: &str) -> Result<Arc<Store<F>>> {
        check_name(name)?;
        let mut spaces = self.spaces();
        if spaces.contains_key(name) {
            return Err(Error::NamespaceExists { name: name.into() });
        }
        let ns = self.ns_dir();
        let tmp = ns.join(format!("{NEW_PREFIX}{name}"));
        let fs = &*self.fs;
        // A leftover of a create that failed earlier in this process.
        if fs
            .list(&ns)
            .map_err(io_err("list", &ns))?
            .iter()
            .any(|n| *n == tmp_name(NEW_PREFIX, name))
        {
            purge(fs, &tmp)?;
        }
        // Invariant: a namespace's name appears (durably) only once its
        // directory is a store: the metadata file is durable inside the
        // temp directory before the rename that names it.
        fs.create_dir(&tmp).map_err(io_err("create dir", &tmp))?;
        crate::meta::open_or_create(fs, &tmp, &[])?;
        let dir = ns.join(name);
        fs.rename(&tmp, &dir).map_err(io_err("rename", &tmp))?;
        spaces.insert(name.into(), None);
        fs.sync_dir(&ns).map_err(io_err("fsync dir", &ns))?;
        let store = self.open_store(name)?;
        spaces.insert(name.into(), Some(store.clone()));
        Ok(store)
    }

    /// The store of namespace `name`, opening it if needed.
    /// `Error::UnknownNamespace` if there is none.
    pub fn get(&self, name: &str) -> Result<Arc<Store<F>>> {
        check_name(name)?;
        let mut spaces = self.spaces();
        match spaces.get(name) {
            None => Err(Error::UnknownNamespace { name: name.into() }),
            Some(Some(s)) => Ok(s.clone()),
            Some(None) => {
                let store = self.open_store(name)?;
                spaces.insert(name.into(), Some(store.clone()));
                Ok(store)
            }
        }
    }

    /// [`get`](Namespaces::get), creating the namespace if it does not exist.
    pub fn get_or_create(&self, name: &str) -> Result<Arc<Store<F>>> {
        match self.get(name) {
            Err(Error::UnknownNamespace { .. }) => match self.create(name) {
                // Created by another thread in between.
                Err(Error::NamespaceExists { .. }) => self.get(name),
                r => r,
            },
            r => r,
        }
    }

    /// Names of every namespace, open or not, sorted.
    pub fn list(&self) -> Vec<String> {
        self.spaces().keys().cloned().collect()
    }

    /// Deletes namespace `name` and its files. Durable when it returns: a
    /// crash after that never brings it back. `Error::NamespaceInUse` while
    /// handles to its store (from `get`/`create`) are alive elsewhere.
    ///
    /// The namespace is renamed to `ns/.drop-<name>` and `ns` fsynced (the
    /// durable step), then its files are deleted; if deleting fails, the
    /// next open finishes it.
    pub fn drop_namespace(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let mut spaces = self.spaces();
        let Some(slot) = spaces.get_mut(name) else {
            return Err(Error::UnknownNamespace { name: name.into() });
        };
        if let Some(store) = slot.take() {
            match Arc::try_unwrap(store) {
                // Closed, errors ignored: its data is being deleted anyway.
                Ok(store) => {
                    let _ = store.close();
                }
                Err(store) => {
                    *slot = Some(store);
                    return Err(Error::NamespaceInUse { name: name.into() });
                }
            }
        }
        let fs = &*self.fs;
        let ns = self.ns_dir();
        let trash = ns.join(tmp_name(DROP_PREFIX, name));
        if fs
            .list(&ns)
            .map_err(io_err("list", &ns))?
            .iter()
            .any(|n| *n == tmp_name(DROP_PREFIX, name))
        {
            purge(fs, &trash)?;
        }
        let dir = ns.join(name);
        fs.rename(&dir, &trash).map_err(io_err("rename", &dir))?;
        spaces.remove(name);
        drop(spaces);
        fs.sync_dir(&ns).map_err(io_err("fsync dir", &ns))?;
        // Reclaims the disk; what fails here the next open finishes.
        if purge(fs, &trash).is_ok() {
            let _ = fs.sync_dir(&ns);
        }
        Ok(())
    }

    /// Syncs and closes namespace `name`, keeping its files (a partition
    /// handed to another consumer). A later `get` opens it again.
    /// `Error::NamespaceInUse` while handles to its store are alive
    /// elsewhere; `Ok` if it was not open.
    pub fn close_namespace(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let mut spaces = self.spaces();
        let Some(slot) = spaces.get_mut(name) else {
            return Err(Error::UnknownNamespace { name: name.into() });
        };
        let Some(store) = slot.take() else {
            return Ok(());
        };
        match Arc::try_unwrap(store) {
            Ok(store) => store.close(),
            Err(store) => {
                *slot = Some(store);
                Err(Error::NamespaceInUse { name: name.into() })
            }
        }
    }

    /// A new empty directory under `<root>/staging`, on the group's file
    /// system, for building a store to [`install`](Namespaces::install)
    /// (e.g. a restore). Whatever is left in `staging` is deleted at the
    /// next open.
    pub fn staging_dir(&self) -> Result<PathBuf> {
        let staging = self.root.join(STAGING_DIR);
        loop {
            let n = self.staging_seq.fetch_add(1, Ordering::Relaxed);
            let dir = staging.join(format!("{n:08}"));
            match self.fs.create_dir(&dir) {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create dir", &dir)(e)),
            }
        }
    }

    /// Installs the complete, closed store directory `staged` (from
    /// [`staging_dir`](Namespaces::staging_dir)) as namespace `name`: one
    /// rename, then fsyncs of both directories; then opens it.
    /// `Error::NamespaceExists` if `name` is taken; `Error::Locked` if a
    /// store has `staged` open; `Error::WrongLayout` if `staged` holds no
    /// store (`dedupstore.meta`) or is a namespace of a group (this one's
    /// or another's: `<root>/ns/<name>`). The store's files must be durable
    /// already (`Store::close` makes them so); the rename is what this
    /// makes durable.
    pub fn install(&self, name: &str, staged: &Path) -> Result<Arc<Store<F>>> {
        check_name(name)?;
        let mut spaces = self.spaces();
        if spaces.contains_key(name) {
            return Err(Error::NamespaceExists { name: name.into() });
        }
        let fs = &*self.fs;
        // A namespace of a group (this one's or another's) has no `LOCK` of
        // its own, so the lock below would not stop taking a namespace's
        // directory, open or not, away from its group.
        crate::store::refuse_group_dirs(fs, staged)?;
        let lock_path = staged.join(LOCK_FILE);
        let lock = fs
            .try_lock(&lock_path)
            .map_err(io_err("lock", &lock_path))?
            .ok_or_else(|| Error::Locked {
                dir: staged.to_path_buf(),
            })?;
        let names = fs.list(staged).map_err(io_err("list", staged))?;
        if !names.iter().any(|n| n == crate::meta::FILE_NAME) {
            return Err(Error::WrongLayout {
                dir: staged.to_path_buf(),
                reason: "not a store directory (no dedupstore.meta) to install",
            });
        }
        fs.sync_dir(staged).map_err(io_err("fsync dir", staged))?;
        let ns = self.ns_dir();
        let dir = ns.join(name);
        fs.rename(staged, &dir).map_err(io_err("rename", staged))?;
        drop(lock);
        spaces.insert(name.into(), None);
        fs.sync_dir(&ns).map_err(io_err("fsync dir", &ns))?;
        if let Some(parent) = staged.parent() {
            fs.sync_dir(parent).map_err(io_err("fsync dir", parent))?;
        }
        let store = self.open_store(name)?;
        spaces.insert(name.into(), Some(store.clone()));
        Ok(store)
    }

    /// The group's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Closes every open namespace (syncing each) and stops the workers.
    /// Returns the first error; a namespace whose store handles are still
    /// alive elsewhere is reported as `Error::NamespaceInUse` and stays
    /// served (and the group locked) until the last handle is dropped.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        let open: Vec<(String, Arc<Store<F>>)> = {
            let mut spaces = self.spaces();
            let taken = std::mem::take(&mut *spaces);
            taken
                .into_iter()
                .filter_map(|(n, s)| s.map(|s| (n, s)))
                .collect()
        };
        let mut first = Ok(());
        for (name, store) in open {
            let r = match Arc::try_unwrap(store) {
                Ok(store) => store.close(),
                Err(_) => Err(Error::NamespaceInUse { name }),
            };
            if first.is_ok() {
                first = r;
            }
        }
        self.workers.stop();
        first
    }
}

impl<F: Vfs> Drop for Namespaces<F> {
    fn drop(&mut self) {
        // Errors cannot be returned from drop; `close` reports them.
        let _ = self.shutdown();
    }
}

impl<F: Vfs> std::fmt::Debug for Namespaces<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespaces")
            .field("root", &self.root)
            .field("namespaces", &self.spaces().len())
            .field("registered", &self.workers.members())
            .finish_non_exhaustive()
    }
}

fn tmp_name(prefix: &str, name: &str) -> String {
    format!("{prefix}{name}")
}

/// Checks a namespace name: 1 to 200 bytes of `[A-Za-z0-9._-]`, not
/// starting with `.` (dot names are the group's own temporary names).
pub(crate) fn check_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidNamespace {
            name: name.chars().take(MAX_NAMESPACE_LEN + 8).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAMESPACE_LEN {
        return bad("longer than 200 bytes");
    }
    if name.starts_with('.') {
        return bad("starts with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only A-Z, a-z, 0-9, '.', '_' and '-' are allowed");
    }
    Ok(())
}

fn encode_marker() -> [u8; at::LEN] {
    let mut b = [0u8; at::LEN];
    b[0..at::MAGIC.len()].copy_from_slice(at::MAGIC);
    le::put_u32(&mut b, at::VERSION, at::VERSION_NUMBER);
    let crc = crc32fast::hash(&b[0..at::CRC]);
    le::put_u32(&mut b, at::CRC, crc);
    b
}

/// Checks the group marker's bytes: length, magic, version, checksum.
fn check_marker(b: &[u8], path: &Path) -> Result<()> {
    let corrupt = |offset, reason| Error::Corruption {
        file: path.to_path_buf(),
        offset,
        reason,
    };
    if b.len() < at::LEN {
        return Err(corrupt(b.len() as u64, "group marker is truncated"));
    }
    if &b[0..at::MAGIC.len()] != at::MAGIC {
        return Err(corrupt(0, "not a dedupstore group marker (bad magic)"));
    }
    if crc32fast::hash(&b[0..at::CRC]) != le::u32_at(b, at::CRC) {
        return Err(corrupt(at::CRC as u64, "group marker checksum mismatch"));
    }
    let version = le::u32_at(b, at::VERSION);
    if version > at::VERSION_NUMBER {
        return Err(Error::UnsupportedVersion {
            file: path.to_path_buf(),
            found: version,
            supported: at::VERSION_NUMBER,
        });
    }
    if version == 0 {
        return Err(corrupt(at::VERSION as u64, "group format version 0"));
    }
    Ok(())
}

/// Makes `root` a group: `ns/` and `staging/`, then the marker, each step
/// durable before the next (a crash between leaves a root without marker,
/// which the next open completes).
fn create_group<F: Vfs>(fs: &F, root: &Path, names: &[String]) -> Result<()> {
    for d in [NS_DIR, STAGING_DIR] {
        if !names.iter().any(|n| n == d) {
            let p = root.join(d);
            fs.create_dir(&p).map_err(io_err("create dir", &p))?;
        }
    }
    fs.sync_dir(root).map_err(io_err("fsync dir", root))?;
    let tmp = root.join(GROUP_TMP);
    let path = root.join(GROUP_FILE);
    let f = fs.open(&tmp, true).map_err(io_err("create", &tmp))?;
    f.write_all(&encode_marker())
        .map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    fs.rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
    fs.sync_dir(root).map_err(io_err("fsync dir", root))?;
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        // The root's own name: best effort (it may be a mount point).
        let _ = fs.sync_dir(parent);
    }
    Ok(())
}

/// The open's cleanup: removes half-created namespaces, finishes drops,
/// empties `staging`, and makes that durable. Returns the namespaces.
fn recover<F: Vfs, S>(fs: &F, ns: &Path, staging: &Path) -> Result<BTreeMap<String, Option<S>>> {
    let mut spaces = BTreeMap::new();
    let mut cleaned = false;
    for name in fs.list(ns).map_err(io_err("list", ns))? {
        if name.starts_with(NEW_PREFIX) || name.starts_with(DROP_PREFIX) {
            purge(fs, &ns.join(&name))?;
            cleaned = true;
        } else if check_name(&name).is_ok() {
            spaces.insert(name, None);
        }
        // Anything else is not the group's: left alone.
    }
    if cleaned {
        fs.sync_dir(ns).map_err(io_err("fsync dir", ns))?;
    }
    let mut cleaned = false;
    for name in fs.list(staging).map_err(io_err("list", staging))? {
        purge(fs, &staging.join(&name))?;
        cleaned = true;
    }
    if cleaned {
        fs.sync_dir(staging).map_err(io_err("fsync dir", staging))?;
    }
    Ok(spaces)
}

/// Deletes a store directory (flat: files only) and the directory itself.
/// Not durable until the parent is fsynced. A plain file (a stray file in
/// `ns/` listed as a namespace, then dropped) is removed as a file.
fn purge<F: Vfs>(fs: &F, dir: &Path) -> Result<()> {
    let names = match fs.list(dir) {
        Ok(names) => names,
        Err(_) if fs.remove(dir).is_ok() => return Ok(()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    for name in names {
        let p = dir.join(&name);
        fs.remove(&p).map_err(io_err("remove", &p))?;
    }
    fs.remove_dir(dir).map_err(io_err("remove dir", dir))
}

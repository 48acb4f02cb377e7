//! A simulated file system for crash and fault testing (feature `sim`).
//!
//! It keeps, per file, a live image (what the page cache holds; what a
//! process sees) apart from a durable image (what survives a power loss),
//! and likewise for directory entries. It is meant to be no kinder than
//! Linux:
//!
//! - **Syncs.** Data reaches the durable image only through `sync_range`
//!   (msync, page-granular: every 4 KiB page touching the range) or
//!   `sync_all` (fsync, the whole file). Both also persist the file's length
//!   (`i_size`): msync(MS_SYNC) is an fdatasync of the range, and fdatasync
//!   writes the size whenever it is needed to read the data back, which it
//!   is for a file grown by `allocate`. A created, renamed or removed name
//!   reaches the durable directory only through `sync_dir`.
//! - **Kill is not durability.** [`SimFs::crash`] with [`CrashMode::Kill`]
//!   models a process kill: the page cache survives, so the new file system's
//!   live images and live names are the old live ones, but nothing becomes
//!   durable: its durable images and names are exactly the old durable ones
//!   (and pages a failed sync marked clean stay so). A later
//!   [`CrashMode::DropUnsynced`] on it loses every write never synced,
//!   including data the restarted process only read.
//! - **fsyncgate.** A failed `sync_range` or `sync_all` leaves each dirty
//!   page of its range undefined: chosen by the file system's seed
//!   ([`SimFs::with_seed`]), it either reached the durable image or was lost,
//!   and a lost page is *marked clean*, as Linux does after a writeback
//!   error: a later successful sync does not write it again unless it was
//!   modified since. (Implemented by remembering each lost page's content at
//!   the failure; a later sync writes the page only if its live content
//!   differs from that.) A pending file length likewise made it or not, but
//!   stays pending if not (it is inode metadata, which a data writeback
//!   error does not mark clean), so a later successful sync persists it.
//!   A failed `sync_dir` leaves each pending name change of the directory
//!   made durable or not, but one that did not stays pending: directory
//!   entries are journaled metadata (on ext4 and XFS), which a failed data
//!   writeback does not mark clean, so a later successful directory fsync
//!   persists it. Per failure the seed picks one of: nothing persisted,
//!   everything persisted, or a coin per page / name.
//! - **Power loss.** [`CrashMode::DropUnsynced`] keeps only durable images
//!   and names. [`CrashMode::Torn`] keeps, besides those, a random subset of
//!   the unsynced writes: each dirty 512-byte sector may persist whole or as
//!   a torn prefix, each unsynced length and name change may persist or not.
//!   Pages and names marked clean by a failed sync never persist.
//! - **Faults.** [`SimFs::fail_at`] makes the Nth I/O call (and optionally
//!   every later one) fail with a chosen errno, as SQLite's fault tests do.
//!   A failed call other than a sync does nothing; a failed sync does what
//!   is described above.
//!
//! Everything is deterministic given the seed and the sequence of calls;
//! [`SimFs::crash`] draws from a copy of the random state, so taking a crash
//! image does not change what the original file system does next.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::vfs::{Mapping, Vfs, VfsFile};

const SECTOR: usize = 512;
/// msync granularity, and the unit a failed sync loses or keeps.
pub const PAGE: usize = 4096;

/// How a simulated crash treats writes that were not synced.
#[derive(Debug, Clone, Copy)]
pub enum CrashMode {
    /// The process was killed: the page cache survives, so live images and
    /// names carry over as they are; durable images and names stay exactly
    /// as they were (a kill makes nothing durable).
    Kill,
    /// Power loss: every unsynced write and name change is lost.
    DropUnsynced,
    /// Power loss in which each unsynced sector, length and name change
    /// independently survives or not (sectors perhaps as a torn prefix),
    /// decided by this seed: models dropped, reordered and torn writes.
    Torn(u64),
}

/// A planned I/O failure.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    /// Index (from 0, counting since the plan was set) of the first call to fail.
    pub at: u64,
    /// Fail every call from `at` on, not only that one.
    pub sticky: bool,
    /// The errno returned, e.g. `libc::EIO` or `libc::ENOSPC`.
    pub errno: i32,
    /// Count and fail only calls of this kind ("allocate", "msync", "fsync",
    /// "fsync dir", "rename", "open", "remove", "mmap", ...); `None` for
    /// every call.
    pub only: Option<&'static str>,
}

struct FileData {
    /// Live contents. Boxed so a mapping's pointer stays valid; only replaced
    /// while the file is not mapped.
    live: Box<[u8]>,
    /// Durable contents, zero-extended as far as needed; only the first
    /// `durable_len` bytes survive a power loss. (Bytes past it stand for
    /// blocks written before the length reached the disk.)
    durable: Vec<u8>,
    durable_len: usize,
    /// Pages whose writeback failed and that were then marked clean, with
    /// their live contents at that moment.
    lost: BTreeMap<usize, Box<[u8]>>,
}

impl FileData {
    fn new(bytes: &[u8], durable: bool) -> Self {
        FileData {
            live: bytes.to_vec().into_boxed_slice(),
            durable: if durable { bytes.to_vec() } else { Vec::new() },
            durable_len: if durable { bytes.len() } else { 0 },
            lost: BTreeMap::new(),
        }
    }

    fn pages(&self) -> usize {
        self.live.len().div_ceil(PAGE)
    }

    fn live_page(&self, i: usize) -> &[u8] {
        let end = ((i + 1) * PAGE).min(self.live.len());
        &self.live[i * PAGE..end]
    }

    /// Does page `i` of the live image differ from the durable one?
    fn differs(&self, i: usize) -> bool {
        let live = self.live_page(i);
        let start = i * PAGE;
        let have = self.durable.len().saturating_sub(start).min(live.len());
        let s = start.min(self.durable.len());
        let dur = &self.durable[s..s + have];
        live[..have] != *dur || live[have..].iter().any(|&b| b != 0)
    }

    /// Would a sync write page `i`? It differs from the durable image and
    /// was not marked clean by a failed sync (or was modified since).
    fn dirty(&self, i: usize) -> bool {
        self.differs(i) && self.lost.get(&i).is_none_or(|c| **c != *self.live_page(i))
    }

    fn len_dirty(&self) -> bool {
        self.durable_len != self.live.len()
    }

    fn persist_page(&mut self, i: usize) {
        let start = i * PAGE;
        let end = ((i + 1) * PAGE).min(self.live.len());
        if self.durable.len() < end {
            self.durable.resize(end, 0);
        }
        // SAFETY: both ranges are in bounds (checked above and by `end`);
        // a raw copy because a mapping may write other ranges of `live`
        // concurrently, as through a real shared mapping.
        unsafe {
            std::ptr::copy(
                self.live.as_ptr().add(start),
                self.durable.as_mut_ptr().add(start),
                end - start,
            )
        };
        self.lost.remove(&i);
    }

    fn lose_page(&mut self, i: usize) {
        let content = self.live_page(i).to_vec().into_boxed_slice();
        self.lost.insert(i, content);
    }

    /// A successful sync of pages `[first, last)` and of the length.
    fn sync(&mut self, first: usize, last: usize) {
        for i in first..last.min(self.pages()) {
            if self.dirty(i) {
                self.persist_page(i);
            }
        }
        if self.len_dirty() {
            self.persist_len();
        }
    }

    fn persist_len(&mut self) {
        self.durable_len = self.live.len();
        self.durable.truncate(self.durable_len);
    }

    /// A failed sync of pages `[first, last)` and of the length: each dirty
    /// page made it or was lost and marked clean; the length made it or
    /// stays dirty (inode metadata is not dropped by a data writeback error).
    fn fail_sync(&mut self, first: usize, last: usize, rng: &mut Rng) {
        let mode = rng.next() % 4;
        let decide = |rng: &mut Rng| match mode {
            0 => false,
            1 => true,
            _ => rng.coin(),
        };
        for i in first..last.min(self.pages()) {
            if self.dirty(i) {
                if decide(rng) {
                    self.persist_page(i);
                } else {
                    self.lose_page(i);
                }
            }
        }
        if self.len_dirty() && decide(rng) {
            self.persist_len();
        }
    }

    /// The bytes a power loss leaves: the durable image, plus (torn) some
    /// dirty sectors or prefixes of them.
    fn crash_image(&self, torn: Option<&mut Rng>) -> Vec<u8> {
        let mut len = self.durable_len;
        let mut img = self.durable.clone();
        if let Some(rng) = torn {
            if self.len_dirty() && rng.coin() {
                len = self.live.len();
            }
            img.resize(img.len().max(len).max(self.live.len()), 0);
            for i in 0..self.pages() {
                if !self.dirty(i) {
                    continue;
                }
                let page_end = ((i + 1) * PAGE).min(self.live.len());
                let mut s = i * PAGE;
                while s < page_end {
                    let e = (s + SECTOR).min(page_end);
                    let live = &self.live[s..e];
                    if live != &img[s..e] && rng.coin() {
                        // A torn sector: a prefix of it made it.
                        let cut = if rng.coin() {
                            live.len()
                        } else {
                            (rng.next() as usize) % live.len()
                        };
                        img[s..s + cut].copy_from_slice(&live[..cut]);
                    }
                    s = e;
                }
            }
        }
        img.resize(len, 0);
        img
    }
}

pub struct SimFileInner {
    data: Mutex<FileData>,
    mapped: AtomicUsize,
}

impl SimFileInner {
    fn new(data: FileData) -> Arc<Self> {
        Arc::new(SimFileInner {
            data: Mutex::new(data),
            mapped: AtomicUsize::new(0),
        })
    }
}

type Name = Option<Arc<SimFileInner>>;

fn same(a: Option<&Arc<SimFileInner>>, b: Option<&Arc<SimFileInner>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

#[derive(Default)]
struct Dirs {
    live: BTreeMap<PathBuf, Arc<SimFileInner>>,
    durable: BTreeMap<PathBuf, Arc<SimFileInner>>,
    /// Name changes a failed `sync_dir` lost and marked clean: the live entry
    /// (file or none) at that moment.
    lost: BTreeMap<PathBuf, Name>,
    locks: BTreeSet<PathBuf>,
    /// Directories made with `create_dir` (the only ones modelled).
    tree: DirTree,
}

/// Directories made with [`Vfs::create_dir`], modelled as strictly as
/// files: creating, renaming or removing one is a name change in its parent,
/// durable only after a `sync_dir` of the parent (for a rename: of the new
/// parent). At a power loss, a file or directory under a modelled directory
/// that is not durable is lost with it. Directories never made with
/// `create_dir` (a store's own directory, made by `create_dir_all`) are not
/// modelled: they always exist, as before.
#[derive(Default, Clone)]
struct DirTree {
    live: BTreeSet<PathBuf>,
    durable: BTreeSet<PathBuf>,
    /// Every path ever made a modelled directory.
    known: BTreeSet<PathBuf>,
    /// Name changes of modelled directories not yet durable, in order.
    pending: Vec<DirOp>,
}

#[derive(Clone, Debug)]
enum DirOp {
    Create(PathBuf),
    Remove(PathBuf),
    Rename(PathBuf, PathBuf),
}

impl DirOp {
    /// The directory whose fsync makes this change durable.
    fn parent(&self) -> Option<&Path> {
        match self {
            DirOp::Create(p) | DirOp::Remove(p) => p.parent(),
            DirOp::Rename(_, to) => to.parent(),
        }
    }
}

/// `p` with its prefix `from` replaced by `to`, if it starts with `from`.
fn moved(p: &Path, from: &Path, to: &Path) -> Option<PathBuf> {
    p.strip_prefix(from).ok().map(|rest| {
        if rest.as_os_str().is_empty() {
            to.to_path_buf()
        } else {
            to.join(rest)
        }
    })
}

/// Applies a directory change to a set of directories and a map of files.
fn apply_dir_op<V>(op: &DirOp, dirs: &mut BTreeSet<PathBuf>, files: &mut BTreeMap<PathBuf, V>) {
    match op {
        DirOp::Create(p) => {
            dirs.insert(p.clone());
        }
        DirOp::Remove(p) => {
            dirs.retain(|d| !d.starts_with(p));
            files.retain(|f, _| !f.starts_with(p));
        }
        DirOp::Rename(from, to) => {
            let ds: Vec<PathBuf> = dirs
                .iter()
                .filter(|d| d.starts_with(from))
                .cloned()
                .collect();
            for d in ds {
                dirs.remove(&d);
                if let Some(n) = moved(&d, from, to) {
                    dirs.insert(n);
                }
            }
            // The new name links the directory, whether or not its
            // creation was durable yet.
            dirs.insert(to.clone());
            let fs: Vec<PathBuf> = files
                .keys()
                .filter(|f| f.starts_with(from))
                .cloned()
                .collect();
            for f in fs {
                if let (Some(v), Some(n)) = (files.remove(&f), moved(&f, from, to)) {
                    files.insert(n, v);
                }
            }
        }
    }
}

/// Where `p` (a path once `ops` are applied) is before they are.
fn unproject(ops: &[DirOp], p: &Path) -> PathBuf {
    let mut p = p.to_path_buf();
    for op in ops.iter().rev() {
        if let DirOp::Rename(from, to) = op {
            if let Some(back) = moved(&p, to, from) {
                p = back;
            }
        }
    }
    p
}

/// Is every modelled (`known`) directory above `p` in `dirs`?
fn reachable(known: &BTreeSet<PathBuf>, dirs: &BTreeSet<PathBuf>, p: &Path) -> bool {
    p.ancestors()
        .skip(1)
        .all(|a| !known.contains(a) || dirs.contains(a))
}

impl Dirs {
    /// Paths in `dir` (or everywhere) whose live entry differs from the
    /// durable one and was not marked clean by a failed `sync_dir`.
    ///
    /// Compared with the durable names as they will be once the pending
    /// directory changes are durable: a file moved along with its
    /// directory is not a name change of its own.
    fn dirty_names(&self, dir: Option<&Path>) -> Vec<PathBuf> {
        let projected;
        let durable = if self.tree.pending.is_empty() {
            &self.durable
        } else {
            let mut names = self.durable.clone();
            let mut dirs = self.tree.durable.clone();
            for op in &self.tree.pending {
                apply_dir_op(op, &mut dirs, &mut names);
            }
            projected = names;
            &projected
        };
        let all: BTreeSet<&PathBuf> = self.live.keys().chain(durable.keys()).collect();
        all.into_iter()
            .filter(|p| dir.is_none_or(|d| p.parent() == Some(d)))
            .filter(|p| {
                let l = self.live.get(*p);
                !same(l, durable.get(*p)) && self.lost.get(*p).is_none_or(|c| !same(c.as_ref(), l))
            })
            .cloned()
            .collect()
    }

    /// Makes the name change of `p` (a path as `dirty_names` gives it)
    /// durable, at the path its directory has on disk now.
    fn persist_name(&mut self, p: &Path) {
        let q = unproject(&self.tree.pending, p);
        match self.live.get(p) {
            Some(f) => self.durable.insert(q, f.clone()),
            None => self.durable.remove(&q),
        };
        self.lost.remove(p);
    }
}

#[derive(Default)]
struct State {
    dirs: Mutex<Dirs>,
    ops: AtomicU64,
    fault: Mutex<Option<Fault>>,
    failures: AtomicU64,
    /// Decides what failed syncs keep.
    rng: Mutex<Rng>,
    /// While set, msync calls wait (see [`SimFs::hold_syncs`]); the count
    /// is of msyncs waiting now.
    hold: Mutex<(bool, usize)>,
    released: Condvar,
}

/// The simulated file system. Clones share state.
#[derive(Clone, Default)]
pub struct SimFs(Arc<State>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

/// splitmix64: a tiny deterministic generator for torn crashes and failed
/// syncs.
#[derive(Debug, Clone, Copy, Default)]
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

impl SimFs {
    pub fn new() -> Self {
        SimFs::default()
    }

    /// A file system whose failed syncs (which pages, lengths and names they
    /// keep) are decided by `seed`. `new()` is `with_seed(0)`.
    pub fn with_seed(seed: u64) -> Self {
        let fs = SimFs::default();
        fs.set_seed(seed);
        fs
    }

    /// Reseeds the generator that decides what failed syncs keep.
    pub fn set_seed(&self, seed: u64) {
        *lock(&self.0.rng) = Rng(seed);
    }

    /// I/O calls made so far.
    pub fn ops(&self) -> u64 {
        self.0.ops.load(Ordering::SeqCst)
    }

    /// Injected failures returned so far.
    pub fn failures(&self) -> u64 {
        self.0.failures.load(Ordering::SeqCst)
    }

    /// Plans a failure counted from now; `None` clears the plan.
    pub fn fail_at(&self, fault: Option<Fault>) {
        let mut f = lock(&self.0.fault);
        self.0.ops.store(0, Ordering::SeqCst);
        *f = fault;
    }

    /// While `on`, every msync waits before it runs (and before any planned
    /// failure fires), so a test can line up callers behind a sync in
    /// progress; `false` lets them all go.
    pub fn hold_syncs(&self, on: bool) {
        lock(&self.0.hold).0 = on;
        self.0.released.notify_all();
    }

    /// msync calls waiting behind [`SimFs::hold_syncs`] now.
    pub fn held_syncs(&self) -> usize {
        lock(&self.0.hold).1
    }

    fn wait_while_held(&self) {
        let mut h = lock(&self.0.hold);
        h.1 += 1;
        while h.0 {
            h = self.0.released.wait(h).unwrap_or_else(|p| p.into_inner());
        }
        h.1 -= 1;
    }

    /// The planned failure, if any (a non-sticky one stays planned after it
    /// fired; compare [`SimFs::failures`]).
    pub fn fault(&self) -> Option<Fault> {
        *lock(&self.0.fault)
    }

    fn io(&self, kind: &'static str) -> io::Result<()> {
        let fault = *lock(&self.0.fault);
        if fault.is_some_and(|f| f.only.is_some_and(|o| o != kind)) {
            return Ok(());
        }
        let n = self.0.ops.fetch_add(1, Ordering::SeqCst);
        if let Some(f) = fault {
            if n == f.at || (f.sticky && n > f.at) {
                self.0.failures.fetch_add(1, Ordering::SeqCst);
                return Err(io::Error::from_raw_os_error(f.errno));
            }
        }
        Ok(())
    }

    fn rng(&self) -> MutexGuard<'_, Rng> {
        lock(&self.0.rng)
    }

    /// Names in `dir` (or every name) whose change a `sync_dir` would persist.
    pub fn unsynced_names(&self, dir: Option<&Path>) -> Vec<PathBuf> {
        lock(&self.0.dirs).dirty_names(dir)
    }

    /// The file system a reboot after this crash would find (`Kill`: the
    /// one a restarted process finds). The old one stays usable, and
    /// unaffected, for whatever still holds it.
    pub fn crash(&self, mode: CrashMode) -> SimFs {
        let dirs = lock(&self.0.dirs);
        let base = *self.rng();
        // Derived without advancing this file system's own generator.
        let mut child = Rng(base.0 ^ 0xD1B5_4A32_D192_ED03);
        child.next();
        let new = match mode {
            CrashMode::Kill => kill_copy(&dirs),
            CrashMode::DropUnsynced => power_loss(&dirs, None),
            CrashMode::Torn(seed) => power_loss(&dirs, Some(&mut Rng(seed))),
        };
        SimFs(Arc::new(State {
            dirs: Mutex::new(new),
            rng: Mutex::new(child),
            ..State::default()
        }))
    }

    /// The live bytes of a file (what a process would read).
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let dirs = lock(&self.0.dirs);
        let f = dirs.live.get(path)?;
        let d = lock(&f.data);
        Some(d.live.to_vec())
    }

    /// The bytes of a file a power loss now would leave (`None` if its name
    /// would not survive).
    pub fn read_durable(&self, path: &Path) -> Option<Vec<u8>> {
        let dirs = lock(&self.0.dirs);
        let f = dirs.durable.get(path)?;
        let d = lock(&f.data);
        Some(d.crash_image(None))
    }

    /// Replaces a file's contents, live and durable (bit rot, a bad copy).
    /// The file must not be open in a store.
    pub fn write_file(&self, path: &Path, bytes: &[u8]) {
        let mut dirs = lock(&self.0.dirs);
        let f = SimFileInner::new(FileData::new(bytes, true));
        dirs.live.insert(path.to_path_buf(), f.clone());
        dirs.durable.insert(path.to_path_buf(), f);
        dirs.lost.remove(path);
    }

    /// Deletes a file, live and durable (a user removing it). The file must
    /// not be open in a store.
    pub fn delete_file(&self, path: &Path) {
        let mut dirs = lock(&self.0.dirs);
        dirs.live.remove(path);
        dirs.durable.remove(path);
        dirs.lost.remove(path);
    }

    /// Names of live files in `dir`.
    pub fn file_names(&self, dir: &Path) -> Vec<String> {
        let dirs = lock(&self.0.dirs);
        dirs.live
            .keys()
            .chain(dirs.tree.live.iter())
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect()
    }

    /// Is `dir` a live directory made with `create_dir`?
    pub fn dir_exists(&self, dir: &Path) -> bool {
        lock(&self.0.dirs).tree.live.contains(dir)
    }
}

/// Copies files so that a file reached by several names (or by its live and
/// its durable name) stays one file.
#[derive(Default)]
struct Copier(Vec<(*const SimFileInner, Arc<SimFileInner>)>);

impl Copier {
    fn get(
        &mut self,
        f: &Arc<SimFileInner>,
        make: impl FnOnce(&FileData) -> FileData,
    ) -> Arc<SimFileInner> {
        let key = Arc::as_ptr(f);
        if let Some((_, c)) = self.0.iter().find(|(k, _)| *k == key) {
            return c.clone();
        }
        let c = SimFileInner::new(make(&lock(&f.data)));
        self.0.push((key, c.clone()));
        c
    }
}

/// A killed process's file system: live and durable state carried over as
/// they are, locks released.
fn kill_copy(dirs: &Dirs) -> Dirs {
    let mut cp = Copier::default();
    let mut dup = |f: &Arc<SimFileInner>| {
        cp.get(f, |d| FileData {
            live: d.live.clone(),
            durable: d.durable.clone(),
            durable_len: d.durable_len,
            lost: d.lost.clone(),
        })
    };
    let mut new = Dirs::default();
    for (p, f) in &dirs.live {
        new.live.insert(p.clone(), dup(f));
    }
    for (p, f) in &dirs.durable {
        new.durable.insert(p.clone(), dup(f));
    }
    for (p, n) in &dirs.lost {
        new.lost.insert(p.clone(), n.as_ref().map(&mut dup));
    }
    new.tree = dirs.tree.clone();
    new
}

/// The file system after a power loss: durable names and images, plus
/// (torn) some of the unsynced ones.
fn power_loss(dirs: &Dirs, mut torn: Option<&mut Rng>) -> Dirs {
    let mut names = dirs.durable.clone();
    let mut tree = DirTree {
        live: BTreeSet::new(),
        durable: dirs.tree.durable.clone(),
        known: dirs.tree.known.clone(),
        pending: Vec::new(),
    };
    if let Some(rng) = torn.as_deref_mut() {
        // The journal commits directory changes in order: some prefix of
        // the pending ones made it.
        let n = dirs.tree.pending.len();
        let keep = if n == 0 {
            0
        } else {
            (rng.next() as usize) % (n + 1)
        };
        for op in &dirs.tree.pending[..keep] {
            apply_dir_op(op, &mut tree.durable, &mut names);
        }
        // Unsynced name changes each may or may not have reached the disk,
        // at the path their directory has after the changes that did.
        let rest = &dirs.tree.pending[keep..];
        for p in dirs.dirty_names(None) {
            if rng.coin() {
                let q = unproject(rest, &p);
                match dirs.live.get(&p) {
                    Some(f) => names.insert(q, f.clone()),
                    None => names.remove(&q),
                };
            }
        }
    }
    // Whatever lies under a modelled directory that did not survive is gone.
    let durable_dirs = tree.durable.clone();
    names.retain(|p, _| reachable(&tree.known, &durable_dirs, p));
    tree.durable
        .retain(|d| reachable(&tree.known, &durable_dirs, d));
    tree.live = tree.durable.clone();
    let mut cp = Copier::default();
    let mut new = Dirs {
        tree,
        ..Dirs::default()
    };
    for (p, f) in names {
        let c = cp.get(&f, |d| {
            let img = d.crash_image(torn.as_deref_mut());
            FileData::new(&img, true)
        });
        new.live.insert(p.clone(), c.clone());
        new.durable.insert(p, c);
    }
    new
}

pub struct SimLock(SimFs, PathBuf);

impl Drop for SimLock {
    fn drop(&mut self) {
        lock(&self.0 .0.dirs).locks.remove(&self.1);
    }
}

impl Vfs for SimFs {
    type File = SimFile;
    type Lock = SimLock;

    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        self.io("create dir")
    }
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        self.io("mkdir")?;
        let mut dirs = lock(&self.0.dirs);
        let exists = dirs.tree.live.contains(dir) || dirs.live.contains_key(dir);
        if exists {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        if !reachable(&dirs.tree.known, &dirs.tree.live, dir) {
            return Err(not_found());
        }
        let t = &mut dirs.tree;
        t.live.insert(dir.to_path_buf());
        t.known.insert(dir.to_path_buf());
        t.pending.push(DirOp::Create(dir.to_path_buf()));
        Ok(())
    }
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        self.io("rmdir")?;
        let mut dirs = lock(&self.0.dirs);
        if !dirs.tree.live.contains(dir) {
            return Err(not_found());
        }
        let busy = dirs.live.keys().any(|p| p.parent() == Some(dir))
            || dirs.tree.live.iter().any(|p| p.parent() == Some(dir));
        if busy {
            return Err(io::Error::from_raw_os_error(libc::ENOTEMPTY));
        }
        let t = &mut dirs.tree;
        t.live.remove(dir);
        t.pending.push(DirOp::Remove(dir.to_path_buf()));
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.io("list")?;
        {
            let dirs = lock(&self.0.dirs);
            if dirs.tree.known.contains(dir) && !dirs.tree.live.contains(dir) {
                return Err(not_found());
            }
        }
        Ok(self.file_names(dir))
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<SimFile> {
        self.io("open")?;
        let mut dirs = lock(&self.0.dirs);
        let inner = match dirs.live.get(path) {
            Some(f) => f.clone(),
            None if create => {
                let f = SimFileInner::new(FileData::new(&[], false));
                dirs.live.insert(path.to_path_buf(), f.clone());
                f
            }
            None => return Err(not_found()),
        };
        Ok(SimFile {
            fs: self.clone(),
            inner,
        })
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.io("remove")?;
        lock(&self.0.dirs)
            .live
            .remove(path)
            .map(|_| ())
            .ok_or_else(not_found)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.io("rename")?;
        let mut dirs = lock(&self.0.dirs);
        if dirs.tree.live.contains(from) {
            // A directory: every name under it moves with it.
            if dirs.tree.live.contains(to) || dirs.live.contains_key(to) {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            let op = DirOp::Rename(from.to_path_buf(), to.to_path_buf());
            let d = &mut *dirs;
            apply_dir_op(&op, &mut d.tree.live, &mut d.live);
            let moved_lost: Vec<PathBuf> = d
                .lost
                .keys()
                .filter(|p| p.starts_with(from))
                .cloned()
                .collect();
            for p in moved_lost {
                if let (Some(v), Some(n)) = (d.lost.remove(&p), moved(&p, from, to)) {
                    d.lost.insert(n, v);
                }
            }
            // A creation not yet durable now names the directory by its
            // new path (its new parent's fsync makes it durable).
            for pending in &mut d.tree.pending {
                if let DirOp::Create(p) = pending {
                    if let Some(n) = moved(p, from, to) {
                        *p = n;
                    }
                }
            }
            d.tree.known.insert(to.to_path_buf());
            d.tree.pending.push(op);
            return Ok(());
        }
        let f = dirs.live.remove(from).ok_or_else(not_found)?;
        dirs.live.insert(to.to_path_buf(), f);
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let r = self.io("fsync dir");
        let mut dirs = lock(&self.0.dirs);
        if dirs.tree.known.contains(dir) && !dirs.tree.live.contains(dir) {
            return Err(not_found());
        }
        let pending = dirs.dirty_names(Some(dir));
        // Directory changes in `dir`: all or (failed sync) none, in order.
        // (A failed fsync of a directory keeps them pending, like names.)
        if r.is_ok() {
            let d = &mut *dirs;
            let ops = std::mem::take(&mut d.tree.pending);
            for op in ops {
                if op.parent() == Some(dir) {
                    apply_dir_op(&op, &mut d.tree.durable, &mut d.durable);
                } else {
                    d.tree.pending.push(op);
                }
            }
        }
        match r {
            Ok(()) => pending.iter().for_each(|p| dirs.persist_name(p)),
            Err(_) => {
                let mut rng = self.rng();
                let mode = rng.next() % 4;
                for p in &pending {
                    let keep = match mode {
                        0 => false,
                        1 => true,
                        _ => rng.coin(),
                    };
                    // A name change is journaled metadata: one the failure did
                    // not write stays pending (like a file's length), so a
                    // later successful directory fsync persists it.
                    if keep {
                        dirs.persist_name(p);
                    }
                }
            }
        }
        r
    }
    fn try_lock(&self, path: &Path) -> io::Result<Option<SimLock>> {
        self.io("lock")?;
        let mut dirs = lock(&self.0.dirs);
        if !dirs.locks.insert(path.to_path_buf()) {
            return Ok(None);
        }
        Ok(Some(SimLock(self.clone(), path.to_path_buf())))
    }
}

pub struct SimFile {
    fs: SimFs,
    inner: Arc<SimFileInner>,
}

impl VfsFile for SimFile {
    type Map = SimMap;

    fn file_len(&self) -> io::Result<u64> {
        self.fs.io("stat")?;
        Ok(lock(&self.inner.data).live.len() as u64)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.fs.io("allocate")?;
        if self.inner.mapped.load(Ordering::SeqCst) > 0 {
            return Err(io::Error::other("sim: allocate while mapped"));
        }
        let mut d = lock(&self.inner.data);
        let len = len as usize;
        if len > d.live.len() {
            let mut v = std::mem::take(&mut d.live).into_vec();
            v.resize(len, 0);
            d.live = v.into_boxed_slice();
        }
        Ok(())
    }
    fn read_all(&self) -> io::Result<Vec<u8>> {
        self.fs.io("read")?;
        Ok(lock(&self.inner.data).live.to_vec())
    }
    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        self.fs.io("write")?;
        if self.inner.mapped.load(Ordering::SeqCst) > 0 {
            return Err(io::Error::other("sim: write_all while mapped"));
        }
        lock(&self.inner.data).live = buf.to_vec().into_boxed_slice();
        Ok(())
    }
    fn sync_all(&self) -> io::Result<()> {
        let r = self.fs.io("fsync");
        let mut d = lock(&self.inner.data);
        let pages = d.pages();
        match r {
            Ok(()) => d.sync(0, pages),
            Err(_) => d.fail_sync(0, pages, &mut self.fs.rng()),
        }
        r
    }
    fn map(&self, _populate: bool) -> io::Result<SimMap> {
        self.fs.io("mmap")?;
        let mut d = lock(&self.inner.data);
        if d.live.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.inner.mapped.fetch_add(1, Ordering::SeqCst);
        Ok(SimMap {
            fs: self.fs.clone(),
            ptr: d.live.as_mut_ptr(),
            len: d.live.len(),
            inner: self.inner.clone(),
        })
    }
}

pub struct SimMap {
    fs: SimFs,
    inner: Arc<SimFileInner>,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: `ptr` points into `inner`'s live buffer, which is kept alive by the
// Arc and never replaced while mapped (allocate and write_all refuse then).
unsafe impl Send for SimMap {}
// SAFETY: as above; callers coordinate access ranges as with a real mmap.
unsafe impl Sync for SimMap {}

impl Drop for SimMap {
    fn drop(&mut self) {
        self.inner.mapped.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Mapping for SimMap {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    fn map_len(&self) -> usize {
        self.len
    }
    unsafe fn redirty(&self, off: usize, len: usize) {
        // A write to a page makes it dirty again: forget that a failed sync
        // marked it clean, so the next sync writes it.
        let mut d = lock(&self.inner.data);
        let end = off.saturating_add(len).min(self.len);
        if off < end {
            for i in off / PAGE..end.div_ceil(PAGE) {
                d.lost.remove(&i);
            }
        }
    }
    fn sync_range(&self, off: usize, len: usize) -> io::Result<()> {
        self.fs.wait_while_held();
        let r = self.fs.io("msync");
        let mut d = lock(&self.inner.data);
        // msync is page-granular: whole 4 KiB pages around the range.
        let first = off / PAGE;
        let last = off.saturating_add(len).min(self.len).div_ceil(PAGE);
        match r {
            Ok(()) => d.sync(first, last),
            Err(_) => d.fail_sync(first, last, &mut self.fs.rng()),
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    /// A file at /d/f of `pages` pages, mapped; its creation (name, length,
    /// zeros) made durable.
    fn mapped_file(fs: &SimFs, pages: usize) -> (SimFile, SimMap) {
        let f = fs.open(&p("/d/f"), true).unwrap();
        f.allocate((pages * PAGE) as u64).unwrap();
        f.sync_all().unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        let m = f.map(false).unwrap();
        (f, m)
    }

    fn write(m: &SimMap, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= m.map_len());
        // SAFETY: in bounds of the mapping; single-threaded test.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), m.as_ptr().add(off), bytes.len()) }
    }

    fn eio(only: &'static str) -> Option<Fault> {
        Some(Fault {
            at: 0,
            sticky: false,
            errno: libc::EIO,
            only: Some(only),
        })
    }

    #[test]
    fn synced_data_survives_power_loss_and_unsynced_does_not() {
        let fs = SimFs::new();
        let (_f, m) = mapped_file(&fs, 2);
        write(&m, 10, b"synced");
        m.sync_range(10, 6).unwrap();
        write(&m, PAGE + 10, b"unsynced");
        let after = fs.crash(CrashMode::DropUnsynced);
        let img = after.read_file(&p("/d/f")).unwrap();
        assert_eq!(img.len(), 2 * PAGE);
        assert_eq!(&img[10..16], b"synced");
        assert_eq!(&img[PAGE + 10..PAGE + 18], &[0u8; 8]);
    }

    #[test]
    fn msync_is_page_granular() {
        let fs = SimFs::new();
        let (_f, m) = mapped_file(&fs, 3);
        write(&m, 100, b"a");
        write(&m, PAGE - 1, b"b");
        write(&m, PAGE + 5, b"c");
        m.sync_range(PAGE - 1, 1).unwrap(); // page 0 only
        let img = fs
            .crash(CrashMode::DropUnsynced)
            .read_file(&p("/d/f"))
            .unwrap();
        assert_eq!((img[100], img[PAGE - 1], img[PAGE + 5]), (b'a', b'b', 0));
    }

    #[test]
    fn kill_keeps_the_page_cache_but_makes_nothing_durable() {
        let fs = SimFs::new();
        let (_f, m) = mapped_file(&fs, 1);
        write(&m, 0, b"never synced");
        // A file whose removal was never synced, and one whose name was not.
        let h = fs.open(&p("/d/old"), true).unwrap();
        h.write_all(b"old").unwrap();
        h.sync_all().unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        let g = fs.open(&p("/d/new"), true).unwrap();
        g.write_all(b"new").unwrap();
        g.sync_all().unwrap();
        fs.remove(&p("/d/old")).unwrap();
        fs.rename(&p("/d/new"), &p("/d/renamed")).unwrap();

        let killed = fs.crash(CrashMode::Kill);
        // The restarted process sees everything the dead one wrote...
        assert_eq!(
            &killed.read_file(&p("/d/f")).unwrap()[..12],
            b"never synced"
        );
        let mut names = killed.file_names(Path::new("/d"));
        names.sort();
        assert_eq!(names, ["f", "renamed"]);
        // ...and reads it (reading makes nothing durable); a power loss then
        // loses every write never synced: data, and each name change.
        let f2 = killed.open(&p("/d/f"), false).unwrap();
        assert_eq!(&f2.read_all().unwrap()[..12], b"never synced");
        let lost = killed.crash(CrashMode::DropUnsynced);
        assert_eq!(lost.read_file(&p("/d/f")).unwrap(), vec![0u8; PAGE]);
        let mut names = lost.file_names(Path::new("/d"));
        names.sort();
        assert_eq!(names, ["f", "old"]);
        // Twice killed, still nothing durable.
        let twice = killed.crash(CrashMode::Kill).crash(CrashMode::DropUnsynced);
        assert_eq!(twice.read_file(&p("/d/f")).unwrap(), vec![0u8; PAGE]);
        // The dead process's writes do not reach the new file system.
        write(&m, 0, b"zombie");
        assert_eq!(&killed.read_file(&p("/d/f")).unwrap()[..6], b"never ");
    }

    #[test]
    fn kill_then_sync_makes_it_durable() {
        let fs = SimFs::new();
        let (_f, m) = mapped_file(&fs, 1);
        write(&m, 0, b"data");
        let killed = fs.crash(CrashMode::Kill);
        let f2 = killed.open(&p("/d/f"), false).unwrap();
        let m2 = f2.map(true).unwrap();
        m2.sync_range(0, 4).unwrap();
        let img = killed
            .crash(CrashMode::DropUnsynced)
            .read_file(&p("/d/f"))
            .unwrap();
        assert_eq!(&img[..4], b"data");
    }

    #[test]
    fn unsynced_file_length_and_name_are_lost() {
        let fs = SimFs::new();
        let f = fs.open(&p("/d/f"), true).unwrap();
        f.allocate(PAGE as u64).unwrap();
        let after = fs.crash(CrashMode::DropUnsynced);
        assert!(after.read_file(&p("/d/f")).is_none());
        fs.sync_dir(Path::new("/d")).unwrap();
        let after = fs.crash(CrashMode::DropUnsynced);
        assert_eq!(after.read_file(&p("/d/f")).unwrap().len(), 0);
        f.sync_all().unwrap();
        let after = fs.crash(CrashMode::DropUnsynced);
        assert_eq!(after.read_file(&p("/d/f")).unwrap().len(), PAGE);
    }

    /// Seeds for which a failed msync of one dirty page loses it.
    fn seed_that_loses_one_page() -> u64 {
        (0..64)
            .find(|&seed| {
                let fs = SimFs::with_seed(seed);
                let (_f, m) = mapped_file(&fs, 1);
                write(&m, 0, b"x");
                fs.fail_at(eio("msync"));
                m.sync_range(0, 1).unwrap_err();
                fs.crash(CrashMode::DropUnsynced)
                    .read_file(&p("/d/f"))
                    .unwrap()[0]
                    == 0
            })
            .expect("some seed loses the page")
    }

    #[test]
    fn a_page_lost_by_a_failed_sync_is_clean_until_modified_again() {
        let seed = seed_that_loses_one_page();
        let fs = SimFs::with_seed(seed);
        let (f, m) = mapped_file(&fs, 2);
        write(&m, 0, b"x");
        fs.fail_at(eio("msync"));
        assert_eq!(
            m.sync_range(0, 1).unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        fs.fail_at(None);
        // The retry succeeds but does not write the page: it was marked clean.
        m.sync_range(0, 2 * PAGE).unwrap();
        let img = fs
            .crash(CrashMode::DropUnsynced)
            .read_file(&p("/d/f"))
            .unwrap();
        assert_eq!(
            img[0], 0,
            "a lost page must not be persisted by a later sync"
        );
        // Nor does fsync, a kill and restart, or a torn power loss.
        f.sync_all().unwrap();
        let killed = fs.crash(CrashMode::Kill);
        let k = killed.open(&p("/d/f"), false).unwrap();
        k.sync_all().unwrap();
        assert_eq!(killed.read_file(&p("/d/f")).unwrap()[0], b'x');
        assert_eq!(
            killed
                .crash(CrashMode::DropUnsynced)
                .read_file(&p("/d/f"))
                .unwrap()[0],
            0
        );
        for t in 0..32 {
            let img = fs.crash(CrashMode::Torn(t)).read_file(&p("/d/f")).unwrap();
            assert_eq!(img[0], 0, "torn {t}");
        }
        // Modified again (even elsewhere in the page): the next sync writes it.
        write(&m, 1, b"y");
        m.sync_range(0, 1).unwrap();
        let img = fs
            .crash(CrashMode::DropUnsynced)
            .read_file(&p("/d/f"))
            .unwrap();
        assert_eq!(&img[..2], b"xy");
    }

    #[test]
    fn a_failed_sync_keeps_some_pages_and_loses_others_by_seed() {
        let outcome = |seed: u64| {
            let fs = SimFs::with_seed(seed);
            let (_f, m) = mapped_file(&fs, 8);
            for i in 0..8 {
                write(&m, i * PAGE, &[1 + i as u8]);
            }
            fs.fail_at(eio("msync"));
            m.sync_range(0, 8 * PAGE).unwrap_err();
            fs.fail_at(None);
            m.sync_range(0, 8 * PAGE).unwrap();
            let img = fs
                .crash(CrashMode::DropUnsynced)
                .read_file(&p("/d/f"))
                .unwrap();
            (0..8).map(|i| img[i * PAGE] != 0).collect::<Vec<bool>>()
        };
        let all: Vec<Vec<bool>> = (0..40).map(outcome).collect();
        assert!(all.iter().any(|o| o.iter().all(|&k| k)), "all kept");
        assert!(all.iter().any(|o| o.iter().all(|&k| !k)), "all lost");
        assert!(
            all.iter()
                .any(|o| o.iter().any(|&k| k) && o.iter().any(|&k| !k)),
            "mixed"
        );
        // Deterministic: the same seed, the same outcome.
        for seed in 0..40 {
            assert_eq!(outcome(seed), all[seed as usize], "seed {seed}");
        }
    }

    #[test]
    fn a_failed_fsync_loses_or_keeps_data_and_length_and_retry_does_not_bring_data_back() {
        let (mut lost_len, mut kept_len, mut lost_data) = (false, false, false);
        for seed in 0..40 {
            let fs = SimFs::with_seed(seed);
            let f = fs.open(&p("/d/f"), true).unwrap();
            fs.sync_dir(Path::new("/d")).unwrap();
            f.write_all(&[7u8; PAGE + 1]).unwrap();
            fs.fail_at(eio("fsync"));
            f.sync_all().unwrap_err();
            fs.fail_at(None);
            let image = |fs: &SimFs| {
                fs.crash(CrashMode::DropUnsynced)
                    .read_file(&p("/d/f"))
                    .unwrap()
            };
            let before = image(&fs);
            f.sync_all().unwrap();
            let after = image(&fs);
            // The length is metadata: the retry persists it. Data pages lost
            // by the failure stay lost (zeros); the others are there.
            assert_eq!(after.len(), PAGE + 1, "seed {seed}");
            if before.len() == PAGE + 1 {
                assert_eq!(before, after, "seed {seed}: the retry changed data");
            }
            for page in after.chunks(PAGE) {
                assert!(page.iter().all(|&b| b == 7) || page.iter().all(|&b| b == 0));
            }
            lost_len |= before.is_empty();
            kept_len |= before.len() == PAGE + 1;
            lost_data |= after.contains(&0);
            // Rewritten: the next fsync persists it all.
            f.write_all(&[8u8; PAGE + 1]).unwrap();
            f.sync_all().unwrap();
            assert_eq!(image(&fs), vec![8u8; PAGE + 1], "seed {seed}");
        }
        assert!(lost_len && kept_len && lost_data);
    }

    #[test]
    fn a_failed_dir_sync_leaves_names_undefined_until_a_later_sync_persists_them() {
        let (mut lost, mut kept) = (0, 0);
        for seed in 0..40 {
            let fs = SimFs::with_seed(seed);
            for n in ["a", "b", "c", "d"] {
                fs.open(&p(&format!("/d/{n}")), true).unwrap();
            }
            fs.fail_at(eio("fsync dir"));
            fs.sync_dir(Path::new("/d")).unwrap_err();
            fs.fail_at(None);
            let names = |fs: &SimFs| {
                let mut v = fs
                    .crash(CrashMode::DropUnsynced)
                    .file_names(Path::new("/d"));
                v.sort();
                v
            };
            let first = names(&fs);
            lost += 4 - first.len();
            kept += first.len();
            // Names the failure did not write stay pending: a retry
            // persists them all.
            fs.sync_dir(Path::new("/d")).unwrap();
            assert_eq!(names(&fs).len(), 4, "seed {seed}");
        }
        assert!(lost > 0 && kept > 0, "both outcomes are drawn");
    }

    #[test]
    fn torn_power_loss_is_deterministic_and_keeps_synced_data() {
        let fs = SimFs::new();
        let (_f, m) = mapped_file(&fs, 4);
        write(&m, 0, &[5u8; PAGE]);
        m.sync_range(0, PAGE).unwrap();
        write(&m, PAGE, &[6u8; 3 * PAGE]);
        let mut seen = BTreeSet::new();
        for seed in 0..16 {
            let a = fs
                .crash(CrashMode::Torn(seed))
                .read_file(&p("/d/f"))
                .unwrap();
            let b = fs
                .crash(CrashMode::Torn(seed))
                .read_file(&p("/d/f"))
                .unwrap();
            assert_eq!(a, b, "seed {seed}");
            assert_eq!(&a[..PAGE], &[5u8; PAGE][..]);
            assert!(a[PAGE..].iter().all(|&x| x == 0 || x == 6));
            seen.insert(a[PAGE..].iter().filter(|&&x| x == 6).count());
        }
        assert!(seen.len() > 2, "torn crashes differ by seed: {seen:?}");
    }

    #[test]
    fn taking_a_crash_image_does_not_change_the_file_system() {
        let run = |probe: bool| {
            let fs = SimFs::with_seed(3);
            let (_f, m) = mapped_file(&fs, 8);
            let mut out = Vec::new();
            for round in 0..6u8 {
                for i in 0..8 {
                    write(&m, i * PAGE + round as usize, &[round + 1]);
                }
                if probe {
                    let _ = fs.crash(CrashMode::DropUnsynced);
                    let _ = fs.crash(CrashMode::Torn(round as u64));
                    let _ = fs.crash(CrashMode::Kill);
                }
                fs.fail_at(eio("msync"));
                let _ = m.sync_range(0, 8 * PAGE);
                out.push(
                    fs.crash(CrashMode::DropUnsynced)
                        .read_file(&p("/d/f"))
                        .unwrap(),
                );
            }
            out
        };
        assert_eq!(run(false), run(true));
    }

    #[test]
    fn faults_count_only_their_kind_and_fail_once_or_for_good() {
        let fs = SimFs::new();
        fs.fail_at(Some(Fault {
            at: 1,
            sticky: true,
            errno: libc::ENOSPC,
            only: Some("rename"),
        }));
        fs.open(&p("/d/a"), true).unwrap();
        fs.rename(&p("/d/a"), &p("/d/b")).unwrap();
        let e = fs.rename(&p("/d/b"), &p("/d/c")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert!(fs.rename(&p("/d/b"), &p("/d/c")).is_err());
        assert_eq!(fs.failures(), 2);
        // A failed rename does nothing.
        assert_eq!(fs.file_names(Path::new("/d")), ["b"]);
    }
}

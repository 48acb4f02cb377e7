//! A simulated file system for crash and fault testing (feature `sim`).
//!
//! It keeps, per file, a live image (what the page cache holds; what a
//! process sees) apart from a durable image (what survives a power loss),
//! and likewise for directory entries:
//! - data reaches the durable image only through `sync_range` (msync) or
//!   `sync_all` (fsync); a file's length only through a sync;
//! - a created, renamed or removed name only through `sync_dir`;
//! - [`SimFs::crash`] builds the file system a reboot would find: durable
//!   images only, or ([`CrashMode::Torn`]) a random mix in which each unsynced
//!   512-byte sector and each unsynced name may or may not have made it;
//! - [`SimFs::fail_at`] makes the Nth I/O call (and optionally every later
//!   one) fail with a chosen errno, as SQLite's fault tests do.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::vfs::{Mapping, Vfs, VfsFile};

const SECTOR: usize = 512;

/// How a simulated power loss treats writes that were not synced.
#[derive(Debug, Clone, Copy)]
pub enum CrashMode {
    /// The process was killed: the page cache survives, so live images and
    /// names carry over as they are.
    Kill,
    /// Every unsynced write and name change is lost.
    DropUnsynced,
    /// Each unsynced sector and name change independently survives or not,
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
    /// "fsync dir", "rename", "open", ...); `None` for every call.
    pub only: Option<&'static str>,
}

struct FileData {
    /// Live contents. Boxed so a mapping's pointer stays valid; only replaced
    /// while the file is not mapped.
    live: Box<[u8]>,
    durable: Vec<u8>,
}

pub struct SimFileInner {
    data: Mutex<FileData>,
    mapped: AtomicUsize,
}

#[derive(Default)]
struct Dirs {
    live: BTreeMap<PathBuf, Arc<SimFileInner>>,
    durable: BTreeMap<PathBuf, Arc<SimFileInner>>,
    locks: BTreeSet<PathBuf>,
}

#[derive(Default)]
struct State {
    dirs: Mutex<Dirs>,
    ops: AtomicU64,
    fault: Mutex<Option<Fault>>,
    failures: AtomicU64,
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

/// splitmix64: a tiny deterministic generator for torn crashes.
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

    /// The file system a reboot after a power loss now would find. The old
    /// one stays usable (and unaffected) for whatever still holds it.
    pub fn crash(&self, mode: CrashMode) -> SimFs {
        let dirs = lock(&self.0.dirs);
        let mut rng = Rng(match mode {
            CrashMode::Torn(seed) => seed,
            _ => 0,
        });
        let torn = matches!(mode, CrashMode::Torn(_));
        let kill = matches!(mode, CrashMode::Kill);
        let mut names = if kill {
            dirs.live.clone()
        } else {
            dirs.durable.clone()
        };
        if torn {
            // Unsynced name changes each may or may not have reached the disk.
            let all: BTreeSet<&PathBuf> = dirs.live.keys().chain(dirs.durable.keys()).collect();
            for p in all {
                let (l, d) = (dirs.live.get(p), dirs.durable.get(p));
                let same = matches!((l, d), (Some(a), Some(b)) if Arc::ptr_eq(a, b));
                if !same && rng.coin() {
                    match l {
                        Some(f) => names.insert(p.clone(), f.clone()),
                        None => names.remove(p),
                    };
                }
            }
        }
        let mut new = Dirs::default();
        let mut copies: Vec<(*const SimFileInner, Arc<SimFileInner>)> = Vec::new();
        for (p, f) in names {
            let key = Arc::as_ptr(&f);
            if let Some((_, c)) = copies.iter().find(|(k, _)| *k == key) {
                new.live.insert(p.clone(), c.clone());
                new.durable.insert(p, c.clone());
                continue;
            }
            let d = lock(&f.data);
            let mut img = if kill {
                d.live.to_vec()
            } else {
                d.durable.clone()
            };
            if torn {
                if d.live.len() != img.len() && rng.coin() {
                    img.resize(d.live.len(), 0);
                }
                for (i, chunk) in img.chunks_mut(SECTOR).enumerate() {
                    let start = i * SECTOR;
                    if let Some(live) = d.live.get(start..start + chunk.len()) {
                        if live != chunk && rng.coin() {
                            // A torn sector: a prefix of it made it.
                            let cut = if rng.coin() {
                                chunk.len()
                            } else {
                                (rng.next() as usize) % chunk.len()
                            };
                            chunk[..cut].copy_from_slice(&live[..cut]);
                        }
                    }
                }
            }
            let c = Arc::new(SimFileInner {
                data: Mutex::new(FileData {
                    live: img.clone().into_boxed_slice(),
                    durable: img,
                }),
                mapped: AtomicUsize::new(0),
            });
            copies.push((key, c.clone()));
            new.live.insert(p.clone(), c.clone());
            new.durable.insert(p, c);
        }
        SimFs(Arc::new(State {
            dirs: Mutex::new(new),
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

    /// Replaces a file's contents, live and durable (bit rot, a bad copy).
    /// The file must not be open in a store.
    pub fn write_file(&self, path: &Path, bytes: &[u8]) {
        let mut dirs = lock(&self.0.dirs);
        let f = Arc::new(SimFileInner {
            data: Mutex::new(FileData {
                live: bytes.to_vec().into_boxed_slice(),
                durable: bytes.to_vec(),
            }),
            mapped: AtomicUsize::new(0),
        });
        dirs.live.insert(path.to_path_buf(), f.clone());
        dirs.durable.insert(path.to_path_buf(), f);
    }

    /// Names of live files in `dir`.
    pub fn file_names(&self, dir: &Path) -> Vec<String> {
        let dirs = lock(&self.0.dirs);
        dirs.live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect()
    }
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
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.io("list")?;
        Ok(self.file_names(dir))
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<SimFile> {
        self.io("open")?;
        let mut dirs = lock(&self.0.dirs);
        let inner = match dirs.live.get(path) {
            Some(f) => f.clone(),
            None if create => {
                let f = Arc::new(SimFileInner {
                    data: Mutex::new(FileData {
                        live: Box::new([]),
                        durable: Vec::new(),
                    }),
                    mapped: AtomicUsize::new(0),
                });
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
        let f = dirs.live.remove(from).ok_or_else(not_found)?;
        dirs.live.insert(to.to_path_buf(), f);
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.io("fsync dir")?;
        let mut dirs = lock(&self.0.dirs);
        dirs.durable.retain(|p, _| p.parent() != Some(dir));
        let live: Vec<_> = dirs
            .live
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, f)| (p.clone(), f.clone()))
            .collect();
        dirs.durable.extend(live);
        Ok(())
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
        self.fs.io("fsync")?;
        let mut d = lock(&self.inner.data);
        let n = d.live.len();
        d.durable.resize(n, 0);
        // SAFETY: copies from the live buffer through a raw pointer, since
        // mappings may write other ranges of it concurrently.
        unsafe { std::ptr::copy(d.live.as_ptr(), d.durable.as_mut_ptr(), n) };
        Ok(())
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
    unsafe fn redirty(&self, _off: usize, _len: usize) {
        // Every sync copies the whole live range, so nothing is ever clean
        // but lost here.
    }
    fn sync_range(&self, off: usize, len: usize) -> io::Result<()> {
        self.fs.io("msync")?;
        let mut d = lock(&self.inner.data);
        // msync is page-granular: whole 4 KiB pages around the range persist.
        let start = off - off % 4096;
        let end = (off + len)
            .div_ceil(4096)
            .saturating_mul(4096)
            .min(self.len);
        if d.durable.len() < self.len {
            d.durable.resize(self.len, 0);
        }
        // SAFETY: in bounds of the live buffer (`self.len`) and of `durable`
        // (resized above); raw copy because other ranges may be written
        // concurrently through the mapping.
        unsafe {
            std::ptr::copy(
                self.ptr.add(start),
                d.durable.as_mut_ptr().add(start),
                end.saturating_sub(start),
            )
        };
        Ok(())
    }
}

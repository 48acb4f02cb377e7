//! The narrow seam between the engine and the file system.
//!
//! Production uses [`OsFs`]; tests and fuzzers use the simulated file system
//! in `sim` (feature `sim`), which keeps a durable image apart from the live
//! one to model power loss and fails chosen I/O calls. The seam is a generic
//! parameter, so the production path pays no dynamic dispatch; writes of
//! records are plain memory copies into a [`Mapping`] and never cross it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

/// A file system as the engine sees it: the testing seam. [`OsFs`] is the
/// real one; the `sim` feature's `SimFs` simulates power loss and faults.
pub trait Vfs: Send + Sync + 'static {
    /// An open file.
    type File: VfsFile;
    /// Held for as long as the store is open.
    type Lock: Send + Sync;

    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates one directory (its parent must exist); `AlreadyExists` if
    /// taken. Durable only after `sync_dir` of the parent. Needed by
    /// `Namespaces` only; the default answers `Unsupported`.
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        let _ = dir;
        Err(io::ErrorKind::Unsupported.into())
    }
    /// Removes an empty directory (durable only after `sync_dir` of the
    /// parent). Needed by `Namespaces` only; the default answers
    /// `Unsupported`.
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        let _ = dir;
        Err(io::ErrorKind::Unsupported.into())
    }
    /// File names (not paths) in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens read-write, creating the file if `create`.
    fn open(&self, path: &Path, create: bool) -> io::Result<Self::File>;
    /// Unlinks a file (durable only after `sync_dir`).
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing `to`, or a directory onto a free name
    /// (durable only after `sync_dir` of the new parent).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes created, renamed and removed directory entries durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path`; `Ok(None)` if someone else holds it.
    fn try_lock(&self, path: &Path) -> io::Result<Option<Self::Lock>>;
}

/// An open file.
pub trait VfsFile: Send + Sync + Sized + 'static {
    /// A mapping of this file.
    type Map: Mapping;

    /// The file's length in bytes.
    fn file_len(&self) -> io::Result<u64>;
    /// Reserves real disk blocks up to `len` (never sparse), so later writes
    /// through a mapping cannot hit a full disk.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// The whole file's contents.
    fn read_all(&self) -> io::Result<Vec<u8>>;
    /// Writes `buf` at the start, replacing the file's contents.
    fn write_all(&self, buf: &[u8]) -> io::Result<()>;
    /// fsync: data and metadata (length) durable.
    fn sync_all(&self) -> io::Result<()>;
    /// Maps the whole file shared and writable. The file must not shrink while mapped.
    /// `populate`: prefault every page now (cheaper than a fault per page
    /// when the whole file is about to be read, as in recovery).
    fn map(&self, populate: bool) -> io::Result<Self::Map>;
}

/// A shared writable mapping of a whole file.
///
/// The engine reads and writes the bytes through `as_ptr` itself; which
/// ranges may be read or written when is the segment's contract
/// (`Segment::write` is an `unsafe fn` that states it).
pub trait Mapping: Send + Sync + 'static {
    /// Base address of the mapping, valid for `map_len` bytes while `self` lives.
    fn as_ptr(&self) -> *mut u8;
    /// Length of the mapping in bytes.
    fn map_len(&self) -> usize;
    /// msync(MS_SYNC) of `[off, off + len)`: those bytes are durable on return.
    fn sync_range(&self, off: usize, len: usize) -> io::Result<()>;
    /// Marks every page of `[off, off + len)` dirty (in bounds), so the next
    /// sync writes it again: after a failed writeback Linux may have marked
    /// pages clean that never reached the disk.
    ///
    /// # Safety
    /// No other thread reads or writes the range meanwhile (the bytes may be
    /// rewritten with themselves).
    unsafe fn redirty(&self, off: usize, len: usize);
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

/// A file of [`OsFs`].
pub struct OsFile(File);

impl Vfs for OsFs {
    type File = OsFile;
    type Lock = File;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir(dir)
    }
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        fs::remove_dir(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<OsFile> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
            .map(OsFile)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn try_lock(&self, path: &Path) -> io::Result<Option<File>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // flock: per open file description, so a second open in the same
        // process conflicts too.
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

impl VfsFile for OsFile {
    type Map = OsMap;

    fn file_len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let len =
            libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: plain syscall on an fd we own; no memory is passed.
        let rc = unsafe { libc::posix_fallocate(self.0.as_raw_fd(), 0, len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    }
    fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        (&self.0).read_to_end(&mut v)?;
        Ok(v)
    }
    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.0.set_len(0)?;
        self.0.write_all_at(buf, 0)?;
        (&self.0).flush()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }
    fn map(&self, populate: bool) -> io::Result<OsMap> {
        // SAFETY: the store holds the directory lock, so no other dedupstore
        // changes the file; the file was preallocated to its full length
        // before mapping and is never shrunk while mapped.
        let mut opts = memmap2::MmapOptions::new();
        if populate {
            opts.populate();
        }
        // SAFETY: see above: the mapped file is only changed through this
        // mapping by the store that holds the directory lock.
        let mut map = unsafe { opts.map_mut(&self.0)? };
        Ok(OsMap {
            ptr: map.as_mut_ptr(),
            map,
        })
    }
}

/// A mapping of an [`OsFile`] (`memmap2`).
pub struct OsMap {
    map: memmap2::MmapMut,
    ptr: *mut u8,
}

// SAFETY: the raw pointer is the mapping's own base address; the mapping lives
// as long as this struct. Concurrent access is coordinated by the segment
// (writers own disjoint reserved ranges; readers read only published records).
unsafe impl Send for OsMap {}
// SAFETY: as above.
unsafe impl Sync for OsMap {}

impl Mapping for OsMap {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    fn map_len(&self) -> usize {
        self.map.len()
    }
    fn sync_range(&self, off: usize, len: usize) -> io::Result<()> {
        self.map.flush_range(off, len)
    }
    unsafe fn redirty(&self, off: usize, len: usize) {
        const PAGE: usize = 4096;
        let end = off.saturating_add(len).min(self.map.len());
        let mut p = off - off % PAGE;
        while p < end {
            let at = p.max(off);
            // SAFETY: `at` is in bounds of the mapping (checked by the loop
            // bound). Rewriting a byte with its own value changes nothing a
            // reader can see; the write fault is what marks the page dirty.
            // Nobody else touches the range (the caller's contract).
            unsafe {
                let ptr = self.ptr.add(at);
                std::ptr::write_volatile(ptr, std::ptr::read_volatile(ptr));
            }
            p += PAGE;
        }
    }
}

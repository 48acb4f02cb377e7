//! A log segment: one preallocated, memory-mapped file of records.
//!
//! ```text
//! 0..8    magic "DDUPSEG\0"
//! 8..12   format version (u32)
//! 12..16  segment id (u32)
//! 16..20  reserved, zero
//! 20..24  crc32 of bytes 0..20
//! 24..32  synced_len (u64): every byte below it was durable when it was written
//! 32..36  crc32 of bytes 24..32
//! 36..64  reserved, zero
//! 64..    records, then zeros to the end of the file
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{io_err, Error, Result};
use crate::poison::Poison;
use crate::vfs::{Mapping as _, Vfs, VfsFile};

pub use crate::format::seg::{HEADER_LEN, MAGIC};
pub use crate::format::FORMAT_VERSION;
use crate::format::{le, seg as at};

pub fn file_name(id: u32) -> String {
    format!("seg-{id:010}.log")
}

pub fn tmp_name(id: u32) -> String {
    format!("seg-{id:010}.tmp")
}

/// Parses `seg-NNNNNNNNNN.log`.
pub fn parse_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub struct Segment<F: Vfs> {
    pub id: u32,
    pub path: PathBuf,
    map: <F::File as VfsFile>::Map,
    /// Highest watermark written to the header. Writers of the header slot
    /// hold this lock so the slot is never torn by two writers and never
    /// moves backwards.
    watermark: Mutex<u64>,
    /// Latest horizon of any record in the segment: the time until which the
    /// record, or an older record of its key that it shadows, could still
    /// matter (see `index::Entry::keep_s`). Once it has passed, nothing in
    /// the segment matters and GC deletes it whole, without reading it.
    max_horizon: AtomicU64,
    /// Records in the segment, live or not.
    records: AtomicU64,
    /// Every sync passes through the store's poison gate. The file itself is
    /// closed once mapped: a mapping needs no descriptor, so a store holds
    /// no file descriptor per segment.
    poison: Arc<Poison>,
}

fn encode_header(id: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..MAGIC.len()].copy_from_slice(MAGIC);
    le::put_u32(&mut h, at::VERSION, FORMAT_VERSION);
    le::put_u32(&mut h, at::ID, id);
    let crc = crc32fast::hash(&h[0..at::HEADER_CRC]);
    le::put_u32(&mut h, at::HEADER_CRC, crc);
    h
}

/// The header of a segment whose records end at `wm`, the watermark set
/// (for a segment written whole at once: a restored replica, `replica`).
pub fn encode_header_with_watermark(id: u32, wm: u64) -> [u8; HEADER_LEN] {
    let mut h = encode_header(id);
    le::put_u64(&mut h, at::WATERMARK, wm);
    let crc = crc32fast::hash(&h[at::WATERMARK..at::WATERMARK_CRC]);
    le::put_u32(&mut h, at::WATERMARK_CRC, crc);
    h
}

/// Checks a segment header. Returns the watermark, or `None` if its slot is
/// torn or blank (then nothing is known to have been synced).
pub fn check_header(h: &[u8], expect_id: u32, path: &Path) -> Result<Option<u64>> {
    let corrupt = |offset, reason| Error::Corruption {
        file: path.to_path_buf(),
        offset,
        reason,
    };
    if h.len() < HEADER_LEN {
        return Err(corrupt(0, "segment shorter than its header"));
    }
    if &h[0..MAGIC.len()] != MAGIC {
        return Err(corrupt(0, "bad segment magic"));
    }
    let version = le::u32_at(h, at::VERSION);
    if version > FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            file: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if crc32fast::hash(&h[0..at::HEADER_CRC]) != le::u32_at(h, at::HEADER_CRC) {
        return Err(corrupt(
            at::HEADER_CRC as u64,
            "segment header checksum mismatch",
        ));
    }
    if version == 0 {
        return Err(corrupt(at::VERSION as u64, "segment format version 0"));
    }
    if le::u32_at(h, at::ID) != expect_id {
        return Err(corrupt(
            at::ID as u64,
            "segment id does not match file name",
        ));
    }
    let wm = le::u64_at(h, at::WATERMARK);
    if crc32fast::hash(&h[at::WATERMARK..at::WATERMARK_CRC]) == le::u32_at(h, at::WATERMARK_CRC)
        && wm >= HEADER_LEN as u64
    {
        Ok(Some(wm))
    } else {
        Ok(None)
    }
}

impl<F: Vfs> Segment<F> {
    /// Creates segment `id` crash-safely: a temp file is preallocated, given
    /// its header, fsynced, then renamed into place and the directory fsynced.
    /// A crash leaves either no segment or a complete empty one (plus perhaps a
    /// temp file, removed on open).
    ///
    /// A failure before the rename removes the temp file and leaves the store
    /// usable (e.g. a full disk). A failure at or after the rename poisons the
    /// store: the new segment may exist on disk, so the previous one, already
    /// sealed, must never take another append (it would then hold records
    /// past its sealed length that recovery would call corruption).
    pub fn create(fs: &F, dir: &Path, id: u32, size: u64, poison: Arc<Poison>) -> Result<Self> {
        poison.check()?;
        let tmp = dir.join(tmp_name(id));
        let path = dir.join(file_name(id));
        let seg = match Self::prepare(fs, &tmp, &path, id, size, poison.clone()) {
            Ok(seg) => seg,
            Err(e) => {
                // Best effort: a leftover temp file is removed on open anyway.
                let _ = fs.remove(&tmp);
                return Err(e);
            }
        };
        let published = fs
            .rename(&tmp, &path)
            .map_err(io_err("rename", &tmp))
            .and_then(|()| fs.sync_dir(dir).map_err(io_err("fsync dir", dir)));
        if let Err(e) = published {
            poison.set();
            return Err(e);
        }
        Ok(seg)
    }

    /// The temp file of a new segment, preallocated, mapped, with its header
    /// durable.
    fn prepare(
        fs: &F,
        tmp: &Path,
        path: &Path,
        id: u32,
        size: u64,
        poison: Arc<Poison>,
    ) -> Result<Self> {
        let file = fs.open(tmp, true).map_err(io_err("create segment", tmp))?;
        file.allocate(size).map_err(io_err("fallocate", tmp))?;
        let map = file.map(false).map_err(io_err("mmap", tmp))?;
        let seg: Segment<F> = Segment {
            id,
            path: path.to_path_buf(),
            map,
            watermark: Mutex::new(HEADER_LEN as u64),
            max_horizon: AtomicU64::new(0),
            records: AtomicU64::new(0),
            poison,
        };
        let header = encode_header(id);
        // SAFETY: the segment is not shared yet: this thread has all of it.
        unsafe { seg.write(0, &header) };
        seg.write_watermark_slot(HEADER_LEN as u64);
        seg.sync(0, HEADER_LEN)?;
        seg.poison
            .sync(|| file.sync_all().map_err(io_err("fsync", tmp)))?;
        Ok(seg)
    }

    /// Opens an existing segment, extending it to `min_size` first if it is
    /// shorter (only done for the segment that will take appends; the new
    /// length is fsynced before anything is written past the old one).
    /// Returns the segment and its watermark, if readable. `populate`:
    /// prefault the whole mapping (when recovery is about to read it all;
    /// not for segments a checkpoint covers, which open does not read).
    pub fn open(
        fs: &F,
        path: &Path,
        id: u32,
        min_size: Option<u64>,
        populate: bool,
        poison: Arc<Poison>,
    ) -> Result<(Self, Option<u64>)> {
        let file = fs.open(path, false).map_err(io_err("open segment", path))?;
        let len = file.file_len().map_err(io_err("stat", path))?;
        if len < HEADER_LEN as u64 {
            return Err(Error::Corruption {
                file: path.into(),
                offset: len,
                reason: "segment shorter than its header",
            });
        }
        if len > u32::MAX as u64 {
            return Err(Error::Corruption {
                file: path.into(),
                offset: u32::MAX as u64,
                reason: "segment larger than 4 GiB",
            });
        }
        if let Some(min) = min_size {
            if len < min {
                file.allocate(min).map_err(io_err("fallocate", path))?;
                poison.sync(|| file.sync_all().map_err(io_err("fsync", path)))?;
            }
        }
        let map = file.map(populate).map_err(io_err("mmap", path))?;
        let seg: Segment<F> = Segment {
            id,
            path: path.to_path_buf(),
            map,
            watermark: Mutex::new(0),
            max_horizon: AtomicU64::new(0),
            records: AtomicU64::new(0),
            poison,
        };
        let wm = check_header(seg.read(0, HEADER_LEN), id, path)?;
        *seg.lock_watermark() = wm.unwrap_or(HEADER_LEN as u64);
        Ok((seg, wm))
    }

    /// Length of the mapped file in bytes.
    pub fn capacity(&self) -> usize {
        self.map.map_len()
    }

    /// Bytes `[off, off + len)`.
    ///
    /// Safe because every writer of a segment is an `unsafe fn` whose
    /// contract keeps its range away from every range anyone may read: the
    /// log writer writes only past the last published record; recovery and
    /// segment creation write before the segment is shared.
    pub fn read(&self, off: usize, len: usize) -> &[u8] {
        assert!(
            off.checked_add(len)
                .is_some_and(|end| end <= self.map.map_len()),
            "read out of segment bounds"
        );
        // SAFETY: in bounds (checked above) of a mapping that lives as long as
        // `self`; the range is not concurrently written (see doc comment).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(off), len) }
    }

    /// A hint that bytes at `off` will be read soon: starts loading their
    /// cache line. Does nothing past the end, or on other architectures.
    #[inline]
    pub fn prefetch(&self, off: usize) {
        #[cfg(target_arch = "x86_64")]
        if off < self.map.map_len() {
            // A prefetch never faults and changes no memory; the address is
            // inside the mapping anyway (checked above).
            let p = self.map.as_ptr().wrapping_add(off);
            // SAFETY: `_mm_prefetch` only hints the cache; it reads nothing
            // the program sees and cannot fault, whatever the address.
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    p.cast_const().cast::<i8>(),
                )
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = off;
    }

    /// Copies `bytes` to `off` (bounds-checked: panics past the end).
    ///
    /// # Safety
    /// The caller has `[off, off + bytes.len())` to itself: no other thread
    /// reads or writes it until the caller publishes it (the log writer owns
    /// the range past the last published record under the log lock; recovery
    /// and segment creation own the whole segment before it is shared).
    pub unsafe fn write(&self, off: usize, bytes: &[u8]) {
        assert!(
            off.checked_add(bytes.len())
                .is_some_and(|end| end <= self.map.map_len()),
            "write out of segment bounds"
        );
        // SAFETY: in bounds (checked above); the file was preallocated to the
        // mapping's length, so the write cannot SIGBUS on a full disk; the
        // range is owned by this writer (see doc comment).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.map.as_ptr().add(off), bytes.len())
        }
    }

    /// Lets `fill` write `[off, off + len)` in place (bounds-checked).
    ///
    /// # Safety
    /// As for [`Segment::write`]: the caller has the range to itself.
    pub unsafe fn write_with(&self, off: usize, len: usize, fill: impl FnOnce(&mut [u8])) {
        assert!(
            off.checked_add(len)
                .is_some_and(|end| end <= self.map.map_len()),
            "write out of segment bounds"
        );
        // SAFETY: as in `write`: in bounds, preallocated, and the range is
        // owned by this writer, so no other reference to it exists.
        fill(unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr().add(off), len) })
    }

    /// msync of `[off, off + len)`, through the store's poison gate.
    pub fn sync(&self, off: usize, len: usize) -> Result<()> {
        self.poison.sync(|| {
            self.map
                .sync_range(off, len)
                .map_err(io_err("msync", &self.path))
        })
    }

    /// Marks `[from, to)` dirty again, so the next sync writes it even if an
    /// earlier failed writeback left those pages clean but not on disk.
    ///
    /// # Safety
    /// As for [`Segment::write`] (the bytes are rewritten with themselves):
    /// only while the segment is not shared yet (at open).
    pub unsafe fn redirty(&self, from: usize, to: usize) {
        let to = to.min(self.capacity());
        if from < to {
            // SAFETY: the caller's contract is the mapping's.
            unsafe { self.map.redirty(from, to - from) };
        }
    }

    fn lock_watermark(&self) -> std::sync::MutexGuard<'_, u64> {
        self.watermark.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write_watermark_slot(&self, wm: u64) {
        let mut slot = [0u8; at::WATERMARK_SLOT_END - at::WATERMARK];
        le::put_u64(&mut slot, 0, wm);
        let crc = crc32fast::hash(&slot[0..8]);
        le::put_u32(&mut slot, 8, crc);
        // SAFETY: the header's watermark slot is written only here, under
        // the watermark lock, and read only by recovery before the segment is
        // shared; records start past the header.
        unsafe { self.write(at::WATERMARK, &slot) };
    }

    /// Records that `[0, wm)` is durable. Call only after a completed sync of
    /// that range: the slot is then a lower bound on what is on disk, which is
    /// what lets recovery tell corruption (below it) from a torn tail.
    pub fn set_watermark(&self, wm: u64) {
        let mut cur = self.lock_watermark();
        if wm > *cur {
            *cur = wm;
            self.write_watermark_slot(wm);
        }
    }

    /// Sets the watermark to exactly `wm`, even below the current one. Only
    /// at open, once recovery has made `[0, wm)` durable and cut everything
    /// after it: a salvaged tail must not leave a watermark above the end
    /// of the records (later strict opens would call the gap corruption).
    pub fn reset_watermark(&self, wm: u64) -> Result<()> {
        let mut cur = self.lock_watermark();
        *cur = wm;
        self.write_watermark_slot(wm);
        drop(cur);
        self.sync(0, HEADER_LEN)
    }

    /// Sets the watermark and makes the header durable too. Used when a
    /// segment is sealed and on clean close.
    pub fn persist_watermark(&self, wm: u64) -> Result<()> {
        self.set_watermark(wm);
        self.sync(0, HEADER_LEN)
    }

    /// Overwrites `[from, to)` with zeros (torn tail cleanup), only where
    /// non-zero so untouched preallocated pages stay untouched.
    ///
    /// # Safety
    /// As for [`Segment::write`]: only during recovery, before sharing.
    pub unsafe fn zero_range(&self, from: usize, to: usize) {
        const CHUNK: usize = 4096;
        let mut off = from;
        while off < to {
            let end = (off - off % CHUNK + CHUNK).min(to);
            if self.read(off, end - off).iter().any(|&b| b != 0) {
                let zeros = [0u8; CHUNK];
                // SAFETY: the caller has the range to itself (contract).
                unsafe { self.write(off, &zeros[..end - off]) };
            }
            off = end;
        }
    }
}

impl<F: Vfs> Segment<F> {
    /// The highest watermark written (for a sealed segment: its record end).
    pub fn watermark(&self) -> u64 {
        *self.lock_watermark()
    }

    /// Accounts for a record appended or recovered. Only one thread at a
    /// time writes a segment (the log writer under its lock, or the recovery
    /// scanner), so plain loads and stores suffice: no read-modify-write.
    pub fn note_record(&self, horizon_ms: u64) {
        if horizon_ms > self.max_horizon.load(Ordering::Relaxed) {
            self.max_horizon.store(horizon_ms, Ordering::Relaxed);
        }
        self.records
            .store(self.records.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// See the field: once this has passed, the segment can go whole.
    pub fn max_horizon(&self) -> u64 {
        self.max_horizon.load(Ordering::Relaxed)
    }

    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Sets the counters from a checkpoint, before the segment is shared
    /// (recovery then adds the records it replays past the checkpoint).
    pub fn set_counts(&self, records: u64, max_horizon_ms: u64) {
        self.records.store(records, Ordering::Relaxed);
        self.max_horizon.store(max_horizon_ms, Ordering::Relaxed);
    }
}

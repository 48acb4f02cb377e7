//! The append side of the log: the active segment, record appends, rolls,
//! and the table of open segments that readers resolve locations through.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use crate::error::{Error, Result};
use crate::format::{le, rec};
use crate::index::Entry;
use crate::poison::Poison;
use crate::record::{self, Body, Kind};
use crate::segment::{Segment, HEADER_LEN};
use crate::vfs::Vfs;

/// Log sequence number: `segment id << 32 | byte offset`. Grows with every
/// append, so "durable up to LSN x" covers every record before x.
pub type Lsn = u64;

pub fn lsn(seg: u32, off: usize) -> Lsn {
    ((seg as u64) << 32) | off as u64
}

/// Open segments by id.
///
/// A `Vec` sorted by id (segments are few: one per GiB of log), behind a
/// read-write lock. A reader takes the read lock once per operation
/// ([`SegmentTable::read`]) and resolves every location it needs through
/// that guard: GC's `remove` takes the write lock, so no segment a reader
/// holds through the guard can be unmapped under it.
pub struct SegmentTable<F: Vfs> {
    segs: RwLock<Vec<Arc<Segment<F>>>>,
}

/// The open segments, read-locked: what a reader resolves locations
/// through. Lock order: taken after index shards and the log lock, never
/// held while taking either (a roll takes the write lock under the log
/// lock), and never taken twice by one thread (a waiting writer would
/// block the second read).
pub struct Segs<'a, F: Vfs> {
    segs: RwLockReadGuard<'a, Vec<Arc<Segment<F>>>>,
}

impl<F: Vfs> Segs<'_, F> {
    /// Segment `id`, if open.
    #[inline]
    pub fn get(&self, id: u32) -> Option<&Segment<F>> {
        // Most lookups hit the newest segment: try the last one first.
        match self.segs.last() {
            Some(s) if s.id == id => Some(s),
            _ => self
                .segs
                .binary_search_by_key(&id, |s| s.id)
                .ok()
                .map(|i| &*self.segs[i]),
        }
    }

    /// The record `e` points at, if its segment is open. Not checked: only
    /// for an entry a probe through [`Segs::entry_is_key`] found, which
    /// checked its record's checksum.
    #[inline]
    pub fn record(&self, e: &Entry) -> Option<&[u8]> {
        self.get(e.seg).map(|s| record_at(s, e.off))
    }

    /// The record `e` points at, if its segment is open, its checksum
    /// checked: `Error::Corruption` if the record is damaged.
    #[inline]
    pub fn checked_record(&self, e: &Entry) -> Result<Option<&[u8]>> {
        self.get(e.seg).map(|s| checked_at(s, e.off)).transpose()
    }

    /// Starts fetching the first bytes of the record `e` points at into the
    /// cache, if its segment is open; the record is read soon after.
    #[inline]
    pub fn prefetch(&self, e: &Entry) {
        if let Some(s) = self.get(e.seg) {
            s.prefetch(e.off as usize);
        }
    }

    /// For a probe of the index (a tag match): does the key stored at `e`
    /// equal `key`? False if its segment is gone.
    ///
    /// Invariant: no answer relies on a damaged record. The record's
    /// checksum is checked here (only on a tag match, so a miss costs
    /// nothing): a damaged record (a segment an index checkpoint covers is
    /// not re-read at open) stops the probe (`true`) and is put in
    /// `damage`, which the caller returns after the probe
    /// ([`Damage::check`]) instead of answering.
    #[inline]
    pub fn entry_is_key(&self, e: &Entry, key: &[u8], damage: &Damage) -> bool {
        let Some(s) = self.get(e.seg) else {
            return false;
        };
        match checked_at(s, e.off) {
            Ok(rec) => key_of(rec) == key,
            Err(err) => {
                damage.0.set(Some(err));
                true
            }
        }
    }
}

/// A damaged record an index probe met (see [`Segs::entry_is_key`]).
#[derive(Default)]
pub struct Damage(std::cell::Cell<Option<Error>>);

impl Damage {
    /// `Error::Corruption` if the probe met a damaged record.
    #[inline]
    pub fn check(&self) -> Result<()> {
        match self.0.take() {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

/// [`Segs`], taken on first use: a probe that matches no tag never locks
/// the table. Same lock order as `Segs`.
pub struct LazySegs<'a, F: Vfs> {
    table: &'a SegmentTable<F>,
    segs: Option<Segs<'a, F>>,
}

impl<'a, F: Vfs> LazySegs<'a, F> {
    /// The read-locked table, locking it on the first call.
    #[inline]
    pub fn get(&mut self) -> &Segs<'a, F> {
        self.segs.get_or_insert_with(|| self.table.read())
    }
}

impl<F: Vfs> Default for SegmentTable<F> {
    fn default() -> Self {
        SegmentTable {
            segs: RwLock::new(Vec::new()),
        }
    }
}

impl<F: Vfs> SegmentTable<F> {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Segment<F>>>> {
        self.segs.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The open segments, read-locked (see [`Segs`] for the lock order).
    #[inline]
    pub fn read(&self) -> Segs<'_, F> {
        Segs {
            segs: self.segs.read().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// The open segments, read-locked on first use.
    #[inline]
    pub fn lazy(&self) -> LazySegs<'_, F> {
        LazySegs {
            table: self,
            segs: None,
        }
    }

    pub fn insert(&self, seg: Arc<Segment<F>>) {
        let mut segs = self.write();
        match segs.binary_search_by_key(&seg.id, |s| s.id) {
            Ok(i) => segs[i] = seg,
            Err(i) => segs.insert(i, seg),
        }
    }

    pub fn remove(&self, id: u32) -> Option<Arc<Segment<F>>> {
        let mut segs = self.write();
        let i = segs.binary_search_by_key(&id, |s| s.id).ok()?;
        Some(segs.remove(i))
    }

    /// Runs `f` on segment `id`, if open.
    pub fn with<R>(&self, id: u32, f: impl FnOnce(&Segment<F>) -> R) -> Option<R> {
        self.read().get(id).map(f)
    }

    /// Every open segment, by id.
    pub fn all(&self) -> Vec<Arc<Segment<F>>> {
        self.read().segs.to_vec()
    }
}

/// The record at `off` in `seg`. Only called with locations taken from the
/// index, which point at published, checksummed records (but a checkpoint's
/// entries are checked for range only, and a record may be damaged after
/// open checked it: [`checked_at`] checks it).
///
/// Reads only the record's own bytes (its header first, then for a complete
/// record its response length), never past its end: the bytes after it may
/// belong to a record being written by the log writer at this moment.
/// Never panics: an offset out of the segment gives an empty record.
pub fn record_at<F: Vfs>(seg: &Segment<F>, off: u32) -> &[u8] {
    let off = off as usize;
    // Never past the segment's end, even if the record was damaged after
    // open last checked it (a segment an index checkpoint covers is not
    // re-read at open): a damaged length must not make a lookup panic.
    let room = seg.capacity().saturating_sub(off);
    if room < record::RECORD_HEADER_LEN {
        return &[];
    }
    let head = seg.read(off, record::RECORD_HEADER_LEN);
    let k = record::RECORD_HEADER_LEN + record::key_len_of(head);
    let len = match record::kind_byte_of(head) {
        record::KIND_COMPLETE if k + rec::BODY_RESPONSE <= room => {
            let n = seg.read(off + k + rec::BODY_RESPONSE_LEN, 4);
            let n = usize::try_from(le::u32_at(n, 0)).unwrap_or(usize::MAX);
            (k + rec::BODY_RESPONSE).saturating_add(n)
        }
        record::KIND_COMPLETE => room,
        record::KIND_CLAIM => k + rec::CLAIM_BODY_LEN,
        _ => k,
    };
    seg.read(off, len.min(room))
}

/// [`record_at`], its checksum checked (bytes 0..4 are the CRC-32 of the
/// rest, docs/FORMAT.md): `Error::Corruption` if it does not match.
pub fn checked_at<F: Vfs>(seg: &Segment<F>, off: u32) -> Result<&[u8]> {
    let rec = record_at(seg, off);
    match rec.get(rec::KIND..) {
        Some(body)
            if rec.len() > record::RECORD_HEADER_LEN
                && crc32fast::hash(body) == le::u32_at(rec, rec::CRC) =>
        {
            Ok(rec)
        }
        _ => Err(Error::Corruption {
            file: seg.path.clone(),
            offset: u64::from(off),
            reason: "record checksum mismatch on lookup",
        }),
    }
}

/// Does the key stored at `e` equal `key`? For a probe: see
/// [`Segs::entry_is_key`].
pub fn entry_is_key<F: Vfs>(
    table: &SegmentTable<F>,
    e: &Entry,
    key: &[u8],
    damage: &Damage,
) -> bool {
    table.read().entry_is_key(e, key, damage)
}

/// The key of a record returned by `record_at`.
/// (Empty if the record is cut short by the segment's end: only a damaged
/// record can be.)
pub fn key_of(rec: &[u8]) -> &[u8] {
    rec.get(record::RECORD_HEADER_LEN..record::RECORD_HEADER_LEN + record::key_len_of(rec))
        .unwrap_or(&[])
}

/// Size of a store's first segment: segments start small and double up to
/// `Config::segment_size`, so that a store holding little data (one of many
/// namespaces) preallocates little disk. It takes the largest record.
pub const FIRST_SEGMENT_SIZE: u64 = 64 << 10;
const _: () = assert!(FIRST_SEGMENT_SIZE > (HEADER_LEN + record::MAX_RECORD_LEN) as u64);

/// Size of the segment that follows one of `prev` bytes: twice it, at most
/// `max` (`Config::segment_size`), and at least enough for `bytes` of
/// records after the header (a batch larger than the doubled size),
/// rounded up to a multiple of [`FIRST_SEGMENT_SIZE`].
///
/// Invariant: the result holds `bytes` of records whenever `bytes` fits in
/// a segment of `max` bytes (`check_batch_bytes` allows half of one), so a
/// reservation never needs two rolls.
pub fn next_segment_size(prev: usize, bytes: usize, max: u64) -> u64 {
    let doubled = (prev as u64)
        .saturating_mul(2)
        .clamp(FIRST_SEGMENT_SIZE, max.max(FIRST_SEGMENT_SIZE));
    let need = (HEADER_LEN as u64 + bytes as u64).div_ceil(FIRST_SEGMENT_SIZE) * FIRST_SEGMENT_SIZE;
    let size = doubled.max(need);
    debug_assert!(size >= HEADER_LEN as u64 + bytes as u64);
    size
}

/// Size of a new store's first segment.
pub fn first_segment_size(max: u64) -> u64 {
    FIRST_SEGMENT_SIZE.min(max)
}

pub struct LogState<F: Vfs> {
    pub active: Arc<Segment<F>>,
    /// Next free byte in the active segment.
    pub off: usize,
}

pub struct Log<F: Vfs> {
    state: Mutex<LogState<F>>,
    pub fs: Arc<F>,
    pub dir: PathBuf,
    pub segment_size: u64,
    /// Set when a sync fails; from then on nothing is appended or reported
    /// durable until the store is reopened.
    pub poison: Arc<Poison>,
    /// Told (without blocking) each time a segment is sealed: wakes the
    /// background checkpoint writer, if any.
    pub on_seal: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// The log, locked for appends. Lock order: index shards, then the log, then
/// the segment table.
pub struct Appender<'a, F: Vfs> {
    guard: MutexGuard<'a, LogState<F>>,
    log: &'a Log<F>,
    /// Set by `begin_batch`: the poison flag was checked once for a batch
    /// that must go in whole.
    batch: bool,
}

impl<F: Vfs> Log<F> {
    pub fn new(
        fs: Arc<F>,
        dir: PathBuf,
        segment_size: u64,
        active: Arc<Segment<F>>,
        off: usize,
        poison: Arc<Poison>,
    ) -> Self {
        Log {
            state: Mutex::new(LogState { active, off }),
            fs,
            dir,
            segment_size,
            poison,
            on_seal: std::sync::OnceLock::new(),
        }
    }

    pub fn lock(&self) -> Appender<'_, F> {
        Appender {
            guard: self.state.lock().unwrap_or_else(|p| p.into_inner()),
            log: self,
            batch: false,
        }
    }

    /// Runs `f` on the active segment and the end of its records, with
    /// appends held off (so the segment's counters match that end).
    pub fn head_with<R>(&self, f: impl FnOnce(&Arc<Segment<F>>, usize) -> R) -> R {
        let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&g.active, g.off)
    }

    /// The active segment and the end of its records.
    pub fn head(&self) -> (Arc<Segment<F>>, usize) {
        let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (g.active.clone(), g.off)
    }
}

impl<F: Vfs> Appender<'_, F> {
    /// Appends an insert or remove; returns its segment, offset and end LSN.
    /// `horizon`: see `append_body`.
    pub fn append(
        &mut self,
        table: &SegmentTable<F>,
        kind: Kind,
        expires_at: u64,
        key: &[u8],
        horizon: u64,
    ) -> Result<(u32, u32, Lsn)> {
        let body = if kind == Kind::Remove {
            Body::Remove
        } else {
            Body::Insert
        };
        self.append_body(table, &body, expires_at, key, horizon)
    }

    /// Appends one record; returns its segment, offset and end LSN.
    ///
    /// `horizon` (ms): until when the record, or an older record of its key
    /// that it shadows, can matter (`index::Entry::keep_s`); the segment is
    /// not deleted whole before it.
    ///
    /// Invariant: records are appended strictly in LSN order, each fully
    /// written before the lock is released, so the log never has holes and
    /// the order of two records for one key (written under its shard lock)
    /// is their order in the log.
    pub fn append_body(
        &mut self,
        table: &SegmentTable<F>,
        body: &Body<'_>,
        expires_at: u64,
        key: &[u8],
        horizon: u64,
    ) -> Result<(u32, u32, Lsn)> {
        debug_assert!(horizon >= expires_at || matches!(body, Body::Remove));
        let len = record::body_len(key.len(), body);
        self.append_with(table, len, horizon, |out| {
            record::encode_body(out, body, expires_at, key)
        })
    }

    /// Appends a copy of a valid record (compaction); records carry no
    /// position, so the bytes stay valid where they land.
    pub fn append_raw(
        &mut self,
        table: &SegmentTable<F>,
        rec: &[u8],
        horizon: u64,
    ) -> Result<(u32, u32, Lsn)> {
        self.append_with(table, rec.len(), horizon, |out| out.copy_from_slice(rec))
    }

    /// The LSN at which a record of `len` bytes appended next will start:
    /// unique per record, so it serves as a claim token.
    pub fn next_lsn(&mut self, table: &SegmentTable<F>, len: usize) -> Result<Lsn> {
        self.reserve(table, len)?;
        Ok(lsn(self.guard.active.id, self.guard.off))
    }

    fn append_with(
        &mut self,
        table: &SegmentTable<F>,
        len: usize,
        horizon: u64,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(u32, u32, Lsn)> {
        if !self.batch {
            self.log.poison.check()?;
        }
        self.reserve(table, len)?;
        let st = &mut *self.guard;
        let off = st.off;
        // SAFETY: `[off, off + len)` lies past the last published record of
        // the active segment (appends start at `st.off`), and only the holder
        // of the log lock writes there; nobody reads it until the index (or a
        // returned LSN) points at it, after this write.
        unsafe { st.active.write_with(off, len, fill) };
        st.active.note_record(horizon);
        st.off = off + len;
        // Segments are at most 4 GiB (checked on open, 1 GiB when created).
        let off32 = u32::try_from(off).map_err(|_| crate::Error::Corruption {
            file: st.active.path.clone(),
            offset: off as u64,
            reason: "offset past 4 GiB",
        })?;
        Ok((st.active.id, off32, lsn(st.active.id, off + len)))
    }

    /// Starts a batch that must be appended whole: makes room for `bytes`
    /// (rolling first if needed) and checks the poison flag once, so that a
    /// sync failing on another thread meanwhile cannot cut it halfway. (The
    /// batch's durability wait then reports that failure for all of it.)
    pub fn begin_batch(&mut self, table: &SegmentTable<F>, bytes: usize) -> Result<()> {
        self.log.poison.check()?;
        self.reserve(table, bytes)?;
        self.batch = true;
        Ok(())
    }

    /// Makes sure the next `bytes` of appends fit in the active segment,
    /// rolling to a new one first if not.
    pub fn reserve(&mut self, table: &SegmentTable<F>, bytes: usize) -> Result<()> {
        if self.guard.off + bytes > self.guard.active.capacity() {
            self.roll_for(table, bytes)?;
        }
        Ok(())
    }

    /// Seals the active segment and starts the next one.
    ///
    /// Invariant: a segment is fully synced, and its watermark says so,
    /// before any later segment exists; so only the newest segment can have
    /// a torn tail, and a bad record in an older one is corruption. A sync
    /// failure here poisons the store (through the gate); a failure after
    /// the next segment may exist on disk too (`Segment::create`), so the
    /// sealed one never takes another append.
    pub fn roll(&mut self, table: &SegmentTable<F>) -> Result<()> {
        self.roll_for(table, 0)
    }

    /// [`Appender::roll`], the next segment sized to take at least `bytes`
    /// of records ([`next_segment_size`]).
    pub fn roll_for(&mut self, table: &SegmentTable<F>, bytes: usize) -> Result<()> {
        let st = &mut *self.guard;
        st.active.sync(0, st.off)?;
        st.active.persist_watermark(st.off as u64)?;
        let next = st
            .active
            .id
            .checked_add(1)
            .ok_or_else(|| crate::Error::InvalidConfig("segment id space exhausted".into()))?;
        let seg = Arc::new(Segment::create(
            &*self.log.fs,
            &self.log.dir,
            next,
            next_segment_size(st.active.capacity(), bytes, self.log.segment_size),
            self.log.poison.clone(),
        )?);
        table.insert(seg.clone());
        st.active = seg;
        st.off = crate::segment::HEADER_LEN;
        if let Some(wake) = self.log.on_seal.get() {
            wake();
        }
        Ok(())
    }
}

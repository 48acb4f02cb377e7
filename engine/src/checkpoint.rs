//! Index checkpoints (`index.ckpt`): a snapshot of the index, so that open
//! loads it and replays only the log written after it, instead of the whole
//! log. The byte layout is in docs/FORMAT.md ("Index checkpoint").
//!
//! A checkpoint holds the state replay would build from every record before
//! an LSN `L` (the log head when it was started), written shard by shard
//! while the store runs, so it may also reflect some records between `L`
//! and `M` (the head when it finished). Open loads it, then replays the log
//! from `L`: records in `[L, M)` are applied a second time, which changes no
//! answer (a key's last record still decides) and can only make a horizon
//! later (more conservative).
//!
//! # Why this is safe
//!
//! - **Only durable state.** Before the file is published, the log is synced
//!   up to `M`: every record the snapshot points at is durable. The file is
//!   written as `index.ckpt.tmp`, synced, renamed, and the directory synced;
//!   a failed sync poisons the store like any other.
//! - **It must match the log, or it is ignored.** Open uses it only if: its
//!   version and every checksum are right; its store id is this store's;
//!   segment `L.seg` exists and the fingerprint of its first `L.off` bytes
//!   matches; and the segments below `L.seg` are exactly those it lists,
//!   each with the same sealed length and fingerprint, except that a listed
//!   segment may be missing if its latest horizon has passed (GC deletes
//!   such a segment whole; replaying it would change no answer). A segment
//!   GC compacted away (live when deleted), rewritten by salvage, cut short,
//!   or from another store fails this; so does a stale copy of an older
//!   checkpoint unless the log below its `L` is unchanged, in which case it
//!   is as good as a fresh one. Anything else is replayed from the log.
//! - **Ignoring is always safe.** A rejected checkpoint is deleted, counted
//!   in `Stats::checkpoint_ignored`, and rebuilt later; open then replays
//!   the whole log, as it did before checkpoints existed.
//! - Under `RecoveryMode::Salvage` checkpoints are ignored: salvage must
//!   read every byte to find what to keep.
//!
//! What it gives up: open no longer reads the records a checkpoint covers,
//! so damage inside them is found later, not at open: every lookup checks
//! the checksum of each record it reads through the index and reports a
//! damaged one as `Error::Corruption` instead of answering
//! (`log::Segs::entry_is_key`, `log::checked_at`). And every entry is
//! checked to point inside the covered log before any is used (`in_range`).
//!
//! What it does not establish (outside the fault model, documented in
//! docs/FORMAT.md): a file written on purpose with valid checksums over
//! wrong contents is trusted; and two diverged copies of one store can
//! pass each other's fingerprints.

use std::path::Path;
use std::sync::Arc;

use crate::error::{io_err, Result};
use crate::format::{ckpt as at, le};
use crate::index::{Entry, Index, SHARDS};
use crate::log::{lsn, Lsn};
use crate::segment::{Segment, HEADER_LEN};
use crate::store::Inner;
use crate::vfs::{Mapping, Vfs, VfsFile};

/// The checkpoint's file name in the store directory.
pub const FILE_NAME: &str = "index.ckpt";
const TMP_NAME: &str = "index.ckpt.tmp";

/// One row of the segment table: what the checkpoint covers of a segment.
#[derive(Debug, Clone, Copy)]
pub struct SegRow {
    pub id: u32,
    /// Bytes covered: the sealed length, or `L.off` for segment `L.seg`.
    pub len: u64,
    pub records: u64,
    pub max_horizon: u64,
    pub fp: u64,
}

/// What the last checkpoint written or loaded covers.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub covers: Lsn,
    pub bytes: u64,
}

/// Fingerprint of the first `len` bytes of a segment: xxh3 of up to
/// `FP_SPAN` bytes after the header and up to `FP_SPAN` bytes before
/// `len`, seeded with `len`. `None` if `len` does not fit the segment.
pub fn fingerprint<F: Vfs>(seg: &Segment<F>, len: u64) -> Option<u64> {
    let len = usize::try_from(len).ok()?;
    if len < HEADER_LEN || len > seg.capacity() {
        return None;
    }
    let head_end = len.min(HEADER_LEN + at::FP_SPAN);
    let tail = len.saturating_sub(at::FP_SPAN).max(HEADER_LEN);
    let a = xxhash_rust::xxh3::xxh3_64_with_seed(
        seg.read(HEADER_LEN, head_end - HEADER_LEN),
        len as u64,
    );
    Some(xxhash_rust::xxh3::xxh3_64_with_seed(
        seg.read(tail, len - tail),
        a,
    ))
}

fn split(l: Lsn) -> (u32, u64) {
    (u32::try_from(l >> 32).unwrap_or(u32::MAX), l & 0xFFFF_FFFF)
}

fn xxh(b: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(b)
}

/// A checkpoint file, mapped, its header and tables checked.
pub struct Mapped<M: Mapping> {
    map: M,
    pub store_id: u32,
    pub covers: Lsn,
    /// `M`: the log head when the copy finished; no entry points past it.
    pub reflects: Lsn,
    pub segs: Vec<SegRow>,
    /// Per shard: byte offset of its entries, count, xxh3.
    shards: Vec<(usize, usize, u64)>,
}

impl<M: Mapping> Mapped<M> {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping lives as long as `self`; the checkpoint file is
        // never written in place (a new one is written under another name
        // and renamed over it), and the store holds the directory lock.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.map.map_len()) }
    }

    /// The segment `covers` points into and the offset in it.
    pub fn covers(&self) -> (u32, u64) {
        split(self.covers)
    }

    pub fn file_len(&self) -> u64 {
        self.map.map_len() as u64
    }
}

/// Opens and checks the checkpoint's header, segment table and shard
/// directory. `Err` is the reason to ignore it.
pub fn open<F: Vfs>(
    fs: &F,
    dir: &Path,
) -> std::result::Result<Mapped<<F::File as VfsFile>::Map>, &'static str> {
    let path = dir.join(FILE_NAME);
    let file = fs.open(&path, false).map_err(|_| "checkpoint unreadable")?;
    // Prefaulted: it is read whole, and one populate is far cheaper than a
    // fault per page.
    let map = file.map(true).map_err(|_| "checkpoint unreadable")?;
    let mut m = Mapped {
        map,
        store_id: 0,
        covers: 0,
        reflects: 0,
        segs: Vec::new(),
        shards: Vec::new(),
    };
    let b = m.bytes();
    if b.len() < at::HEADER_LEN || &b[0..8] != at::MAGIC {
        return Err("not a checkpoint (bad magic or too short)");
    }
    if crc32fast::hash(&b[0..at::HEADER_CRC]) != le::u32_at(b, at::HEADER_CRC) {
        return Err("checkpoint header checksum mismatch");
    }
    if le::u32_at(b, at::VERSION) != at::VERSION_NUMBER {
        return Err("checkpoint version not supported");
    }
    if le::u32_at(b, at::SHARDS) as usize != SHARDS {
        return Err("checkpoint shard count differs");
    }
    let store_id = le::u32_at(b, at::STORE_ID);
    let covers = le::u64_at(b, at::COVERS);
    let reflects = le::u64_at(b, at::REFLECTS);
    if reflects < covers {
        return Err("checkpoint ends before it starts");
    }
    let total = le::u64_at(b, at::ENTRIES);
    let nsegs = le::u32_at(b, at::SEGMENTS) as usize;
    let rows_end = at::HEADER_LEN + nsegs * at::SEG_ROW;
    let dir_end = rows_end + 8 + SHARDS * at::DIR_ROW;
    if b.len() < dir_end + 8 {
        return Err("checkpoint truncated");
    }
    if xxh(&b[at::HEADER_LEN..rows_end]) != le::u64_at(b, rows_end) {
        return Err("checkpoint segment table checksum mismatch");
    }
    if xxh(&b[rows_end + 8..dir_end]) != le::u64_at(b, dir_end) {
        return Err("checkpoint shard directory checksum mismatch");
    }
    let segs: Vec<SegRow> = (0..nsegs)
        .map(|i| {
            let r = &b[at::HEADER_LEN + i * at::SEG_ROW..];
            SegRow {
                id: le::u32_at(r, 0),
                len: le::u64_at(r, 8),
                records: le::u64_at(r, 16),
                max_horizon: le::u64_at(r, 24),
                fp: le::u64_at(r, 32),
            }
        })
        .collect();
    let mut shards = Vec::with_capacity(SHARDS);
    let mut off = dir_end + 8;
    let mut sum = 0u64;
    for s in 0..SHARDS {
        let r = &b[rows_end + 8 + s * at::DIR_ROW..];
        let count = usize::try_from(le::u64_at(r, 0)).map_err(|_| "checkpoint too large")?;
        let len = count
            .checked_mul(at::ENTRY)
            .ok_or("checkpoint shard too large")?;
        if off.checked_add(len).is_none_or(|end| end > b.len()) {
            return Err("checkpoint truncated");
        }
        shards.push((off, count, le::u64_at(r, 8)));
        off += len;
        sum += count as u64;
    }
    if sum != total {
        return Err("checkpoint entry count mismatch");
    }
    let (lseg, _) = split(covers);
    // The rows: ascending ids, the last one the segment `L` points into.
    if segs.last().is_none_or(|r| r.id != lseg) || segs.windows(2).any(|w| w[0].id >= w[1].id) {
        return Err("checkpoint segment table malformed");
    }
    m.store_id = store_id;
    m.covers = covers;
    m.reflects = reflects;
    m.segs = segs;
    m.shards = shards;
    Ok(m)
}

/// Does the checkpoint match the log? `opened`: every segment file with its
/// header's watermark. `Err` is the reason to ignore it.
pub fn validate<M: Mapping, F: Vfs>(
    c: &Mapped<M>,
    store_id: u32,
    opened: &[(Arc<Segment<F>>, Option<u64>)],
    now: u64,
) -> std::result::Result<(), &'static str> {
    if c.store_id != store_id {
        return Err("checkpoint from another store");
    }
    let (lseg, loff) = c.covers();
    let find = |id: u32| opened.iter().find(|(s, _)| s.id == id);
    let Some((seg, _)) = find(lseg) else {
        return Err("the segment the checkpoint ends in is gone");
    };
    let Some(last) = c.segs.last() else {
        return Err("checkpoint segment table malformed");
    };
    if last.len != loff || fingerprint(seg, loff) != Some(last.fp) {
        return Err("the log differs from the checkpoint before its end");
    }
    for row in &c.segs[..c.segs.len() - 1] {
        match find(row.id) {
            Some((seg, wm)) => {
                if *wm != Some(row.len) || fingerprint(seg, row.len) != Some(row.fp) {
                    return Err("a segment changed since the checkpoint");
                }
            }
            // Deleted whole by GC once nothing in it mattered: replaying it
            // would change nothing. Gone while it still mattered (compacted,
            // lost): the checkpoint no longer matches.
            None if row.max_horizon <= now => {}
            None => return Err("a segment the checkpoint covers is gone"),
        }
    }
    for (seg, _) in opened.iter().filter(|(s, _)| s.id < lseg) {
        if c.segs.binary_search_by_key(&seg.id, |r| r.id).is_err() {
            return Err("a segment is not in the checkpoint");
        }
    }
    Ok(())
}

fn decode(b: &[u8]) -> Entry {
    Entry {
        tag: le::u32_at(b, 0),
        seg: le::u32_at(b, 4),
        off: le::u32_at(b, 8),
        keep_s: le::u32_at(b, 12),
    }
}

/// Does entry `e` point where a record of the log the checkpoint covers
/// can start? At or after its segment's header, with room for a record's
/// header and a key byte: below the row's length in a segment before `L`
/// (one the table lists), before `M` from `L` on, and inside its segment
/// if that is open (`capacity`). Every entry replay builds does; one that
/// does not means the file is not what it claims to be.
fn in_range<M: Mapping>(c: &Mapped<M>, e: &Entry, capacity: &dyn Fn(u32) -> Option<usize>) -> bool {
    const MIN_RECORD: u64 = crate::record::RECORD_HEADER_LEN as u64 + 1;
    let off = u64::from(e.off);
    if off < HEADER_LEN as u64 {
        return false;
    }
    let (lseg, _) = c.covers();
    let below = if e.seg < lseg {
        match c.segs.binary_search_by_key(&e.seg, |r| r.id) {
            Ok(i) => off + MIN_RECORD <= c.segs[i].len,
            Err(_) => false,
        }
    } else {
        lsn(e.seg, 0) + off + MIN_RECORD <= c.reflects
    };
    below && capacity(e.seg).is_none_or(|cap| off + MIN_RECORD <= cap as u64)
}

/// Loads the entries into an empty index, two threads at a time, checking
/// each shard's checksum first and every entry's location (`in_range`;
/// `capacity`: the size of segment `id`, `None` if it is gone); drops
/// entries whose horizon has passed or whose segment is gone. Returns the
/// entries loaded, or the reason to ignore the checkpoint (the index is
/// then partly filled: the caller starts over with an empty one).
pub fn load<M: Mapping>(
    c: &Mapped<M>,
    index: &Index,
    now: u64,
    capacity: &(dyn Fn(u32) -> Option<usize> + Sync),
) -> std::result::Result<u64, &'static str> {
    let b = c.bytes();
    let work = |first: usize| -> std::result::Result<u64, &'static str> {
        let mut n = 0;
        for s in (first..SHARDS).step_by(2) {
            let (off, count, hash) = c.shards[s];
            let body = &b[off..off + count * at::ENTRY];
            if xxh(body) != hash {
                return Err("checkpoint entries checksum mismatch");
            }
            // Invariant: every entry loaded points inside the records the
            // checkpoint covers (or reflects), as every entry replay builds
            // does; otherwise the whole checkpoint is ignored.
            if !body
                .chunks_exact(at::ENTRY)
                .all(|e| in_range(c, &decode(e), capacity))
            {
                return Err("a checkpoint entry points outside the log it covers");
            }
            let keep = |e: &Entry| !e.past_horizon(now) && capacity(e.seg).is_some();
            let mut shard = index.lock(s);
            let before = shard.len();
            // Sized for all of them (few are dropped): one pass.
            shard.bulk_load(body.chunks_exact(at::ENTRY).map(decode).filter(keep), count);
            let kept = shard.len() - before;
            n += kept as u64;
        }
        Ok(n)
    };
    let (a, bb) = std::thread::scope(|sc| {
        let other = sc.spawn(|| work(1));
        let mine = work(0);
        (
            mine,
            other.join().unwrap_or(Err("checkpoint loader panicked")),
        )
    });
    Ok(a? + bb?)
}

/// Removes the checkpoint file (best effort: a leftover one is checked
/// like any other on the next open).
pub fn remove<F: Vfs>(fs: &F, dir: &Path) {
    let _ = fs.remove(&dir.join(FILE_NAME));
}

impl<F: Vfs> Inner<F> {
    /// Writes a checkpoint now, unless the log has not moved since the last
    /// one. The caller holds `gc_lock` (so no segment is deleted meanwhile).
    /// Returns whether one was written.
    pub(crate) fn checkpoint_locked(&self) -> Result<bool> {
        self.log.poison.check()?;
        let now = self.config.clock.now_ms();
        // L, and the counters of its segment for the records before it,
        // read with appends held off.
        let (lseg, loff, lrecords, lmax) = self
            .log
            .head_with(|a, off| (a.clone(), off, a.records(), a.max_horizon()));
        let covers = lsn(lseg.id, loff);
        if self.checkpoint_state().is_some_and(|w| w.covers == covers) {
            return Ok(false);
        }
        let mut rows = Vec::new();
        for s in self.table.all().iter().filter(|s| s.id < lseg.id) {
            let len = s.watermark();
            rows.push(SegRow {
                id: s.id,
                len,
                records: s.records(),
                max_horizon: s.max_horizon(),
                fp: fingerprint(s, len).unwrap_or(0),
            });
        }
        rows.push(SegRow {
            id: lseg.id,
            len: loff as u64,
            records: lrecords,
            max_horizon: lmax,
            fp: fingerprint(&lseg, loff as u64).unwrap_or(0),
        });
        let ids: Vec<u32> = rows.iter().map(|r| r.id).collect();
        let keep = |e: &Entry| {
            !e.past_horizon(now) && (e.seg >= lseg.id || ids.binary_search(&e.seg).is_ok())
        };
        // Room for the entries now, plus what may be added while shards are
        // copied; if more arrive, this attempt is dropped.
        let est = self.index.len();
        let cap = est + est / 8 + 4096;
        let rows_end = at::HEADER_LEN + rows.len() * at::SEG_ROW;
        let dir_end = rows_end + 8 + SHARDS * at::DIR_ROW;
        let body = dir_end + 8;
        let size = body + cap * at::ENTRY;
        let dir = &self.dir;
        let fs = &*self.log.fs;
        let tmp = dir.join(TMP_NAME);
        let _ = fs.remove(&tmp);
        let written = (|| -> Result<Option<u64>> {
            let file = fs.open(&tmp, true).map_err(io_err("create", &tmp))?;
            file.allocate(size as u64)
                .map_err(io_err("fallocate", &tmp))?;
            let map = file.map(false).map_err(io_err("mmap", &tmp))?;
            // SAFETY: the temp file was just created by this thread, which
            // holds `gc_lock` (the only writer of checkpoints) and the store
            // holds the directory lock: nobody else maps or writes it; the
            // slice does not outlive `map`.
            let b = unsafe { std::slice::from_raw_parts_mut(map.as_ptr(), map.map_len()) };
            let mut off = body;
            let mut total = 0u64;
            for s in 0..SHARDS {
                let start = off;
                let mut full = false;
                {
                    let shard = self.index.lock(s);
                    shard.for_each(|e| {
                        if !keep(e) {
                            return;
                        }
                        if off + at::ENTRY > b.len() {
                            full = true;
                            return;
                        }
                        let w = &mut b[off..off + at::ENTRY];
                        le::put_u32(w, 0, e.tag);
                        le::put_u32(w, 4, e.seg);
                        le::put_u32(w, 8, e.off);
                        le::put_u32(w, 12, e.keep_s);
                        off += at::ENTRY;
                    });
                }
                if full {
                    return Ok(None);
                }
                let count = (off - start) / at::ENTRY;
                let r = rows_end + 8 + s * at::DIR_ROW;
                le::put_u64(b, r, count as u64);
                le::put_u64(b, r + 8, xxh(&b[start..off]));
                total += count as u64;
            }
            let d = xxh(&b[rows_end + 8..dir_end]);
            le::put_u64(b, dir_end, d);
            for (i, row) in rows.iter().enumerate() {
                let r = at::HEADER_LEN + i * at::SEG_ROW;
                le::put_u32(b, r, row.id);
                le::put_u64(b, r + 8, row.len);
                le::put_u64(b, r + 16, row.records);
                le::put_u64(b, r + 24, row.max_horizon);
                le::put_u64(b, r + 32, row.fp);
            }
            let t = xxh(&b[at::HEADER_LEN..rows_end]);
            le::put_u64(b, rows_end, t);
            // Invariant: a checkpoint points only at durable records. Sync
            // the log up to the head now: past every record the copy above
            // can reflect.
            let (head, end) = self.log.head();
            let reflects = lsn(head.id, end);
            self.commit.wait_durable(&self.log, reflects)?;
            b[0..8].copy_from_slice(at::MAGIC);
            le::put_u32(b, at::VERSION, at::VERSION_NUMBER);
            le::put_u32(b, at::STORE_ID, self.store_id);
            le::put_u64(b, at::COVERS, covers);
            le::put_u64(b, at::REFLECTS, reflects);
            le::put_u64(b, at::ENTRIES, total);
            le::put_u32(b, at::SEGMENTS, u32::try_from(rows.len()).unwrap_or(0));
            le::put_u32(b, at::SHARDS, u32::try_from(SHARDS).unwrap_or(u32::MAX));
            le::put_u64(b, at::WRITTEN_AT, now);
            let h = crc32fast::hash(&b[0..at::HEADER_CRC]);
            le::put_u32(b, at::HEADER_CRC, h);
            let poison = &self.log.poison;
            poison.sync(|| map.sync_range(0, size).map_err(io_err("msync", &tmp)))?;
            drop(map);
            poison.sync(|| file.sync_all().map_err(io_err("fsync", &tmp)))?;
            Ok(Some(size as u64))
        })();
        let bytes = match written {
            Ok(Some(bytes)) => bytes,
            other => {
                let _ = fs.remove(&tmp);
                return other.map(|_| false);
            }
        };
        let path = dir.join(FILE_NAME);
        if let Err(e) = fs.rename(&tmp, &path) {
            // As for a segment roll: after a failed rename the directory's
            // state is unknown, so the store is poisoned until reopened
            // (one rule for every failed rename or sync).
            self.log.poison.set();
            let _ = fs.remove(&tmp);
            return Err(io_err("rename", &tmp)(e));
        }
        self.log
            .poison
            .sync(|| fs.sync_dir(dir).map_err(io_err("fsync dir", dir)))?;
        self.set_checkpoint_state(Some(Written { covers, bytes }));
        Ok(true)
    }

    /// Writes a checkpoint now (taking `gc_lock`), unless checkpoints are off.
    pub(crate) fn write_checkpoint(&self) -> Result<bool> {
        if self.config.checkpoints == crate::config::Checkpoints::Off {
            return Ok(false);
        }
        let _one_at_a_time = self.gc_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.checkpoint_locked()
    }

    /// For the background writer: is the log written since the last
    /// checkpoint at least one segment and half the checkpoint's size?
    pub(crate) fn checkpoint_due(&self) -> bool {
        let Some(last) = self.checkpoint_state() else {
            return true;
        };
        let (lseg, loff) = split(last.covers);
        let (active, end) = self.log.head();
        let tail: u64 = self
            .table
            .all()
            .iter()
            .filter(|s| s.id >= lseg)
            .map(|s| {
                let used = if s.id == active.id {
                    end as u64
                } else {
                    s.watermark()
                };
                let from = if s.id == lseg {
                    loff
                } else {
                    HEADER_LEN as u64
                };
                used.saturating_sub(from)
            })
            .sum();
        tail >= self.config.segment_size.max(last.bytes / 2)
    }
}

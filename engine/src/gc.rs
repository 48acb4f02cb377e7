//! TTL garbage collection: drop expired index entries, delete segments whose
//! records have all expired, and compact segments that are mostly dead.
//!
//! Every step holds at most one shard lock (plus the short log-append lock)
//! at a time, so check-and-insert goes on during GC.
//!
//! What may be dropped (the rule every step follows): a record may go only
//! if replaying what remains gives the same answer for its key at every
//! future time. Each index entry carries its key's *horizon*, the latest
//! expiry of its record and of every older record of the key that it
//! shadows (`index::Entry::keep_s`). So:
//! - a segment goes whole once the latest horizon of its records has passed
//!   (then nothing in it, nor anything older it shadows, can matter);
//! - compaction copies forward exactly the records the index points at whose
//!   horizon has not passed (removals included: a removal keeps its entry
//!   while the insert it removed could still be live in an older segment);
//!   any other record is superseded by a later one whose horizon covers it.
//!
//! Crash safety of compaction (a crash between any two steps loses nothing):
//! 1. the needed records of segment S are appended again at the log head,
//!    and the index is pointed at each copy under its shard lock;
//! 2. the whole log up to its head is synced (this also covers copies made
//!    by an earlier run that failed before its sync);
//! 3. S is removed from the segment table, unlinked, and the directory synced.
//!
//! A crash before 3 leaves S beside its copies: replay applies S first and the
//! copies later, so every key ends in the same state, and the next GC run
//! reclaims S again. Nothing is half-written outside the log, so there is no
//! orphan to clean up beyond the `*.tmp` files recovery already removes.
//!
//! GC never runs on a poisoned store (a sync failed): the copies it would rely
//! on might not be on disk, so it must not delete what they replace.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::config::Checkpoints;
use crate::error::{io_err, Error, Result};
use crate::index::{hash_key, shard_of, tag_of, Entry, SHARDS};
use crate::log::lsn;
use crate::record::{self, Decoded};
use crate::segment::{Segment, HEADER_LEN};
use crate::store::Inner;
use crate::vfs::Vfs;

#[derive(Debug, Default)]
pub struct GcCounters {
    pub runs: AtomicU64,
    pub bytes_reclaimed: AtomicU64,
    pub segments_deleted: AtomicU64,
    pub segments_compacted: AtomicU64,
    pub records_copied: AtomicU64,
    pub entries_dropped: AtomicU64,
    pub last_duration_us: AtomicU64,
    /// The last background run's error, if it failed.
    pub last_error: std::sync::Mutex<Option<String>>,
}

/// What one GC run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcReport {
    /// Expired (or dangling) entries dropped from the index.
    pub entries_dropped: u64,
    /// Segments deleted because every record in them had expired.
    pub segments_deleted: u64,
    /// Segments rewritten because too little of them was live.
    pub segments_compacted: u64,
    /// Live records copied forward by compaction.
    pub records_copied: u64,
    /// Segment bytes given back to the file system.
    pub bytes_reclaimed: u64,
}

impl<F: Vfs> Inner<F> {
    /// One GC run. `compact_below`: compact sealed segments whose live
    /// fraction is below this (1.0 compacts any segment with a dead record).
    pub(crate) fn gc(&self, compact_below: f64) -> Result<GcReport> {
        let _one_at_a_time = self.gc_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.log.poison.check()?;
        let started = Instant::now();
        let now = self.config.clock.now_ms();
        let mut report = GcReport::default();

        // 1. Drop expired and dangling entries, one shard at a time, and count
        //    what is live in each segment.
        let segs = self.table.all();
        let ids: Vec<u32> = segs.iter().map(|s| s.id).collect();
        let newest_seen = ids.last().copied().unwrap_or(0);
        let mut live = vec![0u64; ids.len()];
        for s in 0..SHARDS {
            let mut shard = self.index.lock(s);
            if shard.is_empty() {
                continue;
            }
            shard.retain(|e| {
                // Segment ids only grow, and only GC (holding `gc_lock`)
                // deletes segments: an id above the snapshot's newest is a
                // segment rolled since, not a deleted one.
                let pos = ids.binary_search(&e.seg);
                let keep = !e.past_horizon(now) && (pos.is_ok() || e.seg > newest_seen);
                match pos {
                    Ok(p) if keep => live[p] += 1,
                    _ if keep => {}
                    _ => report.entries_dropped += 1,
                }
                keep
            });
        }

        // 2. Whole segments whose every record expired: O(1) each. 3. Mostly
        //    dead segments: copy the live rest forward.
        let (active, _) = self.log.head();
        for (seg, live) in segs.iter().zip(live) {
            if seg.id >= active.id {
                continue;
            }
            if seg.max_horizon() <= now {
                report.bytes_reclaimed += seg.capacity() as u64;
                self.delete_segment(seg)?;
                report.segments_deleted += 1;
            } else if seg.records() > 0 && (live as f64) < compact_below * seg.records() as f64 {
                report.records_copied += self.compact_segment(seg, now, false)?;
                report.bytes_reclaimed += seg.capacity() as u64;
                report.segments_compacted += 1;
            }
        }

        let c = &self.gc_counters;
        c.runs.fetch_add(1, Ordering::Relaxed);
        c.entries_dropped
            .fetch_add(report.entries_dropped, Ordering::Relaxed);
        c.segments_deleted
            .fetch_add(report.segments_deleted, Ordering::Relaxed);
        c.segments_compacted
            .fetch_add(report.segments_compacted, Ordering::Relaxed);
        c.records_copied
            .fetch_add(report.records_copied, Ordering::Relaxed);
        c.bytes_reclaimed
            .fetch_add(report.bytes_reclaimed, Ordering::Relaxed);
        c.last_duration_us.store(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        crate::counters::trace_event!(
            debug,
            entries_dropped = report.entries_dropped,
            segments_deleted = report.segments_deleted,
            segments_compacted = report.segments_compacted,
            records_copied = report.records_copied,
            bytes_reclaimed = report.bytes_reclaimed,
            "GC run"
        );
        // A compacted segment is gone while it still mattered: the last
        // checkpoint no longer matches the log (open would ignore it).
        // Write a new one, still holding `gc_lock`.
        if report.segments_compacted > 0 && self.config.checkpoints != Checkpoints::Off {
            self.checkpoint_locked()?;
        }
        Ok(report)
    }

    /// Copies the needed records of sealed segment `seg` to the log head,
    /// syncs the log, then deletes `seg`. Returns the records copied.
    /// `salvage`: skip damaged bytes instead of failing (a store opened with
    /// `RecoveryMode::Salvage` rewrites its damaged segments this way).
    pub(crate) fn compact_segment(
        &self,
        seg: &Arc<Segment<F>>,
        now: u64,
        salvage: bool,
    ) -> Result<u64> {
        let mut off = HEADER_LEN;
        let mut copied = 0;
        // Read to the end of the records, not just to the watermark: every
        // record the index may point at must be looked at.
        while off < seg.capacity() {
            let (rec, len) = match record::decode(seg.read(off, seg.capacity() - off)) {
                Decoded::Record(rec, len) => (rec, len),
                Decoded::End if !salvage => break,
                Decoded::End | Decoded::Invalid(_) if salvage => {
                    off += 1;
                    continue;
                }
                Decoded::End => break,
                // Sealed segments were checked on open or written by us.
                Decoded::Invalid(_) => {
                    return Err(Error::Corruption {
                        file: seg.path.clone(),
                        offset: off as u64,
                        reason: "bad record found while compacting",
                    })
                }
            };
            let h = hash_key(rec.key);
            let mut shard = self.index.lock(shard_of(h));
            let is_here = |e: &Entry| e.seg == seg.id && e.off as usize == off;
            // Only the record the index points at can be needed (any other
            // is superseded by a later record whose horizon covers it), and
            // only until its horizon. An entry pointing here is this key's
            // (found by location: no other record is read, so a damaged one
            // elsewhere cannot hide it).
            let needed = shard
                .find(tag_of(h), is_here)
                .filter(|e| !e.past_horizon(now));
            if let Some(cur) = needed {
                let raw = seg.read(off, len);
                let (new_seg, new_off, _) =
                    self.log
                        .lock()
                        .append_raw(&self.table, raw, cur.horizon_ms())?;
                // Switch the key over to its copy (found by location).
                shard.upsert(
                    Entry {
                        seg: new_seg,
                        off: new_off,
                        ..cur
                    },
                    is_here,
                );
                copied += 1;
            }
            drop(shard);
            off += len;
        }
        // Invariant: no segment is unlinked while a record it holds is
        // needed and its copy is not durable. Sync the whole log, not just
        // this run's copies: an earlier run may have switched the index to
        // copies whose sync failed, and then found nothing left to copy.
        let (head, end) = self.log.head();
        self.commit.wait_durable(&self.log, lsn(head.id, end))?;
        self.delete_segment(seg)?;
        Ok(copied)
    }

    /// Removes a sealed segment. Index entries still pointing into it are
    /// past their horizon; they answer as absent (their segment is gone)
    /// until the next sweep drops them. If the unlink fails, the segment
    /// goes back into the table, so it stays readable and the next run
    /// retries instead of leaking the file until restart.
    fn delete_segment(&self, seg: &Arc<Segment<F>>) -> Result<()> {
        self.log.poison.check()?;
        // Invariant: the active segment is never deleted (nor compacted):
        // appends would go on into an unlinked file.
        let (active, _) = self.log.head();
        if seg.id >= active.id {
            return Err(Error::InvalidConfig(format!(
                "GC asked to delete segment {} at or after the active one",
                seg.id
            )));
        }
        self.table.remove(seg.id);
        if let Err(e) = self.log.fs.remove(&seg.path) {
            self.table.insert(seg.clone());
            return Err(io_err("remove segment", &seg.path)(e));
        }
        self.log.poison.sync(|| {
            self.log
                .fs
                .sync_dir(&self.dir)
                .map_err(io_err("fsync dir", &self.dir))
        })
    }
}

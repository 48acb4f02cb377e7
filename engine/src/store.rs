//! The public `Store`: check-and-insert, contains, remove, sync, stats.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{self as channel, RecvTimeoutError, Sender};

use crate::checkpoint::Written;
use crate::clock::to_system_time;
use crate::commit::Commit;
use crate::config::{Checkpoints, Config, Durability};
use crate::error::{io_err, Error, Result};
use crate::gc::{GcCounters, GcReport};
use crate::index::{hash_key, keep_secs, shard_of, tag_of, Entry, Index, Shard, SHARDS};
use crate::limits::{check_key, check_ttl, expiry};
use crate::log::{entry_is_key, lsn, Appender, Damage, Log, Lsn, SegmentTable};
use crate::poison::Poison;
use crate::record::{self, Body, Kind};
use crate::recovery::{self, RecoveryStats};
use crate::segment::HEADER_LEN;
use crate::vfs::{OsFs, Vfs};
use crate::workers::Workers;

const LOCK_FILE: &str = "LOCK";

/// The answer of a check-and-insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a Duplicate means the message must not be processed again"]
pub enum Outcome {
    /// The ID was new; it is now recorded until its TTL ends. Process the message.
    Inserted,
    /// The ID was already recorded and has not expired. Skip the message.
    Duplicate {
        /// When the recorded ID expires (a duplicate does not extend it).
        expires_at: SystemTime,
    },
}

impl Outcome {
    /// True for `Inserted`: the message is new, process it.
    pub fn is_inserted(&self) -> bool {
        matches!(self, Outcome::Inserted)
    }
}

/// A snapshot of the store's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Keys present: their latest record is an unexpired insert, claim or
    /// complete (exactly what `contains` would answer now).
    pub live_keys: u64,
    /// Index entries of keys that answer absent: expired, or removed, and
    /// kept until GC drops them (a removal, or an expired record that
    /// shadows a longer-lived older one, is kept until its horizon).
    pub expired_keys: u64,
    /// Entries in the index: live + expired.
    pub indexed_keys: u64,
    /// Bytes of all segment files (preallocated size).
    pub disk_bytes: u64,
    /// Bytes of records in the segments.
    pub log_bytes: u64,
    /// Estimated bytes of records no longer needed (expired, superseded,
    /// removed), which GC can reclaim.
    pub dead_bytes: u64,
    /// Segment files.
    pub segments: u64,
    /// Heap bytes held by the index tables.
    pub index_bytes: u64,
    /// Torn or unsynced records cut from the log's tail on the last open.
    pub truncated_records: u64,
    /// Bytes cut from the log's tail on the last open.
    pub truncated_bytes: u64,
    /// Damaged bytes skipped on the last open under `RecoveryMode::Salvage`.
    pub salvaged_bytes: u64,
    /// Index entries the last open loaded from the checkpoint (0: it
    /// replayed the whole log).
    pub checkpoint_entries: u64,
    /// Why the last open ignored a checkpoint file it found (it then
    /// replayed the whole log and deleted the file), if it did.
    pub checkpoint_ignored: Option<&'static str>,
    /// Records the last open replayed from the log.
    pub replayed_records: u64,
    /// Syncs (msync) run by group commit since open.
    pub syncs: u64,
    /// GC runs since open (background and `gc_now`/`compact`).
    pub gc_runs: u64,
    /// Segment bytes deleted by GC since open.
    pub gc_bytes_reclaimed: u64,
    /// Segments GC deleted whole (every record past its horizon) since open.
    pub gc_segments_deleted: u64,
    /// Segments GC compacted (needed records copied forward) since open.
    pub gc_segments_compacted: u64,
    /// Records compaction copied forward since open.
    pub gc_records_copied: u64,
    /// How long the last GC run took.
    pub gc_last_duration: Duration,
}

pub(crate) struct Inner<F: Vfs> {
    pub(crate) dir: PathBuf,
    pub(crate) config: Config,
    pub(crate) index: Index,
    pub(crate) table: SegmentTable<F>,
    pub(crate) log: Log<F>,
    pub(crate) commit: Commit,
    recovered: RecoveryStats,
    pub(crate) gc_lock: Mutex<()>,
    pub(crate) gc_counters: GcCounters,
    /// Which opening of the store this is (claim tokens carry it).
    pub(crate) opening: crate::claim::Opening,
    pub(crate) counters: crate::counters::Counters,
    /// From `dedupstore.meta`: written into checkpoints, checked on load.
    pub(crate) store_id: u32,
    /// What the last checkpoint written or loaded covers.
    checkpoint: Mutex<Option<Written>>,
    /// Tells the background checkpoint writer to stop.
    checkpoint_stop: std::sync::atomic::AtomicBool,
    /// The directory's lock; `None` for a namespace, covered by its
    /// group's lock (saves a file descriptor per namespace).
    _lock: Option<F::Lock>,
}

/// Messages to the background GC thread. Dropping the sender stops it.
enum GcMsg {
    Wake,
    Pause,
    Resume,
}

/// An open dedup store. `Send + Sync`: share it across threads by reference
/// or in an `Arc`. Dropping it syncs and closes it; use [`Store::close`] to
/// see errors from that final sync.
pub struct Store<F: Vfs = OsFs> {
    inner: Arc<Inner<F>>,
    flusher: Option<(Sender<()>, JoinHandle<()>)>,
    gc: Option<(Sender<GcMsg>, JoinHandle<()>)>,
    checkpointer: Option<JoinHandle<()>>,
    /// A namespace's registration with its group's shared workers (then the
    /// three fields above are `None`).
    shared: Option<(Arc<Workers<F>>, u64)>,
}

/// How a store opens: alone (its own lock and threads), or as a namespace
/// of a group (the group's lock and shared workers).
pub(crate) enum Member<'a, F: Vfs> {
    Alone,
    Group(&'a Arc<Workers<F>>),
}

/// The marker file of a namespace group's root (see `namespaces`).
pub(crate) const GROUP_FILE: &str = "dedupstore.group";

impl Store<OsFs> {
    /// Opens (or creates) the store in `dir`, recovering from any crash.
    pub fn open(dir: impl AsRef<Path>, config: Config) -> Result<Self> {
        Self::open_with(OsFs, dir, config)
    }
}

impl<F: Vfs> Store<F> {
    /// Opens the store on a given file system (the simulated one in tests).
    ///
    /// Refuses (`Error::WrongLayout`) a namespace group's root and a
    /// namespace directory of a group (`<root>/ns/<name>`): open those
    /// through [`crate::Namespaces`].
    pub fn open_with(fs: F, dir: impl AsRef<Path>, config: Config) -> Result<Self> {
        Self::open_member(Arc::new(fs), dir.as_ref(), config, Member::Alone)
    }

    pub(crate) fn open_member(
        fs: Arc<F>,
        dir: &Path,
        config: Config,
        member: Member<'_, F>,
    ) -> Result<Self> {
        config.validate()?;
        let dir = dir.to_path_buf();
        let lock = match member {
            Member::Alone => {
                fs.create_dir_all(&dir)
                    .map_err(io_err("create dir", &dir))?;
                refuse_group_dirs(&*fs, &dir)?;
                let lock_path = dir.join(LOCK_FILE);
                let lock = fs
                    .try_lock(&lock_path)
                    .map_err(io_err("lock", &lock_path))?;
                if lock.is_none() {
                    // A group root is locked by its group: say what it is.
                    let names = fs.list(&dir).map_err(io_err("list", &dir))?;
                    return Err(match names.iter().any(|n| n == GROUP_FILE) {
                        true => group_root_error(dir),
                        false => Error::Locked { dir },
                    });
                }
                lock
            }
            Member::Group(_) => None,
        };
        let names = fs.list(&dir).map_err(io_err("list", &dir))?;
        if names.iter().any(|n| n == GROUP_FILE) {
            return Err(group_root_error(dir));
        }
        let store_id = crate::meta::open_or_create(&*fs, &dir, &names)?;

        let mut index = Index::default();
        let table = SegmentTable::default();
        let poison = Arc::new(Poison::default());
        let rec = recovery::recover(&*fs, &dir, &config, store_id, &table, &mut index, &poison)?;
        // Invariant: no answer from here on relies on data a power loss could
        // take away. What recovery found above the watermark may sit only in
        // the page cache (a process crash before its sync), possibly on pages
        // a failed writeback left clean but not on disk (fsyncgate): mark it
        // dirty again. The torn-tail cleanup wrote zeros past `end`, so that
        // stale records cannot reappear behind new appends. Then sync the
        // whole segment (only dirty pages are written) and set the watermark
        // to the end of the recovered records: exactly what is durable now.
        // To the end of the file, not of the records: if an earlier open in
        // this boot zeroed a torn tail and its sync failed, the page cache
        // shows zeros over stale records still on disk, which an append
        // lining up with them could bring back. Costs writing the unused
        // rest of the active segment once per open, even after a clean close
        // with a checkpoint at the log's end: an open whose sync failed since
        // may have zeroed a torn tail in the page cache only
        // (tests/tests/review_attacks.rs).
        let from = usize::try_from(rec.active_wm).map_or(rec.end, |w| w.min(rec.end));
        // SAFETY: the store is not shared yet; this thread has the segment.
        unsafe { rec.active.redirty(from, rec.active.capacity()) };
        rec.active.sync(0, rec.active.capacity())?;
        rec.active.reset_watermark(rec.end as u64)?;
        let commit = Commit::default();
        commit.mark_synced(lsn(rec.active.id, rec.end));
        // Every record in the log now was written by an earlier opening,
        // whose process is gone (this one holds the lock): its claims are
        // orphaned (see `claim::Opening`).
        let opening = crate::claim::Opening::new(lsn(rec.active.id, rec.end));
        let log = Log::new(
            fs,
            dir.clone(),
            config.segment_size,
            rec.active,
            rec.end,
            poison,
        );
        crate::counters::trace_event!(
            info,
            dir = %dir.display(),
            keys = index.len(),
            truncated_records = rec.stats.truncated_records,
            truncated_bytes = rec.stats.truncated_bytes,
            salvaged_bytes = rec.stats.salvaged_bytes,
            "opened and recovered"
        );
        let damaged = rec.damaged;
        let inner = Arc::new(Inner {
            dir,
            config,
            index,
            table,
            log,
            commit,
            recovered: rec.stats,
            gc_lock: Mutex::new(()),
            gc_counters: GcCounters::default(),
            opening,
            counters: Default::default(),
            store_id,
            checkpoint: Mutex::new(rec.checkpoint),
            checkpoint_stop: std::sync::atomic::AtomicBool::new(false),
            _lock: lock,
        });
        if !damaged.is_empty() {
            inner.rewrite_damaged(&damaged)?;
        }
        if let Member::Group(workers) = member {
            let id = workers.register(&inner);
            return Ok(Store {
                inner,
                flusher: None,
                gc: None,
                checkpointer: None,
                shared: Some((workers.clone(), id)),
            });
        }
        let checkpointer = match inner.config.checkpoints {
            Checkpoints::Background => Some(spawn_checkpointer(inner.clone())?),
            _ => None,
        };
        let flusher = match inner.config.durability {
            Durability::Interval(every) => Some(spawn_flusher(inner.clone(), every)?),
            _ => None,
        };
        let gc = match inner.config.gc_interval {
            Some(every) => Some(spawn_gc(inner.clone(), every)?),
            None => None,
        };
        Ok(Store {
            inner,
            flusher,
            gc,
            checkpointer,
            shared: None,
        })
    }

    /// Atomically: if `key` is recorded and unexpired, returns `Duplicate`;
    /// otherwise records it with this TTL and returns `Inserted`. Of any
    /// number of concurrent calls for one key, exactly one gets `Inserted`.
    ///
    /// Under `Durability::Immediate` it returns only once the record (for
    /// `Inserted`) or the earlier insert it reports (for `Duplicate`) is on
    /// stable storage. A `Duplicate` does not extend the stored TTL.
    pub fn check_and_insert(&self, key: impl AsRef<[u8]>, ttl: Duration) -> Result<Outcome> {
        let key = key.as_ref();
        check_key(key)?;
        check_ttl(ttl)?;
        let inner = &*self.inner;
        let now = inner.config.clock.now_ms();
        let expires_at = expiry(now, ttl);
        let h = hash_key(key);
        let (outcome, need) = {
            let mut shard = inner.index.lock(shard_of(h));
            inner.check_and_insert_locked(&mut shard, None, key, h, now, expires_at)?
        };
        inner.wait_for(need)?;
        inner.count_outcomes(std::slice::from_ref(&outcome));
        Ok(outcome)
    }

    /// `check_and_insert` with `Config::default_ttl`.
    pub fn check_and_insert_default_ttl(&self, key: impl AsRef<[u8]>) -> Result<Outcome> {
        self.check_and_insert(key, self.inner.config.default_ttl)
    }

    /// One outcome per key, in order. A key repeated inside the batch is
    /// `Duplicate` after its first occurrence. The batch takes each involved
    /// index shard and the log lock once, and shares one sync. If any key is
    /// invalid, or the batch cannot be written (full disk), nothing is
    /// inserted. A batch's records must fit in half a segment
    /// (`Error::BatchTooLarge`): about 250,000 16-byte keys by default.
    pub fn check_and_insert_batch<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        ttl: Duration,
    ) -> Result<Vec<Outcome>> {
        check_ttl(ttl)?;
        for k in keys {
            check_key(k.as_ref())?;
        }
        let inner = &*self.inner;
        // Invariant: a batch inserts all its new keys or none. Its records are
        // made to fit in one segment up front, so no roll (and no full disk)
        // can stop it halfway: a caller told "error" must not find some of
        // its keys reported as duplicates on retry.
        let bytes: usize = keys
            .iter()
            .map(|k| record::encoded_len(k.as_ref().len()))
            .sum();
        let outcomes = inner.batch(
            keys,
            |k| k.as_ref(),
            bytes,
            |log, shard, k, h, now| {
                inner.check_and_insert_locked(
                    shard,
                    Some(log),
                    k.as_ref(),
                    h,
                    now,
                    expiry(now, ttl),
                )
            },
        )?;
        inner.count_outcomes(&outcomes);
        Ok(outcomes)
    }

    /// True if `key` is recorded and unexpired. Under `Immediate`, only
    /// durable inserts count.
    pub fn contains(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        let key = key.as_ref();
        check_key(key)?;
        let inner = &*self.inner;
        let h = hash_key(key);
        let (present, need) = {
            let shard = inner.index.lock(shard_of(h));
            // The segment table is read-locked only if a tag matches: a
            // miss touches neither it nor the log.
            let mut segs = inner.table.lazy();
            let damage = Damage::default();
            let found = shard.find(tag_of(h), |e| segs.get().entry_is_key(e, key, &damage));
            damage.check()?;
            let Some(e) = found else {
                return Ok(false);
            };
            match segs.get().record(&e) {
                // A removal or an expired record answers absent; the record
                // that says so must be durable too (`need`). The clock is
                // read only for a hit: a miss needs no time.
                Some(rec) => answer_of(&e, rec, inner.config.clock.now_ms()),
                None => (None, 0),
            }
        };
        inner.wait_for(need)?;
        Ok(present.is_some())
    }

    /// `contains` for many keys: one answer per key, in order, each what
    /// `contains` would have answered at some moment during the call. If
    /// any key is invalid, nothing is answered (`Error::InvalidKey`). Under
    /// `Immediate`, only durable inserts count, as for `contains`; the call
    /// waits once for the latest record it answered from.
    ///
    /// Faster than a loop over `contains`: all keys are hashed first, then
    /// probed in shard order (each shard locked once), and the log records
    /// of the matches are fetched together, so their memory latencies
    /// overlap instead of adding up.
    pub fn contains_batch<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<bool>> {
        for k in keys {
            check_key(k.as_ref())?;
        }
        let inner = &*self.inner;
        let hashes: Vec<u64> = keys.iter().map(|k| hash_key(k.as_ref())).collect();
        let order = shard_order(&hashes);
        // Pass 1, under each shard's lock: each key's candidate entry (tag
        // match, not yet confirmed against the key).
        let mut cands = vec![Candidate::None; keys.len()];
        let mut at = 0;
        while let Some(&(shard, _)) = order.get(at) {
            let guard = inner.index.lock(shard);
            for &(_, i) in order[at..].iter().take_while(|&&(s, _)| s == shard) {
                let mut found = guard.candidates(tag_of(hashes[i]));
                cands[i] = match (found.next(), found.next()) {
                    (None, _) => Candidate::None,
                    (Some(e), None) => Candidate::One(*e),
                    // Two keys of the shard share the tag (1 in 4 billion).
                    (Some(_), Some(_)) => Candidate::Ask,
                };
                at += 1;
            }
        }
        // Pass 2, through one read of the segment table: confirm each
        // candidate against its key in the log, after fetching all of them.
        //
        // Sound without the shard locks: a record never changes once the
        // index points at it, so an entry seen in pass 1 answers what
        // `contains` would have answered then; and a segment stays mapped
        // while `segs` is held. If GC deleted a candidate's segment since,
        // the key is asked again (its entry may have moved).
        let now = inner.config.clock.now_ms();
        let mut answers = vec![false; keys.len()];
        let mut need = 0;
        {
            let segs = inner.table.read();
            for c in &cands {
                if let Candidate::One(e) = c {
                    segs.prefetch(e);
                }
            }
            for (i, c) in cands.iter_mut().enumerate() {
                let Candidate::One(e) = *c else { continue };
                // Not probed: the record's checksum is checked here.
                match segs.checked_record(&e)? {
                    Some(rec) if crate::log::key_of(rec) == keys[i].as_ref() => {
                        let (live, n) = answer_of(&e, rec, now);
                        answers[i] = live.is_some();
                        need = need.max(n);
                    }
                    // Another key with the same tag: this one is absent.
                    Some(_) => {}
                    None => *c = Candidate::Ask,
                }
            }
        }
        for (i, c) in cands.iter().enumerate() {
            if matches!(c, Candidate::Ask) {
                answers[i] = self.contains(keys[i].as_ref())?;
            }
        }
        inner.wait_for(need)?;
        Ok(answers)
    }

    /// Forgets `key`, so its next delivery is processed again (for when
    /// processing failed after the insert). Returns whether it was present.
    /// Under `Immediate` the removal is durable when this returns.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        let key = key.as_ref();
        check_key(key)?;
        let inner = &*self.inner;
        let now = inner.config.clock.now_ms();
        let h = hash_key(key);
        let need = {
            let mut shard = inner.index.lock(shard_of(h));
            let damage = Damage::default();
            let is_key = |e: &Entry| entry_is_key(&inner.table, e, key, &damage);
            let found = shard.find(tag_of(h), is_key);
            damage.check()?;
            let Some(e) = found else {
                return Ok(false);
            };
            let (live, need) = inner.answer_at(&e, now)?;
            let Some(live) = live else {
                // Absent: the answer relies on the entry's record.
                drop(shard);
                inner.wait_for(need)?;
                return Ok(false);
            };
            let (_, end) =
                inner.write_record(None, &mut shard, key, h, live.expires_at, |_| Body::Remove)?;
            end
        };
        inner.wait_for(need)?;
        Ok(true)
    }

    /// Makes everything acknowledged before this call durable, in every mode.
    pub fn sync(&self) -> Result<()> {
        self.inner.sync()
    }

    /// A snapshot of the counters. Walks the whole index (one shard lock at
    /// a time) and reads each entry's record to tell live from absent keys:
    /// tens of milliseconds per million keys.
    pub fn stats(&self) -> Stats {
        let inner = &*self.inner;
        let now = inner.config.clock.now_ms();
        let segs = inner.table.all();
        let (active, end) = inner.log.head();
        let (live, live_keys, expired) = inner.count_entries(now);
        let mut log_bytes = 0;
        let mut dead_bytes = 0.0;
        for s in &segs {
            let used = if s.id == active.id {
                end as u64
            } else {
                s.watermark()
            }
            .saturating_sub(HEADER_LEN as u64);
            log_bytes += used;
            if s.records() > 0 {
                let live_fraction =
                    (*live.get(&s.id).unwrap_or(&0) as f64 / s.records() as f64).min(1.0);
                dead_bytes += used as f64 * (1.0 - live_fraction);
            }
        }
        let gc = &inner.gc_counters;
        Stats {
            live_keys,
            expired_keys: expired,
            indexed_keys: inner.index.len() as u64,
            disk_bytes: segs.iter().map(|s| s.capacity() as u64).sum(),
            log_bytes,
            // An estimate; float-to-int `as` saturates.
            #[expect(clippy::cast_possible_truncation, reason = "an estimate, saturating")]
            dead_bytes: dead_bytes as u64,
            segments: segs.len() as u64,
            index_bytes: inner.index.heap_bytes() as u64,
            truncated_records: inner.recovered.truncated_records,
            truncated_bytes: inner.recovered.truncated_bytes,
            salvaged_bytes: inner.recovered.salvaged_bytes,
            checkpoint_entries: inner.recovered.checkpoint_entries,
            checkpoint_ignored: inner.recovered.checkpoint_ignored,
            replayed_records: inner.recovered.replayed_records,
            syncs: inner.commit.syncs.load(Ordering::Relaxed),
            gc_runs: gc.runs.load(Ordering::Relaxed),
            gc_bytes_reclaimed: gc.bytes_reclaimed.load(Ordering::Relaxed),
            gc_segments_deleted: gc.segments_deleted.load(Ordering::Relaxed),
            gc_segments_compacted: gc.segments_compacted.load(Ordering::Relaxed),
            gc_records_copied: gc.records_copied.load(Ordering::Relaxed),
            gc_last_duration: Duration::from_micros(gc.last_duration_us.load(Ordering::Relaxed)),
        }
    }

    /// The error of the last background GC run, if it failed.
    pub fn gc_last_error(&self) -> Option<String> {
        self.inner
            .gc_counters
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs garbage collection now, on this thread: drops expired index
    /// entries, deletes segments whose records all expired, and compacts
    /// segments below `Config::compact_below`. Waits for a background run in
    /// progress to finish first.
    pub fn gc_now(&self) -> Result<GcReport> {
        self.inner.gc(self.inner.config.compact_below)
    }

    /// Like `gc_now`, but compacts every sealed segment that has any dead
    /// record, to reclaim the most space.
    pub fn compact(&self) -> Result<GcReport> {
        self.inner.gc(1.0)
    }

    /// Writes an index checkpoint now (see [`Checkpoints`]), so that the
    /// next open loads the index instead of replaying the log. Returns
    /// `false` if there was nothing new to write, or checkpoints are `Off`. Syncs the log first. Waits
    /// for a GC run in progress.
    pub fn checkpoint(&self) -> Result<bool> {
        self.inner.write_checkpoint()
    }

    /// Pauses the background GC (e.g. during a latency-critical burst).
    pub fn pause_gc(&self) {
        if let Some((tx, _)) = &self.gc {
            let _ = tx.send(GcMsg::Pause);
        }
        if let Some((w, id)) = &self.shared {
            w.set_gc_paused(*id, true);
        }
    }

    /// Resumes the background GC after [`Store::pause_gc`].
    pub fn resume_gc(&self) {
        if let Some((tx, _)) = &self.gc {
            let _ = tx.send(GcMsg::Resume);
        }
        if let Some((w, id)) = &self.shared {
            w.set_gc_paused(*id, false);
        }
    }

    /// Asks the background GC to run now, without waiting for it.
    pub fn wake_gc(&self) {
        if let Some((tx, _)) = &self.gc {
            let _ = tx.send(GcMsg::Wake);
        }
        if let Some((w, id)) = &self.shared {
            if self.inner.config.gc_interval.is_some() {
                w.wake_gc(*id);
            }
        }
    }

    pub(crate) fn inner(&self) -> &Inner<F> {
        &self.inner
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Syncs and closes, reporting any error of that final sync.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if let Some((w, id)) = self.shared.take() {
            // No shared job runs on this store once this returns.
            w.unregister(id);
        }
        if let Some((tx, handle)) = self.gc.take() {
            drop(tx);
            let _ = handle.join();
        }
        if let Some(handle) = self.checkpointer.take() {
            self.inner.checkpoint_stop.store(true, Ordering::SeqCst);
            if let Some(wake) = self.inner.log.on_seal.get() {
                wake();
            }
            let _ = handle.join();
        }
        if let Some((tx, handle)) = self.flusher.take() {
            drop(tx);
            let _ = handle.join();
        }
        self.inner.log.poison.check()?;
        self.inner.sync()?;
        let (seg, end) = self.inner.log.head();
        seg.persist_watermark(end as u64)?;
        if self.inner.config.checkpoints != Checkpoints::Off {
            self.inner.write_checkpoint()?;
        }
        Ok(())
    }
}

impl<F: Vfs> std::fmt::Debug for Store<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (active, end) = self.inner.log.head();
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .field("config", &self.inner.config)
            .field("active_segment", &active.id)
            .field("log_end", &end)
            .field("poisoned", &self.inner.log.poison.check().is_err())
            .finish_non_exhaustive()
    }
}

impl<F: Vfs> Drop for Store<F> {
    fn drop(&mut self) {
        // Errors cannot be returned from drop; `close` reports them.
        let _ = self.shutdown();
    }
}

fn group_root_error(dir: PathBuf) -> Error {
    Error::WrongLayout {
        dir,
        reason: "this is a namespace group's root: open it with Namespaces::open",
    }
}

/// Refuses to open a namespace directory of a group (`<root>/ns/<name>`,
/// beside `<root>/dedupstore.group`) as a store of its own: the group's
/// lock covers it, not a lock of its own, so two openers could write it.
pub(crate) fn refuse_group_dirs<F: Vfs>(fs: &F, dir: &Path) -> Result<()> {
    let parent = dir.parent();
    if parent.and_then(Path::file_name) != Some(std::ffi::OsStr::new(crate::namespaces::NS_DIR)) {
        return Ok(());
    }
    let Some(root) = parent.and_then(Path::parent) else {
        return Ok(());
    };
    let names = match fs.list(root) {
        Ok(n) => n,
        Err(_) => return Ok(()),
    };
    if names.iter().any(|n| n == GROUP_FILE) {
        return Err(Error::WrongLayout {
            dir: dir.to_path_buf(),
            reason: "this is a namespace of a group: open it through Namespaces::open on the group's root",
        });
    }
    Ok(())
}

/// The horizon of a key's next record: its own expiry, or the horizon of
/// what the key's previous entry still shadowed, whichever is later.
fn horizon_after(previous: u64, expires_at: u64) -> u64 {
    previous.max(expires_at)
}

/// A key's entry as a batched lookup first finds it, by tag alone.
#[derive(Debug, Clone, Copy)]
enum Candidate {
    /// No entry has the key's tag: the key is absent.
    None,
    /// One entry has it: the key's, if the key in its record matches.
    One(Entry),
    /// Answered by `contains` instead: two entries share the tag, or the
    /// candidate's segment was deleted meanwhile.
    Ask,
}

/// `(shard, position)` of each hash, sorted by shard and, within a shard,
/// by position in the batch.
pub(crate) fn shard_order(hashes: &[u64]) -> Vec<(usize, usize)> {
    if hashes.len() < 64 {
        let mut order: Vec<(usize, usize)> = hashes
            .iter()
            .enumerate()
            .map(|(i, &h)| (shard_of(h), i))
            .collect();
        // The pairs are distinct, so an unstable sort keeps batch order
        // within a shard.
        order.sort_unstable();
        return order;
    }
    // Larger batches: a counting sort by shard (two passes, no compares);
    // positions are visited in ascending order, so it is stable.
    let mut start = [0usize; SHARDS + 1];
    for &h in hashes {
        start[shard_of(h) + 1] += 1;
    }
    for s in 0..SHARDS {
        start[s + 1] += start[s];
    }
    let mut order = vec![(0, 0); hashes.len()];
    for (i, &h) in hashes.iter().enumerate() {
        let s = shard_of(h);
        order[start[s]] = (s, i);
        start[s] += 1;
    }
    order
}

/// Records up to this long (keys up to 112 bytes) are encoded on the stack
/// before the log lock is taken; longer ones are encoded in place under it.
const STACK_RECORD: usize = 128;

/// What record `rec` (the one entry `e` points at) says at `now`: `Some`
/// if it makes the key present; and its end LSN, what must be durable
/// before either answer is given.
fn answer_of(e: &Entry, rec: &[u8], now: u64) -> (Option<Live>, Lsn) {
    let end = lsn(e.seg, e.off as usize + rec.len());
    let expires_at = record::expires_at_of(rec);
    let present = record::kind_byte_of(rec) != record::KIND_REMOVE && expires_at > now;
    (present.then_some(Live { expires_at, end }), end)
}

/// An unexpired record found in the index.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Live {
    pub(crate) expires_at: u64,
    /// End LSN of the record: what must be durable before answering from it.
    pub(crate) end: Lsn,
}

impl<F: Vfs> Inner<F> {
    pub(crate) fn checkpoint_state(&self) -> Option<Written> {
        *self.checkpoint.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_checkpoint_state(&self, w: Option<Written>) {
        *self.checkpoint.lock().unwrap_or_else(|p| p.into_inner()) = w;
    }

    /// Counts the index: per segment, entries still needed (horizon not
    /// passed); keys present now; and entries of keys that answer absent.
    fn count_entries(&self, now: u64) -> (std::collections::HashMap<u32, u64>, u64, u64) {
        let mut needed = std::collections::HashMap::new();
        let (mut present, mut absent) = (0, 0);
        for s in 0..crate::index::SHARDS {
            let shard = self.index.lock(s);
            shard.for_each(|e| {
                if !e.past_horizon(now) {
                    *needed.entry(e.seg).or_insert(0u64) += 1;
                }
                if self.live_at(e, now).is_some() {
                    present += 1;
                } else {
                    absent += 1;
                }
            });
        }
        (needed, present, absent)
    }

    /// What the record an entry points at says at `now` (`Some` if it
    /// makes the key present), and the end LSN of that record: what must be
    /// durable before either answer is given.
    /// `Error::Corruption` if that record is damaged.
    fn answer_at(&self, e: &Entry, now: u64) -> Result<(Option<Live>, Lsn)> {
        let segs = self.table.read();
        Ok(match segs.checked_record(e)? {
            Some(rec) => answer_of(e, rec, now),
            // Its segment is gone: deleted by GC once nothing in it mattered.
            None => (None, 0),
        })
    }

    /// What the record an entry points at says at `now`, if it makes its
    /// key present (a damaged record counts as absent: only `stats` uses
    /// this, and it must not fail).
    fn live_at(&self, e: &Entry, now: u64) -> Option<Live> {
        self.answer_at(e, now).ok().and_then(|(live, _)| live)
    }

    /// The body of check-and-insert, with the key's shard locked. Returns the
    /// outcome and the LSN that must be durable before it may be reported.
    fn check_and_insert_locked(
        &self,
        shard: &mut Shard,
        appender: Option<&mut Appender<'_, F>>,
        key: &[u8],
        h: u64,
        now: u64,
        expires_at: u64,
    ) -> Result<(Outcome, Lsn)> {
        let tag = tag_of(h);
        // One probe of the table: the slot found is either the key's entry
        // or where it goes. The segment table is read-locked at most once,
        // on a tag match, for the key check and the answer, and released
        // before the append (a roll takes it for writing under the log lock).
        let mut segs = self.table.lazy();
        let damage = Damage::default();
        let slot = shard.entry(tag, |e| segs.get().entry_is_key(e, key, &damage));
        damage.check()?;
        let mut shadowed = 0;
        if let hashbrown::hash_table::Entry::Occupied(o) = &slot {
            let e = *o.get();
            let live = segs
                .get()
                .record(&e)
                .and_then(|rec| answer_of(&e, rec, now).0);
            if let Some(live) = live {
                return Ok((
                    Outcome::Duplicate {
                        expires_at: to_system_time(live.expires_at),
                    },
                    live.end,
                ));
            }
            shadowed = e.horizon_ms();
        }
        drop(segs);
        let horizon = horizon_after(shadowed, expires_at);
        // The record is encoded (checksum included) before the log lock is
        // taken, so the lock is held only to copy it in: other shards'
        // inserts wait less for the log.
        let len = record::encoded_len(key.len());
        let mut buf = [0u8; STACK_RECORD];
        let (seg, off, end) = if let Some(rec) = buf.get_mut(..len) {
            record::encode_body(rec, &Body::Insert, expires_at, key);
            match appender {
                Some(a) => a.append_raw(&self.table, rec, horizon)?,
                None => self.log.lock().append_raw(&self.table, rec, horizon)?,
            }
        } else {
            match appender {
                Some(a) => a.append(&self.table, Kind::Insert, expires_at, key, horizon)?,
                None => {
                    self.log
                        .lock()
                        .append(&self.table, Kind::Insert, expires_at, key, horizon)?
                }
            }
        };
        // Invariant: the record is in the log before the index points at it,
        // and both happen under the shard lock, so a racing call for the same
        // key sees either nothing (and waits on the lock) or this insert.
        let entry = Entry {
            tag,
            seg,
            off,
            keep_s: keep_secs(horizon),
        };
        match slot {
            hashbrown::hash_table::Entry::Occupied(mut o) => *o.get_mut() = entry,
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(entry);
            }
        }
        Ok((Outcome::Inserted, end))
    }

    /// Appends the key's next record and points its entry at it; returns
    /// the LSNs where the record starts (unique: a claim's token) and ends.
    /// `body` gets the start LSN. Used by every write but check-and-insert,
    /// which probes its slot once and applies the same horizon rule.
    ///
    /// Invariant (horizons): the new record's horizon is its expiry or the
    /// key's previous horizon, whichever is later, so it keeps shadowing
    /// whatever the previous record shadowed. For a removal the horizon is
    /// also the record's expiry field: replay recomputes it from there.
    /// `log`: the batch's locked log, or `None` to lock it for this record.
    pub(crate) fn write_record<'a, 'b>(
        &'a self,
        log: Option<&mut Appender<'a, F>>,
        shard: &mut Shard,
        key: &[u8],
        h: u64,
        expires_at: u64,
        body: impl Fn(Lsn) -> Body<'b>,
    ) -> Result<(Lsn, Lsn)> {
        let mut own;
        let log = match log {
            Some(log) => log,
            None => {
                own = self.log.lock();
                &mut own
            }
        };
        let damage = Damage::default();
        let is_key = |e: &Entry| entry_is_key(&self.table, e, key, &damage);
        let prev = shard.find(tag_of(h), is_key);
        damage.check()?;
        let horizon = horizon_after(prev.map_or(0, |e| e.horizon_ms()), expires_at);
        let start = log.next_lsn(&self.table, record::body_len(key.len(), &body(0)))?;
        let body = body(start);
        let field = if body == Body::Remove {
            horizon
        } else {
            expires_at
        };
        let (seg, off, end) = log.append_body(&self.table, &body, field, key, horizon)?;
        debug_assert_eq!(lsn(seg, off as usize), start, "next_lsn reserved the spot");
        let entry = Entry {
            tag: tag_of(h),
            seg,
            off,
            keep_s: keep_secs(horizon),
        };
        shard.upsert(entry, is_key);
        Ok((start, end))
    }

    /// Rewrites segments in which a salvage open skipped damaged bytes
    /// (compacting their valid records forward, then deleting them), so the
    /// damage is gone and later strict opens succeed. The active segment is
    /// sealed first if it is one of them.
    fn rewrite_damaged(&self, damaged: &[u32]) -> Result<()> {
        let (active, _) = self.log.head();
        if damaged.contains(&active.id) {
            // Even if nothing of it survived: the active segment is never
            // compacted (GC refuses it), so it must be sealed first.
            self.log.lock().roll(&self.table)?;
        }
        let now = self.config.clock.now_ms();
        for &id in damaged {
            if let Some(seg) = self.table.all().into_iter().find(|s| s.id == id) {
                self.compact_segment(&seg, now, true)?;
            }
        }
        Ok(())
    }

    fn count_outcomes(&self, outcomes: &[Outcome]) {
        let new = outcomes.iter().filter(|o| o.is_inserted()).count() as u64;
        crate::counters::Counters::add(&self.counters.inserted, new);
        crate::counters::Counters::add(&self.counters.duplicate, outcomes.len() as u64 - new);
    }

    /// A batch's records must fit in half a segment, so that reserving
    /// room for all of them up front never fails halfway.
    pub(crate) fn check_batch_bytes(&self, bytes: usize) -> Result<()> {
        let max = self.max_batch_bytes();
        if bytes > max {
            return Err(Error::BatchTooLarge { bytes, max });
        }
        Ok(())
    }

    /// The most record bytes one batch may write: half a segment.
    pub(crate) fn max_batch_bytes(&self) -> usize {
        usize::try_from(self.config.segment_size)
            .unwrap_or(usize::MAX)
            .saturating_sub(HEADER_LEN)
            / 2
    }

    /// Under `Immediate`, waits until `need` is durable.
    pub(crate) fn wait_for(&self, need: Lsn) -> Result<()> {
        if self.config.durability == Durability::Immediate {
            self.commit.wait_durable(&self.log, need)
        } else {
            self.log.poison.check()
        }
    }

    pub(crate) fn sync(&self) -> Result<()> {
        let (seg, end) = self.log.head();
        self.commit.wait_durable(&self.log, lsn(seg.id, end))
    }
}

fn spawn_gc<F: Vfs>(
    inner: Arc<Inner<F>>,
    every: Duration,
) -> Result<(Sender<GcMsg>, JoinHandle<()>)> {
    let (tx, rx) = channel::unbounded::<GcMsg>();
    let handle = std::thread::Builder::new()
        .name("dedupstore-gc".into())
        .spawn(move || {
            let mut paused = false;
            loop {
                let run = match rx.recv_timeout(every) {
                    Ok(GcMsg::Wake) | Err(RecvTimeoutError::Timeout) => !paused,
                    Ok(GcMsg::Pause) => {
                        paused = true;
                        false
                    }
                    Ok(GcMsg::Resume) => {
                        paused = false;
                        false
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                };
                if run {
                    // Errors are not lost: a failed sync poisons the store and
                    // callers see it; other failures leave the files as they
                    // were and the next run retries. A panic (a bug) poisons
                    // the store too, rather than vanishing with the thread:
                    // GC may have been between a copy and its sync.
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        inner.gc(inner.config.compact_below)
                    }));
                    let err = match ran {
                        Ok(Ok(_)) => None,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(_) => {
                            inner.log.poison.set();
                            Some("GC thread panicked; the store is poisoned".to_string())
                        }
                    };
                    if let Some(e) = err {
                        *inner
                            .gc_counters
                            .last_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()) = Some(e);
                    }
                }
            }
        })
        .map_err(io_err("spawn gc", PathBuf::new()))?;
    Ok((tx, handle))
}

/// The background checkpoint writer: woken when a segment is sealed, it
/// writes a checkpoint if enough log was written since the last one.
fn spawn_checkpointer<F: Vfs>(inner: Arc<Inner<F>>) -> Result<JoinHandle<()>> {
    let (tx, rx) = channel::bounded::<()>(1);
    // Set once per store: `inner` is new.
    let _ = inner.log.on_seal.set(Box::new(move || {
        let _ = tx.try_send(());
    }));
    std::thread::Builder::new()
        .name("dedupstore-ckpt".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                if inner.checkpoint_stop.load(Ordering::SeqCst) {
                    return;
                }
                if inner.checkpoint_due() {
                    // A failure leaves the previous checkpoint (still valid
                    // or caught at open); a failed sync poisons the store,
                    // which callers see.
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        inner.write_checkpoint()
                    }));
                    if ran.is_err() {
                        inner.log.poison.set();
                        return;
                    }
                }
            }
        })
        .map_err(io_err("spawn checkpointer", PathBuf::new()))
}

fn spawn_flusher<F: Vfs>(
    inner: Arc<Inner<F>>,
    every: Duration,
) -> Result<(Sender<()>, JoinHandle<()>)> {
    let (tx, rx) = channel::bounded::<()>(0);
    let handle = std::thread::Builder::new()
        .name("dedupstore-flush".into())
        .spawn(move || loop {
            match rx.recv_timeout(every) {
                Err(RecvTimeoutError::Timeout) => {
                    // A failure poisons the store; callers see it on their
                    // next call. So does a panic (a bug): the thread must not
                    // vanish while callers believe their data gets synced.
                    let synced =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.sync()));
                    if synced.is_err() {
                        inner.log.poison.set();
                        return;
                    }
                }
                _ => return,
            }
        })
        .map_err(io_err("spawn flusher", PathBuf::new()))?;
    Ok((tx, handle))
}

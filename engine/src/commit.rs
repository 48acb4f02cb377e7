//! Group commit: many callers waiting for durability share one sync.
//!
//! A caller that needs LSN `x` durable either finds it already synced, or
//! becomes the leader (syncs everything appended so far, which covers the
//! records of every thread waiting behind it), or waits for the current
//! leader and checks again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use crate::error::Result;
use crate::log::{lsn, Log, Lsn};
use crate::vfs::Vfs;

#[derive(Default)]
pub struct Commit {
    /// Every record ending at or before this LSN is durable.
    synced: AtomicU64,
    leader: Mutex<bool>,
    done: Condvar,
    pub syncs: AtomicU64,
    /// Total and longest time spent in `sync_now` (for `Store::counters`).
    pub sync_nanos: AtomicU64,
    pub sync_max_nanos: AtomicU64,
}

impl Commit {
    pub fn synced(&self) -> Lsn {
        self.synced.load(Ordering::Acquire)
    }

    /// Returns once every record ending at or before `target` is durable.
    pub fn wait_durable<F: Vfs>(&self, log: &Log<F>, target: Lsn) -> Result<()> {
        if self.synced() >= target {
            return Ok(());
        }
        let mut leading = self.leader.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            // Invariant: nothing is reported durable after a failed sync,
            // even if a later sync seemed to succeed (fsyncgate).
            log.poison.check()?;
            if self.synced() >= target {
                return Ok(());
            }
            if *leading {
                leading = self.done.wait(leading).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            *leading = true;
            drop(leading);
            let result = self.sync_now(log);
            leading = self.leader.lock().unwrap_or_else(|p| p.into_inner());
            *leading = false;
            self.done.notify_all();
            result?;
        }
    }

    /// Syncs everything appended so far. Only one leader runs this at a time.
    fn sync_now<F: Vfs>(&self, log: &Log<F>) -> Result<()> {
        let (seg, end) = log.head();
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        // Older segments were fully synced when they were sealed (see
        // `Appender::roll`), so the active one is all that can be dirty.
        // The range starts at 0 so the header page, holding the previous
        // watermark, is written too. A failure poisons the store (the sync
        // runs through the poison gate).
        let result = seg.sync(0, end);
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.sync_nanos.fetch_add(took, Ordering::Relaxed);
        self.sync_max_nanos.fetch_max(took, Ordering::Relaxed);
        result?;
        seg.set_watermark(end as u64);
        self.synced.fetch_max(lsn(seg.id, end), Ordering::AcqRel);
        Ok(())
    }
}

impl Commit {
    /// Records that everything up to `l` is known durable (after open).
    pub fn mark_synced(&self, l: Lsn) {
        self.synced.fetch_max(l, Ordering::AcqRel);
    }
}

//! Group commit: many callers waiting for durability share one sync.
//!
//! A caller that needs LSN `x` durable either finds it already synced, or
//! becomes the leader (syncs everything appended so far, which covers the
//! records of every thread waiting behind it), or queues up behind the
//! running sync and sleeps.
//!
//! Wakeups are per waiter: when a sync ends, its leader wakes exactly the
//! waiters it made durable, and hands the lead to one waiter it did not
//! cover (a record appended while it ran), which starts the next sync at
//! once. So syncs run back to back while anyone waits, each covering
//! everything appended during the previous one, and no thread is woken
//! only to go back to sleep.
//!
//! Invariant (poison): after a failed sync every queued waiter is woken and
//! sees the poison flag before it may return, and every later caller checks
//! it first; so nothing is reported durable after a failure until reopen.
//! (A caller whose LSN was durable before the failure still gets `Ok`: that
//! data is on disk.)

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;

use crate::error::Result;
use crate::log::{lsn, Log, Lsn};
use crate::vfs::Vfs;

/// A waiter's wake state: still asleep.
const ASLEEP: u8 = 0;
/// Woken: check the synced LSN and the poison flag again.
const RECHECK: u8 = 1;
/// Woken to lead: run the next sync (the lead is already taken for it).
const LEAD: u8 = 2;

struct Waiter {
    /// The LSN this waiter needs durable.
    target: Lsn,
    thread: Thread,
    wake: AtomicU8,
}

impl Waiter {
    fn wake(&self, how: u8) {
        self.wake.store(how, Ordering::Release);
        self.thread.unpark();
    }
}

#[derive(Default)]
struct Queue {
    /// A sync is running, or has been handed to a woken waiter that will
    /// run it: a caller that finds this set queues up instead of syncing.
    leading: bool,
    waiters: Vec<Arc<Waiter>>,
}

#[derive(Default)]
pub struct Commit {
    /// Every record ending at or before this LSN is durable.
    synced: AtomicU64,
    queue: Mutex<Queue>,
    pub syncs: AtomicU64,
    /// Total and longest time spent in `sync_now` (for `Store::counters`).
    pub sync_nanos: AtomicU64,
    pub sync_max_nanos: AtomicU64,
}

/// The lead, held while a sync runs. Dropping it (also on a panic in the
/// sync, which then poisons the store) wakes the waiters and hands the lead
/// on, so no waiter sleeps forever behind a leader that is gone.
struct Lead<'a, F: Vfs> {
    commit: &'a Commit,
    log: &'a Log<F>,
}

impl<F: Vfs> Drop for Lead<'_, F> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.log.poison.set();
        }
        let mut q = self.commit.lock_queue();
        self.commit.hand_over(&mut q, self.log);
    }
}

impl Commit {
    pub fn synced(&self) -> Lsn {
        self.synced.load(Ordering::Acquire)
    }

    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        // The queue is changed only in whole steps under the lock.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns once every record ending at or before `target` is durable.
    pub fn wait_durable<F: Vfs>(&self, log: &Log<F>, target: Lsn) -> Result<()> {
        if self.synced() >= target {
            return Ok(());
        }
        let mut q = self.lock_queue();
        loop {
            // Invariant: nothing is reported durable after a failed sync,
            // even if a later sync seemed to succeed (fsyncgate).
            log.poison.check()?;
            if self.synced() >= target {
                return Ok(());
            }
            if q.leading {
                let me = Arc::new(Waiter {
                    target,
                    thread: std::thread::current(),
                    wake: AtomicU8::new(ASLEEP),
                });
                q.waiters.push(me.clone());
                drop(q);
                let how = loop {
                    match me.wake.load(Ordering::Acquire) {
                        // Spurious wakeups are possible: sleep again.
                        ASLEEP => std::thread::park(),
                        how => break how,
                    }
                };
                q = self.lock_queue();
                if how == RECHECK {
                    continue;
                }
                // LEAD: `leading` was kept set for this thread.
                debug_assert!(q.leading);
            } else {
                q.leading = true;
            }
            drop(q);
            let result = {
                let _lead = Lead { commit: self, log };
                self.sync_now(log)
            };
            result?;
            q = self.lock_queue();
        }
    }

    /// After a sync (the queue locked): wakes every waiter it made durable
    /// (all of them if the store is poisoned) and hands the lead to one
    /// waiter still not covered, or releases it if there is none.
    fn hand_over<F: Vfs>(&self, q: &mut Queue, log: &Log<F>) {
        let synced = self.synced();
        let failed = log.poison.check().is_err();
        let mut next = None;
        q.waiters.retain(|w| {
            if failed || w.target <= synced {
                w.wake(RECHECK);
                false
            } else if next.is_none() {
                next = Some(w.clone());
                false
            } else {
                true
            }
        });
        match next {
            Some(w) => w.wake(LEAD),
            None => q.leading = false,
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

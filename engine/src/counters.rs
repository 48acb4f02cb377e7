//! Counters cheap to read: relaxed atomics bumped by the calls themselves,
//! read without walking the index (unlike [`Store::stats`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::store::Store;
use crate::vfs::Vfs;

/// A `tracing` event (target `dedupstore`) with the `tracing` feature;
/// nothing without it.
macro_rules! trace_event {
    ($lvl:ident, $($t:tt)*) => {
        #[cfg(feature = "tracing")]
        tracing::$lvl!(target: "dedupstore", $($t)*);
    };
}
pub(crate) use trace_event;

/// The live counters of one opening.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) inserted: AtomicU64,
    pub(crate) duplicate: AtomicU64,
    pub(crate) claims_acquired: AtomicU64,
    pub(crate) claims_in_progress: AtomicU64,
    pub(crate) claims_completed: AtomicU64,
    pub(crate) claims_released: AtomicU64,
    pub(crate) takeovers: AtomicU64,
    pub(crate) stale_tokens: AtomicU64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Relaxed);
        }
    }
}

/// A snapshot of [`Store::counters`], since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CounterSnapshot {
    /// `check_and_insert` (single or batch) answers `Inserted`.
    pub inserted: u64,
    /// `check_and_insert` (single or batch) answers `Duplicate`.
    pub duplicate: u64,
    /// Claims acquired (single or batch; takeovers included).
    pub claims_acquired: u64,
    /// Claims answered `InProgress`.
    pub claims_in_progress: u64,
    /// Claims completed (`complete`, `complete_batch`, `run_once`).
    pub claims_completed: u64,
    /// Claims released.
    pub claims_released: u64,
    /// Claims that took over one orphaned by an earlier opening.
    pub takeovers: u64,
    /// `complete` / `release` / `extend` answers `StaleToken`.
    pub stale_tokens: u64,
    /// Syncs run by group commit.
    pub syncs: u64,
    /// Total time spent in those syncs.
    pub sync_time: Duration,
    /// The longest of them.
    pub sync_max: Duration,
}

impl<F: Vfs> Store<F> {
    /// The counters, read from atomics: cheap enough to poll per batch.
    pub fn counters(&self) -> CounterSnapshot {
        let i = self.inner();
        let c = &i.counters;
        CounterSnapshot {
            inserted: c.inserted.load(Relaxed),
            duplicate: c.duplicate.load(Relaxed),
            claims_acquired: c.claims_acquired.load(Relaxed),
            claims_in_progress: c.claims_in_progress.load(Relaxed),
            claims_completed: c.claims_completed.load(Relaxed),
            claims_released: c.claims_released.load(Relaxed),
            takeovers: c.takeovers.load(Relaxed),
            stale_tokens: c.stale_tokens.load(Relaxed),
            syncs: i.commit.syncs.load(Relaxed),
            sync_time: Duration::from_nanos(i.commit.sync_nanos.load(Relaxed)),
            sync_max: Duration::from_nanos(i.commit.sync_max_nanos.load(Relaxed)),
        }
    }
}

#[cfg(feature = "metrics")]
impl<F: Vfs> Store<F> {
    /// Publishes [`Store::counters`] through the `metrics` facade (feature
    /// `metrics`): counters `dedupstore_inserted`, `dedupstore_duplicate`,
    /// `dedupstore_claims_acquired`, `dedupstore_claims_in_progress`,
    /// `dedupstore_claims_completed`, `dedupstore_claims_released`,
    /// `dedupstore_takeovers`, `dedupstore_stale_tokens`,
    /// `dedupstore_syncs`, `dedupstore_sync_micros` (total), and the gauge
    /// `dedupstore_sync_max_micros`. Call it as often as you scrape.
    pub fn emit_metrics(&self) {
        let c = self.counters();
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        for (name, v) in [
            ("dedupstore_inserted", c.inserted),
            ("dedupstore_duplicate", c.duplicate),
            ("dedupstore_claims_acquired", c.claims_acquired),
            ("dedupstore_claims_in_progress", c.claims_in_progress),
            ("dedupstore_claims_completed", c.claims_completed),
            ("dedupstore_claims_released", c.claims_released),
            ("dedupstore_takeovers", c.takeovers),
            ("dedupstore_stale_tokens", c.stale_tokens),
            ("dedupstore_syncs", c.syncs),
            ("dedupstore_sync_micros", micros(c.sync_time)),
        ] {
            metrics::counter!(name).absolute(v);
        }
        #[expect(clippy::cast_precision_loss, reason = "a gauge, microseconds")]
        metrics::gauge!("dedupstore_sync_max_micros").set(micros(c.sync_max) as f64);
    }
}

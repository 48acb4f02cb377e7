//! The store's poison flag and the gate every sync passes through.
//!
//! After a failed fsync or msync, Linux may have marked the dirty pages clean
//! although they never reached the disk (fsyncgate): a later sync can then
//! succeed without the data. So the first failed sync poisons the store, and
//! from then on nothing is written, synced or reported durable until the
//! store is reopened (open re-dirties and re-syncs everything it relies on).
//!
//! Invariant: the poison check, the sync and the setting of the flag on
//! failure happen under one lock, so no sync can slip in between another
//! sync's failure and the flag, and report data durable that the failure
//! lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};

#[derive(Debug, Default)]
pub struct Poison {
    flag: AtomicBool,
    gate: Mutex<()>,
}

impl Poison {
    /// `Err(SyncFailed)` once any sync has failed.
    pub fn check(&self) -> Result<()> {
        if self.flag.load(Ordering::Acquire) {
            Err(Error::SyncFailed)
        } else {
            Ok(())
        }
    }

    /// Marks the store poisoned (a sync failed, or a worker that could have
    /// left durability in doubt panicked).
    pub fn set(&self) {
        crate::counters::trace_event!(
            error,
            "a sync failed: the store refuses writes until it is reopened"
        );
        self.flag.store(true, Ordering::Release);
    }

    /// Runs one sync through the gate: refused if poisoned, and poisons the
    /// store if it fails.
    pub fn sync<T>(&self, sync: impl FnOnce() -> Result<T>) -> Result<T> {
        let _gate = self.lock_gate();
        self.check()?;
        let r = sync();
        if r.is_err() {
            self.set();
        }
        r
    }

    fn lock_gate(&self) -> MutexGuard<'_, ()> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_sync_refuses_every_later_one() {
        let p = Poison::default();
        assert!(p.sync(|| Ok(())).is_ok());
        let failed: Result<()> = p.sync(|| Err(Error::InvalidConfig("io".into())));
        assert!(failed.is_err());
        assert!(p.check().is_err());
        let mut ran = false;
        let later = p.sync(|| {
            ran = true;
            Ok(())
        });
        assert!(matches!(later, Err(Error::SyncFailed)));
        assert!(!ran, "a sync after a failure is not even attempted");
    }
}

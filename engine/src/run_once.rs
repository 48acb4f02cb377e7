//! Run a side effect at most once per key and remember its result:
//! claim, run the caller's closure, complete with its response (release
//! the claim if the closure fails).

use std::time::{Duration, SystemTime};

use crate::claim::Claim;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::vfs::Vfs;

/// The answer of [`Store::run_once`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "`InProgress` and `Failed` mean the message must not be acked"]
pub enum RunOnce<E> {
    /// The closure ran now; its response is stored for duplicates.
    Ran(Vec<u8>),
    /// Done before (by a closure, `complete`, or `check_and_insert`): the
    /// stored response (`None` if none was stored). The closure did not run.
    Done(Option<Vec<u8>>),
    /// Another caller of this opening is running it until
    /// `lease_expires_at`. The closure did not run: do not ack, retry later.
    InProgress {
        /// When that caller's lease ends.
        lease_expires_at: SystemTime,
    },
    /// The closure failed with this error; the claim was released, so the
    /// next delivery runs it again.
    Failed(E),
    /// The closure ran, but its lease had ended before the response could
    /// be stored: another caller may have taken the key over and run it
    /// too. Choose a lease longer than the closure can take (or extend it
    /// from inside with [`Store::extend`]).
    RanLate(Vec<u8>),
}

impl<F: Vfs> Store<F> {
    /// Runs `effect` once for `key`: claims it (see [`Store::claim`] for
    /// `lease` and `fingerprint`), runs `effect`, and completes the claim
    /// with the returned response, kept until `ttl` from then. If `effect`
    /// fails, the claim is released and its error returned in
    /// [`RunOnce::Failed`]. Errors of the store itself (I/O, a fingerprint
    /// mismatch) are the outer `Err`; if releasing after a failed effect
    /// fails too, the claim stays until its lease ends (or the next opening
    /// takes it over) and the store's error is returned.
    pub fn run_once<E>(
        &self,
        key: impl AsRef<[u8]>,
        lease: Duration,
        fingerprint: Option<u64>,
        ttl: Duration,
        effect: impl FnOnce() -> std::result::Result<Vec<u8>, E>,
    ) -> Result<RunOnce<E>> {
        let token = match self.claim(key, lease, fingerprint)? {
            Claim::Acquired(t) => t,
            Claim::Completed { response, .. } => return Ok(RunOnce::Done(response)),
            Claim::InProgress { lease_expires_at } => {
                return Ok(RunOnce::InProgress { lease_expires_at })
            }
        };
        match effect() {
            Ok(response) => match self.complete(&token, Some(&response), ttl) {
                Ok(()) => Ok(RunOnce::Ran(response)),
                Err(Error::StaleToken { .. }) => Ok(RunOnce::RanLate(response)),
                Err(e) => Err(e),
            },
            Err(e) => match self.release(&token) {
                // Stale: someone took over already; nothing left to release.
                Ok(()) | Err(Error::StaleToken { .. }) => Ok(RunOnce::Failed(e)),
                Err(store) => Err(store),
            },
        }
    }
}

//! Run a side effect at most once per key and remember its result:
//! claim, run the caller's closure, complete with its response (release
//! the claim if the closure fails); also for a whole broker batch.

use std::collections::HashMap;

use std::time::{Duration, SystemTime};

use crate::claim::{Claim, ClaimToken};
use crate::error::{Error, Result};
use crate::limits::MAX_RESPONSE_LEN;
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
    /// too. Choose a lease longer than the closure can take (the closure
    /// gets no token, so for work of unknown length use [`Store::claim`],
    /// [`Store::extend`] and [`Store::complete`] directly).
    RanLate(Vec<u8>),
    /// The closure ran now and the key is recorded as done, but its
    /// response was longer than [`MAX_RESPONSE_LEN`](crate::MAX_RESPONSE_LEN)
    /// and is not stored: duplicates get `Done(None)`. (Failing instead
    /// would leave the key in progress with no trace that the effect ran,
    /// so it would run again once the lease ends.)
    RanNotStored(Vec<u8>),
}

/// The response to store for a closure's result: none if it is too long to
/// store (see [`RunOnce::RanNotStored`]).
fn storable(response: &[u8]) -> Option<&[u8]> {
    (response.len() <= MAX_RESPONSE_LEN).then_some(response)
}

/// The answer for a closure that ran and whose completion was written.
fn ran<E>(response: Vec<u8>) -> RunOnce<E> {
    if storable(&response).is_some() {
        RunOnce::Ran(response)
    } else {
        RunOnce::RanNotStored(response)
    }
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
    ///
    /// If `effect` panics, the panic propagates and the claim stays in
    /// progress until its lease ends (or the next opening takes it over):
    /// nobody in this opening runs the key again before that.
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
            Ok(response) => match self.complete(&token, storable(&response), ttl) {
                Ok(()) => Ok(ran(response)),
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

    /// [`run_once`](Store::run_once) for a whole broker batch:
    /// `(key, fingerprint)` pairs, one answer per item, in order, with one
    /// sync to claim the batch ([`claim_batch`](Store::claim_batch)), one
    /// to complete the items whose closure succeeded
    /// ([`complete_batch`](Store::complete_batch)) and one to release those
    /// whose closure failed ([`release_batch`](Store::release_batch)); a
    /// step with nothing to do is skipped.
    ///
    /// `effect(index, key)` runs once per acquired item, in batch order,
    /// between the claim and the completion. Duplicates answer
    /// [`RunOnce::Done`] with the stored response and keys claimed
    /// elsewhere [`RunOnce::InProgress`]; neither runs the closure. A key
    /// repeated in the batch runs once, for its first occurrence; a later
    /// occurrence answers `Done` with that response if the first one
    /// answers `Ran`, and otherwise the `InProgress` its claim answered
    /// (do not ack it: the first one failed or finished late). A
    /// fingerprint mismatch is that item's answer
    /// (`Err(Error::FingerprintMismatch)`, the closure does not run for it).
    ///
    /// The outer `Err` is an error of the store: invalid input (nothing is
    /// claimed, no closure runs), or a claim, completion or release that
    /// could not be written. If the completion fails after closures ran,
    /// their responses are not stored and their claims stay until the lease
    /// ends (or the next opening takes them over); the same holds for the
    /// failed items' claims if the release fails. The responses of one
    /// batch must fit in half a segment together (`Error::BatchTooLarge`
    /// otherwise, as for `complete_batch`).
    pub fn run_once_batch<K: AsRef<[u8]>, E>(
        &self,
        items: &[(K, Option<u64>)],
        lease: Duration,
        ttl: Duration,
        mut effect: impl FnMut(usize, &[u8]) -> std::result::Result<Vec<u8>, E>,
    ) -> Result<Vec<Result<RunOnce<E>>>> {
        let claims = self.claim_batch(items, lease)?;
        // Each item's state once its closure (if any) ran.
        enum Step<E> {
            Answer(Result<RunOnce<E>>),
            Ok(ClaimToken, Vec<u8>),
            Err(ClaimToken, E),
        }
        let mut first: HashMap<&[u8], usize> = HashMap::new();
        let mut repeats = Vec::new();
        let mut steps = Vec::with_capacity(items.len());
        for (i, ((key, _), claim)) in items.iter().zip(claims).enumerate() {
            let key = key.as_ref();
            steps.push(match claim {
                Ok(Claim::Acquired(token)) => {
                    first.insert(key, i);
                    match effect(i, key) {
                        Ok(response) => Step::Ok(token, response),
                        Err(e) => Step::Err(token, e),
                    }
                }
                Ok(Claim::Completed { response, .. }) => Step::Answer(Ok(RunOnce::Done(response))),
                Ok(Claim::InProgress { lease_expires_at }) => {
                    if let Some(&j) = first.get(key) {
                        repeats.push((i, j));
                    }
                    Step::Answer(Ok(RunOnce::InProgress { lease_expires_at }))
                }
                Err(e) => Step::Answer(Err(e)),
            });
        }
        let done: Vec<(&ClaimToken, Option<&[u8]>)> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Ok(t, r) => Some((t, storable(r))),
                _ => None,
            })
            .collect();
        let completed = if done.is_empty() {
            Vec::new()
        } else {
            self.complete_batch(&done, ttl)?
        };
        let failed: Vec<&ClaimToken> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Err(t, _) => Some(t),
                _ => None,
            })
            .collect();
        let released = if failed.is_empty() {
            Vec::new()
        } else {
            self.release_batch(&failed)?
        };
        let (mut completed, mut released) = (completed.into_iter(), released.into_iter());
        let mut out = Vec::with_capacity(steps.len());
        for s in steps {
            out.push(match s {
                Step::Answer(a) => a,
                Step::Ok(_, response) => match completed.next() {
                    Some(Ok(())) => Ok(ran(response)),
                    Some(Err(Error::StaleToken { .. })) => Ok(RunOnce::RanLate(response)),
                    Some(Err(e)) => Err(e),
                    None => unreachable!("complete_batch answers every item"),
                },
                Step::Err(_, e) => match released.next() {
                    // Stale: someone took over already; nothing left to release.
                    Some(Ok(()) | Err(Error::StaleToken { .. })) => Ok(RunOnce::Failed(e)),
                    Some(Err(store)) => Err(store),
                    None => unreachable!("release_batch answers every item"),
                },
            });
        }
        for (i, j) in repeats {
            match &out[j] {
                Ok(RunOnce::Ran(response)) => {
                    let stored = (!response.is_empty()).then(|| response.clone());
                    out[i] = Ok(RunOnce::Done(stored));
                }
                Ok(RunOnce::RanNotStored(_)) => out[i] = Ok(RunOnce::Done(None)),
                _ => {}
            }
        }
        Ok(out)
    }
}

//! Idempotent processing as a per-key state machine: claim, then complete
//! (storing a response) or release, with leases.
//!
//! ```text
//!              claim (new or expired key)
//!   absent ──────────────────────────────► in progress (lease)
//!     ▲  ▲                                   │   │   │
//!     │  │ release(token)                    │   │   │ lease ends, no complete:
//!     │  └───────────────────────────────────┘   │   │ the next claim takes over
//!     │                                          │   ▼ (new token; old one is stale)
//!     │  TTL ends          complete(token, resp) │
//!     └──────────────── completed (response) ◄───┘
//! ```
//!
//! Each transition is one record appended under the key's shard lock, so it
//! is atomic against every other call for the key, durable like any insert
//! (under `Immediate` it returns only once synced), and replayed on recovery.

use std::time::{Duration, SystemTime};

use crate::clock::to_system_time;
use crate::error::{Error, Result};
use crate::index::{hash_key, shard_of, tag_of, Entry, Shard};
use crate::limits::{check_key, check_ttl, expiry};
use crate::log::{entry_is_key, record_at, Lsn};
use crate::record::{self, Body, Decoded, MAX_RESPONSE_LEN};
use crate::store::{Inner, Store};
use crate::vfs::Vfs;

/// Proof of ownership of a claimed key, handed out by [`Store::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken {
    key: Vec<u8>,
    id: u64,
}

impl ClaimToken {
    /// The key this token claimed.
    pub fn key(&self) -> &[u8] {
        &self.key
    }
    /// Unique among all claims ever made in this store.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// The answer of [`Store::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns the work until the lease ends: do it, then
    /// `complete` (or `release` if it failed).
    Acquired(ClaimToken),
    /// Another caller owns the work; retry after `lease_expires_at` (the
    /// lease is wall-clock time from the store's `Clock`).
    InProgress {
        /// When the current lease ends (then another claim may take over).
        lease_expires_at: SystemTime,
    },
    /// The work is done. `response` is what `complete` stored (`None` if it
    /// stored none, or if the key was recorded by `check_and_insert`).
    Completed {
        /// The stored response, byte for byte (`None` if none was stored).
        response: Option<Vec<u8>>,
        /// When the key's record expires and the key may be claimed anew.
        expires_at: SystemTime,
    },
}

/// The state of a key as its latest record tells it.
enum State {
    /// A removal (or release): absent, whatever its expiry field says.
    Removed,
    Plain,
    Claimed {
        fingerprint: Option<u64>,
        token: u64,
    },
    Done {
        fingerprint: Option<u64>,
        response: Vec<u8>,
    },
}

struct Current {
    state: State,
    expires_at: u64,
    end: Lsn,
}

fn check_fingerprint(stored: Option<u64>, given: Option<u64>) -> Result<()> {
    match (stored, given) {
        (Some(s), Some(g)) if s != g => Err(Error::FingerprintMismatch {
            stored: s,
            given: g,
        }),
        _ => Ok(()),
    }
}

impl<F: Vfs> Inner<F> {
    /// The key's latest record, expired or not.
    fn current(&self, shard: &Shard, key: &[u8], h: u64) -> Option<(Entry, Current)> {
        let e = shard.find(tag_of(h), |e| entry_is_key(&self.table, e, key))?;
        self.table
            .with(e.seg, |s| {
                let rec = record_at(s, e.off);
                let end = crate::log::lsn(e.seg, e.off as usize + rec.len());
                let Decoded::Record(r, _) = record::decode(rec) else {
                    return None;
                };
                let state = match r.body {
                    Body::Remove => State::Removed,
                    Body::Claim { fingerprint, token } => State::Claimed { fingerprint, token },
                    Body::Complete {
                        fingerprint,
                        response,
                    } => State::Done {
                        fingerprint,
                        response: response.to_vec(),
                    },
                    _ => State::Plain,
                };
                Some((
                    e,
                    Current {
                        state,
                        expires_at: r.expires_at,
                        end,
                    },
                ))
            })
            .flatten()
    }

    /// Checks that `token` still owns its key: the key's latest record is
    /// the claim that issued it, and its lease has not ended. Returns that
    /// claim's fingerprint and lease end; if not, the end LSN of the record
    /// that says so (0 if none), which must be durable before `StaleToken`
    /// may be answered.
    fn owned(
        &self,
        shard: &Shard,
        token: &ClaimToken,
        h: u64,
        now: u64,
    ) -> std::result::Result<(Option<u64>, u64), Lsn> {
        let current = self.current(shard, &token.key, h);
        let need = current.as_ref().map_or(0, |(_, c)| c.end);
        match current {
            Some((
                _,
                Current {
                    state:
                        State::Claimed {
                            fingerprint,
                            token: t,
                        },
                    expires_at,
                    ..
                },
            )) if t == token.id && expires_at > now => Ok((fingerprint, expires_at)),
            // Invariant (fencing): once the lease ended, or anyone else
            // claimed, completed, released or removed the key, an old token
            // changes nothing. (Not "until someone takes over": GC and
            // recovery forget expired claims, so that would depend on timing.)
            _ => Err(need),
        }
    }
}

impl<F: Vfs> Store<F> {
    /// Claims `key` for processing, atomically.
    ///
    /// `lease`: how long the work may take before another caller may take
    /// it over (say, a crash). `fingerprint`: a hash of the message payload;
    /// a later claim of the same key with a different fingerprint fails with
    /// `Error::FingerprintMismatch` (the ID was reused for a different
    /// message). `None` skips that check.
    pub fn claim(&self, key: &[u8], lease: Duration, fingerprint: Option<u64>) -> Result<Claim> {
        check_key(key)?;
        check_ttl(lease)?;
        let inner = self.inner();
        let now = inner.config.clock.now_ms();
        let h = hash_key(key);
        // Invariant: every answer, an error included, waits for the record it
        // relies on to be as durable as the mode promises (after a failed
        // sync, one that is not gets `SyncFailed`).
        let (answer, need) = {
            let mut shard = inner.index.lock(shard_of(h));
            match inner
                .current(&shard, key, h)
                .filter(|(_, c)| !matches!(c.state, State::Removed) && c.expires_at > now)
            {
                Some((_, c)) => {
                    let at = to_system_time(c.expires_at);
                    let answer = match c.state {
                        State::Removed => unreachable!("filtered out above"),
                        State::Plain => Ok(Claim::Completed {
                            response: None,
                            expires_at: at,
                        }),
                        State::Claimed { fingerprint: f, .. } => check_fingerprint(f, fingerprint)
                            .map(|()| Claim::InProgress {
                                lease_expires_at: at,
                            }),
                        State::Done {
                            fingerprint: f,
                            response,
                        } => {
                            // An empty response is stored as none.
                            check_fingerprint(f, fingerprint).map(|()| Claim::Completed {
                                response: (!response.is_empty()).then_some(response),
                                expires_at: at,
                            })
                        }
                    };
                    (answer, c.end)
                }
                None => {
                    // The token is where the claim record starts: unique.
                    let (token, end) =
                        inner.write_record(&mut shard, key, h, expiry(now, lease), |token| {
                            Body::Claim { fingerprint, token }
                        })?;
                    (
                        Ok(Claim::Acquired(ClaimToken {
                            key: key.to_vec(),
                            id: token,
                        })),
                        end,
                    )
                }
            }
        };
        inner.wait_for(need)?;
        answer
    }

    /// Marks the claimed work done and stores `response` (at most
    /// [`MAX_RESPONSE_LEN`] bytes) for duplicates, until `ttl` from now.
    /// `None` and an empty response are the same: later claims see
    /// `Completed { response: None }`.
    /// Fails with `Error::StaleToken` if the lease has ended, or the claim was
    /// taken over, released or removed meanwhile: choose a lease longer than
    /// the work can take.
    pub fn complete(
        &self,
        token: &ClaimToken,
        response: Option<&[u8]>,
        ttl: Duration,
    ) -> Result<()> {
        check_ttl(ttl)?;
        let response = response.unwrap_or_default();
        if response.len() > MAX_RESPONSE_LEN {
            return Err(Error::ResponseTooLarge {
                len: response.len(),
                max: MAX_RESPONSE_LEN,
            });
        }
        self.transition(token, |inner, shard, h, now, fingerprint, _| {
            // The claim's lease stays in the horizon: a completion shorter
            // than the remaining lease must not let the claim come back.
            let body = |_| Body::Complete {
                fingerprint,
                response,
            };
            let (_, end) = inner.write_record(shard, &token.key, h, expiry(now, ttl), body)?;
            Ok(end)
        })
    }

    /// Gives the claim up (processing failed): the key is forgotten and the
    /// next delivery can claim it. Fails with `Error::StaleToken` if the
    /// claim is no longer this token's (as for `complete`).
    pub fn release(&self, token: &ClaimToken) -> Result<()> {
        self.transition(token, |inner, shard, h, _, _, lease_end| {
            // Like `remove`: the removal keeps its entry until the horizon.
            let (_, end) = inner.write_record(shard, &token.key, h, lease_end, |_| Body::Remove)?;
            Ok(end)
        })
    }

    /// Runs `step` with the token's key locked, once the token is checked to
    /// own it (fingerprint and lease end passed along), then waits for the
    /// record `step` appended to be as durable as the mode promises.
    fn transition(
        &self,
        token: &ClaimToken,
        step: impl FnOnce(&Inner<F>, &mut Shard, u64, u64, Option<u64>, u64) -> Result<Lsn>,
    ) -> Result<()> {
        let inner = self.inner();
        let now = inner.config.clock.now_ms();
        let h = hash_key(&token.key);
        let need = {
            let mut shard = inner.index.lock(shard_of(h));
            match inner.owned(&shard, token, h, now) {
                Ok((fingerprint, lease_end)) => {
                    step(inner, &mut shard, h, now, fingerprint, lease_end)?
                }
                Err(need) => {
                    drop(shard);
                    // The record that makes the token stale must be durable
                    // before the caller is told so.
                    inner.wait_for(need)?;
                    return Err(Error::StaleToken { id: token.id });
                }
            }
        };
        inner.wait_for(need)
    }
}

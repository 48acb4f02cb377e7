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
//! A claim made by an earlier opening of the store (its process is gone:
//! see `Opening`) is taken over by the next claim at once, whatever is left
//! of its lease.
//!
//! Each transition is one record appended under the key's shard lock, so it
//! is atomic against every other call for the key, durable like any insert
//! (under `Immediate` it returns only once synced), and replayed on recovery.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use crate::clock::to_system_time;
use crate::counters::Counters;
use crate::error::{Error, Result};
use crate::index::{hash_key, shard_of, tag_of, Entry, Shard};
use crate::limits::{check_key, check_ttl, expiry};
use crate::log::{checked_at, entry_is_key, Appender, Damage, Lsn};
use crate::record::{self, Body, Decoded, MAX_RESPONSE_LEN};
use crate::store::{shard_order, Inner, Store};
use crate::vfs::Vfs;

/// Which opening of a store this is.
///
/// Only one process can hold a store open (the lock file), and claim tokens
/// are the LSN where their claim record was first written. So every claim
/// record found in the log at open (`token < start`) was made by an opening
/// whose process is gone: it is *orphaned*, and the next `claim` of its key
/// takes it over at once instead of waiting for its lease to end. (Invariant:
/// a claim record's token is at most its own position, since compaction only
/// copies records forward; so the claims of this opening, and only they,
/// have `token >= start`.)
///
/// `nonce` tells this opening's tokens from any other's: a token handed out
/// by an earlier opening of this store, or by another store, may carry an
/// id equal to a claim of this one (LSNs are reused after a power loss),
/// so tokens are compared with the nonce first.
pub(crate) struct Opening {
    pub(crate) start: Lsn,
    pub(crate) nonce: u64,
}

impl Opening {
    pub(crate) fn new(start: Lsn) -> Self {
        // `RandomState` is seeded from the OS once per process and stepped
        // for each instance; the time and pid separate processes further.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        start.hash(&mut h);
        std::process::id().hash(&mut h);
        SystemTime::now().hash(&mut h);
        Opening {
            start,
            nonce: h.finish(),
        }
    }
}

/// Proof of ownership of a claimed key, handed out by [`Store::claim`].
///
/// A token is valid only in the opening of the store that issued it: after
/// a reopen (or in another store) it owns nothing and `complete`, `release`
/// and `extend` answer `Error::StaleToken`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken {
    key: Vec<u8>,
    id: u64,
    opening: u64,
}

impl ClaimToken {
    /// The key this token claimed.
    pub fn key(&self) -> &[u8] {
        &self.key
    }
    /// Unique among the claims of one opening of this store.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// The answer of [`Store::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "an Acquired claim must be completed or released"]
pub enum Claim {
    /// The caller owns the work until the lease ends: do it, then
    /// `complete` (or `release` if it failed). If the key was claimed by an
    /// earlier opening of the store (a process that died mid-work), this
    /// claim took it over: that work may have partly happened.
    Acquired(ClaimToken),
    /// Another caller of this opening owns the work; retry after
    /// `lease_expires_at` (the lease is wall-clock time from the store's
    /// `Clock`).
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

/// What [`Store::peek`] finds for a key, without changing it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyState {
    /// Not recorded, expired, removed or released.
    Absent,
    /// Claimed until `lease_expires_at`.
    InProgress {
        /// When the lease ends.
        lease_expires_at: SystemTime,
        /// The claim was made by an earlier opening of the store (its
        /// process is gone): the next `claim` takes it over at once.
        orphaned: bool,
    },
    /// Inserted by `check_and_insert` (`response: None`), or completed.
    Completed {
        /// The stored response (`None` if none was stored).
        response: Option<Vec<u8>>,
        /// When the record expires.
        expires_at: SystemTime,
    },
}

/// The state of a key as its latest record tells it.
pub(crate) enum State {
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

/// A key's latest record: its state, expiry and end LSN.
pub(crate) struct Current {
    pub(crate) state: State,
    pub(crate) expires_at: u64,
    pub(crate) end: Lsn,
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
    /// The key's latest record, expired or not; `Error::Corruption` if it
    /// (or another record the probe read) is damaged.
    pub(crate) fn current(
        &self,
        shard: &Shard,
        key: &[u8],
        h: u64,
    ) -> Result<Option<(Entry, Current)>> {
        let damage = Damage::default();
        let found = shard.find(tag_of(h), |e| entry_is_key(&self.table, e, key, &damage));
        damage.check()?;
        let Some(e) = found else {
            return Ok(None);
        };
        self.table
            .with(e.seg, |s| {
                let rec = checked_at(s, e.off)?;
                let end = crate::log::lsn(e.seg, e.off as usize + rec.len());
                let Decoded::Record(r, _) = record::decode(rec) else {
                    return Err(Error::Corruption {
                        file: s.path.clone(),
                        offset: u64::from(e.off),
                        reason: "invalid record on lookup",
                    });
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
                Ok(Some((
                    e,
                    Current {
                        state,
                        expires_at: r.expires_at,
                        end,
                    },
                )))
            })
            .transpose()
            .map(Option::flatten)
    }

    /// Checks that `token` still owns its key: it was issued by this
    /// opening, the key's latest record is the claim that issued it, and
    /// its lease has not ended. Returns that claim's fingerprint and lease
    /// end; if not, the end LSN of the record that says so (0 if none),
    /// which must be durable before `StaleToken` may be answered.
    fn owned(
        &self,
        shard: &Shard,
        token: &ClaimToken,
        h: u64,
        now: u64,
    ) -> Result<std::result::Result<(Option<u64>, u64), Lsn>> {
        if token.opening != self.opening.nonce {
            // Another store's or an earlier opening's: owns nothing here.
            return Ok(Err(0));
        }
        let current = self.current(shard, &token.key, h)?;
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
            )) if t == token.id && expires_at > now => Ok(Ok((fingerprint, expires_at))),
            // Invariant (fencing): once the lease ended, or anyone else
            // claimed, completed, released or removed the key, an old token
            // changes nothing. (Not "until someone takes over": GC and
            // recovery forget expired claims, so that would depend on timing.)
            _ => Ok(Err(need)),
        }
    }

    /// The body of `claim`, with the key's shard locked. The outer error
    /// is a failed write; the inner one a fingerprint mismatch (nothing
    /// written). Also returns the LSN that must be durable before the
    /// answer may be given.
    #[expect(clippy::too_many_arguments, reason = "one call per key of a batch")]
    fn claim_locked<'l>(
        &'l self,
        log: Option<&mut Appender<'l, F>>,
        shard: &mut Shard,
        key: &[u8],
        h: u64,
        now: u64,
        lease_end: u64,
        fingerprint: Option<u64>,
    ) -> Result<(Result<Claim>, Lsn)> {
        let live = self
            .current(shard, key, h)?
            .filter(|(_, c)| !matches!(c.state, State::Removed) && c.expires_at > now);
        let found = live.is_some();
        let answer = match live {
            Some((_, c)) => {
                let at = to_system_time(c.expires_at);
                match c.state {
                    State::Removed => unreachable!("filtered out above"),
                    State::Plain => Some(Ok(Claim::Completed {
                        response: None,
                        expires_at: at,
                    })),
                    State::Claimed {
                        fingerprint: f,
                        token,
                    } => match check_fingerprint(f, fingerprint) {
                        Err(e) => Some(Err(e)),
                        // Orphaned by a restart: taken over below.
                        Ok(()) if token < self.opening.start => None,
                        Ok(()) => Some(Ok(Claim::InProgress {
                            lease_expires_at: at,
                        })),
                    },
                    State::Done {
                        fingerprint: f,
                        response,
                    } => {
                        // An empty response is stored as none.
                        Some(
                            check_fingerprint(f, fingerprint).map(|()| Claim::Completed {
                                response: (!response.is_empty()).then_some(response),
                                expires_at: at,
                            }),
                        )
                    }
                }
                .map(|a| (a, c.end))
            }
            None => None,
        };
        if let Some(answer) = answer {
            return Ok(answer);
        }
        // The token is where the claim record starts: unique, and at least
        // `opening.start`, so this opening owns it.
        let (token, end) = self.write_record(log, shard, key, h, lease_end, |token| {
            Body::Claim { fingerprint, token }
        })?;
        debug_assert!(token >= self.opening.start);
        if found {
            // Only an orphaned claim gets here with the key live. Counted
            // once its record is written, not when the write failed.
            Counters::add(&self.counters.takeovers, 1);
            crate::counters::trace_event!(
                info,
                key_len = key.len(),
                "took over a claim orphaned by an earlier opening"
            );
        }
        Ok((
            Ok(Claim::Acquired(ClaimToken {
                key: key.to_vec(),
                id: token,
                opening: self.opening.nonce,
            })),
            end,
        ))
    }

    /// Counts the answers of claims.
    fn count_claims(&self, answers: &[Result<Claim>]) {
        let c = &self.counters;
        for a in answers {
            match a {
                Ok(Claim::Acquired(_)) => Counters::add(&c.claims_acquired, 1),
                Ok(Claim::InProgress { .. }) => Counters::add(&c.claims_in_progress, 1),
                _ => {}
            }
        }
    }

    /// Counts the answers of completes / releases / extends: successes in
    /// `done`, stale tokens.
    fn count_finished(&self, done: Option<&AtomicU64>, answers: &[Result<()>]) {
        let ok = answers.iter().filter(|a| a.is_ok()).count() as u64;
        let stale = answers
            .iter()
            .filter(|a| matches!(a, Err(Error::StaleToken { .. })))
            .count() as u64;
        if let Some(d) = done {
            Counters::add(d, ok);
        }
        Counters::add(&self.counters.stale_tokens, stale);
    }

    /// Runs `step` once the token is checked to own its key (locked in
    /// `shard`), passing the claim's fingerprint and lease end. The inner
    /// error is `StaleToken`. Also returns the LSN that must be durable
    /// before the answer may be given.
    fn transition_locked<'l, 'a>(
        &'l self,
        log: Option<&mut Appender<'l, F>>,
        shard: &mut Shard,
        token: &ClaimToken,
        h: u64,
        now: u64,
        step: impl FnOnce(Option<u64>, u64) -> (u64, Body<'a>),
    ) -> Result<(Result<()>, Lsn)> {
        match self.owned(shard, token, h, now)? {
            Ok((fingerprint, lease_end)) => {
                let (expires_at, body) = step(fingerprint, lease_end);
                let (_, end) =
                    self.write_record(log, shard, &token.key, h, expires_at, |_| body)?;
                Ok((Ok(()), end))
            }
            // The record that makes the token stale must be durable before
            // the caller is told so.
            Err(need) => Ok((Err(Error::StaleToken { id: token.id }), need)),
        }
    }

    /// Runs `each` on every item of a batch with every involved shard and
    /// the log locked, so that the batch is atomic against every other
    /// call, then waits once for all it relies on to be durable: one sync
    /// for the whole batch under `Immediate`.
    ///
    /// Invariant: a batch is written whole or not at all. `bytes` (an upper
    /// bound of what the items may append) is reserved up front, so no roll
    /// or full disk can stop it halfway; callers check every input before.
    pub(crate) fn batch<'l, T, R>(
        &'l self,
        items: &[T],
        key: impl Fn(&T) -> &[u8],
        bytes: usize,
        mut each: impl FnMut(&mut Appender<'l, F>, &mut Shard, &T, u64, u64) -> Result<(R, Lsn)>,
    ) -> Result<Vec<R>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.check_batch_bytes(bytes)?;
        let now = self.config.clock.now_ms();
        // All keys are hashed first, then taken in shard order: each shard is
        // locked once and its keys probed one after another. A key repeated
        // in the batch lands in one shard with its occurrences in batch
        // order (the order is stable), so each answer is what a loop would
        // give. Records of different keys go to the log in shard order; the
        // order of one key's records, the only order replay depends on, is
        // unchanged.
        let hashes: Vec<u64> = items.iter().map(|t| hash_key(key(t))).collect();
        let order = shard_order(&hashes);
        let mut out: Vec<Option<R>> = items.iter().map(|_| None).collect();
        let mut need = 0;
        {
            // Lock order: shards ascending, then the log.
            let mut guards = Vec::new();
            for &(shard, _) in &order {
                if guards.last().is_none_or(|&(s, _)| s != shard) {
                    guards.push((shard, self.index.lock(shard)));
                }
            }
            let mut log = self.log.lock();
            log.begin_batch(&self.table, bytes)?;
            let mut g = 0;
            for &(shard, i) in &order {
                while guards[g].0 != shard {
                    g += 1;
                }
                let (r, n) = each(&mut log, &mut guards[g].1, &items[i], hashes[i], now)?;
                out[i] = Some(r);
                need = need.max(n);
            }
        }
        // Invariant: `order` is a permutation of the batch, so every item
        // has its answer.
        let out: Vec<R> = out.into_iter().flatten().collect();
        assert_eq!(out.len(), items.len(), "a batch item was not answered");
        self.wait_for(need)?;
        Ok(out)
    }
}

impl<F: Vfs> Store<F> {
    /// Claims `key` for processing, atomically.
    ///
    /// `lease`: how long the work may take before another caller may take
    /// it over (say, a crash). `fingerprint`: a hash of the message payload
    /// (see [`fingerprint`](crate::fingerprint)); a later claim of the same
    /// key with a different fingerprint fails with
    /// `Error::FingerprintMismatch` (the ID was reused for a different
    /// message). `None` skips that check.
    ///
    /// A claim left by an earlier opening of the store (its process died
    /// before `complete` or `release`) is taken over at once: the answer is
    /// `Acquired` with a new token, whatever is left of its lease.
    pub fn claim(
        &self,
        key: impl AsRef<[u8]>,
        lease: Duration,
        fingerprint: Option<u64>,
    ) -> Result<Claim> {
        let key = key.as_ref();
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
            inner.claim_locked(
                None,
                &mut shard,
                key,
                h,
                now,
                expiry(now, lease),
                fingerprint,
            )?
        };
        inner.wait_for(need)?;
        inner.count_claims(std::slice::from_ref(&answer));
        answer
    }

    /// [`claim`](Store::claim) for a whole broker batch: `(key, fingerprint)`
    /// pairs, one answer per item, in order, with one sync for the batch.
    ///
    /// Each answer is what `claim` would have answered had the items been
    /// claimed one after another: a key repeated in the batch is `Acquired`
    /// by its first occurrence and `InProgress` for the later ones (leave
    /// those to the first). A fingerprint mismatch is that item's answer
    /// (`Err(Error::FingerprintMismatch)`, nothing written for it); the
    /// other items go on. An empty batch answers an empty `Vec` and writes
    /// nothing. If any key or the lease is invalid, the batch is too large
    /// (`Error::BatchTooLarge`: its records must fit in half a segment), or
    /// it cannot be written, the call fails and nothing is claimed.
    pub fn claim_batch<K: AsRef<[u8]>>(
        &self,
        items: &[(K, Option<u64>)],
        lease: Duration,
    ) -> Result<Vec<Result<Claim>>> {
        check_ttl(lease)?;
        let mut bytes = 0;
        for (k, f) in items {
            check_key(k.as_ref())?;
            let body = Body::Claim {
                fingerprint: *f,
                token: 0,
            };
            bytes += record::body_len(k.as_ref().len(), &body);
        }
        let inner = self.inner();
        let answers = inner.batch(
            items,
            |(k, _)| k.as_ref(),
            bytes,
            |log, shard, (k, f), h, now| {
                inner.claim_locked(Some(log), shard, k.as_ref(), h, now, expiry(now, lease), *f)
            },
        )?;
        inner.count_claims(&answers);
        Ok(answers)
    }

    /// Marks the claimed work done and stores `response` (at most
    /// [`MAX_RESPONSE_LEN`] bytes) for duplicates, until `ttl` from now.
    /// `None` and an empty response are the same: later claims see
    /// `Completed { response: None }`.
    /// Fails with `Error::StaleToken` if the lease has ended, or the claim was
    /// taken over, released or removed meanwhile, or the token is from an
    /// earlier opening of the store: choose a lease longer than the work
    /// can take (or [`extend`](Store::extend) it).
    pub fn complete(
        &self,
        token: &ClaimToken,
        response: Option<&[u8]>,
        ttl: Duration,
    ) -> Result<()> {
        check_ttl(ttl)?;
        let response = response.unwrap_or_default();
        check_response(response)?;
        let done = Some(&self.inner().counters.claims_completed);
        self.transition(token, done, |fingerprint, _, now| {
            // The claim's lease stays in the horizon: a completion shorter
            // than the remaining lease must not let the claim come back.
            (
                expiry(now, ttl),
                Body::Complete {
                    fingerprint,
                    response,
                },
            )
        })
    }

    /// [`complete`](Store::complete) for a whole batch: `(token, response)`
    /// pairs, one answer per item, in order, with one sync for the batch.
    /// A stale token is that item's answer (`Err(Error::StaleToken)`,
    /// nothing written for it); so is a token repeated in the batch, after
    /// its first occurrence completed it. An empty batch answers an empty
    /// `Vec`. If the TTL or a response is invalid, the batch is too large,
    /// or it cannot be written, the call fails and nothing is completed.
    pub fn complete_batch(
        &self,
        items: &[(&ClaimToken, Option<&[u8]>)],
        ttl: Duration,
    ) -> Result<Vec<Result<()>>> {
        check_ttl(ttl)?;
        let mut bytes = 0;
        for (t, r) in items {
            let response = r.unwrap_or_default();
            check_response(response)?;
            let body = Body::Complete {
                fingerprint: None,
                response,
            };
            bytes += record::body_len(t.key.len(), &body);
        }
        let inner = self.inner();
        let answers = inner.batch(
            items,
            |(t, _)| &t.key,
            bytes,
            |log, shard, (t, r), h, now| {
                let response = r.unwrap_or_default();
                inner.transition_locked(Some(log), shard, t, h, now, |fingerprint, _| {
                    (
                        expiry(now, ttl),
                        Body::Complete {
                            fingerprint,
                            response,
                        },
                    )
                })
            },
        )?;
        inner.count_finished(Some(&inner.counters.claims_completed), &answers);
        Ok(answers)
    }

    /// Gives the claim up (processing failed): the key is forgotten and the
    /// next delivery can claim it. Fails with `Error::StaleToken` if the
    /// claim is no longer this token's (as for `complete`).
    pub fn release(&self, token: &ClaimToken) -> Result<()> {
        // Like `remove`: the removal keeps its entry until the horizon.
        let done = Some(&self.inner().counters.claims_released);
        self.transition(token, done, |_, lease_end, _| (lease_end, Body::Remove))
    }

    /// [`release`](Store::release) for a whole batch, one answer per token,
    /// in order, with one sync; stale (and repeated) tokens as for
    /// [`complete_batch`](Store::complete_batch).
    pub fn release_batch(&self, tokens: &[&ClaimToken]) -> Result<Vec<Result<()>>> {
        let bytes = tokens
            .iter()
            .map(|t| record::body_len(t.key.len(), &Body::Remove))
            .sum();
        let inner = self.inner();
        let answers = inner.batch(
            tokens,
            |t| &t.key,
            bytes,
            |log, shard, t, h, now| {
                inner.transition_locked(Some(log), shard, t, h, now, |_, lease_end| {
                    (lease_end, Body::Remove)
                })
            },
        )?;
        inner.count_finished(Some(&inner.counters.claims_released), &answers);
        Ok(answers)
    }

    /// Extends the token's lease to end `lease` from now (for work that
    /// takes longer than planned: call it before the lease ends). Returns
    /// the new lease end. Fenced like `complete`: fails with
    /// `Error::StaleToken` if the lease already ended (whether or not
    /// anyone claimed the key since), or the claim was taken over,
    /// released or completed. The token stays the same.
    pub fn extend(&self, token: &ClaimToken, lease: Duration) -> Result<SystemTime> {
        check_ttl(lease)?;
        let mut until = 0;
        self.transition(token, None, |fingerprint, _, now| {
            until = expiry(now, lease);
            (
                until,
                Body::Claim {
                    fingerprint,
                    token: token.id,
                },
            )
        })?;
        Ok(to_system_time(until))
    }

    /// The key's state, without changing it (a claim found orphaned is not
    /// taken over). Under `Immediate`, answers only from durable records.
    pub fn peek(&self, key: impl AsRef<[u8]>) -> Result<KeyState> {
        let key = key.as_ref();
        check_key(key)?;
        let inner = self.inner();
        let now = inner.config.clock.now_ms();
        let h = hash_key(key);
        let (state, need) = {
            let shard = inner.index.lock(shard_of(h));
            match inner.current(&shard, key, h)? {
                None => (KeyState::Absent, 0),
                Some((_, c)) if c.expires_at <= now => (KeyState::Absent, c.end),
                Some((_, c)) => {
                    let at = to_system_time(c.expires_at);
                    let state = match c.state {
                        State::Removed => KeyState::Absent,
                        State::Plain => KeyState::Completed {
                            response: None,
                            expires_at: at,
                        },
                        State::Claimed { token, .. } => KeyState::InProgress {
                            lease_expires_at: at,
                            orphaned: token < inner.opening.start,
                        },
                        State::Done { response, .. } => KeyState::Completed {
                            response: (!response.is_empty()).then_some(response),
                            expires_at: at,
                        },
                    };
                    (state, c.end)
                }
            }
        };
        inner.wait_for(need)?;
        Ok(state)
    }

    /// Runs `step` with the token's key locked, once the token is checked to
    /// own it (`step` gets the fingerprint, lease end and now, and returns
    /// the record to append), then waits for that record to be as durable
    /// as the mode promises.
    fn transition<'a>(
        &self,
        token: &ClaimToken,
        done: Option<&AtomicU64>,
        step: impl FnOnce(Option<u64>, u64, u64) -> (u64, Body<'a>),
    ) -> Result<()> {
        let inner = self.inner();
        let now = inner.config.clock.now_ms();
        let h = hash_key(&token.key);
        let (answer, need) = {
            let mut shard = inner.index.lock(shard_of(h));
            inner.transition_locked(None, &mut shard, token, h, now, |f, lease_end| {
                step(f, lease_end, now)
            })?
        };
        inner.wait_for(need)?;
        inner.count_finished(done, std::slice::from_ref(&answer));
        answer
    }
}

fn check_response(response: &[u8]) -> Result<()> {
    if response.len() > MAX_RESPONSE_LEN {
        return Err(Error::ResponseTooLarge {
            len: response.len(),
            max: MAX_RESPONSE_LEN,
        });
    }
    Ok(())
}

/// A payload fingerprint for [`Store::claim`]: the XXH3 (64-bit) hash of
/// the payload bytes. Stable across versions and platforms (it is stored).
pub fn fingerprint(payload: impl AsRef<[u8]>) -> u64 {
    xxhash_rust::xxh3::xxh3_64(payload.as_ref())
}

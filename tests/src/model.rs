//! A reference model of the store, and a replay-equivalence oracle checked
//! after every step.
//!
//! # What is checked
//!
//! `check` runs a scenario of [`Op`]s against a store on the simulated file
//! system (`dedupstore::sim`) and, per key, tracks what it may be:
//! absent, inserted until `t`, claimed until the lease ends (with its
//! token), or completed with a response until `t`. It checks:
//!
//! 1. **Every answer** of the live store (present / absent, the exact
//!    `expires_at` of a `Duplicate`, the exact lease end of `InProgress`,
//!    the exact stored response of `Completed`, `StaleToken` or not) against
//!    the model, narrowing it where a crash or a failed call left several
//!    possibilities.
//! 2. **After every step**, the durable image a power loss would leave now
//!    (`SimFs::crash(DropUnsynced)`, and every [`TORN_EVERY`]th step also a
//!    `Torn` one) is opened on a copy with the same config and clock time,
//!    and each key the model knows is compared with what was acknowledged.
//!    Under `Durability::Immediate` that must match the live state exactly
//!    (every acknowledged change is durable on return, and every answer is
//!    given only from durable data); under `None` / `Interval` a key may be
//!    in any state it had since its last durable point (a successful `sync`,
//!    a reopen, or a crash and recovery: the restarted store claims to make
//!    what it recovered durable before answering).
//! 3. Under `None` / `Interval` also the image a process kill would leave
//!    (`crash(Kill)`: page cache kept, nothing made durable): replaying the
//!    log must give back exactly the live state.
//!
//! A copy is probed with one `peek(key)` per key, which tells all (see
//! `Store::peek`): `Absent`, `InProgress` = claimed until the lease end
//! (and orphaned: in a fresh opening every claim is an earlier one's),
//! `Completed { response: None }` = plain insert (or a `complete` without
//! response), `Completed { response: Some(r) }` = completed with `r`.
//! Expired keys count as absent.
//!
//! Claims carry the opening of the live store that made them: a reopen or
//! crash orphans every claim in progress, and the model expects the next
//! `claim` (single or batch) of such a key to take it over at once, and
//! every token of an earlier opening to be stale (for `complete`, `release`
//! and `extend`; a successful `extend` moves the lease end to now + lease).
//! To stay cheap, a step that touches single keys probes those keys; every
//! other step (sync, GC, compaction, clock moves, reopen, crash, a fired
//! fault, a segment roll), and every [`FULL_EVERY`]th step, probes all
//! `nkeys` keys.
//!
//! # Faults
//!
//! `Op::Fail` arms a one-shot fault on the Nth next I/O call of one kind
//! (msync, fsync, fsync dir, rename, allocate, open, remove, mmap). The
//! operation that sees it is not acknowledged: the model allows both
//! outcomes for it, in the live store and in the durable image. After a
//! failed sync (msync, fsync or fsync dir) the store must refuse every
//! write with `Error::SyncFailed` until it is reopened (reads may still
//! answer, or fail the same way). Under `Immediate` an answer is only
//! given from durable data, so whatever the store answers after a failure
//! (absent included) must also be what a power loss brings back. Any error
//! that is not an injected one, or `SyncFailed` after one, fails the test;
//! so does a panic.
//!
//! `Op::Fill` inserts fresh 400-byte filler keys (not tracked beyond "each
//! is new") so that 64 KiB segments roll, expire whole and get compacted
//! within a few hundred steps.
//!
//! # Clock
//!
//! Expiry is absolute wall-clock time (`ManualClock`). `Op::Advance` moves
//! it forward, `Op::Rewind` back. Moving back is allowed to do only what
//! the README documents: a key whose current state expired at some point
//! while it was current (its record, or the removal's, may have been
//! dropped by GC or by a recovery) may, while the clock is behind, answer
//! either absent or as any earlier state of the key whose expiry the clock
//! had passed (an older record that outlived a dropped newer one) and has
//! not yet reached again. A key whose current state never expired must
//! answer exactly. Without a rewind no expired state may ever come back.

#![allow(
    clippy::result_large_err,
    reason = "a Failure carries the whole scenario context; it is built once, at the end of a failing test"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dedupstore::sim::{CrashMode, Fault, SimFs};
use dedupstore::{
    Checkpoints, Claim, ClaimToken, Clock, Config, Durability, Error, KeyState, ManualClock,
    Outcome, Store,
};

/// The store's index checkpoint file.
pub const CKPT: &str = "/db/index.ckpt";

/// Probe every key, not only the touched ones, at least this often.
pub const FULL_EVERY: usize = 8;
/// Also check a torn power-loss image every this many steps.
pub const TORN_EVERY: usize = 7;
/// The clock at the start of every scenario (ms since the epoch).
pub const START_MS: u64 = 1_000_000;

/// I/O call kinds `Op::Fail` can fail (index = `kind % 8`).
pub const FAIL_KINDS: [&str; 8] = [
    "msync",
    "fsync",
    "fsync dir",
    "rename",
    "allocate",
    "open",
    "remove",
    "mmap",
];

/// Kinds whose failure poisons the store: syncs, and a rename (only a
/// segment roll renames while the store is open; after a failed rename the
/// new segment may exist, so the sealed one must not take another append).
fn is_sync(kind: &str) -> bool {
    matches!(kind, "msync" | "fsync" | "fsync dir" | "rename")
}

/// One step of a scenario. Keys are taken modulo the scenario's key count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Insert {
        key: u32,
        ttl_ms: u64,
    },
    Batch {
        keys: Vec<u32>,
        ttl_ms: u64,
    },
    Contains {
        key: u32,
    },
    /// `claim`; an acquired token is kept for `Complete` / `Release`.
    Claim {
        key: u32,
        lease_ms: u64,
    },
    /// `complete` with the last acquired token of a key that has one
    /// (chosen by `key`); `resp`: 0 none, 1 empty, 2 four bytes, 3 one to
    /// six KiB (records that cross pages and fill segments).
    Complete {
        key: u32,
        ttl_ms: u64,
        resp: u8,
    },
    Release {
        key: u32,
    },
    /// `extend` the lease of a held key (chosen by `key` as `Complete`
    /// chooses one) to end `lease_ms` from now.
    Extend {
        key: u32,
        lease_ms: u64,
    },
    /// `claim_batch` of these keys (repeats allowed), no fingerprints.
    ClaimBatch {
        keys: Vec<u32>,
        lease_ms: u64,
    },
    /// `complete_batch` (or `release_batch` if `release`) with the tokens of
    /// held keys chosen by `keys` as `Complete` chooses one (repeats allowed).
    FinishBatch {
        keys: Vec<u32>,
        ttl_ms: u64,
        resp: u8,
        release: bool,
    },
    Remove {
        key: u32,
    },
    /// Inserts `n % 76` fresh filler keys (never used again, not probed)
    /// in one batch: fills segments fast, so they roll, expire whole (short
    /// TTL) or stay mostly live (long TTL) and GC has work.
    Fill {
        n: u8,
        ttl_ms: u64,
    },
    /// The clock moves forward.
    Advance {
        ms: u64,
    },
    /// The clock jumps back.
    Rewind {
        ms: u64,
    },
    Sync,
    Gc,
    Compact,
    /// Clean close (a failed one after a fault) and reopen.
    Reopen,
    /// Kill or power loss, then reopen. `kind % 3`: 0 kill, 1 drop
    /// unsynced, 2 torn with `seed`.
    Crash {
        kind: u8,
        seed: u64,
    },
    /// `Store::checkpoint`: writes an index checkpoint now (one is also
    /// written at every clean close and after a compacting GC).
    Checkpoint,
    /// Tampers with the checkpoint file (the next open must ignore it or
    /// find it still matching the log; either way no answer changes).
    /// `how % 6`: 0 flip a byte at `at`, 1 truncate to `at`, 2 delete,
    /// 3 save a copy, 4 put the saved copy back (stale), 5 put in one from
    /// another store.
    DamageCheckpoint {
        how: u8,
        at: u32,
    },
    /// Arms a one-shot fault: the `nth` next I/O call of kind
    /// `FAIL_KINDS[kind % 8]` fails with EIO (`enospc`: ENOSPC).
    Fail {
        kind: u8,
        nth: u8,
        enospc: bool,
    },
}

/// Key bytes of key number `k`: mixed lengths (4 to 1003 bytes), so that
/// records straddle sectors, pages and segment ends.
pub fn key(k: u32) -> Vec<u8> {
    let mut v = k.to_le_bytes().to_vec();
    v.resize(4 + (k as usize * 37) % 1000, k as u8);
    v
}

/// The response `Op::Complete` stores for key `k`.
pub fn response(k: u32, resp: u8) -> Option<Vec<u8>> {
    match resp % 4 {
        0 => None,
        1 => Some(Vec::new()),
        2 => Some(key(k)[..4].to_vec()),
        _ => {
            let n = 1024 + (k as usize * 131) % 5000;
            Some((0..n).map(|i| (i as u32 ^ k) as u8).collect())
        }
    }
}

/// The state a `complete` with `body` makes. An empty response is stored
/// as none (documented).
/// How `finish_answer` moves a claim its token owns.
enum Finish {
    /// `complete`: to this state.
    Complete(St),
    /// `release`: absent.
    Release,
    /// `extend`: the lease ends at this time.
    Extend(u64),
}

fn completed(body: Option<Vec<u8>>, now: u64, ttl: u64) -> St {
    St::Done {
        resp: body.filter(|b| !b.is_empty()),
        exp: now + ttl,
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A key's state as the model knows it. Times are absolute ms.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum St {
    /// Never present, or removed / released; `rm`: the expiry the removal
    /// record carries (0 if none), after which GC may drop it.
    Absent {
        rm: u64,
    },
    Plain {
        exp: u64,
    },
    /// `tok`: the token id, if the claim was acknowledged. `gen`: the
    /// opening of the store that made it (a later opening takes it over).
    Claimed {
        lease: u64,
        tok: Option<u64>,
        gen: u64,
    },
    Done {
        resp: Option<Vec<u8>>,
        exp: u64,
    },
}

/// What a key answers at some time: all a `claim` probe can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
enum View {
    Absent,
    InProgress { lease: u64 },
    Completed { resp: Option<Vec<u8>>, exp: u64 },
}

impl View {
    fn present(&self) -> bool {
        !matches!(self, View::Absent)
    }
    /// Expiry as `Duplicate { expires_at }` reports it.
    fn until(&self) -> Option<u64> {
        match self {
            View::Absent => None,
            View::InProgress { lease } => Some(*lease),
            View::Completed { exp, .. } => Some(*exp),
        }
    }
    fn short(&self) -> &'static str {
        match self {
            View::Absent => "absent",
            View::InProgress { .. } => "in-progress",
            View::Completed { resp: None, .. } => "completed",
            View::Completed { resp: Some(_), .. } => "completed+resp",
        }
    }
}

impl St {
    fn exp(&self) -> u64 {
        match self {
            St::Absent { rm } => *rm,
            St::Plain { exp } | St::Done { exp, .. } => *exp,
            St::Claimed { lease, .. } => *lease,
        }
    }
    fn view(&self, now: u64) -> View {
        if self.exp() <= now {
            return View::Absent;
        }
        match self {
            St::Absent { .. } => View::Absent,
            St::Plain { exp } => View::Completed {
                resp: None,
                exp: *exp,
            },
            St::Claimed { lease, .. } => View::InProgress { lease: *lease },
            St::Done { resp, exp } => View::Completed {
                resp: resp.clone(),
                exp: *exp,
            },
        }
    }
    fn live(&self, now: u64) -> bool {
        self.view(now).present()
    }
    /// Token `t` of opening `g` owns the key, if `g` is the current one.
    fn owned_by(&self, t: u64, g: u64, now: u64) -> bool {
        matches!(self, St::Claimed { lease, tok: Some(x), gen } if *x == t && *gen == g && *lease > now)
    }
    /// A live claim left by an earlier opening than `cur`: the next claim
    /// takes it over at once.
    fn orphaned(&self, cur: u64, now: u64) -> bool {
        matches!(self, St::Claimed { lease, gen, .. } if *gen != cur && *lease > now)
    }
}

fn views(states: &[St], now: u64) -> String {
    let v: Vec<String> = states
        .iter()
        .map(|s| match s.view(now) {
            View::Absent => "absent".to_string(),
            View::InProgress { lease } => format!("in-progress until {lease}"),
            View::Completed { resp, exp } => format!(
                "completed until {exp} {}",
                match resp {
                    None => "without response".to_string(),
                    Some(r) => format!("with a {}-byte response", r.len()),
                }
            ),
        })
        .collect();
    v.join(" | ")
}

fn kinds(states: &[St], now: u64) -> String {
    let mut v: Vec<&str> = states.iter().map(|s| s.view(now).short()).collect();
    v.sort_unstable();
    v.dedup();
    v.join("|")
}

fn push(v: &mut Vec<St>, s: St) {
    if !v.contains(&s) {
        v.push(s);
    }
}

#[derive(Debug, Clone)]
struct KeyModel {
    /// What the live state may be.
    cands: Vec<St>,
    /// What a power loss may bring back; meaningful only when not `tied`.
    dur: Vec<St>,
    /// The durable state is the live one (after a sync, a reopen, a crash
    /// recovery, and always under `Immediate`).
    tied: bool,
    /// Every state the key had (for clock rewinds).
    hist: Vec<St>,
    /// Highest clock reading since the key's last acknowledged change
    /// (under `Immediate`; since the start under `None` / `Interval`, where
    /// older states stay possible): a state whose expiry is below it may
    /// have been dropped by GC or recovery.
    hi_since: u64,
}

struct Model {
    keys: BTreeMap<u32, KeyModel>,
    immediate: bool,
    /// Openings of the live store so far (claims carry the one that made
    /// them: every restart orphans the claims in progress).
    gen: u64,
    /// Highest clock reading so far.
    hi: u64,
}

impl Model {
    fn km(&mut self, k: u32) -> &mut KeyModel {
        let hi = self.hi;
        self.keys.entry(k).or_insert_with(|| KeyModel {
            cands: vec![St::Absent { rm: 0 }],
            dur: vec![St::Absent { rm: 0 }],
            tied: true,
            hist: Vec::new(),
            hi_since: hi,
        })
    }

    /// The live (`durable == false`) or durable states key `k` may show at
    /// `now`, including what a clock rewind allows (see the module doc).
    fn candidates(&mut self, k: u32, durable: bool) -> Vec<St> {
        let hi = self.hi;
        let km = self.km(k);
        let mut set = if durable && !km.tied {
            km.dur.clone()
        } else {
            km.cands.clone()
        };
        if set.iter().any(|s| s.exp() <= km.hi_since) {
            push(&mut set, St::Absent { rm: 0 });
            for p in &km.hist {
                if !matches!(p, St::Absent { .. }) && p.exp() <= hi {
                    push(&mut set, p.clone());
                }
            }
        }
        set
    }

    /// Narrows key `k`'s live states to those `pred` accepts; `Err` with
    /// the states it could be in if none does.
    fn narrow(&mut self, k: u32, pred: impl Fn(&St) -> bool) -> Result<(), Vec<St>> {
        let all = self.candidates(k, false);
        let keep: Vec<St> = all.iter().filter(|s| pred(s)).cloned().collect();
        if keep.is_empty() {
            return Err(all);
        }
        self.km(k).cands = keep;
        Ok(())
    }

    /// An acknowledged change: each live state becomes `f` of it.
    fn ack(&mut self, k: u32, now: u64, f: impl Fn(&St) -> St) {
        let immediate = self.immediate;
        let km = self.km(k);
        let mut new = Vec::new();
        for s in &km.cands {
            push(&mut new, f(s));
        }
        if immediate {
            km.tied = true;
        } else {
            if km.tied {
                km.dur = km.cands.clone();
                km.tied = false;
            }
            for s in &new {
                push(&mut km.dur, s.clone());
            }
        }
        for s in &new {
            push(&mut km.hist, s.clone());
        }
        km.cands = new;
        if immediate {
            // Only the new state remains possible, live and durable. (Under
            // None / Interval older states stay possible after a power loss
            // and keep what the clock did to them.)
            km.hi_since = now;
        }
    }

    /// A change that may or may not have happened (the call failed): states
    /// for which `f` gives a successor may also have become it.
    fn maybe(&mut self, k: u32, f: impl Fn(&St) -> Option<St>) {
        let immediate = self.immediate;
        // From any state the key may show (a rewind may have revived or
        // dropped one).
        let new: Vec<St> = self.candidates(k, false).iter().filter_map(&f).collect();
        let km = self.km(k);
        if new.is_empty() {
            return;
        }
        if !km.tied {
            for s in &new {
                push(&mut km.dur, s.clone());
            }
        } else if !immediate {
            km.dur = km.cands.clone();
            km.tied = false;
            for s in &new {
                push(&mut km.dur, s.clone());
            }
        }
        for s in new {
            push(&mut km.hist, s.clone());
            push(&mut km.cands, s);
        }
    }

    /// Everything live is durable now.
    fn synced(&mut self) {
        for km in self.keys.values_mut() {
            km.tied = true;
        }
    }

    /// A restart; `lost_unsynced`: after a power loss (not a kill or a
    /// clean close), so the live state is what was durable.
    fn restarted(&mut self, lost_unsynced: bool) {
        self.gen += 1;
        for km in self.keys.values_mut() {
            if lost_unsynced && !km.tied {
                km.cands = km.dur.clone();
            }
            km.tied = true;
        }
    }

    fn clock_moved(&mut self, now: u64) {
        self.hi = self.hi.max(now);
        for km in self.keys.values_mut() {
            km.hi_since = km.hi_since.max(now);
        }
    }
}

/// For complete / release: a key that has a token, so the op does
/// something (none if no key has one).
fn pick_held<T>(owners: &BTreeMap<u32, T>, k: u32) -> Option<u32> {
    let held: Vec<u32> = owners.keys().copied().collect();
    held.get(k as usize % held.len().max(1)).copied()
}

/// What a run did, for tests that check the scenarios reach far enough.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub steps: u64,
    pub crashes: u64,
    pub reopens: u64,
    pub segments_reclaimed: u64,
    /// Claims acquired, and completed with their token.
    pub claims: u64,
    pub completes: u64,
    /// Claims acquired by `claim_batch`, and claims that took over one
    /// orphaned by a restart; items of `complete_batch` / `release_batch`
    /// that succeeded.
    pub batch_claims: u64,
    pub takeovers: u64,
    pub batch_finishes: u64,
    /// Leases extended (`extend` succeeded).
    pub extends: u64,
    /// Injected I/O failures that fired.
    pub faults: u64,
    /// Stores opened on a crash image by the oracle (power loss, torn,
    /// kill), and key comparisons made on them.
    pub oracle_opens: u64,
    pub oracle_keys: u64,
    pub torn_opens: u64,
    /// Opens (live and oracle) that loaded a checkpoint, and that ignored
    /// a checkpoint file because it did not match.
    pub checkpoint_loads: u64,
    pub checkpoint_ignored: u64,
    /// Checkpoint files tampered with.
    pub checkpoint_damaged: u64,
}

impl std::ops::AddAssign for Summary {
    fn add_assign(&mut self, o: Summary) {
        self.steps += o.steps;
        self.crashes += o.crashes;
        self.reopens += o.reopens;
        self.segments_reclaimed += o.segments_reclaimed;
        self.claims += o.claims;
        self.completes += o.completes;
        self.batch_claims += o.batch_claims;
        self.takeovers += o.takeovers;
        self.batch_finishes += o.batch_finishes;
        self.extends += o.extends;
        self.faults += o.faults;
        self.oracle_opens += o.oracle_opens;
        self.oracle_keys += o.oracle_keys;
        self.torn_opens += o.torn_opens;
        self.checkpoint_loads += o.checkpoint_loads;
        self.checkpoint_ignored += o.checkpoint_ignored;
        self.checkpoint_damaged += o.checkpoint_damaged;
    }
}

/// The first disagreement of a run.
#[derive(Debug, Clone)]
pub struct Failure {
    pub step: usize,
    pub durability: Durability,
    /// The step's operation.
    pub op: String,
    /// Which check failed: "answer", "write after failed sync", "error",
    /// "power-loss image", "torn image", "kill image", "open", "panic".
    pub check: &'static str,
    /// A short description without run-specific numbers, to group failures.
    pub what: String,
    pub detail: String,
    /// What the run did up to the failure.
    pub summary: Summary,
}

impl Failure {
    /// Groups failures by what went wrong, not by which key or time.
    pub fn signature(&self) -> String {
        let op = self.op.split([' ', '{']).next().unwrap_or("");
        format!("{} after {op}: {}", self.check, self.what)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "step {} ({:?}) {}: {} check failed: {}",
            self.step, self.durability, self.op, self.check, self.detail
        )
    }
}

#[derive(Debug, Clone, Copy)]
enum Image {
    PowerLoss,
    Torn(u64),
    Kill,
}

struct Runner {
    durability: Durability,
    /// `Config::segment_size`: segments start at 64 KiB and double to it.
    segment_size: u64,
    nkeys: u32,
    clock: ManualClock,
    fs: SimFs,
    store: Option<Store<SimFs>>,
    model: Model,
    /// The last acquired token per key, and the opening that issued it
    /// (it may have gone stale).
    owners: BTreeMap<u32, (ClaimToken, u64)>,
    summary: Summary,
    /// A sync failed: writes must fail with `SyncFailed` until reopened.
    poisoned: bool,
    /// Under `Interval`, a sync fault fired, but possibly in the background
    /// flusher, which sets the poison flag only when its msync returns: a
    /// write may still succeed meanwhile (that sync had not failed yet when
    /// the write was acknowledged). The first `SyncFailed` makes it certain.
    poison_pending: bool,
    /// The armed fault's kind and errno.
    armed: Option<(&'static str, i32)>,
    failures_seen: u64,
    /// Filler keys used so far.
    fillers: u64,
    step: usize,
    op: String,
    /// Keys touched since the last full probe.
    touched: BTreeSet<u32>,
    since_full: usize,
    /// A checkpoint saved by `DamageCheckpoint` (put back later: stale).
    saved_checkpoint: Option<Vec<u8>>,
    /// A checkpoint of another store over the same keys.
    foreign_checkpoint: Vec<u8>,
}

type Res<T = ()> = Result<T, Failure>;

impl Runner {
    fn cfg(&self, clock: ManualClock) -> Config {
        cfg(self.durability, clock).segment_size(self.segment_size)
    }

    /// Counts what an open did with the checkpoint.
    fn note_open(&mut self, s: &Store<SimFs>) {
        let st = s.stats();
        if st.checkpoint_entries > 0 {
            self.summary.checkpoint_loads += 1;
        }
        if st.checkpoint_ignored.is_some() {
            self.summary.checkpoint_ignored += 1;
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn fail(
        &self,
        check: &'static str,
        what: impl Into<String>,
        detail: impl Into<String>,
    ) -> Failure {
        Failure {
            step: self.step,
            durability: self.durability,
            op: self.op.clone(),
            check,
            what: what.into(),
            detail: detail.into(),
            summary: self.summary,
        }
    }

    fn store(&self) -> &Store<SimFs> {
        self.store.as_ref().expect("store is open between steps")
    }

    /// Failures injected since `f0`; notes a failed sync.
    fn fired(&mut self, f0: u64) -> bool {
        let now = self.fs.failures();
        self.failures_seen = now;
        if now > f0 {
            self.summary.faults += now - f0;
            if self.armed.is_some_and(|(k, _)| is_sync(k)) {
                if matches!(self.durability, Durability::Interval(_)) {
                    self.poison_pending = true;
                } else {
                    self.poisoned = true;
                }
            }
            true
        } else {
            false
        }
    }

    /// Checks an error. `Ok(true)`: the call may have taken effect (a fault
    /// fired during it); `Ok(false)`: it certainly did not.
    fn expect_err(&mut self, e: &Error, fired: bool, what: &str) -> Res<bool> {
        let errno = self.armed.map(|(_, e)| e);
        let injected = matches!(e, Error::Io { source, .. } if source.raw_os_error() == errno);
        if fired && injected && self.armed.is_some_and(|(k, _)| is_sync(k)) {
            // This call's own sync failed: the store is poisoned now.
            self.poisoned = true;
        }
        if fired && (injected || matches!(e, Error::SyncFailed)) {
            return Ok(true);
        }
        if self.poison_pending && !self.poisoned && matches!(e, Error::SyncFailed) {
            // The first `SyncFailed` after a background sync failed: the
            // flusher may have raised the poison flag after this call wrote
            // its record and before it checked the flag, so the write may be
            // in the log (unacknowledged: either outcome is allowed).
            self.poisoned = true;
            return Ok(true);
        }
        if self.poisoned && matches!(e, Error::SyncFailed) {
            return Ok(false);
        }
        let why = if self.poisoned {
            "expected SyncFailed after a failed sync"
        } else {
            "no fault was injected"
        };
        Err(self.fail(
            "error",
            format!("{what}: {}", err_kind(e)),
            format!("{what}: {e} ({why})"),
        ))
    }

    /// A write was acknowledged (or performed) although a sync failed.
    fn check_not_poisoned(&self, fired: bool, what: &str) -> Res {
        if self.poisoned && !fired {
            return Err(self.fail(
                "write after failed sync",
                what.to_string(),
                format!("{what} succeeded after a failed sync; expected Error::SyncFailed"),
            ));
        }
        Ok(())
    }

    fn narrow(&mut self, k: u32, what: &str, pred: impl Fn(&St) -> bool) -> Res {
        let now = self.now();
        self.model.narrow(k, pred).map_err(|states| {
            self.fail(
                "answer",
                format!("{what}, model: {}", kinds(&states, now)),
                format!("key {k}: {what}; the model allows: {}", views(&states, now)),
            )
        })
    }

    fn open_live(&mut self) -> Res<Store<SimFs>> {
        for _attempt in 0..3 {
            // A fresh process: only a sync failing in this open poisons it.
            self.poisoned = false;
            self.poison_pending = false;
            let f0 = self.fs.failures();
            match Store::open_with(self.fs.clone(), "/db", self.cfg(self.clock.clone())) {
                Ok(s) => {
                    self.fired(f0);
                    self.note_open(&s);
                    return Ok(s);
                }
                Err(e) => {
                    if self.fired(f0) {
                        // The injected fault stopped the open; retry on a
                        // healthy disk.
                        self.fs.fail_at(None);
                        self.armed = None;
                        continue;
                    }
                    return Err(self.fail(
                        "open",
                        format!("reopen: {}", err_kind(&e)),
                        format!("reopen failed: {e}"),
                    ));
                }
            }
        }
        Err(self.fail("open", "reopen keeps failing", "reopen failed 3 times"))
    }

    fn step(&mut self, op: &Op) -> Res {
        let now = self.now();
        // A background sync (the `Interval` flusher) may have hit the fault.
        let f0 = self.failures_seen;
        self.fired(f0);
        let f0 = self.fs.failures();
        let files_before = self.fs.file_names(Path::new("/db"));
        let mut global = false;
        let nkeys = self.nkeys;
        match op {
            &Op::Insert { key: k, ttl_ms } => {
                let k = k % nkeys;
                self.touched.insert(k);
                let ttl = ttl_ms.clamp(1, 1 << 40);
                let r = self
                    .store()
                    .check_and_insert(key(k), Duration::from_millis(ttl));
                let fired = self.fired(f0);
                self.insert_answer(k, now, ttl, r, fired)?;
            }
            Op::Batch { keys, ttl_ms } => {
                let ks: Vec<u32> = keys.iter().map(|k| k % nkeys).collect();
                self.touched.extend(&ks);
                let raw: Vec<Vec<u8>> = ks.iter().map(|&k| key(k)).collect();
                let ttl = (*ttl_ms).clamp(1, 1 << 40);
                let r = self
                    .store()
                    .check_and_insert_batch(&raw, Duration::from_millis(ttl));
                let fired = self.fired(f0);
                match r {
                    Ok(out) => {
                        assert_eq!(out.len(), ks.len());
                        for (&k, o) in ks.iter().zip(out) {
                            self.insert_answer(k, now, ttl, Ok(o), fired)?;
                        }
                    }
                    Err(e) => {
                        if self.expect_err(&e, fired, "batch")? {
                            for &k in &ks {
                                self.model.maybe(k, |s| {
                                    (!s.live(now)).then_some(St::Plain { exp: now + ttl })
                                });
                            }
                        }
                    }
                }
            }
            &Op::Contains { key: k } => {
                let k = k % nkeys;
                self.touched.insert(k);
                let r = self.store().contains(key(k));
                let fired = self.fired(f0);
                match r {
                    Ok(b) => self.narrow(k, &format!("contains said {b}"), |s| s.live(now) == b)?,
                    Err(e) => {
                        self.expect_err(&e, fired, "contains")?;
                    }
                }
            }
            &Op::Claim { key: k, lease_ms } => {
                let k = k % nkeys;
                self.touched.insert(k);
                let lease = lease_ms.clamp(1, 1 << 40);
                let r = self
                    .store()
                    .claim(key(k), Duration::from_millis(lease), None);
                let fired = self.fired(f0);
                self.claim_answer(k, now, lease, r, fired)?;
            }
            Op::ClaimBatch { keys, lease_ms } => {
                let ks: Vec<u32> = keys.iter().map(|k| k % nkeys).collect();
                self.touched.extend(&ks);
                let items: Vec<(Vec<u8>, Option<u64>)> =
                    ks.iter().map(|&k| (key(k), None)).collect();
                let lease = (*lease_ms).clamp(1, 1 << 40);
                let r = self
                    .store()
                    .claim_batch(&items, Duration::from_millis(lease));
                let fired = self.fired(f0);
                match r {
                    Ok(out) => {
                        assert_eq!(out.len(), ks.len());
                        // As if claimed one after another.
                        for (&k, c) in ks.iter().zip(out) {
                            self.summary.batch_claims +=
                                u64::from(matches!(c, Ok(Claim::Acquired(_))));
                            self.claim_answer(k, now, lease, c, fired)?;
                        }
                    }
                    Err(e) => {
                        if self.expect_err(&e, fired, "claim batch")? {
                            for &k in &ks {
                                self.claim_maybe(k, now, lease);
                            }
                        }
                    }
                }
            }
            &Op::Complete {
                key: k,
                ttl_ms,
                resp,
            } => {
                let Some(k) = pick_held(&self.owners, k) else {
                    return Ok(());
                };
                self.touched.insert(k);
                let (tok, g) = self.owners[&k].clone();
                let ttl = ttl_ms.clamp(1, 1 << 40);
                let body = response(k, resp);
                let r = self
                    .store()
                    .complete(&tok, body.as_deref(), Duration::from_millis(ttl));
                let fired = self.fired(f0);
                let done = completed(body, now, ttl);
                self.finish_answer(k, &tok, g, now, Finish::Complete(done), r, fired)?;
            }
            &Op::Release { key: k } => {
                let Some(k) = pick_held(&self.owners, k) else {
                    return Ok(());
                };
                self.touched.insert(k);
                let (tok, g) = self.owners[&k].clone();
                let r = self.store().release(&tok);
                let fired = self.fired(f0);
                self.finish_answer(k, &tok, g, now, Finish::Release, r, fired)?;
            }
            &Op::Extend { key: k, lease_ms } => {
                let Some(k) = pick_held(&self.owners, k) else {
                    return Ok(());
                };
                self.touched.insert(k);
                let (tok, g) = self.owners[&k].clone();
                let lease = lease_ms.clamp(1, 1 << 40);
                let r = self.store().extend(&tok, Duration::from_millis(lease));
                let fired = self.fired(f0);
                let r = match r {
                    Ok(until) => {
                        if ms(until) != now + lease {
                            return Err(self.fail(
                                "answer",
                                "extend said a wrong lease end",
                                format!(
                                    "key {k}: extend by {lease} ms at {now} said the lease ends at {}",
                                    ms(until)
                                ),
                            ));
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                self.finish_answer(k, &tok, g, now, Finish::Extend(now + lease), r, fired)?;
            }
            Op::FinishBatch {
                keys,
                ttl_ms,
                resp,
                release,
            } => {
                // Held keys, possibly repeated (a repeated token is stale
                // after its first occurrence).
                let held: Vec<(u32, ClaimToken, u64)> = keys
                    .iter()
                    .filter_map(|&k| pick_held(&self.owners, k))
                    .map(|k| (k, self.owners[&k].0.clone(), self.owners[&k].1))
                    .collect();
                self.touched.extend(held.iter().map(|h| h.0));
                let ttl = (*ttl_ms).clamp(1, 1 << 40);
                let bodies: Vec<Option<Vec<u8>>> =
                    held.iter().map(|(k, ..)| response(*k, *resp)).collect();
                let r = if *release {
                    let toks: Vec<&ClaimToken> = held.iter().map(|h| &h.1).collect();
                    self.store().release_batch(&toks)
                } else {
                    let items: Vec<(&ClaimToken, Option<&[u8]>)> = held
                        .iter()
                        .zip(&bodies)
                        .map(|(h, b)| (&h.1, b.as_deref()))
                        .collect();
                    self.store()
                        .complete_batch(&items, Duration::from_millis(ttl))
                };
                let fired = self.fired(f0);
                let dones: Vec<Option<St>> = bodies
                    .into_iter()
                    .map(|b| (!*release).then(|| completed(b, now, ttl)))
                    .collect();
                match r {
                    Ok(out) => {
                        assert_eq!(out.len(), held.len());
                        for ((h, done), a) in held.iter().zip(dones).zip(out) {
                            self.summary.batch_finishes += u64::from(a.is_ok());
                            let how = done.map_or(Finish::Release, Finish::Complete);
                            self.finish_answer(h.0, &h.1, h.2, now, how, a, fired)?;
                        }
                    }
                    Err(e) => {
                        if self.expect_err(&e, fired, "finish batch")? {
                            for ((k, tok, g), done) in held.iter().zip(dones) {
                                let t = tok.id();
                                let live_tok = *g == self.model.gen;
                                let next = move |s: &St| match &done {
                                    Some(d) => d.clone(),
                                    None => St::Absent { rm: s.exp() },
                                };
                                self.model.maybe(*k, |s| {
                                    (live_tok && s.owned_by(t, *g, now)).then(|| next(s))
                                });
                            }
                        }
                    }
                }
            }
            &Op::Remove { key: k } => {
                let k = k % nkeys;
                self.touched.insert(k);
                let r = self.store().remove(key(k));
                let fired = self.fired(f0);
                let removed = |s: &St| St::Absent { rm: s.exp() };
                match r {
                    Ok(true) => {
                        self.check_not_poisoned(fired, "remove")?;
                        self.narrow(k, "remove said present", |s| s.live(now))?;
                        self.model.ack(k, now, removed);
                    }
                    Ok(false) => self.narrow(k, "remove said absent", |s| !s.live(now))?,
                    Err(e) => {
                        if self.expect_err(&e, fired, "remove")? {
                            self.model.maybe(k, |s| s.live(now).then(|| removed(s)));
                        }
                    }
                }
            }
            &Op::Fill { n, ttl_ms } => {
                let ttl = ttl_ms.clamp(1, 1 << 40);
                let raw: Vec<Vec<u8>> = (0..n as u64 % 76)
                    .map(|_| {
                        self.fillers += 1;
                        let mut v = format!("fill-{}-", self.fillers).into_bytes();
                        v.resize(400, b'f');
                        v
                    })
                    .collect();
                let r = self
                    .store()
                    .check_and_insert_batch(&raw, Duration::from_millis(ttl));
                let fired = self.fired(f0);
                match r {
                    Ok(out) => {
                        if !out.is_empty() {
                            self.check_not_poisoned(fired, "insert")?;
                        }
                        if let Some(o) = out.iter().find(|o| !o.is_inserted()) {
                            return Err(self.fail(
                                "answer",
                                "fresh filler key said duplicate",
                                format!("a never-used filler key answered {o:?}"),
                            ));
                        }
                    }
                    Err(e) => {
                        self.expect_err(&e, fired, "fill")?;
                    }
                }
            }
            &Op::Advance { ms } => {
                self.clock.advance(Duration::from_millis(ms % 120_000));
                self.model.clock_moved(self.now());
                global = true;
            }
            &Op::Rewind { ms } => {
                self.clock
                    .set_ms(now.saturating_sub(ms % 120_000).max(START_MS / 2));
                global = true;
            }
            Op::Sync => {
                let r = self.store().sync();
                let fired = self.fired(f0);
                match r {
                    Ok(()) => self.model.synced(),
                    Err(e) => {
                        self.expect_err(&e, fired, "sync")?;
                    }
                }
                global = true;
            }
            Op::Gc | Op::Compact => {
                let r = if matches!(op, Op::Gc) {
                    self.store().gc_now()
                } else {
                    self.store().compact()
                };
                let fired = self.fired(f0);
                match r {
                    Ok(r) => {
                        self.summary.segments_reclaimed += r.segments_deleted + r.segments_compacted
                    }
                    Err(e) => {
                        self.expect_err(&e, fired, "gc")?;
                    }
                }
                global = true;
            }
            Op::Reopen => {
                drop(self.store.take()); // a clean close syncs, if it can
                self.fired(f0);
                let s = self.open_live()?;
                self.store = Some(s);
                self.model.restarted(false);
                self.summary.reopens += 1;
                global = true;
            }
            &Op::Crash { kind, seed } => {
                let mode = match kind % 3 {
                    0 => CrashMode::Kill,
                    1 => CrashMode::DropUnsynced,
                    _ => CrashMode::Torn(seed),
                };
                let crashed = self.fs.crash(mode);
                // The dead process's handle does not touch the new image.
                drop(self.store.take());
                self.fs = crashed;
                self.failures_seen = 0;
                self.armed = None;
                self.poisoned = false;
                self.poison_pending = false;
                self.owners.clear();
                let s = self.open_live()?;
                self.store = Some(s);
                self.model.restarted(!matches!(mode, CrashMode::Kill));
                self.summary.crashes += 1;
                // Every key at once, through the batched lookup (the single
                // one is checked by `Op::Contains`).
                let keys: Vec<_> = (0..nkeys).map(key).collect();
                match self.store().contains_batch(&keys) {
                    Ok(answers) => {
                        for (k, b) in (0..nkeys).zip(answers) {
                            self.narrow(
                                k,
                                &format!("after {mode:?}, contains_batch said {b}"),
                                |s| s.live(now) == b,
                            )?
                        }
                    }
                    Err(e) => self
                        .expect_err(&e, false, "contains_batch after crash")
                        .map(|_| ())?,
                }
                global = true;
            }
            Op::Checkpoint => {
                let r = self.store().checkpoint();
                let fired = self.fired(f0);
                if let Err(e) = r {
                    self.expect_err(&e, fired, "checkpoint")?;
                }
                global = true;
            }
            &Op::DamageCheckpoint { how, at } => {
                let path = Path::new(CKPT);
                let cur = self.fs.read_file(path);
                match (how % 6, cur) {
                    (0, Some(mut b)) if !b.is_empty() => {
                        let i = at as usize % b.len();
                        b[i] ^= 1 << (at % 8);
                        self.fs.write_file(path, &b);
                    }
                    (1, Some(b)) => self.fs.write_file(path, &b[..at as usize % (b.len() + 1)]),
                    (2, Some(_)) => self.fs.delete_file(path),
                    (3, Some(b)) => {
                        self.saved_checkpoint = Some(b);
                        return Ok(());
                    }
                    (4, _) => match self.saved_checkpoint.clone() {
                        Some(b) => self.fs.write_file(path, &b),
                        None => return Ok(()),
                    },
                    (5, _) => self.fs.write_file(path, &self.foreign_checkpoint.clone()),
                    _ => return Ok(()),
                }
                self.summary.checkpoint_damaged += 1;
                global = true;
            }
            &Op::Fail { kind, nth, enospc } => {
                let kind = FAIL_KINDS[kind as usize % FAIL_KINDS.len()];
                let errno = if enospc { libc::ENOSPC } else { libc::EIO };
                self.fs.fail_at(Some(Fault {
                    at: nth as u64 % 4,
                    sticky: false,
                    errno,
                    only: Some(kind),
                }));
                self.armed = Some((kind, errno));
                // Nothing happened yet: nothing to check.
                return Ok(());
            }
        }
        // Forget tokens that can no longer own their key.
        let model = &mut self.model;
        self.owners.retain(|k, (t, g)| {
            model.km(*k).cands.iter().any(
                |s| matches!(s, St::Claimed { tok: Some(x), gen, .. } if *x == t.id() && gen == g),
            )
        });
        let fired = self.fs.failures() > f0;
        let rolled = self.fs.file_names(Path::new("/db")) != files_before;
        self.oracle(global || fired || rolled)
    }

    fn insert_answer(
        &mut self,
        k: u32,
        now: u64,
        ttl: u64,
        r: Result<Outcome, Error>,
        fired: bool,
    ) -> Res {
        match r {
            Ok(Outcome::Inserted) => {
                self.check_not_poisoned(fired, "insert")?;
                self.narrow(k, "insert said inserted", |s| !s.live(now))?;
                self.model.ack(k, now, |_| St::Plain { exp: now + ttl });
            }
            Ok(Outcome::Duplicate { expires_at }) => {
                let e = ms(expires_at);
                self.narrow(k, "insert said duplicate", |s| {
                    s.view(now).until() == Some(e)
                })?;
            }
            Err(e) => {
                if self.expect_err(&e, fired, "insert")? {
                    self.model.maybe(k, |s| {
                        (!s.live(now)).then_some(St::Plain { exp: now + ttl })
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks one answer of `claim` (or one item of `claim_batch`).
    fn claim_answer(
        &mut self,
        k: u32,
        now: u64,
        lease: u64,
        r: Result<Claim, Error>,
        fired: bool,
    ) -> Res {
        let cur = self.model.gen;
        match r {
            Ok(Claim::Acquired(tok)) => {
                self.check_not_poisoned(fired, "claim acquired")?;
                let cands = self.model.candidates(k, false);
                if cands.iter().all(|s| s.orphaned(cur, now)) {
                    self.summary.takeovers += 1;
                }
                // Absent, or a claim orphaned by a restart: taken over.
                self.narrow(k, "claim acquired", |s| {
                    !s.live(now) || s.orphaned(cur, now)
                })?;
                let t = tok.id();
                self.model.ack(k, now, |_| St::Claimed {
                    lease: now + lease,
                    tok: Some(t),
                    gen: cur,
                });
                self.owners.insert(k, (tok, cur));
                self.summary.claims += 1;
            }
            Ok(c) => {
                let v = claim_view(&c);
                self.narrow(k, &format!("claim said {}", v.short()), |s| {
                    s.view(now) == v && !s.orphaned(cur, now)
                })?;
            }
            Err(e) => {
                if self.expect_err(&e, fired, "claim")? {
                    self.claim_maybe(k, now, lease);
                }
            }
        }
        Ok(())
    }

    /// A claim that may or may not have been written (its call failed).
    fn claim_maybe(&mut self, k: u32, now: u64, lease: u64) {
        let cur = self.model.gen;
        self.model.maybe(k, |s| {
            (!s.live(now) || s.orphaned(cur, now)).then_some(St::Claimed {
                lease: now + lease,
                tok: None,
                gen: cur,
            })
        });
    }

    /// Checks one answer of `complete` (`done`: the state it makes) or
    /// `release` (`done == None`), single or one item of a batch.
    #[allow(clippy::too_many_arguments)]
    fn finish_answer(
        &mut self,
        k: u32,
        tok: &ClaimToken,
        g: u64,
        now: u64,
        how: Finish,
        r: Result<(), Error>,
        fired: bool,
    ) -> Res {
        let t = tok.id();
        // A token of an earlier opening owns nothing.
        let live_tok = g == self.model.gen;
        let owns = move |s: &St| live_tok && s.owned_by(t, g, now);
        let name = match how {
            Finish::Complete(_) => "complete",
            Finish::Release => "release",
            Finish::Extend(_) => "extend",
        };
        let next = move |s: &St| match &how {
            Finish::Complete(d) => d.clone(),
            Finish::Release => St::Absent { rm: s.exp() },
            // The same claim (token, opening), its lease moved.
            &Finish::Extend(lease) => St::Claimed {
                lease,
                tok: Some(t),
                gen: g,
            },
        };
        match r {
            Ok(()) => {
                self.check_not_poisoned(fired, name)?;
                self.narrow(k, &format!("{name} succeeded"), owns)?;
                self.model.ack(k, now, &next);
                match name {
                    "complete" => self.summary.completes += 1,
                    "extend" => self.summary.extends += 1,
                    _ => {}
                }
                // An extended claim is still this token's.
                if name != "extend" {
                    self.owners.remove(&k);
                }
            }
            Err(Error::StaleToken { .. }) => {
                self.narrow(k, &format!("{name} said StaleToken"), |s| !owns(s))?;
                self.owners.remove(&k);
            }
            Err(e) => {
                if self.expect_err(&e, fired, name)? {
                    self.model.maybe(k, |s| owns(s).then(|| next(s)));
                }
            }
        }
        Ok(())
    }

    /// The per-step oracle: crash images opened and compared with the model.
    fn oracle(&mut self, global: bool) -> Res {
        self.since_full += 1;
        let keys: Vec<u32> = if global || self.since_full >= FULL_EVERY {
            self.since_full = 0;
            self.touched.clear();
            (0..self.nkeys).collect()
        } else {
            std::mem::take(&mut self.touched).into_iter().collect()
        };
        self.check_image(Image::PowerLoss, &keys)?;
        // Under `Immediate` the durable state is the live one: a kill image
        // would add nothing.
        if !self.model.immediate {
            self.check_image(Image::Kill, &keys)?;
        }
        if self.step % TORN_EVERY == TORN_EVERY - 1 {
            let seed = (self.step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.nkeys as u64;
            self.check_image(Image::Torn(seed), &keys)?;
            self.summary.torn_opens += 1;
        }
        Ok(())
    }

    fn check_image(&mut self, which: Image, keys: &[u32]) -> Res {
        let now = self.now();
        let img = self.fs.crash(match which {
            Image::PowerLoss => CrashMode::DropUnsynced,
            Image::Torn(seed) => CrashMode::Torn(seed),
            Image::Kill => CrashMode::Kill,
        });
        let (check, name) = match which {
            Image::PowerLoss => ("power-loss image", "power loss"),
            Image::Torn(_) => ("torn image", "torn power loss"),
            Image::Kill => ("kill image", "kill"),
        };
        let probe = Store::open_with(img, "/db", self.cfg(ManualClock::new(now))).map_err(|e| {
            self.fail(
                "open",
                format!("{name} image does not open: {}", err_kind(&e)),
                format!("the store a {name} now would leave does not open: {e}"),
            )
        })?;
        self.summary.oracle_opens += 1;
        self.note_open(&probe);
        for &k in keys {
            let got = match probe.peek(key(k)) {
                // Every claim in a freshly opened image is an earlier
                // opening's: orphaned.
                Ok(KeyState::InProgress {
                    orphaned: false, ..
                }) => {
                    return Err(self.fail(
                        check,
                        "claim in a fresh opening not orphaned",
                        format!("key {k} on the {name} image: a claim not marked orphaned"),
                    ))
                }
                Ok(st) => peek_view(&st),
                Err(e) => {
                    return Err(self.fail(
                        "error",
                        format!("probe on {name} image: {}", err_kind(&e)),
                        format!("probing key {k} on the {name} image: {e}"),
                    ))
                }
            };
            self.summary.oracle_keys += 1;
            let allowed = self.model.candidates(k, !matches!(which, Image::Kill));
            if !allowed.iter().any(|s| s.view(now) == got) {
                let what = format!("key {}, expected {}", got.short(), kinds(&allowed, now));
                let got_s = views(
                    &[match &got {
                        View::Absent => St::Absent { rm: 0 },
                        View::InProgress { lease } => St::Claimed {
                            lease: *lease,
                            tok: None,
                            gen: 0,
                        },
                        View::Completed { resp, exp } => St::Done {
                            resp: resp.clone(),
                            exp: *exp,
                        },
                    }],
                    now,
                );
                return Err(self.fail(
                    check,
                    what,
                    format!(
                        "after a {name} now, key {k} reads back {got_s}; acknowledged: {}",
                        views(&allowed, now)
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn peek_view(st: &KeyState) -> View {
    match st {
        KeyState::InProgress {
            lease_expires_at, ..
        } => View::InProgress {
            lease: ms(*lease_expires_at),
        },
        KeyState::Completed {
            response,
            expires_at,
        } => View::Completed {
            resp: response.clone(),
            exp: ms(*expires_at),
        },
        _ => View::Absent,
    }
}

fn claim_view(c: &Claim) -> View {
    match c {
        Claim::Acquired(_) => View::Absent,
        Claim::InProgress { lease_expires_at } => View::InProgress {
            lease: ms(*lease_expires_at),
        },
        Claim::Completed {
            response,
            expires_at,
        } => View::Completed {
            resp: response.clone(),
            exp: ms(*expires_at),
        },
    }
}

fn err_kind(e: &Error) -> String {
    match e {
        Error::Io { op, .. } => format!("Io({op})"),
        Error::Corruption { reason, .. } => format!("Corruption({reason})"),
        other => {
            let s = format!("{other:?}");
            s.split([' ', '{', '(']).next().unwrap_or("").to_string()
        }
    }
}

/// The configuration of every store a scenario opens: small segments,
/// GC and checkpoints only when the scenario says (no background threads
/// but the `Interval` flusher), so runs are repeatable.
fn cfg(durability: Durability, clock: ManualClock) -> Config {
    Config::default()
        .durability(durability)
        .segment_size(64 << 10)
        .gc_interval(None)
        .checkpoints(Checkpoints::OnCloseAndGc)
        .clock(clock)
}

/// The checkpoint of another store over the same keys (same sizes, so the
/// same segment layout): what a copy from the wrong directory looks like.
fn foreign_checkpoint(nkeys: u32, segment_size: u64) -> Vec<u8> {
    let fs = SimFs::with_seed(7);
    let clock = ManualClock::new(START_MS);
    let config = cfg(Durability::None, clock).segment_size(segment_size);
    let s = Store::open_with(fs.clone(), "/db", config)
        .expect("a new store on a healthy simulated disk opens");
    for k in 0..nkeys {
        let _ = s
            .check_and_insert(key(k), Duration::from_secs(3600))
            .expect("insert on a healthy simulated disk");
    }
    s.close().expect("close on a healthy simulated disk");
    fs.read_file(Path::new(CKPT)).unwrap_or_default()
}

/// Runs `ops` against a fresh store on a simulated file system, checking
/// every answer and, after every step, crash images against the model.
/// Returns the first disagreement (a panic in the store counts as one).
pub fn check(durability: Durability, nkeys: u32, ops: &[Op]) -> Result<Summary, Failure> {
    check_with(durability, nkeys, ops, SMALL_SEGMENT)
}

/// The scenarios' `Config::segment_size`: every segment is the first
/// (64 KiB) size, so segments roll often.
pub const SMALL_SEGMENT: u64 = 64 << 10;

/// [`check`] with segments that grow: 64 KiB first, doubling up to
/// `segment_size` (so sealed segments of mixed sizes are rolled, collected,
/// compacted and checkpointed).
pub fn check_with(
    durability: Durability,
    nkeys: u32,
    ops: &[Op],
    segment_size: u64,
) -> Result<Summary, Failure> {
    let nkeys = nkeys.max(1);
    let clock = ManualClock::new(START_MS);
    let fs = SimFs::with_seed(0x5EED ^ nkeys as u64);
    let mut r = Runner {
        durability,
        segment_size,
        nkeys,
        clock: clock.clone(),
        fs,
        store: None,
        model: Model {
            keys: BTreeMap::new(),
            immediate: durability == Durability::Immediate,
            hi: START_MS,
            gen: 0,
        },
        owners: BTreeMap::new(),
        summary: Summary::default(),
        poisoned: false,
        poison_pending: false,
        armed: None,
        failures_seen: 0,
        fillers: 0,
        step: 0,
        op: "open".into(),
        touched: BTreeSet::new(),
        since_full: 0,
        saved_checkpoint: None,
        foreign_checkpoint: foreign_checkpoint(nkeys, segment_size),
    };
    let s = Store::open_with(r.fs.clone(), "/db", r.cfg(clock))
        .map_err(|e| r.fail("open", "new store", format!("opening a new store: {e}")))?;
    r.store = Some(s);
    for (step, op) in ops.iter().enumerate() {
        r.step = step;
        r.op = format!("{op:?}");
        r.summary.steps += 1;
        match catch_unwind(AssertUnwindSafe(|| r.step(op))) {
            Ok(Ok(())) => {}
            Ok(Err(f)) => return Err(f),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let what: String = msg.chars().take(60).collect();
                return Err(r.fail("panic", what, msg));
            }
        }
    }
    Ok(r.summary)
}

/// `check`, panicking with a description on the first disagreement.
pub fn run(durability: Durability, nkeys: u32, ops: &[Op]) -> Summary {
    check(durability, nkeys, ops).unwrap_or_else(|f| panic!("{f}"))
}

/// Makes a failing scenario smaller while it still fails the same way
/// (same [`Failure::signature`]): cuts everything after the failing step,
/// then removes chunks of steps, halving the chunk size down to single
/// steps, then simplifies the remaining ones.
pub fn shrink(durability: Durability, nkeys: u32, ops: &[Op], f: &Failure) -> (Vec<Op>, Failure) {
    let sig = f.signature();
    let fails = |ops: &[Op]| match check(durability, nkeys, ops) {
        Err(g) if g.signature() == sig => Some(g),
        _ => None,
    };
    let mut best = ops[..(f.step + 1).min(ops.len())].to_vec();
    let mut best_f = match fails(&best) {
        Some(g) => g,
        None => return (ops.to_vec(), f.clone()),
    };
    let mut chunk = best.len().div_ceil(2);
    while chunk >= 1 {
        let mut i = 0;
        while i < best.len() {
            let mut cand = best.clone();
            cand.drain(i..(i + chunk).min(cand.len()));
            if let Some(g) = fails(&cand) {
                best = cand[..(g.step + 1).min(cand.len())].to_vec();
                best_f = g;
            } else {
                i += chunk;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    // Simplify: batches to fewer keys, round numbers.
    for i in 0..best.len() {
        let simpler: Vec<Op> = match &best[i] {
            Op::Batch { keys, ttl_ms } if keys.len() > 1 => (0..keys.len())
                .map(|j| {
                    let mut ks = keys.clone();
                    ks.remove(j);
                    Op::Batch {
                        keys: ks,
                        ttl_ms: *ttl_ms,
                    }
                })
                .collect(),
            Op::Crash { kind, seed } if *seed != 0 && kind % 3 != 2 => vec![Op::Crash {
                kind: *kind,
                seed: 0,
            }],
            _ => vec![],
        };
        for s in simpler {
            let mut cand = best.clone();
            cand[i] = s;
            if let Some(g) = fails(&cand) {
                best = cand;
                best_f = g;
                break;
            }
        }
    }
    (best, best_f)
}

/// The seeded scenario the model check and the hunting tool run: a
/// durability mode, a key count and 500 random steps.
pub fn scenario(seed: u64) -> (Durability, u32, Vec<Op>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let durability = match rng.u8(..3) {
        0 => Durability::Immediate,
        1 => Durability::None,
        _ => Durability::Interval(Duration::from_millis(1 + rng.u64(..5))),
    };
    let nkeys = rng.u32(8..200);
    let ops = random_ops(&mut rng, 500, nkeys);
    (durability, nkeys, ops)
}

/// A random scenario from a seed: the generator the ordinary tests use.
///
/// It aims at the dangerous states: a few hot keys removed and re-inserted
/// with shorter and longer TTLs, completes with TTLs shorter than the
/// remaining lease, large responses and 64 KiB segments (so segments roll
/// and GC and compaction run often), clock jumps both ways, and injected
/// failures of syncs, renames, allocations and opens interleaved with GC,
/// compaction, rolls, reopens and crashes; and, 1.4 times a scenario on average, the
/// fixed layout of `horizon_ops` in which a wrong horizon loses a removal.
pub fn random_ops(rng: &mut fastrand::Rng, steps: usize, nkeys: u32) -> Vec<Op> {
    let mut ops = Vec::with_capacity(steps + 1);
    let mut hot: Vec<u32> = Vec::new();
    let ttl = |rng: &mut fastrand::Rng| match rng.u8(..3) {
        0 => rng.u64(1..300),
        1 => rng.u64(300..5_000),
        _ => rng.u64(5_000..60_000),
    };
    while ops.len() < steps {
        let key = if !hot.is_empty() && rng.bool() {
            hot[rng.usize(..hot.len())]
        } else {
            let k = rng.u32(..nkeys);
            if hot.len() < 6 {
                hot.push(k);
            } else {
                hot[rng.usize(..6)] = k;
            }
            k
        };
        let op = match rng.u16(..1000) {
            0..=204 => Op::Insert {
                key,
                ttl_ms: ttl(rng),
            },
            205..=219 => Op::Extend {
                key,
                lease_ms: rng.u64(1..4_000),
            },
            220..=239 => Op::ClaimBatch {
                keys: (0..rng.usize(1..8))
                    .map(|_| {
                        if rng.u8(..3) == 0 {
                            key
                        } else {
                            rng.u32(..nkeys)
                        }
                    })
                    .collect(),
                lease_ms: rng.u64(1..4_000),
            },
            240..=259 => Op::FinishBatch {
                keys: (0..rng.usize(1..6)).map(|_| rng.u32(..nkeys)).collect(),
                ttl_ms: ttl(rng),
                resp: rng.u8(..4),
                release: rng.u8(..4) == 0,
            },
            260..=309 => Op::Batch {
                keys: (0..rng.usize(1..12))
                    .map(|_| {
                        if rng.u8(..4) == 0 {
                            key
                        } else {
                            rng.u32(..nkeys)
                        }
                    })
                    .collect(),
                ttl_ms: ttl(rng),
            },
            310..=359 | 919..=929 => Op::Contains { key },
            360..=439 => Op::Claim {
                key,
                lease_ms: rng.u64(1..4_000),
            },
            440..=509 => Op::Complete {
                key,
                ttl_ms: if rng.bool() {
                    rng.u64(1..300)
                } else {
                    ttl(rng)
                },
                resp: rng.u8(..4),
            },
            510..=529 => Op::Release { key },
            530..=619 => {
                ops.push(Op::Remove { key });
                // Re-inserted at once with another TTL, shorter or longer.
                if rng.bool() {
                    Op::Insert {
                        key,
                        ttl_ms: ttl(rng),
                    }
                } else {
                    continue;
                }
            }
            620..=709 => Op::Advance {
                ms: if rng.u8(..8) == 0 {
                    rng.u64(5_000..60_000)
                } else {
                    rng.u64(..1_500)
                },
            },
            710..=724 => Op::Rewind {
                ms: rng.u64(1..6_000),
            },
            725..=754 => Op::Sync,
            755..=761 => Op::Checkpoint,
            762..=769 => Op::DamageCheckpoint {
                how: rng.u8(..6),
                at: rng.u32(..),
            },
            770..=809 => Op::Gc,
            810..=839 => Op::Compact,
            840..=859 => Op::Reopen,
            890..=915 => Op::Fill {
                n: rng.u8(10..76),
                ttl_ms: ttl(rng),
            },
            916..=918 => {
                horizon_ops(rng, key, &mut ops);
                continue;
            }
            860..=889 => Op::Crash {
                kind: rng.u8(..3),
                seed: rng.u64(..),
            },
            930.. => Op::Fail {
                // Syncs most often.
                kind: [0, 0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 7][rng.usize(..12)],
                nth: rng.u8(..3),
                enospc: rng.u8(..4) == 0,
            },
        };
        ops.push(op);
    }
    ops.truncate(steps);
    ops
}

/// The states a wrong horizon breaks (see `engine/src/gc.rs`): `key`
/// inserted with a long TTL into a segment kept mostly live by long-lived
/// fillers; segments rolled with short-lived fillers; then the key shadowed
/// by a short-lived record (a removal, a short re-insert, a short claim, or
/// a claim completed with a short TTL) in a segment of short-lived records
/// only; that segment rolled and sealed; the clock moved past the short
/// TTLs but not the long one; GC (0.5 threshold); sometimes a reopen or a
/// crash. (The oracle opens a crash image after every step anyway.) If the
/// shadowing record's horizon forgot the long insert, GC deletes its
/// segment whole (or compaction drops it) and replay brings the insert back.
fn horizon_ops(rng: &mut fastrand::Rng, key: u32, ops: &mut Vec<Op>) {
    let long = |rng: &mut fastrand::Rng| rng.u64(20_000..60_000);
    let short = |rng: &mut fastrand::Rng| rng.u64(1..300);
    // 64 KiB segments, about 430 bytes per filler.
    ops.push(Op::Fill {
        n: rng.u8(30..76),
        ttl_ms: long(rng),
    });
    ops.push(Op::Insert {
        key,
        ttl_ms: long(rng),
    });
    ops.push(Op::Fill {
        n: rng.u8(30..76),
        ttl_ms: long(rng),
    });
    let fill_short = |rng: &mut fastrand::Rng, ops: &mut Vec<Op>| {
        for _ in 0..3 {
            ops.push(Op::Fill {
                n: rng.u8(50..76),
                ttl_ms: short(rng),
            });
        }
    };
    fill_short(rng, ops);
    ops.push(Op::Remove { key });
    match rng.u8(..4) {
        0 => {}
        1 => ops.push(Op::Insert {
            key,
            ttl_ms: short(rng),
        }),
        2 => ops.push(Op::Claim {
            key,
            lease_ms: short(rng),
        }),
        _ => {
            ops.push(Op::Claim {
                key,
                lease_ms: rng.u64(1..600),
            });
            ops.push(Op::Complete {
                key,
                ttl_ms: short(rng),
                resp: rng.u8(..3),
            });
        }
    }
    fill_short(rng, ops);
    ops.push(Op::Advance {
        ms: rng.u64(600..5_000),
    });
    // Not `Compact`: it would first compact the long insert's segment (its
    // dead key record), which hides the fault.
    ops.push(Op::Gc);
    match rng.u8(..4) {
        0 => ops.push(Op::Reopen),
        1 => ops.push(Op::Crash {
            kind: rng.u8(..3),
            seed: rng.u64(..),
        }),
        _ => {}
    }
}

/// Decodes fuzzer bytes into a durability mode, a key count and operations
/// (the same `Op` set as `random_ops`). Every byte string decodes to
/// something.
pub fn decode_ops(data: &[u8]) -> (Durability, u32, Vec<Op>) {
    let mut it = data.iter().copied();
    let mut next = move || it.next();
    let durability = match next().unwrap_or(0) % 3 {
        0 => Durability::Immediate,
        1 => Durability::None,
        _ => Durability::Interval(Duration::from_millis(2)),
    };
    let nkeys = 1 + next().unwrap_or(16) as u32 % 64;
    let mut ops = Vec::new();
    while let Some(b) = next() {
        let arg = next().unwrap_or(0);
        let key = arg as u32;
        let x = next().unwrap_or(0);
        // Short, medium and long TTLs from one byte.
        let ttl_ms = match x >> 6 {
            0 => 1 + x as u64 * 4,
            1 | 2 => 300 + (x as u64 & 0x7f) * 40,
            _ => 5_000 + (x as u64 & 0x3f) * 900,
        };
        ops.push(match b % 26 {
            0..=3 => Op::Insert { key, ttl_ms },
            4 => Op::Batch {
                keys: (0..(x % 8) as u32 + 1)
                    .map(|i| key.wrapping_add(i * 7))
                    .collect(),
                ttl_ms,
            },
            5 => Op::Contains { key },
            6 => Op::Claim {
                key,
                lease_ms: ttl_ms,
            },
            7 => Op::Complete {
                key,
                ttl_ms,
                resp: x,
            },
            8 => Op::Release { key },
            9 | 10 => Op::Remove { key },
            11 => Op::Advance {
                ms: arg as u64 * 40,
            },
            12 => Op::Rewind {
                ms: arg as u64 * 40,
            },
            13 => Op::Sync,
            14 => Op::Gc,
            15 => Op::Compact,
            16 => Op::Reopen,
            17 => Op::Crash {
                kind: arg,
                seed: x as u64,
            },
            18 => Op::Fill { n: arg, ttl_ms },
            19 => Op::ClaimBatch {
                keys: (0..(x % 6) as u32 + 1)
                    .map(|i| key.wrapping_add(i * (x as u32 & 3)))
                    .collect(),
                lease_ms: ttl_ms,
            },
            20 => Op::FinishBatch {
                keys: (0..(x % 5) as u32 + 1)
                    .map(|i| key.wrapping_add(i * 3))
                    .collect(),
                ttl_ms,
                resp: x,
                release: arg & 7 == 0,
            },
            21 => Op::Checkpoint,
            22 => Op::DamageCheckpoint {
                how: arg,
                at: x as u32 * 97,
            },
            23 => Op::Extend {
                key,
                lease_ms: ttl_ms,
            },
            _ => Op::Fail {
                kind: arg,
                nth: x % 3,
                enospc: x & 0x80 != 0,
            },
        });
        if ops.len() >= 2_000 {
            break;
        }
    }
    (durability, nkeys, ops)
}

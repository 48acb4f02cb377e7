//! A reference model of the store, checked after every operation and every
//! simulated crash.
//!
//! The model tracks, per key, the states it has had since it was last known
//! durable. After a crash the recovered log is a prefix of the written log
//! that includes everything synced, so each key must come back in one of
//! those states: an acknowledged-and-durable insert is never lost, and an ID
//! that was never inserted, or whose removal was durable, never reappears.
//!
//! `run` panics with a description on the first disagreement; it is driven
//! by a seeded generator in `tests/tests/model_check.rs` and by libFuzzer in
//! `fuzz/fuzz_targets/ops_model.rs`.

use std::collections::HashMap;
use std::time::Duration;

use dedupstore::sim::{CrashMode, SimFs};
use dedupstore::{Claim, ClaimToken, Clock, Config, Durability, Error, ManualClock, Store};

/// One step of a scenario.
#[derive(Debug, Clone)]
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
    /// `complete` with the key's last acquired token, if it still owns it.
    Complete {
        key: u32,
        ttl_ms: u64,
    },
    Release {
        key: u32,
    },
    Remove {
        key: u32,
    },
    Advance {
        ms: u64,
    },
    Sync,
    Gc,
    Compact,
    /// Clean close and reopen.
    Reopen,
    /// Power loss or kill, then reopen. `kind`: 0 kill, 1 drop unsynced, 2 torn.
    Crash {
        kind: u8,
        seed: u64,
    },
}

/// Key bytes of key number `k`: mixed lengths (4 to 1003 bytes), so that
/// records straddle sectors, pages and segment ends.
pub fn key(k: u32) -> Vec<u8> {
    let mut v = k.to_le_bytes().to_vec();
    v.resize(4 + (k as usize * 37) % 1000, k as u8);
    v
}

/// `None` = absent; `Some(t)` = present until `t` (ms).
type State = Option<u64>;

fn matches(s: &State, present: bool, now: u64) -> bool {
    s.is_some_and(|t| now < t) == present
}

#[derive(Clone)]
struct Key {
    /// What the current state may be: one state, except right after a crash.
    cands: Vec<State>,
    /// What a crash now may bring the key back as (a superset of `cands`).
    hist: Vec<State>,
}

#[derive(Default)]
struct Model {
    keys: HashMap<u32, Key>,
}

impl Model {
    fn key(&mut self, k: u32) -> &mut Key {
        self.keys.entry(k).or_insert_with(|| Key {
            cands: vec![None],
            hist: vec![None],
        })
    }
    /// Checks an observation against the model and narrows it.
    fn observe(&mut self, k: u32, present: bool, now: u64) -> bool {
        let key = self.key(k);
        if !key.cands.iter().any(|s| matches(s, present, now)) {
            return false;
        }
        key.cands.retain(|s| matches(s, present, now));
        true
    }
    fn set(&mut self, k: u32, s: State, durable: bool) {
        let key = self.key(k);
        key.cands = vec![s];
        if durable {
            key.hist = vec![s];
        } else {
            key.hist.push(s);
        }
    }
    fn synced(&mut self) {
        for key in self.keys.values_mut() {
            key.hist = key.cands.clone();
        }
    }
    fn crashed(&mut self) {
        for key in self.keys.values_mut() {
            key.hist.dedup();
            key.cands = key.hist.clone();
        }
    }
}

/// For complete / release: a key that has a live token, so the op does
/// something (any key if none does).
fn pick_held<T>(owners: &HashMap<u32, T>, k: u32, nkeys: u32) -> u32 {
    let mut held: Vec<u32> = owners.keys().copied().collect();
    held.sort_unstable();
    held.get(k as usize % held.len().max(1))
        .copied()
        .unwrap_or(k % nkeys)
}

/// What a run did, for tests that check the scenarios reach far enough.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub crashes: u64,
    pub segments_reclaimed: u64,
    /// Claims acquired, then completed or released with their token.
    pub claims: u64,
    pub completes: u64,
}

/// Runs `ops` against a fresh store on a simulated file system, checking
/// every answer against the model. Keys are taken modulo `nkeys`.
pub fn run(durability: Durability, nkeys: u32, ops: &[Op]) -> Summary {
    let nkeys = nkeys.max(1);
    let immediate = durability == Durability::Immediate;
    let clock = ManualClock::new(1_000_000);
    let cfg = || {
        Config::default()
            .durability(durability)
            .segment_size(64 << 10)
            .gc_interval(None)
            .clock(clock.clone())
    };
    let mut fs = SimFs::new();
    let mut store = Some(Store::open_with(fs.clone(), "/db", cfg()).expect("open a new store"));
    let mut model = Model::default();
    let mut summary = Summary::default();
    // Tokens that own their key as far as the model knows; any other change
    // to the key (or a crash) forgets them.
    let mut owners: HashMap<u32, (ClaimToken, u64)> = HashMap::new();
    let ctx = |step: usize, what: &str| format!("step {step} ({durability:?}): {what}");

    for (step, op) in ops.iter().enumerate() {
        let s = store.as_ref().expect("store is open between steps");
        let now = clock.now_ms();
        match op {
            &Op::Insert { key: k, ttl_ms } => {
                let k = k % nkeys;
                let ttl = Duration::from_millis(ttl_ms.clamp(1, 1 << 40));
                let present = !s.check_and_insert(&key(k), ttl).unwrap().is_inserted();
                assert!(
                    model.observe(k, present, now),
                    "{}",
                    ctx(step, &format!("insert {k} said present={present}"))
                );
                if !present {
                    model.set(k, Some(now + ttl.as_millis() as u64), immediate);
                    owners.remove(&k);
                }
            }
            Op::Batch { keys, ttl_ms } => {
                let ks: Vec<u32> = keys.iter().map(|k| k % nkeys).collect();
                let raw: Vec<Vec<u8>> = ks.iter().map(|&k| key(k)).collect();
                let ttl = Duration::from_millis((*ttl_ms).clamp(1, 1 << 40));
                let out = s.check_and_insert_batch(&raw, ttl).unwrap();
                assert_eq!(out.len(), ks.len());
                for (&k, o) in ks.iter().zip(out) {
                    let present = !o.is_inserted();
                    assert!(
                        model.observe(k, present, now),
                        "{}",
                        ctx(step, &format!("batch {k} said present={present}"))
                    );
                    if !present {
                        model.set(k, Some(now + ttl.as_millis() as u64), immediate);
                        owners.remove(&k);
                    }
                }
            }
            &Op::Claim { key: k, lease_ms } => {
                let k = k % nkeys;
                let lease = Duration::from_millis(lease_ms.clamp(1, 1 << 40));
                let c = s.claim(&key(k), lease, None).unwrap();
                let present = !matches!(c, Claim::Acquired(_));
                assert!(
                    model.observe(k, present, now),
                    "{}",
                    ctx(step, &format!("claim {k} said {c:?}"))
                );
                if let Claim::Acquired(tok) = c {
                    summary.claims += 1;
                    model.set(k, Some(now + lease.as_millis() as u64), immediate);
                    owners.insert(k, (tok, now + lease.as_millis() as u64));
                }
            }
            &Op::Complete { key: k, ttl_ms } => {
                let k = pick_held(&owners, k, nkeys);
                if let Some((tok, lease_end)) = owners.remove(&k) {
                    let ttl = Duration::from_millis(ttl_ms.clamp(1, 1 << 40));
                    let r = s.complete(&tok, Some(&key(k)[..4]), ttl);
                    if now < lease_end {
                        r.unwrap_or_else(|e| {
                            panic!("{}", ctx(step, &format!("complete {k}: {e}")))
                        });
                        model.set(k, Some(now + ttl.as_millis() as u64), immediate);
                        summary.completes += 1;
                    } else {
                        assert!(
                            matches!(r, Err(Error::StaleToken { .. })),
                            "{}",
                            ctx(step, &format!("late complete {k}: {r:?}"))
                        );
                    }
                }
            }
            &Op::Release { key: k } => {
                let k = pick_held(&owners, k, nkeys);
                if let Some((tok, lease_end)) = owners.remove(&k) {
                    let r = s.release(&tok);
                    if now < lease_end {
                        r.unwrap_or_else(|e| panic!("{}", ctx(step, &format!("release {k}: {e}"))));
                        model.set(k, None, immediate);
                    } else {
                        assert!(
                            matches!(r, Err(Error::StaleToken { .. })),
                            "{}",
                            ctx(step, &format!("late release {k}: {r:?}"))
                        );
                    }
                }
            }
            &Op::Contains { key: k } => {
                let k = k % nkeys;
                let present = s.contains(&key(k)).unwrap();
                assert!(
                    model.observe(k, present, now),
                    "{}",
                    ctx(step, &format!("contains {k} said {present}"))
                );
            }
            &Op::Remove { key: k } => {
                let k = k % nkeys;
                let present = s.remove(&key(k)).unwrap();
                assert!(
                    model.observe(k, present, now),
                    "{}",
                    ctx(step, &format!("remove {k} said {present}"))
                );
                if present {
                    model.set(k, None, immediate);
                    owners.remove(&k);
                }
            }
            &Op::Advance { ms } => clock.advance(Duration::from_millis(ms % 10_000)),
            Op::Sync => {
                s.sync().unwrap();
                model.synced();
            }
            Op::Gc | Op::Compact => {
                // GC changes no answer, only where records live.
                let r = if matches!(op, Op::Gc) {
                    s.gc_now()
                } else {
                    s.compact()
                };
                let r = r.unwrap_or_else(|e| panic!("{}", ctx(step, &format!("gc: {e}"))));
                summary.segments_reclaimed += r.segments_deleted + r.segments_compacted;
            }
            Op::Reopen => {
                drop(store.take()); // a clean close syncs
                model.synced();
                store = Some(Store::open_with(fs.clone(), "/db", cfg()).unwrap());
            }
            &Op::Crash { kind, seed } => {
                let mode = match kind % 3 {
                    0 => CrashMode::Kill,
                    1 => CrashMode::DropUnsynced,
                    _ => CrashMode::Torn(seed),
                };
                let crashed = fs.crash(mode);
                owners.clear();
                drop(store.take()); // the dead process's handle does not touch the new image
                fs = crashed;
                let reopened = Store::open_with(fs.clone(), "/db", cfg()).unwrap_or_else(|e| {
                    panic!("{}", ctx(step, &format!("reopen after {mode:?}: {e}")))
                });
                store = Some(reopened);
                summary.crashes += 1;
                // Recovery syncs what it found, so after each key is observed
                // once, what it showed is its durable state.
                model.crashed();
                let s = store.as_ref().expect("just reopened");
                for k in 0..nkeys {
                    let present = s.contains(&key(k)).unwrap();
                    let possible = model.key(k).cands.clone();
                    assert!(
                        model.observe(k, present, now),
                        "{}",
                        ctx(
                            step,
                            &format!(
                                "after {mode:?}, key {k} present={present}, possible {possible:?}"
                            )
                        )
                    );
                }
                model.synced();
            }
        }
    }
    summary
}

/// A random scenario from a seed: the generator the ordinary tests use.
pub fn random_ops(rng: &mut fastrand::Rng, steps: usize, nkeys: u32) -> Vec<Op> {
    (0..steps)
        .map(|_| {
            let key = rng.u32(..nkeys);
            match rng.u8(..100) {
                0..=39 => Op::Insert {
                    key,
                    ttl_ms: rng.u64(1..5_000),
                },
                40..=49 => Op::Batch {
                    keys: (0..rng.usize(1..20)).map(|_| rng.u32(..nkeys)).collect(),
                    ttl_ms: 3_000,
                },
                50..=57 => Op::Contains { key },
                58..=61 => Op::Claim {
                    key,
                    lease_ms: rng.u64(1..3_000),
                },
                62 | 63 => Op::Complete {
                    key,
                    ttl_ms: rng.u64(1..5_000),
                },
                64 => Op::Release { key },
                65..=74 => Op::Remove { key },
                75..=84 => Op::Advance {
                    ms: rng.u64(..1_500),
                },
                85..=89 => Op::Sync,
                90 => Op::Gc,
                91 => Op::Compact,
                92 => Op::Reopen,
                _ => Op::Crash {
                    kind: rng.u8(..3),
                    seed: rng.u64(..),
                },
            }
        })
        .collect()
}

/// Decodes fuzzer bytes into a durability mode, a key count and operations.
/// Every byte string decodes to something.
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
        let ttl_ms = 1 + (next().unwrap_or(0) as u64) * 20;
        ops.push(match b % 16 {
            0..=4 => Op::Insert { key, ttl_ms },
            5 => Op::Batch {
                keys: (0..(arg % 8) as u32 + 1)
                    .map(|i| key.wrapping_add(i * 7))
                    .collect(),
                ttl_ms,
            },
            6 | 7 => Op::Contains { key },
            8 | 9 => Op::Remove { key },
            10 => Op::Advance {
                ms: arg as u64 * 40,
            },
            11 => Op::Sync,
            12 => Op::Gc,
            13 => Op::Compact,
            14 => Op::Reopen,
            _ => Op::Crash {
                kind: arg,
                seed: ttl_ms,
            },
        });
        if ops.len() >= 2_000 {
            break;
        }
    }
    (durability, nkeys, ops)
}

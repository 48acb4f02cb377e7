//! Random operation sequences with simulated power losses, checked against a
//! reference model after every step.
//!
//! The model tracks, per key, the states it has had since it was last known
//! durable. After a crash the recovered log is a prefix of the written log
//! that includes everything synced, so each key must come back in one of
//! those states: an acknowledged-and-durable insert is never lost, and an ID
//! that was never inserted, or whose removal was durable, never reappears.

use std::collections::HashMap;
use std::time::Duration;

use dedupstore::sim::{CrashMode, SimFs};
use dedupstore::{Config, Durability, ManualClock, Outcome, Store};

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
    fn possible(&mut self, k: u32) -> Vec<State> {
        self.key(k).cands.clone()
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

fn key(k: u32) -> Vec<u8> {
    // Mixed lengths so records straddle sector and page boundaries.
    let mut v = k.to_le_bytes().to_vec();
    v.resize(4 + (k as usize * 37) % 1000, k as u8);
    v
}

/// Runs one sequence; returns how many segments GC reclaimed.
fn run(seed: u64, steps: usize) -> u64 {
    let mut reclaimed = 0;
    let mut rng = fastrand::Rng::with_seed(seed);
    let durability = match rng.u8(..3) {
        0 => Durability::Immediate,
        1 => Durability::None,
        _ => Durability::Interval(Duration::from_millis(1 + rng.u64(..5))),
    };
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
    let mut store = Some(Store::open_with(fs.clone(), "/db", cfg()).unwrap());
    let mut model = Model::default();
    let nkeys = rng.u32(8..200);
    let ctx = |step: usize, what: &str| format!("seed {seed} step {step} ({durability:?}): {what}");

    for step in 0..steps {
        let s = store.as_ref().unwrap();
        let now = clock.now();
        let k = rng.u32(..nkeys);
        let op = rng.u8(..100);
        if std::env::var_os("MODEL_TRACE").is_some() {
            eprintln!(
                "step {step} now {now} op {op} key {k} possible {:?}",
                model.possible(k)
            );
        }
        match op {
            0..=39 => {
                let ttl = Duration::from_millis(rng.u64(1..5_000));
                let present = !s.check_and_insert(&key(k), ttl).unwrap().is_inserted();
                assert!(
                    model.observe(k, present, now),
                    "{}",
                    ctx(step, &format!("insert {k} said present={present}"))
                );
                if !present {
                    model.set(k, Some(now + ttl.as_millis() as u64), immediate);
                }
            }
            40..=49 => {
                let ks: Vec<u32> = (0..rng.usize(1..20)).map(|_| rng.u32(..nkeys)).collect();
                let raw: Vec<Vec<u8>> = ks.iter().map(|&k| key(k)).collect();
                let out = s
                    .check_and_insert_batch(&raw, Duration::from_millis(3_000))
                    .unwrap();
                for (&k, o) in ks.iter().zip(out) {
                    let present = !o.is_inserted();
                    assert!(
                        model.observe(k, present, now),
                        "{}",
                        ctx(step, &format!("batch {k} said present={present}"))
                    );
                    if !present {
                        model.set(k, Some(now + 3_000), immediate);
                    }
                }
            }
            50..=64 => {
                let present = s.contains(&key(k)).unwrap();
                assert!(
                    model.observe(k, present, now),
                    "{}",
                    ctx(step, &format!("contains {k} said {present}"))
                );
            }
            65..=74 => {
                let present = s.remove(&key(k)).unwrap();
                assert!(
                    model.observe(k, present, now),
                    "{}",
                    ctx(step, &format!("remove {k} said {present}"))
                );
                if present {
                    model.set(k, None, immediate);
                }
            }
            75..=84 => clock.advance(Duration::from_millis(rng.u64(..1_500))),
            85..=89 => {
                s.sync().unwrap();
                model.synced();
            }
            90..=91 => {
                // GC changes no answer, only where records live.
                let s = store.as_ref().unwrap();
                let r = if rng.bool() {
                    s.gc_now().unwrap()
                } else {
                    s.compact().unwrap()
                };
                reclaimed += r.segments_deleted + r.segments_compacted;
            }
            92 => {
                drop(store.take()); // clean close syncs
                model.synced();
                store = Some(Store::open_with(fs.clone(), "/db", cfg()).unwrap());
            }
            _ => {
                let mode = match rng.u8(..3) {
                    0 => CrashMode::Kill,
                    1 => CrashMode::DropUnsynced,
                    _ => CrashMode::Torn(rng.u64(..)),
                };
                let crashed = fs.crash(mode);
                // The dead process's handle is dropped without effect on the
                // crashed image.
                drop(store.take());
                fs = crashed;
                let reopened = Store::open_with(fs.clone(), "/db", cfg()).unwrap_or_else(|e| {
                    panic!("{}", ctx(step, &format!("reopen after {mode:?}: {e}")))
                });
                store = Some(reopened);
                // Recovery syncs what it found, so after each key is observed
                // once, what it showed is its durable state.
                model.crashed();
                let s = store.as_ref().unwrap();
                for k in 0..nkeys {
                    let present = s.contains(&key(k)).unwrap();
                    let possible = model.possible(k);
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
    reclaimed
}

trait Now {
    fn now(&self) -> u64;
}
impl Now for ManualClock {
    fn now(&self) -> u64 {
        dedupstore::Clock::now_ms(self)
    }
}

#[test]
fn random_sequences_with_crashes_match_the_model() {
    let seeds: u64 = std::env::var("MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut reclaimed = 0;
    for seed in 0..seeds {
        reclaimed += run(seed, 500);
    }
    eprintln!("model check: {seeds} sequences of 500 steps; GC reclaimed {reclaimed} segments");
    assert!(
        seeds < 50 || reclaimed > 0,
        "GC steps never reclaimed anything"
    );
}

#[test]
fn outcome_is_exact_for_a_simple_script() {
    // A fixed script as a sanity anchor for the model itself.
    let fs = SimFs::new();
    let s = Store::open_with(fs.clone(), "/db", Config::default()).unwrap();
    assert_eq!(
        s.check_and_insert(b"a", Duration::from_secs(1)).unwrap(),
        Outcome::Inserted
    );
    drop(s);
    let s = Store::open_with(fs.crash(CrashMode::DropUnsynced), "/db", Config::default()).unwrap();
    assert!(
        s.contains(b"a").unwrap(),
        "Immediate insert survives power loss"
    );
}

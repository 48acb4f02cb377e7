//! Random operation sequences with simulated power losses, checked against
//! the reference model in `tests/src/model.rs` after every step. The same
//! model runs under libFuzzer in `fuzz/` (target `ops_model`).
//!
//! `MODEL_SEEDS=5000 cargo test -p dedupstore-tests --test model_check`
//! runs more sequences.

use std::time::Duration;

use dedupstore::Durability;
use dedupstore_tests::model::{self, random_ops, Op};

#[test]
fn random_sequences_with_crashes_match_the_model() {
    let seeds: u64 = std::env::var("MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let (mut crashes, mut reclaimed, mut claims, mut completes) = (0, 0, 0, 0);
    for seed in 0..seeds {
        let mut rng = fastrand::Rng::with_seed(seed);
        let durability = match rng.u8(..3) {
            0 => Durability::Immediate,
            1 => Durability::None,
            _ => Durability::Interval(Duration::from_millis(1 + rng.u64(..5))),
        };
        let nkeys = rng.u32(8..200);
        let ops = random_ops(&mut rng, 500, nkeys);
        let r =
            std::panic::catch_unwind(|| model::run(durability, nkeys, &ops)).unwrap_or_else(|_| {
                panic!("model check failed for seed {seed} (rerun with MODEL_SEEDS)")
            });
        crashes += r.crashes;
        reclaimed += r.segments_reclaimed;
        claims += r.claims;
        completes += r.completes;
    }
    eprintln!(
        "model check: {seeds} sequences of 500 steps, {crashes} crashes, GC reclaimed {reclaimed} segments, \
         {claims} claims acquired, {completes} completed"
    );
    assert!(
        seeds < 50 || (reclaimed > 0 && crashes > seeds && completes > 0),
        "scenarios too shallow"
    );
}

#[test]
fn immediate_insert_survives_power_loss() {
    let ops = [
        Op::Insert {
            key: 1,
            ttl_ms: 1_000,
        },
        Op::Crash { kind: 1, seed: 0 },
        Op::Contains { key: 1 },
    ];
    model::run(Durability::Immediate, 4, &ops);
}

#[test]
fn unsynced_remove_may_be_lost_but_synced_remove_is_not() {
    let ops = [
        Op::Insert {
            key: 2,
            ttl_ms: 60_000,
        },
        Op::Sync,
        Op::Remove { key: 2 },
        Op::Crash { kind: 2, seed: 9 },
        Op::Remove { key: 2 },
        Op::Sync,
        Op::Crash { kind: 1, seed: 0 },
        Op::Insert { key: 2, ttl_ms: 10 },
    ];
    model::run(Durability::None, 4, &ops);
}

#[test]
fn fuzz_input_decoder_accepts_any_bytes() {
    for len in 0..64 {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let (_, nkeys, ops) = model::decode_ops(&bytes);
        assert!(nkeys >= 1 && ops.len() <= len);
        model::run(Durability::None, nkeys, &ops);
    }
}

//! Atomic check-and-insert under contention.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::Duration;

use dedupstore::{Config, Durability, Outcome, Store};

const DAY: Duration = Duration::from_secs(86_400);

fn race(durability: Durability, keys: u32, threads: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        Config::default()
            .durability(durability)
            .segment_size(64 << 10),
    )
    .unwrap();
    let wins: Vec<AtomicUsize> = (0..keys).map(|_| AtomicUsize::new(0)).collect();
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (store, wins, barrier) = (&store, &wins, &barrier);
            s.spawn(move || {
                barrier.wait();
                // Each thread walks the keys from a different start, so that
                // threads collide on the same key at the same time.
                for j in 0..keys {
                    let i = (j + t as u32 * 7919) % keys;
                    if store.check_and_insert(i.to_be_bytes(), DAY).unwrap() == Outcome::Inserted {
                        wins[i as usize].fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    for (i, w) in wins.iter().enumerate() {
        assert_eq!(
            w.load(Ordering::Relaxed),
            1,
            "key {i} was inserted {} times",
            w.load(Ordering::Relaxed)
        );
    }
    assert_eq!(store.stats().indexed_keys, keys as u64);
    assert!(
        store.stats().segments > 1,
        "the race should cross segment rolls"
    );
}

#[test]
fn eight_threads_race_on_ten_thousand_keys() {
    race(Durability::None, 10_000, 8);
}

#[test]
fn eight_threads_race_under_immediate_with_group_commit() {
    race(Durability::Immediate, 5_000, 8);
}

#[test]
fn batches_and_singles_race() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config::default().durability(Durability::None)).unwrap();
    let keys: Vec<[u8; 8]> = (0..5_000u64).map(|i| i.to_le_bytes()).collect();
    let wins = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (store, keys, wins) = (&store, &keys, &wins);
            s.spawn(move || {
                for chunk in keys.chunks(50 + t * 13) {
                    let n = if t % 2 == 0 {
                        store
                            .check_and_insert_batch(chunk, DAY)
                            .unwrap()
                            .iter()
                            .filter(|o| o.is_inserted())
                            .count()
                    } else {
                        chunk
                            .iter()
                            .filter(|k| store.check_and_insert(&k[..], DAY).unwrap().is_inserted())
                            .count()
                    };
                    wins.fetch_add(n, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(
        wins.load(Ordering::Relaxed),
        keys.len(),
        "each key inserted exactly once overall"
    );
}

#[test]
fn group_commit_shares_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config::default()).unwrap();
    let before = store.stats().syncs;
    let per_thread = 200u32;
    std::thread::scope(|s| {
        for t in 0..16u32 {
            let store = &store;
            s.spawn(move || {
                for i in 0..per_thread {
                    let k = [t.to_le_bytes(), i.to_le_bytes()].concat();
                    assert!(store.check_and_insert(&k, DAY).unwrap().is_inserted());
                }
            });
        }
    });
    let syncs = store.stats().syncs - before;
    let inserts = 16 * per_thread as u64;
    assert!(
        syncs > 0 && syncs <= inserts,
        "{syncs} syncs for {inserts} inserts"
    );
    eprintln!("group commit: {inserts} durable inserts took {syncs} syncs");
}

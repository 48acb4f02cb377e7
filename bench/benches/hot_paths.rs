//! Micro-benchmarks of the hot paths: `cargo bench -p dedupstore-bench`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use dedupstore::internals::{decode, encode, encoded_len, hash_key, tag_of, Entry, Kind, Shard};
use dedupstore::{Config, Durability, Store};

fn keys(n: usize) -> Vec<[u8; 16]> {
    let mut rng = fastrand::Rng::with_seed(1);
    (0..n)
        .map(|_| std::array::from_fn(|_| rng.u8(..)))
        .collect()
}

fn hot_paths(c: &mut Criterion) {
    let ks = keys(1 << 16);
    let mut i = 0usize;
    c.bench_function("xxh3 hash, 16-byte key", |b| {
        b.iter(|| {
            i = (i + 1) & 0xFFFF;
            black_box(hash_key(&ks[i]))
        })
    });

    let mut rec = vec![0u8; encoded_len(16)];
    c.bench_function("record encode, 16-byte key", |b| {
        b.iter(|| encode(black_box(&mut rec), Kind::Insert, 123, &ks[7]))
    });
    encode(&mut rec, Kind::Insert, 123, &ks[7]);
    c.bench_function("record decode + crc, 16-byte key", |b| {
        b.iter(|| black_box(decode(black_box(&rec))))
    });

    // Index probe on a 1M-entry shard (a miss: tag compare only).
    let mut shard = Shard::default();
    for (n, k) in keys(1 << 20).iter().enumerate() {
        let e = Entry {
            tag: tag_of(hash_key(k)),
            seg: 1,
            off: n as u32,
            keep_s: 0,
        };
        shard.upsert(e, |_| false);
    }
    let probes = keys(1 << 16)
        .iter()
        .map(|k| tag_of(hash_key(k)) ^ 0x5555)
        .collect::<Vec<_>>();
    c.bench_function("index probe (miss), 1M entries", |b| {
        b.iter(|| {
            i = (i + 1) & 0xFFFF;
            black_box(shard.find(probes[i], |_| true))
        })
    });

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config::default().durability(Durability::None)).unwrap();
    let day = Duration::from_secs(86_400);
    let mut rng = fastrand::Rng::with_seed(9);
    c.bench_function("check_and_insert, new 16-byte key", |b| {
        b.iter_batched(
            || rng.u128(..).to_le_bytes(),
            |k| store.check_and_insert(k, day).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let hit = rng.u128(..).to_le_bytes();
    let _ = store.check_and_insert(hit, day).unwrap();
    c.bench_function("check_and_insert, duplicate", |b| {
        b.iter(|| store.check_and_insert(black_box(&hit), day).unwrap())
    });
    c.bench_function("contains, miss", |b| {
        b.iter_batched(
            || rng.u128(..).to_le_bytes(),
            |k| store.contains(k).unwrap(),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);

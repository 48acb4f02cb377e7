//! `--namespaces N`: N namespaces of one group in this process against one
//! namespace, with the same IDs. Prints threads, RSS, disk and insert
//! throughput of both, and the ratio (issue 12's target: within 1.5x).

use std::path::Path;
use std::time::{Duration, Instant};

use dedupstore::{Checkpoints, Config, Durability, Namespaces, Store};

use crate::backends::Res;
use crate::measure::{disk_usage, rss};

const TTL: Duration = Duration::from_secs(86_400);
/// IDs per batch in the durable phase: a broker batch, from one partition.
const BATCH: usize = 100;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

fn keys(n: usize, seed: u64) -> Vec<[u8; 16]> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.u128(..).to_le_bytes()).collect()
}

struct Figures {
    threads: usize,
    rss_open: u64,
    rss_end: u64,
    disk_open: u64,
    disk_end: u64,
    single_ops: f64,
    batched_ops: f64,
}

/// Opens `n` namespaces, then inserts `ids` IDs one call each (Durability
/// None: the CPU path) spread round-robin, then `ids / 10` IDs in batches
/// of 100 under `Immediate` (one fsync per batch), batch `b` into
/// namespace `b % n`.
fn run_one(dir: &Path, n: usize, ids: usize) -> Res<Figures> {
    let _ = std::fs::remove_dir_all(dir);
    let cfg = Config::default().checkpoints(Checkpoints::Background);
    let g = Namespaces::open(dir, cfg.clone().durability(Durability::None))?;
    let stores: Vec<_> = (0..n)
        .map(|i| g.create(&format!("p{i:05}")))
        .collect::<Result<_, _>>()?;
    let (threads, rss_open, disk_open) = (threads(), rss().1, disk_usage(dir));
    let single = keys(ids, 1);
    let t = Instant::now();
    for (i, k) in single.iter().enumerate() {
        let _ = stores[i % n].check_and_insert(k, TTL)?;
    }
    let single_ops = ids as f64 / t.elapsed().as_secs_f64();
    drop(stores);
    g.close()?;
    // The durable phase: reopened under Immediate.
    let g = Namespaces::open(dir, cfg.durability(Durability::Immediate))?;
    let stores: Vec<_> = g
        .list()
        .iter()
        .map(|name| g.get(name))
        .collect::<Result<_, _>>()?;
    let batched = keys(ids / 10, 2);
    let t = Instant::now();
    for (b, chunk) in batched.chunks(BATCH).enumerate() {
        let _ = stores[b % n].check_and_insert_batch(chunk, TTL)?;
    }
    let batched_ops = batched.len() as f64 / t.elapsed().as_secs_f64();
    let (rss_end, disk_end) = (rss().1, disk_usage(dir));
    drop(stores);
    g.close()?;
    Ok(Figures {
        threads,
        rss_open,
        rss_end,
        disk_open,
        disk_end,
        single_ops,
        batched_ops,
    })
}

pub fn run(dir: &Path, n: usize, ids: usize) -> Res<()> {
    let dir = dir.join("namespaces");
    let base_threads = threads();
    // A single store opened alone, for its thread and disk baseline.
    let alone = dir.join("alone");
    let _ = std::fs::remove_dir_all(&alone);
    let s = Store::open(
        &alone,
        Config::default().durability(Durability::Interval(Duration::from_secs(1))),
    )?;
    let alone_threads = threads() - base_threads;
    let alone_disk = disk_usage(&alone);
    s.close()?;
    let _ = std::fs::remove_dir_all(&alone);

    println!("namespaces bench: {ids} IDs one call each (Durability::None), then {} IDs in batches of {BATCH} (Immediate)", ids / 10);
    println!(
        "a single Store::open (Interval, GC, background checkpoints): {alone_threads} threads, {} KiB of disk",
        alone_disk >> 10
    );
    let one = run_one(&dir.join("one"), 1, ids)?;
    let many = run_one(&dir.join("many"), n, ids)?;
    let _ = std::fs::remove_dir_all(&dir);
    for (label, f) in [("1 namespace", &one), (&*format!("{n} namespaces"), &many)] {
        println!(
            "{label:>16}: threads {} (process, {} before), RSS {:.1} MiB open / {:.1} MiB end, disk {:.1} MiB open / {:.1} MiB end, \
             {:.0} inserts/s single calls, {:.0} IDs/s batched durable",
            f.threads,
            base_threads,
            f.rss_open as f64 / (1 << 20) as f64,
            f.rss_end as f64 / (1 << 20) as f64,
            f.disk_open as f64 / (1 << 20) as f64,
            f.disk_end as f64 / (1 << 20) as f64,
            f.single_ops,
            f.batched_ops,
        );
    }
    println!(
        "throughput ratio (1 namespace / {n}): single calls {:.2}x, batched durable {:.2}x (target: within 1.5x)",
        one.single_ops / many.single_ops,
        one.batched_ops / many.batched_ops
    );
    Ok(())
}

//! `--reopen-scale N,...`: how long open takes as the store grows, with the
//! index checkpoint and without it (full log replay), and what writing
//! checkpoints costs inserts. dedupstore only, in this process.
//!
//! For each N: insert N random 16-byte IDs (batches of 1000, no fsync, GC
//! off) with background checkpoints on, then again into a second store with
//! checkpoints off (only up to 20M IDs); close (the close writes the final
//! checkpoint); reopen with the checkpoint and look one ID up; reopen with
//! checkpoints off (the whole log replayed) and look it up. The page cache
//! is warm in both (the files were just written), as for a process restart.

use std::time::{Duration, Instant};

use dedupstore::{Checkpoints, Config, Durability, Store};

use crate::Res;

const TTL: Duration = Duration::from_secs(86_400);

pub fn key(i: u64) -> [u8; 16] {
    let a = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5851_F42D_4C95_7F2D;
    let b = (a ^ (a >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_le_bytes());
    k[8..].copy_from_slice(&(b ^ i).to_le_bytes());
    k
}

fn cfg(when: Checkpoints) -> Config {
    Config::default()
        .durability(Durability::None)
        .gc_interval(None)
        .checkpoints(when)
}

/// Inserts `n` IDs; returns inserts per second.
fn fill(store: &Store, n: u64) -> Res<f64> {
    let t = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    let mut i = 0;
    while i < n {
        batch.clear();
        batch.extend((i..n.min(i + 1000)).map(key));
        for o in store.check_and_insert_batch(&batch, TTL)? {
            if !o.is_inserted() {
                return Err("a fresh ID was reported as a duplicate".into());
            }
        }
        i += batch.len() as u64;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// CPU seconds this process used so far, all threads (user + system, from
/// /proc/self/stat, in clock ticks of 10 ms): on a shared, loaded machine
/// the wall time also counts waiting for a core, this does not.
fn cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesized command name; utime and stime are the
    // 14th and 15th fields of the line.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / 100.0
}

/// (wall seconds, CPU seconds, the store) of an open and one lookup.
fn reopen(dir: &std::path::Path, when: Checkpoints) -> Res<(f64, f64, Store)> {
    let c = cpu_secs();
    let t = Instant::now();
    let s = Store::open(dir, cfg(when))?;
    if !s.contains(key(0))? {
        return Err("after reopen the first ID is missing".into());
    }
    Ok((t.elapsed().as_secs_f64(), cpu_secs() - c, s))
}

pub fn run(root: &std::path::Path, sizes: &[usize]) -> Res<()> {
    std::fs::create_dir_all(root)?;
    println!(
        "| IDs | inserts/s (checkpoints on) | inserts/s (off) | close | checkpoint file | \
         reopen with checkpoint (CPU) | reopen, full replay (CPU) | speedup | index B/ID |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &n in sizes {
        let n = n as u64;
        let tmp = tempfile::Builder::new()
            .prefix("reopen-")
            .tempdir_in(root)?;
        let dir = tmp.path().join("store");
        let s = Store::open(&dir, cfg(Checkpoints::Background))?;
        let with = fill(&s, n)?;
        let t = Instant::now();
        s.close()?;
        let close = t.elapsed().as_secs_f64();
        let without = if n <= 20_000_000 {
            let tmp2 = tempfile::Builder::new()
                .prefix("reopen-")
                .tempdir_in(root)?;
            let s = Store::open(tmp2.path(), cfg(Checkpoints::Off))?;
            let r = fill(&s, n)?;
            drop(s);
            format!("{r:.0}")
        } else {
            "-".into()
        };
        let ckpt_bytes = std::fs::metadata(dir.join("index.ckpt")).map_or(0, |m| m.len());
        let (fast, fast_cpu, s) = reopen(&dir, Checkpoints::Background)?;
        let st = s.stats();
        if st.checkpoint_entries != n || st.replayed_records != 0 {
            return Err(format!(
                "the checkpoint was not used as expected: {} entries, {} records replayed",
                st.checkpoint_entries, st.replayed_records
            )
            .into());
        }
        let per_id = st.index_bytes as f64 / n as f64;
        drop(s);
        let (slow, slow_cpu, s) = reopen(&dir, Checkpoints::Off)?;
        if s.stats().replayed_records != n {
            return Err("the full replay did not replay every record".into());
        }
        drop(s);
        println!(
            "| {n} | {with:.0} | {without} | {close:.2} s | {:.0} MB | {fast:.3} s ({fast_cpu:.2} s) | \
             {slow:.3} s ({slow_cpu:.2} s) | {:.1}x | {per_id:.1} |",
            ckpt_bytes as f64 / 1e6,
            slow / fast,
        );
    }
    Ok(())
}

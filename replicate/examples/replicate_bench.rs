//! Replication benchmark on a real S3-compatible server (moto, started on
//! loopback): ships a store as it grows to N IDs (default 10 million),
//! then restores it, and prints time per million IDs, bytes uploaded per
//! ID, requests per round, the duration of a tail round (which, with the
//! interval, bounds the replication lag), and the restore time.
//!
//! ```text
//! cargo run --release -p dedupstore-replicate --example replicate_bench -- [IDS] [ROUNDS]
//! ```
//!
//! Needs moto's server: `python3 -m pip install 'moto[server]'`.

#[path = "../tests/moto/mod.rs"]
mod moto;

use std::sync::Arc;
use std::time::{Duration, Instant};

use dedupstore::{Config, Store};
use dedupstore_replicate::{restore, ReplicateOptions, Replicator, ShipReport};
use object_store::path::Path;

fn key(i: u64) -> [u8; 16] {
    // 16-byte IDs (a UUID's size), distinct per i.
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.to_le_bytes());
    k[8..].copy_from_slice(&(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes());
    k
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let ids: u64 = args.next().map_or(Ok(10_000_000), |a| a.parse())?;
    let rounds: u64 = args.next().map_or(Ok(10), |a| a.parse())?;
    let tmp = tempfile::tempdir()?;
    let moto = moto::Moto::start();
    moto.create_bucket("bench");
    let target = moto.bucket("bench");
    let prefix = Path::from("bench/p0");
    let ttl = Duration::from_secs(24 * 3600);
    let store = Arc::new(Store::open(tmp.path().join("src"), Config::default())?);
    let repl = Replicator::new(
        store.clone(),
        target.clone(),
        prefix.clone(),
        ReplicateOptions::default(),
    )?;

    // 1. The store grows to `ids` IDs; a round after each 1/rounds of them.
    let per_round = ids / rounds;
    let mut shipped = Vec::new();
    let mut insert_time = Duration::ZERO;
    let mut next = 0u64;
    for _ in 0..rounds {
        let t = Instant::now();
        let end = next + per_round;
        let keys: Vec<[u8; 16]> = (next..end).map(key).collect();
        for batch in keys.chunks(10_000) {
            let _ = store.check_and_insert_batch(batch, ttl)?;
        }
        next = end;
        insert_time += t.elapsed();
        shipped.push(repl.ship()?);
    }
    let sum = |f: fn(&ShipReport) -> u64| shipped.iter().map(f).sum::<u64>();
    let ship_time: Duration = shipped.iter().map(|r| r.duration).sum();
    let millions = next as f64 / 1e6;
    println!(
        "IDs: {next} (16-byte keys), inserted in {:.2?}",
        insert_time
    );
    println!(
        "ship: {rounds} rounds, {:.2?} in all, {:.3} s per million IDs",
        ship_time,
        ship_time.as_secs_f64() / millions
    );
    println!(
        "uploaded: {} bytes, {:.2} bytes per ID; {} chunk objects; {} requests ({:.1} per round)",
        sum(|r| r.uploaded_bytes),
        sum(|r| r.uploaded_bytes) as f64 / next as f64,
        sum(|r| r.uploaded_chunks),
        sum(|r| r.requests),
        sum(|r| r.requests) as f64 / rounds as f64
    );

    // 2. A tail round: what one interval of traffic costs, and how long
    //    the round takes (the lag is at most interval + this).
    for n in [1_000u64, 100_000] {
        let keys: Vec<[u8; 16]> = (next..next + n).map(key).collect();
        for batch in keys.chunks(10_000) {
            let _ = store.check_and_insert_batch(batch, ttl)?;
        }
        next += n;
        let r = repl.ship()?;
        println!(
            "tail round after {n} new IDs: {:.2?}, {} requests, {} bytes",
            r.duration, r.requests, r.uploaded_bytes
        );
    }
    let idle = repl.ship()?;
    println!(
        "idle round: {:.2?}, {} requests",
        idle.duration, idle.requests
    );

    // 3. Restore on "another machine", then open.
    let dst = tmp.path().join("restored");
    let r = restore(target.clone(), &prefix, &dst)?;
    println!(
        "restore: {} bytes in {} chunks, {} segments, {:.2?} ({:.3} s per million IDs)",
        r.bytes,
        r.chunks,
        r.segments,
        r.duration,
        r.duration.as_secs_f64() / (next as f64 / 1e6)
    );
    let t = Instant::now();
    let restored = Store::open(&dst, Config::default())?;
    let open_time = t.elapsed();
    println!("open of the restored store (replays the log): {open_time:.2?}");
    println!(
        "restore + open of {next} IDs: {:.2?}",
        r.duration + open_time
    );
    // Check: a sample of the IDs is present, others absent.
    let sample: Vec<[u8; 16]> = (0..next).step_by(997).map(key).collect();
    let present = restored.contains_batch(&sample)?;
    let absent = restored.contains_batch(&(next..next + 10_000).map(key).collect::<Vec<_>>())?;
    let ok = present.iter().all(|&p| p) && absent.iter().all(|&p| !p);
    println!(
        "check: {} sampled IDs present, {} never-inserted absent: {}",
        present.len(),
        absent.len(),
        if ok { "ok" } else { "FAILED" }
    );
    restored.close()?;
    if !ok {
        return Err("restored store answers wrong".into());
    }
    Ok(())
}

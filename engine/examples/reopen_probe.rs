//! Measures how long a store of N IDs takes to open (scaling runs).
//! `cargo run --release --example reopen_probe -- 10000000 [dir]`

use std::time::{Duration, Instant};

use dedupstore::{Config, Durability, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |s| s.parse())?;
    let dir = std::env::args()
        .nth(2)
        .unwrap_or_else(|| format!("target/reopen-probe-{n}"));
    let seg_mb: u64 = std::env::var("SEGMENT_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let cfg = || {
        Config::default()
            .durability(Durability::None)
            .segment_size(seg_mb << 20)
    };
    if !std::path::Path::new(&dir).join("dedupstore.meta").exists() {
        let t = Instant::now();
        let s = Store::open(&dir, cfg())?;
        let mut rng = fastrand_like(7);
        for _ in 0..n {
            let _ = s.check_and_insert(rng().to_le_bytes(), Duration::from_secs(86_400))?;
        }
        s.close()?;
        println!("filled {n} IDs in {:.2?}", t.elapsed());
    }
    let t = Instant::now();
    let s = Store::open(&dir, cfg())?;
    let opened = t.elapsed();
    println!(
        "open of {} IDs: {:.1?} ({:.0} ns/ID)",
        s.stats().indexed_keys,
        opened,
        opened.as_nanos() as f64 / n as f64
    );
    Ok(())
}

/// A splitmix64 stream of 128-bit keys (no extra dependency for an example).
fn fastrand_like(mut seed: u64) -> impl FnMut() -> u128 {
    move || {
        let mut next = || {
            seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        (next() as u128) << 64 | next() as u128
    }
}

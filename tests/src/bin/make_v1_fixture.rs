//! Writes the format-v1 fixture store in `tests/fixtures/v1-store` (run once,
//! with the v1 engine; the files are committed and never regenerated, so
//! that `tests/tests/compat.rs` checks that later builds still open what v1
//! wrote). Everything is deterministic: a manual clock, fixed keys.
//!
//! `cargo run -p dedupstore-tests --bin make_v1_fixture -- tests/fixtures/v1-store`

use std::time::Duration;

use dedupstore::{Claim, Config, Durability, ManualClock, Store};

/// The fixture's clock at creation (ms since the epoch).
const T0: u64 = 1_700_000_000_000;
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: make_v1_fixture DIR")?;
    if std::path::Path::new(&dir).exists() {
        return Err(format!("{dir} exists; the fixture is written once").into());
    }
    let clock = ManualClock::new(T0);
    let cfg = Config::default()
        .durability(Durability::Immediate)
        .segment_size(64 << 10)
        .gc_interval(None)
        .clock(clock.clone());
    let s = Store::open(&dir, cfg)?;
    // 3000 inserts roll the log over two segments; every tenth is removed.
    for i in 0..3000u32 {
        let _ = s.check_and_insert(format!("fixture-insert-{i}").as_bytes(), 5 * YEAR)?;
    }
    for i in (0..3000u32).step_by(10) {
        s.remove(format!("fixture-insert-{i}").as_bytes())?;
    }
    let _ = s.check_and_insert(b"fixture-expired", Duration::from_secs(1))?;
    let Claim::Acquired(_) = s.claim(b"fixture-claim", 5 * YEAR, Some(7))? else {
        return Err("claim".into());
    };
    let Claim::Acquired(t) = s.claim(b"fixture-done", YEAR, Some(9))? else {
        return Err("claim".into());
    };
    s.complete(&t, Some(b"receipt"), 5 * YEAR)?;
    s.close()?;
    std::fs::remove_file(std::path::Path::new(&dir).join("LOCK"))?;
    Ok(())
}

//! Child process for the kill -9 tests: inserts IDs `start..` into the store
//! and prints each one after `check_and_insert` returned `Inserted`, until it
//! is killed. `interval` mode prints `S <i>` after each `sync()` covering
//! every ID up to `i`.
//!
//! Usage: crash_child DIR immediate|interval START

use std::io::Write;
use std::time::Duration;

use dedupstore::{Config, Durability, Outcome, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, mode, start] = &args[..] else {
        return Err("usage: crash_child DIR immediate|interval START".into());
    };
    let start: u64 = start.parse()?;
    let durability = match mode.as_str() {
        "immediate" => Durability::Immediate,
        _ => Durability::Interval(Duration::from_millis(5)),
    };
    let store = Store::open(
        dir,
        Config::default()
            .durability(durability)
            .segment_size(256 << 10),
    )?;
    let mut out = std::io::stdout().lock();
    for i in start.. {
        let key = format!("msg-{i}");
        if store.check_and_insert(key.as_bytes(), Duration::from_secs(3600))? != Outcome::Inserted {
            return Err(format!("fresh ID {i} reported as a duplicate").into());
        }
        writeln!(out, "{i}")?;
        if durability != Durability::Immediate && i % 97 == 0 {
            store.sync()?;
            writeln!(out, "S {i}")?;
        }
        out.flush()?;
    }
    Ok(())
}

//! Set-up shared by the black-box tests: configurations and helpers that
//! several test files need in the same form.

use std::time::Duration;

use dedupstore::sim::Fault;
use dedupstore::{Checkpoints, Claim, ClaimToken, Config, Durability, ManualClock};

/// `Immediate`, 64 KiB segments, no GC thread, on `clock`: the claim tests'
/// store, where every answer is durable when it returns.
pub fn immediate(clock: &ManualClock) -> Config {
    Config::default()
        .durability(Durability::Immediate)
        .segment_size(64 << 10)
        .gc_interval(None)
        .clock(clock.clone())
}

/// `Immediate` with no background I/O at all (no GC thread, checkpoints
/// only at close and after GC): an injected fault hits the call a test
/// aims at, not a background thread's.
pub fn quiet() -> Config {
    Config::default()
        .durability(Durability::Immediate)
        .gc_interval(None)
        .checkpoints(Checkpoints::OnCloseAndGc)
}

/// Every `msync` from the next one on fails with `EIO`.
pub fn msync_fails_from_now() -> Fault {
    Fault {
        at: 0,
        sticky: true,
        errno: libc::EIO,
        only: Some("msync"),
    }
}

/// The token of an `Acquired` claim; panics on any other answer.
pub fn acquired(c: &dedupstore::Result<Claim>) -> ClaimToken {
    match c {
        Ok(Claim::Acquired(t)) => t.clone(),
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// A day, the TTL most tests give their keys.
pub const DAY: Duration = Duration::from_secs(86_400);

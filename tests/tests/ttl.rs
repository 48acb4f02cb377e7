//! Per-key TTL with an injected clock.

use std::time::{Duration, UNIX_EPOCH};

use dedupstore::{Config, ManualClock, Outcome, Store};

const T0: u64 = 1_700_000_000_000;

#[test]
fn duplicate_until_expiry_then_inserted_also_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let cfg = || Config::default().clock(clock.clone());
    let ttl = Duration::from_secs(60);
    {
        let s = Store::open(dir.path(), cfg()).unwrap();
        assert_eq!(s.check_and_insert(b"k", ttl).unwrap(), Outcome::Inserted);
        let _ = s.check_and_insert(b"long", ttl * 10).unwrap();
        clock.advance(Duration::from_millis(59_999));
        assert_eq!(
            s.check_and_insert(b"k", ttl).unwrap(),
            Outcome::Duplicate {
                expires_at: UNIX_EPOCH + Duration::from_millis(T0 + 60_000)
            },
            "a duplicate keeps the first expiry"
        );
    }
    let s = Store::open(dir.path(), cfg()).unwrap();
    assert!(
        s.contains(b"k").unwrap(),
        "1 ms before expiry, after reopen"
    );
    clock.advance(Duration::from_millis(1));
    assert!(
        !s.contains(b"k").unwrap(),
        "expired at exactly its expiry time"
    );
    assert!(
        !s.remove(b"k").unwrap(),
        "an expired key is not present to remove"
    );
    assert!(s.contains(b"long").unwrap());
    drop(s);

    // Reopen after expiry: the expired key is not even loaded.
    let s = Store::open(dir.path(), cfg()).unwrap();
    assert_eq!(s.stats().indexed_keys, 1);
    assert_eq!(s.check_and_insert(b"k", ttl).unwrap(), Outcome::Inserted);
    drop(s);
    let s = Store::open(dir.path(), cfg()).unwrap();
    assert!(
        s.contains(b"k").unwrap(),
        "the re-insert after expiry is the live one"
    );
    clock.advance(ttl * 10);
    assert!(!s.contains(b"long").unwrap());
    assert!(!s.contains(b"k").unwrap());
}

#[test]
fn clock_jumping_backwards_extends_life_only() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let s = Store::open(dir.path(), Config::default().clock(clock.clone())).unwrap();
    let _ = s.check_and_insert(b"k", Duration::from_secs(10)).unwrap();
    clock.set_ms(T0 - 3_600_000);
    assert!(s.contains(b"k").unwrap());
    clock.set_ms(T0 + 10_000);
    assert!(!s.contains(b"k").unwrap());
}

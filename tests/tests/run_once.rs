//! run_once: claim, run, complete; release on failure; duplicates get the
//! stored response; in progress elsewhere and a late completion are said.

use std::cell::Cell;
use std::time::{Duration, UNIX_EPOCH};

use dedupstore::{fingerprint, Claim, Config, Error, KeyState, ManualClock, RunOnce, Store};

const T0: u64 = 1_700_000_000_000;
const LEASE: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(86_400);

fn open(clock: &ManualClock) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::default().gc_interval(None).clock(clock.clone());
    let s = Store::open(dir.path(), cfg).unwrap();
    (dir, s)
}

#[test]
fn runs_once_and_duplicates_get_the_stored_response() {
    let clock = ManualClock::new(T0);
    let (_d, s) = open(&clock);
    let runs = Cell::new(0);
    let f = Some(fingerprint(b"pay 10"));
    let effect = || -> Result<Vec<u8>, String> {
        runs.set(runs.get() + 1);
        Ok(b"receipt-1".to_vec())
    };
    assert_eq!(
        s.run_once("order-1", LEASE, f, DAY, effect).unwrap(),
        RunOnce::Ran(b"receipt-1".to_vec())
    );
    assert_eq!(
        s.run_once("order-1", LEASE, f, DAY, effect).unwrap(),
        RunOnce::Done(Some(b"receipt-1".to_vec()))
    );
    assert_eq!(runs.get(), 1);
    assert!(matches!(
        s.run_once("order-1", LEASE, Some(fingerprint(b"pay 99")), DAY, effect),
        Err(Error::FingerprintMismatch { .. })
    ));
    assert_eq!(runs.get(), 1);
}

#[test]
fn a_failed_effect_releases_the_claim_and_the_next_delivery_runs_it() {
    let clock = ManualClock::new(T0);
    let (_d, s) = open(&clock);
    let r = s
        .run_once("k", LEASE, None, DAY, || Err::<Vec<u8>, _>("timeout"))
        .unwrap();
    assert_eq!(r, RunOnce::Failed("timeout"));
    assert_eq!(s.peek("k").unwrap(), KeyState::Absent);
    let r = s
        .run_once("k", LEASE, None, DAY, || Ok::<_, ()>(b"ok".to_vec()))
        .unwrap();
    assert_eq!(r, RunOnce::Ran(b"ok".to_vec()));
}

#[test]
fn in_progress_elsewhere_does_not_run_and_a_late_completion_is_said() {
    let clock = ManualClock::new(T0);
    let (_d, s) = open(&clock);
    let Claim::Acquired(_held) = s.claim("busy", LEASE, None).unwrap() else {
        panic!("fresh key")
    };
    let r = s
        .run_once("busy", LEASE, None, DAY, || -> Result<Vec<u8>, ()> {
            panic!("must not run")
        })
        .unwrap();
    assert_eq!(
        r,
        RunOnce::InProgress {
            lease_expires_at: UNIX_EPOCH + Duration::from_millis(T0) + LEASE
        }
    );
    // The effect outlives its lease and someone else takes over meanwhile.
    let r = s
        .run_once("slow", LEASE, None, DAY, || -> Result<Vec<u8>, ()> {
            clock.advance(LEASE + Duration::from_secs(1));
            let Claim::Acquired(_) = s.claim("slow", LEASE, None).unwrap() else {
                panic!("lease ended: takeover")
            };
            Ok(b"late".to_vec())
        })
        .unwrap();
    assert_eq!(r, RunOnce::RanLate(b"late".to_vec()));
    assert!(matches!(
        s.peek("slow").unwrap(),
        KeyState::InProgress { .. }
    ));
}

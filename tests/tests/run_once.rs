//! run_once: claim, run, complete; release on failure; duplicates get the
//! stored response; in progress elsewhere and a late completion are said.
//! `run_once_batch`: the same per item, one sync per step.

use std::cell::Cell;
use std::time::{Duration, UNIX_EPOCH};

use dedupstore::{
    fingerprint, Claim, Config, Durability, Error, KeyState, ManualClock, RunOnce, Store,
};

const T0: u64 = 1_700_000_000_000;
const LEASE: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(86_400);

fn open(clock: &ManualClock) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::default()
        .durability(Durability::Immediate)
        .gc_interval(None)
        .clock(clock.clone());
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

#[test]
fn a_mixed_batch_answers_each_item_in_order_with_one_sync_per_step() {
    let clock = ManualClock::new(T0);
    let (_d, s) = open(&clock);
    // "done" was completed earlier, "busy" is claimed by another caller.
    let r = s.run_once("done", LEASE, None, DAY, || Ok::<_, ()>(b"r-done".to_vec()));
    assert_eq!(r.unwrap(), RunOnce::Ran(b"r-done".to_vec()));
    let Claim::Acquired(_held) = s.claim("busy", LEASE, None).unwrap() else {
        panic!("fresh key")
    };
    let f = |p: &str| Some(fingerprint(p));
    let items = [
        ("new-1", f("p1")),
        ("done", None),
        ("busy", None),
        ("fails", None),
        ("new-2", f("p2")),
        ("done", f("other payload")),
    ];
    let mut ran = Vec::new();
    let before = s.counters();
    let out = s
        .run_once_batch(&items, LEASE, DAY, |i, key| {
            ran.push((i, key.to_vec()));
            if key == b"fails" {
                Err("broker down")
            } else {
                Ok(format!("r-{i}").into_bytes())
            }
        })
        .unwrap();
    let after = s.counters();
    assert_eq!(
        ran,
        [
            (0, b"new-1".to_vec()),
            (3, b"fails".to_vec()),
            (4, b"new-2".to_vec())
        ]
    );
    assert_eq!(out.len(), items.len());
    assert_eq!(*out[0].as_ref().unwrap(), RunOnce::Ran(b"r-0".to_vec()));
    assert_eq!(
        *out[1].as_ref().unwrap(),
        RunOnce::Done(Some(b"r-done".to_vec()))
    );
    assert_eq!(
        *out[2].as_ref().unwrap(),
        RunOnce::InProgress {
            lease_expires_at: UNIX_EPOCH + Duration::from_millis(T0) + LEASE
        }
    );
    assert_eq!(*out[3].as_ref().unwrap(), RunOnce::Failed("broker down"));
    assert_eq!(*out[4].as_ref().unwrap(), RunOnce::Ran(b"r-4".to_vec()));
    // "done" was completed without a fingerprint: none to compare against.
    assert_eq!(
        *out[5].as_ref().unwrap(),
        RunOnce::Done(Some(b"r-done".to_vec()))
    );
    // One sync to claim, one to complete, one to release.
    assert_eq!(after.syncs - before.syncs, 3, "{after:?}");
    assert_eq!(after.claims_acquired - before.claims_acquired, 3);
    assert_eq!(after.claims_completed - before.claims_completed, 2);
    assert_eq!(after.claims_released - before.claims_released, 1);
    // The stored state matches the answers.
    assert!(matches!(
        s.peek("new-2").unwrap(),
        KeyState::Completed { response: Some(r), .. } if r == b"r-4"
    ));
    assert_eq!(s.peek("fails").unwrap(), KeyState::Absent);
    assert!(matches!(
        s.peek("busy").unwrap(),
        KeyState::InProgress { .. }
    ));
    // The next delivery of the batch runs only the failed item.
    let mut ran = Vec::new();
    let before = s.counters();
    let out = s
        .run_once_batch(&items[..5], LEASE, DAY, |i, _| {
            ran.push(i);
            Ok::<_, ()>(b"again".to_vec())
        })
        .unwrap();
    assert_eq!(ran, [3]);
    assert_eq!(
        *out[0].as_ref().unwrap(),
        RunOnce::Done(Some(b"r-0".to_vec()))
    );
    assert_eq!(*out[3].as_ref().unwrap(), RunOnce::Ran(b"again".to_vec()));
    // Claim and complete; no release.
    assert_eq!(s.counters().syncs - before.syncs, 2);
}

#[test]
fn a_batch_of_duplicates_runs_nothing_and_needs_no_sync() {
    let clock = ManualClock::new(T0);
    let (_d, s) = open(&clock);
    let items = [("a", None), ("b", None)];
    let out = s
        .run_once_batch(&items, LEASE, DAY, |_, _| Ok::<_, ()>(Vec::new()))
        .unwrap();
    assert!(out
        .iter()
        .all(|r| *r.as_ref().unwrap() == RunOnce::Ran(Vec::new())));
    let before = s.counters().syncs;
    let out = s
        .run_once_batch(&items, LEASE, DAY, |_, _| -> Result<Vec<u8>, ()> {
            panic!("duplicates must not run")
        })
        .unwrap();
    // An empty response is stored as none.
    assert!(out
        .iter()
        .all(|r| *r.as_ref().unwrap() == RunOnce::Done(None)));
    // Nothing to write: the answers rely on records already durable.
    assert_eq!(s.counters().syncs - before, 0);
    let empty: [(&str, Option<u64>); 0] = [];
    assert!(s
        .run_once_batch(&empty, LEASE, DAY, |_, _| Ok::<_, ()>(Vec::new()))
        .unwrap()
        .is_empty());
}

#[test]
fn a_key_repeated_in_the_batch_runs_once() {
    let clock = ManualClock::new(T0);
    let (_d, s) = open(&clock);
    let items = [
        ("k", None),
        ("x", None),
        ("k", None),
        ("bad", None),
        ("bad", None),
    ];
    let mut ran = Vec::new();
    let out = s
        .run_once_batch(&items, LEASE, DAY, |i, key| {
            ran.push(i);
            if key == b"bad" {
                Err(i)
            } else {
                Ok(format!("r-{i}").into_bytes())
            }
        })
        .unwrap();
    assert_eq!(ran, [0, 1, 3]);
    assert_eq!(*out[0].as_ref().unwrap(), RunOnce::Ran(b"r-0".to_vec()));
    // The repeat gets the response its first occurrence stored.
    assert_eq!(
        *out[2].as_ref().unwrap(),
        RunOnce::Done(Some(b"r-0".to_vec()))
    );
    assert_eq!(*out[3].as_ref().unwrap(), RunOnce::Failed(3));
    // The first occurrence failed: the repeat must not be acked.
    assert!(matches!(
        out[4].as_ref().unwrap(),
        RunOnce::InProgress { .. }
    ));
    assert_eq!(s.peek("bad").unwrap(), KeyState::Absent);
}

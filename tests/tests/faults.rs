//! Failing I/O calls: a failed sync, a full disk, and every single I/O call
//! of a workload failing in turn (SQLite-style).

use dedupstore_tests::support;
use std::collections::BTreeSet;
use std::time::Duration;

use dedupstore::sim::{CrashMode, Fault, SimFs};
use dedupstore::{Checkpoints, Config, Durability, Error, Store};

const DAY: Duration = Duration::from_secs(86_400);

fn cfg() -> Config {
    Config::default()
        .segment_size(64 << 10)
        // No background checkpoint writer: an injected fault must hit the
        // call the test aims at, not one of that thread's.
        .checkpoints(Checkpoints::OnCloseAndGc)
}

#[test]
fn a_failed_sync_stops_writes_until_reopen() {
    let fs = SimFs::new();
    let s = Store::open_with(fs.clone(), "/db", cfg()).unwrap();
    let _ = s.check_and_insert(b"durable", DAY).unwrap();
    fs.fail_at(Some(Fault {
        at: 0,
        sticky: false,
        errno: libc::EIO,
        only: None,
    }));
    let err = s.check_and_insert(b"unsynced", DAY).unwrap_err();
    assert!(matches!(err, Error::Io { op: "msync", .. }), "{err}");
    fs.fail_at(None);
    // Even though the disk works again, nothing is acknowledged any more.
    assert!(matches!(
        s.check_and_insert(b"later", DAY),
        Err(Error::SyncFailed)
    ));
    assert!(matches!(s.remove(b"durable"), Err(Error::SyncFailed)));
    assert!(
        matches!(s.contains(b"unsynced"), Err(Error::SyncFailed)),
        "never reported as durable"
    );
    assert!(
        s.contains(b"durable").unwrap(),
        "durable data is still answered"
    );
    assert!(matches!(s.sync(), Err(Error::SyncFailed)));
    drop(s);
    let s = Store::open_with(fs.crash(CrashMode::DropUnsynced), "/db", cfg()).unwrap();
    assert!(s.contains(b"durable").unwrap());
    assert!(!s.contains(b"later").unwrap());
    let _ = s.check_and_insert(b"after reopen", DAY).unwrap();
}

#[test]
fn every_waiter_queued_behind_a_failing_sync_gets_an_error() {
    const THREADS: usize = 16;
    let fs = SimFs::new();
    let s = Store::open_with(fs.clone(), "/db", cfg().durability(Durability::Immediate)).unwrap();
    assert!(s.check_and_insert(b"durable", DAY).unwrap().is_inserted());
    // The next sync waits until released, then fails.
    fs.hold_syncs(true);
    fs.fail_at(Some(support::msync_fails_from_now()));
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let s = &s;
                scope.spawn(move || s.check_and_insert(format!("key-{i}").as_bytes(), DAY))
            })
            .collect();
        // Wait until every thread has appended its record and one sync is
        // in progress: all of them then wait on that sync, or queue behind it.
        while fs.held_syncs() < 1 || s.stats().indexed_keys < 1 + THREADS as u64 {
            std::thread::yield_now();
        }
        fs.hold_syncs(false);
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let mut io_errors = 0;
    for r in &results {
        match r {
            Err(Error::Io { op: "msync", .. }) => io_errors += 1,
            Err(Error::SyncFailed) => {}
            other => panic!("a waiter behind a failed sync got {other:?}"),
        }
    }
    assert_eq!(io_errors, 1, "exactly one sync ran and failed: {results:?}");
    fs.fail_at(None);
    assert!(matches!(
        s.check_and_insert(b"later", DAY),
        Err(Error::SyncFailed)
    ));
    assert!(matches!(s.contains(b"key-0"), Err(Error::SyncFailed)));
    // The batched lookup relies on the same record, so it waits as well.
    assert!(matches!(
        s.contains_batch(&[b"durable".as_slice(), b"key-0"]),
        Err(Error::SyncFailed)
    ));
    assert!(s.contains(b"durable").unwrap());
}

#[test]
fn disk_full_fails_cleanly_and_recovers_when_space_returns() {
    let fs = SimFs::new();
    let s = Store::open_with(fs.clone(), "/db", cfg().durability(Durability::None)).unwrap();
    // No more blocks can be reserved: the next segment cannot be
    // preallocated, so inserts fail once the current one is full. (Writes
    // into the current, preallocated segment need no new blocks.)
    fs.fail_at(Some(Fault {
        at: 0,
        sticky: true,
        errno: libc::ENOSPC,
        only: Some("allocate"),
    }));
    let mut acked = Vec::new();
    let mut failure = None;
    for i in 0..10_000u32 {
        match s.check_and_insert(i.to_le_bytes(), DAY) {
            Ok(o) => {
                assert!(o.is_inserted());
                acked.push(i);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let err = failure.expect("disk fills up");
    assert!(err.is_disk_full(), "{err}");
    assert!(!acked.is_empty());
    // Still full: still a clean error, and reads still work.
    assert!(s
        .check_and_insert(b"x-while-full", DAY)
        .unwrap_err()
        .is_disk_full());
    assert!(s.contains(acked[0].to_le_bytes()).unwrap());
    // Space freed: the same store goes on.
    fs.fail_at(None);
    assert!(s.check_and_insert(b"x-after", DAY).unwrap().is_inserted());
    s.sync().unwrap();
    drop(s);
    let s = Store::open_with(fs.crash(CrashMode::DropUnsynced), "/db", cfg()).unwrap();
    for i in &acked {
        assert!(s.contains(i.to_le_bytes()).unwrap(), "acked {i} lost");
    }
    assert!(s.contains(b"x-after").unwrap());
    assert!(!s.contains(b"x-while-full").unwrap());
}

/// A workload that opens, inserts across segment rolls, removes, closes.
/// Returns the keys acknowledged as durable and removed before a failure.
fn workload(
    fs: &SimFs,
    present: &mut BTreeSet<u32>,
    removed: &mut BTreeSet<u32>,
) -> Result<(), Error> {
    let s = Store::open_with(fs.clone(), "/db", cfg())?;
    for batch in 0..200u32 {
        let keys: Vec<[u8; 4]> = (batch * 20..batch * 20 + 20)
            .map(u32::to_le_bytes)
            .collect();
        for (k, o) in keys.iter().zip(s.check_and_insert_batch(&keys, DAY)?) {
            if o.is_inserted() {
                present.insert(u32::from_le_bytes(*k));
            }
        }
        if batch % 3 == 0 {
            let victim = batch * 7;
            // A removal that fails (a failed sync) may still have reached
            // the disk: from then on the key is neither surely present nor
            // surely removed.
            present.remove(&victim);
            if s.remove(victim.to_le_bytes())? {
                removed.insert(victim);
            }
        }
    }
    s.close()
}

#[test]
fn every_io_call_failing_in_turn_loses_nothing_acknowledged() {
    // Count the I/O calls of a clean run.
    let fs = SimFs::new();
    fs.fail_at(None);
    workload(&fs, &mut BTreeSet::new(), &mut BTreeSet::new()).unwrap();
    let total = fs.ops();
    assert!(total > 50, "workload makes {total} I/O calls");

    let mut failed_runs = 0;
    for at in 0..=total {
        for sticky in [false, true] {
            for errno in [libc::EIO, libc::ENOSPC] {
                let fs = SimFs::new();
                fs.fail_at(Some(Fault {
                    at,
                    sticky,
                    errno,
                    only: None,
                }));
                let (mut present, mut removed) = (BTreeSet::new(), BTreeSet::new());
                if workload(&fs, &mut present, &mut removed).is_err() {
                    failed_runs += 1;
                }
                // Power loss, then reopen with a healthy disk; reopening
                // with the fault still armed must fail cleanly or work.
                let crashed = fs.crash(CrashMode::DropUnsynced);
                crashed.fail_at(Some(Fault {
                    at: at % 7,
                    sticky,
                    errno,
                    only: None,
                }));
                let _ = Store::open_with(crashed.clone(), "/db", cfg());
                crashed.fail_at(None);
                let s = Store::open_with(crashed, "/db", cfg()).unwrap_or_else(|e| {
                    panic!("fault at {at} sticky {sticky}: reopen failed: {e}")
                });
                for k in &present {
                    assert!(
                        s.contains(k.to_le_bytes()).unwrap(),
                        "fault at {at}: acked {k} lost"
                    );
                }
                for k in &removed {
                    if !present.contains(k) {
                        assert!(
                            !s.contains(k.to_le_bytes()).unwrap(),
                            "fault at {at}: removed {k} is back"
                        );
                    }
                }
            }
        }
    }
    eprintln!(
        "{total} I/O calls, {} fault runs, {failed_runs} ended in an error",
        4 * (total + 1)
    );
    assert!(failed_runs > 0);
}

#[test]
fn a_batch_that_cannot_be_written_inserts_nothing() {
    let fs = SimFs::new();
    let s = Store::open_with(fs.clone(), "/db", cfg().durability(Durability::None)).unwrap();
    // Fill most of the first segment, then make new segments impossible.
    for i in 0..3000u32 {
        let _ = s.check_and_insert(i.to_le_bytes(), DAY).unwrap();
    }
    fs.fail_at(Some(Fault {
        at: 0,
        sticky: true,
        errno: libc::ENOSPC,
        only: Some("allocate"),
    }));
    let batch: Vec<[u8; 8]> = (0..1000u64)
        .map(|i| ((i + 1) << 40).to_le_bytes())
        .collect();
    let err = s.check_and_insert_batch(&batch, DAY).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    fs.fail_at(None);
    // A retry processes every key: none was half-inserted by the failure.
    let out = s.check_and_insert_batch(&batch, DAY).unwrap();
    assert!(
        out.iter().all(|o| o.is_inserted()),
        "a failed batch left keys behind"
    );
    // Oversized batches are refused before anything happens.
    let huge: Vec<[u8; 16]> = (0..20_000u128).map(|i| i.to_le_bytes()).collect();
    assert!(matches!(
        s.check_and_insert_batch(&huge, DAY),
        Err(Error::BatchTooLarge { .. })
    ));
    assert!(!s.contains(huge[0]).unwrap());
}

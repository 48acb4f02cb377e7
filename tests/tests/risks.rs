//! The risks named in the crash-safety review, each settled by a test.

use std::time::Duration;

use dedupstore::sim::{CrashMode, Fault, SimFs};
use dedupstore::{Checkpoints, Config, Durability, Error, ManualClock, Store};

const T0: u64 = 1_700_000_000_000;
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

fn cfg(clock: &ManualClock) -> Config {
    Config::default()
        .segment_size(64 << 10)
        .gc_interval(None)
        // No background checkpoint writer: an injected fault must hit the
        // call the test aims at, not one of that thread's.
        .checkpoints(Checkpoints::OnCloseAndGc)
        .clock(clock.clone())
}

/// A failed unlink during GC must not leak the segment until restart (it
/// goes back into the table and the next run deletes it), and must lose
/// nothing.
#[test]
fn a_failed_unlink_during_gc_is_retried_by_the_next_run() {
    let clock = ManualClock::new(T0);
    let fs = SimFs::new();
    let s = Store::open_with(fs.clone(), "/db", cfg(&clock)).unwrap();
    // Segment 1: short-lived IDs; later segments: one long-lived ID each.
    for i in 0..5_000u32 {
        let _ = s.check_and_insert(i.to_le_bytes(), HOUR).unwrap();
    }
    assert!(s.stats().segments >= 2);
    let _ = s.check_and_insert(b"long-lived", DAY).unwrap();
    clock.advance(2 * HOUR);
    fs.fail_at(Some(Fault {
        at: 0,
        sticky: false,
        errno: libc::EIO,
        only: Some("remove"),
    }));
    let err = s.gc_now().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Io {
                op: "remove segment",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(fs.failures(), 1);
    fs.fail_at(None);
    let before = s.stats().segments;
    let r = s.gc_now().expect("the next run works");
    assert!(r.segments_deleted >= 1, "{r:?}");
    assert!(s.stats().segments < before);
    let names = fs.file_names(std::path::Path::new("/db"));
    assert!(
        !names.iter().any(|n| n == "seg-0000000001.log"),
        "the expired segment is gone from disk: {names:?}"
    );
    assert!(s.contains(b"long-lived").unwrap());
    drop(s);
    let s = Store::open_with(fs.crash(CrashMode::DropUnsynced), "/db", cfg(&clock)).unwrap();
    assert!(s.contains(b"long-lived").unwrap());
}

/// A failed msync while sealing a segment (outside group commit) poisons
/// the store: no later call may report anything durable, even if a later
/// sync would succeed.
#[test]
fn a_failed_sync_while_rolling_poisons_every_later_acknowledgement() {
    let clock = ManualClock::new(T0);
    let fs = SimFs::new();
    let s = Store::open_with(fs.clone(), "/db", cfg(&clock).durability(Durability::None)).unwrap();
    s.sync().unwrap();
    fs.fail_at(Some(Fault {
        at: 0,
        sticky: false,
        errno: libc::EIO,
        only: Some("msync"),
    }));
    // Fill until the roll's sync fails.
    let mut failed = None;
    for i in 0..10_000u32 {
        if let Err(e) = s.check_and_insert(i.to_le_bytes(), DAY) {
            failed = Some(e);
            break;
        }
    }
    assert!(failed.is_some(), "the roll's msync failed");
    fs.fail_at(None);
    assert!(matches!(
        s.check_and_insert(b"x", DAY),
        Err(Error::SyncFailed)
    ));
    assert!(matches!(s.sync(), Err(Error::SyncFailed)));
    assert!(matches!(s.gc_now(), Err(Error::SyncFailed)));
}

/// A store holds no file descriptor per segment: with RLIMIT_NOFILE at 32 a
/// store of 100 segments opens, rolls and syncs. Runs in a child process,
/// since the limit is per process.
#[test]
fn a_low_file_descriptor_limit_does_not_limit_segments() {
    const CHILD: &str = "DEDUPSTORE_FD_LIMIT_CHILD";
    let dir = std::env::var(CHILD);
    let Ok(dir) = dir else {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_low_file_descriptor_limit_does_not_limit_segments",
                "--nocapture",
            ])
            .env(CHILD, dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    };
    let clock = ManualClock::new(T0);
    let cfg = cfg(&clock).durability(Durability::None);
    {
        let s = Store::open(&dir, cfg.clone()).unwrap();
        // 16-byte keys: 32-byte records, about 2000 per 64 KiB segment.
        for i in 0..210_000u128 {
            let _ = s.check_and_insert(i.to_le_bytes(), DAY).unwrap();
        }
        assert!(s.stats().segments >= 100);
        s.close().unwrap();
    }
    let lim = libc::rlimit {
        rlim_cur: 32,
        rlim_max: 32,
    };
    // SAFETY: plain syscall on a struct we own.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let s = Store::open(&dir, cfg).unwrap();
    assert!(s.stats().segments >= 100);
    for i in 1_000_000..1_020_000u128 {
        let _ = s.check_and_insert(i.to_le_bytes(), DAY).unwrap();
    }
    assert!(s.stats().segments >= 109, "rolled on");
    s.sync().unwrap();
    assert!(s.contains(0u128.to_le_bytes()).unwrap());
}

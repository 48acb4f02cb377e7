//! TTL garbage collection: bounded disk and memory, no lost or revived IDs.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::Duration;

use dedupstore::sim::{CrashMode, Fault, SimFs};
use dedupstore::{Config, Durability, ManualClock, Outcome, Store};

const T0: u64 = 1_700_000_000_000;

fn key(i: u64) -> [u8; 16] {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) as u128 | (i as u128) << 64).to_le_bytes()
}

#[test]
fn steady_state_disk_and_memory_stay_bounded() {
    // 1M inserts with a 50k-wide window: about 50k IDs live at any time.
    const LIVE: u64 = 50_000;
    const TOTAL: u64 = 20 * LIVE;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let cfg = Config::default()
        .durability(Durability::None)
        .segment_size(256 << 10)
        .gc_interval(None)
        .clock(clock.clone());
    let s = Store::open(dir.path(), cfg).unwrap();
    let ttl = Duration::from_millis(LIVE); // one ms per insert
    let live_bytes = LIVE * 32;
    let (mut max_disk, mut max_entries) = (0, 0);
    let mut rng = fastrand::Rng::with_seed(3);
    for i in 0..TOTAL {
        assert_eq!(
            s.check_and_insert(key(i), ttl).unwrap(),
            Outcome::Inserted,
            "key {i}"
        );
        clock.advance(Duration::from_millis(1));
        if i % 10_000 == 9_999 {
            s.gc_now().unwrap();
            let st = s.stats();
            max_disk = max_disk.max(st.disk_bytes);
            max_entries = max_entries.max(st.indexed_keys);
            assert!(
                st.disk_bytes <= 3 * live_bytes,
                "at {i}: {} disk bytes for {live_bytes} live bytes",
                st.disk_bytes
            );
            assert!(
                st.indexed_keys <= LIVE + 10_000,
                "at {i}: {} index entries",
                st.indexed_keys
            );
            // Every live ID is still a duplicate; expired ones are new again.
            for _ in 0..200 {
                let back = rng.u64(1..LIVE);
                if back <= i {
                    assert!(
                        s.contains(key(i - back)).unwrap(),
                        "at {i}: live key {} lost",
                        i - back
                    );
                }
                let old = i.saturating_sub(LIVE + rng.u64(1..LIVE));
                if i > 2 * LIVE {
                    assert!(
                        !s.contains(key(old)).unwrap(),
                        "at {i}: expired key {old} still present"
                    );
                }
            }
        }
    }
    let st = s.stats();
    eprintln!(
        "steady state: live {} keys, max disk {max_disk} B ({:.1} B/live ID), max index entries {max_entries}, \
         index heap {} B ({:.1} B/entry), {} GC runs, {} segments deleted, {} B reclaimed, last GC {:?}",
        st.live_keys,
        max_disk as f64 / LIVE as f64,
        st.index_bytes,
        st.index_bytes as f64 / st.indexed_keys.max(1) as f64,
        st.gc_runs,
        st.gc_segments_deleted,
        st.gc_bytes_reclaimed,
        st.gc_last_duration,
    );
    assert!(st.gc_segments_deleted > 50);
    drop(s);
    // A reopen loads only the live window.
    let s = Store::open(dir.path(), Config::default().clock(clock.clone())).unwrap();
    assert!(
        s.stats().indexed_keys <= LIVE + 1,
        "{}",
        s.stats().indexed_keys
    );
    assert!(s.contains(key(TOTAL - 1)).unwrap());
}

/// Fills the active segment with `n` short-lived keys.
fn filler(s: &Store<SimFs>, tag: u8, n: u32) {
    for i in 0..n {
        let mut k = [tag; 12];
        k[..4].copy_from_slice(&i.to_le_bytes());
        let _ = s.check_and_insert(k, Duration::from_secs(1)).unwrap();
    }
}

fn sim_cfg(clock: &ManualClock) -> Config {
    Config::default()
        .segment_size(64 << 10)
        .gc_interval(None)
        .clock(clock.clone())
}

#[test]
fn a_removal_survives_compaction_of_its_segment() {
    // The Bitcask tombstone bug: K's insert sits in segment 1 among other
    // live records; its removal sits in segment 2 among expired ones. When
    // segment 2 is compacted, the removal must be carried forward, or K
    // comes back from segment 1 on the next open.
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let day = Duration::from_secs(86_400);
    let s = Store::open_with(
        fs.clone(),
        "/db",
        sim_cfg(&clock).durability(Durability::None),
    )
    .unwrap();
    let _ = s.check_and_insert(b"K", day).unwrap();
    for i in 0..4000u32 {
        let _ = s.check_and_insert(i.to_le_bytes(), day).unwrap(); // keeps segment 1 live
    }
    assert!(s.stats().segments >= 2);
    assert!(s.remove(b"K").unwrap());
    filler(&s, 0xEE, 4000); // segment 2 is mostly short-lived keys
    clock.advance(Duration::from_secs(5));
    let report = s.compact().unwrap();
    assert!(report.segments_compacted >= 1, "{report:?}");
    assert!(!s.contains(b"K").unwrap());
    drop(s);
    let s = Store::open_with(fs.crash(CrashMode::DropUnsynced), "/db", sim_cfg(&clock)).unwrap();
    assert!(
        !s.contains(b"K").unwrap(),
        "removed ID came back after compaction"
    );
    assert!(s.contains(7u32.to_le_bytes()).unwrap());
}

/// Builds a store with live, removed and expired keys over several
/// segments. Returns (live keys, removed keys).
fn mixed_store(fs: &SimFs, clock: &ManualClock) -> (Vec<u32>, Vec<u32>) {
    let s = Store::open_with(
        fs.clone(),
        "/db",
        sim_cfg(clock).durability(Durability::None),
    )
    .unwrap();
    let day = Duration::from_secs(86_400);
    let (mut live, mut removed) = (Vec::new(), Vec::new());
    for i in 0..6000u32 {
        if i % 5 == 0 {
            let _ = s.check_and_insert(i.to_le_bytes(), day).unwrap();
            live.push(i);
        } else {
            let _ = s
                .check_and_insert(i.to_le_bytes(), Duration::from_secs(1))
                .unwrap();
        }
        if i % 50 == 49 {
            let victim = i - 49; // a live key, removed
            assert!(s.remove(victim.to_le_bytes()).unwrap());
            live.retain(|&k| k != victim);
            removed.push(victim);
        }
    }
    s.sync().unwrap();
    clock.advance(Duration::from_secs(5));
    (live, removed)
}

fn check(fs: SimFs, clock: &ManualClock, live: &[u32], removed: &[u32], ctx: &str) -> Store<SimFs> {
    let s = Store::open_with(fs.clone(), "/db", sim_cfg(clock))
        .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
    for k in live {
        assert!(s.contains(k.to_le_bytes()).unwrap(), "{ctx}: live {k} lost");
    }
    for k in removed {
        assert!(
            !s.contains(k.to_le_bytes()).unwrap(),
            "{ctx}: removed {k} came back"
        );
    }
    assert!(
        !fs.file_names(Path::new("/db"))
            .iter()
            .any(|n| n.ends_with(".tmp")),
        "{ctx}: orphan temp file"
    );
    s
}

#[test]
fn a_crash_at_any_step_of_compaction_loses_nothing() {
    let clock = ManualClock::new(T0);
    let base = SimFs::new();
    let (live, removed) = mixed_store(&base, &clock);

    // Count the I/O calls of one full compaction.
    let probe = base.crash(CrashMode::Kill);
    let s = Store::open_with(probe.clone(), "/db", sim_cfg(&clock)).unwrap();
    probe.fail_at(None);
    let report = s.compact().unwrap();
    let ops = probe.ops();
    assert!(
        report.segments_compacted >= 1 && report.records_copied > 0,
        "{report:?}"
    );
    drop(s);
    check(probe, &clock, &live, &removed, "clean compaction")
        .compact()
        .unwrap();

    let mut runs = 0;
    for at in 0..ops {
        for (sticky, mode) in [
            (false, CrashMode::DropUnsynced),
            (true, CrashMode::Torn(at)),
            (true, CrashMode::Kill),
        ] {
            let fs = base.crash(CrashMode::Kill);
            let s = Store::open_with(fs.clone(), "/db", sim_cfg(&clock)).unwrap();
            fs.fail_at(Some(Fault {
                at,
                sticky,
                errno: libc::EIO,
                only: None,
            }));
            let _ = s.compact(); // stops at the failed call, or goes on after it
            let crashed = fs.crash(mode);
            drop(s);
            let ctx = format!("I/O call {at} of {ops} failed, then {mode:?}");
            let s = check(crashed.clone(), &clock, &live, &removed, &ctx);
            // Whatever was left half done is finished by the next run.
            s.compact()
                .unwrap_or_else(|e| panic!("{ctx}: compact after reopen: {e}"));
            drop(s);
            check(crashed, &clock, &live, &removed, &ctx);
            runs += 1;
        }
    }
    eprintln!("compaction crash points: {ops} I/O calls x 3 crash kinds = {runs} runs");
}

#[test]
fn gc_runs_concurrently_with_four_inserting_threads() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let cfg = Config::default()
        .durability(Durability::None)
        .segment_size(64 << 10)
        .gc_interval(None)
        .compact_below(0.9)
        .clock(clock.clone());
    let s = Store::open(dir.path(), cfg).unwrap();
    let ttl = Duration::from_secs(25); // a key lives through 2 phases of 10 s
    let phases = 12u64;
    let per_phase = 3_000u64;
    let barrier = Barrier::new(5);
    let done = AtomicBool::new(false);
    let k = |t: u64, p: u64, i: u64| [t.to_le_bytes(), (p * per_phase + i).to_le_bytes()].concat();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                s.gc_now().unwrap();
            }
        });
        for t in 0..4u64 {
            let (s, barrier) = (&s, &barrier);
            sc.spawn(move || {
                for p in 0..phases {
                    barrier.wait(); // the clock moves only between phases
                    for i in 0..per_phase {
                        assert_eq!(
                            s.check_and_insert(k(t, p, i), ttl).unwrap(),
                            Outcome::Inserted
                        );
                        if p >= 1 {
                            let prev = k(t, p - 1, i);
                            assert!(
                                !s.check_and_insert(&prev, ttl).unwrap().is_inserted(),
                                "live key lost"
                            );
                        }
                        if p >= 3 {
                            let old = k(t, p - 3, i);
                            assert_eq!(
                                s.check_and_insert(&old, ttl).unwrap(),
                                Outcome::Inserted,
                                "expired key not new"
                            );
                            assert!(s.remove(&old).unwrap());
                        }
                    }
                    barrier.wait();
                }
            });
        }
        for _ in 0..phases {
            barrier.wait();
            barrier.wait();
            clock.advance(Duration::from_secs(10));
        }
        done.store(true, Ordering::Relaxed);
    });
    let st = s.stats();
    eprintln!("concurrent GC: {st:?}");
    assert!(st.gc_runs > 0 && st.gc_segments_deleted + st.gc_segments_compacted > 0);
}

/// GC's report is exact, and a fully live sealed segment is left alone
/// (found by mutation testing: the sweep's counting of live and dropped
/// entries could be changed without any test failing).
#[test]
fn gc_reports_exact_counts_and_leaves_live_segments_alone() {
    let clock = ManualClock::new(T0);
    let s = Store::open_with(
        SimFs::new(),
        "/db",
        Config::default()
            .durability(Durability::None)
            .segment_size(64 << 10)
            .gc_interval(None)
            .clock(clock.clone()),
    )
    .unwrap();
    // 4-byte keys: 20-byte records, 3273 per 64 KiB segment. Segment 1:
    // 2000 IDs for an hour, then 1273 for ten days; segment 2: ten-day IDs
    // only; segment 3: active.
    let hour = Duration::from_secs(3600);
    let ten_days = Duration::from_secs(10 * 86_400);
    for i in 0..7_000u32 {
        let ttl = if i < 2_000 { hour } else { ten_days };
        assert!(s
            .check_and_insert(i.to_le_bytes(), ttl)
            .unwrap()
            .is_inserted());
    }
    assert_eq!(s.stats().segments, 3);
    clock.advance(2 * hour);
    let r = s.gc_now().unwrap();
    assert_eq!(r.entries_dropped, 2_000, "{r:?}");
    assert_eq!(
        r.segments_compacted, 1,
        "only the mostly dead segment: {r:?}"
    );
    assert_eq!(r.records_copied, 1_273, "{r:?}");
    assert_eq!(r.segments_deleted, 0, "{r:?}");
    for i in (0..7_000u32).step_by(97) {
        assert_eq!(s.contains(i.to_le_bytes()).unwrap(), i >= 2_000, "key {i}");
    }
    // An idle second run has nothing to do.
    let r = s.gc_now().unwrap();
    assert_eq!(
        (r.entries_dropped, r.records_copied, r.segments_compacted),
        (0, 0, 0)
    );
}

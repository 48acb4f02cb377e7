//! Export and import (`Store::export`, `Store::import`, `verify_snapshot`):
//! round trips, each merge rule, damaged and truncated snapshots, a newer
//! version, export under concurrent writers and GC, a crash mid-import, and
//! a randomized round trip.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use dedupstore::sim::{CrashMode, Fault, SimFs};
use dedupstore::vfs::Vfs;
use dedupstore::{
    verify_snapshot, Claim, ClaimToken, Config, Durability, Error, ImportReport, KeyState,
    ManualClock, Phase, Store,
};

const T0: u64 = 1_700_000_000_000;
const LEASE: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(86_400);
const HOUR: Duration = Duration::from_secs(3600);

fn cfg(clock: &ManualClock) -> Config {
    Config::default()
        .segment_size(64 << 10)
        .gc_interval(None)
        .clock(clock.clone())
}

fn sim_store(clock: &ManualClock) -> (SimFs, Store<SimFs>) {
    let fs = SimFs::new();
    let s = Store::open_with(fs.clone(), "/db", cfg(clock)).unwrap();
    (fs, s)
}

fn acquired(c: Claim) -> ClaimToken {
    match c {
        Claim::Acquired(t) => t,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

fn export<F: Vfs>(s: &Store<F>) -> Vec<u8> {
    let mut out = Vec::new();
    s.export(&mut out, |_| {}).unwrap();
    out
}

fn import<F: Vfs>(s: &Store<F>, snap: &[u8]) -> dedupstore::Result<ImportReport> {
    s.import(Cursor::new(snap), |_| {})
}

fn at(ms: u64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Every key's answer: `contains`, and `peek` with `orphaned` set for every
/// claim (an imported claim is always orphaned in its new store).
fn state<F: Vfs>(s: &Store<F>, keys: &BTreeSet<Vec<u8>>) -> Vec<(Vec<u8>, bool, KeyState)> {
    keys.iter()
        .map(|k| {
            let peek = match s.peek(k).unwrap() {
                KeyState::InProgress {
                    lease_expires_at, ..
                } => KeyState::InProgress {
                    lease_expires_at,
                    orphaned: true,
                },
                other => other,
            };
            (k.clone(), s.contains(k).unwrap(), peek)
        })
        .collect()
}

fn keys(names: &[&str]) -> BTreeSet<Vec<u8>> {
    names.iter().map(|n| n.as_bytes().to_vec()).collect()
}

/// A source store with every kind of key: inserted (a, b), claimed (c,
/// fingerprint 7), completed with response and fingerprint (d), removed
/// (e), expired (f), released (g), completed without response (h).
fn source_with_all_kinds(clock: &ManualClock) -> Store<SimFs> {
    let (_, s) = sim_store(clock);
    assert!(s.check_and_insert(b"a", DAY).unwrap().is_inserted());
    assert!(s.check_and_insert(b"b", HOUR).unwrap().is_inserted());
    let _c = acquired(s.claim(b"c", LEASE, Some(7)).unwrap());
    let d = acquired(s.claim(b"d", LEASE, Some(9)).unwrap());
    s.complete(&d, Some(b"receipt-d"), DAY).unwrap();
    assert!(s.check_and_insert(b"e", DAY).unwrap().is_inserted());
    assert!(s.remove(b"e").unwrap());
    assert!(s
        .check_and_insert(b"f", Duration::from_secs(1))
        .unwrap()
        .is_inserted());
    let g = acquired(s.claim(b"g", LEASE, None).unwrap());
    s.release(&g).unwrap();
    let h = acquired(s.claim(b"h", LEASE, None).unwrap());
    s.complete(&h, None, DAY).unwrap();
    clock.advance(Duration::from_secs(2)); // f expires
    s
}

const ALL: &[&str] = &["a", "b", "c", "d", "e", "f", "g", "h"];

#[test]
fn round_trip_of_every_kind_into_an_empty_store() {
    let clock = ManualClock::new(T0);
    let src = source_with_all_kinds(&clock);
    let mut reports = Vec::new();
    let mut snap = Vec::new();
    let rep = src.export(&mut snap, |p| reports.push(p)).unwrap();
    assert_eq!(
        (rep.ids, rep.inserts, rep.claims, rep.completes),
        (5, 2, 1, 2)
    );
    assert_eq!(rep.bytes, snap.len() as u64);
    assert!(reports
        .iter()
        .all(|p| p.phase == Phase::Export && p.ids <= 5));
    let info = verify_snapshot(&snap[..]).unwrap();
    assert_eq!((info.ids, info.claims, info.version), (5, 1, 1));

    let (_, dst) = sim_store(&clock);
    let r = import(&dst, &snap).unwrap();
    assert_eq!((r.added, r.merged, r.unchanged, r.expired), (5, 0, 0, 0));
    let k = keys(ALL);
    assert_eq!(state(&src, &k), state(&dst, &k));
    // Exact values, not only equality with the source.
    assert_eq!(
        dst.peek(b"d").unwrap(),
        KeyState::Completed {
            response: Some(b"receipt-d".to_vec()),
            expires_at: at(T0 + DAY.as_millis() as u64)
        }
    );
    assert_eq!(
        dst.peek(b"c").unwrap(),
        KeyState::InProgress {
            lease_expires_at: at(T0 + LEASE.as_millis() as u64),
            orphaned: true
        }
    );
    for absent in ["e", "f", "g"] {
        assert_eq!(dst.peek(absent).unwrap(), KeyState::Absent, "{absent}");
        assert!(!dst.contains(absent).unwrap());
    }
    // Fingerprints came along: a reused ID is still caught.
    assert!(matches!(
        dst.claim(b"d", LEASE, Some(10)),
        Err(Error::FingerprintMismatch {
            stored: 9,
            given: 10
        })
    ));
    assert!(matches!(
        dst.claim(b"c", LEASE, Some(8)),
        Err(Error::FingerprintMismatch { stored: 7, .. })
    ));
    // The imported claim is orphaned: the next claim takes it over at once.
    let t = acquired(dst.claim(b"c", LEASE, Some(7)).unwrap());
    dst.complete(&t, Some(b"done here"), DAY).unwrap();
    // And it all survives a reopen of the target (it went through the log).
    let fs = SimFs::new();
    {
        let s = Store::open_with(fs.clone(), "/db", cfg(&clock)).unwrap();
        import(&s, &snap).unwrap();
        s.close().unwrap();
    }
    let s = Store::open_with(fs.crash(CrashMode::DropUnsynced), "/db", cfg(&clock)).unwrap();
    assert_eq!(state(&src, &k), state(&s, &k));
}

#[test]
fn import_is_durable_on_return_in_every_mode() {
    for d in [
        Durability::Immediate,
        Durability::None,
        Durability::Interval(Duration::from_secs(3600)),
    ] {
        let clock = ManualClock::new(T0);
        let src = source_with_all_kinds(&clock);
        let snap = export(&src);
        let fs = SimFs::new();
        let dst = Store::open_with(fs.clone(), "/db", cfg(&clock).durability(d)).unwrap();
        import(&dst, &snap).unwrap();
        let after =
            Store::open_with(fs.crash(CrashMode::DropUnsynced), "/db", cfg(&clock)).unwrap();
        let k = keys(ALL);
        assert_eq!(state(&src, &k), state(&after, &k), "{d:?}");
    }
}

#[test]
fn export_writes_only_durable_records() {
    // Under Durability::None nothing is synced by the writes; the export
    // must sync what it writes, so a power loss right after it keeps
    // every exported key.
    let clock = ManualClock::new(T0);
    let fs = SimFs::new();
    let s = Store::open_with(fs.clone(), "/db", cfg(&clock).durability(Durability::None)).unwrap();
    for i in 0..100u32 {
        assert!(s
            .check_and_insert(i.to_le_bytes(), DAY)
            .unwrap()
            .is_inserted());
    }
    let snap = export(&s);
    assert_eq!(verify_snapshot(&snap[..]).unwrap().ids, 100);
    let after = Store::open_with(fs.crash(CrashMode::DropUnsynced), "/db", cfg(&clock)).unwrap();
    for i in 0..100u32 {
        assert!(after.contains(i.to_le_bytes()).unwrap(), "{i}");
    }
}

/// A target with `t` and a snapshot with `s` for key "k": returns the
/// target after the import, and the import's report.
fn merge_one(
    clock: &ManualClock,
    target: impl FnOnce(&Store<SimFs>),
    source: impl FnOnce(&Store<SimFs>),
) -> (Store<SimFs>, ImportReport) {
    let (_, src) = sim_store(clock);
    source(&src);
    let snap = export(&src);
    let (_, dst) = sim_store(clock);
    target(&dst);
    let r = import(&dst, &snap).unwrap();
    (dst, r)
}

/// Inserted (or completed without a response) until `until_ms`.
fn plain(until_ms: u64) -> KeyState {
    KeyState::Completed {
        response: None,
        expires_at: at(until_ms),
    }
}

/// Completed with `resp` until `until_ms`.
fn done(resp: &[u8], until_ms: u64) -> KeyState {
    KeyState::Completed {
        response: Some(resp.to_vec()),
        expires_at: at(until_ms),
    }
}

const H: u64 = 3_600_000;

#[test]
fn merge_insert_and_insert_keeps_the_later_expiry() {
    let clock = ManualClock::new(T0);
    let longer =
        |s: &Store<SimFs>| assert!(s.check_and_insert(b"k", 2 * HOUR).unwrap().is_inserted());
    let shorter = |s: &Store<SimFs>| assert!(s.check_and_insert(b"k", HOUR).unwrap().is_inserted());
    let (dst, r) = merge_one(&clock, shorter, longer);
    assert_eq!(dst.peek(b"k").unwrap(), plain(T0 + 2 * H));
    assert_eq!(r.merged, 1);
    let (dst, r) = merge_one(&clock, longer, shorter);
    assert_eq!(dst.peek(b"k").unwrap(), plain(T0 + 2 * H));
    assert_eq!(r.unchanged, 1);
}

#[test]
fn merge_completed_wins_over_a_claim_and_fences_its_token() {
    let clock = ManualClock::new(T0);
    let token = Mutex::new(None);
    let (dst, r) = merge_one(
        &clock,
        |s| *token.lock().unwrap() = Some(acquired(s.claim(b"k", 2 * HOUR, None).unwrap())),
        |s| {
            let t = acquired(s.claim(b"k", LEASE, None).unwrap());
            s.complete(&t, Some(b"resp"), HOUR).unwrap();
        },
    );
    assert_eq!(r.merged, 1);
    // Completed with its response, present until the later expiry (the
    // target's lease).
    assert_eq!(dst.peek(b"k").unwrap(), done(b"resp", T0 + 2 * H));
    let t = token.into_inner().unwrap().unwrap();
    assert!(matches!(
        dst.complete(&t, Some(b"late"), DAY),
        Err(Error::StaleToken { .. })
    ));
}

#[test]
fn merge_keeps_a_completed_target_over_an_imported_claim_extending_its_expiry() {
    let clock = ManualClock::new(T0);
    let (dst, r) = merge_one(
        &clock,
        |s| {
            let t = acquired(s.claim(b"k", LEASE, Some(1)).unwrap());
            s.complete(&t, Some(b"mine"), HOUR).unwrap();
        },
        |s| drop(acquired(s.claim(b"k", 3 * HOUR, Some(1)).unwrap())),
    );
    assert_eq!(r.merged, 1);
    assert_eq!(dst.peek(b"k").unwrap(), done(b"mine", T0 + 3 * H));
    assert!(matches!(
        dst.claim(b"k", LEASE, Some(2)),
        Err(Error::FingerprintMismatch { stored: 1, .. })
    ));
}

#[test]
fn merge_completed_with_response_wins_over_a_plain_insert() {
    let clock = ManualClock::new(T0);
    let complete = |s: &Store<SimFs>| {
        let t = acquired(s.claim(b"k", LEASE, None).unwrap());
        s.complete(&t, Some(b"resp"), HOUR).unwrap();
    };
    let insert =
        |s: &Store<SimFs>| assert!(s.check_and_insert(b"k", 2 * HOUR).unwrap().is_inserted());
    let (dst, _) = merge_one(&clock, insert, complete);
    assert_eq!(dst.peek(b"k").unwrap(), done(b"resp", T0 + 2 * H));
    let (dst, _) = merge_one(&clock, complete, insert);
    assert_eq!(dst.peek(b"k").unwrap(), done(b"resp", T0 + 2 * H));
}

#[test]
fn merge_two_completes_keeps_the_later_expiry_and_its_response() {
    let clock = ManualClock::new(T0);
    let complete = |resp: &'static [u8], ttl| {
        move |s: &Store<SimFs>| {
            let t = acquired(s.claim(b"k", LEASE, None).unwrap());
            s.complete(&t, Some(resp), ttl).unwrap();
        }
    };
    let (dst, _) = merge_one(&clock, complete(b"old", HOUR), complete(b"new", 2 * HOUR));
    assert_eq!(dst.peek(b"k").unwrap(), done(b"new", T0 + 2 * H));
    let (dst, r) = merge_one(
        &clock,
        complete(b"mine", 2 * HOUR),
        complete(b"theirs", HOUR),
    );
    assert_eq!(dst.peek(b"k").unwrap(), done(b"mine", T0 + 2 * H));
    assert_eq!(r.unchanged, 1);
}

#[test]
fn merge_an_insert_wins_over_a_claim() {
    let clock = ManualClock::new(T0);
    let (dst, _) = merge_one(
        &clock,
        |s| drop(acquired(s.claim(b"k", 2 * HOUR, None).unwrap())),
        |s| assert!(s.check_and_insert(b"k", HOUR).unwrap().is_inserted()),
    );
    assert_eq!(dst.peek(b"k").unwrap(), plain(T0 + 2 * H));
}

#[test]
fn merge_two_claims_keeps_the_target_claim_and_its_token_with_the_later_lease() {
    let clock = ManualClock::new(T0);
    let token = Mutex::new(None);
    let (dst, r) = merge_one(
        &clock,
        |s| *token.lock().unwrap() = Some(acquired(s.claim(b"k", HOUR, Some(3)).unwrap())),
        |s| drop(acquired(s.claim(b"k", 2 * HOUR, Some(3)).unwrap())),
    );
    assert_eq!(r.merged, 1);
    assert_eq!(
        dst.peek(b"k").unwrap(),
        KeyState::InProgress {
            lease_expires_at: at(T0 + 2 * H),
            orphaned: false
        }
    );
    // The worker of this opening still owns it.
    let t = token.into_inner().unwrap().unwrap();
    dst.complete(&t, Some(b"ok"), DAY).unwrap();
    assert_eq!(dst.peek(b"k").unwrap(), done(b"ok", T0 + 24 * H));
}

#[test]
fn merge_an_imported_claim_is_orphaned_and_taken_over_by_the_next_claim() {
    let clock = ManualClock::new(T0);
    let (dst, _) = merge_one(
        &clock,
        |_| {},
        |s| drop(acquired(s.claim(b"k", HOUR, None).unwrap())),
    );
    assert_eq!(
        dst.peek(b"k").unwrap(),
        KeyState::InProgress {
            lease_expires_at: at(T0 + H),
            orphaned: true
        }
    );
    // Present for check_and_insert until taken over.
    assert!(!dst.check_and_insert(b"k", DAY).unwrap().is_inserted());
    let t = acquired(dst.claim(b"k", LEASE, None).unwrap());
    dst.release(&t).unwrap();
    assert_eq!(dst.peek(b"k").unwrap(), KeyState::Absent);
}

#[test]
fn merge_a_removed_key_in_the_target_is_absent_so_the_import_adds_it() {
    let clock = ManualClock::new(T0);
    let (dst, r) = merge_one(
        &clock,
        |s| {
            assert!(s.check_and_insert(b"k", 2 * HOUR).unwrap().is_inserted());
            assert!(s.remove(b"k").unwrap());
        },
        |s| assert!(s.check_and_insert(b"k", HOUR).unwrap().is_inserted()),
    );
    assert_eq!(r.added, 1);
    assert_eq!(dst.peek(b"k").unwrap(), plain(T0 + H));
}

#[test]
fn merge_skips_entries_that_expired_before_the_import() {
    let clock = ManualClock::new(T0);
    let (_, src) = sim_store(&clock);
    assert!(src.check_and_insert(b"k", HOUR).unwrap().is_inserted());
    assert!(src.check_and_insert(b"long", DAY).unwrap().is_inserted());
    let snap = export(&src);
    clock.advance(2 * HOUR);
    let (_, dst) = sim_store(&clock);
    let r = import(&dst, &snap).unwrap();
    assert_eq!((r.added, r.expired), (1, 1));
    assert_eq!(dst.peek(b"k").unwrap(), KeyState::Absent);
    assert!(dst.contains(b"long").unwrap());
}

#[test]
fn importing_twice_is_importing_once() {
    let clock = ManualClock::new(T0);
    let src = source_with_all_kinds(&clock);
    let snap = export(&src);
    let (_, dst) = sim_store(&clock);
    assert!(dst.check_and_insert(b"a", HOUR).unwrap().is_inserted());
    assert!(dst.check_and_insert(b"z", HOUR).unwrap().is_inserted());
    let first = import(&dst, &snap).unwrap();
    assert_eq!((first.added, first.merged), (4, 1));
    let mut k = keys(ALL);
    k.insert(b"z".to_vec());
    let once = state(&dst, &k);
    let log = dst.stats().log_bytes;
    let second = import(&dst, &snap).unwrap();
    assert_eq!((second.added, second.merged, second.unchanged), (0, 0, 5));
    assert_eq!(state(&dst, &k), once);
    assert_eq!(dst.stats().log_bytes, log, "a second import writes nothing");
}

/// A small snapshot of every kind, a target with its own keys, and the
/// target's full state.
fn damage_fixture() -> (ManualClock, Vec<u8>, Store<SimFs>, BTreeSet<Vec<u8>>) {
    let clock = ManualClock::new(T0);
    let src = source_with_all_kinds(&clock);
    let snap = export(&src);
    let (_, dst) = sim_store(&clock);
    assert!(dst.check_and_insert(b"a", HOUR).unwrap().is_inserted());
    assert!(dst.check_and_insert(b"mine", HOUR).unwrap().is_inserted());
    let mut k = keys(ALL);
    k.insert(b"mine".to_vec());
    (clock, snap, dst, k)
}

#[test]
fn every_truncation_is_refused_and_imports_nothing() {
    let (_clock, snap, dst, k) = damage_fixture();
    let before = state(&dst, &k);
    let log = dst.stats().log_bytes;
    for len in 0..snap.len() {
        let cut = &snap[..len];
        match import(&dst, cut) {
            Err(Error::SnapshotCorrupt { offset, reason }) => {
                assert_eq!(offset, len as u64, "cut at {len}: {reason}");
                assert!(reason.contains("truncated"), "cut at {len}: {reason}");
            }
            other => panic!("cut at {len}: {other:?}"),
        }
        assert!(verify_snapshot(cut).is_err(), "cut at {len}");
    }
    assert_eq!(state(&dst, &k), before);
    assert_eq!(dst.stats().log_bytes, log);
    // Trailing bytes are refused too.
    let mut long = snap.clone();
    long.push(0);
    assert!(matches!(
        import(&dst, &long),
        Err(Error::SnapshotCorrupt { offset, .. }) if offset == snap.len() as u64
    ));
    // And the intact one imports.
    import(&dst, &snap).unwrap();
    assert_ne!(state(&dst, &k), before);
}

#[test]
fn every_single_byte_flip_is_refused_and_imports_nothing() {
    let (_clock, snap, dst, k) = damage_fixture();
    let before = state(&dst, &k);
    let log = dst.stats().log_bytes;
    for i in 0..snap.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = snap.clone();
            bad[i] ^= flip;
            let err = import(&dst, &bad).expect_err("a flipped byte must be refused");
            assert!(
                matches!(
                    err,
                    Error::SnapshotCorrupt { .. } | Error::UnsupportedSnapshotVersion { .. }
                ),
                "byte {i} ^ {flip:#x}: {err:?}"
            );
            assert!(verify_snapshot(&bad[..]).is_err());
        }
    }
    assert_eq!(state(&dst, &k), before);
    assert_eq!(dst.stats().log_bytes, log);
}

#[test]
fn a_damaged_block_names_its_offset() {
    let (_clock, snap, dst, _) = damage_fixture();
    let mut bad = snap.clone();
    // The first block's payload starts after the 32-byte header and the
    // 24-byte block header.
    bad[32 + 24 + 3] ^= 1;
    match import(&dst, &bad) {
        Err(Error::SnapshotCorrupt { offset, reason }) => {
            assert_eq!(offset, 32 + 16, "the block's checksum field");
            assert_eq!(reason, "block checksum mismatch");
        }
        other => panic!("{other:?}"),
    }
    let msg = verify_snapshot(&bad[..]).unwrap_err().to_string();
    assert!(msg.contains("byte 48") && msg.contains("checksum"), "{msg}");
}

#[test]
fn a_newer_snapshot_version_is_refused_and_imports_nothing() {
    let (_clock, snap, dst, k) = damage_fixture();
    let before = state(&dst, &k);
    let mut newer = snap.clone();
    newer[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32fast::hash(&newer[..28]);
    newer[28..32].copy_from_slice(&crc.to_le_bytes());
    match import(&dst, &newer) {
        Err(
            e @ Error::UnsupportedSnapshotVersion {
                found: 2,
                supported: 1,
            },
        ) => {
            assert!(e.to_string().contains("version 2"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        verify_snapshot(&newer[..]),
        Err(Error::UnsupportedSnapshotVersion { found: 2, .. })
    ));
    assert_eq!(state(&dst, &k), before);
}

#[test]
fn import_refuses_a_poisoned_store() {
    let (_clock, snap, _, _) = damage_fixture();
    let clock = ManualClock::new(T0);
    let (fs, dst) = sim_store(&clock);
    fs.fail_at(Some(Fault {
        at: 0,
        sticky: false,
        errno: libc::EIO,
        only: Some("msync"),
    }));
    assert!(dst.check_and_insert(b"x", DAY).is_err());
    fs.fail_at(None);
    assert!(matches!(import(&dst, &snap), Err(Error::SyncFailed)));
    assert!(matches!(
        dst.export(Vec::new(), |_| {}),
        Err(Error::SyncFailed)
    ));
}

/// A snapshot of `n` keys of mixed kinds, and the target's state before and
/// after importing it cleanly (computed on a copy).
struct CrashFixture {
    clock: ManualClock,
    snap: Vec<u8>,
    base: SimFs,
    keys: BTreeSet<Vec<u8>>,
    pre: Vec<(Vec<u8>, bool, KeyState)>,
    post: Vec<(Vec<u8>, bool, KeyState)>,
}

fn crash_fixture() -> CrashFixture {
    let clock = ManualClock::new(T0);
    let (_, src) = sim_store(&clock);
    let (base, dst) = sim_store(&clock);
    let mut all = BTreeSet::new();
    for i in 0..3000u32 {
        let k = format!("key-{i:05}").into_bytes();
        match i % 4 {
            0 => {
                let _ = src.check_and_insert(&k, DAY).unwrap();
            }
            1 => drop(acquired(src.claim(&k, HOUR, Some(u64::from(i))).unwrap())),
            2 => {
                let t = acquired(src.claim(&k, LEASE, None).unwrap());
                src.complete(&t, Some(&i.to_le_bytes()), DAY).unwrap();
            }
            _ => {
                let _ = src.check_and_insert(&k, HOUR).unwrap();
            }
        }
        // The target has every fifth key already, with another expiry.
        if i % 5 == 0 {
            {
                let _ = dst.check_and_insert(&k, 2 * HOUR).unwrap();
            };
        }
        all.insert(k);
    }
    let snap = export(&src);
    let pre = state(&dst, &all);
    dst.close().unwrap();
    let copy = base.crash(CrashMode::DropUnsynced);
    let post = {
        let s = Store::open_with(copy, "/db", cfg(&clock)).unwrap();
        import(&s, &snap).unwrap();
        state(&s, &all)
    };
    assert_ne!(pre, post);
    CrashFixture {
        clock,
        snap,
        base,
        keys: all,
        pre,
        post,
    }
}

/// Every key is either as before the import or as after it.
fn assert_pre_or_post(f: &CrashFixture, s: &Store<SimFs>, what: &str) -> usize {
    let now = state(s, &f.keys);
    let mut merged = 0;
    for ((n, p), q) in now.iter().zip(&f.pre).zip(&f.post) {
        assert!(n == p || n == q, "{what}: {n:?} is neither {p:?} nor {q:?}");
        if n == q && n != p {
            merged += 1;
        }
    }
    merged
}

#[test]
fn a_power_loss_mid_import_leaves_each_key_before_or_after_and_a_reimport_completes_it() {
    let f = crash_fixture();
    let fs = f.base.crash(CrashMode::Kill);
    let dst = Store::open_with(fs.clone(), "/db", cfg(&f.clock)).unwrap();
    // Power-loss images taken after each applied batch (each one synced
    // under Immediate), torn ones too.
    let mut images = Vec::new();
    let mut batches = 0u64;
    dst.import(Cursor::new(&f.snap), |p| {
        if p.phase == Phase::Apply {
            batches += 1;
            images.push((p.ids, fs.crash(CrashMode::DropUnsynced)));
            images.push((p.ids, fs.crash(CrashMode::Torn(p.ids))));
        }
    })
    .unwrap();
    assert!(batches >= 3, "the import ran in {batches} batches");
    let mut last_merged = 0;
    for (i, (ids, image)) in images.into_iter().enumerate() {
        let s = Store::open_with(image, "/db", cfg(&f.clock)).unwrap();
        let merged = assert_pre_or_post(&f, &s, &format!("image {i} after {ids} ids"));
        // Acknowledged batches are durable: progress only grows.
        if i % 2 == 0 {
            assert!(merged >= last_merged, "image {i}: {merged} < {last_merged}");
            last_merged = merged;
        }
        import(&s, &f.snap).unwrap();
        assert_eq!(state(&s, &f.keys), f.post, "re-import after image {i}");
    }
    assert_eq!(state(&dst, &f.keys), f.post);
}

#[test]
fn a_power_loss_inside_a_batch_leaves_each_key_before_or_after() {
    // Each sync of the import is held while the images a kill and torn
    // power losses would leave are taken: the batch's records are written
    // (maybe in part) but not synced.
    let f = crash_fixture();
    let fs = f.base.crash(CrashMode::Kill);
    let dst = Store::open_with(fs.clone(), "/db", cfg(&f.clock)).unwrap();
    let done = AtomicBool::new(false);
    let batches = AtomicU64::new(0);
    let mut images = Vec::new();
    fs.hold_syncs(true);
    std::thread::scope(|sc| {
        let importer = sc.spawn(|| {
            // After each batch, the next sync is held again.
            let r = dst.import(Cursor::new(&f.snap), |p| {
                if p.phase == Phase::Apply {
                    batches.fetch_add(1, Ordering::SeqCst);
                    fs.hold_syncs(true);
                }
            });
            done.store(true, Ordering::SeqCst);
            r
        });
        let mut seed = 0;
        while !done.load(Ordering::SeqCst) {
            if fs.held_syncs() == 0 {
                std::thread::yield_now();
                continue;
            }
            seed += 1;
            let batch = batches.load(Ordering::SeqCst);
            images.push(fs.crash(CrashMode::Kill));
            images.push(fs.crash(CrashMode::Torn(seed)));
            images.push(fs.crash(CrashMode::DropUnsynced));
            fs.hold_syncs(false);
            // Until the batch is done (its progress re-arms the hold).
            while batches.load(Ordering::SeqCst) == batch && !done.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
        }
        fs.hold_syncs(false);
        importer.join().unwrap().unwrap();
    });
    assert!(images.len() >= 9, "{} images", images.len());
    for (i, image) in images.into_iter().enumerate() {
        let s = Store::open_with(image, "/db", cfg(&f.clock)).unwrap();
        assert_pre_or_post(&f, &s, &format!("image {i}"));
        import(&s, &f.snap).unwrap();
        assert_eq!(state(&s, &f.keys), f.post, "re-import after image {i}");
    }
    assert_eq!(state(&dst, &f.keys), f.post);
}

#[test]
fn a_failed_sync_mid_import_stops_it_and_a_reopen_and_reimport_complete_it() {
    let f = crash_fixture();
    for nth in [0u64, 1, 2] {
        let fs = f.base.crash(CrashMode::Kill);
        let dst = Store::open_with(fs.clone(), "/db", cfg(&f.clock)).unwrap();
        fs.fail_at(Some(Fault {
            at: nth,
            sticky: false,
            errno: libc::EIO,
            only: Some("msync"),
        }));
        let err = import(&dst, &f.snap).unwrap_err();
        assert!(
            matches!(err, Error::SyncFailed | Error::Io { .. }),
            "{err:?}"
        );
        assert!(matches!(import(&dst, &f.snap), Err(Error::SyncFailed)));
        fs.fail_at(None);
        drop(dst);
        for image in [fs.crash(CrashMode::Kill), fs.crash(CrashMode::DropUnsynced)] {
            let s = Store::open_with(image, "/db", cfg(&f.clock)).unwrap();
            assert_pre_or_post(&f, &s, &format!("sync {nth} failed"));
            import(&s, &f.snap).unwrap();
            assert_eq!(state(&s, &f.keys), f.post);
        }
    }
}

#[test]
fn export_under_concurrent_writers_and_gc_has_every_earlier_ack_and_no_phantom() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let s = Store::open(
        dir.path(),
        Config::default()
            .segment_size(256 << 10)
            .gc_interval(None)
            .compact_below(1.0)
            .clock(clock.clone()),
    )
    .unwrap();
    let key = |w: u32, i: u32| format!("w{w}-{i:07}").into_bytes();
    // Before the export: 4 writers' first 5000 keys, then every third of
    // them removed.
    for w in 0..4 {
        let batch: Vec<Vec<u8>> = (0..5000).map(|i| key(w, i)).collect();
        s.check_and_insert_batch(&batch, DAY).unwrap();
        for i in (0..5000).step_by(3) {
            assert!(s.remove(key(w, i)).unwrap());
        }
    }
    let stop = AtomicBool::new(false);
    let written = AtomicU64::new(0);
    let mut snap = Vec::new();
    let mut ends: Vec<u32> = Vec::new();
    std::thread::scope(|sc| {
        let mut handles = Vec::new();
        for w in 0..4 {
            let (s, stop, written) = (&s, &stop, &written);
            handles.push(sc.spawn(move || {
                let mut i = 5000;
                while !stop.load(Ordering::Relaxed) {
                    assert!(s.check_and_insert(key(w, i), DAY).unwrap().is_inserted());
                    written.fetch_add(1, Ordering::Relaxed);
                    if i % 2 == 0 {
                        // Churn that leaves dead records for compaction.
                        assert!(s.remove(key(w, i)).unwrap());
                    }
                    i += 1;
                }
                i
            }));
        }
        let (s, stop) = (&s, &stop);
        let gc = sc.spawn(move || {
            let mut runs = 0;
            loop {
                s.compact().unwrap();
                runs += 1;
                if stop.load(Ordering::Relaxed) {
                    return runs;
                }
            }
        });
        // Export once the writers are well under way.
        while written.load(Ordering::Relaxed) < 4000 {
            std::thread::yield_now();
        }
        s.export(&mut snap, |_| {}).unwrap();
        stop.store(true, Ordering::Relaxed);
        assert!(gc.join().unwrap() > 0);
        ends = handles.into_iter().map(|h| h.join().unwrap()).collect();
    });
    let info = verify_snapshot(&snap[..]).unwrap();
    let dst_dir = tempfile::tempdir().unwrap();
    let dst = Store::open(dst_dir.path(), cfg(&clock)).unwrap();
    import(&dst, &snap).unwrap();
    for w in 0..4 {
        for i in 0..5000 {
            assert_eq!(
                dst.contains(key(w, i)).unwrap(),
                i % 3 != 0,
                "w{w} key {i} acknowledged before the export"
            );
        }
    }
    // No phantom: every exported key is one a writer inserted (its key
    // range up to where it stopped), and nothing else.
    assert!(info.ids >= 4 * 3333);
    assert_eq!(dst.stats().live_keys, info.ids);
    let mut inserted_and_present = 0;
    for (w, &end) in ends.iter().enumerate() {
        let w = w as u32;
        let probe: Vec<Vec<u8>> = (0..end + 100).map(|i| key(w, i)).collect();
        let present = dst.contains_batch(&probe).unwrap();
        assert!(
            present[end as usize..].iter().all(|&p| !p),
            "w{w}: a key never inserted"
        );
        inserted_and_present += present.iter().filter(|&&p| p).count() as u64;
    }
    assert_eq!(inserted_and_present, info.ids);
}

/// Random operations on a source store; its export imported into a fresh
/// store must answer every key the same.
#[test]
fn randomized_round_trip_answers_every_key_the_same() {
    for seed in 0..24u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let clock = ManualClock::new(T0);
        let durability = if seed % 2 == 0 {
            Durability::Immediate
        } else {
            Durability::None
        };
        let fs = SimFs::new();
        let src = Store::open_with(fs.clone(), "/db", cfg(&clock).durability(durability)).unwrap();
        let nkeys = 1 + rng.u32(..300);
        let key = |k: u32| format!("k{k}").into_bytes();
        let mut tokens: Vec<ClaimToken> = Vec::new();
        for _ in 0..rng.usize(..2000) {
            let k = key(rng.u32(..nkeys));
            let ttl = Duration::from_millis(1 + rng.u64(..10 * H));
            let fp = if rng.bool() { Some(rng.u64(..4)) } else { None };
            match rng.u8(..10) {
                0..=2 => {
                    let _ = src.check_and_insert(&k, ttl).unwrap();
                }
                3 | 4 => {
                    if let Ok(Claim::Acquired(t)) = src.claim(&k, ttl, fp) {
                        tokens.push(t);
                    }
                }
                5 | 6 if !tokens.is_empty() => {
                    let t = tokens.swap_remove(rng.usize(..tokens.len()));
                    let len = rng.usize(..40);
                    let resp: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                    let _ = src.complete(&t, Some(&resp), ttl);
                }
                7 if !tokens.is_empty() => {
                    let t = tokens.swap_remove(rng.usize(..tokens.len()));
                    let _ = src.release(&t);
                }
                8 => drop(src.remove(&k).unwrap()),
                _ => clock.advance(Duration::from_millis(rng.u64(..H))),
            }
        }
        if rng.bool() {
            src.gc_now().unwrap();
        }
        let all: BTreeSet<Vec<u8>> = (0..nkeys).map(key).collect();
        let snap = export(&src);
        let (_, dst) = sim_store(&clock);
        let r = import(&dst, &snap).unwrap();
        assert_eq!(r.added, r.info.ids, "seed {seed}");
        assert_eq!(state(&src, &all), state(&dst, &all), "seed {seed}");
        let live = state(&src, &all).iter().filter(|(_, c, _)| *c).count() as u64;
        assert_eq!(
            r.info.ids, live,
            "seed {seed}: the snapshot has every live key"
        );
        // Claimed keys differ only in `orphaned`, which `state` sets.
    }
}

/// Rewrites the expiry of the first entry of the first block of `snap` and
/// fixes the block and stream checksums (docs/FORMAT.md, "Snapshot"): a
/// well-formed snapshot no export of this build writes.
fn with_first_expiry(snap: &[u8], expires_at: u64) -> Vec<u8> {
    let mut s = snap.to_vec();
    let block = 32;
    let payload = block + 24;
    s[payload + 4..payload + 12].copy_from_slice(&expires_at.to_le_bytes());
    let len = u32::from_le_bytes(s[block + 8..block + 12].try_into().unwrap()) as usize;
    let mut x = xxhash_rust::xxh3::Xxh3::new();
    x.update(&s[block..block + 16]);
    x.update(&s[payload..payload + len]);
    let sum = x.digest();
    s[block + 16..block + 24].copy_from_slice(&sum.to_le_bytes());
    let n = s.len();
    let sum = xxhash_rust::xxh3::xxh3_64(&s[..n - 8]);
    s[n - 8..].copy_from_slice(&sum.to_le_bytes());
    s
}

/// Review attack: an imported ID expiring "never" (u64::MAX ms, beyond
/// MAX_TTL) stays present through peek, GC and a reopen, and nothing panics.
#[test]
fn an_imported_expiry_at_the_end_of_time_is_kept_without_panic() {
    let clock = ManualClock::new(1_800_000_000_000);
    let (_, src) = sim_store(&clock);
    assert!(src.check_and_insert(b"k", HOUR).unwrap().is_inserted());
    let snap = with_first_expiry(&export(&src), u64::MAX);
    let (fs, dst) = sim_store(&clock);
    let r = import(&dst, &snap).expect("a well-formed snapshot imports");
    assert_eq!(r.added, 1);
    let _ = dst.peek(b"k").expect("peek");
    clock.advance(Duration::from_secs(20 * 365 * 86_400));
    dst.gc_now().expect("gc");
    assert!(
        dst.contains(b"k").unwrap(),
        "an ID expiring never was dropped"
    );
    dst.close().unwrap();
    let dst = Store::open_with(fs.clone(), "/db", cfg(&clock)).unwrap();
    assert!(dst.contains(b"k").unwrap(), "forgotten at reopen");
    assert!(!dst.check_and_insert(b"k", HOUR).unwrap().is_inserted());
}

/// Review attack: the disk fails (ENOSPC, then for good) at every I/O call
/// of an import in turn, then the power goes. Nothing panics; the target's
/// own durable IDs survive; no ID outside both sides appears; an import
/// that returned `Ok` is whole after the power loss.
#[test]
fn an_import_cut_by_a_full_disk_at_any_call_loses_nothing_and_invents_nothing() {
    let clock = ManualClock::new(T0);
    let (_, src) = sim_store(&clock);
    let src_keys: Vec<Vec<u8>> = (0..3000u32)
        .map(|i| format!("src-{i:06}").into_bytes())
        .collect();
    for k in &src_keys {
        assert!(src.check_and_insert(k, DAY).unwrap().is_inserted());
    }
    let snap = export(&src);
    let pre: Vec<Vec<u8>> = (0..50u32)
        .map(|i| format!("pre-{i:06}").into_bytes())
        .collect();
    let never: Vec<Vec<u8>> = (0..50u32)
        .map(|i| format!("never-{i:06}").into_bytes())
        .collect();
    let mut at = 0u64;
    loop {
        let fs = SimFs::new();
        let dst = Store::open_with(fs.clone(), "/db", cfg(&clock)).unwrap();
        for k in &pre {
            assert!(dst.check_and_insert(k, DAY).unwrap().is_inserted());
        }
        fs.fail_at(Some(Fault {
            at,
            sticky: true,
            errno: libc::ENOSPC,
            only: None,
        }));
        let r = import(&dst, &snap);
        let fired = fs.failures() > 0;
        fs.fail_at(None);
        drop(dst);
        let after =
            Store::open_with(fs.crash(CrashMode::DropUnsynced), "/db", cfg(&clock)).unwrap();
        assert!(
            after.contains_batch(&pre).unwrap().iter().all(|&p| p),
            "fault at {at}: a durable ID of the target was lost"
        );
        assert!(
            after.contains_batch(&never).unwrap().iter().all(|&p| !p),
            "fault at {at}: an ID never inserted is present"
        );
        if r.is_ok() {
            assert!(
                after.contains_batch(&src_keys).unwrap().iter().all(|&p| p),
                "fault at {at}: import returned Ok but lost IDs at power loss"
            );
        }
        if !fired {
            assert!(r.is_ok(), "no fault fired but the import failed: {r:?}");
            // The import rolls over several segments: many calls were cut.
            assert!(at > 10, "only {at} I/O calls in an import");
            break;
        }
        at += 1;
    }
}

/// Review attack: a progress callback that panics (in each phase) leaves
/// the store usable: no lock is held across the callback, nothing is
/// poisoned, and the same import run again completes it.
#[test]
fn a_panicking_progress_callback_leaves_the_store_usable() {
    let clock = ManualClock::new(T0);
    let (_, src) = sim_store(&clock);
    let keys: Vec<Vec<u8>> = (0..3000u32)
        .map(|i| format!("k-{i:06}").into_bytes())
        .collect();
    for k in &keys {
        assert!(src.check_and_insert(k, DAY).unwrap().is_inserted());
    }
    let exported = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        src.export(Vec::new(), |_| panic!("export progress"))
    }));
    assert!(exported.is_err(), "the callback ran");
    assert!(src.check_and_insert(b"after", DAY).unwrap().is_inserted());
    let snap = export(&src);
    for phase in [Phase::Verify, Phase::Apply] {
        let (_, dst) = sim_store(&clock);
        let imported = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            dst.import(Cursor::new(&snap[..]), |p| {
                if p.phase == phase {
                    panic!("import progress");
                }
            })
        }));
        assert!(imported.is_err(), "{phase:?}: the callback ran");
        assert!(dst.check_and_insert(b"x", DAY).unwrap().is_inserted());
        import(&dst, &snap).expect("the import again");
        assert!(dst.contains_batch(&keys).unwrap().iter().all(|&p| p));
        dst.close().expect("close after a panicking callback");
    }
}

/// Review attack: a torn power loss at each apply progress report of an
/// import under `Durability::Immediate`. README: "a batch whose progress was
/// reported (under `Immediate`) is durable". So the image taken at a report
/// of `ids` applied holds at least that many of the snapshot's IDs, all of
/// the target's own, and none never inserted.
#[test]
fn a_torn_power_loss_at_any_apply_report_keeps_every_reported_batch() {
    let clock = ManualClock::new(T0);
    let (_, src) = sim_store(&clock);
    let src_keys: Vec<Vec<u8>> = (0..4000u32)
        .map(|i| format!("src-{i:06}").into_bytes())
        .collect();
    for k in &src_keys {
        assert!(src.check_and_insert(k, DAY).unwrap().is_inserted());
    }
    let snap = export(&src);
    let pre: Vec<Vec<u8>> = (0..50u32)
        .map(|i| format!("pre-{i:06}").into_bytes())
        .collect();
    let never: Vec<Vec<u8>> = (0..50u32)
        .map(|i| format!("never-{i:06}").into_bytes())
        .collect();
    for seed in 0..4u64 {
        let fs = SimFs::new();
        let dst = Store::open_with(fs.clone(), "/db", cfg(&clock)).unwrap();
        for k in &pre {
            assert!(dst.check_and_insert(k, DAY).unwrap().is_inserted());
        }
        let mut images = Vec::new();
        dst.import(Cursor::new(&snap[..]), |p| {
            if p.phase == Phase::Apply {
                images.push((p.ids, fs.crash(CrashMode::Torn(seed * 1000 + p.ids))));
            }
        })
        .unwrap();
        assert!(images.len() > 1, "one batch only: nothing torn in between");
        for (done, image) in images {
            let after = Store::open_with(image, "/db", cfg(&clock)).unwrap();
            let present = after
                .contains_batch(&src_keys)
                .unwrap()
                .iter()
                .filter(|&&p| p)
                .count() as u64;
            assert!(
                present >= done,
                "seed {seed}: {done} IDs reported applied, {present} after the power loss"
            );
            assert!(after.contains_batch(&pre).unwrap().iter().all(|&p| p));
            assert!(after.contains_batch(&never).unwrap().iter().all(|&p| !p));
        }
    }
}

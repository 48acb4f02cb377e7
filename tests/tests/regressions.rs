//! Regression tests for the defects found in the review of 2301b69.
//!
//! Each test asserts the behaviour a correct store must show and fails on
//! 2301b69. They use only the public API and the simulated file system, so
//! they keep their meaning when the engine underneath is rewritten.
//!
//! Modelling notes (for 2301b69's `SimFs`):
//! - "the process died and restarted" is modelled by dropping the `Store`
//!   and reopening on the *same* `SimFs` (the page cache survives);
//! - "power loss" is `fs.crash(CrashMode::DropUnsynced)` (or `Torn`), taken
//!   while the store is still open, then reopening on the returned file
//!   system. `CrashMode::Kill` is only used as a cheap copy of a closed
//!   store, never to model loss.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dedupstore::sim::{CrashMode, Fault, SimFs};
use dedupstore::{
    Checkpoints, Claim, ClaimToken, Config, Durability, Error, ManualClock, Outcome, RecoveryMode,
    Store, MAX_TTL,
};

const T0: u64 = 1_700_000_000_000;
const SEC: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const TEN_DAYS: Duration = Duration::from_secs(10 * 86_400);
const DB: &str = "/db";
/// Records of a 64 KiB segment: 64-byte header, then records.
const SEG_SIZE: u64 = 64 << 10;
/// A 4-byte-key insert is 20 bytes: 3273 fit in one 64 KiB segment.
const PER_SEGMENT_4B: u32 = ((SEG_SIZE as u32) - 64) / 20;

fn cfg(clock: &ManualClock) -> Config {
    Config::default()
        .segment_size(SEG_SIZE)
        .gc_interval(None)
        // No background checkpoint writer: an injected fault must hit the
        // call the test aims at, not one of that thread's.
        .checkpoints(Checkpoints::OnCloseAndGc)
        .clock(clock.clone())
}

fn seg_path(id: u32) -> PathBuf {
    Path::new(DB).join(format!("seg-{id:010}.log"))
}

fn segment_ids(fs: &SimFs) -> Vec<u32> {
    let mut ids: Vec<u32> = fs
        .file_names(Path::new(DB))
        .iter()
        .filter_map(|n| n.strip_prefix("seg-")?.strip_suffix(".log")?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

/// An 8-byte key: a 4-byte tag (keeps key families apart) and an index.
fn k(tag: u32, i: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&tag.to_le_bytes());
    b[4..].copy_from_slice(&i.to_le_bytes());
    b
}

/// Inserts keys of family `tag` with `ttl` until the store has rolled to a
/// new segment file. The insert that made it roll is the only one of them in
/// the new segment. Returns how many were inserted.
fn fill_until_roll(s: &Store<SimFs>, fs: &SimFs, tag: u32, ttl: Duration) -> u32 {
    let before = segment_ids(fs).last().copied();
    // 24-byte records: at most 2728 fit in a 64 KiB segment.
    for i in 0..3000u32 {
        assert!(
            s.check_and_insert(k(tag, i), ttl).unwrap().is_inserted(),
            "filler {tag:#x}/{i} not new"
        );
        if segment_ids(fs).last().copied() > before {
            return i + 1;
        }
    }
    panic!("filler {tag:#x} did not roll");
}

fn acquired(c: Claim) -> ClaimToken {
    match c {
        Claim::Acquired(t) => t,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

fn left(at: SystemTime, clock_ms: u64) -> String {
    let at = at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    format!(
        "{:.2} days left",
        (at as f64 - clock_ms as f64) / 86_400_000.0
    )
}

/// Defect 1: compaction + a failed sync of the copies deletes the only
/// durable copy.
///
/// Scenario: segment 1 holds 1/3 long-lived IDs (acknowledged under
/// `Immediate`) and 2/3 IDs that then expire. GC compacts segment 1: the live
/// records are copied to the head and the index switched to the copies, then
/// the msync of the copies fails (EIO): the run errors, the store is
/// poisoned. A second GC run (as the background thread would do) finds
/// nothing live in segment 1, copies nothing, skips the durability wait and
/// unlinks it. A power loss then loses the acknowledged IDs.
///
/// Correct: after the failed sync GC refuses to run (returns an error), and
/// no acknowledged ID is lost by a power loss + reopen.
///
/// On 2301b69: the second run returns Ok (1 segment compacted, 0 records
/// copied) and 1091 of 1092 acknowledged IDs are gone after the power loss.
#[test]
fn defect_01_failed_sync_during_compaction_then_gc_deletes_only_durable_copy() {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let s = Store::open_with(fs.clone(), DB, cfg(&clock)).unwrap();
    let mut acked = Vec::new();
    for i in 0..PER_SEGMENT_4B + 3 {
        let ttl = if i % 3 == 0 { TEN_DAYS } else { SEC };
        assert!(s
            .check_and_insert(i.to_le_bytes(), ttl)
            .unwrap()
            .is_inserted());
        if i % 3 == 0 {
            acked.push(i);
        }
    }
    assert_eq!(s.stats().segments, 2, "segment 1 is sealed");
    clock.advance(5 * SEC);

    // The first msync from now on (the sync of the compaction copies) fails.
    fs.fail_at(Some(Fault {
        at: 0,
        sticky: false,
        errno: libc::EIO,
        only: Some("msync"),
    }));
    let first = s.gc_now();
    assert_eq!(
        fs.failures(),
        1,
        "scenario: the sync of the compaction copies must hit the injected msync failure"
    );
    assert!(
        first.is_err(),
        "a GC run whose sync failed must report it: {first:?}"
    );
    fs.fail_at(None);

    // The next GC run, on the poisoned store.
    let second = s.gc_now();

    let crashed = fs.crash(CrashMode::DropUnsynced);
    drop(s);
    let s = Store::open_with(crashed, DB, cfg(&clock)).unwrap();
    let lost: Vec<u32> = acked
        .iter()
        .copied()
        .filter(|i| !s.contains(i.to_le_bytes()).unwrap())
        .collect();
    assert!(
        lost.is_empty() && second.is_err(),
        "after a failed sync of compaction copies, the next GC run returned {second:?} \
         (must be an error) and a power loss lost {} of {} acknowledged IDs (first lost: {:?})",
        lost.len(),
        acked.len(),
        lost.first()
    );
}

/// Defect 2: compaction drops a removal that still shadows an older insert.
///
/// Scenario A (plain inserts): K inserted with TTL 10 d in segment 1 (kept
/// live by other 10-day IDs); K removed, then K inserted again with TTL 1 h,
/// both in segment 2 among short-lived filler. GC compacts segment 2: the 1 h
/// insert is copied forward but the removal is dropped (the key "has a later
/// record"). The 1 h insert expires and GC reclaims its segment.
/// Reopen: replay finds only the 10-day insert of segment 1.
///
/// Scenario B (claims): claim + complete (TTL 10 d) in segment 1, remove, claim
/// again with a 60 s lease whose consumer dies; compaction while the lease
/// runs drops the removal; after the lease the claim's segment is reclaimed.
///
/// Correct: after reopen K is absent in both scenarios (`Inserted`,
/// `Acquired`).
///
/// On 2301b69: A answers `Duplicate` with ~10 days left; B answers
/// `Completed { response: Some("done") }`: the removed result is back.
#[test]
fn defect_02_compaction_drops_removal_that_shadows_older_insert() {
    let mut failures = Vec::new();

    // Scenario A: check_and_insert / remove.
    {
        let fs = SimFs::new();
        let clock = ManualClock::new(T0);
        let c = cfg(&clock).durability(Durability::None);
        let s = Store::open_with(fs.clone(), DB, c.clone()).unwrap();
        assert!(s.check_and_insert(b"K", TEN_DAYS).unwrap().is_inserted());
        fill_until_roll(&s, &fs, 0xA, TEN_DAYS); // segment 1 stays live: not compacted
        assert!(s.remove(b"K").unwrap());
        assert!(s.check_and_insert(b"K", HOUR).unwrap().is_inserted());
        fill_until_roll(&s, &fs, 0xB, SEC); // segment 2: mostly short-lived
        clock.advance(5 * SEC);
        let r = s.gc_now().unwrap();
        assert!(r.segments_compacted >= 1, "segment 2 compacted: {r:?}");
        fill_until_roll(&s, &fs, 0xC, SEC); // seals the segment holding K's 1 h copy
        clock.advance(2 * HOUR);
        let r = s.gc_now().unwrap();
        assert!(
            r.segments_deleted + r.segments_compacted >= 1,
            "the 1 h copy's segment reclaimed: {r:?}"
        );
        assert!(!s.contains(b"K").unwrap(), "K absent before reopen");
        drop(s);
        let s = Store::open_with(fs.clone(), DB, c).unwrap();
        match s.check_and_insert(b"K", HOUR).unwrap() {
            Outcome::Inserted => {}
            Outcome::Duplicate { expires_at } => failures.push(format!(
                "insert variant: removed K is back after reopen: Duplicate with {}",
                left(expires_at, T0 + 7_205_000)
            )),
        }
    }

    // Scenario B: claim / complete / remove / claim (consumer dies).
    {
        let fs = SimFs::new();
        let clock = ManualClock::new(T0);
        let c = cfg(&clock).durability(Durability::None);
        let s = Store::open_with(fs.clone(), DB, c.clone()).unwrap();
        let tok = acquired(s.claim(b"K", 60 * SEC, None).unwrap());
        s.complete(&tok, Some(b"done"), TEN_DAYS).unwrap();
        fill_until_roll(&s, &fs, 0xA, TEN_DAYS);
        assert!(s.remove(b"K").unwrap());
        let _dead_consumer = acquired(s.claim(b"K", 60 * SEC, None).unwrap());
        fill_until_roll(&s, &fs, 0xB, SEC);
        clock.advance(5 * SEC); // within the lease
        let r = s.gc_now().unwrap();
        assert!(r.segments_compacted >= 1, "segment 2 compacted: {r:?}");
        fill_until_roll(&s, &fs, 0xC, SEC);
        clock.advance(120 * SEC); // the lease is over
        let r = s.gc_now().unwrap();
        assert!(
            r.segments_deleted + r.segments_compacted >= 1,
            "the claim copy's segment reclaimed: {r:?}"
        );
        drop(s);
        let s = Store::open_with(fs.clone(), DB, c).unwrap();
        match s.claim(b"K", 60 * SEC, None).unwrap() {
            Claim::Acquired(_) => {}
            other => failures.push(format!(
                "claim variant: removed K is back after reopen: {other:?}"
            )),
        }
    }

    assert!(failures.is_empty(), "{}", failures.join("; "));
}

/// Defect 3: the directory is never fsynced for the newest segment after a
/// restart.
///
/// Scenario: the roll to segment 2 renames it into place, then the
/// directory fsync fails (EIO): the insert that triggered the roll errors.
/// The process then dies and restarts (drop, reopen on the same `SimFs`):
/// segment 2 is in the page cache's directory, so it becomes the active
/// segment, but its name was never made durable and open does not fsync the
/// directory. 100 IDs are then acknowledged under `Immediate`; power loss.
///
/// Correct: all 100 acknowledged IDs are present after reopen.
///
/// On 2301b69: 100 of 100 are lost (segment 2 vanishes with its name).
#[test]
fn defect_03_newest_segment_name_not_durable_after_restart() {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let s = Store::open_with(fs.clone(), DB, cfg(&clock)).unwrap();
    fs.fail_at(Some(Fault {
        at: 0,
        sticky: false,
        errno: libc::EIO,
        only: Some("fsync dir"),
    }));
    let mut before = Vec::new();
    let mut err = None;
    for i in 0..PER_SEGMENT_4B + 10 {
        match s.check_and_insert(i.to_le_bytes(), DAY) {
            Ok(o) => {
                assert!(o.is_inserted());
                before.push(i);
            }
            Err(e) => {
                err = Some(e);
                break;
            }
        }
        if fs.failures() > 0 {
            break;
        }
    }
    assert_eq!(
        fs.failures(),
        1,
        "scenario: the roll's directory fsync fails"
    );
    // 2301b69 reports it: Io { op: "fsync dir" }.
    eprintln!("insert during the failed roll: {err:?}");
    fs.fail_at(None);
    drop(s); // the process dies; the page cache (and segment 2's name) survives

    let s = Store::open_with(fs.clone(), DB, cfg(&clock)).unwrap();
    let fresh: Vec<[u8; 8]> = (0..100).map(|i| k(0xF0, i)).collect();
    for key in &fresh {
        assert!(s.check_and_insert(key, DAY).unwrap().is_inserted());
    }
    let crashed = fs.crash(CrashMode::DropUnsynced);
    drop(s);
    let s = Store::open_with(crashed, DB, cfg(&clock)).unwrap();
    let lost_fresh = fresh
        .iter()
        .filter(|k| !s.contains(&k[..]).unwrap())
        .count();
    let lost_before = before
        .iter()
        .filter(|i| !s.contains(i.to_le_bytes()).unwrap())
        .count();
    assert!(
        lost_fresh == 0 && lost_before == 0,
        "power loss after restart lost {lost_fresh} of 100 IDs acknowledged under Immediate \
         (and {lost_before} of {} acknowledged before the failed roll)",
        before.len()
    );
}

/// Defect 4: a completion whose TTL is shorter than the remaining lease
/// revives the claim.
///
/// Scenario: claim K with a 60 s lease (segment 1, kept by 10-day IDs);
/// complete it with TTL 10 s (segment 2, among short-lived filler). At
/// +20 s the completion has expired but the lease has not; GC reclaims
/// segment 2 (compacts it: only the one 10-day filler ID that spilled into
/// it is copied; the expired completion is not). Reopen: replay finds the
/// claim in segment 1 with 40 s of lease left.
///
/// Correct: K is absent: `claim` → `Acquired`, `check_and_insert` →
/// `Inserted`.
///
/// On 2301b69: `claim` → `InProgress` and `check_and_insert` → `Duplicate`.
#[test]
fn defect_04_completion_ttl_shorter_than_lease_revives_claim() {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let c = cfg(&clock).durability(Durability::None);
    let s = Store::open_with(fs.clone(), DB, c.clone()).unwrap();
    let tok = acquired(s.claim(b"K", 60 * SEC, None).unwrap());
    fill_until_roll(&s, &fs, 0xA, TEN_DAYS);
    s.complete(&tok, Some(b"done"), 10 * SEC).unwrap();
    fill_until_roll(&s, &fs, 0xB, SEC);
    clock.advance(20 * SEC);
    assert!(!s.contains(b"K").unwrap(), "completion expired");
    let r = s.gc_now().unwrap();
    assert!(
        r.segments_deleted + r.segments_compacted >= 1,
        "completion's segment reclaimed: {r:?}"
    );
    drop(s);

    let copy = fs.crash(CrashMode::Kill); // a copy of the closed store
    let s = Store::open_with(fs.clone(), DB, c.clone()).unwrap();
    let claim = s.claim(b"K", 60 * SEC, None).unwrap();
    let s2 = Store::open_with(copy, DB, c).unwrap();
    let insert = s2.check_and_insert(b"K", DAY).unwrap();
    assert!(
        matches!(claim, Claim::Acquired(_)) && insert == Outcome::Inserted,
        "completed-and-expired K came back as a live claim after reopen: \
         claim -> {claim:?}, check_and_insert -> {insert:?}"
    );
}

/// Defect 5: a roll that fails after the rename leaves segment N+1 in the
/// directory while segment N keeps taking appends past its sealed
/// watermark.
///
/// Scenario (`Durability::None`): 2000 IDs are synced (acknowledged). A batch
/// that does not fit makes the log roll; segment 2 is renamed into place,
/// then the directory fsync fails (EIO). Later single inserts still fit in
/// segment 1 and go there, beyond the watermark it was sealed with. A power
/// loss with torn writes (`CrashMode::Torn(seed)`, seeds 0..64) then leaves
/// a torn record in segment 1, which is no longer the newest segment
/// whenever segment 2's name made it to disk.
///
/// Correct: every reopen succeeds (a torn unsynced tail is truncated) and
/// no acknowledged ID is lost.
///
/// On 2301b69: reopen fails with `Error::Corruption` in segment 1, just past
/// its sealed watermark ("record checksum mismatch", "unknown record kind",
/// ...) for 15 of the 64 seeds.
#[test]
fn defect_05_roll_failing_after_rename_then_torn_tail_is_corruption() {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let c = cfg(&clock).durability(Durability::None);
    let s = Store::open_with(fs.clone(), DB, c.clone()).unwrap();
    let acked: Vec<u32> = (0..2000).collect();
    for i in &acked {
        assert!(s
            .check_and_insert(i.to_le_bytes(), DAY)
            .unwrap()
            .is_inserted());
    }
    s.sync().unwrap();
    fs.fail_at(Some(Fault {
        at: 0,
        sticky: false,
        errno: libc::EIO,
        only: Some("fsync dir"),
    }));
    let batch: Vec<[u8; 4]> = (10_000..11_500u32).map(u32::to_le_bytes).collect();
    let res = s.check_and_insert_batch(&batch, DAY);
    assert_eq!(
        fs.failures(),
        1,
        "scenario: the roll's directory fsync fails"
    );
    // 2301b69: Err(Io { op: "fsync dir" }), with seg-0000000002.log in place.
    eprintln!(
        "batch: {:?}; segments now {:?}",
        res.map(|o| o.len()),
        segment_ids(&fs)
    );
    fs.fail_at(None);
    // Unsynced inserts after the failed roll (they may be refused).
    for i in 20_000..21_000u32 {
        if s.check_and_insert(i.to_le_bytes(), DAY).is_err() {
            break;
        }
    }
    let crashes: Vec<(u64, SimFs)> = (0..64)
        .map(|seed| (seed, fs.crash(CrashMode::Torn(seed))))
        .collect();
    drop(s);

    let mut failures = Vec::new();
    for (seed, crashed) in crashes {
        match Store::open_with(crashed, DB, c.clone()) {
            Ok(s) => {
                let lost = acked
                    .iter()
                    .filter(|i| !s.contains(i.to_le_bytes()).unwrap())
                    .count();
                if lost > 0 {
                    failures.push(format!("seed {seed}: {lost} acknowledged IDs lost"));
                }
            }
            Err(e) => failures.push(format!("seed {seed}: reopen failed: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 64 torn power losses after a roll that failed after its rename: {}",
        failures.len(),
        failures.join("; ")
    );
}

const CHILD_ENV: &str = "DEDUPSTORE_REGRESSION_06_VARIANT";
const DEFECT_06: &str = "defect_06_hostile_watermark_is_corruption_not_abort";

/// Builds a cleanly closed store of `segments` segments and gives segment
/// `target` a header watermark of `wm` with a valid checksum.
fn hostile_watermark_store(segments: u32, target: u32, wm: u64) -> SimFs {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let s = Store::open_with(fs.clone(), DB, cfg(&clock).durability(Durability::None)).unwrap();
    for t in 1..segments {
        fill_until_roll(&s, &fs, t, DAY);
    }
    for i in 0..10 {
        let _ = s.check_and_insert(k(0xEE, i), DAY).unwrap();
    }
    drop(s);
    assert_eq!(segment_ids(&fs), (1..=segments).collect::<Vec<_>>());
    let path = seg_path(target);
    let mut b = fs.read_file(&path).unwrap();
    b[24..32].copy_from_slice(&wm.to_le_bytes());
    let crc = crc32fast_hash(&b[24..32]);
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    fs.write_file(&path, &b);
    fs
}

/// CRC-32 (IEEE, as crc32fast computes it), so the test needs no extra crate.
fn crc32fast_hash(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// (name, segments in the store, target segment, watermark)
const DEFECT_06_VARIANTS: &[(&str, u32, u32, u64)] = &[
    ("newest segment, watermark 2^56", 1, 1, 1 << 56),
    ("sealed segment, watermark 2^56", 3, 1, 1 << 56),
    ("newest segment, watermark u64::MAX - 1", 1, 1, u64::MAX - 1),
    ("sealed segment, watermark u64::MAX - 1", 3, 1, u64::MAX - 1),
    (
        "newest of 3 segments, watermark u64::MAX - 1",
        3,
        3,
        u64::MAX - 1,
    ),
];

/// Child side of defect 6: opens one hostile store and reports the result
/// on stdout. An allocation failure aborts this process, not the harness.
fn defect_06_child(variant: &str) -> ! {
    let &(name, segments, target, wm) = DEFECT_06_VARIANTS
        .iter()
        .find(|v| v.0 == variant)
        .expect("known variant");
    let fs = hostile_watermark_store(segments, target, wm);
    let clock = ManualClock::new(T0);
    let outcome =
        std::panic::catch_unwind(|| match Store::open_with(fs.clone(), DB, cfg(&clock)) {
            Ok(_) => "opened".to_string(),
            Err(Error::Corruption { .. }) => "corruption".to_string(),
            Err(e) => format!("other error: {e}"),
        })
        .unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            format!("panicked: {msg}")
        });
    // On its own line: libtest's "test ... " prefix has no newline yet.
    println!("\nOUTCOME[{name}]: {outcome}");
    std::process::exit(0)
}

/// Defect 6: a hostile watermark (valid checksum) aborts or panics the
/// process instead of being reported as corruption.
///
/// Scenario: a closed store's segment header gets a watermark of 2^56 or
/// u64::MAX - 1 with a valid CRC (bytes 24..32 and 32..36), in the newest
/// or a sealed segment; then `Store::open`. Each variant runs in a child
/// process (this test binary, re-run with an env var), so an abort cannot
/// take the harness down.
///
/// Correct: `Store::open` returns `Err(Error::Corruption { .. })` for every
/// variant; no panic, no abort.
///
/// On 2301b69: 2^56 (newest or sealed) aborts the child (SIGABRT, "memory
/// allocation of 72057594037927920 bytes failed": the recovery buffer is
/// sized from the watermark); u64::MAX - 1 in a lone segment makes the
/// recovery scanner thread panic ("capacity overflow"), reported as
/// `InvalidConfig("recovery scanner panicked")`; with 3 segments the sum of
/// watermarks overflows ("attempt to add with overflow" panics out of
/// `open`, caught by `catch_unwind` in the child).
#[test]
fn defect_06_hostile_watermark_is_corruption_not_abort() {
    if let Ok(variant) = std::env::var(CHILD_ENV) {
        defect_06_child(&variant);
    }
    let exe = std::env::current_exe().unwrap();
    let mut failures = Vec::new();
    for &(name, ..) in DEFECT_06_VARIANTS {
        let out = std::process::Command::new(&exe)
            .args([DEFECT_06, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, name)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let outcome = stdout
            .split(&format!("OUTCOME[{name}]: "))
            .nth(1)
            .and_then(|rest| rest.lines().next())
            .map(str::to_owned);
        match outcome {
            Some(o) if o == "corruption" && out.status.success() => {}
            Some(o) => failures.push(format!("{name}: {o}")),
            None => {
                use std::os::unix::process::ExitStatusExt;
                let stderr = String::from_utf8_lossy(&out.stderr);
                let last = stderr
                    .lines()
                    .find(|l| !l.trim().is_empty() && !l.starts_with("note:"));
                failures.push(format!(
                    "{name}: process died ({}; signal {:?}): {}",
                    out.status,
                    out.status.signal(),
                    last.unwrap_or("")
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "a hostile segment watermark must be Error::Corruption: {}",
        failures.join(" | ")
    );
}

/// Defect 7: salvage leaves the store unopenable in Strict mode forever.
///
/// Scenario: the newest segment's last record (a 100-byte key) is damaged
/// below the synced watermark. A `Salvage` open drops it and appends go on
/// from its start; 3 short IDs are acknowledged under `Immediate`; clean
/// close. The watermark never moves down, so it still covers the zeroed
/// bytes the new records did not reach.
///
/// Correct: a later `Strict` open succeeds and every acknowledged ID is
/// present.
///
/// On 2301b69: the Strict open fails with `Error::Corruption` ("blank bytes
/// inside synced records") in segment 1.
#[test]
fn defect_07_salvage_then_strict_open_fails_forever() {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let c = cfg(&clock);
    let long_key = [b'L'; 100];
    let s = Store::open_with(fs.clone(), DB, c.clone()).unwrap();
    for i in 0..100u32 {
        let _ = s.check_and_insert(i.to_le_bytes(), DAY).unwrap();
    }
    let _ = s.check_and_insert(long_key, DAY).unwrap();
    s.close().unwrap();
    // Damage a key byte of the last record (it starts at 64 + 100 * 20).
    let path = seg_path(1);
    let mut b = fs.read_file(&path).unwrap();
    b[64 + 100 * 20 + 16 + 50] ^= 0x40;
    fs.write_file(&path, &b);
    assert!(
        matches!(
            Store::open_with(fs.clone(), DB, c.clone()),
            Err(Error::Corruption { .. })
        ),
        "the damage is below the watermark: Strict refuses"
    );

    let s = Store::open_with(fs.clone(), DB, c.clone().recovery(RecoveryMode::Salvage)).unwrap();
    assert!(s.stats().salvaged_bytes > 0);
    assert!(!s.contains(long_key).unwrap());
    let fresh: Vec<[u8; 8]> = (0..3).map(|i| k(0xF0, i)).collect();
    for key in &fresh {
        assert!(s.check_and_insert(key, DAY).unwrap().is_inserted());
    }
    s.close().unwrap();

    let s = match Store::open_with(fs.clone(), DB, c.clone()) {
        Ok(s) => s,
        Err(e) => panic!(
            "after a salvage open, further acknowledged writes and a clean close, \
             a Strict open must succeed; got: {e}"
        ),
    };
    for i in 0..100u32 {
        assert!(s.contains(i.to_le_bytes()).unwrap(), "ID {i} lost");
    }
    for key in &fresh {
        assert!(s.contains(key).unwrap(), "acknowledged {key:?} lost");
    }
}

/// Defect 8: index expiry saturates in 2106.
///
/// Scenario: the clock reads 2096-06-01; K is inserted with `MAX_TTL` (10
/// years: expires 2106-05-30). The index keeps expiry as whole seconds in a
/// u32, which saturates at 2106-02-07T06:28:15Z. At 2106-03-01 K still has
/// ~3 months to live, but GC considers its entry certainly expired.
///
/// Correct: after `gc_now` (and after reopen + `gc_now`) K is still
/// present (`contains`, `Duplicate`).
///
/// On 2301b69: after `gc_now`, `contains(K)` is false.
#[test]
fn defect_08_index_expiry_saturates_in_2106() {
    const JUN_2096_MS: u64 = 3_989_347_200_000; // 2096-06-01T00:00:00Z
    const MAR_2106_MS: u64 = 4_296_844_800_000; // 2106-03-01T00:00:00Z
    let fs = SimFs::new();
    let clock = ManualClock::new(JUN_2096_MS);
    let c = cfg(&clock).durability(Durability::None);
    let s = Store::open_with(fs.clone(), DB, c.clone()).unwrap();
    assert!(s.check_and_insert(b"K", MAX_TTL).unwrap().is_inserted());
    clock.set_ms(MAR_2106_MS);
    assert!(JUN_2096_MS + MAX_TTL.as_millis() as u64 > MAR_2106_MS);
    assert!(s.contains(b"K").unwrap(), "K has not expired yet");
    let r = s.gc_now().unwrap();
    assert!(
        s.contains(b"K").unwrap(),
        "K (expires 2106-05-30) was dropped by GC at 2106-03-01: {r:?}"
    );
    drop(s);
    let s = Store::open_with(fs, DB, c).unwrap();
    s.gc_now().unwrap();
    match s.check_and_insert(b"K", DAY).unwrap() {
        Outcome::Duplicate { .. } => {}
        Outcome::Inserted => panic!("K dropped by GC after reopen at 2106-03-01"),
    }
}

/// Defect 9: `complete(token, None, ttl)` reads back as an empty response.
///
/// Scenario: claim K, `complete(&tok, None, DAY)`, claim K again.
///
/// Correct (as `Claim::Completed` documents: "`None` if it stored none"):
/// `Completed { response: None, .. }`, also after reopen.
///
/// On 2301b69: `Completed { response: Some([]), .. }`.
#[test]
fn defect_09_complete_with_no_response_reads_back_as_none() {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let s = Store::open_with(fs.clone(), DB, cfg(&clock)).unwrap();
    let tok = acquired(s.claim(b"K", 60 * SEC, None).unwrap());
    s.complete(&tok, None, DAY).unwrap();
    let expires_at = UNIX_EPOCH + Duration::from_millis(T0) + DAY;
    assert_eq!(
        s.claim(b"K", 60 * SEC, None).unwrap(),
        Claim::Completed {
            response: None,
            expires_at
        },
        "complete(token, None, ..) must read back as response: None"
    );
    drop(s);
    let s = Store::open_with(fs, DB, cfg(&clock)).unwrap();
    assert_eq!(
        s.claim(b"K", 60 * SEC, None).unwrap(),
        Claim::Completed {
            response: None,
            expires_at
        },
        "after reopen"
    );
}

/// Defect 10: tombstones are recopied by every GC run.
///
/// Scenario: 6000 IDs A are inserted with TTL 10 d among 12000 IDs B (same
/// TTL), so those segments stay more than half live after all A are
/// removed (their inserts remain on disk: the removals are needed). The
/// 6000 removals fill ~2.2 segments of their own; then a segment of
/// short-lived filler seals them and expires. GC then runs three times with
/// no traffic in between.
///
/// Correct: once the first run is done, later runs copy 0 records and the
/// disk does not grow run over run.
///
/// On 2301b69: removals never count as live, so every run compacts the
/// segments holding them and copies them forward again: records copied per
/// run [7088, 5455, 5456] (disk stays at 9 segments: the copies replace the
/// originals, so the cost is I/O, not space).
#[test]
fn defect_10_tombstones_recopied_by_every_gc_run() {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let c = cfg(&clock).durability(Durability::None);
    let s = Store::open_with(fs.clone(), DB, c).unwrap();
    for i in 0..6000u32 {
        let _ = s.check_and_insert(k(0xA, i), TEN_DAYS).unwrap();
        let _ = s.check_and_insert(k(0xB, 2 * i), TEN_DAYS).unwrap();
        let _ = s.check_and_insert(k(0xB, 2 * i + 1), TEN_DAYS).unwrap();
    }
    fill_until_roll(&s, &fs, 0xC, SEC);
    for i in 0..6000u32 {
        assert!(s.remove(k(0xA, i)).unwrap());
    }
    fill_until_roll(&s, &fs, 0xD, SEC);
    clock.advance(5 * SEC);

    let mut runs = Vec::new();
    for _ in 0..3 {
        let r = s.gc_now().unwrap();
        runs.push((r.records_copied, s.stats().disk_bytes));
    }
    drop(s);
    let s = Store::open_with(fs.clone(), DB, cfg(&clock)).unwrap();
    for i in (0..6000u32).step_by(97) {
        assert!(!s.contains(k(0xA, i)).unwrap(), "removed A{i} came back");
        assert!(s.contains(k(0xB, i)).unwrap(), "B{i} lost");
    }
    let (copied, disk): (Vec<u64>, Vec<u64>) = runs.iter().copied().unzip();
    assert!(
        copied[1] == 0 && copied[2] == 0 && disk[1] <= disk[0] && disk[2] <= disk[1],
        "idle GC runs must not keep copying tombstones: records copied per run {copied:?}, \
         disk bytes after each run {disk:?}"
    );
}

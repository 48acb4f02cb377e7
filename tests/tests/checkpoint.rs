//! Index checkpoints (`index.ckpt`): used when they match the log, ignored
//! (and rebuilt) when they do not, and never a cause of a different answer.
//! Each invalidation rule of docs/FORMAT.md ("Index checkpoint") has a test
//! here that checks both that the rule fired (the open's stats) and that
//! every key still answers as a full replay would.

use std::path::Path;
use std::time::Duration;

use dedupstore::sim::{CrashMode, SimFs};
use dedupstore::{Checkpoints, Config, Durability, ManualClock, Store};

const T0: u64 = 1_700_000_000_000;
const CKPT: &str = "/db/index.ckpt";
const HOUR: Duration = Duration::from_secs(3600);

fn key(i: u32) -> Vec<u8> {
    format!("ckpt-key-{i:08}").into_bytes()
}

fn cfg(clock: &ManualClock, when: Checkpoints) -> Config {
    Config::default()
        .durability(Durability::None)
        .segment_size(64 << 10)
        .gc_interval(None)
        .checkpoints(when)
        .clock(clock.clone())
}

fn open(fs: &SimFs, clock: &ManualClock) -> Store<SimFs> {
    Store::open_with(fs.clone(), "/db", cfg(clock, Checkpoints::OnCloseAndGc)).unwrap()
}

fn segments(fs: &SimFs) -> Vec<String> {
    let mut v: Vec<String> = fs
        .file_names(Path::new("/db"))
        .into_iter()
        .filter(|n| n.starts_with("seg-"))
        .collect();
    v.sort();
    v
}

/// A store over several segments: keys 0..n inserted for an hour, every
/// third one removed again, closed cleanly (which writes a checkpoint).
fn populated(n: u32) -> (SimFs, ManualClock) {
    let fs = SimFs::with_seed(1);
    let clock = ManualClock::new(T0);
    let s = open(&fs, &clock);
    for i in 0..n {
        assert!(s.check_and_insert(key(i), HOUR).unwrap().is_inserted());
    }
    for i in (0..n).step_by(3) {
        assert!(s.remove(key(i)).unwrap());
    }
    s.close().unwrap();
    assert!(segments(&fs).len() >= 3, "the test needs several segments");
    (fs, clock)
}

/// Every key answers as the model says: present unless removed (or in
/// `gone`).
fn check_answers(s: &Store<SimFs>, n: u32, gone: impl Fn(u32) -> bool) {
    for i in 0..n {
        let want = i % 3 != 0 && !gone(i);
        assert_eq!(s.contains(key(i)).unwrap(), want, "key {i}");
    }
}

fn tamper(fs: &SimFs, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = fs.read_file(Path::new(CKPT)).expect("a checkpoint exists");
    f(&mut b);
    fs.write_file(Path::new(CKPT), &b);
}

/// Re-seals the header (its CRC-32 at 60..64) after a field was changed,
/// so that only the field's own check can reject it.
fn reseal_header(b: &mut [u8]) {
    let crc = crc32fast::hash(&b[0..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn a_clean_close_writes_a_checkpoint_that_the_next_open_uses() {
    let (fs, clock) = populated(6000);
    let s = open(&fs, &clock);
    let st = s.stats();
    assert_eq!(st.checkpoint_ignored, None);
    assert_eq!(
        st.checkpoint_entries, 6000,
        "one entry per key, removed ones included"
    );
    assert_eq!(
        st.replayed_records, 0,
        "nothing was written after the checkpoint"
    );
    check_answers(&s, 6000, |_| false);
    // Writes after the load work as usual and survive the next open.
    assert!(s
        .check_and_insert(key(1_000_000), HOUR)
        .unwrap()
        .is_inserted());
    assert!(!s.check_and_insert(key(1), HOUR).unwrap().is_inserted());
    drop(s);
    let s = open(&fs, &clock);
    assert!(s.contains(key(1_000_000)).unwrap());
    check_answers(&s, 6000, |_| false);
}

#[test]
fn after_a_crash_the_checkpoint_plus_the_tail_gives_every_answer() {
    let (fs, clock) = populated(6000);
    let s = open(&fs, &clock);
    for i in 6000..6100 {
        assert!(s.check_and_insert(key(i), HOUR).unwrap().is_inserted());
    }
    assert!(s.remove(key(1)).unwrap());
    s.sync().unwrap();
    let img = fs.crash(CrashMode::DropUnsynced);
    drop(s);
    let s = open(&img, &clock);
    let st = s.stats();
    assert_eq!(st.checkpoint_entries, 6000);
    assert_eq!(
        st.replayed_records, 101,
        "only the records after the checkpoint"
    );
    check_answers(&s, 6000, |i| i == 1);
    for i in 6000..6100 {
        assert!(s.contains(key(i)).unwrap(), "key {i}");
    }
}

/// Opens a tampered copy: the checkpoint must be ignored for `reason`, and
/// every answer must be what the full replay gives.
fn ignored_for(fs: &SimFs, clock: &ManualClock, reason: &str) {
    let s = open(fs, clock);
    let st = s.stats();
    assert_eq!(st.checkpoint_entries, 0, "a bad checkpoint was loaded");
    let why = st
        .checkpoint_ignored
        .expect("the checkpoint was not reported ignored");
    assert!(
        why.contains(reason),
        "ignored for {why:?}, expected {reason:?}"
    );
    assert_eq!(
        st.replayed_records,
        6000 + 2000,
        "the whole log was replayed"
    );
    check_answers(&s, 6000, |_| false);
    // Rebuilt: the close writes a new one, which the next open uses.
    drop(s);
    let s = open(fs, clock);
    assert_eq!(s.stats().checkpoint_ignored, None);
    assert_eq!(s.stats().checkpoint_entries, 6000);
    check_answers(&s, 6000, |_| false);
}

#[test]
fn a_flipped_byte_anywhere_makes_it_ignored() {
    let (fs, clock) = populated(6000);
    let len = fs.read_file(Path::new(CKPT)).unwrap().len();
    // Header, segment table, shard directory, entries.
    for (at, reason) in [
        (20, "header checksum"),
        (70, "segment table checksum"),
        (64 + 40 * 4 + 8 + 3, "checksum"),
        (len / 2, "entries checksum"),
    ] {
        let fs = fs.crash(CrashMode::Kill);
        tamper(&fs, |b| b[at] ^= 0x10);
        ignored_for(&fs, &clock, reason);
    }
}

#[test]
fn a_truncated_or_empty_checkpoint_is_ignored() {
    let (fs, clock) = populated(6000);
    for keep in [0, 10, 64, 300, 5000] {
        let fs = fs.crash(CrashMode::Kill);
        tamper(&fs, |b| b.truncate(keep));
        let reason = if keep == 0 { "unreadable" } else { "" };
        ignored_for(&fs, &clock, reason);
    }
    let fs2 = fs.crash(CrashMode::Kill);
    let full = fs2.read_file(Path::new(CKPT)).unwrap();
    // Cut inside the entries (the file is longer than its entries: room
    // reserved for entries added while it was written).
    let body_end = full.iter().rposition(|&b| b != 0).unwrap();
    tamper(&fs2, |b| b.truncate(body_end - 100));
    ignored_for(&fs2, &clock, "truncated");
}

#[test]
fn another_version_is_ignored() {
    let (fs, clock) = populated(6000);
    tamper(&fs, |b| {
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        reseal_header(b);
    });
    ignored_for(&fs, &clock, "version");
}

#[test]
fn a_checkpoint_from_another_store_is_ignored() {
    // Same keys, same operations: the same segments byte for byte, but
    // another store.
    let (fs, clock) = populated(6000);
    let (other, _) = populated(6000);
    let theirs = other.read_file(Path::new(CKPT)).unwrap();
    fs.write_file(Path::new(CKPT), &theirs);
    ignored_for(&fs, &clock, "another store");
}

#[test]
fn a_checkpoint_of_different_contents_is_ignored_even_with_the_right_store_id() {
    // Another store with other keys of the same length: same segment ids and
    // lengths, different bytes; its store id forged to match.
    let (fs, clock) = populated(6000);
    let other = SimFs::with_seed(2);
    let s = open(&other, &clock);
    for i in 0..6000 {
        let k = format!("ckpt-KEY-{i:08}").into_bytes();
        let _ = s.check_and_insert(&k, HOUR).unwrap();
    }
    for i in (0..6000).step_by(3) {
        s.remove(format!("ckpt-KEY-{i:08}").into_bytes()).unwrap();
    }
    s.close().unwrap();
    assert_eq!(segments(&other), segments(&fs));
    let mine = fs.read_file(Path::new(CKPT)).unwrap();
    let mut theirs = other.read_file(Path::new(CKPT)).unwrap();
    theirs[12..16].copy_from_slice(&mine[12..16]);
    reseal_header(&mut theirs);
    fs.write_file(Path::new(CKPT), &theirs);
    ignored_for(&fs, &clock, "");
}

#[test]
fn a_checkpoint_newer_than_the_log_is_ignored() {
    // The log as it was before the last writes, with the checkpoint written
    // after them: the log ends before the checkpoint does.
    let (fs, clock) = populated(6000);
    let before = fs.crash(CrashMode::Kill);
    let s = open(&fs, &clock);
    for i in 6000..7000 {
        let _ = s.check_and_insert(key(i), HOUR).unwrap();
    }
    s.close().unwrap();
    let newer = fs.read_file(Path::new(CKPT)).unwrap();
    before.write_file(Path::new(CKPT), &newer);
    ignored_for(&before, &clock, "");
}

#[test]
fn a_stale_checkpoint_is_used_while_the_log_below_it_is_unchanged() {
    let (fs, clock) = populated(6000);
    let old = fs.read_file(Path::new(CKPT)).unwrap();
    let s = open(&fs, &clock);
    for i in 6000..6500 {
        let _ = s.check_and_insert(key(i), HOUR).unwrap();
    }
    for i in 0..100 {
        s.remove(key(i)).unwrap();
    }
    s.close().unwrap();
    fs.write_file(Path::new(CKPT), &old);
    let s = open(&fs, &clock);
    let st = s.stats();
    assert_eq!(st.checkpoint_ignored, None);
    assert_eq!(st.checkpoint_entries, 6000);
    // 500 inserts, and removals of the 66 keys below 100 still present.
    assert_eq!(
        st.replayed_records,
        500 + 66,
        "the records after the old checkpoint"
    );
    check_answers(&s, 6000, |i| i < 100);
    for i in 6000..6500 {
        assert!(s.contains(key(i)).unwrap(), "key {i}");
    }
}

#[test]
fn a_stale_checkpoint_cannot_revive_what_compaction_removed() {
    // Key A and fillers fill the first two segments; long-lived keys follow
    // in the third, where the stale checkpoint ends. Then A and the fillers
    // are removed, and GC compacts the first two segments away (nothing in
    // them is live), leaving the third. The stale checkpoint still lists
    // the first two.
    let fs = SimFs::with_seed(3);
    let clock = ManualClock::new(T0);
    let s = open(&fs, &clock);
    let _ = s.check_and_insert(b"A", HOUR).unwrap();
    let first = segments(&fs)[0].clone();
    let mut n = 0;
    while segments(&fs).len() < 3 {
        let _ = s.check_and_insert(key(n), HOUR).unwrap();
        n += 1;
    }
    for i in 0..300 {
        let _ = s.check_and_insert(key(1_000_000 + i), HOUR).unwrap();
    }
    s.checkpoint().unwrap();
    let stale = fs.read_file(Path::new(CKPT)).unwrap();
    let third = segments(&fs)[2].clone();
    for i in 0..n {
        s.remove(key(i)).unwrap();
    }
    s.remove(b"A").unwrap();
    let r = s.gc_now().unwrap();
    assert!(r.segments_compacted >= 2, "{r:?}");
    let left = segments(&fs);
    assert!(
        !left.contains(&first),
        "the first segment was compacted away"
    );
    assert!(
        left.contains(&third),
        "the checkpoint's last segment is still there"
    );
    s.close().unwrap();
    fs.write_file(Path::new(CKPT), &stale);
    let s = open(&fs, &clock);
    let st = s.stats();
    assert_eq!(st.checkpoint_entries, 0);
    let why = st
        .checkpoint_ignored
        .expect("a stale checkpoint over a compacted segment");
    assert!(why.contains("gone"), "{why}");
    assert!(!s.contains(b"A").unwrap(), "a removed key came back");
    for i in 0..n {
        assert!(!s.contains(key(i)).unwrap(), "removed key {i} came back");
    }
    for i in 0..300 {
        assert!(s.contains(key(1_000_000 + i)).unwrap());
    }
}

#[test]
fn a_segment_deleted_whole_after_it_expired_does_not_invalidate_it() {
    // Short-lived keys fill the first segments; long-lived ones come after.
    let fs = SimFs::with_seed(4);
    let clock = ManualClock::new(T0);
    let s = open(&fs, &clock);
    let mut n = 0;
    while segments(&fs).len() < 3 {
        let _ = s.check_and_insert(key(n), Duration::from_secs(10)).unwrap();
        n += 1;
    }
    for i in 0..500 {
        let _ = s.check_and_insert(key(1_000_000 + i), HOUR).unwrap();
    }
    s.checkpoint().unwrap();
    let before = segments(&fs);
    clock.advance(Duration::from_secs(60));
    let r = s.gc_now().unwrap();
    assert!(r.segments_deleted > 0 && r.segments_compacted == 0, "{r:?}");
    // No new checkpoint: the deleted segments were all dead.
    assert!(!s.checkpoint().unwrap(), "nothing new to write");
    drop(s);
    assert!(segments(&fs).len() < before.len());
    let s = open(&fs, &clock);
    let st = s.stats();
    assert_eq!(st.checkpoint_ignored, None);
    assert!(st.checkpoint_entries >= 500);
    for i in 0..n {
        assert!(!s.contains(key(i)).unwrap(), "expired key {i} came back");
    }
    for i in 0..500 {
        assert!(s.contains(key(1_000_000 + i)).unwrap());
    }
}

#[test]
fn a_compacting_gc_writes_a_new_checkpoint() {
    let fs = SimFs::with_seed(5);
    let clock = ManualClock::new(T0);
    let s = open(&fs, &clock);
    let mut n = 0;
    while segments(&fs).len() < 3 {
        let _ = s.check_and_insert(key(n), HOUR).unwrap();
        n += 1;
    }
    s.checkpoint().unwrap();
    for i in 0..n - 10 {
        s.remove(key(i)).unwrap();
    }
    let before = fs.read_file(Path::new(CKPT)).unwrap();
    assert!(s.compact().unwrap().segments_compacted > 0);
    let after = fs.read_file(Path::new(CKPT)).unwrap();
    assert_ne!(before, after, "GC wrote a new checkpoint");
    // Crash (no clean close): the checkpoint GC wrote is used.
    let img = fs.crash(CrashMode::DropUnsynced);
    drop(s);
    let s = open(&img, &clock);
    assert_eq!(s.stats().checkpoint_ignored, None);
    assert!(s.stats().checkpoint_entries > 0);
    for i in 0..n {
        assert_eq!(s.contains(key(i)).unwrap(), i >= n - 10, "key {i}");
    }
}

#[test]
fn salvage_mode_and_checkpoints_off_replay_the_whole_log() {
    let (fs, clock) = populated(6000);
    let s = Store::open_with(
        fs.clone(),
        "/db",
        cfg(&clock, Checkpoints::Off).recovery(dedupstore::RecoveryMode::Salvage),
    )
    .unwrap();
    let st = s.stats();
    assert_eq!(st.checkpoint_entries, 0);
    assert_eq!(st.replayed_records, 8000);
    check_answers(&s, 6000, |_| false);
    drop(s);
    assert!(
        fs.read_file(Path::new(CKPT)).is_some(),
        "Off leaves the file alone"
    );
    let s = Store::open_with(
        fs.clone(),
        "/db",
        cfg(&clock, Checkpoints::OnCloseAndGc).recovery(dedupstore::RecoveryMode::Salvage),
    )
    .unwrap();
    let st = s.stats();
    assert_eq!(st.checkpoint_entries, 0);
    assert!(st.checkpoint_ignored.unwrap().contains("salvage"));
    check_answers(&s, 6000, |_| false);
}

#[test]
fn the_background_writer_checkpoints_after_seals_without_a_close() {
    let fs = SimFs::with_seed(6);
    let clock = ManualClock::new(T0);
    let s = Store::open_with(fs.clone(), "/db", cfg(&clock, Checkpoints::Background)).unwrap();
    let mut n = 0;
    // Seal segments until the writer has produced a checkpoint (it runs
    // after a seal, on its own thread).
    while fs.read_file(Path::new(CKPT)).is_none() {
        let _ = s.check_and_insert(key(n), HOUR).unwrap();
        n += 1;
        assert!(n < 2_000_000, "no checkpoint was ever written");
        if n % 1000 == 0 {
            std::thread::yield_now();
        }
    }
    // Two copies of what a kill now would leave, taken before the store is
    // closed (a close would write a checkpoint of its own).
    s.sync().unwrap();
    let img = fs.crash(CrashMode::Kill);
    let img2 = fs.crash(CrashMode::Kill);
    drop(s);
    let s = Store::open_with(img, "/db", cfg(&clock, Checkpoints::Off)).unwrap();
    let full = s.stats().replayed_records;
    drop(s);
    let s = Store::open_with(img2, "/db", cfg(&clock, Checkpoints::Background)).unwrap();
    let st = s.stats();
    assert_eq!(st.checkpoint_ignored, None);
    assert!(st.checkpoint_entries > 0, "{st:?}");
    assert!(st.replayed_records < full);
    for i in 0..n {
        assert!(s.contains(key(i)).unwrap(), "key {i}");
    }
}

#[test]
fn damage_to_a_covered_record_is_not_found_at_open_and_a_lookup_reports_it() {
    // The documented trade-off: open does not re-read what the checkpoint
    // covers. A record damaged afterwards (its key length set past the end
    // of the segment) must not make a lookup panic or answer: the lookup
    // reports `Error::Corruption`; open without the checkpoint still
    // reports the damage.
    let (fs, clock) = populated(6000);
    let first = format!("/db/{}", segments(&fs)[0]);
    let mut seg = fs.read_file(Path::new(&first)).unwrap();
    // Key 901's insert (present; records of 16 + 17 bytes, in key order),
    // in the middle of the segment, away from the bytes the checkpoint
    // fingerprints (4 KiB at each end): its key length, bytes 6..8.
    let at = 64 + 901 * (16 + key(0).len());
    assert!(at > 4096 && at < seg.len() / 2);
    seg[at + 6..at + 8].copy_from_slice(&u16::MAX.to_le_bytes());
    fs.write_file(Path::new(&first), &seg);
    let s = open(&fs.crash(CrashMode::Kill), &clock);
    assert!(s.stats().checkpoint_entries > 0);
    // The damaged record is reported, not answered (and no panic).
    let answer = s.contains(key(901));
    assert!(
        matches!(answer, Err(dedupstore::Error::Corruption { .. })),
        "{answer:?}"
    );
    assert!(s.contains(key(902)).unwrap());
    // `stats` reads every entry's record: it must not panic either.
    assert!(s.stats().live_keys > 0);
    drop(s);
    let full = Store::open_with(fs.clone(), "/db", cfg(&clock, Checkpoints::Off));
    assert!(
        matches!(full, Err(dedupstore::Error::Corruption { .. })),
        "a full replay finds the damage: {full:?}"
    );
}

#[test]
fn every_lookup_path_reports_a_damaged_covered_record_instead_of_answering() {
    // One bit of key 901's insert (its expiry: the record still parses)
    // flips after the checkpoint was written; open does not read it.
    // Every call that would answer from that record reports
    // `Error::Corruption` instead; an intact key still answers.
    let (fs, clock) = populated(6000);
    let first = format!("/db/{}", segments(&fs)[0]);
    let mut seg = fs.read_file(Path::new(&first)).unwrap();
    let at = 64 + 901 * (16 + key(0).len());
    assert_eq!(&seg[at + 16..at + 16 + key(0).len()], &key(901)[..]);
    seg[at + 8] ^= 0x10;
    fs.write_file(Path::new(&first), &seg);
    let s = open(&fs.crash(CrashMode::Kill), &clock);
    assert!(s.stats().checkpoint_entries > 0);
    let bad = key(901);
    let corrupt = |what: &str, r: dedupstore::Result<String>| {
        assert!(
            matches!(r, Err(dedupstore::Error::Corruption { .. })),
            "{what}: {r:?}"
        );
    };
    corrupt("contains", s.contains(&bad).map(|a| format!("{a:?}")));
    corrupt(
        "contains_batch",
        s.contains_batch(&[key(902), bad.clone()])
            .map(|a| format!("{a:?}")),
    );
    corrupt(
        "check_and_insert",
        s.check_and_insert(&bad, HOUR).map(|a| format!("{a:?}")),
    );
    corrupt("remove", s.remove(&bad).map(|a| format!("{a:?}")));
    corrupt("peek", s.peek(&bad).map(|a| format!("{a:?}")));
    corrupt("claim", s.claim(&bad, HOUR, None).map(|a| format!("{a:?}")));
    // Nothing was written for it: still reported, not answered.
    corrupt("contains again", s.contains(&bad).map(|a| format!("{a:?}")));
    // An intact key answers as before, through the same paths.
    assert!(s.contains(key(902)).unwrap());
    assert_eq!(
        s.contains_batch(&[key(902), key(903)]).unwrap(),
        [true, false]
    );
    assert!(!s.check_and_insert(key(902), HOUR).unwrap().is_inserted());
}

#[test]
fn a_checkpoint_entry_outside_the_log_it_covers_makes_open_ignore_it() {
    // An entry's offset is checked against the segment it names (here: one
    // below the segment header), with the file's checksums recomputed as a
    // forger would; open ignores the whole checkpoint and replays the log.
    let (fs, clock) = populated(6000);
    let mut b = fs.read_file(Path::new(CKPT)).unwrap();
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let rows_end = 64 + 40 * u32_at(&b, 40) as usize;
    let dir = rows_end + 8;
    let dir_end = dir + 256 * 16;
    // The first entry of the first non-empty shard.
    let shard = (0..256).find(|&s| u64_at(&b, dir + 16 * s) > 0).unwrap();
    let start = dir_end + 8;
    let count = u64_at(&b, dir + 16 * shard) as usize;
    b[start + 8..start + 12].copy_from_slice(&10u32.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&b[start..start + 16 * count]);
    b[dir + 16 * shard + 8..dir + 16 * shard + 16].copy_from_slice(&sum.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&b[dir..dir_end]);
    b[dir_end..dir_end + 8].copy_from_slice(&sum.to_le_bytes());
    fs.write_file(Path::new(CKPT), &b);
    let s = open(&fs, &clock);
    let st = s.stats();
    assert_eq!(st.checkpoint_entries, 0, "{st:?}");
    assert_eq!(
        st.checkpoint_ignored,
        Some("a checkpoint entry points outside the log it covers")
    );
    for i in 0..6000 {
        assert_eq!(s.contains(key(i)).unwrap(), i % 3 != 0, "key {i}");
    }
}

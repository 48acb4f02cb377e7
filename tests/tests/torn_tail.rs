//! A crash mid-append leaves a torn record at the tail of the newest segment:
//! recovery truncates it and keeps every record written in full.

use std::path::Path;
use std::time::Duration;

use dedupstore::sim::{CrashMode, SimFs};
use dedupstore::{Config, Durability, Outcome, Store};

const DAY: Duration = Duration::from_secs(86_400);
const SEG: &str = "seg-0000000001.log";

fn cfg() -> Config {
    Config::default().segment_size(64 << 10)
}

fn key(i: usize) -> Vec<u8> {
    // Keys of varying length, so record boundaries fall at many offsets.
    format!("id-{i}-{}", "x".repeat(i % 23)).into_bytes()
}

/// A process-crash image with `n` records, and each record's end offset.
fn image(n: usize) -> (SimFs, Vec<usize>) {
    let fs = SimFs::new();
    let s = Store::open_with(fs.clone(), "/db", cfg().durability(Durability::None)).unwrap();
    let mut ends = vec![64];
    for i in 0..n {
        let _ = s.check_and_insert(key(i), DAY).unwrap();
        ends.push(ends.last().unwrap() + 16 + key(i).len());
    }
    let crashed = fs.crash(CrashMode::Kill);
    std::mem::forget(s); // the killed process never closes
    (crashed, ends)
}

#[test]
fn truncation_at_every_offset_of_the_last_records() {
    let n = 40;
    let (base, ends) = image(n);
    let path = Path::new("/db").join(SEG);
    let full = base.read_file(&path).unwrap();
    let first_cut = ends[n - 5];
    for cut in first_cut..=ends[n] {
        let fs = base.crash(CrashMode::Kill);
        fs.write_file(&path, &full[..cut]);
        let s =
            Store::open_with(fs.clone(), "/db", cfg()).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        let whole = ends.iter().filter(|&&e| e <= cut).count() - 1;
        // A torn record is left only if a non-zero byte of it survived the
        // cut (its first bytes, the CRC, can be zero: the expiry, hence the
        // CRC, comes from the wall clock, so this varies from run to run).
        let torn = u64::from(full[ends[whole]..cut].iter().any(|&b| b != 0));
        assert_eq!(s.stats().truncated_records, torn, "cut {cut}");
        // Cut: from the end of the last whole record to the torn record's
        // last non-zero byte.
        let cut_bytes = full[ends[whole]..cut]
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |p| p as u64 + 1);
        assert_eq!(s.stats().truncated_bytes, cut_bytes, "cut {cut}");
        assert_eq!(s.stats().indexed_keys, whole as u64, "cut {cut}");
        for i in 0..n {
            assert_eq!(s.contains(key(i)).unwrap(), i < whole, "cut {cut}, key {i}");
        }
        // The store goes on appending over the truncated tail, and what it
        // appends is read back after another crash.
        assert_eq!(
            s.check_and_insert(b"after", DAY).unwrap(),
            Outcome::Inserted
        );
        drop(s);
        let s = Store::open_with(fs.crash(CrashMode::DropUnsynced), "/db", cfg()).unwrap();
        assert!(s.contains(b"after").unwrap(), "cut {cut}");
        assert_eq!(
            s.stats().truncated_records,
            0,
            "cut {cut}: the tail was cleaned"
        );
        assert_eq!(s.stats().indexed_keys, whole as u64 + 1, "cut {cut}");
    }
}

#[test]
fn garbage_after_a_lost_page_is_cut_and_cannot_come_back() {
    // Records after a blank gap (a page that never reached the disk while a
    // later one did) are not part of the log: they are zeroed, so a later
    // append of the same length cannot line up with them and revive them.
    let (fs, ends) = image(200);
    let path = Path::new("/db").join(SEG);
    let mut bytes = fs.read_file(&path).unwrap();
    let (gap_start, gap_end) = (ends[100], ends[101]);
    bytes[gap_start..gap_end].fill(0);
    fs.write_file(&path, &bytes);
    let s = Store::open_with(fs.clone(), "/db", cfg()).unwrap();
    assert_eq!(s.stats().indexed_keys, 100);
    assert_eq!(
        s.stats().truncated_records,
        99,
        "the 99 records after the gap"
    );
    assert_eq!(
        s.stats().truncated_bytes,
        (ends[200] - ends[100]) as u64,
        "the gap and the records after it"
    );
    assert!(!s.contains(key(150)).unwrap());
    // Re-insert key 100 (same length as the blank gap), then crash again.
    let _ = s.check_and_insert(key(100), DAY).unwrap();
    drop(s);
    let s = Store::open_with(fs.crash(CrashMode::DropUnsynced), "/db", cfg()).unwrap();
    assert_eq!(s.stats().indexed_keys, 101);
    for i in 101..200 {
        assert!(!s.contains(key(i)).unwrap(), "key {i} came back");
    }
}

#[test]
fn garbage_that_is_no_record_is_cut_as_one() {
    // Bytes after the last record that do not decode as one (a torn write
    // of something else, or damage past the synced watermark): one run of
    // invalid bytes is one truncated record, all of its bytes are cut.
    let (fs, ends) = image(10);
    let path = Path::new("/db").join(SEG);
    let mut bytes = fs.read_file(&path).unwrap();
    bytes[ends[10]..ends[10] + 30].fill(0xff);
    fs.write_file(&path, &bytes);
    let s = Store::open_with(fs.clone(), "/db", cfg()).unwrap();
    assert_eq!(s.stats().truncated_records, 1);
    assert_eq!(s.stats().truncated_bytes, 30);
    assert_eq!(s.stats().indexed_keys, 10);
}

#[test]
fn real_files_truncated_mid_record_recover() {
    // The same on the real file system: copy the segment as a killed process
    // would leave it, cut it inside its last record, reopen.
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), Config::default().durability(Durability::None)).unwrap();
    for i in 0..10 {
        let _ = s.check_and_insert(key(i), DAY).unwrap();
    }
    let crash_dir = tempfile::tempdir().unwrap();
    for name in ["dedupstore.meta", SEG] {
        std::fs::copy(dir.path().join(name), crash_dir.path().join(name)).unwrap();
    }
    drop(s);
    let seg = crash_dir.path().join(SEG);
    let end: usize = 64 + (0..10).map(|i| 16 + key(i).len()).sum::<usize>();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(end as u64 - 3).unwrap();
    drop(f);
    let s = Store::open(crash_dir.path(), cfg()).unwrap();
    assert_eq!(s.stats().truncated_records, 1);
    assert!(s.contains(key(8)).unwrap());
    assert!(!s.contains(key(9)).unwrap());
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        64 << 10,
        "segment re-extended to its full size"
    );
}

#[test]
fn the_cleaned_tail_is_durable_before_the_store_is_used() {
    // Recovery zeroes stale records after a gap. That cleanup must reach the
    // disk before anything is appended after it, or a power loss brings the
    // stale records back behind the new ones.
    let (fs, ends) = image(400);
    let path = Path::new("/db").join(SEG);
    let mut bytes = fs.read_file(&path).unwrap();
    bytes[ends[100]..ends[101]].fill(0);
    fs.write_file(&path, &bytes);
    let s = Store::open_with(fs.clone(), "/db", cfg()).unwrap();
    assert!(s.stats().truncated_records > 0);
    // Power loss right after the open, before any write.
    let crashed = fs.crash(CrashMode::DropUnsynced);
    drop(s);
    let s = Store::open_with(crashed, "/db", cfg()).unwrap();
    assert_eq!(
        s.stats().truncated_records,
        0,
        "stale records came back after the cleanup"
    );
    assert_eq!(s.stats().indexed_keys, 100);
}

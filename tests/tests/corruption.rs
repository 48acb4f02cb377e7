//! Damage anywhere but a torn tail is reported, never silently dropped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dedupstore::sim::SimFs;
use dedupstore::{Config, Durability, Error, RecoveryMode, Store};

const DAY: Duration = Duration::from_secs(86_400);

fn cfg() -> Config {
    Config::default()
        .segment_size(64 << 10)
        .durability(Durability::None)
}

fn seg(id: u32) -> PathBuf {
    Path::new("/db").join(format!("seg-{id:010}.log"))
}

/// A cleanly closed store of 5000 keys over several segments.
fn store() -> SimFs {
    let fs = SimFs::new();
    let s = Store::open_with(fs.clone(), "/db", cfg()).unwrap();
    for i in 0..5000u32 {
        let _ = s.check_and_insert(i.to_le_bytes(), DAY).unwrap();
    }
    assert!(s.stats().segments >= 2);
    drop(s);
    fs
}

fn flip(fs: &SimFs, path: &Path, off: usize) {
    let mut b = fs.read_file(path).unwrap();
    b[off] ^= 0x40;
    fs.write_file(path, &b);
}

fn expect_corruption(fs: &SimFs, file: &Path, offset: u64) {
    match Store::open_with(fs.clone(), "/db", cfg()) {
        Err(Error::Corruption {
            file: f, offset: o, ..
        }) => {
            assert_eq!((f.as_path(), o), (file, offset));
        }
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("expected corruption, store opened"),
    }
}

#[test]
fn flipped_byte_in_a_sealed_segment_is_corruption() {
    let fs = store();
    // Record 10 of segment 1 starts at 64 + 10 * 20; flip a key byte.
    flip(&fs, &seg(1), 64 + 10 * 20 + 17);
    expect_corruption(&fs, &seg(1), 64 + 10 * 20);
}

#[test]
fn flipped_byte_below_the_synced_watermark_of_the_newest_segment_is_corruption() {
    let fs = store();
    let newest = fs
        .file_names(Path::new("/db"))
        .iter()
        .filter(|n| n.starts_with("seg-"))
        .count() as u32;
    flip(&fs, &seg(newest), 64 + 3);
    expect_corruption(&fs, &seg(newest), 64);
}

#[test]
fn salvage_keeps_every_valid_record() {
    let fs = store();
    flip(&fs, &seg(1), 64 + 10 * 20 + 17);
    let s = Store::open_with(fs.clone(), "/db", cfg().recovery(RecoveryMode::Salvage)).unwrap();
    assert_eq!(s.stats().indexed_keys, 4999);
    assert_eq!(s.stats().salvaged_bytes, 20);
    assert!(
        !s.contains(10u32.to_le_bytes()).unwrap(),
        "the damaged record is gone"
    );
    assert!(s.contains(11u32.to_le_bytes()).unwrap());
    assert!(s.contains(4999u32.to_le_bytes()).unwrap());
}

#[test]
fn sealed_segment_with_a_bad_watermark_is_corruption_unless_salvaging() {
    // A sealed segment's watermark was synced before the next segment was
    // created: a damaged one is reported where it is. Salvage reads the
    // whole segment instead and keeps every record.
    let fs = store();
    flip(&fs, &seg(1), 24 + 2);
    expect_corruption(&fs, &seg(1), 24);
    let s = Store::open_with(fs.clone(), "/db", cfg().recovery(RecoveryMode::Salvage)).unwrap();
    assert_eq!(s.stats().indexed_keys, 5000);
    assert_eq!(s.stats().salvaged_bytes, 0);
    assert!(s.contains(0u32.to_le_bytes()).unwrap());
}

#[test]
fn salvage_of_damage_in_the_last_record_is_rewritten_so_strict_opens_again() {
    // Damage with no valid record after it (the last record of a sealed
    // segment): salvage counts the skipped bytes and rewrites the segment,
    // so the next strict open finds nothing to refuse.
    let fs = store();
    let b = fs.read_file(&seg(1)).unwrap();
    let last_byte = b.iter().rposition(|&x| x != 0).unwrap();
    let last_record = 64 + (last_byte - 64) / 20 * 20;
    flip(&fs, &seg(1), last_record + 16);
    expect_corruption(&fs, &seg(1), last_record as u64);
    let s = Store::open_with(fs.clone(), "/db", cfg().recovery(RecoveryMode::Salvage)).unwrap();
    assert_eq!(s.stats().indexed_keys, 4999);
    assert_eq!(
        s.stats().salvaged_bytes,
        (last_byte + 1 - last_record) as u64
    );
    drop(s);
    let s = Store::open_with(fs.clone(), "/db", cfg()).unwrap();
    assert_eq!(s.stats().indexed_keys, 4999);
    assert_eq!(s.stats().salvaged_bytes, 0);
}

#[test]
fn newer_format_versions_are_refused() {
    let fs = store();
    let mut meta = fs.read_file(Path::new("/db/dedupstore.meta")).unwrap();
    meta[8] = 2;
    fs.write_file(Path::new("/db/dedupstore.meta"), &meta);
    assert!(matches!(
        Store::open_with(fs.clone(), "/db", cfg()),
        Err(Error::UnsupportedVersion {
            found: 2,
            supported: 1,
            ..
        })
    ));

    let fs = store();
    flip(&fs, &seg(1), 8); // version 1 -> 0x41
    match Store::open_with(fs.clone(), "/db", cfg()) {
        Err(Error::UnsupportedVersion {
            file, found: 0x41, ..
        }) => assert_eq!(file, seg(1)),
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn bad_headers_and_missing_metadata_are_corruption() {
    let fs = store();
    flip(&fs, &seg(2), 0);
    expect_corruption(&fs, &seg(2), 0);

    let fs = store();
    flip(&fs, &seg(1), 13); // segment id, covered by the header checksum
    expect_corruption(&fs, &seg(1), 20);

    let fs = store();
    fs.write_file(Path::new("/db/dedupstore.meta"), b"DDUPMETA");
    expect_corruption(&fs, Path::new("/db/dedupstore.meta"), 8);

    let fs = store();
    fs.write_file(&seg(1), &[0u8; 10]);
    expect_corruption(&fs, &seg(1), 10);
}

#[test]
fn random_damage_never_panics_and_never_invents_keys() {
    let base = store();
    let mut rng = fastrand::Rng::with_seed(7);
    let (mut opened, mut refused) = (0, 0);
    for round in 0..300 {
        let fs = base.crash(dedupstore::sim::CrashMode::Kill);
        let names: Vec<String> = fs.file_names(Path::new("/db"));
        for _ in 0..rng.usize(1..4) {
            let name = &names[rng.usize(..names.len())];
            let path = Path::new("/db").join(name);
            let mut b = fs.read_file(&path).unwrap();
            if b.is_empty() {
                continue;
            }
            match rng.u8(..4) {
                0 => b.truncate(rng.usize(..b.len())),
                1 => {
                    let at = rng.usize(..b.len());
                    let end = (at + rng.usize(1..64)).min(b.len());
                    rng.fill(&mut b[at..end]);
                }
                _ => {
                    let at = rng.usize(..b.len().min(200_000));
                    b[at] ^= 1 << rng.u8(..8);
                }
            }
            fs.write_file(&path, &b);
        }
        for mode in [RecoveryMode::Strict, RecoveryMode::Salvage] {
            if let Ok(s) = Store::open_with(
                fs.crash(dedupstore::sim::CrashMode::Kill),
                "/db",
                cfg().recovery(mode),
            ) {
                for k in 5000u32..5100 {
                    assert!(
                        !s.contains(k.to_le_bytes()).unwrap(),
                        "round {round}: key {k} was never inserted"
                    );
                }
                opened += 1;
            } else {
                refused += 1;
            }
        }
    }
    eprintln!("damaged stores: {opened} opened, {refused} refused");
    assert!(
        opened > 100 && refused > 100,
        "both paths exercised: {opened} opened, {refused} refused"
    );
}

//! Namespaces (issue 12 part 1), black box through the public API: the
//! store API per namespace, isolation, create/list/drop/close/reopen, bad
//! input, crash safety of create and drop at every I/O step on the strict
//! simulated file system, and per-namespace poisoning.

use std::path::Path;
use std::time::Duration;

use dedupstore::sim::{CrashMode, Fault, SimFs};
use dedupstore::{Claim, Config, Durability, Error, Namespaces, Outcome, Store};

const DAY: Duration = Duration::from_secs(86_400);
const ROOT: &str = "/g";

use dedupstore_tests::support::quiet;

fn dot_names(fs: &SimFs) -> Vec<String> {
    fs.file_names(&Path::new(ROOT).join("ns"))
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn every_namespace_has_the_store_api_and_its_own_keys() {
    let dir = tempfile::tempdir().unwrap();
    let g = Namespaces::open(dir.path(), Config::default()).unwrap();
    let a = g.create("orders-0").unwrap();
    let b = g.create("orders-1").unwrap();
    assert!(a.check_and_insert(b"k", DAY).unwrap().is_inserted());
    assert!(a.contains(b"k").unwrap());
    assert!(
        !b.contains(b"k").unwrap(),
        "a key of one namespace is not in another"
    );
    assert!(b.check_and_insert(b"k", DAY).unwrap().is_inserted());
    assert!(matches!(
        a.check_and_insert(b"k", DAY).unwrap(),
        Outcome::Duplicate { .. }
    ));
    let out = b.check_and_insert_batch(&[b"x", b"y", b"x"], DAY).unwrap();
    assert_eq!(
        out.iter().map(Outcome::is_inserted).collect::<Vec<_>>(),
        [true, true, false]
    );
    assert_eq!(a.contains_batch(&[b"x", b"k"]).unwrap(), [false, true]);
    match b.claim(b"job", DAY, Some(7)).unwrap() {
        Claim::Acquired(t) => b.complete(&t, Some(&b"done"[..]), DAY).unwrap(),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        a.claim(b"job", DAY, Some(7)).unwrap(),
        Claim::Acquired(_)
    ));
    assert!(b.remove(b"k").unwrap());
    assert!(a.contains(b"k").unwrap(), "removing in b leaves a alone");
    b.gc_now().unwrap();
    assert_eq!(g.list(), ["orders-0", "orders-1"]);
    drop((a, b));
    g.close().unwrap();

    let g = Namespaces::open(dir.path(), Config::default()).unwrap();
    assert_eq!(g.list(), ["orders-0", "orders-1"]);
    let a = g.get("orders-0").unwrap();
    let b = g.get("orders-1").unwrap();
    assert!(a.contains(b"k").unwrap());
    assert!(!b.contains(b"k").unwrap());
    assert!(b.contains(b"x").unwrap());
    assert!(matches!(
        b.claim(b"job", DAY, Some(7)).unwrap(),
        Claim::Completed { .. }
    ));
}

#[test]
fn create_list_drop_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let g = Namespaces::open(root, Config::default()).unwrap();
    for n in ["c", "a", "b"] {
        assert!(g
            .create(n)
            .unwrap()
            .check_and_insert(n, DAY)
            .unwrap()
            .is_inserted());
    }
    assert_eq!(g.list(), ["a", "b", "c"]);
    assert!(matches!(g.create("a"), Err(Error::NamespaceExists { .. })));
    // get_or_create: existing and new.
    assert!(g.get_or_create("a").unwrap().contains("a").unwrap());
    assert!(!g.get_or_create("d").unwrap().contains("a").unwrap());
    let bytes_before = dir_bytes(root);
    g.drop_namespace("b").unwrap();
    assert!(
        !root.join("ns/b").exists(),
        "dropping deletes the directory"
    );
    assert!(dir_bytes(root) < bytes_before, "dropping reclaims disk");
    assert!(
        std::fs::read_dir(root.join("ns")).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with('.')),
        "no leftovers"
    );
    assert!(matches!(g.get("b"), Err(Error::UnknownNamespace { .. })));
    // close_namespace keeps the files; get opens it again.
    g.close_namespace("c").unwrap();
    g.close_namespace("c").unwrap();
    assert!(g.get("c").unwrap().contains("c").unwrap());
    g.close().unwrap();
    let g = Namespaces::open(root, Config::default()).unwrap();
    assert_eq!(g.list(), ["a", "c", "d"]);
    // A dropped name can be created again, empty.
    assert!(!g.create("b").unwrap().contains("b").unwrap());
}

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    n
}

#[test]
fn a_new_namespace_preallocates_one_small_segment_and_grows_by_doubling() {
    let dir = tempfile::tempdir().unwrap();
    let g = Namespaces::open(dir.path(), quiet()).unwrap();
    let a = g.create("a").unwrap();
    assert_eq!(a.stats().disk_bytes, 64 << 10, "first segment: 64 KiB");
    // About 300 KiB of 16-byte IDs: segments of 64, 128, 256 KiB.
    let keys: Vec<[u8; 16]> = (0u128..8000).map(|i| i.to_le_bytes()).collect();
    for chunk in keys.chunks(500) {
        a.check_and_insert_batch(chunk, DAY).unwrap();
    }
    let st = a.stats();
    assert_eq!(st.segments, 3, "{st:?}");
    assert_eq!(st.disk_bytes, (64 + 128 + 256) << 10, "{st:?}");
    drop(a);
    g.close().unwrap();
    // Reopened, the newest segment keeps its size and the next doubles.
    let g = Namespaces::open(dir.path(), quiet()).unwrap();
    let a = g.get("a").unwrap();
    assert!(a.contains(keys[7999]).unwrap());
    assert_eq!(a.stats().disk_bytes, (64 + 128 + 256) << 10);
    // A batch larger than the next segment gets a segment that holds it.
    let big: Vec<[u8; 16]> = (100_000u128..130_000).map(|i| i.to_le_bytes()).collect();
    a.check_and_insert_batch(&big, DAY).unwrap();
    assert!(a.contains(big[29_999]).unwrap());
}

#[test]
fn bad_names_are_refused() {
    let fs = SimFs::new();
    let g = Namespaces::open_with(fs, ROOT, quiet()).unwrap();
    let long = "x".repeat(201);
    for bad in [
        "",
        ".",
        "..",
        ".hidden",
        "a/b",
        "a b",
        "é",
        "a\0b",
        long.as_str(),
    ] {
        for r in [
            g.create(bad).map(drop),
            g.get(bad).map(drop),
            g.drop_namespace(bad),
        ] {
            assert!(
                matches!(r, Err(Error::InvalidNamespace { .. })),
                "{bad:?}: {r:?}"
            );
        }
    }
    g.create(&"x".repeat(200)).unwrap();
    g.create("A-z_0.9").unwrap();
    assert!(g.list().len() == 2);
}

#[test]
fn unknown_namespaces_and_in_use_handles_are_errors() {
    let fs = SimFs::new();
    let g = Namespaces::open_with(fs, ROOT, quiet()).unwrap();
    assert!(matches!(g.get("nope"), Err(Error::UnknownNamespace { .. })));
    assert!(matches!(
        g.drop_namespace("nope"),
        Err(Error::UnknownNamespace { .. })
    ));
    assert!(matches!(
        g.close_namespace("nope"),
        Err(Error::UnknownNamespace { .. })
    ));
    let a = g.create("a").unwrap();
    assert!(matches!(
        g.drop_namespace("a"),
        Err(Error::NamespaceInUse { .. })
    ));
    assert!(matches!(
        g.close_namespace("a"),
        Err(Error::NamespaceInUse { .. })
    ));
    // Still served after the refusals.
    assert!(a.check_and_insert(b"k", DAY).unwrap().is_inserted());
    drop(a);
    g.drop_namespace("a").unwrap();
    assert!(g.list().is_empty());
}

#[test]
fn a_single_store_is_not_a_group_and_a_group_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("single");
    Store::open(&single, Config::default())
        .unwrap()
        .close()
        .unwrap();
    let err = Namespaces::open(&single, Config::default()).unwrap_err();
    assert!(matches!(err, Error::WrongLayout { .. }), "{err}");

    let root = dir.path().join("group");
    let g = Namespaces::open(&root, Config::default()).unwrap();
    drop(g.create("a").unwrap());
    let err = Store::open(&root, Config::default()).unwrap_err();
    assert!(matches!(err, Error::WrongLayout { .. }), "{err}");
    let err = Store::open(root.join("ns/a"), Config::default()).unwrap_err();
    assert!(matches!(err, Error::WrongLayout { .. }), "{err}");
    let err = Namespaces::open(&root, Config::default()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
}

#[test]
fn a_newer_or_damaged_group_marker_is_refused() {
    let fs = SimFs::new();
    Namespaces::open_with(fs.clone(), ROOT, quiet())
        .unwrap()
        .close()
        .unwrap();
    let marker = Path::new(ROOT).join("dedupstore.group");
    let good = fs.read_file(&marker).unwrap();
    assert_eq!(good.len(), 20);
    assert_eq!(&good[0..8], b"DDUPGRP\0");
    let mut newer = good.clone();
    newer[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32fast::hash(&newer[0..16]);
    newer[16..20].copy_from_slice(&crc.to_le_bytes());
    fs.write_file(&marker, &newer);
    let err = Namespaces::open_with(fs.clone(), ROOT, quiet()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );
    let mut bad = good.clone();
    bad[12] ^= 1;
    fs.write_file(&marker, &bad);
    let err = Namespaces::open_with(fs.clone(), ROOT, quiet()).unwrap_err();
    assert!(matches!(err, Error::Corruption { .. }), "{err}");
    fs.write_file(&marker, &good);
    Namespaces::open_with(fs, ROOT, quiet()).unwrap();
}

#[test]
fn create_and_drop_are_durable_when_they_return() {
    let fs = SimFs::new();
    let g = Namespaces::open_with(fs.clone(), ROOT, quiet()).unwrap();
    assert!(g
        .create("keep")
        .unwrap()
        .check_and_insert(b"k", DAY)
        .unwrap()
        .is_inserted());
    assert!(g
        .create("gone")
        .unwrap()
        .check_and_insert(b"k", DAY)
        .unwrap()
        .is_inserted());
    g.drop_namespace("gone").unwrap();
    // Power loss now, with the group still open.
    for mode in [CrashMode::DropUnsynced, CrashMode::Torn(7)] {
        let after = fs.crash(mode);
        let g2 = Namespaces::open_with(after.clone(), ROOT, quiet()).unwrap();
        assert_eq!(g2.list(), ["keep"]);
        assert!(g2.get("keep").unwrap().contains(b"k").unwrap());
        assert!(after
            .file_names(&Path::new(ROOT).join("ns/gone"))
            .is_empty());
        assert!(dot_names(&after).is_empty());
    }
}

/// Runs `op` on a fresh group with the `i`th I/O call (and every later one)
/// failing; then checks every crash image with `check`. Returns whether the
/// fault fired (false: `op` completed before call `i`).
fn with_fault_at(
    i: u64,
    setup: impl Fn(&Namespaces<SimFs>),
    op: impl Fn(&Namespaces<SimFs>) -> dedupstore::Result<()>,
    check: impl Fn(&Namespaces<SimFs>, bool),
) -> bool {
    let fs = SimFs::with_seed(i);
    let g = Namespaces::open_with(fs.clone(), ROOT, quiet()).unwrap();
    setup(&g);
    fs.fail_at(Some(Fault {
        at: i,
        sticky: true,
        errno: libc::EIO,
        only: None,
    }));
    let ok = op(&g).is_ok();
    let fired = fs.failures() > 0;
    let images = [
        fs.crash(CrashMode::Kill),
        fs.crash(CrashMode::DropUnsynced),
        fs.crash(CrashMode::Torn(i)),
        fs.crash(CrashMode::Torn(i ^ 0x5555)),
    ];
    fs.fail_at(None);
    drop(g);
    for img in images {
        let g = Namespaces::open_with(img.clone(), ROOT, quiet()).unwrap();
        assert!(
            dot_names(&img).is_empty(),
            "open cleans up: {:?}",
            img.file_names(&Path::new(ROOT).join("ns"))
        );
        check(&g, ok);
    }
    fired
}

#[test]
fn a_crash_at_any_step_of_create_leaves_the_namespace_whole_or_absent() {
    let mut i = 0;
    loop {
        let fired = with_fault_at(
            i,
            |g| drop(g.create("other").unwrap()),
            |g| g.create("a").map(drop),
            |g, ok| {
                let list = g.list();
                assert!(list.contains(&"other".to_string()));
                if ok {
                    assert!(
                        list.contains(&"a".to_string()),
                        "step {i}: created is durable"
                    );
                }
                if list.contains(&"a".to_string()) {
                    let a = g.get("a").unwrap();
                    assert!(!a.contains(b"k").unwrap());
                    assert!(a.check_and_insert(b"k", DAY).unwrap().is_inserted());
                } else {
                    // Absent: the name is free.
                    g.create("a").unwrap();
                }
            },
        );
        if !fired {
            break;
        }
        i += 1;
    }
    assert!(i > 5, "create made {i} I/O calls");
}

#[test]
fn a_crash_at_any_step_of_drop_leaves_the_namespace_whole_or_gone() {
    let mut i = 0;
    loop {
        let fired = with_fault_at(
            i,
            |g| {
                let a = g.create("a").unwrap();
                assert!(a.check_and_insert(b"k", DAY).unwrap().is_inserted());
                drop(a);
                g.close_namespace("a").unwrap();
            },
            |g| g.drop_namespace("a"),
            |g, ok| {
                let list = g.list();
                if ok {
                    assert!(list.is_empty(), "step {i}: dropped is durable");
                }
                if list.contains(&"a".to_string()) {
                    // Whole: its acknowledged key is still there.
                    assert!(g.get("a").unwrap().contains(b"k").unwrap(), "step {i}");
                }
            },
        );
        if !fired {
            break;
        }
        i += 1;
    }
    assert!(i > 3, "drop made {i} I/O calls");
}

#[test]
fn a_failed_sync_poisons_only_its_namespace() {
    let fs = SimFs::new();
    let g = Namespaces::open_with(fs.clone(), ROOT, quiet()).unwrap();
    let a = g.create("a").unwrap();
    let b = g.create("b").unwrap();
    fs.fail_at(Some(Fault {
        at: 0,
        sticky: false,
        errno: libc::EIO,
        only: Some("msync"),
    }));
    assert!(matches!(
        a.check_and_insert(b"k", DAY),
        Err(Error::Io { op: "msync", .. })
    ));
    fs.fail_at(None);
    assert!(matches!(
        a.check_and_insert(b"j", DAY),
        Err(Error::SyncFailed)
    ));
    assert!(b.check_and_insert(b"k", DAY).unwrap().is_inserted());
    assert!(b.contains(b"k").unwrap());
    // Reopening the namespace clears the poison.
    drop(a);
    assert!(
        g.close_namespace("a").is_err(),
        "its final sync reports the failure"
    );
    let a = g.get("a").unwrap();
    assert!(a.check_and_insert(b"j", DAY).unwrap().is_inserted());
}

#[test]
fn a_failed_background_sync_poisons_only_its_namespace() {
    let fs = SimFs::new();
    let cfg = quiet().durability(Durability::Interval(Duration::from_millis(5)));
    let g = Namespaces::open_with(fs.clone(), ROOT, cfg).unwrap();
    let a = g.create("a").unwrap();
    let b = g.create("b").unwrap();
    assert!(b.check_and_insert(b"k", DAY).unwrap().is_inserted());
    b.sync().unwrap();
    // b has nothing left to sync: the next msync is the flusher's for a.
    fs.fail_at(Some(Fault {
        at: 0,
        sticky: false,
        errno: libc::EIO,
        only: Some("msync"),
    }));
    assert!(a.check_and_insert(b"k", DAY).unwrap().is_inserted());
    let mut n = 0u32;
    while !matches!(
        a.check_and_insert(n.to_le_bytes(), DAY),
        Err(Error::SyncFailed)
    ) {
        std::thread::sleep(Duration::from_millis(2));
        n += 1;
    }
    assert_eq!(fs.failures(), 1);
    assert!(b.check_and_insert(b"j", DAY).unwrap().is_inserted());
    b.sync().unwrap();
    assert!(matches!(a.sync(), Err(Error::SyncFailed)));
}

#[test]
fn a_staged_store_is_installed_as_a_namespace() {
    let fs = SimFs::new();
    let g = Namespaces::open_with(fs.clone(), ROOT, quiet()).unwrap();
    let d = g.staging_dir().unwrap();
    let empty = g.staging_dir().unwrap();
    assert_ne!(d, empty);
    let s = Store::open_with(fs.clone(), &d, quiet()).unwrap();
    assert!(s.check_and_insert(b"restored", DAY).unwrap().is_inserted());
    assert!(matches!(g.install("p", &d), Err(Error::Locked { .. })));
    s.close().unwrap();
    assert!(matches!(
        g.install("p", &empty),
        Err(Error::WrongLayout { .. })
    ));
    drop(g.create("taken").unwrap());
    assert!(matches!(
        g.install("taken", &d),
        Err(Error::NamespaceExists { .. })
    ));
    let p = g.install("p", &d).unwrap();
    assert!(p.contains(b"restored").unwrap());
    drop(p);
    // Durable: a power loss now keeps it.
    let after = fs.crash(CrashMode::DropUnsynced);
    drop(g);
    let g = Namespaces::open_with(after.clone(), ROOT, quiet()).unwrap();
    assert_eq!(g.list(), ["p", "taken"]);
    assert!(g.get("p").unwrap().contains(b"restored").unwrap());
    assert!(
        after
            .file_names(&Path::new(ROOT).join("staging"))
            .is_empty(),
        "open empties staging"
    );
}

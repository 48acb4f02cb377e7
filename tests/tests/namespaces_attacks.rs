//! Hostile review of namespaces (issue 12 part 1): each test is a break
//! that was found, kept as a regression test.

use std::path::Path;
use std::time::Duration;

use dedupstore::sim::SimFs;
use dedupstore::{Checkpoints, Config, Durability, Error, Namespaces};

const DAY: Duration = Duration::from_secs(86_400);
const ROOT: &str = "/g";

use dedupstore_tests::support::quiet;

/// `install` took any store directory with a `dedupstore.meta` and no held
/// `LOCK`. A namespace of a group has no `LOCK` of its own (the group's
/// lock covers it), so `install("b", <root>/ns/a)` renamed the live (or
/// closed) namespace `a` to `b`: `a`'s acknowledged keys vanished from `a`.
#[test]
fn install_refuses_a_namespace_directory_of_a_group() {
    let fs = SimFs::new();
    let g = Namespaces::open_with(fs.clone(), ROOT, quiet()).unwrap();
    let a = g.create("a").unwrap();
    assert!(a.check_and_insert(b"k", DAY).unwrap().is_inserted());
    let a_dir = Path::new(ROOT).join("ns").join("a");
    // Open namespace.
    assert!(matches!(
        g.install("b", &a_dir),
        Err(Error::WrongLayout { .. })
    ));
    drop(a);
    // Closed namespace.
    g.close_namespace("a").unwrap();
    assert!(matches!(
        g.install("b", &a_dir),
        Err(Error::WrongLayout { .. })
    ));
    // A namespace of another group (whose lock does not cover `install`).
    let other = Namespaces::open_with(fs.clone(), "/h", quiet()).unwrap();
    let x = other.create("x").unwrap();
    assert!(x.check_and_insert(b"kx", DAY).unwrap().is_inserted());
    assert!(matches!(
        g.install("b", &Path::new("/h").join("ns").join("x")),
        Err(Error::WrongLayout { .. })
    ));
    assert!(x.contains(b"kx").unwrap());
    drop(x);
    other.close().unwrap();
    assert_eq!(g.list(), ["a"]);
    g.close().unwrap();
    let g = Namespaces::open_with(fs, ROOT, quiet()).unwrap();
    assert_eq!(g.list(), ["a"]);
    assert!(
        g.get("a").unwrap().contains(b"k").unwrap(),
        "an acknowledged key of `a` is still in `a`"
    );
}

/// A stray file in `ns/` whose name is a valid namespace name is listed as
/// a namespace; `drop_namespace` of it said `Ok` (renamed to `.drop-<name>`,
/// its purge failing silently), and then every later open failed: the
/// open's cleanup could not list the `.drop-` "directory".
#[test]
fn dropping_a_stray_file_in_ns_does_not_brick_the_group() {
    let dir = tempfile::tempdir().unwrap();
    drop(Namespaces::open(dir.path(), quiet()).unwrap());
    std::fs::write(dir.path().join("ns").join("notes"), b"junk").unwrap();
    let g = Namespaces::open(dir.path(), quiet()).unwrap();
    assert_eq!(g.list(), ["notes"]);
    assert!(g.get("notes").is_err(), "a file is not a store");
    g.drop_namespace("notes").unwrap();
    assert!(g.list().is_empty());
    g.close().unwrap();
    let g = Namespaces::open(dir.path(), quiet()).unwrap();
    assert!(g.list().is_empty());
    assert!(g.create("notes").is_ok());
}

/// `close` with a store handle still alive leaves the group locked "until
/// the last handle is dropped". The lock lived in the shared workers, whose
/// threads were not joined when the last handle went: they dropped it later,
/// so an open right after the last handle was dropped could get `Locked`.
#[test]
fn the_group_is_unlocked_when_the_last_handle_outliving_it_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..30 {
        let g = Namespaces::open(dir.path(), Config::default()).unwrap_or_else(|e| {
            panic!("round {round}: the group must open once every handle is gone: {e}")
        });
        let a = g.get_or_create("a").unwrap();
        assert!(matches!(g.close(), Err(Error::NamespaceInUse { .. })));
        // Still served after the group's close.
        assert!(a
            .check_and_insert(format!("k{round}").as_bytes(), DAY)
            .unwrap()
            .is_inserted());
        drop(a);
    }
    let g = Namespaces::open(dir.path(), Config::default()).unwrap();
    let a = g.get("a").unwrap();
    for round in 0..30 {
        assert!(a.contains(format!("k{round}").as_bytes()).unwrap());
    }
}

/// Growing segments: at the first (64 KiB) segment, a claim batch and a
/// complete batch with responses far larger than the doubled size, then
/// inserts over several rolls (segments of mixed sizes), a GC with
/// compaction, a checkpoint, a power loss: every acknowledged key and
/// response is back, byte for byte.
#[test]
fn large_batches_at_the_first_small_segment_and_mixed_sizes_survive_power_loss() {
    use dedupstore::{Claim, Store};
    let fs = SimFs::new();
    let cfg = quiet().segment_size(1 << 20);
    let s = Store::open_with(fs.clone(), "/s", cfg.clone()).unwrap();
    let keys: Vec<Vec<u8>> = (0..15u32).map(|i| format!("job{i}").into_bytes()).collect();
    let items: Vec<(&[u8], Option<u64>)> = keys.iter().map(|k| (&k[..], Some(1))).collect();
    let claims = s.claim_batch(&items, DAY).unwrap();
    let tokens: Vec<_> = claims
        .into_iter()
        .map(|c| match c.unwrap() {
            Claim::Acquired(t) => t,
            other => panic!("{other:?}"),
        })
        .collect();
    let resp = |i: usize| vec![u8::try_from(i % 251).unwrap(); 32 << 10];
    let resps: Vec<Vec<u8>> = (0..tokens.len()).map(resp).collect();
    let done: Vec<_> = tokens
        .iter()
        .zip(&resps)
        .map(|(t, r)| (t, Some(&r[..])))
        .collect();
    for r in s.complete_batch(&done, DAY).unwrap() {
        r.unwrap();
    }
    // Many rolls: 64 KiB, 128 KiB, ... up to 1 MiB segments.
    let many: Vec<Vec<u8>> = (0..40_000u32)
        .map(|i| format!("key-{i:08}").into_bytes())
        .collect();
    for chunk in many.chunks(5_000) {
        for o in s.check_and_insert_batch(chunk, DAY).unwrap() {
            assert!(o.is_inserted());
        }
    }
    for k in many.iter().step_by(2) {
        assert!(s.remove(k).unwrap());
    }
    s.gc_now().unwrap();
    drop(s);
    for mode in [
        dedupstore::sim::CrashMode::DropUnsynced,
        dedupstore::sim::CrashMode::Kill,
    ] {
        let after = fs.crash(mode);
        let s = Store::open_with(after, "/s", cfg.clone()).unwrap();
        for (i, k) in keys.iter().enumerate() {
            match s.claim(k, DAY, Some(1)).unwrap() {
                Claim::Completed { response, .. } => {
                    assert_eq!(response.as_deref(), Some(&resp(i)[..]), "{i}")
                }
                other => panic!("{i}: {other:?}"),
            }
        }
        for (i, k) in many.iter().enumerate() {
            assert_eq!(s.contains(k).unwrap(), i % 2 == 1, "{i}");
        }
    }
}

/// Drop, then create the same name, an I/O fault at every step of both,
/// then a kill, a power loss and torn power losses: once the drop returned
/// `Ok`, the old keys never come back under the name; once the create
/// returned `Ok`, the namespace is there; the name always opens whole.
#[test]
fn drop_then_recreate_the_same_name_never_brings_old_keys_back() {
    use dedupstore::sim::{CrashMode, Fault};
    use std::sync::atomic::{AtomicU8, Ordering};
    let mut i = 0;
    loop {
        let fs = SimFs::with_seed(i);
        let g = Namespaces::open_with(fs.clone(), ROOT, quiet()).unwrap();
        let x = g.create("x").unwrap();
        assert!(x.check_and_insert(b"old", DAY).unwrap().is_inserted());
        drop(x);
        fs.fail_at(Some(Fault {
            at: i,
            sticky: true,
            errno: libc::EIO,
            only: None,
        }));
        // 0: nothing returned Ok; 1: the drop did; 2: the create too.
        let stage = AtomicU8::new(0);
        if g.drop_namespace("x").is_ok() {
            stage.store(1, Ordering::SeqCst);
            if g.create("x").is_ok() {
                stage.store(2, Ordering::SeqCst);
            }
        }
        let fired = fs.failures() > 0;
        let images = [
            fs.crash(CrashMode::Kill),
            fs.crash(CrashMode::DropUnsynced),
            fs.crash(CrashMode::Torn(i)),
            fs.crash(CrashMode::Torn(i ^ 0x5555)),
        ];
        fs.fail_at(None);
        drop(g);
        let stage = stage.load(Ordering::SeqCst);
        for img in images {
            let g = Namespaces::open_with(img, ROOT, quiet()).unwrap();
            let listed = g.list().iter().any(|n| n == "x");
            if stage == 2 {
                assert!(listed, "fault at {i}: a created namespace vanished");
            }
            if listed {
                let x = g.get("x").unwrap();
                if stage >= 1 {
                    assert!(
                        !x.contains(b"old").unwrap(),
                        "fault at {i}: a dropped namespace's key came back"
                    );
                }
            }
        }
        if !fired {
            assert_eq!(stage, 2);
            break;
        }
        i += 1;
    }
    assert!(i > 5, "the faults reached the steps ({i})");
}

/// Bad layouts: a root that is a file, `ns/` or `staging/` that is a file,
/// a marker that is a directory, install of a missing or file path, a
/// `.drop-x` beside `x`, junk (invalid-name) entries in `ns/`: errors or
/// cleanup, never a panic, never a lost namespace.
#[test]
fn bad_layouts_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(Namespaces::open(&file, quiet()).is_err());

    for (what, make) in [("ns", true), ("staging", true), ("dedupstore.group", false)] {
        let root = dir.path().join(format!("r-{what}"));
        drop(Namespaces::open(&root, quiet()).unwrap());
        let p = root.join(what);
        if make {
            std::fs::remove_dir_all(&p).unwrap();
            std::fs::write(&p, b"junk").unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
            std::fs::create_dir(&p).unwrap();
        }
        assert!(Namespaces::open(&root, quiet()).is_err(), "{what}");
    }

    let root = dir.path().join("g");
    let g = Namespaces::open(&root, quiet()).unwrap();
    let x = g.create("x").unwrap();
    assert!(x.check_and_insert(b"k", DAY).unwrap().is_inserted());
    drop(x);
    assert!(g.install("y", &dir.path().join("missing")).is_err());
    assert!(g.install("y", &file).is_err());
    g.close().unwrap();
    let ns = root.join("ns");
    std::fs::create_dir(ns.join(".drop-x")).unwrap();
    std::fs::write(ns.join(".drop-x").join("seg"), b"old").unwrap();
    std::fs::create_dir(ns.join("bad name")).unwrap();
    std::fs::write(ns.join("ÿ"), b"junk").unwrap();
    let g = Namespaces::open(&root, quiet()).unwrap();
    assert_eq!(g.list(), ["x"]);
    assert!(g.get("x").unwrap().contains(b"k").unwrap());
    assert!(!ns.join(".drop-x").exists());
}

/// Threads racing `get_or_create`, inserts, `drop_namespace`,
/// `close_namespace` and `create` on the same few names, with GC, background
/// checkpoints and `Interval` flushes on the shared workers: no panic, no
/// deadlock, and every refusal is one of the documented errors.
#[test]
fn racing_get_drop_close_and_create_on_the_same_names() {
    use std::sync::Arc;
    let cfg = Config::default()
        .durability(Durability::Interval(Duration::from_millis(1)))
        .gc_interval(Some(Duration::from_millis(1)))
        .checkpoints(Checkpoints::Background);
    let g = Arc::new(Namespaces::open_with(SimFs::new(), ROOT, cfg).unwrap());
    let names = ["a", "b", "c"];
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let g = g.clone();
            std::thread::spawn(move || {
                for i in 0..300u32 {
                    let name = names[((i + t) % 3) as usize];
                    let ok = |r: dedupstore::Result<()>| match r {
                        Ok(())
                        | Err(Error::NamespaceInUse { .. })
                        | Err(Error::UnknownNamespace { .. })
                        | Err(Error::NamespaceExists { .. }) => {}
                        Err(e) => panic!("{name}: {e}"),
                    };
                    match (i + t) % 4 {
                        0 => ok(g.drop_namespace(name)),
                        1 => ok(g.close_namespace(name)),
                        2 => ok(g.create(name).map(drop)),
                        _ => match g.get_or_create(name) {
                            Ok(s) => {
                                let k = format!("{t}-{i}");
                                assert!(s.check_and_insert(k.as_bytes(), DAY).is_ok());
                                assert!(s.contains(k.as_bytes()).unwrap());
                            }
                            Err(e) => ok(Err(e)),
                        },
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let g = Arc::try_unwrap(g).unwrap();
    g.close().unwrap();
}

/// The longest name (200 bytes) on a real file system: its temporary names
/// (`.new-`, `.drop-` prefixes) still fit in a directory entry; names that
/// differ only in case are two namespaces.
#[test]
fn the_longest_name_and_case_variants_on_a_real_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let g = Namespaces::open(dir.path(), quiet()).unwrap();
    let long = "L".repeat(200);
    let s = g.create(&long).unwrap();
    assert!(s.check_and_insert(b"k", DAY).unwrap().is_inserted());
    drop(s);
    let a = g.create("Case").unwrap();
    let b = g.create("case").unwrap();
    assert!(a.check_and_insert(b"upper", DAY).unwrap().is_inserted());
    assert!(!b.contains(b"upper").unwrap());
    drop((a, b));
    g.drop_namespace(&long).unwrap();
    g.close().unwrap();
    let g = Namespaces::open(dir.path(), quiet()).unwrap();
    assert_eq!(g.list(), ["Case", "case"]);
    let s = g.create(&long).unwrap();
    assert!(!s.contains(b"k").unwrap());
}

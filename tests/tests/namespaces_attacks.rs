//! Hostile review of namespaces (issue 12 part 1): each test is a break
//! that was found, kept as a regression test.

use std::path::Path;
use std::time::Duration;

use dedupstore::sim::SimFs;
use dedupstore::{Checkpoints, Config, Durability, Error, Namespaces};

const DAY: Duration = Duration::from_secs(86_400);
const ROOT: &str = "/g";

fn quiet() -> Config {
    Config::default()
        .durability(Durability::Immediate)
        .gc_interval(None)
        .checkpoints(Checkpoints::OnCloseAndGc)
}

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

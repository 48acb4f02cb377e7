//! The thread count of a namespace group is bounded: 200 namespaces with
//! GC, `Durability::Interval` and background checkpoints share two worker
//! threads. Alone in its test binary, so no other test's threads count.

use std::time::Duration;

use dedupstore::{Checkpoints, Config, Durability, Namespaces};

fn threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|t| {
            let comm = t.unwrap().path().join("comm");
            std::fs::read_to_string(comm)
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect()
}

#[test]
fn two_hundred_namespaces_share_two_worker_threads() {
    let dir = tempfile::tempdir().unwrap();
    let before = threads().len();
    let cfg = Config::default()
        .durability(Durability::Interval(Duration::from_millis(50)))
        .gc_interval(Some(Duration::from_millis(100)))
        .checkpoints(Checkpoints::Background);
    let g = Namespaces::open(dir.path(), cfg).unwrap();
    let mut stores = Vec::new();
    for i in 0..200 {
        let s = g.create(&format!("p{i}")).unwrap();
        assert!(s
            .check_and_insert(b"k", Duration::from_secs(60))
            .unwrap()
            .is_inserted());
        stores.push(s);
    }
    let during = threads();
    let workers = during
        .iter()
        .filter(|n| n.starts_with("dedupstore"))
        .count();
    assert_eq!(workers, 2, "{during:?}");
    assert!(during.len() <= before + 2, "{before} -> {}", during.len());
    // Every namespace is still served by them: wake each one's GC.
    for s in &stores {
        s.wake_gc();
    }
    drop(stores);
    g.close().unwrap();
    let after = threads();
    assert!(
        after.iter().all(|n| !n.starts_with("dedupstore")),
        "the workers stop at close: {after:?}"
    );
}

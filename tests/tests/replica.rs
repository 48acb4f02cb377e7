//! The engine side of replication (`dedupstore::replica`): the view of the
//! durable log, and `ReplicaWriter` turning shipped bytes into a store.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dedupstore::replica::{ReplicaView, ReplicaWriter};
use dedupstore::{Config, Durability, Error, ManualClock, Store};

const T0: u64 = 1_800_000_000_000;
const HOUR: Duration = Duration::from_secs(3600);

fn config(clock: &ManualClock) -> Config {
    Config::default()
        .segment_size(64 << 10)
        .gc_interval(None)
        .clock(clock.clone())
}

fn key(kind: &str, i: u32) -> Vec<u8> {
    format!("{kind}-{i:08}").into_bytes()
}

fn insert(store: &Store, kind: &str, n: std::ops::Range<u32>, ttl: Duration) {
    let keys: Vec<Vec<u8>> = n.map(|i| key(kind, i)).collect();
    for b in keys.chunks(500) {
        let out = store.check_and_insert_batch(b, ttl).unwrap();
        assert!(out.iter().all(|o| o.is_inserted()));
    }
}

/// Writes a view into `dir` as a restore would.
fn write_view(view: &ReplicaView, dir: &Path) {
    let mut w = ReplicaWriter::create(dir).unwrap();
    for s in view.segments() {
        w.write_segment(s.id(), s.records()).unwrap();
    }
    w.finish().unwrap();
}

fn count_present(store: &Store, kind: &str, n: std::ops::Range<u32>) -> usize {
    let keys: Vec<Vec<u8>> = n.map(|i| key(kind, i)).collect();
    store
        .contains_batch(&keys)
        .unwrap()
        .iter()
        .filter(|&&p| p)
        .count()
}

#[test]
fn a_view_written_back_is_a_store_with_the_same_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = Store::open(tmp.path().join("src"), config(&clock)).unwrap();
    insert(&store, "a", 0..5000, HOUR);
    for i in 0..100 {
        assert!(store.remove(key("a", i)).unwrap());
    }
    let view = store.replica_view().unwrap();
    let segs = view.segments();
    assert!(segs.len() > 2, "several segments");
    // Every segment but the newest is sealed; ids ascend.
    for (i, s) in segs.iter().enumerate() {
        assert_eq!(s.is_sealed(), i + 1 < segs.len(), "segment {}", s.id());
    }
    assert!(segs.windows(2).all(|w| w[0].id() < w[1].id()));
    // The sealed segments' bytes are the files' record bytes.
    for s in &segs[..segs.len() - 1] {
        let file = std::fs::read(
            tmp.path()
                .join("src")
                .join(format!("seg-{:010}.log", s.id())),
        )
        .unwrap();
        assert_eq!(&file[64..64 + s.records().len()], s.records());
        assert!(file[64 + s.records().len()..].iter().all(|&b| b == 0));
    }
    let dst = tmp.path().join("dst");
    write_view(&view, &dst);
    let restored = Store::open(&dst, config(&clock)).unwrap();
    assert_eq!(
        count_present(&restored, "a", 0..100),
        0,
        "removed stay removed"
    );
    assert_eq!(count_present(&restored, "a", 100..5000), 4900);
    assert_eq!(count_present(&restored, "never", 0..5000), 0);
    // The restored store takes writes and reopens.
    insert(&restored, "b", 0..3000, HOUR);
    restored.close().unwrap();
    let reopened = Store::open(&dst, config(&clock)).unwrap();
    assert_eq!(count_present(&reopened, "b", 0..3000), 3000);
}

#[test]
fn the_view_stops_at_the_durable_lsn() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    // Nothing is synced by the writes themselves.
    let cfg = config(&clock).durability(Durability::None);
    let store = Store::open(tmp.path().join("src"), cfg.clone()).unwrap();
    let before = store.replica_view().unwrap().record_bytes();
    insert(&store, "a", 0..100, HOUR);
    let unsynced = store.replica_view().unwrap();
    assert_eq!(
        unsynced.record_bytes(),
        before,
        "unsynced records are not in the view"
    );
    store.sync().unwrap();
    let synced = store.replica_view().unwrap();
    assert!(synced.record_bytes() > before);
    let dst = tmp.path().join("dst");
    write_view(&synced, &dst);
    let restored = Store::open(&dst, cfg).unwrap();
    assert_eq!(count_present(&restored, "a", 0..100), 100);
}

#[test]
fn a_view_outlives_gc_deleting_its_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = Arc::new(Store::open(tmp.path().join("src"), config(&clock)).unwrap());
    insert(&store, "short", 0..4000, HOUR);
    insert(&store, "long", 0..4000, 100 * HOUR);
    let view = store.replica_view().unwrap();
    clock.advance(2 * HOUR);
    let gc = store.compact().unwrap();
    assert!(gc.segments_deleted > 0, "{gc:?}");
    // The deleted segments' bytes are still readable through the view, and
    // make a store with the answers of the moment it was taken.
    let dst = tmp.path().join("dst");
    write_view(&view, &dst);
    let restored = Store::open(&dst, config(&clock)).unwrap();
    assert_eq!(count_present(&restored, "long", 0..4000), 4000);
    assert_eq!(
        count_present(&restored, "short", 0..4000),
        0,
        "expired by now"
    );
    // A view taken after GC has fewer bytes and the same live answers.
    let after = store.replica_view().unwrap();
    assert!(after.record_bytes() < view.record_bytes());
    let dst2 = tmp.path().join("dst2");
    write_view(&after, &dst2);
    let restored = Store::open(&dst2, config(&clock)).unwrap();
    assert_eq!(count_present(&restored, "long", 0..4000), 4000);
}

#[test]
fn the_writer_refuses_bad_input_and_a_cut_short_restore_does_not_open() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let store = Store::open(tmp.path().join("src"), config(&clock)).unwrap();
    insert(&store, "a", 0..3000, HOUR);
    let view = store.replica_view().unwrap();
    let segs = view.segments();

    // Not empty.
    let err = ReplicaWriter::create(tmp.path().join("src")).err().unwrap();
    assert!(matches!(err, Error::RestoreTarget { .. }), "{err}");

    // Ids out of order.
    let mut w = ReplicaWriter::create(tmp.path().join("order")).unwrap();
    w.write_segment(segs[1].id(), segs[1].records()).unwrap();
    let err = w
        .write_segment(segs[0].id(), segs[0].records())
        .unwrap_err();
    assert!(matches!(err, Error::RestoreTarget { .. }), "{err}");

    // Bytes that are not whole valid records: a flipped byte, a cut.
    let mut damaged = segs[0].records().to_vec();
    damaged[100] ^= 1;
    let mut w = ReplicaWriter::create(tmp.path().join("bad")).unwrap();
    let err = w.write_segment(segs[0].id(), &damaged).unwrap_err();
    assert!(matches!(err, Error::Corruption { .. }), "{err}");
    let rec = segs[0].records();
    let err = w
        .write_segment(segs[0].id(), &rec[..rec.len() - 1])
        .unwrap_err();
    assert!(matches!(err, Error::Corruption { .. }), "{err}");

    // Segments written but not finished: no metadata file, so open
    // refuses the directory instead of taking a partial log for a store.
    let dir = tmp.path().join("cut");
    let mut w = ReplicaWriter::create(&dir).unwrap();
    w.write_segment(segs[0].id(), segs[0].records()).unwrap();
    drop(w);
    let err = Store::open(&dir, config(&clock)).unwrap_err();
    assert!(matches!(err, Error::Corruption { .. }), "{err}");
}

//! Basic API behaviour: outcomes, validation, reopen, remove.

use std::time::Duration;

use dedupstore::{Config, Durability, Error, ManualClock, Outcome, Store, MAX_KEY_LEN, MAX_TTL};

const DAY: Duration = Duration::from_secs(86_400);

#[test]
fn insert_then_duplicate_then_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), Config::default()).unwrap();
        assert_eq!(s.check_and_insert(b"a", DAY).unwrap(), Outcome::Inserted);
        assert!(matches!(
            s.check_and_insert(b"a", DAY).unwrap(),
            Outcome::Duplicate { .. }
        ));
        assert!(s.contains(b"a").unwrap());
        assert!(!s.contains(b"b").unwrap());
    }
    let s = Store::open(dir.path(), Config::default()).unwrap();
    assert!(s.contains(b"a").unwrap());
    assert!(!s.contains(b"b").unwrap());
    assert_eq!(s.check_and_insert(b"b", DAY).unwrap(), Outcome::Inserted);
}

#[test]
fn hundred_thousand_keys_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        Config::default()
            .durability(Durability::None)
            .segment_size(1 << 20)
    };
    let key = |i: u64| format!("msg-{i:016x}").into_bytes();
    {
        let s = Store::open(dir.path(), cfg()).unwrap();
        for i in 0..100_000 {
            assert_eq!(s.check_and_insert(key(i), DAY).unwrap(), Outcome::Inserted);
        }
        assert!(s.stats().segments > 1, "test should span several segments");
    }
    let s = Store::open(dir.path(), cfg()).unwrap();
    assert_eq!(s.stats().indexed_keys, 100_000);
    assert_eq!(s.stats().truncated_records, 0);
    for i in 0..100_000 {
        assert!(
            !s.check_and_insert(key(i), DAY).unwrap().is_inserted(),
            "key {i} forgotten"
        );
    }
    for i in 100_000..200_000 {
        assert_eq!(
            s.check_and_insert(key(i), DAY).unwrap(),
            Outcome::Inserted,
            "key {i}"
        );
    }
}

#[test]
fn invalid_keys_and_ttls_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), Config::default()).unwrap();
    assert!(matches!(
        s.check_and_insert(b"", DAY),
        Err(Error::InvalidKey { len: 0 })
    ));
    let long = vec![7u8; MAX_KEY_LEN + 1];
    assert!(
        matches!(s.check_and_insert(&long, DAY), Err(Error::InvalidKey { len }) if len == MAX_KEY_LEN + 1)
    );
    assert!(matches!(s.contains(b""), Err(Error::InvalidKey { .. })));
    assert!(matches!(s.remove(&long), Err(Error::InvalidKey { .. })));
    assert!(matches!(
        s.check_and_insert(b"k", Duration::ZERO),
        Err(Error::InvalidTtl { .. })
    ));
    assert!(matches!(
        s.check_and_insert(b"k", MAX_TTL + Duration::from_millis(1)),
        Err(Error::InvalidTtl { .. })
    ));
    // A batch with one bad key inserts nothing.
    assert!(matches!(
        s.check_and_insert_batch(&[&b"x"[..], &b""[..]], DAY),
        Err(Error::InvalidKey { .. })
    ));
    assert!(!s.contains(b"x").unwrap());
    // The limits themselves are accepted.
    let max = vec![7u8; MAX_KEY_LEN];
    assert_eq!(
        s.check_and_insert(&max, MAX_TTL).unwrap(),
        Outcome::Inserted
    );
    assert!(s.contains(&max).unwrap());
}

#[test]
fn second_open_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), Config::default()).unwrap();
    assert!(matches!(
        Store::open(dir.path(), Config::default()),
        Err(Error::Locked { .. })
    ));
    drop(s);
    Store::open(dir.path(), Config::default()).expect("lock is released on drop");
}

#[test]
fn remove_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), Config::default()).unwrap();
        let _ = s.check_and_insert(b"gone", DAY).unwrap();
        let _ = s.check_and_insert(b"kept", DAY).unwrap();
        assert!(s.remove(b"gone").unwrap());
        assert!(!s.remove(b"gone").unwrap(), "second remove finds nothing");
        assert!(!s.remove(b"never").unwrap());
        assert!(!s.contains(b"gone").unwrap());
    }
    let s = Store::open(dir.path(), Config::default()).unwrap();
    assert!(!s.contains(b"gone").unwrap());
    assert!(s.contains(b"kept").unwrap());
    assert_eq!(
        s.check_and_insert(b"gone", DAY).unwrap(),
        Outcome::Inserted,
        "removed ID is processed again"
    );
    drop(s);
    let s = Store::open(dir.path(), Config::default()).unwrap();
    assert!(
        s.contains(b"gone").unwrap(),
        "re-insert after remove is kept"
    );
}

#[test]
fn batch_outcomes_in_order_with_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), Config::default()).unwrap();
    let _ = s.check_and_insert(b"old", DAY).unwrap();
    let keys: Vec<&[u8]> = vec![b"a", b"old", b"b", b"a", b"c", b"b"];
    let out = s.check_and_insert_batch(&keys, DAY).unwrap();
    let inserted: Vec<bool> = out.iter().map(Outcome::is_inserted).collect();
    assert_eq!(inserted, [true, false, true, false, true, false]);
    let syncs = s.stats().syncs;
    let many: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_le_bytes().to_vec()).collect();
    assert!(s
        .check_and_insert_batch(&many, DAY)
        .unwrap()
        .iter()
        .all(Outcome::is_inserted));
    assert_eq!(s.stats().syncs - syncs, 1, "a batch shares one sync");
    drop(s);
    let s = Store::open(dir.path(), Config::default()).unwrap();
    for k in keys.iter().copied().chain(many.iter().map(|k| &k[..])) {
        assert!(s.contains(k).unwrap());
    }
}

#[test]
fn contains_batch_answers_as_contains_does() {
    let clock = ManualClock::new(1_000_000_000);
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), Config::default().clock(clock.clone())).unwrap();
    let short = Duration::from_secs(10);
    for i in 0..3000u32 {
        let ttl = if i % 3 == 0 { short } else { DAY };
        assert!(s
            .check_and_insert(i.to_le_bytes(), ttl)
            .unwrap()
            .is_inserted());
    }
    for i in (0..3000u32).filter(|i| i % 5 == 0) {
        assert!(s.remove(i.to_le_bytes()).unwrap());
    }
    clock.advance(short);
    // Present, expired, removed and never-inserted keys, some repeated.
    let keys: Vec<[u8; 4]> = (0..4000u32)
        .chain([7, 7, 3999, 0])
        .map(u32::to_le_bytes)
        .collect();
    let batch = s.contains_batch(&keys).unwrap();
    let single: Vec<bool> = keys.iter().map(|k| s.contains(k).unwrap()).collect();
    assert_eq!(batch, single);
    let expect: Vec<bool> = (0..4000u32)
        .chain([7, 7, 3999, 0])
        .map(|i| i < 3000 && i % 3 != 0 && i % 5 != 0)
        .collect();
    assert_eq!(batch, expect);
    assert_eq!(s.contains_batch::<&[u8]>(&[]).unwrap(), Vec::<bool>::new());
    let bad: Vec<&[u8]> = vec![b"ok", b""];
    assert!(matches!(
        s.contains_batch(&bad),
        Err(Error::InvalidKey { len: 0 })
    ));
}

#[test]
fn stats_count_records_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), Config::default().durability(Durability::None)).unwrap();
    for i in 0..10u32 {
        let _ = s.check_and_insert(i.to_le_bytes(), DAY).unwrap();
    }
    s.sync().unwrap();
    let st = s.stats();
    assert_eq!(st.indexed_keys, 10);
    assert_eq!(st.segments, 1);
    assert_eq!(st.log_bytes, 10 * (16 + 4), "16-byte record header + key");
    assert_eq!((st.live_keys, st.expired_keys, st.dead_bytes), (10, 0, 0));
    assert_eq!(
        st.disk_bytes,
        64 << 10,
        "the first segment is 64 KiB; segments grow"
    );
    // Removed keys keep an index entry until their horizon, but count as
    // absent, exactly as `contains` answers.
    for i in 0..4u32 {
        assert!(s.remove(i.to_le_bytes()).unwrap());
    }
    let st = s.stats();
    assert_eq!((st.live_keys, st.expired_keys), (6, 4));
    assert_eq!(st.indexed_keys, 10);
}

#[test]
fn store_debug_says_where_it_is_and_whether_it_is_poisoned() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), Config::default()).unwrap();
    let d = format!("{s:?}");
    assert!(d.contains("Store") && d.contains("poisoned: false"), "{d}");
    assert!(d.contains(&dir.path().display().to_string()), "{d}");
}

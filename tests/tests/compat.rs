//! Backward compatibility: the store in `tests/fixtures/v1-store` was written
//! by format version 1 (`src/bin/make_v1_fixture.rs`, committed once and
//! never regenerated). Every later build must open it and answer exactly as
//! v1 did.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use dedupstore::{Claim, Config, KeyState, ManualClock, Outcome, RecoveryMode, Store};

const T0: u64 = 1_700_000_000_000;
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn copy_fixture() -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/v1-store");
    let dst = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.path().join(e.file_name())).unwrap();
    }
    dst
}

#[test]
fn a_store_written_by_format_v1_opens_and_answers_as_written() {
    let dir = copy_fixture();
    let raw = std::fs::read(dir.path().join("dedupstore.meta")).unwrap();
    assert_eq!(&raw[0..8], b"DDUPMETA");
    assert_eq!(u32::from_le_bytes(raw[8..12].try_into().unwrap()), 1);

    let clock = ManualClock::new(T0 + 5_000);
    let cfg = Config::default()
        .recovery(RecoveryMode::Strict)
        .segment_size(64 << 10)
        .gc_interval(None)
        .clock(clock.clone());
    let s = Store::open(dir.path(), cfg.clone()).expect("a v1 store opens in strict mode");
    for i in 0..3000u32 {
        let key = format!("fixture-insert-{i}");
        assert_eq!(
            s.contains(key.as_bytes()).unwrap(),
            i % 10 != 0,
            "{key}: removed iff i % 10 == 0"
        );
    }
    match s.check_and_insert(b"fixture-insert-1", YEAR).unwrap() {
        Outcome::Duplicate { expires_at } => {
            assert_eq!(
                expires_at,
                UNIX_EPOCH + Duration::from_millis(T0) + 5 * YEAR
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !s.contains(b"fixture-expired").unwrap(),
        "expired after 1 s"
    );
    // The v1 build left this claim in progress for 5 years. Its process is
    // gone (this opening holds the lock), so the claim is orphaned: it reads
    // back in progress, and the next claim takes it over at once (before
    // takeover-at-open this answered InProgress until the lease ended).
    assert!(matches!(
        s.peek(b"fixture-claim").unwrap(),
        KeyState::InProgress { orphaned: true, .. }
    ));
    assert!(matches!(
        s.claim(b"fixture-claim", YEAR, Some(8)),
        Err(dedupstore::Error::FingerprintMismatch {
            stored: 7,
            given: 8
        })
    ));
    assert!(matches!(
        s.claim(b"fixture-claim", YEAR, Some(7)).unwrap(),
        Claim::Acquired(_)
    ));
    assert_eq!(
        s.claim(b"fixture-done", YEAR, Some(9)).unwrap(),
        Claim::Completed {
            response: Some(b"receipt".to_vec()),
            expires_at: UNIX_EPOCH + Duration::from_millis(T0) + 5 * YEAR,
        }
    );
    // The old store takes new writes and keeps them across a reopen.
    assert!(s
        .check_and_insert(b"written-by-this-build", YEAR)
        .unwrap()
        .is_inserted());
    s.close().unwrap();
    let s = Store::open(dir.path(), cfg).unwrap();
    assert!(s.contains(b"written-by-this-build").unwrap());
    assert!(s.contains(b"fixture-insert-2999").unwrap());
}

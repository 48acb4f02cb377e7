//! claim -> complete / release with leases, fencing and fingerprints.

use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use dedupstore::sim::{CrashMode, SimFs};
use dedupstore::{
    Claim, Config, Durability, Error, KeyState, ManualClock, Outcome, Store, MAX_RESPONSE_LEN,
};

const T0: u64 = 1_700_000_000_000;
const LEASE: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(86_400);

fn cfg(clock: &ManualClock) -> Config {
    Config::default()
        .segment_size(64 << 10)
        .gc_interval(None)
        .clock(clock.clone())
}

fn acquired(c: Claim) -> dedupstore::ClaimToken {
    match c {
        Claim::Acquired(t) => t,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

#[test]
fn eight_threads_claim_one_key_exactly_one_acquires() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let s = Store::open(dir.path(), cfg(&clock)).unwrap();
    for round in 0..200u32 {
        let key = round.to_le_bytes();
        let answers = Mutex::new(Vec::new());
        std::thread::scope(|sc| {
            for t in 0..8 {
                let (s, answers) = (&s, &answers);
                sc.spawn(move || {
                    let c = s.claim(key, LEASE, Some(round as u64)).unwrap();
                    if let Claim::Acquired(tok) = &c {
                        if t % 2 == 0 {
                            s.complete(tok, Some(b"done"), DAY).unwrap();
                        }
                    }
                    answers.lock().unwrap().push(c);
                });
            }
        });
        let answers = answers.into_inner().unwrap();
        let won = answers
            .iter()
            .filter(|c| matches!(c, Claim::Acquired(_)))
            .count();
        assert_eq!(won, 1, "round {round}: {answers:?}");
        for c in &answers {
            match c {
                Claim::Acquired(_) | Claim::InProgress { .. } => {}
                Claim::Completed { response, .. } => {
                    assert_eq!(response.as_deref(), Some(&b"done"[..]))
                }
            }
        }
    }
}

#[test]
fn a_claim_survives_power_loss_and_the_next_opening_takes_it_over_at_once() {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let s = Store::open_with(fs.clone(), "/db", cfg(&clock)).unwrap();
    let tok = acquired(s.claim(b"order-1", LEASE, None).unwrap());
    assert_eq!(tok.key(), b"order-1");
    // Within the opening that made it, the claim holds.
    assert!(matches!(
        s.claim(b"order-1", LEASE, None).unwrap(),
        Claim::InProgress { .. }
    ));
    let s = {
        let crashed = fs.crash(CrashMode::DropUnsynced);
        drop(s);
        Store::open_with(crashed, "/db", cfg(&clock)).unwrap()
    };
    let lease_end = UNIX_EPOCH + Duration::from_millis(T0) + LEASE;
    // The claim survived (it was durable), orphaned: its process is gone.
    assert_eq!(
        s.peek(b"order-1").unwrap(),
        KeyState::InProgress {
            lease_expires_at: lease_end,
            orphaned: true
        }
    );
    assert!(matches!(
        s.check_and_insert(b"order-1", DAY).unwrap(),
        Outcome::Duplicate { .. }
    ));
    // No waiting for the lease: the next delivery takes over at once.
    let tok2 = acquired(s.claim(b"order-1", LEASE, None).unwrap());
    assert!(matches!(
        s.peek(b"order-1").unwrap(),
        KeyState::InProgress {
            orphaned: false,
            ..
        }
    ));
    // The zombie's token is fenced off, and the new claim holds.
    assert!(matches!(
        s.complete(&tok, Some(b"zombie"), DAY),
        Err(Error::StaleToken { .. })
    ));
    assert!(matches!(s.release(&tok), Err(Error::StaleToken { .. })));
    assert!(matches!(
        s.extend(&tok, LEASE),
        Err(Error::StaleToken { .. })
    ));
    assert!(matches!(
        s.claim(b"order-1", LEASE, None).unwrap(),
        Claim::InProgress { .. }
    ));
    s.complete(&tok2, Some(b"real"), DAY).unwrap();
    match s.claim(b"order-1", LEASE, None).unwrap() {
        Claim::Completed { response, .. } => assert_eq!(response.as_deref(), Some(&b"real"[..])),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_token_from_an_earlier_opening_is_stale_even_if_its_id_comes_back() {
    // After a power loss, LSNs (token ids) are reused: the lost claim's id
    // may be handed out again. The old token must not own the new claim.
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let s = Store::open_with(fs.clone(), "/db", cfg(&clock).durability(Durability::None)).unwrap();
    let old = acquired(s.claim(b"k", LEASE, None).unwrap());
    let s = {
        let crashed = fs.crash(CrashMode::DropUnsynced);
        drop(s);
        Store::open_with(crashed, "/db", cfg(&clock).durability(Durability::None)).unwrap()
    };
    assert_eq!(
        s.peek(b"k").unwrap(),
        KeyState::Absent,
        "the claim was never synced"
    );
    let new = acquired(s.claim(b"k", LEASE, None).unwrap());
    assert_eq!(new.id(), old.id(), "same position in the log, same id");
    assert_ne!(new, old);
    assert!(matches!(
        s.complete(&old, None, DAY),
        Err(Error::StaleToken { .. })
    ));
    s.complete(&new, Some(b"r"), DAY).unwrap();
    // And a token of another store owns nothing here either.
    let dir = tempfile::tempdir().unwrap();
    let other = Store::open(dir.path(), cfg(&clock)).unwrap();
    let foreign = acquired(other.claim(b"x", LEASE, None).unwrap());
    let mine = acquired(s.claim(b"x", LEASE, None).unwrap());
    assert!(matches!(
        s.complete(&foreign, None, DAY),
        Err(Error::StaleToken { .. })
    ));
    s.complete(&mine, None, DAY).unwrap();
}

#[test]
fn extend_moves_the_lease_and_is_fenced_like_complete() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let s = Store::open(dir.path(), cfg(&clock)).unwrap();
    let tok = acquired(s.claim(b"k", LEASE, Some(5)).unwrap());
    clock.advance(LEASE - Duration::from_secs(1));
    let until = s.extend(&tok, LEASE).unwrap();
    let expect = UNIX_EPOCH + Duration::from_millis(T0) + 2 * LEASE - Duration::from_secs(1);
    assert_eq!(until, expect);
    assert_eq!(
        s.claim(b"k", LEASE, Some(5)).unwrap(),
        Claim::InProgress {
            lease_expires_at: expect
        }
    );
    // The fingerprint stays with the claim.
    assert!(matches!(
        s.claim(b"k", LEASE, Some(6)),
        Err(Error::FingerprintMismatch { .. })
    ));
    // Past the original lease, the token still owns the key.
    clock.advance(Duration::from_secs(2));
    s.complete(&tok, Some(b"ok"), DAY).unwrap();
    assert!(matches!(
        s.extend(&tok, LEASE),
        Err(Error::StaleToken { .. })
    ));

    // An expired lease cannot be extended, even if nobody took over.
    let tok = acquired(s.claim(b"j", LEASE, None).unwrap());
    clock.advance(LEASE);
    assert!(matches!(
        s.extend(&tok, LEASE),
        Err(Error::StaleToken { .. })
    ));
    assert_eq!(s.peek(b"j").unwrap(), KeyState::Absent);
    assert!(matches!(
        s.extend(&tok, Duration::ZERO),
        Err(Error::InvalidTtl { .. })
    ));
}

#[test]
fn release_makes_the_key_claimable_again_and_tokens_are_single_use() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let s = Store::open(dir.path(), cfg(&clock)).unwrap();
    let tok = acquired(s.claim(b"k", LEASE, None).unwrap());
    s.release(&tok).unwrap();
    assert!(!s.contains(b"k").unwrap());
    assert!(matches!(s.release(&tok), Err(Error::StaleToken { .. })));
    assert!(matches!(
        s.complete(&tok, None, DAY),
        Err(Error::StaleToken { .. })
    ));
    let tok2 = acquired(s.claim(b"k", LEASE, None).unwrap());
    s.complete(&tok2, None, DAY).unwrap();
    assert!(
        matches!(s.complete(&tok2, None, DAY), Err(Error::StaleToken { .. })),
        "completed once only"
    );
    assert_eq!(
        s.claim(b"k", LEASE, None).unwrap(),
        Claim::Completed {
            response: None,
            expires_at: UNIX_EPOCH + Duration::from_millis(T0) + DAY
        },
        "complete(None) reads back as no response"
    );
    drop(s);
    // The release survives a reopen too.
    let s = Store::open(dir.path(), cfg(&clock)).unwrap();
    assert!(s.contains(b"k").unwrap());
    // A plain check_and_insert record counts as completed without a response.
    let _ = s.check_and_insert(b"plain", DAY).unwrap();
    assert!(matches!(
        s.claim(b"plain", LEASE, None).unwrap(),
        Claim::Completed { response: None, .. }
    ));
}

#[test]
fn a_different_fingerprint_is_a_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let s = Store::open(dir.path(), cfg(&clock)).unwrap();
    let tok = acquired(s.claim(b"pay-9", LEASE, Some(0xAAAA)).unwrap());
    assert!(matches!(
        s.claim(b"pay-9", LEASE, Some(0xBBBB)),
        Err(Error::FingerprintMismatch {
            stored: 0xAAAA,
            given: 0xBBBB
        })
    ));
    assert!(matches!(
        s.claim(b"pay-9", LEASE, Some(0xAAAA)).unwrap(),
        Claim::InProgress { .. }
    ));
    assert!(
        matches!(
            s.claim(b"pay-9", LEASE, None).unwrap(),
            Claim::InProgress { .. }
        ),
        "None skips the check"
    );
    s.complete(&tok, Some(b"ok"), DAY).unwrap();
    assert!(matches!(
        s.claim(b"pay-9", LEASE, Some(0xBBBB)),
        Err(Error::FingerprintMismatch { .. })
    ));
    assert!(matches!(
        s.claim(b"pay-9", LEASE, Some(0xAAAA)).unwrap(),
        Claim::Completed { .. }
    ));
}

#[test]
fn the_response_survives_reopen_power_loss_and_compaction_byte_exact() {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let s = Store::open_with(
        fs.clone(),
        "/db",
        cfg(&clock).durability(Durability::Immediate),
    )
    .unwrap();
    let mut rng = fastrand::Rng::with_seed(1);
    let responses: Vec<Vec<u8>> = (0..40)
        .map(|i| {
            (0..rng.usize(0..=MAX_RESPONSE_LEN.min(4000 * i + 1)))
                .map(|_| rng.u8(..))
                .collect()
        })
        .collect();
    for (i, r) in responses.iter().enumerate() {
        let tok = acquired(
            s.claim(format!("k{i}").as_bytes(), LEASE, Some(i as u64))
                .unwrap(),
        );
        s.complete(&tok, Some(r), DAY).unwrap();
        // Short-lived filler so that compaction has something to drop.
        for j in 0..50 {
            let _ = s
                .check_and_insert(format!("f{i}-{j}").as_bytes(), Duration::from_secs(1))
                .unwrap();
        }
    }
    let too_big = vec![0u8; MAX_RESPONSE_LEN + 1];
    let tok = acquired(s.claim(b"big", LEASE, None).unwrap());
    assert!(matches!(
        s.complete(&tok, Some(&too_big), DAY),
        Err(Error::ResponseTooLarge { .. })
    ));
    clock.advance(Duration::from_secs(5));
    let report = s.compact().unwrap();
    assert!(report.segments_compacted > 0, "{report:?}");
    let crashed = fs.crash(CrashMode::DropUnsynced);
    drop(s);
    let s = Store::open_with(crashed, "/db", cfg(&clock)).unwrap();
    for (i, r) in responses.iter().enumerate() {
        match s
            .claim(format!("k{i}").as_bytes(), LEASE, Some(i as u64))
            .unwrap()
        {
            Claim::Completed { response, .. } => {
                assert_eq!(response.as_deref(), Some(&r[..]), "response {i}")
            }
            other => panic!("key {i}: {other:?}"),
        }
    }
}

/// The README's table "Using check_and_insert and claim on the same key",
/// row by row.
#[test]
fn check_and_insert_and_claim_on_one_key_follow_the_readme_table() {
    let clock = ManualClock::new(T0);
    let s = Store::open_with(SimFs::new(), "/db", cfg(&clock)).unwrap();
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
    // Inserted by check_and_insert: claim sees it completed, no response.
    assert!(s.check_and_insert(b"a", DAY).unwrap().is_inserted());
    assert_eq!(
        s.claim(b"a", LEASE, None).unwrap(),
        Claim::Completed {
            response: None,
            expires_at: at(T0) + DAY
        }
    );
    // Claimed, lease running: check_and_insert says Duplicate until the lease end.
    let tok = acquired(s.claim(b"b", LEASE, None).unwrap());
    assert_eq!(
        s.check_and_insert(b"b", DAY).unwrap(),
        Outcome::Duplicate {
            expires_at: at(T0) + LEASE
        }
    );
    // Completed: Duplicate with the completion's expiry.
    s.complete(&tok, Some(b"r"), DAY).unwrap();
    assert_eq!(
        s.check_and_insert(b"b", DAY).unwrap(),
        Outcome::Duplicate {
            expires_at: at(T0) + DAY
        }
    );
    // Claimed, lease ended: check_and_insert inserts; the old token is stale.
    let tok = acquired(s.claim(b"c", LEASE, None).unwrap());
    clock.advance(LEASE);
    assert!(s.check_and_insert(b"c", DAY).unwrap().is_inserted());
    assert!(matches!(
        s.complete(&tok, None, DAY),
        Err(Error::StaleToken { .. })
    ));
    // remove forgets a claimed key and makes its token stale.
    let tok = acquired(s.claim(b"d", LEASE, None).unwrap());
    assert!(s.remove(b"d").unwrap());
    assert!(matches!(s.release(&tok), Err(Error::StaleToken { .. })));
    assert!(matches!(
        s.claim(b"d", LEASE, None).unwrap(),
        Claim::Acquired(_)
    ));
}

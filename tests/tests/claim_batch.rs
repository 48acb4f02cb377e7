//! Batch claim / complete / release: per-item answers in order, one sync
//! per call, the single calls' fencing and fingerprint rules, and bad input
//! refused whole.

use std::time::{Duration, UNIX_EPOCH};

use dedupstore::sim::{CrashMode, SimFs};
use dedupstore::{
    fingerprint, Claim, ClaimToken, Error, KeyState, ManualClock, Store, MAX_KEY_LEN,
    MAX_RESPONSE_LEN,
};

const T0: u64 = 1_700_000_000_000;
const LEASE: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(86_400);

use dedupstore_tests::support::immediate as cfg;

fn syncs<F: dedupstore::vfs::Vfs>(s: &Store<F>) -> u64 {
    s.stats().syncs
}

use dedupstore_tests::support::acquired as token;

#[test]
fn a_batch_answers_in_order_with_one_sync_per_call() {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let s = Store::open_with(fs.clone(), "/db", cfg(&clock)).unwrap();
    // Key 3 is done already, key 4 is claimed by someone else.
    let t3 = token(&Ok(s.claim(b"m-3", LEASE, None).unwrap()));
    s.complete(&t3, Some(b"r3"), DAY).unwrap();
    let _held = token(&Ok(s
        .claim(b"m-4", LEASE, Some(fingerprint(b"p4")))
        .unwrap()));

    let items: Vec<(String, Option<u64>)> = (0..20)
        .map(|i| {
            (
                format!("m-{i}"),
                Some(fingerprint(format!("p{i}").as_bytes())),
            )
        })
        .chain([("m-0".to_string(), Some(fingerprint(b"p0")))])
        .collect();
    let before = syncs(&s);
    let out = s.claim_batch(&items, LEASE).unwrap();
    assert_eq!(syncs(&s) - before, 1, "one sync for the whole batch");
    assert_eq!(out.len(), 21);
    let lease_end = UNIX_EPOCH + Duration::from_millis(T0) + LEASE;
    for (i, c) in out.iter().enumerate() {
        match i {
            3 => assert_eq!(
                c.as_ref().unwrap(),
                &Claim::Completed {
                    response: Some(b"r3".to_vec()),
                    expires_at: UNIX_EPOCH + Duration::from_millis(T0) + DAY
                }
            ),
            4 => assert_eq!(
                c.as_ref().unwrap(),
                &Claim::InProgress {
                    lease_expires_at: lease_end
                }
            ),
            // The repeated key: the first occurrence owns it.
            20 => assert_eq!(
                c.as_ref().unwrap(),
                &Claim::InProgress {
                    lease_expires_at: lease_end
                }
            ),
            _ => assert_eq!(token(c).key(), items[i].0.as_bytes()),
        }
    }
    let tokens: Vec<ClaimToken> = out
        .iter()
        .filter_map(|c| match c {
            Ok(Claim::Acquired(t)) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(tokens.len(), 18);
    // Complete 12 of them, release the other 6: one sync each.
    let resp: Vec<Vec<u8>> = tokens.iter().map(|t| [t.key(), b"!"].concat()).collect();
    let done: Vec<(&ClaimToken, Option<&[u8]>)> = tokens[..12]
        .iter()
        .zip(&resp)
        .map(|(t, r)| (t, Some(&r[..])))
        .collect();
    let before = syncs(&s);
    let answers = s.complete_batch(&done, DAY).unwrap();
    assert_eq!(syncs(&s) - before, 1);
    assert!(answers.iter().all(|a| a.is_ok()), "{answers:?}");
    let gone: Vec<&ClaimToken> = tokens[12..].iter().collect();
    let before = syncs(&s);
    let answers = s.release_batch(&gone).unwrap();
    assert_eq!(syncs(&s) - before, 1);
    assert!(answers.iter().all(|a| a.is_ok()), "{answers:?}");

    // All of it is durable: a power loss now keeps every answer.
    let s = {
        let img = fs.crash(CrashMode::DropUnsynced);
        drop(s);
        Store::open_with(img, "/db", cfg(&clock)).unwrap()
    };
    for (t, r) in tokens[..12].iter().zip(&resp) {
        assert_eq!(
            s.peek(t.key()).unwrap(),
            KeyState::Completed {
                response: Some(r.clone()),
                expires_at: UNIX_EPOCH + Duration::from_millis(T0) + DAY
            }
        );
    }
    for t in &tokens[12..] {
        assert_eq!(s.peek(t.key()).unwrap(), KeyState::Absent);
    }
}

#[test]
fn empty_batches_answer_empty_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let s = Store::open(dir.path(), cfg(&clock)).unwrap();
    let before = s.stats();
    let none: [(&[u8], Option<u64>); 0] = [];
    assert!(s.claim_batch(&none, LEASE).unwrap().is_empty());
    assert!(s.complete_batch(&[], DAY).unwrap().is_empty());
    assert!(s.release_batch(&[]).unwrap().is_empty());
    let after = s.stats();
    assert_eq!(after.syncs, before.syncs);
    assert_eq!(after.log_bytes, before.log_bytes);
}

#[test]
fn bad_input_fails_the_whole_batch_and_claims_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let s = Store::open(dir.path(), cfg(&clock)).unwrap();
    let long = vec![b'x'; MAX_KEY_LEN + 1];
    let bad: Vec<(&[u8], Option<u64>)> = vec![(b"a", None), (&long, None), (b"b", None)];
    assert!(matches!(
        s.claim_batch(&bad, LEASE),
        Err(Error::InvalidKey { .. })
    ));
    let empty_key: Vec<(&[u8], Option<u64>)> = vec![(b"a", None), (b"", None)];
    assert!(matches!(
        s.claim_batch(&empty_key, LEASE),
        Err(Error::InvalidKey { len: 0 })
    ));
    let ok: Vec<(&[u8], Option<u64>)> = vec![(b"a", None), (b"b", None)];
    assert!(matches!(
        s.claim_batch(&ok, Duration::ZERO),
        Err(Error::InvalidTtl { .. })
    ));
    // Records must fit in half a 64 KiB segment.
    let keys: Vec<(Vec<u8>, Option<u64>)> =
        (0..40u32).map(|i| (vec![i as u8; 1000], None)).collect();
    assert!(matches!(
        s.claim_batch(&keys, LEASE),
        Err(Error::BatchTooLarge { .. })
    ));
    for k in [&b"a"[..], b"b", &[0u8; 1000]] {
        assert_eq!(s.peek(k).unwrap(), KeyState::Absent, "nothing claimed");
    }

    // A too-large response fails the whole complete batch: the tokens
    // still own their keys.
    let out = s.claim_batch(&ok, LEASE).unwrap();
    let (ta, tb) = (token(&out[0]), token(&out[1]));
    let huge = vec![0u8; MAX_RESPONSE_LEN + 1];
    assert!(matches!(
        s.complete_batch(&[(&ta, Some(b"fine")), (&tb, Some(&huge))], DAY),
        Err(Error::ResponseTooLarge { .. })
    ));
    assert!(matches!(s.peek(b"a").unwrap(), KeyState::InProgress { .. }));
    s.complete_batch(&[(&ta, Some(b"A")), (&tb, None)], DAY)
        .unwrap()
        .into_iter()
        .for_each(|a| a.unwrap());
}

#[test]
fn stale_repeated_and_foreign_tokens_are_per_item_answers() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let s = Store::open(dir.path(), cfg(&clock)).unwrap();
    let short: Vec<(&[u8], Option<u64>)> = vec![(b"short", None)];
    let t_short = token(&s.claim_batch(&short, Duration::from_secs(1)).unwrap()[0]);
    let out = s.claim_batch(&[(b"a", None), (b"b", None)], LEASE).unwrap();
    let (ta, tb) = (token(&out[0]), token(&out[1]));
    clock.advance(Duration::from_secs(2));
    // The short lease ended and someone else took the key over.
    let t_new = token(&Ok(s.claim(b"short", LEASE, None).unwrap()));
    let dir2 = tempfile::tempdir().unwrap();
    let other = Store::open(dir2.path(), cfg(&clock)).unwrap();
    let foreign = token(&Ok(other.claim(b"a", LEASE, None).unwrap()));
    let answers = s
        .complete_batch(
            &[
                (&ta, Some(b"1")),
                (&t_short, Some(b"zombie")),
                (&foreign, Some(b"foreign")),
                (&tb, None),
                (&ta, Some(b"again")),
            ],
            DAY,
        )
        .unwrap();
    assert!(answers[0].is_ok());
    assert!(matches!(answers[1], Err(Error::StaleToken { .. })));
    assert!(matches!(answers[2], Err(Error::StaleToken { .. })));
    assert!(answers[3].is_ok());
    assert!(
        matches!(answers[4], Err(Error::StaleToken { .. })),
        "a token repeated in a batch is stale after its first completion"
    );
    match s.peek(b"a").unwrap() {
        KeyState::Completed { response, .. } => assert_eq!(response.as_deref(), Some(&b"1"[..])),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.peek(b"short").unwrap(),
        KeyState::InProgress { .. }
    ));
    let r = s.release_batch(&[&t_new, &t_new]).unwrap();
    assert!(r[0].is_ok());
    assert!(matches!(r[1], Err(Error::StaleToken { .. })));
}

#[test]
fn a_fingerprint_mismatch_is_that_items_answer_and_the_rest_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let s = Store::open(dir.path(), cfg(&clock)).unwrap();
    let first = s
        .claim_batch(&[(b"x", Some(fingerprint(b"one")))], LEASE)
        .unwrap();
    let tx = token(&first[0]);
    s.complete(&tx, Some(b"done"), DAY).unwrap();
    let out = s
        .claim_batch(
            &[
                (&b"y"[..], Some(fingerprint(b"why"))),
                (b"x", Some(fingerprint(b"two"))),
                (b"y", Some(fingerprint(b"not why"))),
                (b"x", Some(fingerprint(b"one"))),
            ],
            LEASE,
        )
        .unwrap();
    token(&out[0]);
    assert!(matches!(out[1], Err(Error::FingerprintMismatch { .. })));
    assert!(
        matches!(out[2], Err(Error::FingerprintMismatch { .. })),
        "the first occurrence's fingerprint holds within the batch"
    );
    assert!(matches!(out[3], Ok(Claim::Completed { .. })));
}

#[test]
fn batch_claims_from_an_earlier_opening_are_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let keys: Vec<(String, Option<u64>)> = (0..10).map(|i| (format!("k{i}"), None)).collect();
    let old: Vec<ClaimToken> = {
        let s = Store::open(dir.path(), cfg(&clock)).unwrap();
        let out = s.claim_batch(&keys, LEASE).unwrap();
        out.iter().map(token).collect()
        // Closed without completing: as if the consumer died.
    };
    let s = Store::open(dir.path(), cfg(&clock)).unwrap();
    let out = s.claim_batch(&keys, LEASE).unwrap();
    let new: Vec<ClaimToken> = out.iter().map(token).collect();
    let old_refs: Vec<(&ClaimToken, Option<&[u8]>)> = old.iter().map(|t| (t, None)).collect();
    for a in s.complete_batch(&old_refs, DAY).unwrap() {
        assert!(matches!(a, Err(Error::StaleToken { .. })));
    }
    let new_refs: Vec<(&ClaimToken, Option<&[u8]>)> = new.iter().map(|t| (t, None)).collect();
    for a in s.complete_batch(&new_refs, DAY).unwrap() {
        a.unwrap();
    }
}

#[test]
fn counters_count_every_answer_without_walking_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let keys: Vec<(String, Option<u64>)> = (0..6).map(|i| (format!("c{i}"), None)).collect();
    {
        let s = Store::open(dir.path(), cfg(&clock)).unwrap();
        let _orphans = s.claim_batch(&keys[..2], LEASE).unwrap();
    }
    let s = Store::open(dir.path(), cfg(&clock)).unwrap();
    assert_eq!(s.counters(), dedupstore::CounterSnapshot::default());
    assert!(s.check_and_insert(b"i1", DAY).unwrap().is_inserted());
    let out = s
        .check_and_insert_batch(&[&b"i1"[..], b"i2", b"i2"], DAY)
        .unwrap();
    assert_eq!(out.iter().filter(|o| o.is_inserted()).count(), 1);
    // 2 takeovers, 4 fresh, then 6 in progress.
    let toks: Vec<ClaimToken> = s
        .claim_batch(&keys, LEASE)
        .unwrap()
        .iter()
        .map(token)
        .collect();
    assert!(s
        .claim_batch(&keys, LEASE)
        .unwrap()
        .iter()
        .all(|c| matches!(c, Ok(Claim::InProgress { .. }))));
    let done: Vec<(&ClaimToken, Option<&[u8]>)> = toks[..4].iter().map(|t| (t, None)).collect();
    s.complete_batch(&done, DAY).unwrap();
    s.release(&toks[4]).unwrap();
    s.extend(&toks[5], LEASE).unwrap();
    assert!(s.complete(&toks[0], None, DAY).is_err());
    assert!(s.release_batch(&[&toks[1], &toks[5]]).unwrap()[0].is_err());
    let c = s.counters();
    assert_eq!(
        (c.inserted, c.duplicate),
        (2, 2),
        "i1, i2 new; i1 again, i2 repeated"
    );
    assert_eq!(
        (c.claims_acquired, c.takeovers, c.claims_in_progress),
        (6, 2, 6)
    );
    assert_eq!(
        (c.claims_completed, c.claims_released, c.stale_tokens),
        (4, 2, 2)
    );
    // One sync per call that wrote (insert, insert batch, claim batch,
    // complete batch, release, extend, release batch); none for answers
    // from records already durable.
    assert_eq!(c.syncs, 7, "{c:?}");
    assert!(c.sync_max <= c.sync_time && c.sync_max > Duration::ZERO);
    assert_eq!(c.syncs, s.stats().syncs);
}

//! Replication end to end: ship, write more, GC, ship, restore, open, and
//! check answers; on the local file system, in memory, through an object
//! store failing at every request in turn, and on a real S3-compatible
//! server (moto) on loopback.

use std::collections::BTreeSet;
use std::path::Path as FsPath;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dedupstore::{Config, ManualClock, Store};
use dedupstore_replicate::{restore, Error, ReplicateOptions, Replicator};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
mod moto;

use moto::Moto;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

const T0: u64 = 1_800_000_000_000;
const HOUR: Duration = Duration::from_secs(3600);

fn config(clock: &ManualClock) -> Config {
    Config::default()
        .segment_size(64 << 10)
        .gc_interval(None)
        .clock(clock.clone())
}

fn id(kind: &str, i: u32) -> Vec<u8> {
    format!("{kind}-{i:08}").into_bytes()
}

fn insert_all(store: &Store, kind: &str, n: std::ops::Range<u32>, ttl: Duration) {
    let keys: Vec<Vec<u8>> = n.map(|i| id(kind, i)).collect();
    for batch in keys.chunks(500) {
        let out = store.check_and_insert_batch(batch, ttl).expect("insert");
        assert!(out.iter().all(|o| o.is_inserted()), "an ID was new");
    }
}

/// What a restored store must answer: `present` present, `absent` absent.
struct Expect {
    present: Vec<Vec<u8>>,
    absent: Vec<Vec<u8>>,
}

fn check_restored(dir: &FsPath, clock: &ManualClock, want: &Expect) {
    let store = Store::open(dir, config(clock)).expect("the restored store opens");
    let got = store.contains_batch(&want.present).expect("contains");
    let missing = got.iter().filter(|&&p| !p).count();
    assert_eq!(
        missing, 0,
        "acknowledged and shipped IDs missing after restore"
    );
    let got = store.contains_batch(&want.absent).expect("contains");
    let extra = got.iter().filter(|&&p| p).count();
    assert_eq!(extra, 0, "IDs present after restore that must be absent");
    store.close().expect("close");
}

/// Every object under `prefix`.
fn objects(target: &Arc<dyn ObjectStore>, prefix: &Path) -> BTreeSet<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        target
            .list(Some(prefix))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .expect("list")
    })
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// The scenario of the issue, on any backend: ship, write more, remove,
/// expire and compact (GC deletes segments), ship, restore, open, check.
fn ship_gc_ship_restore(target: Arc<dyn ObjectStore>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = Arc::new(Store::open(tmp.path().join("src"), config(&clock)).expect("open"));
    let prefix = Path::from("replicas/p7");
    let repl = Replicator::new(
        store.clone(),
        target.clone(),
        prefix.clone(),
        ReplicateOptions::default().chunk_bytes(16 << 10),
    )
    .expect("replicator");

    // 1. Short-lived and long-lived IDs, over several segments.
    insert_all(&store, "short", 0..3000, HOUR);
    insert_all(&store, "long", 0..3000, 240 * HOUR);
    let r1 = repl.ship().expect("ship 1");
    assert!(r1.manifest_written && r1.uploaded_chunks > 0);
    assert!(r1.segments > 1, "the test needs several segments: {r1:?}");
    // Every record byte of the store is up, once.
    let chunks_1 = objects(&target, &prefix.clone().join("chunks"));
    assert_eq!(chunks_1.len() as u64, r1.uploaded_chunks);

    // A round with nothing new sends nothing.
    let idle = repl.ship().expect("idle ship");
    assert_eq!(
        (idle.requests, idle.uploaded_bytes, idle.manifest_written),
        (0, 0, false),
        "an idle round uploads nothing"
    );

    // 2. More IDs, some removals; the short ones expire; compaction
    //    deletes and rewrites segments.
    insert_all(&store, "late", 0..2000, 240 * HOUR);
    for i in 0..500 {
        assert!(store.remove(id("long", i)).expect("remove"));
    }
    clock.advance(2 * HOUR);
    let gc = store.compact().expect("compact");
    assert!(
        gc.segments_deleted + gc.segments_compacted > 0,
        "GC deleted segments: {gc:?}"
    );
    let r2 = repl.ship().expect("ship 2");
    assert!(r2.manifest_written);
    assert!(
        r2.deleted_objects > 0,
        "chunks of deleted segments are deleted: {r2:?}"
    );
    // Nothing leaks: the objects up are exactly the manifest's.
    let chunks_2 = objects(&target, &prefix.clone().join("chunks"));
    let idle = repl.ship().expect("idle ship");
    assert!(!idle.manifest_written);
    assert_eq!(objects(&target, &prefix.clone().join("chunks")), chunks_2);

    // 3. Restore into a new directory and check every answer.
    let dst = tmp.path().join("restored");
    let rep = restore(target.clone(), &prefix, &dst).expect("restore");
    assert_eq!(rep.bytes, r2.replica_bytes);
    assert_eq!(rep.chunks as usize, chunks_2.len());
    let want = Expect {
        present: (500..3000)
            .map(|i| id("long", i))
            .chain((0..2000).map(|i| id("late", i)))
            .collect(),
        absent: (0..500)
            .map(|i| id("long", i))
            .chain((0..3000).map(|i| id("short", i)))
            .chain((0..3000).map(|i| id("never", i)))
            .collect(),
    };
    check_restored(&dst, &clock, &want);

    // 4. A replicator restarted on the prefix keeps what is up.
    drop(repl);
    let repl = Replicator::new(
        store.clone(),
        target.clone(),
        prefix.clone(),
        ReplicateOptions::default(),
    )
    .expect("replicator");
    let again = repl.ship().expect("ship after restart");
    assert_eq!(
        again.uploaded_chunks, 0,
        "a restarted replicator re-uploads nothing: {again:?}"
    );

    // The new owner of the partition replicates its restored store to the
    // same prefix: the chunks up are its own bytes, nothing is uploaded
    // again, and its new IDs follow.
    drop(repl);
    let moved = Arc::new(Store::open(&dst, config(&clock)).expect("open restored"));
    let repl = Replicator::new(
        moved.clone(),
        target.clone(),
        prefix.clone(),
        ReplicateOptions::default(),
    )
    .expect("replicator of the new owner");
    let first = repl.ship().expect("ship of the new owner");
    assert_eq!(first.uploaded_chunks, 0, "nothing re-uploaded: {first:?}");
    insert_all(&moved, "moved", 0..100, 240 * HOUR);
    let next = repl.ship().expect("ship of the new owner");
    assert_eq!(next.uploaded_chunks, 1, "only the new tail: {next:?}");
    drop(repl);
    drop(moved);

    // 5. Restoring into a directory that is not empty is refused, untouched.
    let err = restore(target.clone(), &prefix, &dst).expect_err("not empty");
    assert!(matches!(err, Error::Target { .. }), "{err}");
    check_restored(&dst, &clock, &want);
}

#[test]
fn local_file_system_ship_gc_ship_restore() {
    let root = tempfile::tempdir().expect("tempdir");
    let fs = LocalFileSystem::new_with_prefix(root.path()).expect("local fs");
    ship_gc_ship_restore(Arc::new(fs));
}

#[test]
fn in_memory_ship_gc_ship_restore() {
    ship_gc_ship_restore(Arc::new(InMemory::new()));
}

/// A shipped store, and the IDs it holds.
fn shipped_store(tmp: &FsPath, target: Arc<dyn ObjectStore>) -> (Arc<Store>, ManualClock) {
    let clock = ManualClock::new(T0);
    let store = Arc::new(Store::open(tmp.join("src"), config(&clock)).expect("open"));
    insert_all(&store, "a", 0..3000, 240 * HOUR);
    Replicator::new(
        store.clone(),
        target,
        Path::from("r"),
        ReplicateOptions::default(),
    )
    .expect("replicator")
    .ship()
    .expect("ship");
    (store, clock)
}

/// Restores `target` into a fresh directory under `tmp`; returns it.
fn restore_new(
    tmp: &FsPath,
    target: Arc<dyn ObjectStore>,
    name: &str,
) -> Result<std::path::PathBuf, Error> {
    let dst = tmp.join(name);
    restore(target, &Path::from("r"), &dst).map(|_| dst)
}

/// Restores the replica under prefix `r` of `target` into `tmp/name` and
/// checks it with [`check_restored`].
fn restore_and_check(
    tmp: &FsPath,
    target: Arc<dyn ObjectStore>,
    name: &str,
    clock: &ManualClock,
    present: Vec<Vec<u8>>,
    absent: Vec<Vec<u8>>,
) {
    let dst = restore_new(tmp, target, name).expect("restore");
    check_restored(&dst, clock, &Expect { present, absent });
}

/// Nothing but `keep` is left in `dir` (no temporary restore directory).
fn assert_only(dir: &FsPath, keep: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut keep: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
    keep.sort();
    assert_eq!(names, keep, "a failed restore left files behind");
}

#[test]
fn a_damaged_or_missing_object_fails_the_restore_and_leaves_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let target: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let (_store, _) = shipped_store(tmp.path(), target.clone());
    let chunks: Vec<String> = objects(&target, &Path::from("r/chunks"))
        .into_iter()
        .collect();
    let victim = Path::from(chunks[chunks.len() / 2].as_str());
    let good = block_on(async {
        target
            .get(&victim)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes")
    });

    // One flipped byte.
    let mut bad = good.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    block_on(target.put(&victim, PutPayload::from(bad))).expect("put");
    let err = restore_new(tmp.path(), target.clone(), "dst").expect_err("damaged");
    assert!(matches!(err, Error::BadObject { .. }), "{err}");
    assert!(
        err.to_string().contains(victim.as_ref()),
        "the error names the object: {err}"
    );
    assert_only(tmp.path(), &["src"]);

    // Cut short.
    block_on(target.put(&victim, PutPayload::from(good.slice(..good.len() - 1)))).expect("put");
    let err = restore_new(tmp.path(), target.clone(), "dst").expect_err("short");
    assert!(matches!(err, Error::BadObject { .. }), "{err}");
    assert_only(tmp.path(), &["src"]);

    // Gone.
    block_on(target.delete(&victim)).expect("delete");
    let err = restore_new(tmp.path(), target.clone(), "dst").expect_err("missing");
    assert!(matches!(err, Error::MissingObject { .. }), "{err}");
    assert_only(tmp.path(), &["src"]);

    // Put back: the restore works.
    block_on(target.put(&victim, PutPayload::from(good))).expect("put");
    restore_new(tmp.path(), target.clone(), "dst").expect("restore");
}

#[test]
fn a_newer_damaged_or_absent_manifest_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let target: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let err = restore_new(tmp.path(), target.clone(), "dst").expect_err("nothing there");
    assert!(matches!(err, Error::NoManifest { .. }), "{err}");
    let (store, _) = shipped_store(tmp.path(), target.clone());
    let path = Path::from("r/manifest");
    let good = block_on(async {
        target
            .get(&path)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes")
    });
    let text = String::from_utf8(good.to_vec()).expect("text");

    let newer = text.replacen("dedupstore-replica 1\n", "dedupstore-replica 2\n", 1);
    block_on(target.put(&path, PutPayload::from(newer.into_bytes()))).expect("put");
    let err = restore_new(tmp.path(), target.clone(), "dst").expect_err("newer");
    assert!(
        matches!(err, Error::UnsupportedVersion { found: 2, .. }),
        "{err}"
    );
    // A replicator does not overwrite a newer manifest either.
    let err = Replicator::new(
        store.clone(),
        target.clone(),
        Path::from("r"),
        ReplicateOptions::default(),
    )
    .err()
    .expect("newer manifest refused");
    assert!(matches!(err, Error::UnsupportedVersion { .. }), "{err}");

    let damaged = text.replacen("segment", "segmenT", 1);
    block_on(target.put(&path, PutPayload::from(damaged.into_bytes()))).expect("put");
    let err = restore_new(tmp.path(), target.clone(), "dst").expect_err("damaged");
    assert!(matches!(err, Error::BadManifest { .. }), "{err}");
    assert_only(tmp.path(), &["src"]);
}

/// An object store that fails the `fail_at`-th request (counting from 1),
/// and every one after it unless `only_one`; counts requests.
#[derive(Debug)]
struct Failing {
    inner: Arc<dyn ObjectStore>,
    requests: AtomicU64,
    fail_at: AtomicU64,
    only_one: bool,
}

impl std::fmt::Display for Failing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Failing({})", self.inner)
    }
}

impl Failing {
    fn new(inner: Arc<dyn ObjectStore>, only_one: bool) -> Self {
        Failing {
            inner,
            requests: AtomicU64::new(0),
            fail_at: AtomicU64::new(u64::MAX),
            only_one,
        }
    }

    /// Counts a request; an error if it is to fail.
    fn tick(&self, what: &str) -> object_store::Result<()> {
        let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let at = self.fail_at.load(Ordering::SeqCst);
        if n == at || (n > at && !self.only_one) {
            Err(object_store::Error::Generic {
                store: "Failing",
                source: format!("injected failure of request {n} ({what})").into(),
            })
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for Failing {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.tick("put")?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.tick("multipart")?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.tick("get")?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        match self.tick("delete") {
            Ok(()) => self.inner.delete_stream(locations),
            Err(_) => locations
                .map(|_| {
                    Err(object_store::Error::Generic {
                        store: "Failing",
                        source: "injected delete failure".into(),
                    })
                })
                .boxed(),
        }
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match self.tick("list") {
            Ok(()) => self.inner.list(prefix),
            Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.tick("list")?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.tick("copy")?;
        self.inner.copy_opts(from, to, options).await
    }
}

/// For every k: a round (new replicator included) whose k-th request and
/// all later ones fail leaves the last good manifest restorable, with every
/// ID shipped by the last good round; the next round without failures
/// ships everything.
#[test]
fn a_round_failing_from_any_request_on_leaves_the_last_manifest_restorable() {
    fail_each_request(false);
}

/// The same with only the k-th request failing (the object store recovers
/// at once: later requests of the round succeed).
#[test]
fn a_round_with_any_one_request_failing_leaves_the_last_manifest_restorable() {
    fail_each_request(true);
}

fn fail_each_request(only_one: bool) {
    let mut k = 1;
    loop {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let failing = Arc::new(Failing::new(base.clone(), only_one));
        let target: Arc<dyn ObjectStore> = failing.clone();
        let clock = ManualClock::new(T0);
        let store = Arc::new(Store::open(tmp.path().join("src"), config(&clock)).expect("open"));
        insert_all(&store, "a", 0..2000, HOUR);
        insert_all(&store, "b", 0..2000, 240 * HOUR);
        Replicator::new(
            store.clone(),
            target.clone(),
            Path::from("r"),
            ReplicateOptions::default().chunk_bytes(8 << 10),
        )
        .expect("replicator")
        .ship()
        .expect("good round");
        // Changes: new IDs, removals, expiry and compaction (deletes).
        insert_all(&store, "c", 0..2000, 240 * HOUR);
        for i in 0..300 {
            assert!(store.remove(id("b", i)).expect("remove"));
        }
        clock.advance(2 * HOUR);
        store.compact().expect("compact");

        failing.fail_at.store(
            failing.requests.load(Ordering::SeqCst) + k,
            Ordering::SeqCst,
        );
        let round = Replicator::new(
            store.clone(),
            target.clone(),
            Path::from("r"),
            ReplicateOptions::default().chunk_bytes(8 << 10),
        )
        .and_then(|r| r.ship().map(|rep| (r, rep)));
        let failed = match &round {
            Ok((_, rep)) => rep.delete_failures > 0,
            Err(_) => true,
        };
        failing.fail_at.store(u64::MAX, Ordering::SeqCst);
        let b_kept: Vec<Vec<u8>> = (300..2000).map(|i| id("b", i)).collect();
        let never: Vec<Vec<u8>> = (0..2000).map(|i| id("never", i)).collect();
        let dst = restore_new(tmp.path(), base.clone(), "dst")
            .unwrap_or_else(|e| panic!("k={k}: the last good manifest must restore: {e}"));
        // The first round's IDs are there whatever happened to the second;
        // the second's too if its manifest went up.
        check_restored(
            &dst,
            &clock,
            &Expect {
                present: b_kept.clone(),
                absent: never.clone(),
            },
        );
        match round {
            Err(_) => {
                // The next round, without failures, catches up.
                let r = Replicator::new(
                    store.clone(),
                    target.clone(),
                    Path::from("r"),
                    ReplicateOptions::default(),
                )
                .expect("replicator");
                r.ship().expect("recovery round");
                r.ship().expect("cleanup round");
            }
            Ok((r, _)) => {
                // Leftover deletes are retried by the next round.
                r.ship().expect("cleanup round");
            }
        }
        let dst = restore_new(tmp.path(), base.clone(), "dst2").expect("restore after recovery");
        check_restored(
            &dst,
            &clock,
            &Expect {
                present: b_kept
                    .iter()
                    .cloned()
                    .chain((0..2000).map(|i| id("c", i)))
                    .collect(),
                absent: never
                    .into_iter()
                    .chain((0..300).map(|i| id("b", i)))
                    .chain((0..2000).map(|i| id("a", i)))
                    .collect(),
            },
        );
        // No object leaked: exactly the manifest and its chunks remain.
        let listed = objects(&base, &Path::from("r"));
        let manifest = block_on(async {
            base.get(&Path::from("r/manifest"))
                .await
                .expect("get")
                .bytes()
                .await
                .expect("bytes")
        });
        let chunks_listed = String::from_utf8(manifest.to_vec())
            .expect("text")
            .lines()
            .filter(|l| l.starts_with("chunk "))
            .count();
        assert_eq!(
            listed.len(),
            chunks_listed + 1,
            "k={k}: leaked objects: {listed:?}"
        );
        if !failed {
            break;
        }
        k += 1;
        assert!(k < 500, "a round sends fewer than 500 requests");
    }
    // The k-th round went through: the round has k - 1 requests.
    eprintln!(
        "a failure was injected at each of the {} requests of a round",
        k - 1
    );
    assert!(
        k > 5,
        "the failure was injected at each of several requests (k = {k})"
    );
}

#[test]
fn s3_on_moto_ship_gc_ship_restore() {
    let moto = Moto::start();
    moto.create_bucket("dedup");
    ship_gc_ship_restore(moto.bucket("dedup"));
    // An unreachable server: a clear error, no manifest written anywhere.
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = moto.port;
    drop(moto);
    let dead = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name("dedup")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .with_retry(object_store::RetryConfig {
            max_retries: 1,
            retry_timeout: Duration::from_secs(2),
            ..Default::default()
        })
        .build()
        .expect("s3 client");
    let err = restore(
        Arc::new(dead),
        &Path::from("replicas/p7"),
        &tmp.path().join("dst"),
    )
    .expect_err("unreachable");
    assert!(matches!(err, Error::ObjectStore { .. }), "{err}");
    assert_only(tmp.path(), &[]);
}

/// Background rounds: they ship while the store is written, and `stop`
/// ships a last round that has everything acknowledged before it.
#[test]
fn background_rounds_and_a_final_round_at_stop() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let target: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let clock = ManualClock::new(T0);
    let store = Arc::new(Store::open(tmp.path().join("src"), config(&clock)).expect("open"));
    let repl = Replicator::new(
        store.clone(),
        target.clone(),
        Path::from("r"),
        ReplicateOptions::default(),
    )
    .expect("replicator");
    let handle = repl.spawn(Duration::from_millis(5));
    insert_all(&store, "a", 0..2000, HOUR);
    // Wait (bounded) for a background round that has shipped something.
    for _ in 0..2000 {
        if handle.last_report().is_some_and(|r| r.replica_bytes > 0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        handle.rounds() > 0 && handle.last_report().is_some(),
        "background rounds ran"
    );
    assert_eq!(handle.failures(), 0, "{:?}", handle.last_error());
    insert_all(&store, "b", 0..2000, HOUR);
    let last = handle.stop().expect("final round");
    assert!(last.replica_bytes > 0);
    let dst = restore_new(tmp.path(), target, "dst").expect("restore");
    check_restored(
        &dst,
        &clock,
        &Expect {
            present: (0..2000)
                .map(|i| id("a", i))
                .chain((0..2000).map(|i| id("b", i)))
                .collect(),
            absent: (0..2000).map(|i| id("never", i)).collect(),
        },
    );
}

/// Review attack: a replicator restarted beside a reopened store, with
/// `sync_first` off, on a store with nothing new to sync. The store's
/// durable LSN starts at 0 after open, so the view showed the active
/// segment empty, the restarted replicator's check of the chunks already up
/// found them "not matching" the (empty) local bytes, and it wrote a
/// manifest that forgot every shipped record of the active segment: a
/// restore from it lost acknowledged, shipped IDs.
#[test]
fn a_replicator_restarted_after_reopen_without_sync_first_keeps_the_active_segment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tempfile::tempdir().expect("tempdir");
    let target: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(root.path()).expect("local fs"));
    let clock = ManualClock::new(T0);
    let dir = tmp.path().join("src");
    let store = Arc::new(Store::open(&dir, config(&clock)).expect("open"));
    // Fewer than a segment's worth: everything is in the active segment.
    insert_all(&store, "a", 0..200, 240 * HOUR);
    Replicator::new(
        store.clone(),
        target.clone(),
        Path::from("r"),
        ReplicateOptions::default(),
    )
    .expect("replicator")
    .ship()
    .expect("ship");
    match Arc::try_unwrap(store) {
        Ok(s) => s.close().expect("close"),
        Err(_) => panic!("the replicator still holds the store"),
    }

    let store = Arc::new(Store::open(&dir, config(&clock)).expect("reopen"));
    Replicator::new(
        store.clone(),
        target.clone(),
        Path::from("r"),
        ReplicateOptions::default().sync_first(false),
    )
    .expect("replicator")
    .ship()
    .expect("ship after reopen");

    restore_and_check(
        tmp.path(),
        target,
        "restored",
        &clock,
        (0..200).map(|i| id("a", i)).collect(),
        vec![id("b", 0)],
    );
}

/// Review attack: the new owner opens the restored store with another
/// segment size than the old owner's (both ways), writes past the restored
/// tail over several segments, reopens: nothing shipped or written is lost.
#[test]
fn a_restored_store_opened_with_another_segment_size_keeps_everything() {
    for (src_size, dst_size) in [(64u64 << 10, 16u64 << 20), (16 << 20, 64 << 10)] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let clock = ManualClock::new(T0);
        let store = Arc::new(
            Store::open(
                tmp.path().join("src"),
                config(&clock).segment_size(src_size),
            )
            .expect("open"),
        );
        insert_all(&store, "a", 0..3000, 240 * HOUR);
        Replicator::new(
            store.clone(),
            target.clone(),
            Path::from("r"),
            ReplicateOptions::default(),
        )
        .expect("replicator")
        .ship()
        .expect("ship");
        let dst = restore_new(tmp.path(), target, "restored").expect("restore");
        let cfg = || config(&clock).segment_size(dst_size);
        let restored = Store::open(&dst, cfg()).expect("the restored store opens");
        insert_all(&restored, "b", 0..3000, 240 * HOUR);
        restored.close().expect("close");
        let restored = Store::open(&dst, cfg()).expect("reopen");
        for kind in ["a", "b"] {
            let keys: Vec<Vec<u8>> = (0..3000).map(|i| id(kind, i)).collect();
            let got = restored.contains_batch(&keys).expect("contains");
            assert!(
                got.iter().all(|&p| p),
                "{kind} IDs lost ({src_size} -> {dst_size})"
            );
        }
        restored.close().expect("close");
    }
}

/// Review attack: restore onto a path that is a regular file, into a
/// non-empty directory, and onto a store's own directory: each is refused,
/// the path is left as it was and no temporary directory is left beside it.
#[test]
fn a_restore_onto_a_file_or_a_non_empty_dir_is_refused_and_leaves_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let target: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let (store, _clock) = shipped_store(tmp.path(), target.clone());
    std::fs::write(tmp.path().join("file"), b"mine").expect("write");
    std::fs::create_dir(tmp.path().join("full")).expect("mkdir");
    std::fs::write(tmp.path().join("full/x"), b"x").expect("write");
    for name in ["file", "full", "src"] {
        assert!(
            restore_new(tmp.path(), target.clone(), name).is_err(),
            "restore onto {name} accepted"
        );
    }
    assert_eq!(
        std::fs::read(tmp.path().join("file")).expect("read"),
        b"mine"
    );
    assert_eq!(
        std::fs::read(tmp.path().join("full/x")).expect("read"),
        b"x"
    );
    assert_only(tmp.path(), &["file", "full", "src"]);
    assert!(store.contains(id("a", 0)).expect("contains"));
}

/// Review attack: rounds racing writers, segment rolls and compacting GC
/// (short-lived IDs expire while long-lived ones stay, so GC copies them
/// forward and deletes their segments between rounds). After each round,
/// a restore of it holds every long-lived ID acknowledged before the round
/// started, and no ID that was never inserted.
#[test]
fn rounds_racing_writers_rolls_and_compaction_restore_everything_acknowledged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let target: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let clock = ManualClock::new(T0);
    let store = Arc::new(Store::open(tmp.path().join("src"), config(&clock)).expect("open"));
    let repl = Replicator::new(
        store.clone(),
        target.clone(),
        Path::from("r"),
        ReplicateOptions::default().chunk_bytes(8 << 10),
    )
    .expect("replicator");
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, acked, stop, clock) =
            (store.clone(), acked.clone(), stop.clone(), clock.clone());
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::SeqCst) && i < 6000 {
                let batch: Vec<Vec<u8>> = (i..i + 50)
                    .flat_map(|j| [id("long", j), id("short", j)])
                    .collect();
                let ttls = [240 * HOUR, HOUR];
                for (n, k) in batch.iter().enumerate() {
                    let out = store.check_and_insert(k, ttls[n % 2]).expect("insert");
                    assert!(out.is_inserted());
                }
                i += 50;
                acked.store(u64::from(i), Ordering::SeqCst);
                if i.is_multiple_of(500) {
                    clock.advance(2 * HOUR);
                }
            }
        })
    };
    let gc = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut compacted = 0;
            while !stop.load(Ordering::SeqCst) {
                compacted += store.gc_now().expect("gc").segments_compacted;
            }
            compacted
        })
    };
    let mut round = 0;
    while !writer.is_finished() || round < 2 {
        let before = u32::try_from(acked.load(Ordering::SeqCst)).expect("u32");
        repl.ship().expect("ship");
        round += 1;
        let dst = restore_new(tmp.path(), target.clone(), &format!("r{round}")).expect("restore");
        let s = Store::open(&dst, config(&clock)).expect("restored store opens");
        let want: Vec<Vec<u8>> = (0..before).map(|j| id("long", j)).collect();
        let got = s.contains_batch(&want).expect("contains");
        let missing: Vec<usize> = got
            .iter()
            .enumerate()
            .filter(|(_, &p)| !p)
            .map(|(j, _)| j)
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged IDs lost, first {:?}",
            missing.len(),
            missing.first()
        );
        let never: Vec<Vec<u8>> = (0..100).map(|j| id("never", j)).collect();
        assert!(s
            .contains_batch(&never)
            .expect("contains")
            .iter()
            .all(|&p| !p));
        s.close().expect("close");
        std::fs::remove_dir_all(&dst).expect("rm");
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    let compacted = gc.join().expect("gc");
    assert!(round >= 2);
    assert!(compacted > 0, "GC compacted nothing: the race was not run");
}

/// Review attack: claims through a restore. A claim in progress at the
/// last round comes back orphaned (taken over at once by the new owner's
/// claim), a completed one answers with its response, and the old owner's
/// tokens complete nothing on the restored store (fencing across the
/// handoff), even though the restored log has the same LSNs.
#[test]
fn a_restored_claim_is_orphaned_and_the_old_owners_token_is_stale_there() {
    use dedupstore::{Claim, KeyState};
    let tmp = tempfile::tempdir().expect("tempdir");
    let target: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let clock = ManualClock::new(T0);
    let store = Arc::new(Store::open(tmp.path().join("src"), config(&clock)).expect("open"));
    let Claim::Acquired(live) = store.claim(b"live", HOUR, Some(1)).expect("claim") else {
        panic!("not acquired")
    };
    let Claim::Acquired(done) = store.claim(b"done", HOUR, Some(2)).expect("claim") else {
        panic!("not acquired")
    };
    store
        .complete(&done, Some(b"receipt"), 24 * HOUR)
        .expect("complete");
    Replicator::new(
        store.clone(),
        target.clone(),
        Path::from("r"),
        ReplicateOptions::default(),
    )
    .expect("replicator")
    .ship()
    .expect("ship");
    let dst = restore_new(tmp.path(), target, "restored").expect("restore");
    let restored = Store::open(&dst, config(&clock)).expect("the restored store opens");
    assert!(
        matches!(
            restored.peek(b"live").expect("peek"),
            KeyState::InProgress { orphaned: true, .. }
        ),
        "a restored claim is not orphaned"
    );
    assert!(
        restored.complete(&live, Some(b"zombie"), HOUR).is_err(),
        "the old owner's token completed a claim on the restored store"
    );
    assert!(
        restored.release(&live).is_err(),
        "the old owner's token released a claim on the restored store"
    );
    let Claim::Acquired(mine) = restored.claim(b"live", HOUR, Some(1)).expect("claim") else {
        panic!("an orphaned restored claim was not taken over at once")
    };
    restored
        .complete(&mine, Some(b"new owner"), HOUR)
        .expect("the new owner completes");
    assert!(matches!(
        restored.peek(b"done").expect("peek"),
        KeyState::Completed { .. }
    ));
    // The old owner, still running, is not fenced on its own store.
    store
        .complete(&live, Some(b"old"), HOUR)
        .expect("old store");
    restored.close().expect("close");
}

/// Review attack: `ReplicateOptions`' fields are public, so a caller can set
/// `chunk_bytes` or `concurrency` to 0 without the builders' clamp. A round
/// then looped forever with chunk size 0 (chunks never advance; the upload
/// list grew until the process was killed for memory) and never ended with
/// concurrency 0 (no request allowed in flight). Both are taken as 1 now:
/// the round completes and restores.
#[test]
fn zero_chunk_bytes_or_concurrency_set_on_the_fields_still_ship() {
    for (chunk, conc) in [(0u64, 8usize), (4096, 0)] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let clock = ManualClock::new(T0);
        let store = Arc::new(Store::open(tmp.path().join("src"), config(&clock)).expect("open"));
        insert_all(&store, "a", 0..300, 240 * HOUR);
        let mut opts = ReplicateOptions::default();
        opts.chunk_bytes = chunk;
        opts.concurrency = conc;
        let (tx, rx) = std::sync::mpsc::channel();
        let (s, t) = (store.clone(), target.clone());
        std::thread::spawn(move || {
            let r = Replicator::new(s, t, Path::from("r"), opts).and_then(|r| r.ship());
            let _ = tx.send(r.map(|_| ()));
        });
        // A liveness guard, not a speed figure: the round takes
        // milliseconds; the bug was a round that never ends.
        let r = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("a round with {chunk} / {conc} never ended"));
        r.expect("ship");
        restore_and_check(
            tmp.path(),
            target,
            "restored",
            &clock,
            (0..300).map(|i| id("a", i)).collect(),
            vec![id("b", 0)],
        );
    }
}

/// Review attack: the replica of a store with nothing in it (one segment,
/// no record bytes) restores to a store that opens, takes inserts across
/// segment rolls and reopens with them.
#[test]
fn the_replica_of_an_empty_store_restores_to_a_working_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let target: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let clock = ManualClock::new(T0);
    let store = Arc::new(Store::open(tmp.path().join("src"), config(&clock)).expect("open"));
    let report = Replicator::new(
        store.clone(),
        target.clone(),
        Path::from("r"),
        ReplicateOptions::default(),
    )
    .expect("replicator")
    .ship()
    .expect("ship");
    assert!(
        report.manifest_written,
        "an empty store's replica has a manifest"
    );
    let dst = restore_new(tmp.path(), target, "restored").expect("restore");
    let restored = Store::open(&dst, config(&clock)).expect("the restored store opens");
    insert_all(&restored, "b", 0..3000, 240 * HOUR);
    restored.close().expect("close");
    check_restored(
        &dst,
        &clock,
        &Expect {
            present: (0..3000).map(|i| id("b", i)).collect(),
            absent: vec![id("a", 0)],
        },
    );
}

/// A restore killed midway leaves `.NAME.restoring-PID-N` beside its
/// target; the next restore into that target removes it once its process
/// is gone, and leaves alone one whose process is running.
#[test]
fn a_restore_removes_what_a_killed_restore_left_and_only_that() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let target: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let clock = ManualClock::new(T0);
    let store = Arc::new(Store::open(tmp.path().join("src"), config(&clock)).expect("open"));
    insert_all(&store, "a", 0..100, HOUR);
    Replicator::new(
        store,
        target.clone(),
        Path::from("r"),
        ReplicateOptions::default(),
    )
    .expect("replicator")
    .ship()
    .expect("ship");
    // PIDs never exceed 2^22 on Linux (`pid_max`), so this one is not running.
    let dead = tmp.path().join(".restored.restoring-4294967000-1");
    let alive = tmp
        .path()
        .join(format!(".restored.restoring-{}-1", std::process::id()));
    let other = tmp.path().join(".other.restoring-4294967000-1");
    for d in [&dead, &alive, &other] {
        std::fs::create_dir_all(d.join("inside")).expect("leftover");
    }
    restore_and_check(
        tmp.path(),
        target,
        "restored",
        &clock,
        (0..100).map(|i| id("a", i)).collect(),
        vec![id("b", 0)],
    );
    assert!(!dead.exists(), "a dead restore's leftover is removed");
    assert!(
        alive.exists(),
        "a running process's restore directory is kept"
    );
    assert!(other.exists(), "another target's leftovers are not touched");
}

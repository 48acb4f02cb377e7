//! Continuous replication of a [`dedupstore::Store`] to an object store
//! (S3 or any S3-compatible server, the local file system, memory: anything
//! that implements [`object_store::ObjectStore`]), and restore from it.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use dedupstore::{Config, Store};
//! use dedupstore_replicate::{restore, s3_from_env, ReplicateOptions, Replicator};
//! use object_store::path::Path;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Arc::new(Store::open("/var/lib/consumer/p7", Config::default())?);
//! // Credentials, region, endpoint: from the AWS_* environment variables.
//! let bucket = s3_from_env("my-bucket")?;
//! let prefix = Path::from("dedup/orders/p7");
//! let repl = Replicator::new(store.clone(), bucket.clone(), prefix.clone(), ReplicateOptions::default())?;
//! let handle = repl.spawn(Duration::from_secs(5)); // a round every 5 s
//! // ... consume ...
//! let last = handle.stop()?; // a final round: everything durable is up
//! println!("{} bytes uploaded in the last round", last.uploaded_bytes);
//!
//! // On another machine, into a new directory:
//! restore(bucket, &prefix, std::path::Path::new("/var/lib/consumer/p7"))?;
//! # Ok(()) }
//! ```
//!
//! # What is shipped, and when
//!
//! A round ([`Replicator::ship`]) takes the store's durable log
//! ([`dedupstore::Store::replica_view`]: sealed segments whole, the active
//! one up to the durable LSN) and uploads only the bytes not uploaded yet,
//! as immutable *chunk* objects (at most [`ReplicateOptions::chunk_bytes`]
//! each): sealed data is uploaded once, and each round adds the tail written
//! since the previous one. Then it writes the *manifest* object (one atomic
//! PUT), which lists every chunk a restore needs with its XXH3 checksum
//! (layout in `manifest.rs`). Chunks of segments GC deleted are deleted
//! only after the new manifest is up. A round in which nothing changed
//! sends no request at all.
//!
//! Layout under the prefix: `<prefix>/manifest` and
//! `<prefix>/chunks/<segment>-<start>-<end>-<xxh3>`.
//!
//! # Failures
//!
//! The manifest is replaced only once every chunk it lists is up, and no
//! object a manifest in place lists is ever deleted: an object store that
//! fails or is unreachable mid-round leaves the previous manifest, and so
//! the previous restorable state, intact. The round returns the error; the
//! next round starts again from the last manifest written. Objects
//! uploaded by a failed round are deleted after the next manifest is up.
//!
//! # Restore
//!
//! [`restore`] reads the manifest, downloads every chunk, checks every
//! checksum, and writes the store in a temporary directory beside the
//! target, renamed into place at the end: a missing or damaged object, or
//! a manifest from a newer version, is an error that leaves nothing behind.
//!
//! # Credentials
//!
//! [`s3_from_env`] builds the S3 client with
//! `AmazonS3Builder::from_env`, which reads `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT`, ... This crate never reads, prints or logs them; its
//! errors name objects, never credentials.
//!
//! # Threads
//!
//! The API is blocking: each [`Replicator`] and each [`restore`] runs its
//! own single-threaded tokio runtime for `object_store`. Do not call them
//! from inside an async runtime (use `spawn_blocking`).

#![deny(missing_docs)]

mod manifest;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dedupstore::replica::ReplicaWriter;
use dedupstore::Store;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::manifest::{Chunk, Manifest, ParseError};

pub use crate::manifest::VERSION as MANIFEST_VERSION;

/// Everything that can go wrong replicating or restoring.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The local store failed (reading its view, syncing it, writing the
    /// restored store).
    #[error(transparent)]
    Store(#[from] dedupstore::Error),
    /// An object store request failed (unreachable, refused, ...).
    #[error("object store {op} of {path} failed: {source}")]
    ObjectStore {
        /// The request: "put", "get", "delete", "list".
        op: &'static str,
        /// The object (or prefix).
        path: String,
        /// What `object_store` reported.
        #[source]
        source: object_store::Error,
    },
    /// There is no manifest under the prefix: nothing was replicated there.
    #[error("no replica manifest at {path}")]
    NoManifest {
        /// The manifest's path.
        path: String,
    },
    /// The manifest is damaged or not a manifest.
    #[error("replica manifest {path} is damaged: {reason}")]
    BadManifest {
        /// The manifest's path.
        path: String,
        /// What check failed.
        reason: String,
    },
    /// The manifest was written by a newer version of this crate.
    #[error("replica manifest {path} has version {found}; this build reads up to {supported}")]
    UnsupportedVersion {
        /// The manifest's path.
        path: String,
        /// Its version.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// An object the manifest lists is missing.
    #[error("replica object {path} is missing")]
    MissingObject {
        /// The object.
        path: String,
    },
    /// An object the manifest lists has other bytes than it says.
    #[error("replica object {path} is damaged: {reason}")]
    BadObject {
        /// The object.
        path: String,
        /// What check failed.
        reason: String,
    },
    /// A local file system call of a restore failed.
    #[error("I/O error during {op} on {path}: {source}")]
    Io {
        /// The call.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The background thread of a [`ReplicatorHandle`] panicked.
    #[error("the replicator thread panicked")]
    ThreadPanicked,
    /// The restore target is not a new or empty directory.
    #[error("cannot restore into {dir}: {reason}")]
    Target {
        /// The target directory.
        dir: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn os_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(object_store::Error) -> Error + 'a {
    move |source| Error::ObjectStore {
        op,
        path: path.to_string(),
        source,
    }
}

fn io_err<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Makes `ring` the process's TLS crypto provider (rustls), which the S3
/// client needs for `https` endpoints. [`s3_from_env`] calls it; call it
/// before building an `AmazonS3Builder` yourself. Calling it again, or
/// after another provider was installed, does nothing.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An S3 bucket client configured from the environment
/// (`AmazonS3Builder::from_env`: `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`,
/// ...). Credentials are not read here, only by `object_store`.
pub fn s3_from_env(bucket: &str) -> Result<Arc<dyn ObjectStore>> {
    install_tls_provider();
    let s3 = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .map_err(|source| Error::ObjectStore {
            op: "configure",
            path: bucket.to_string(),
            source,
        })?;
    Ok(Arc::new(s3))
}

/// Tuning of a [`Replicator`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReplicateOptions {
    /// Largest chunk object, bytes (default 8 MiB; 0 is taken as 1). Bytes of one segment
    /// shipped in one round are split into chunks of at most this size.
    pub chunk_bytes: u64,
    /// Requests in flight at once (default 8; 0 is taken as 1).
    pub concurrency: usize,
    /// Call [`Store::sync`] at the start of each round (default true), so
    /// that under `Durability::Interval`/`None` a round ships everything
    /// acknowledged before it. Off: a round ships what is durable already.
    pub sync_first: bool,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        ReplicateOptions {
            chunk_bytes: 8 << 20,
            concurrency: 8,
            sync_first: true,
        }
    }
}

impl ReplicateOptions {
    /// Sets [`ReplicateOptions::chunk_bytes`] (at least 1).
    pub fn chunk_bytes(mut self, bytes: u64) -> Self {
        self.chunk_bytes = bytes.max(1);
        self
    }
    /// Sets [`ReplicateOptions::concurrency`] (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
    /// Sets [`ReplicateOptions::sync_first`].
    pub fn sync_first(mut self, on: bool) -> Self {
        self.sync_first = on;
        self
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShipReport {
    /// The manifest's round number after this round.
    pub round: u64,
    /// Chunk objects uploaded.
    pub uploaded_chunks: u64,
    /// Bytes uploaded: chunks and the manifest.
    pub uploaded_bytes: u64,
    /// Whether a new manifest was written (false: nothing changed).
    pub manifest_written: bool,
    /// Objects deleted after the manifest was up (chunks of segments GC
    /// deleted, and leftovers of failed rounds).
    pub deleted_objects: u64,
    /// Objects that could not be deleted (retried next round; they are in
    /// no manifest, so a restore never needs them).
    pub delete_failures: u64,
    /// Requests sent: PUTs and deletes (a delete of several objects may be
    /// one request on S3; counted per object here).
    pub requests: u64,
    /// Segments in the manifest.
    pub segments: u64,
    /// Record bytes the manifest covers: what a restore downloads.
    pub replica_bytes: u64,
    /// How long the round took.
    pub duration: Duration,
}

/// What a restore did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreReport {
    /// The manifest's round number.
    pub round: u64,
    /// Segments written.
    pub segments: u64,
    /// Chunk objects downloaded.
    pub chunks: u64,
    /// Record bytes downloaded (and checked).
    pub bytes: u64,
    /// How long it took.
    pub duration: Duration,
}

/// What the replicator knows is up: the manifest in place, and the objects
/// it may delete once a newer manifest is up.
struct State {
    /// The manifest in place (as this replicator last wrote or read it).
    manifest: Manifest,
    /// First round: the manifest was read, not written by this replicator:
    /// each chunk is checked against the local bytes before it is kept.
    verify: bool,
    /// Objects in no manifest in place (uploads of failed rounds, chunks of
    /// deleted segments whose delete failed): deleted after the next
    /// manifest is up, unless it lists them.
    orphans: BTreeSet<String>,
}

/// Replicates one store to one prefix of an object store. One replicator
/// per prefix: two writing the same prefix would delete each other's
/// objects.
pub struct Replicator {
    store: Arc<Store>,
    target: Arc<dyn ObjectStore>,
    prefix: Path,
    opts: ReplicateOptions,
    rt: tokio::runtime::Runtime,
    state: Mutex<State>,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("start tokio runtime", std::path::Path::new("-")))
}

fn manifest_path(prefix: &Path) -> Path {
    prefix.clone().join("manifest")
}

fn chunks_prefix(prefix: &Path) -> Path {
    prefix.clone().join("chunks")
}

fn chunk_path(prefix: &Path, c: &Chunk) -> Path {
    chunks_prefix(prefix).join(c.name())
}

/// Reads and parses the manifest; `Ok(None)` if there is none.
async fn read_manifest(target: &dyn ObjectStore, prefix: &Path) -> Result<Option<Manifest>> {
    let path = manifest_path(prefix);
    let bytes = match target.get(&path).await {
        Ok(r) => r.bytes().await.map_err(os_err("get", &path))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(os_err("get", &path)(e)),
    };
    match Manifest::parse(&bytes) {
        Ok(m) => Ok(Some(m)),
        Err(ParseError::Newer(found)) => Err(Error::UnsupportedVersion {
            path: path.to_string(),
            found,
            supported: manifest::VERSION,
        }),
        Err(ParseError::Bad(reason)) => Err(Error::BadManifest {
            path: path.to_string(),
            reason,
        }),
    }
}

impl Replicator {
    /// A replicator of `store` to `prefix` in `target`. Reads the manifest
    /// already there, if any (a restarted replicator, or a store restored
    /// from this prefix): its chunks that match the store's bytes are kept,
    /// not uploaded again. Lists `<prefix>/chunks/` once, to delete
    /// leftovers of earlier failed rounds after the next manifest is up.
    /// A manifest from a newer version is an error.
    pub fn new(
        store: Arc<Store>,
        target: Arc<dyn ObjectStore>,
        prefix: Path,
        mut opts: ReplicateOptions,
    ) -> Result<Self> {
        // Invariant: chunks advance and requests are sent. The fields are
        // public, so the builders' clamp may have been bypassed: a chunk
        // size of 0 made a round loop forever (its upload list growing
        // without bound), a concurrency of 0 never sent a request.
        opts.chunk_bytes = opts.chunk_bytes.max(1);
        opts.concurrency = opts.concurrency.max(1);
        let rt = runtime()?;
        let (manifest, listed) = rt.block_on(async {
            let manifest = read_manifest(&*target, &prefix).await?;
            let chunks = chunks_prefix(&prefix);
            let listed: Vec<String> = target
                .list(Some(&chunks))
                .map_ok(|meta| meta.location.to_string())
                .try_collect()
                .await
                .map_err(os_err("list", &chunks))?;
            Ok::<_, Error>((manifest, listed))
        })?;
        let verify = manifest.is_some();
        let manifest = manifest.unwrap_or_default();
        let listed_in_manifest: BTreeSet<String> = referenced(&manifest, &prefix);
        let orphans = listed
            .into_iter()
            .filter(|p| !listed_in_manifest.contains(p))
            .collect();
        Ok(Replicator {
            store,
            target,
            prefix,
            opts,
            rt,
            state: Mutex::new(State {
                manifest,
                verify,
                orphans,
            }),
        })
    }

    /// One round, blocking: uploads the durable bytes not uploaded yet,
    /// then the manifest, then deletes objects no manifest needs. When it
    /// returns `Ok`, everything durable in the store when it started (with
    /// [`ReplicateOptions::sync_first`]: everything acknowledged) is
    /// restorable. On `Err`, the previous manifest is still in place.
    pub fn ship(&self) -> Result<ShipReport> {
        let started = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.opts.sync_first {
            self.store.sync()?;
        }
        let view = self.store.replica_view()?;
        let verify = state.verify;
        let old = &state.manifest;
        // The next manifest: each segment's chunks already up (checked
        // against the local bytes if another replicator wrote them), then
        // new chunks for the bytes past them.
        let mut next = Manifest {
            round: old.round,
            segments: Vec::new(),
        };
        // Chunks to upload, with their bytes in the view's mappings: copied
        // only when sent, so at most `concurrency` chunks are in memory.
        let mut uploads: Vec<(Chunk, &[u8])> = Vec::new();
        for seg in view.segments() {
            let bytes = seg.records();
            let mut kept: Vec<Chunk> = old
                .segments
                .iter()
                .find(|s| s.id == seg.id())
                .map(|s| s.chunks.clone())
                .unwrap_or_default();
            if verify {
                let good = kept
                    .iter()
                    .take_while(|c| {
                        usize::try_from(c.end)
                            .ok()
                            .and_then(|end| bytes.get(usize::try_from(c.start).ok()?..end))
                            .is_some_and(|b| xxhash_rust::xxh3::xxh3_64(b) == c.hash)
                    })
                    .count();
                kept.truncate(good);
            }
            let mut at = kept.last().map_or(0, |c| c.end);
            // Invariant (`dedupstore::replica`): shipped bytes never change
            // and never shrink while their segment exists.
            if at > bytes.len() as u64 {
                return Err(Error::BadManifest {
                    path: manifest_path(&self.prefix).to_string(),
                    reason: format!(
                        "segment {} is {} bytes up, but only {} locally: another store writes this prefix?",
                        seg.id(),
                        at,
                        bytes.len()
                    ),
                });
            }
            while at < bytes.len() as u64 {
                let end = (at + self.opts.chunk_bytes).min(bytes.len() as u64);
                let part = &bytes[usize::try_from(at).unwrap_or(usize::MAX)
                    ..usize::try_from(end).unwrap_or(usize::MAX)];
                let c = Chunk {
                    seg: seg.id(),
                    start: at,
                    end,
                    hash: xxhash_rust::xxh3::xxh3_64(part),
                };
                uploads.push((c, part));
                kept.push(c);
                at = end;
            }
            next.segments.push(manifest::Segment {
                id: seg.id(),
                chunks: kept,
            });
        }
        let unchanged = next.segments == old.segments;
        let mut report = ShipReport {
            round: old.round,
            segments: next.segments.len() as u64,
            replica_bytes: next.segments.iter().map(|s| s.len()).sum(),
            ..ShipReport::default()
        };
        if unchanged && state.orphans.is_empty() {
            state.verify = false;
            report.duration = started.elapsed();
            return Ok(report);
        }
        next.round = old.round + 1;
        let target = &self.target;
        let prefix = &self.prefix;
        let concurrency = self.opts.concurrency;
        let new_refs = referenced(&next, prefix);
        let old_refs = referenced(old, prefix);
        let result: Result<(u64, u64)> = self.rt.block_on(async {
            let mut up_chunks = 0u64;
            let mut up_bytes = 0u64;
            if !unchanged {
                // 1. The chunks, every one of them up before 2.
                let mut puts = futures_util::stream::iter(uploads.into_iter().map(|(c, part)| {
                    let path = chunk_path(prefix, &c);
                    let len = part.len() as u64;
                    async move {
                        let body = PutPayload::from(Bytes::copy_from_slice(part));
                        let r = target.put(&path, body).await;
                        (path, len, r)
                    }
                }))
                .buffer_unordered(concurrency);
                let mut first_err = None;
                while let Some((path, len, r)) = puts.next().await {
                    match r {
                        Ok(_) => {
                            up_chunks += 1;
                            up_bytes += len;
                        }
                        Err(e) => {
                            first_err.get_or_insert_with(|| os_err("put", &path)(e));
                        }
                    }
                }
                if let Some(e) = first_err {
                    return Err(e);
                }
                // 2. The manifest: one atomic PUT replaces the old one.
                let path = manifest_path(prefix);
                let text = Bytes::from(next.encode());
                up_bytes += text.len() as u64;
                target
                    .put(&path, PutPayload::from(text))
                    .await
                    .map_err(os_err("put", &path))?;
            }
            Ok((up_chunks, up_bytes))
        });
        // Objects this round uploaded are orphans until the manifest is up.
        let (up_chunks, up_bytes) = match result {
            Ok(v) => v,
            Err(e) => {
                state
                    .orphans
                    .extend(new_refs.difference(&old_refs).cloned());
                return Err(e);
            }
        };
        report.uploaded_chunks = up_chunks;
        report.uploaded_bytes = up_bytes;
        report.manifest_written = !unchanged;
        report.requests = up_chunks + u64::from(!unchanged);
        // The manifest in place now lists only chunks checked against the
        // local bytes (or is the one they were checked against).
        state.verify = false;
        if !unchanged {
            report.round = next.round;
            // 3. The new manifest is up: the old one's objects it does not
            // list, and the orphans it does not list, can go.
            state
                .orphans
                .extend(old_refs.difference(&new_refs).cloned());
            state.manifest = next;
        }
        let doomed: Vec<String> = std::mem::take(&mut state.orphans)
            .into_iter()
            .filter(|p| !new_refs.contains(p))
            .collect();
        if !doomed.is_empty() {
            let failed = self.rt.block_on(async {
                let paths: Vec<object_store::Result<Path>> =
                    doomed.iter().map(|p| Ok(Path::from(p.as_str()))).collect();
                let mut results = target.delete_stream(futures_util::stream::iter(paths).boxed());
                let mut failed = 0u64;
                while let Some(r) = results.next().await {
                    match r {
                        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(_) => failed += 1,
                    }
                }
                failed
            });
            report.requests += doomed.len() as u64;
            if failed > 0 {
                // Which ones failed is not told per path by every store:
                // keep them all; deleting a deleted object is harmless.
                state.orphans.extend(doomed.iter().cloned());
            }
            report.deleted_objects = doomed.len() as u64 - failed;
            report.delete_failures = failed;
        }
        report.duration = started.elapsed();
        Ok(report)
    }

    /// Runs rounds in a background thread, one every `interval` (measured
    /// from the end of one round to the start of the next). A failed round
    /// is retried at the next interval; [`ReplicatorHandle::last_error`]
    /// tells the last failure. The replication lag (what a machine loss can
    /// lose from the replica) is at most `interval` plus a round's duration.
    pub fn spawn(self, interval: Duration) -> ReplicatorHandle {
        let (tx, rx) = mpsc::channel::<()>();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("dedupstore-replicate".into())
            .spawn(move || {
                // Until stopped (a message, or the handle dropped).
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
                    let r = self.ship();
                    s.record(&r);
                }
                self
            });
        let (thread, spawn_error) = match spawned {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(e)),
        };
        ReplicatorHandle {
            tx,
            thread,
            spawn_error,
            shared,
        }
    }
}

/// Every object a manifest lists (as path strings).
fn referenced(m: &Manifest, prefix: &Path) -> BTreeSet<String> {
    m.segments
        .iter()
        .flat_map(|s| s.chunks.iter())
        .map(|c| chunk_path(prefix, c).to_string())
        .collect()
}

#[derive(Default)]
struct Shared {
    inner: Mutex<SharedInner>,
}

#[derive(Default)]
struct SharedInner {
    rounds: u64,
    failures: u64,
    last_error: Option<String>,
    last_report: Option<ShipReport>,
}

impl Shared {
    fn record(&self, r: &Result<ShipReport>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.rounds += 1;
        match r {
            Ok(rep) => {
                g.last_report = Some(*rep);
                g.last_error = None;
            }
            Err(e) => {
                g.failures += 1;
                g.last_error = Some(e.to_string());
            }
        }
    }
}

/// A [`Replicator`] running in the background ([`Replicator::spawn`]).
pub struct ReplicatorHandle {
    tx: mpsc::Sender<()>,
    thread: Option<JoinHandle<Replicator>>,
    /// Why the thread could not be started, if it could not.
    spawn_error: Option<std::io::Error>,
    shared: Arc<Shared>,
}

impl ReplicatorHandle {
    /// Rounds run so far (successful or not).
    pub fn rounds(&self) -> u64 {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rounds
    }

    /// Rounds that failed so far.
    pub fn failures(&self) -> u64 {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failures
    }

    /// The error of the last round, if it failed.
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error
            .clone()
    }

    /// The report of the last successful round.
    pub fn last_report(&self) -> Option<ShipReport> {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_report
    }

    /// Stops the background rounds (waits for one in progress), then ships
    /// a final round on this thread and returns its report: when it returns
    /// `Ok`, everything the store acknowledged before the call (durable
    /// before it, without [`ReplicateOptions::sync_first`]) is restorable.
    /// For a handoff: stop consuming, `stop()`, then let the new owner
    /// restore.
    pub fn stop(mut self) -> Result<ShipReport> {
        let _ = self.tx.send(());
        if let Some(e) = self.spawn_error.take() {
            return Err(io_err(
                "spawn thread",
                std::path::Path::new("dedupstore-replicate"),
            )(e));
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(repl)) => repl.ship(),
            // The thread panicked: nothing more can be shipped from it.
            _ => Err(Error::ThreadPanicked),
        }
    }
}

impl Drop for ReplicatorHandle {
    fn drop(&mut self) {
        let _ = self.tx.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Restores the replica at `prefix` into `dir`, which must not exist or be
/// an empty directory; afterwards `Store::open(dir, ..)` opens it (replaying
/// its log). Every chunk's checksum is checked. The store is built in a
/// temporary directory beside `dir` and renamed into place at the end: on
/// any error (no manifest, a newer manifest, a missing or damaged object,
/// the object store failing) nothing is left behind.
///
/// Into a namespace: `let d = ns.staging_dir()?; restore(t, &p, &d)?;
/// ns.install(name, &d)?`.
pub fn restore(
    target: Arc<dyn ObjectStore>,
    prefix: &Path,
    dir: &std::path::Path,
) -> Result<RestoreReport> {
    let started = Instant::now();
    check_target(dir)?;
    let rt = runtime()?;
    let manifest = rt
        .block_on(read_manifest(&*target, prefix))?
        .ok_or_else(|| Error::NoManifest {
            path: manifest_path(prefix).to_string(),
        })?;
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = dir
        .file_name()
        .ok_or(Error::Target {
            dir: dir.to_path_buf(),
            reason: "the path has no file name",
        })?
        .to_string_lossy()
        .into_owned();
    remove_dead_restores(parent, &name);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = parent.join(format!(".{name}.restoring-{}-{nanos}", std::process::id()));
    let result = (|| {
        let report = rt.block_on(download_into(&*target, prefix, &manifest, &tmp))?;
        // An empty target directory is replaced by the rename.
        std::fs::rename(&tmp, dir).map_err(io_err("rename", &tmp))?;
        std::fs::File::open(parent)
            .and_then(|f| f.sync_all())
            .map_err(io_err("fsync dir", parent))?;
        Ok(report)
    })();
    match result {
        Ok(mut report) => {
            report.duration = started.elapsed();
            Ok(report)
        }
        Err(e) => {
            // Best effort: the error says what went wrong.
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Removes the temporary directories that earlier restores into `name`
/// left beside it when their process was killed (`.NAME.restoring-PID-N`,
/// PID no longer running). Best effort: a directory of a running process
/// (this one included) is left alone, so only leftovers go; a failure to
/// list or remove leaves them for the next restore.
fn remove_dead_restores(parent: &std::path::Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let start = format!(".{name}.restoring-");
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&start)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id()
            && !std::path::Path::new("/proc").join(pid.to_string()).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn check_target(dir: &std::path::Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::Target {
                    dir: dir.to_path_buf(),
                    reason: "the directory is not empty",
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("read dir", dir)(e)),
    }
}

async fn download_into(
    target: &dyn ObjectStore,
    prefix: &Path,
    manifest: &Manifest,
    tmp: &std::path::Path,
) -> Result<RestoreReport> {
    let mut writer = ReplicaWriter::create(tmp)?;
    let mut report = RestoreReport {
        round: manifest.round,
        ..RestoreReport::default()
    };
    // Chunks of every segment in order, fetched 8 at a time.
    let chunks: Vec<Chunk> = manifest
        .segments
        .iter()
        .flat_map(|s| s.chunks.iter().copied())
        .collect();
    let mut fetched = futures_util::stream::iter(chunks.into_iter().map(|c| async move {
        let path = chunk_path(prefix, &c);
        let bytes = match target.get(&path).await {
            Ok(r) => r.bytes().await.map_err(os_err("get", &path))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::MissingObject {
                    path: path.to_string(),
                })
            }
            Err(e) => return Err(os_err("get", &path)(e)),
        };
        if bytes.len() as u64 != c.end - c.start {
            return Err(Error::BadObject {
                path: path.to_string(),
                reason: format!(
                    "{} bytes, the manifest says {}",
                    bytes.len(),
                    c.end - c.start
                ),
            });
        }
        if xxhash_rust::xxh3::xxh3_64(&bytes) != c.hash {
            return Err(Error::BadObject {
                path: path.to_string(),
                reason: "checksum mismatch".into(),
            });
        }
        Ok((c, bytes))
    }))
    .buffered(8);
    let mut segs = manifest.segments.iter().peekable();
    let mut buf: Vec<u8> = Vec::new();
    // Segments are written whole, in id order, as their last chunk arrives.
    flush_empty(&mut writer, &mut segs, &mut report)?;
    while let Some(item) = fetched.next().await {
        let (c, bytes) = item?;
        buf.extend_from_slice(&bytes);
        report.chunks += 1;
        report.bytes += bytes.len() as u64;
        let Some(seg) = segs.peek() else { break };
        if seg.len() == c.end && seg.id == c.seg {
            writer.write_segment(seg.id, &buf)?;
            report.segments += 1;
            buf.clear();
            segs.next();
            flush_empty(&mut writer, &mut segs, &mut report)?;
        }
    }
    writer.finish()?;
    Ok(report)
}

/// Writes the segments at the front of `segs` that have no bytes.
fn flush_empty(
    writer: &mut ReplicaWriter,
    segs: &mut std::iter::Peekable<std::slice::Iter<'_, manifest::Segment>>,
    report: &mut RestoreReport,
) -> Result<()> {
    while let Some(s) = segs.next_if(|s| s.chunks.is_empty()) {
        writer.write_segment(s.id, &[])?;
        report.segments += 1;
    }
    Ok(())
}

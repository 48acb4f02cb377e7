//! An embedded, persistent, exact store of processed message IDs, for
//! **idempotent consumers** on at-least-once brokers (Kafka, NATS, RabbitMQ,
//! SQS, Redis Streams).
//!
//! Before acting on a message, ask the [`Store`] in one atomic call: *was this
//! ID processed already? If not, record it.* The answer is exact (never a
//! false positive), survives crashes and restarts, and expires per key after a
//! TTL. There is no server: the store is a library linked into the consumer,
//! keeping a log of memory-mapped files in a directory and an index in RAM.
//!
//! # Quickstart
//!
//! ```
//! use std::time::Duration;
//!
//! use dedupstore::{Config, Durability, Outcome, Store};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // One store per consumer process, in a directory of its own (here a
//!     // scratch one); share it between threads: it is Send + Sync.
//!     let dir = std::env::temp_dir().join(format!("dedupstore-doc-{}", std::process::id()));
//!     let store = Store::open(&dir, Config::default().durability(Durability::Immediate))?;
//!
//!     let ttl = Duration::from_secs(24 * 3600); // the dedup window
//!     match store.check_and_insert(b"order-42", ttl)? {
//!         Outcome::Inserted => println!("first delivery: apply the side effect, then ack"),
//!         Outcome::Duplicate { .. } => println!("redelivery: skip it, just ack"),
//!     }
//!     assert!(store.contains(b"order-42")?);
//!
//!     // Processing failed after the insert? Remove the ID so the redelivery runs.
//!     store.remove(b"order-42")?;
//!
//!     store.close()?; // syncs; dropping the store does the same, silently
//!     std::fs::remove_dir_all(&dir)?;
//!     Ok(())
//! }
//! ```
//!
//! Under [`Durability::Immediate`] (the default) a call returns `Inserted` only
//! once the ID is on stable storage; concurrent callers share fsyncs, and
//! [`Store::check_and_insert_batch`] shares one across a batch.
//! [`Durability::Interval`] and [`Durability::None`] trade the last moments
//! before a power loss for speed. In every mode a lost acknowledgement never
//! turns into a false `Duplicate`.
//!
//! # Effects that must happen exactly once: claim and complete
//!
//! With `check_and_insert`, a consumer that dies between `Inserted` and the
//! end of its side effect leaves an ID recorded whose effect never happened.
//! [`Store::claim`] closes that window: it leases the key to one caller, which
//! then [`complete`](Store::complete)s it, storing an optional response that
//! every later claim of the key gets back, or [`release`](Store::release)s it.
//! Once a lease runs out its [`ClaimToken`] fails with [`Error::StaleToken`]
//! and the next claim takes the key over, so a slow consumer cannot overwrite
//! the result of the one that replaced it.
//!
//! ```
//! use std::time::Duration;
//!
//! use dedupstore::{Claim, Config, Store};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let dir = std::env::temp_dir().join(format!("dedupstore-doc-claim-{}", std::process::id()));
//!     let store = Store::open(&dir, Config::default())?;
//!     let payload_hash = 0x1234; // a hash of the message body: detects a reused ID
//!
//!     let lease = Duration::from_secs(60); // longer than processing can take
//!     match store.claim(b"charge-77", lease, Some(payload_hash))? {
//!         Claim::Acquired(token) => {
//!             let receipt = b"charged 10 EUR"; // do the work
//!             store.complete(&token, Some(receipt), Duration::from_secs(86_400))?;
//!             // on failure instead: store.release(&token)?
//!         }
//!         Claim::InProgress { .. } => println!("another consumer has it: retry later, do not ack"),
//!         Claim::Completed { response, .. } => println!("done before, reply {response:?} and ack"),
//!     }
//!
//!     store.close()?;
//!     std::fs::remove_dir_all(&dir)?;
//!     Ok(())
//! }
//! ```
//!
//! # Errors and recovery
//!
//! Every failure is an [`Error`] that says what failed and, where it applies,
//! in which file and at which offset; bad bytes on disk never cause a panic.
//! After a crash, [`Store::open`] truncates a torn tail and rebuilds the
//! index; damage anywhere else is reported as [`Error::Corruption`] unless
//! [`RecoveryMode::Salvage`] is chosen. A full disk answers
//! [`Error::is_disk_full`] and loses nothing acknowledged. The on-disk format
//! and its recovery rules are in
//! [docs/FORMAT.md](https://github.com/dedupstore/dedupstore/blob/main/docs/FORMAT.md);
//! guarantees, limits and benchmarks in the
//! [README](https://github.com/dedupstore/dedupstore#readme).
//!
//! # Platform: Linux only
//!
//! The crate refuses to compile on other systems, because its guarantees rest
//! on Linux behaviour that it has only been tested on:
//! - `posix_fallocate` reserves each log segment's disk blocks before the
//!   segment is memory-mapped, so writing through the mapping cannot raise
//!   `SIGBUS` on a full disk (`File::set_len` only makes a sparse file, and
//!   macOS has no `posix_fallocate`);
//! - `fsync` and `msync` are taken to reach stable storage, which on macOS
//!   needs `F_FULLFSYNC` instead;
//! - [`SystemClock`] reads `CLOCK_REALTIME_COARSE`, a Linux clock.
//!
//! # Cargo features
//!
//! - `sim`: the `sim` module, a simulated file system (a [`vfs::Vfs`] for
//!   [`Store::open_with`]) that models power loss, dropping or tearing
//!   unsynced writes, and fails chosen I/O calls: for crash-testing code built
//!   on the store.
//! - `internals`: hot-path internals for the repository's micro-benchmarks;
//!   hidden, and not a stable API.

#![cfg_attr(docsrs, feature(doc_cfg))]
// The lint wall: every public item documented, every unsafe block justified,
// unsafe operations inside `unsafe fn` still marked, and every narrowing cast
// either provably in range or an `#[expect]` that says why.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::cast_possible_truncation)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "dedupstore supports Linux only: its durability and full-disk guarantees rest on \
     posix_fallocate, fsync/msync and CLOCK_REALTIME_COARSE as Linux provides them \
     (see \"Platform: Linux only\" in the crate documentation)"
);

/// The repository's README, whose examples are run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod checkpoint;
mod claim;
mod clock;
mod commit;
mod config;
mod counters;
mod error;
mod format;
mod gc;
mod index;
pub mod inspect;
mod limits;
mod log;
mod meta;
mod poison;
mod record;
mod recovery;
pub mod replica;
mod run_once;
mod segment;
mod snapshot;
mod store;
pub mod vfs;

/// The simulated file system (feature `sim`): the testing seam's other side.
#[cfg(any(test, feature = "sim"))]
#[allow(missing_docs, clippy::cast_possible_truncation)] // being rewritten: documented with it
pub mod sim;

/// Hot-path internals, for micro-benchmarks only. Not a stable API.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::index::{hash_key, shard_of, tag_of, Entry, Shard};
    pub use crate::meta::check as check_meta;
    pub use crate::record::{
        body_len, decode, encode, encode_body, encoded_len, Body, Decoded, Kind, Record,
    };
    pub use crate::segment::check_header as check_segment_header;
}

pub use claim::{fingerprint, Claim, ClaimToken, KeyState};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Checkpoints, Config, Durability, RecoveryMode};
pub use counters::CounterSnapshot;
pub use error::{Error, Result};
pub use gc::GcReport;
pub use limits::{MAX_KEY_LEN, MAX_RESPONSE_LEN, MAX_TTL};
pub use run_once::RunOnce;
pub use snapshot::{verify_snapshot, ExportReport, ImportReport, Phase, Progress, SnapshotInfo};
pub use store::{Outcome, Stats, Store};

//! Exactly-once effects on real brokers: a consumer of Redis Streams (a
//! consumer group) and of NATS JetStream (a durable pull consumer) that
//! takes each broker batch through `claim_batch` → effect → `complete_batch`
//! → ack, with 4 worker threads sharing one [`Store`]; and the harness its
//! kill tests use (servers started on loopback, the consumer process
//! SIGKILLed mid-batch and restarted, the effect ledger audited: see
//! tests/common/mod.rs).
//!
//! The effect is a line per message ID appended to a ledger file, fsynced
//! once per batch: what a real effect (a row in another database, a call
//! to a payment API) costs is a durable write per batch.

pub mod nats;
pub mod rebalance;
pub mod redis_streams;
pub mod transfer;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dedupstore::{fingerprint, Claim, ClaimToken, Config, Durability, Store};

/// How long a claim may take before another worker may take it over. Far
/// longer than a batch takes: a live worker never loses its claim. (A
/// dead process's claims need no lease: the next opening takes them over.)
pub const LEASE: Duration = Duration::from_secs(60);
/// How long completed IDs are kept (longer than any redelivery).
pub const TTL: Duration = Duration::from_secs(24 * 3600);

/// Errors of a consumer run: the store's, the broker client's, I/O.
pub type BoxError = Box<dyn std::error::Error>;

/// A batch from [`Source::next_batch`].
pub type Batch<A> = Option<Vec<Delivery<A>>>;

/// One delivered message: its ID, payload, and what the broker needs to
/// ack it.
pub struct Delivery<A> {
    /// The producer's message ID (the dedup key).
    pub id: String,
    /// The payload (fingerprinted).
    pub payload: Vec<u8>,
    /// The broker's handle to ack it.
    pub ack: A,
}

/// A broker seen by one worker.
pub trait Source {
    /// The broker's ack handle of a message.
    type Ack;
    /// The next batch of at most `max` messages: `Some(empty)` if none is
    /// there now, `None` once every message is acked (the run is over).
    fn next_batch(&mut self, max: usize) -> Result<Batch<Self::Ack>, BoxError>;
    /// Acks these messages.
    fn ack(&mut self, acks: &[&Self::Ack]) -> Result<(), BoxError>;
}

/// The payload of message `id`: deterministic, so that a redelivery has
/// the same fingerprint.
pub fn payload_of(id: &str) -> Vec<u8> {
    format!("{id} {:064}", fingerprint(id.as_bytes())).into_bytes()
}

/// The effect ledger: one line per effect, appended and fsynced per batch.
pub struct Ledger(Mutex<File>);

impl Ledger {
    /// Opens (creates) the ledger for appending.
    pub fn open(path: &Path) -> std::io::Result<Ledger> {
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Ledger(Mutex::new(f)))
    }

    /// Applies the effect of these messages: one write, one fsync.
    pub fn apply<'a>(&self, ids: impl Iterator<Item = &'a str>) -> std::io::Result<()> {
        let mut buf = String::new();
        for id in ids {
            buf.push_str(id);
            buf.push('\n');
        }
        if buf.is_empty() {
            return Ok(());
        }
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // One write of less than a page: a kill does not tear it.
        f.write_all(buf.as_bytes())?;
        f.sync_data()
    }
}

/// What a consumer run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    /// Messages received (redeliveries included).
    pub received: u64,
    /// Effects applied.
    pub effects: u64,
    /// Deliveries answered from the store as done before.
    pub duplicates: u64,
    /// Batches processed.
    pub batches: u64,
}

/// With dedup: `claim_batch` → effect for the acquired → `complete_batch`
/// → ack every message acquired or found completed. A message in progress
/// elsewhere is not acked (the broker redelivers it).
pub fn process_dedup<A>(
    store: &Store,
    ledger: &Ledger,
    src: &mut impl Source<Ack = A>,
    batch: &[Delivery<A>],
    t: &mut Totals,
) -> Result<(), BoxError> {
    let items: Vec<(&str, Option<u64>)> = batch
        .iter()
        .map(|d| (d.id.as_str(), Some(fingerprint(&d.payload))))
        .collect();
    let claims = store.claim_batch(&items, LEASE)?;
    let mut acquired: Vec<(usize, ClaimToken)> = Vec::new();
    let mut ack: Vec<&A> = Vec::new();
    for (i, c) in claims.into_iter().enumerate() {
        match c? {
            Claim::Acquired(tok) => acquired.push((i, tok)),
            Claim::Completed { .. } => {
                t.duplicates += 1;
                ack.push(&batch[i].ack);
            }
            Claim::InProgress { .. } => {}
        }
    }
    ledger.apply(acquired.iter().map(|(i, _)| batch[*i].id.as_str()))?;
    t.effects += acquired.len() as u64;
    let done: Vec<(&ClaimToken, Option<&[u8]>)> =
        acquired.iter().map(|(_, tok)| (tok, None)).collect();
    let answers = store.complete_batch(&done, TTL)?;
    for ((i, _), a) in acquired.iter().zip(answers) {
        // Stale: the lease ran out (it does not, at 60 s); leave the message
        // unacked and let the redelivery find the new owner's result.
        if a.is_ok() {
            ack.push(&batch[*i].ack);
        }
    }
    src.ack(&ack)
}

/// The other APIs, for the throughput table: `claim` / `complete` per
/// message, or `check_and_insert` per message or per batch (no exactly-once
/// effect across a kill: see the README's loss window).
pub fn process_other<A>(
    mode: Mode,
    store: &Store,
    ledger: &Ledger,
    src: &mut impl Source<Ack = A>,
    batch: &[Delivery<A>],
    t: &mut Totals,
) -> Result<(), BoxError> {
    // The effect stays one ledger write + fsync per batch, as in the
    // other modes: only the store calls differ.
    let ids = || batch.iter().map(|d| d.id.as_str());
    let act: Vec<bool> = match mode {
        Mode::Claim => {
            let mut tokens = Vec::with_capacity(batch.len());
            for d in batch {
                match store.claim(&d.id, LEASE, Some(fingerprint(&d.payload)))? {
                    Claim::Acquired(tok) => tokens.push(Some(tok)),
                    _ => tokens.push(None),
                }
            }
            ledger.apply(
                ids()
                    .zip(&tokens)
                    .filter(|(_, t)| t.is_some())
                    .map(|(i, _)| i),
            )?;
            for tok in tokens.iter().flatten() {
                store.complete(tok, None, TTL)?;
            }
            tokens.iter().map(Option::is_some).collect()
        }
        Mode::Insert => {
            let mut act = Vec::with_capacity(batch.len());
            for d in batch {
                act.push(store.check_and_insert(d.id.as_bytes(), TTL)?.is_inserted());
            }
            act
        }
        _ => {
            let keys: Vec<&str> = ids().collect();
            let out = store.check_and_insert_batch(&keys, TTL)?;
            out.iter().map(|o| o.is_inserted()).collect()
        }
    };
    if mode != Mode::Claim {
        ledger.apply(ids().zip(&act).filter(|(_, a)| **a).map(|(i, _)| i))?;
    }
    let n = act.iter().filter(|a| **a).count() as u64;
    t.effects += n;
    t.duplicates += batch.len() as u64 - n;
    let ack: Vec<&A> = batch.iter().map(|d| &d.ack).collect();
    src.ack(&ack)
}

/// Without dedup: effect for every message, then ack.
pub fn process_plain<A>(
    ledger: &Ledger,
    src: &mut impl Source<Ack = A>,
    batch: &[Delivery<A>],
    t: &mut Totals,
) -> Result<(), BoxError> {
    ledger.apply(batch.iter().map(|d| d.id.as_str()))?;
    t.effects += batch.len() as u64;
    let ack: Vec<&A> = batch.iter().map(|d| &d.ack).collect();
    src.ack(&ack)
}

/// How the consumer dedups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No dedup: effect, ack.
    Plain,
    /// `claim_batch` → effect → `complete_batch` → ack (the exactly-once path).
    ClaimBatch,
    /// `claim` → effect → `complete` per message.
    Claim,
    /// `check_and_insert` per message → effect.
    Insert,
    /// `check_and_insert_batch` per broker batch → effect.
    InsertBatch,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        Ok(match s {
            "no-dedup" => Mode::Plain,
            "dedup" => Mode::ClaimBatch,
            "claim" => Mode::Claim,
            "insert" => Mode::Insert,
            "insert-batch" => Mode::InsertBatch,
            other => {
                return Err(format!(
                    "mode {other:?}: no-dedup, dedup, claim, insert or insert-batch"
                ))
            }
        })
    }
}

/// Runs `workers` threads, each with its own source from `connect`, until
/// every message is acked. Returns the totals and the time from the first
/// batch received to the last one acked.
pub fn run<S: Source>(
    work: &Path,
    mode: Mode,
    workers: usize,
    batch: usize,
    connect: impl Fn(usize) -> Result<S, BoxError> + Sync,
) -> Result<(Totals, Duration, u64), BoxError> {
    let store = if mode != Mode::Plain {
        Some(Store::open(
            work.join("store"),
            Config::default().durability(Durability::Immediate),
        )?)
    } else {
        None
    };
    let ledger = Ledger::open(&work.join("ledger"))?;
    let first: Mutex<Option<Instant>> = Mutex::new(None);
    let last: Mutex<Option<Instant>> = Mutex::new(None);
    let totals = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (store, ledger, first, last, connect) =
                    (&store, &ledger, &first, &last, &connect);
                sc.spawn(move || -> Result<Totals, String> {
                    let mut src = connect(w).map_err(|e| e.to_string())?;
                    let mut t = Totals::default();
                    while let Some(b) = src.next_batch(batch).map_err(|e| e.to_string())? {
                        if b.is_empty() {
                            continue;
                        }
                        first
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert_with(Instant::now);
                        t.received += b.len() as u64;
                        t.batches += 1;
                        let r = match (store, mode) {
                            (Some(s), Mode::ClaimBatch) => {
                                process_dedup(s, ledger, &mut src, &b, &mut t)
                            }
                            (Some(s), _) => process_other(mode, s, ledger, &mut src, &b, &mut t),
                            (None, _) => process_plain(ledger, &mut src, &b, &mut t),
                        };
                        r.map_err(|e| e.to_string())?;
                        *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                    }
                    Ok(t)
                })
            })
            .collect();
        let mut all = Totals::default();
        for h in handles {
            let t = h.join().map_err(|_| "worker panicked".to_string())??;
            all.received += t.received;
            all.effects += t.effects;
            all.duplicates += t.duplicates;
            all.batches += t.batches;
        }
        Ok::<_, String>(all)
    })?;
    let took = match (
        *first.lock().unwrap_or_else(|p| p.into_inner()),
        *last.lock().unwrap_or_else(|p| p.into_inner()),
    ) {
        (Some(a), Some(b)) => b - a,
        _ => Duration::ZERO,
    };
    let syncs = store.as_ref().map_or(0, |s| s.stats().syncs);
    if let Some(s) = store {
        s.close()?;
    }
    Ok((totals, took, syncs))
}

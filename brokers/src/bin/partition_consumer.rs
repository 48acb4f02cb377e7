//! A consumer of a partitioned Redis Streams topic whose partitions are
//! assigned and revoked by an orchestrator (tests/rebalance.rs):
//!
//! `partition-consumer <redis-addr> <topic> <group> <name> <work-dir> <remote-dir> <batch> <ack-every> <ship-interval-ms>`
//!
//! Commands, one per line on stdin:
//! The process keeps one dedupstore namespace group in `<work-dir>/ns`,
//! with one namespace `p<p>` per partition it owns.
//!
//! - `assign <p>`: restore partition p's dedup state from the object store
//!   into a staging directory of the group and install it as namespace
//!   `p<p>` (a new, empty namespace if nothing was ever shipped), start shipping
//!   it every `ship-interval-ms` in the background, take over the entries
//!   of p's stream still pending in the group (the previous owner's unacked
//!   deliveries: the redeliveries of a move), then consume p. Answers
//!   `assigned p=<p> restored=<0|1> takeover=<entries taken over>`.
//! - `revoke <p>`: stop consuming p (no batch of p is in flight: batches
//!   run on this one thread), stop the background rounds, final sync, final
//!   round, close the namespace and drop it (the local copy). Answers `revoked p=<p> covered=<n>`.
//! - `exit`: revoke every partition, print `DONE ...`, exit 0.
//!
//! Each batch of a partition: `claim_batch` → effect (a line per acquired
//! message ID appended to `<work-dir>/ledger`, one fsync) → `complete_batch`
//! → the deliveries join the partition's unacked list, acked with one
//! `XACK` once it holds `ack-every` of them or the partition has nothing
//! new. Acks lag on purpose: a revoke does not ack the list, so a moved
//! partition gets up to `ack-every` redeliveries, which the new owner must
//! answer from the state it restored.
//!
//! Each background round prints `shipped p=<p> round=<r> covered=<c>`:
//! `c` is how many effects of p this process had completed (`complete_batch`
//! returned, durable) when the round started, so all of them are in the
//! object store once the line is printed. If the process is killed, the
//! effects of p it did after that (ledger lines of p beyond `c`) are the
//! ones the next owner may repeat: the duplicate bound the test checks.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use dedupstore::{fingerprint, Claim, ClaimToken, Config, Durability, Namespaces, Store};
use dedupstore_brokers::rebalance::{ack, read_new, stream_of, take_over};
use dedupstore_brokers::transfer::{restore, Remote, Shipper};
use dedupstore_brokers::{BoxError, Delivery, Ledger, LEASE, TTL};

type Res<T> = Result<T, BoxError>;

struct Args {
    topic: String,
    group: String,
    name: String,
    work: PathBuf,
    remote: Remote,
    batch: usize,
    ack_every: usize,
    interval: Duration,
}

/// A delivery waiting in a partition's backlog, and whether it came from
/// the take-over at assign (a redelivery of a move).
struct Queued {
    d: Delivery<String>,
    taken_over: bool,
}

/// The background shipping of one partition: dropping the sender stops it.
type Rounds = (mpsc::Sender<()>, JoinHandle<Shipper>);

struct Part {
    stream: String,
    store: Arc<Store>,
    rounds: Option<Rounds>,
    backlog: VecDeque<Queued>,
    unacked: Vec<String>,
}

/// Per-partition counts over the life of the process (kept across
/// revokes, so that they compare with this process's ledger).
#[derive(Default)]
struct Counts {
    /// Effects done (ledger lines written).
    effects: u64,
    /// Effects completed: `complete_batch` returned for them.
    completed: Arc<AtomicU64>,
}

#[derive(Default)]
struct Totals {
    received: u64,
    effects: u64,
    /// Deliveries answered `Completed` (not repeated).
    answered: u64,
    /// Of those, deliveries taken over at an assign.
    answered_taken_over: u64,
    taken_over: u64,
    assigns: u64,
    restored: u64,
}

struct Consumer {
    a: Args,
    conn: redis::Connection,
    ledger: Ledger,
    /// One namespace per owned partition.
    ns: Namespaces,
    parts: BTreeMap<u32, Part>,
    counts: HashMap<u32, Counts>,
    t: Totals,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("partition-consumer: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let v: Vec<String> = std::env::args().collect();
    if v.len() != 10 {
        return Err("usage: partition-consumer <redis-addr> <topic> <group> <name> <work-dir> <remote-dir> <batch> <ack-every> <ship-interval-ms>".into());
    }
    let a = Args {
        topic: v[2].clone(),
        group: v[3].clone(),
        name: v[4].clone(),
        work: PathBuf::from(&v[5]),
        remote: Remote::local(Path::new(&v[6]))?,
        batch: v[7].parse()?,
        ack_every: v[8].parse()?,
        interval: Duration::from_millis(v[9].parse()?),
    };
    std::fs::create_dir_all(a.work.join("parts"))?;
    let conn = redis::Client::open(format!("redis://{}/", v[1]))?.get_connection()?;
    let ledger = Ledger::open(&a.work.join("ledger"))?;
    let (tx, commands) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let c_work = a.work.clone();
    let mut c = Consumer {
        a,
        conn,
        ledger,
        ns: Namespaces::open(
            c_work.join("ns"),
            Config::default().durability(Durability::Immediate),
        )?,
        parts: BTreeMap::new(),
        counts: HashMap::new(),
        t: Totals::default(),
    };
    println!("ready");
    loop {
        // Commands first: a revoke stops the partition before its next batch.
        let mut wait = false;
        loop {
            let cmd = if wait {
                match commands.recv_timeout(Duration::from_millis(10)) {
                    Ok(cmd) => cmd,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return Err("stdin closed".into()),
                }
            } else {
                match commands.try_recv() {
                    Ok(cmd) => cmd,
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return Err("stdin closed".into()),
                }
            };
            wait = false;
            if !c.command(cmd.trim())? {
                return Ok(());
            }
        }
        let busy = c.step()?;
        if !busy {
            // Nothing to do anywhere: wait for a command (briefly).
            match commands.recv_timeout(Duration::from_millis(10)) {
                Ok(cmd) => {
                    if !c.command(cmd.trim())? {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err("stdin closed".into()),
            }
        }
    }
}

impl Consumer {
    /// Runs one command; `false` after `exit`.
    fn command(&mut self, cmd: &str) -> Res<bool> {
        let (verb, arg) = cmd.split_once(' ').unwrap_or((cmd, ""));
        match verb {
            "assign" => self.assign(arg.parse()?)?,
            "revoke" => self.revoke(arg.parse()?)?,
            "exit" => {
                let owned: Vec<u32> = self.parts.keys().copied().collect();
                for p in owned {
                    self.revoke(p)?;
                }
                let t = &self.t;
                println!(
                    "DONE received={} effects={} answered={} answered_taken_over={} taken_over={} assigns={} restored={}",
                    t.received, t.effects, t.answered, t.answered_taken_over, t.taken_over,
                    t.assigns, t.restored
                );
                return Ok(false);
            }
            "" => {}
            other => return Err(format!("unknown command {other:?}").into()),
        }
        Ok(true)
    }

    fn assign(&mut self, p: u32) -> Res<()> {
        if self.parts.contains_key(&p) {
            return Err(format!("assign {p}: already owned").into());
        }
        let name = format!("p{p}");
        // The object store is the partition's state; a local copy left from
        // an earlier ownership (a revoke cut short) is stale: drop it.
        if self.ns.list().contains(&name) {
            self.ns.drop_namespace(&name)?;
        }
        // Restore before consuming: the previous owner's completed effects
        // must answer `Completed` before any redelivery is claimed.
        let staged = self.ns.staging_dir()?;
        let restored = restore(&self.a.remote, &name, &staged)?;
        let store = if restored {
            self.ns.install(&name, &staged)?
        } else {
            std::fs::remove_dir(&staged)?;
            self.ns.create(&name)?
        };
        let shipper = Shipper::new(store.clone(), &self.a.remote, &name)?;
        let completed = self.counts.entry(p).or_default().completed.clone();
        let rounds = spawn_rounds(p, shipper, completed, self.a.interval);
        let stream = stream_of(&self.a.topic, p);
        let backlog: VecDeque<Queued> =
            take_over(&mut self.conn, &stream, &self.a.group, &self.a.name)?
                .into_iter()
                .map(|d| Queued {
                    d,
                    taken_over: true,
                })
                .collect();
        self.t.assigns += 1;
        self.t.restored += u64::from(restored);
        self.t.taken_over += backlog.len() as u64;
        println!(
            "assigned p={p} restored={} takeover={}",
            u8::from(restored),
            backlog.len()
        );
        self.parts.insert(
            p,
            Part {
                stream,
                store,
                rounds: Some(rounds),
                backlog,
                unacked: Vec::new(),
            },
        );
        Ok(())
    }

    fn revoke(&mut self, p: u32) -> Res<()> {
        let Some(mut part) = self.parts.remove(&p) else {
            return Err(format!("revoke {p}: not owned").into());
        };
        // Unacked deliveries stay pending on purpose (see the module doc);
        // the backlog too (the next owner takes them over).
        let (stop, handle) = part.rounds.take().ok_or("no rounds")?;
        drop(stop);
        let shipper = handle.join().map_err(|_| "shipping thread panicked")?;
        let covered = self
            .counts
            .entry(p)
            .or_default()
            .completed
            .load(Ordering::SeqCst);
        drop(part);
        // Final sync, final round, close; then the local copy goes.
        let name = format!("p{p}");
        shipper.finish()?;
        self.ns.drop_namespace(&name)?;
        println!("revoked p={p} covered={covered}");
        Ok(())
    }

    /// One batch of each owned partition that has work; `false` if none had.
    fn step(&mut self) -> Res<bool> {
        let mut busy = false;
        let owned: Vec<u32> = self.parts.keys().copied().collect();
        for p in owned {
            let Some(part) = self.parts.get_mut(&p) else {
                continue;
            };
            let mut batch: Vec<Queued> = Vec::new();
            while batch.len() < self.a.batch {
                match part.backlog.pop_front() {
                    Some(q) => batch.push(q),
                    None => break,
                }
            }
            if batch.is_empty() {
                batch = read_new(
                    &mut self.conn,
                    &part.stream,
                    &self.a.group,
                    &self.a.name,
                    self.a.batch,
                )?
                .into_iter()
                .map(|d| Queued {
                    d,
                    taken_over: false,
                })
                .collect();
            }
            if batch.is_empty() {
                // Idle: ack what lags.
                ack(&mut self.conn, &part.stream, &self.a.group, &part.unacked)?;
                part.unacked.clear();
                continue;
            }
            busy = true;
            let counts = self.counts.entry(p).or_default();
            process(&self.ledger, part, batch, counts, &mut self.t)?;
            if part.unacked.len() >= self.a.ack_every {
                ack(&mut self.conn, &part.stream, &self.a.group, &part.unacked)?;
                part.unacked.clear();
            }
        }
        Ok(busy)
    }
}

/// claim → effect → complete for one batch of a partition; the deliveries
/// that are done join the unacked list.
fn process(
    ledger: &Ledger,
    part: &mut Part,
    batch: Vec<Queued>,
    counts: &mut Counts,
    t: &mut Totals,
) -> Res<()> {
    t.received += batch.len() as u64;
    let items: Vec<(&str, Option<u64>)> = batch
        .iter()
        .map(|q| (q.d.id.as_str(), Some(fingerprint(&q.d.payload))))
        .collect();
    let claims = part.store.claim_batch(&items, LEASE)?;
    let mut acquired: Vec<(usize, ClaimToken)> = Vec::new();
    let mut retry: Vec<usize> = Vec::new();
    for (i, c) in claims.into_iter().enumerate() {
        match c? {
            Claim::Acquired(tok) => acquired.push((i, tok)),
            Claim::Completed { .. } => {
                t.answered += 1;
                t.answered_taken_over += u64::from(batch[i].taken_over);
                part.unacked.push(batch[i].d.ack.clone());
            }
            // The same ID earlier in this batch (a producer's duplicate):
            // claim it again in the next batch, after its first completed.
            Claim::InProgress { .. } => retry.push(i),
        }
    }
    ledger.apply(acquired.iter().map(|(i, _)| batch[*i].d.id.as_str()))?;
    counts.effects += acquired.len() as u64;
    t.effects += acquired.len() as u64;
    let done: Vec<(&ClaimToken, Option<&[u8]>)> =
        acquired.iter().map(|(_, tok)| (tok, None)).collect();
    for (a, (i, _)) in part
        .store
        .complete_batch(&done, TTL)?
        .into_iter()
        .zip(&acquired)
    {
        a?;
        part.unacked.push(batch[*i].d.ack.clone());
    }
    // Counted only now that the completions are durable (Immediate): a
    // round that starts after this covers them.
    counts
        .completed
        .fetch_add(acquired.len() as u64, Ordering::SeqCst);
    let mut batch: Vec<Option<Queued>> = batch.into_iter().map(Some).collect();
    for i in retry.into_iter().rev() {
        if let Some(q) = batch[i].take() {
            part.backlog.push_front(q);
        }
    }
    Ok(())
}

/// Ships partition `p` every `interval` until the sender is dropped, then
/// hands the shipper back for the final round.
fn spawn_rounds(p: u32, shipper: Shipper, completed: Arc<AtomicU64>, interval: Duration) -> Rounds {
    let (stop, rx) = mpsc::channel::<()>();
    let handle = std::thread::spawn(move || -> Shipper {
        let mut round = 0u64;
        loop {
            match rx.recv_timeout(interval) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return shipper,
            }
            let covered = completed.load(Ordering::SeqCst);
            match shipper.ship() {
                Ok(true) => {
                    round += 1;
                    println!("shipped p={p} round={round} covered={covered}");
                }
                Ok(false) => {}
                Err(e) => {
                    // A failing replication must not go unnoticed: the
                    // orchestrator sees the process die.
                    eprintln!("partition-consumer: shipping p{p}: {e}");
                    std::process::exit(2);
                }
            }
        }
    });
    (stop, handle)
}

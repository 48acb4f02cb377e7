//! Partitions moved between two consumer processes (`partition-consumer`)
//! over a partitioned Redis Streams topic on a real redis-server on
//! loopback, the dedup state of each partition following it through an
//! object store (a local-file-system one in a temp dir):
//!
//! - cooperative handoff (revoke: stop, final sync, final round, close;
//!   assign: restore, take over the pending entries, consume), several
//!   moves: every message's effect exactly once, 0 duplicate effects;
//! - crash: the owner SIGKILLed mid-stream, its partitions assigned to the
//!   survivor, restored from the latest shipped round: no message lost, and
//!   the duplicate effects measured against the bound the killed process's
//!   own reports give (its effects after the last round it reported
//!   shipped).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dedupstore_brokers::rebalance::{drained, partition_of, produce, stream_of};

const PARTITIONS: u32 = 8;
/// Distinct message IDs per topic.
const UNIQUE: usize = 12_000;
const BATCH: usize = 10;
/// A partition's deliveries are acked once this many are done (or it is
/// idle): a moved partition gets up to this many redeliveries.
const ACK_EVERY: usize = 40;
/// Background replication interval of each partition.
const INTERVAL_MS: u64 = 200;
const GROUP: &str = "g";
/// A guard against a hung run (not a timed assertion).
const PATIENCE: Duration = Duration::from_secs(90);

/// A `partition-consumer` process: commands on its stdin, its stdout lines
/// collected by a thread; SIGKILLed if dropped while running.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    work: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn start(addr: &str, topic: &str, name: &str, remote: &Path) -> Proc {
        let work = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_partition-consumer"))
            .args([
                addr,
                topic,
                GROUP,
                name,
                work.path().to_str().expect("UTF-8 temp path"),
                remote.to_str().expect("UTF-8 temp path"),
                &BATCH.to_string(),
                &ACK_EVERY.to_string(),
                &INTERVAL_MS.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn partition-consumer");
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(l);
            }
        });
        let p = Proc {
            name: name.into(),
            child,
            stdin,
            lines,
            reader: Some(reader),
            work,
        };
        p.wait_line(|l| l == "ready");
        p
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("running");
        writeln!(stdin, "{cmd}").expect("write a command");
        stdin.flush().expect("flush a command");
    }

    /// Waits for a line matching `pred`, among those from the `from`th on;
    /// returns it.
    fn wait_line_from(&self, from: usize, pred: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            // Finished first: a line printed before the exit is then read.
            let exited = self.reader.as_ref().is_none_or(JoinHandle::is_finished);
            if let Some(l) = self.lines().into_iter().skip(from).find(|l| pred(l)) {
                return l;
            }
            assert!(
                !exited,
                "{}: exited; its output: {:?}",
                self.name,
                self.lines()
            );
            assert!(
                t0.elapsed() < PATIENCE,
                "{}: no line; output {:?}",
                self.name,
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Sends `cmd`, waits for its answer (a line starting with `answer`).
    fn call(&mut self, cmd: &str, answer: &str) -> String {
        let from = self.lines().len();
        self.send(cmd);
        self.wait_line_from(from, |l| l.starts_with(answer))
    }

    fn wait_line(&self, pred: impl Fn(&str) -> bool) -> String {
        self.wait_line_from(0, pred)
    }

    fn assign(&mut self, p: u32) -> String {
        self.call(&format!("assign {p}"), &format!("assigned p={p} "))
    }

    fn revoke(&mut self, p: u32) {
        self.call(&format!("revoke {p}"), &format!("revoked p={p} "));
    }

    /// SIGKILL; every line it printed is read afterwards.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
        if let Some(r) = self.reader.take() {
            r.join().expect("reader");
        }
        self.stdin = None;
    }

    /// `exit`, then its DONE line's fields.
    fn exit(&mut self) -> HashMap<String, u64> {
        let done = self.call("exit", "DONE ");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "{}: {status}", self.name);
        fields(&done)
    }

    fn ledger(&self) -> Vec<String> {
        std::fs::read_to_string(self.work.path().join("ledger"))
            .map(|t| t.lines().map(String::from).collect())
            .unwrap_or_default()
    }
}

fn fields(line: &str) -> HashMap<String, u64> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// The topic's messages in production order: `UNIQUE` IDs, and producer
/// duplicates: every 25th message again 300 messages later, every 97th
/// at once (then often in the same batch as its first copy).
fn messages(topic: &str) -> (Vec<String>, Vec<String>) {
    let ids: Vec<String> = (0..UNIQUE).map(|i| format!("{topic}-{i:06}")).collect();
    let mut sent = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        sent.push(id.clone());
        if i % 97 == 0 {
            sent.push(id.clone());
        }
        if i >= 300 && i % 25 == 0 {
            sent.push(ids[i - 300].clone());
        }
    }
    (ids, sent)
}

/// Effects per message ID over these processes' ledgers.
fn effects(procs: &[&Proc]) -> HashMap<String, usize> {
    let mut n: HashMap<String, usize> = HashMap::new();
    for p in procs {
        for l in p.ledger() {
            *n.entry(l).or_default() += 1;
        }
    }
    n
}

struct Topic<'a> {
    url: String,
    name: &'a str,
    ids: Vec<String>,
}

impl Topic<'_> {
    /// Waits until the processes' ledgers hold `n` effects in all.
    fn wait_effects(&self, procs: &[&Proc], n: usize) {
        let t0 = Instant::now();
        while procs.iter().map(|p| p.ledger().len()).sum::<usize>() < n {
            assert!(t0.elapsed() < PATIENCE, "{}: no progress", self.name);
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until every message has its effect and every partition's
    /// stream is read to the end and acked.
    fn wait_done(&self, procs: &[&Proc]) {
        let mut conn = redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection())
            .expect("connect");
        let t0 = Instant::now();
        loop {
            let seen = effects(procs);
            if self.ids.iter().all(|i| seen.contains_key(i))
                && (0..PARTITIONS)
                    .all(|p| drained(&mut conn, &stream_of(self.name, p), GROUP).expect("XINFO"))
            {
                return;
            }
            assert!(t0.elapsed() < PATIENCE, "{}: not done", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Moves `parts` from `from` to `to`: revoke (answered once the state is
/// shipped), then assign (answered once restored). Returns the takeover
/// counts.
fn handoff(from: &mut Proc, to: &mut Proc, parts: &[u32]) -> u64 {
    let mut taken = 0;
    for &p in parts {
        from.revoke(p);
        let a = fields(&to.assign(p));
        assert_eq!(a["restored"], 1, "p{p}: assigned without its shipped state");
        taken += a["takeover"];
    }
    taken
}

fn setup(topic: &str) -> Option<(common::Server, Topic<'_>)> {
    let server = common::start_redis()?;
    let url = format!("redis://{}/", server.addr);
    let (ids, sent) = messages(topic);
    produce(&url, topic, GROUP, PARTITIONS, &sent).expect("produce");
    eprintln!(
        "{topic}: {} messages ({} distinct IDs) over {PARTITIONS} partitions",
        sent.len(),
        ids.len()
    );
    Some((
        server,
        Topic {
            url,
            name: topic,
            ids,
        },
    ))
}

/// Consumers a (partitions 0-3) and b (4-7).
fn pair(addr: &str, topic: &str, remote: &Path) -> (Proc, Proc) {
    let mut a = Proc::start(addr, topic, "a", remote);
    let mut b = Proc::start(addr, topic, "b", remote);
    for p in 0..PARTITIONS {
        if p < PARTITIONS / 2 {
            a.assign(p);
        } else {
            b.assign(p);
        }
    }
    (a, b)
}

#[test]
fn cooperative_handoffs_repeat_no_effect() {
    let Some((server, topic)) = setup("coop") else {
        return;
    };
    let remote = tempfile::tempdir().expect("temp dir");
    let (mut a, mut b) = pair(&server.addr, topic.name, remote.path());
    // (progress in effects, partitions a gives b, partitions b gives a)
    let moves: [(usize, &[u32], &[u32]); 4] = [
        (UNIQUE * 15 / 100, &[0, 1], &[]),
        (UNIQUE * 30 / 100, &[], &[4, 5, 0]),
        (UNIQUE * 45 / 100, &[2, 4], &[6]),
        (UNIQUE * 60 / 100, &[6, 3], &[1, 2, 7]),
    ];
    let mut taken = 0;
    let mut moved = 0;
    for (at, ab, ba) in moves {
        topic.wait_effects(&[&a, &b], at);
        taken += handoff(&mut a, &mut b, ab);
        taken += handoff(&mut b, &mut a, ba);
        moved += ab.len() + ba.len();
    }
    topic.wait_done(&[&a, &b]);
    let (da, db) = (a.exit(), b.exit());
    let seen = effects(&[&a, &b]);
    let missing = topic.ids.iter().filter(|i| !seen.contains_key(*i)).count();
    let twice: usize = seen.values().map(|n| n - 1).sum();
    let answered_moved = da["answered_taken_over"] + db["answered_taken_over"];
    eprintln!(
        "cooperative: {moved} partition moves, {taken} pending entries taken over at assigns, \
         {answered_moved} of them answered Completed from the restored state; \
         {missing} messages without effect, {twice} effects twice; a: {da:?}; b: {db:?}"
    );
    assert_eq!(seen.len(), topic.ids.len(), "effects of unknown IDs");
    assert_eq!(missing, 0, "messages lost");
    assert_eq!(twice, 0, "duplicate effects across cooperative handoffs");
    assert!(
        answered_moved > 0,
        "no redelivery at a move was answered from a restored state: the test shows nothing"
    );
}

#[test]
fn crash_of_an_owner_repeats_at_most_its_unshipped_effects() {
    let Some((server, topic)) = setup("crash") else {
        return;
    };
    let remote = tempfile::tempdir().expect("temp dir");
    let (mut a, mut b) = pair(&server.addr, topic.name, remote.path());
    topic.wait_effects(&[&a, &b], UNIQUE * 20 / 100);
    handoff(&mut b, &mut a, &[4]);
    let victim_parts = [0, 1, 2, 3, 4];
    topic.wait_effects(&[&a, &b], UNIQUE * 40 / 100);
    // Kill mid-stream once a has shipped a round of each of its partitions
    // since the move (so the state restored is a background round's).
    let after = a.lines().len();
    for p in victim_parts {
        let prefix = format!("shipped p={p} ");
        let t0 = Instant::now();
        while !a.lines()[after..].iter().any(|l| l.starts_with(&prefix)) {
            assert!(t0.elapsed() < PATIENCE, "a shipped no round of p{p}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    a.kill();
    // The bound, from what a reported: per partition, its effects (ledger
    // lines) beyond the last round it reported shipped (`covered`).
    let mut covered: BTreeMap<u32, u64> = BTreeMap::new();
    for l in a.lines() {
        if l.starts_with("shipped ") || l.starts_with("revoked ") {
            let f = fields(&l);
            covered.insert(u32::try_from(f["p"]).expect("p"), f["covered"]);
        }
    }
    let ledger_a = a.ledger();
    let mut bound = 0u64;
    let mut exposure = Vec::new();
    for p in victim_parts {
        let done = ledger_a
            .iter()
            .filter(|id| partition_of(id, PARTITIONS) == p)
            .count() as u64;
        let c = covered.get(&p).copied().unwrap_or(0);
        assert!(c <= done, "p{p}: covered {c} > effects {done}");
        bound += done - c;
        exposure.push(format!("p{p}: {done} effects, {c} shipped"));
    }
    // The survivor takes a's partitions, restored from the latest rounds.
    let mut restored_takeover = 0;
    for p in victim_parts {
        let f = fields(&b.assign(p));
        assert_eq!(f["restored"], 1, "p{p}: nothing restored after the kill");
        restored_takeover += f["takeover"];
    }
    // A new process joins and gets three partitions cooperatively.
    topic.wait_effects(&[&a, &b], UNIQUE * 70 / 100);
    let mut c = Proc::start(&server.addr, topic.name, "c", remote.path());
    handoff(&mut b, &mut c, &[0, 5, 6]);
    topic.wait_done(&[&a, &b, &c]);
    let (db, dc) = (b.exit(), c.exit());
    let seen = effects(&[&a, &b, &c]);
    let missing = topic.ids.iter().filter(|i| !seen.contains_key(*i)).count();
    let twice: Vec<&String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    let extra: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "crash: a SIGKILLed owning p0-p4 after {} effects, replication every {INTERVAL_MS} ms, \
         batches of {BATCH}, acks every {ACK_EVERY}; survivor took over {restored_takeover} \
         pending entries; duplicate effects measured {extra} (bound from a's reports {bound}: \
         {}); {missing} messages without effect; b: {db:?}; c: {dc:?}",
        ledger_a.len(),
        exposure.join(", ")
    );
    assert_eq!(seen.len(), topic.ids.len(), "effects of unknown IDs");
    assert_eq!(missing, 0, "messages lost");
    let in_a: BTreeSet<&String> = ledger_a.iter().collect();
    for id in &twice {
        assert!(
            in_a.contains(id) && victim_parts.contains(&partition_of(id, PARTITIONS)),
            "{id} repeated, but not an effect of the killed owner's partitions"
        );
    }
    assert!(
        extra as u64 <= bound,
        "{extra} duplicate effects > {bound}, the killed owner's unshipped effects"
    );
}

//! The broker kill-test harness: a server on loopback per test, a producer,
//! the consumer process (`broker-consumer`) SIGKILLed mid-batch several
//! times and restarted, the ledger audited; then the same consumer with and
//! without dedup on fresh streams, for a throughput ratio measured in one
//! run (printed, not asserted).

#![allow(dead_code, reason = "each test file uses its broker's half")]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Messages per kill test, and per throughput run.
pub const MESSAGES: usize = 20_000;
pub const KILLS: usize = 5;
pub const WORKERS: usize = 4;
pub const BATCH: usize = 20;

/// A broker server started for one test, killed when dropped (a panicking
/// test included).
pub struct Server {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A consumer process, SIGKILLed if dropped while running.
struct Consumer(Child);

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

fn find(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// Starts `bin` with `args(port, dir)` and waits until `ready(addr)`.
/// `None` (with a message) if the binary is absent and
/// `DEDUPSTORE_SKIP_BROKERS=1` is set; a missing binary otherwise fails.
pub fn start(
    bin: &str,
    args: impl Fn(u16, &Path) -> Vec<String>,
    ready: impl Fn(&str) -> bool,
) -> Option<Server> {
    let Some(exe) = find(bin) else {
        if std::env::var("DEDUPSTORE_SKIP_BROKERS").as_deref() == Ok("1") {
            eprintln!("SKIPPED: {bin} is not installed and DEDUPSTORE_SKIP_BROKERS=1");
            return None;
        }
        panic!(
            "{bin} is not installed (Debian: apt-get install redis-server nats-server); \
             set DEDUPSTORE_SKIP_BROKERS=1 to skip the broker tests"
        );
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let child = Command::new(exe)
        .args(args(port, dir.path()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
    let server = Server {
        child,
        addr: format!("127.0.0.1:{port}"),
        _dir: dir,
    };
    let t0 = Instant::now();
    while !ready(&server.addr) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{bin} did not come up on {}",
            server.addr
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(server)
}

/// Starts a `redis-server` on loopback (no persistence): see [`start`].
pub fn start_redis() -> Option<Server> {
    start(
        "redis-server",
        |port, dir| {
            [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir.to_str().expect("UTF-8 temp path"),
            ]
            .map(String::from)
            .to_vec()
        },
        |addr| {
            redis::Client::open(format!("redis://{addr}/"))
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        },
    )
}

fn message_ids(prefix: &str) -> Vec<String> {
    (0..MESSAGES).map(|i| format!("{prefix}{i:06}")).collect()
}

fn consumer(kind: &str, addr: &str, stream: &str, work: &Path, mode: &str) -> Consumer {
    let c = Command::new(env!("CARGO_BIN_EXE_broker-consumer"))
        .args([
            kind,
            addr,
            stream,
            work.to_str().expect("UTF-8 temp path"),
            mode,
            &WORKERS.to_string(),
            &BATCH.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn broker-consumer");
    Consumer(c)
}

/// Waits for a consumer to finish; returns its DONE line's fields.
fn finish(mut c: Consumer) -> HashMap<String, u64> {
    let t0 = Instant::now();
    loop {
        if let Some(status) = c.0.try_wait().expect("wait") {
            let mut out = String::new();
            if let Some(mut so) = c.0.stdout.take() {
                std::io::Read::read_to_string(&mut so, &mut out).expect("read stdout");
            }
            assert!(status.success(), "consumer failed: {status}; stdout: {out}");
            let line = out
                .lines()
                .find(|l| l.starts_with("DONE "))
                .unwrap_or_else(|| panic!("no DONE line in {out:?}"));
            return line
                .split_whitespace()
                .skip(1)
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.parse().expect("number")))
                .collect();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "consumer did not finish in 90 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ledger_lines(work: &Path) -> usize {
    std::fs::read(work.join("ledger")).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

/// The kill test, then the throughput comparison (no dedup against
/// `claim_batch`, and the `other` consumer modes too). `produce(stream,
/// ids)` puts the messages on a fresh stream (and creates its
/// group/consumer).
pub fn kill_and_measure(kind: &str, addr: &str, other: &[&str], produce: impl Fn(&str, &[String])) {
    let ids = message_ids("m-");
    produce("kill", &ids);
    let work = tempfile::tempdir().expect("temp dir");
    let step = MESSAGES / (KILLS + 2);
    let mut kills = 0;
    for round in 0..KILLS {
        let mut c = consumer(kind, addr, "kill", work.path(), "dedup");
        let target = ledger_lines(work.path()) + step;
        let t0 = Instant::now();
        while ledger_lines(work.path()) < target {
            if c.0.try_wait().expect("wait").is_some() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "round {round}: no progress"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        if c.0.try_wait().expect("wait").is_none() {
            c.0.kill().expect("SIGKILL the consumer");
            c.0.wait().expect("reap");
            kills += 1;
        }
    }
    let done = finish(consumer(kind, addr, "kill", work.path(), "dedup"));
    let text = std::fs::read_to_string(work.path().join("ledger")).expect("ledger");
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for l in text.lines() {
        *seen.entry(l).or_default() += 1;
    }
    let unknown: Vec<&&str> = seen
        .keys()
        .filter(|k| !ids.iter().any(|i| i == **k))
        .take(3)
        .collect();
    assert!(
        unknown.is_empty(),
        "ledger lines that are no message ID: {unknown:?}"
    );
    let missing = ids
        .iter()
        .filter(|i| !seen.contains_key(i.as_str()))
        .count();
    let twice: usize = seen.values().map(|&n| n - 1).sum();
    // A duplicate effect needs a kill between a batch's ledger write and its
    // complete_batch becoming durable; each worker has one batch in flight.
    let bound = kills * WORKERS * BATCH;
    eprintln!(
        "{kind}: {MESSAGES} messages, {kills} SIGKILLs mid-batch, {WORKERS} workers, batches of \
         {BATCH}: {missing} missing from the ledger, {twice} effects twice (bound {bound} = \
         kills x workers x batch); last run: {done:?}"
    );
    assert_eq!(missing, 0, "messages lost across kills");
    assert!(twice <= bound, "{twice} duplicate effects > {bound}");
    assert!(kills >= 3, "only {kills} kills landed mid-run");

    // Throughput, same consumer with and without dedup, one run each.
    let rate = |stream: &str, mode: &str| {
        produce(stream, &message_ids(&format!("{stream}-")));
        let w = tempfile::tempdir().expect("temp dir");
        let d = finish(consumer(kind, addr, stream, w.path(), mode));
        assert_eq!(
            ledger_lines(w.path()),
            MESSAGES,
            "{stream}: one effect per message"
        );
        let secs = d["micros"] as f64 / 1e6;
        (MESSAGES as f64 / secs, d)
    };
    let (plain, _) = rate("plain", "no-dedup");
    let (dedup, d) = rate("dedup", "dedup");
    eprintln!(
        "{kind} throughput, {WORKERS} workers, batches of {BATCH}, Immediate: no dedup \
         {plain:.0} msg/s, claim_batch/complete_batch {dedup:.0} msg/s = {:.2}x; \
         store syncs per batch {:.2} ({} syncs, {} batches)",
        dedup / plain,
        d["syncs"] as f64 / d["batches"] as f64,
        d["syncs"],
        d["batches"]
    );
    for mode in other {
        let (r, d) = rate(&mode.replace('-', "_"), mode);
        eprintln!(
            "{kind} throughput, mode {mode}: {r:.0} msg/s = {:.2}x no dedup ({} store syncs)",
            r / plain,
            d["syncs"]
        );
    }
}

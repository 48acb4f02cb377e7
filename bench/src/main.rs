//! The dedup benchmark driver: one workload, several engines, each in its own
//! process (so peak RSS is its own), every run checked for correct answers.
//!
//! `cargo run --release -p dedupstore-bench -- --ids 5000000`

mod backends;
mod workload;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use backends::{Res, Spec};
use workload::{generate, KeyKind, Params};

#[derive(Parser, Debug, Clone)]
#[command(about = "Dedup workload against dedupstore and the engines users pick instead")]
struct Args {
    /// Messages in the stream (first deliveries + redeliveries).
    #[arg(long, default_value_t = 1_000_000)]
    ids: usize,
    /// Key format: random16 or uuid.
    #[arg(long, default_value = "random16")]
    key: String,
    /// Fraction of messages that redeliver an earlier ID.
    #[arg(long, default_value_t = 0.05)]
    redelivery: f64,
    /// A redelivered ID was first seen at most this many messages back.
    #[arg(long, default_value_t = 100_000)]
    distance: usize,
    #[arg(long, default_value_t = 86_400)]
    ttl_secs: u64,
    /// Comma-separated backend names (default: all built in).
    #[arg(long)]
    backends: Option<String>,
    /// Thread counts for the durable (fsync per message) phase.
    #[arg(long, default_value = "1,4,32", value_delimiter = ',')]
    threads: Vec<usize>,
    /// Seconds per durable run; 0 skips the durable phase.
    #[arg(long, default_value_t = 3.0)]
    durable_secs: f64,
    /// Where stores are created (a real disk, not tmpfs, for honest fsyncs).
    #[arg(long, default_value = "target/bench-data")]
    dir: PathBuf,
    /// Write the results as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Correctness-only smoke run: small, no durable phase, no figures kept.
    #[arg(long)]
    smoke: bool,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Internal: run one backend in this process.
    #[arg(long, hide = true)]
    child: Option<String>,
}

fn main() {
    let mut args = Args::parse();
    if args.smoke {
        args.ids = args.ids.min(20_000);
        args.durable_secs = 0.0;
    }
    if let Some(name) = args.child.clone() {
        match run_child(&args, &name) {
            Ok(v) => println!("{v}"),
            Err(e) => {
                println!("{}", json!({ "backend": name, "error": e.to_string() }));
                std::process::exit(2);
            }
        }
        return;
    }
    std::process::exit(match run_parent(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench failed: {e}");
            1
        }
    });
}

fn params(args: &Args) -> Res<Params> {
    let key = match args.key.as_str() {
        "random16" => KeyKind::Random16,
        "uuid" => KeyKind::Uuid,
        k => return Err(format!("unknown key kind {k}").into()),
    };
    Ok(Params {
        ids: args.ids,
        key,
        redelivery: args.redelivery,
        distance: args.distance.max(1),
        seed: args.seed,
    })
}

fn run_parent(args: &Args) -> Res<()> {
    let wanted: Vec<String> = match &args.backends {
        Some(b) => b.split(',').map(str::to_owned).collect(),
        None => backends::all().iter().map(|s| s.name.to_owned()).collect(),
    };
    let exe = std::env::current_exe()?;
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for name in &wanted {
        eprintln!("running {name} ...");
        let mut cmd = Command::new(&exe);
        cmd.args(std::env::args_os().skip(1))
            .args(["--child", name]);
        let out = cmd.output()?;
        let line = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(line.trim()).map_err(|e| {
            format!(
                "{name}: no result ({e}); stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        if let Some(err) = v.get("error") {
            eprintln!("{name}: FAILED: {err}");
            failed.push(name.clone());
        }
        results.push(v);
    }
    let report = json!({
        "date": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "params": { "ids": args.ids, "key": args.key, "redelivery": args.redelivery, "distance": args.distance,
                    "ttl_secs": args.ttl_secs, "threads": args.threads, "durable_secs": args.durable_secs },
        "results": results,
    });
    println!("{}", markdown(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("wrong answers or errors from: {}", failed.join(", ")).into())
    }
}

fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// A markdown table; each figure with its ratio to dedupstore's.
fn markdown(report: &Value) -> String {
    let rows = report["results"].as_array().cloned().unwrap_or_default();
    let base = rows
        .iter()
        .find(|r| r["backend"] == "dedupstore")
        .cloned()
        .unwrap_or(Value::Null);
    let ratio = |r: &Value, k: &str| -> String {
        match (r[k].as_f64(), base[k].as_f64()) {
            (Some(v), Some(b)) if b > 0.0 => format!(" ({:.2}×)", v / b),
            _ => String::new(),
        }
    };
    let threads: Vec<String> = report["params"]["threads"]
        .as_array()
        .map(|a| a.iter().map(|t| t.to_string()).collect())
        .unwrap_or_default();
    let mut s = String::from("| engine | check-and-insert/s | lookups/s (50% hits) | insert p50 / p99 / p99.9 | lookup p50 / p99 / p99.9 | disk B/ID | peak RSS B/ID | heap B/ID | reopen |");
    for t in &threads {
        s += &format!(" durable {t} thr/s |");
    }
    s += "\n|---|---|---|---|---|---|---|---|---|";
    s += &"---|".repeat(threads.len());
    s += "\n";
    for r in &rows {
        if let Some(e) = r.get("error") {
            s += &format!(
                "| {} | FAILED: {} |\n",
                r["backend"].as_str().unwrap_or("?"),
                e
            );
            continue;
        }
        let lat = |k: &str| {
            let l = &r[k];
            format!("{} / {} / {} µs", l["p50_us"], l["p99_us"], l["p999_us"])
        };
        let per_id = |k: &str| r[k].as_f64().map_or("n/a".into(), |v| format!("{v:.1}"));
        s += &format!(
            "| {} | {}{} | {}{} | {} | {} | {}{} | {}{} | {}{} | {} |",
            r["backend"].as_str().unwrap_or("?"),
            fmt_rate(r["insert_ops"].as_f64().unwrap_or(0.0)),
            ratio(r, "insert_ops"),
            fmt_rate(r["lookup_ops"].as_f64().unwrap_or(0.0)),
            ratio(r, "lookup_ops"),
            lat("insert_latency"),
            lat("lookup_latency"),
            per_id("disk_per_id"),
            ratio(r, "disk_per_id"),
            per_id("peak_rss_per_id"),
            ratio(r, "peak_rss_per_id"),
            per_id("heap_per_id"),
            ratio(r, "heap_per_id"),
            r["reopen_ms"]
                .as_f64()
                .map_or("n/a".into(), |v| format!("{v:.1} ms")),
        );
        for t in &threads {
            let k = format!("durable_{t}");
            s += &match r[&k].as_f64() {
                Some(v) => format!(" {}{} |", fmt_rate(v), ratio(r, &k)),
                None => " n/a |".into(),
            };
        }
        s += "\n";
    }
    s
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// (VmHWM, VmRSS, RssAnon) in bytes, from /proc/self/status.
fn rss() -> (u64, u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"), field("RssAnon:"))
}

/// Allocated bytes of every file under `dir`.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if let Ok(m) = e.metadata() {
                total += if m.is_dir() {
                    disk_usage(&e.path())
                } else {
                    m.blocks() * 512
                };
            }
        }
    }
    total
}

fn latency(h: &Histogram<u64>) -> Value {
    let us = |q: f64| (h.value_at_quantile(q) as f64 / 1000.0 * 100.0).round() / 100.0;
    json!({ "p50_us": us(0.5), "p99_us": us(0.99), "p999_us": us(0.999), "samples": h.len() })
}

/// Latency is sampled on every 8th operation, so timing calls barely touch
/// the throughput figure.
const SAMPLE: usize = 8;

fn run_child(args: &Args, name: &str) -> Res<Value> {
    let spec: Spec = backends::all()
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| format!("unknown backend {name}"))?;
    let p = params(args)?;
    let stream = generate(&p);
    let n = stream.len();
    let ttl_ms = args.ttl_secs * 1000;
    std::fs::create_dir_all(&args.dir)?;
    let tmp = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&args.dir)?;
    let dir = tmp.path().join("store");
    std::fs::create_dir_all(&dir)?;

    // Lookup queries, built before measuring memory: half IDs that were
    // inserted, half fresh ones.
    let mut rng = fastrand::Rng::with_seed(p.seed ^ 0xABCD);
    let mut queries = Vec::with_capacity(n * stream.key_len);
    for i in 0..n {
        if i % 2 == 0 {
            let src = stream.firsts[rng.usize(..stream.firsts.len())] as usize;
            queries.extend_from_slice(stream.key(src));
        } else {
            workload::new_key(&mut rng, p.key, &mut queries);
        }
    }
    let (_, rss_before, anon_before) = rss();

    let mut b = (spec.open)(&dir)?;
    let now = now_ms();
    let mut hist = Histogram::<u64>::new(3)?;
    let mut dups = 0usize;
    let t = Instant::now();
    for i in 0..n {
        let key = stream.key(i);
        let new = if i % SAMPLE == 0 {
            let t0 = Instant::now();
            let r = b.check_and_insert(key, now, ttl_ms)?;
            hist.record(t0.elapsed().as_nanos() as u64)?;
            r
        } else {
            b.check_and_insert(key, now, ttl_ms)?
        };
        dups += usize::from(!new);
    }
    let insert_secs = t.elapsed().as_secs_f64();
    if dups != stream.duplicates {
        return Err(format!(
            "found {dups} duplicates, {} were injected",
            stream.duplicates
        )
        .into());
    }
    let insert_latency = latency(&hist);

    let mut hist = Histogram::<u64>::new(3)?;
    let mut hits = 0usize;
    let t = Instant::now();
    for i in 0..n {
        let key = &queries[i * stream.key_len..(i + 1) * stream.key_len];
        let hit = if i % SAMPLE == 0 {
            let t0 = Instant::now();
            let r = b.contains(key, now)?;
            hist.record(t0.elapsed().as_nanos() as u64)?;
            r
        } else {
            b.contains(key, now)?
        };
        hits += usize::from(hit);
    }
    let lookup_secs = t.elapsed().as_secs_f64();
    if hits != n.div_ceil(2) {
        return Err(format!("lookups found {hits} hits, {} expected", n.div_ceil(2)).into());
    }
    let lookup_latency = latency(&hist);
    b.flush()?;
    let (hwm, _, anon) = rss();
    let live = stream.firsts.len() as f64;
    drop(b);

    let mut result = json!({
        "backend": name,
        "ids": n,
        "live_ids": stream.firsts.len(),
        "duplicates": dups,
        "insert_ops": n as f64 / insert_secs,
        "lookup_ops": n as f64 / lookup_secs,
        "insert_latency": insert_latency,
        "lookup_latency": lookup_latency,
        "peak_rss_per_id": hwm.saturating_sub(rss_before) as f64 / live,
        "heap_per_id": anon.saturating_sub(anon_before) as f64 / live,
    });
    if spec.persistent {
        result["disk_per_id"] = json!(disk_usage(&dir) as f64 / live);
        let t = Instant::now();
        let mut b = (spec.open)(&dir)?;
        let first = stream.key(0);
        if !b.contains(first, now)? {
            return Err("after reopen the first ID is missing".into());
        }
        result["reopen_ms"] = json!(t.elapsed().as_secs_f64() * 1000.0);
    }
    drop(tmp);

    if let (Some(open), true) = (spec.open_durable, args.durable_secs > 0.0) {
        for &threads in &args.threads {
            let tmp = tempfile::Builder::new()
                .prefix("durable-")
                .tempdir_in(&args.dir)?;
            let d = open(tmp.path())?;
            let ops = AtomicU64::new(0);
            let deadline = Instant::now() + Duration::from_secs_f64(args.durable_secs);
            let t = Instant::now();
            std::thread::scope(|s| -> Res<()> {
                let workers: Vec<_> = (0..threads)
                    .map(|th| {
                        let (d, ops) = (&d, &ops);
                        s.spawn(move || -> Res<()> {
                            let mut i = 0u64;
                            while Instant::now() < deadline {
                                let key = [(th as u64).to_le_bytes(), i.to_le_bytes()].concat();
                                if !d.check_and_insert(&key, now, ttl_ms)? {
                                    return Err("a fresh key was reported as a duplicate".into());
                                }
                                i += 1;
                                ops.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(())
                        })
                    })
                    .collect();
                for w in workers {
                    w.join().map_err(|_| "worker panicked")??;
                }
                Ok(())
            })?;
            result[format!("durable_{threads}")] =
                json!(ops.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64());
        }
    }
    Ok(result)
}

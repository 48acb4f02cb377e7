//! The dedup benchmark driver: one workload, several engines, each in its own
//! process (so peak RSS is its own), every run checked for correct answers.
//!
//! `cargo run --release -p dedupstore-bench -- --ids 5000000`

mod backends;
mod measure;
mod reopen;
mod report;
mod snapshot;
mod workload;

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use serde_json::{json, Value};

use backends::{Engine, Res};
use workload::{KeyKind, Params};

#[derive(Parser, Debug, Clone)]
#[command(
    // `--scale` reruns this program with `--ids`/`--batch-sizes` appended:
    // a later occurrence of an option overrides an earlier one.
    args_override_self = true,
    about = "Dedup workload against dedupstore, a fair in-memory ceiling, and the engines users pick instead"
)]
struct Args {
    /// Messages in the stream (first deliveries + redeliveries).
    #[arg(long, default_value_t = 1_000_000)]
    ids: usize,
    /// Key format.
    #[arg(long, value_enum, default_value_t = KeyKind::Random16)]
    key: KeyKind,
    /// Fraction of messages that redeliver an earlier ID.
    #[arg(long, default_value_t = 0.05)]
    redelivery: f64,
    /// A redelivered ID was first seen at most this many messages back.
    #[arg(long, default_value_t = 100_000)]
    distance: usize,
    #[arg(long, default_value_t = 86_400)]
    ttl_secs: u64,
    /// Engines to run, comma-separated (default: all built in).
    #[arg(long, value_enum, value_delimiter = ',')]
    backends: Vec<Engine>,
    /// Batch sizes for the batched mode (one call per batch).
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000", value_parser = positive)]
    batch_sizes: Vec<usize>,
    /// Thread counts for check-and-insert without fsync (engines that can be
    /// shared across threads: dedupstore, and the sharded map as ceiling).
    #[arg(long, value_delimiter = ',', default_value = "1,2", value_parser = positive)]
    nondurable_threads: Vec<usize>,
    /// Thread counts for the durable (fsync per message) phase.
    #[arg(long, value_delimiter = ',', default_value = "1,4,32,128", value_parser = positive)]
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
    /// Correctness-only run: at most 20k IDs, every mode but the durable
    /// one; prints whether the answers were right, no figures.
    #[arg(long)]
    smoke: bool,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Scale mode: only dedupstore and the map, single-op and batched
    /// (the largest of `--batch-sizes`), at each of these ID counts; prints
    /// each figure and its ratio to the smallest count. 100M needs about
    /// 4 GB of RAM and 4 GB of disk.
    #[arg(long, value_delimiter = ',', value_parser = positive, num_args = 0..)]
    scale: Option<Vec<usize>>,
    /// Only measure reopen at these store sizes (IDs), with and without the
    /// index checkpoint, and the checkpoints' cost to inserts; dedupstore only.
    #[arg(long, value_delimiter = ',', value_parser = positive)]
    reopen_scale: Vec<usize>,
    /// Only measure export and import of a store of each of these sizes
    /// (IDs) to and from a local file; dedupstore only.
    #[arg(long, value_delimiter = ',', value_parser = positive)]
    export_import: Vec<usize>,
    /// Internal: run one backend in this process.
    #[arg(long, value_enum, hide = true)]
    child: Option<Engine>,
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a positive integer")),
    }
}

fn main() {
    let mut args = Args::parse();
    if args.smoke {
        args.ids = args.ids.min(20_000);
        args.durable_secs = 0.0;
    }
    for e in args.backends.iter().chain(&args.child) {
        if !e.built() {
            Args::command()
                .error(
                    ErrorKind::InvalidValue,
                    format!(
                        "backend `{e}` is not in this build: rebuild with --features {}",
                        e.feature()
                    ),
                )
                .exit();
        }
    }
    if !args.reopen_scale.is_empty() {
        if let Err(e) = reopen::run(&args.dir, &args.reopen_scale) {
            eprintln!("bench failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    if !args.export_import.is_empty() {
        if let Err(e) = snapshot::run(&args.dir, &args.export_import) {
            eprintln!("bench failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Some(engine) = args.child {
        match run_child(&args, engine) {
            Ok(v) => println!("{v}"),
            Err(e) => {
                println!(
                    "{}",
                    json!({ "backend": engine.name(), "error": e.to_string() })
                );
                std::process::exit(2);
            }
        }
        return;
    }
    let ran = match &args.scale {
        Some(sizes) => run_scale(&args, sizes),
        None => run_parent(&args),
    };
    std::process::exit(match ran {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench failed: {e}");
            1
        }
    });
}

fn params(args: &Args) -> Params {
    Params {
        ids: args.ids,
        key: args.key,
        redelivery: args.redelivery,
        distance: args.distance.max(1),
        seed: args.seed,
    }
}

/// One engine, every mode, in this process. The match picks the engine's
/// types, so `measure::run` is compiled once per engine (and per key length
/// for the map).
fn run_child(args: &Args, engine: Engine) -> Res<Value> {
    let p = params(args);
    let mut v = match engine {
        Engine::Dedupstore => measure::run(args, &p, backends::dedup::plan()),
        Engine::Map => match p.key {
            KeyKind::Random16 => measure::run(args, &p, backends::hashmap::plan::<16>()),
            KeyKind::Uuid => measure::run(args, &p, backends::hashmap::plan::<36>()),
        },
        #[cfg(feature = "peers")]
        Engine::Redb => measure::run(args, &p, backends::redb_kv::plan()),
        #[cfg(feature = "peers")]
        Engine::Lmdb => measure::run(args, &p, backends::lmdb::plan()),
        #[cfg(feature = "peers")]
        Engine::Fjall => measure::run(args, &p, backends::fjall_kv::plan()),
        #[cfg(feature = "rocksdb")]
        Engine::Rocksdb => measure::run(args, &p, backends::rocks::plan()),
        #[cfg(feature = "redis")]
        Engine::Redis => measure::run(args, &p, backends::redis_kv::plan()),
        #[allow(unreachable_patterns)] // every engine built in
        e => Err(format!("{e} is not in this build").into()),
    }?;
    v["backend"] = json!(engine.name());
    v["label"] = json!(engine.label(p.key));
    Ok(v)
}

/// Runs one engine in a child process (its own peak RSS), with `extra`
/// arguments after the parent's; returns its JSON result.
fn run_one(engine: Engine, extra: &[String]) -> Res<Value> {
    let exe = std::env::current_exe()?;
    let out = Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .args(extra)
        .args(["--child", engine.name()])
        .output()?;
    let line = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str::<Value>(line.trim()).unwrap_or_else(|e| {
        json!({
            "backend": engine.name(),
            "error": format!("no result ({e}); stderr: {}", String::from_utf8_lossy(&out.stderr).trim()),
        })
    }))
}

/// `--scale`: dedupstore and the map at each ID count; every figure, and
/// its ratio to the same engine at the smallest count.
fn run_scale(args: &Args, sizes: &[usize]) -> Res<()> {
    let sizes: Vec<usize> = if sizes.is_empty() {
        vec![1_000_000, 10_000_000, 100_000_000]
    } else {
        sizes.to_vec()
    };
    let batch = args.batch_sizes.iter().copied().max().unwrap_or(1000);
    let mut rows = Vec::new();
    for engine in [Engine::Dedupstore, Engine::Map] {
        let mut first: Option<[f64; 4]> = None;
        for &n in &sizes {
            eprintln!("running {engine} at {n} IDs ...");
            // The child ignores `--scale`: it runs the single-op and the
            // batched modes at `n` IDs (threads and durable skipped).
            let v = run_one(
                engine,
                &[format!("--ids={n}"), format!("--batch-sizes={batch}")],
            )?;
            if let Some(err) = v.get("error") {
                return Err(format!("{engine} at {n} IDs: {err}").into());
            }
            let b = |k: &str| {
                v["batched"]
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(|e| e[k].as_f64())
                    .unwrap_or(0.0)
            };
            let figs = [
                v["insert_ops"].as_f64().unwrap_or(0.0),
                v["lookup_ops"].as_f64().unwrap_or(0.0),
                b("insert_ops"),
                b("lookup_ops"),
            ];
            let base = *first.get_or_insert(figs);
            let cells: Vec<String> = figs
                .iter()
                .zip(base)
                .map(|(f, b)| format!("{} ({:.2}×)", report::fmt_rate(*f), f / b))
                .collect();
            rows.push(format!(
                "| {} | {n} | {} |",
                v["label"].as_str().unwrap_or(engine.name()),
                cells.join(" | ")
            ));
        }
    }
    println!(
        "**Scale**: one thread, no fsync; in brackets the ratio to the same engine at {} IDs.\n",
        sizes[0]
    );
    println!(
        "| engine | IDs | check-and-insert/s | lookups/s | batched ({batch}) insert/s | batched ({batch}) lookup/s |"
    );
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

fn run_parent(args: &Args) -> Res<()> {
    let wanted = if args.backends.is_empty() {
        Engine::built_in()
    } else {
        args.backends.clone()
    };
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for &engine in &wanted {
        eprintln!("running {engine} ...");
        let v = run_one(engine, &[])?;
        if let Some(err) = v.get("error") {
            eprintln!("{engine}: FAILED: {err}");
            failed.push(engine.name());
        }
        results.push(v);
    }
    if args.smoke {
        if failed.is_empty() {
            println!("{}", report::smoke_summary(args, &results));
            return Ok(());
        }
        return Err(format!("wrong answers or errors from: {}", failed.join(", ")).into());
    }
    let report = json!({
        "date": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "params": {
            "ids": args.ids, "key": format!("{:?}", args.key).to_lowercase(),
            "redelivery": args.redelivery, "distance": args.distance, "ttl_secs": args.ttl_secs,
            "batch_sizes": args.batch_sizes, "nondurable_threads": args.nondurable_threads,
            "threads": args.threads, "durable_secs": args.durable_secs,
        },
        "ceiling": report::ceiling(args.key),
        "call_path": report::CALL_PATH,
        "results": results,
    });
    println!("{}", report::markdown(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("wrong answers or errors from: {}", failed.join(", ")).into())
    }
}

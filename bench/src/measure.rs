//! The measuring loops. Each is generic over the engine's trait and is
//! monomorphized per engine, so every engine is called the same way:
//! static dispatch, keys borrowed from buffers built before the clock
//! starts, no allocation by the driver inside a timed loop (a batched call
//! returns its `Vec<bool>` of answers, for every engine alike).
//!
//! Every mode checks its answers before a figure is kept: duplicates found
//! == duplicates injected, lookup hits == hits expected.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::backends::{Backend, Plan, Res, Shared};
use crate::workload::{self, generate, Params, Stream};
use crate::Args;

/// Latency is sampled on one call per this many messages (every call for
/// batches this large or larger). A clock read is serializing (`lfence;
/// rdtsc`): it stops the CPU overlapping the cache misses of independent
/// calls, and sampling every 8th call halved the map's throughput. One in
/// 256 costs it a few percent at most; 5M messages still give ~20k samples.
const SAMPLE_MESSAGES: usize = 256;

/// Runs every mode of one engine: single-op, batched, threaded (if
/// `plan.threaded`), durable (if `plan.durable` and `--durable-secs` > 0).
pub fn run<B: Backend, T: Shared, D: Shared>(
    args: &Args,
    p: &Params,
    plan: Plan<B, T, D>,
) -> Res<Value> {
    let stream = generate(p);
    let n = stream.len();
    let ttl_ms = args.ttl_secs * 1000;
    std::fs::create_dir_all(&args.dir)?;

    // Lookup queries, built before measuring memory: half IDs that were
    // inserted, half fresh ones.
    let mut rng = fastrand::Rng::with_seed(p.seed ^ 0xABCD);
    let mut query_bytes = Vec::with_capacity(n * stream.key_len);
    for i in 0..n {
        if i % 2 == 0 {
            let src = stream.firsts[rng.usize(..stream.firsts.len())] as usize;
            query_bytes.extend_from_slice(stream.key(src));
        } else {
            workload::new_key(&mut rng, p.key, &mut query_bytes);
        }
    }
    let hits_expected = n.div_ceil(2);
    let keys: Vec<&[u8]> = stream.bytes.chunks_exact(stream.key_len).collect();
    let queries: Vec<&[u8]> = query_bytes.chunks_exact(stream.key_len).collect();
    let check_dups = |dups: usize, mode: &str| -> Res<()> {
        if dups != stream.duplicates {
            return Err(format!(
                "{mode}: found {dups} duplicates, {} were injected",
                stream.duplicates
            )
            .into());
        }
        Ok(())
    };
    let check_hits = |hits: usize, mode: &str| -> Res<()> {
        if hits != hits_expected {
            return Err(
                format!("{mode}: lookups found {hits} hits, {hits_expected} expected").into(),
            );
        }
        Ok(())
    };
    let (_, rss_before, anon_before) = rss();

    // Single-op: one call per message.
    let tmp = tempdir(args, "run-")?;
    let dir = tmp.path().join("store");
    std::fs::create_dir_all(&dir)?;
    let mut b = (plan.open)(&dir)?;
    let now = now_ms();
    let ins = timed(keys.iter().copied(), 1, |k| {
        Ok(usize::from(!b.check_and_insert(k, now, ttl_ms)?))
    })?;
    check_dups(ins.count, "single-op")?;
    let look = timed(queries.iter().copied(), 1, |k| {
        Ok(usize::from(b.contains(k, now)?))
    })?;
    check_hits(look.count, "single-op")?;
    b.flush()?;
    let (hwm, _, anon) = rss();
    let live = stream.firsts.len() as f64;
    drop(b);

    let mut result = json!({
        "ids": n,
        "live_ids": stream.firsts.len(),
        "duplicates": ins.count,
        "insert_ops": n as f64 / ins.secs,
        "lookup_ops": n as f64 / look.secs,
        "insert_latency": latency(&ins.hist),
        "lookup_latency": latency(&look.hist),
        "peak_rss_per_id": hwm.saturating_sub(rss_before) as f64 / live,
        "heap_per_id": anon.saturating_sub(anon_before) as f64 / live,
    });
    if plan.persistent {
        result["disk_per_id"] = json!(disk_usage(&dir) as f64 / live);
        let t = Instant::now();
        let mut b = (plan.open)(&dir)?;
        if !b.contains(keys[0], now)? {
            return Err("after reopen the first ID is missing".into());
        }
        result["reopen_ms"] = json!(t.elapsed().as_secs_f64() * 1000.0);
    }
    drop(tmp);

    // Batched: one call per batch, a fresh store per batch size.
    let mut batched = Vec::new();
    for &size in &args.batch_sizes {
        let tmp = tempdir(args, "batch-")?;
        let mut b = (plan.open)(tmp.path())?;
        let now = now_ms();
        let ins = timed(keys.chunks(size), size, |c| {
            let r = b.check_and_insert_batch(c, now, ttl_ms)?;
            answers(&r, c)?;
            Ok(r.iter().filter(|&&new| !new).count())
        })?;
        check_dups(ins.count, &format!("batch {size}"))?;
        let look = timed(queries.chunks(size), size, |c| {
            let r = b.contains_batch(c, now)?;
            answers(&r, c)?;
            Ok(r.iter().filter(|&&hit| hit).count())
        })?;
        check_hits(look.count, &format!("batch {size}"))?;
        drop(b);
        batched.push(json!({
            "size": size,
            "insert_ops": n as f64 / ins.secs,
            "lookup_ops": n as f64 / look.secs,
            "insert_batch_latency": latency(&ins.hist),
            "lookup_batch_latency": latency(&look.hist),
        }));
    }
    result["batched"] = json!(batched);
    drop(keys);
    drop(queries);
    drop(query_bytes);
    drop(stream);

    // Scale mode (`--scale`) measures one thread without fsync only.
    if args.scale.is_some() {
        return Ok(result);
    }

    if let Some(open) = plan.threaded {
        let runs = args
            .nondurable_threads
            .iter()
            .map(|&t| threaded(args, p, open, t))
            .collect::<Res<Vec<Value>>>()?;
        result["threaded"] = json!(runs);
    }

    if let (Some(open), true) = (plan.durable, args.durable_secs > 0.0) {
        let runs = args
            .threads
            .iter()
            .map(|&t| Ok(json!({ "threads": t, "insert_ops": durable(args, open, t)? })))
            .collect::<Res<Vec<Value>>>()?;
        result["durable"] = json!(runs);
    }
    Ok(result)
}

fn answers(r: &[bool], batch: &[&[u8]]) -> Res<()> {
    if r.len() != batch.len() {
        return Err(format!("{} answers to a batch of {}", r.len(), batch.len()).into());
    }
    Ok(())
}

struct Timed {
    secs: f64,
    /// The sum of what the calls returned (duplicates or hits).
    count: usize,
    /// Latency of sampled calls, in ns.
    hist: Histogram<u64>,
}

/// Calls `call` on each unit (a key, or a batch of `per_unit` keys) in
/// order: the wall time of all, the sum of their counts, and a latency
/// sample.
fn timed<U>(
    units: impl Iterator<Item = U>,
    per_unit: usize,
    mut call: impl FnMut(U) -> Res<usize>,
) -> Res<Timed> {
    let every = (SAMPLE_MESSAGES / per_unit).max(1);
    let mut hist = Histogram::<u64>::new(3)?;
    let mut count = 0usize;
    let t = Instant::now();
    for (i, u) in units.enumerate() {
        count += if i % every == 0 {
            let t0 = Instant::now();
            let c = call(u)?;
            hist.record(t0.elapsed().as_nanos() as u64)?;
            c
        } else {
            call(u)?
        };
    }
    Ok(Timed {
        secs: t.elapsed().as_secs_f64(),
        count,
        hist,
    })
}

/// Check-and-insert from `threads` threads at once, no fsync. Each thread
/// has its own stream (its own seed: fresh keys, its own redeliveries) of
/// `ids / threads` messages, so the work is the same at every count.
fn threaded<T: Shared>(
    args: &Args,
    p: &Params,
    open: fn(&Path) -> Res<T>,
    threads: usize,
) -> Res<Value> {
    let streams: Vec<Stream> = (0..threads)
        .map(|th| {
            generate(&Params {
                ids: p.ids / threads + usize::from(th < p.ids % threads),
                seed: p
                    .seed
                    .wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(th as u64 + 1)),
                ..p.clone()
            })
        })
        .collect();
    let injected: usize = streams.iter().map(|s| s.duplicates).sum();
    let total: usize = streams.iter().map(Stream::len).sum();
    let ttl_ms = args.ttl_secs * 1000;
    let tmp = tempdir(args, "threads-")?;
    let store = open(tmp.path())?;
    let now = now_ms();
    let start = Barrier::new(threads + 1);
    let (secs, dups) = std::thread::scope(|s| -> Res<(f64, usize)> {
        let workers: Vec<_> = streams
            .iter()
            .map(|st| {
                let (store, start) = (&store, &start);
                s.spawn(move || -> Res<usize> {
                    start.wait();
                    let mut dups = 0;
                    for key in st.bytes.chunks_exact(st.key_len) {
                        dups += usize::from(!store.check_and_insert(key, now, ttl_ms)?);
                    }
                    Ok(dups)
                })
            })
            .collect();
        start.wait();
        let t = Instant::now();
        let mut dups = 0;
        for w in workers {
            dups += w.join().map_err(|_| "worker panicked")??;
        }
        Ok((t.elapsed().as_secs_f64(), dups))
    })?;
    if dups != injected {
        return Err(format!(
            "{threads} threads: found {dups} duplicates, {injected} were injected"
        )
        .into());
    }
    Ok(json!({ "threads": threads, "insert_ops": total as f64 / secs, "duplicates": dups }))
}

/// Check-and-insert with an fsync per acknowledged message, from `threads`
/// threads for `--durable-secs`, fresh 16-byte keys (thread, counter).
fn durable<D: Shared>(args: &Args, open: fn(&Path) -> Res<D>, threads: usize) -> Res<f64> {
    let ttl_ms = args.ttl_secs * 1000;
    let tmp = tempdir(args, "durable-")?;
    let d = open(tmp.path())?;
    let ops = AtomicU64::new(0);
    let now = now_ms();
    let deadline = Instant::now() + Duration::from_secs_f64(args.durable_secs);
    let t = Instant::now();
    std::thread::scope(|s| -> Res<()> {
        let workers: Vec<_> = (0..threads)
            .map(|th| {
                let (d, ops) = (&d, &ops);
                s.spawn(move || -> Res<()> {
                    let mut key = [0u8; 16];
                    key[..8].copy_from_slice(&(th as u64).to_le_bytes());
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        key[8..].copy_from_slice(&i.to_le_bytes());
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
    Ok(ops.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64())
}

fn tempdir(args: &Args, prefix: &str) -> Res<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&args.dir)?)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// (VmHWM, VmRSS, RssAnon) in bytes, from /proc/self/status.
pub(crate) fn rss() -> (u64, u64, u64) {
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
pub(crate) fn disk_usage(dir: &Path) -> u64 {
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

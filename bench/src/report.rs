//! The results as markdown tables, and the smoke run's summary.

use serde_json::Value;

use crate::workload::KeyKind;
use crate::Args;

/// What the `map` rows measure.
pub fn ceiling(key: KeyKind) -> String {
    let n = key.key_len();
    format!(
        "`map` is the fair RAM-only ceiling: hashbrown `HashMap<[u8; {n}], u64>` (fixed-size keys \
         inline in the table, no allocation or pointer per key; value = expiry in ms; hashbrown's \
         default hasher, foldhash), no persistence. Batched, it is a plain loop over the batch. \
         With threads it is 256 shards of `std::sync::Mutex<hashbrown::HashTable<([u8; {n}], u64)>>` \
         (one hash picks the shard and the slot), as dedupstore's index is 256 locked shards."
    )
}

/// How every engine is called.
pub const CALL_PATH: &str = "Every engine runs through the same measuring loops, generic over the \
    engine and monomorphized per engine: static dispatch, no `Box<dyn>` for anyone, and every \
    adapter method `#[inline]`, so what stays a call is the engine's own doing (hashbrown inlines \
    into the loop as it would in a user's code; dedupstore's `Store` methods stay calls). Keys are \
    `&[u8]` slices of one buffer built before timing; a batched call returns a `Vec<bool>` for \
    every engine; latency is sampled on one call per 256 messages.";

pub fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// `rate (ratio× to base)`, or `n/a`.
fn cell(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{} ({:.2}×)", fmt_rate(v), v / b),
        (Some(v), _) => fmt_rate(v),
        _ => "n/a".into(),
    }
}

/// The `insert_ops` of the entry of `r[list]` whose `field` is `value`.
fn find(r: &Value, list: &str, field: &str, value: u64, key: &str) -> Option<f64> {
    r[list]
        .as_array()?
        .iter()
        .find(|e| e[field].as_u64() == Some(value))?[key]
        .as_f64()
}

fn name(r: &Value) -> &str {
    r["label"].as_str().or(r["backend"].as_str()).unwrap_or("?")
}

fn list(v: &Value) -> Vec<u64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

/// Four tables: single-op, batched, threads (no fsync), durable.
pub fn markdown(report: &Value) -> String {
    let rows = report["results"].as_array().cloned().unwrap_or_default();
    let ok: Vec<&Value> = rows.iter().filter(|r| r.get("error").is_none()).collect();
    let map = rows
        .iter()
        .find(|r| r["backend"] == "map" && r.get("error").is_none());
    let params = &report["params"];
    let mut s = format!(
        "Ceiling: {}\n\nCall path: {}\n\nRatios in brackets are to the map in the same mode and \
         run (durable: to the same engine at 1 thread). Every figure was kept only after the \
         answers were checked (duplicates found == injected, lookup hits == expected).\n\n",
        report["ceiling"].as_str().unwrap_or(""),
        report["call_path"].as_str().unwrap_or(""),
    );

    s += "**Single-op**: one call per message, one thread, no fsync.\n\n";
    s += "| engine | check-and-insert/s | lookups/s (50% hits) | insert p50 / p99 / p99.9 | lookup p50 / p99 / p99.9 | disk B/ID | peak RSS B/ID | heap B/ID | reopen |\n";
    s += "|---|---|---|---|---|---|---|---|---|\n";
    for r in &rows {
        if let Some(e) = r.get("error") {
            s += &format!("| {} | FAILED: {} |\n", name(r), e);
            continue;
        }
        let lat = |k: &str| {
            let l = &r[k];
            format!("{} / {} / {} µs", l["p50_us"], l["p99_us"], l["p999_us"])
        };
        let per_id = |k: &str| r[k].as_f64().map_or("n/a".into(), |v| format!("{v:.1}"));
        let base = |k: &str| map.and_then(|m| m[k].as_f64());
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            name(r),
            cell(r["insert_ops"].as_f64(), base("insert_ops")),
            cell(r["lookup_ops"].as_f64(), base("lookup_ops")),
            lat("insert_latency"),
            lat("lookup_latency"),
            per_id("disk_per_id"),
            per_id("peak_rss_per_id"),
            per_id("heap_per_id"),
            r["reopen_ms"]
                .as_f64()
                .map_or("n/a".into(), |v| format!("{v:.1} ms")),
        );
    }

    let sizes = list(&params["batch_sizes"]);
    if !sizes.is_empty() {
        s += "\n**Batched**: one call per batch of N messages (figures are messages/s), one \
              thread, no fsync, a fresh store per batch size.\n\n| engine |";
        for op in ["insert", "lookup"] {
            for n in &sizes {
                s += &format!(" {op} N={n} |");
            }
        }
        s += &format!("\n|---|{}\n", "---|".repeat(2 * sizes.len()));
        for r in &ok {
            s += &format!("| {} |", name(r));
            for key in ["insert_ops", "lookup_ops"] {
                for &n in &sizes {
                    let base = map.and_then(|m| find(m, "batched", "size", n, key));
                    s += &format!(" {} |", cell(find(r, "batched", "size", n, key), base));
                }
            }
            s += "\n";
        }
    }

    let threads = list(&params["nondurable_threads"]);
    let threaded: Vec<&&Value> = ok.iter().filter(|r| r.get("threaded").is_some()).collect();
    if !threads.is_empty() && !threaded.is_empty() {
        s += "\n**Threads**: check-and-insert from T threads at once, no fsync; each thread has \
              its own stream (fresh keys, its own redeliveries) of IDs/T messages; map = the \
              256-shard mutex map.\n\n| engine |";
        for t in &threads {
            s += &format!(" {t} thr/s |");
        }
        let scaled: Vec<u64> = threads.iter().copied().filter(|&t| t != 1).collect();
        let has_one = threads.contains(&1);
        if has_one {
            for t in &scaled {
                s += &format!(" {t} thr / 1 thr |");
            }
        }
        s += &format!(
            "\n|---|{}\n",
            "---|".repeat(threads.len() + if has_one { scaled.len() } else { 0 })
        );
        for r in &threaded {
            s += &format!("| {} |", name(r));
            for &t in &threads {
                let base = map.and_then(|m| find(m, "threaded", "threads", t, "insert_ops"));
                s += &format!(
                    " {} |",
                    cell(find(r, "threaded", "threads", t, "insert_ops"), base)
                );
            }
            if has_one {
                let one = find(r, "threaded", "threads", 1, "insert_ops");
                for &t in &scaled {
                    s += &match (find(r, "threaded", "threads", t, "insert_ops"), one) {
                        (Some(v), Some(o)) if o > 0.0 => format!(" {:.2}× |", v / o),
                        _ => " n/a |".into(),
                    };
                }
            }
            s += "\n";
        }
    }

    let threads = list(&params["threads"]);
    let durable: Vec<&&Value> = ok.iter().filter(|r| r.get("durable").is_some()).collect();
    if !threads.is_empty() && !durable.is_empty() {
        s += &format!(
            "\n**Durable**: check-and-insert with an fsync per acknowledged message, T threads, \
             {} s per run, fresh keys; in brackets the ratio to the same engine at 1 thread.\n\n\
             | engine |",
            params["durable_secs"]
        );
        for t in &threads {
            s += &format!(" {t} thr/s |");
        }
        s += &format!("\n|---|{}\n", "---|".repeat(threads.len()));
        for r in &durable {
            s += &format!("| {} |", name(r));
            let one = find(r, "durable", "threads", 1, "insert_ops");
            for &t in &threads {
                let v = find(r, "durable", "threads", t, "insert_ops");
                s += &format!(" {} |", if t == 1 { cell(v, None) } else { cell(v, one) });
            }
            s += "\n";
        }
    }
    s
}

/// What a passing smoke run prints instead of figures.
pub fn smoke_summary(args: &Args, results: &[Value]) -> String {
    let names = |f: &dyn Fn(&Value) -> bool| -> String {
        results
            .iter()
            .filter(|r| f(r))
            .filter_map(|r| r["backend"].as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let join = |v: &[usize]| {
        v.iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "answers checked: OK\n\
         engines: {}\n\
         modes: single-op and batched (N = {}) check-and-insert and lookups on {} IDs; \
         check-and-insert from {} threads without fsync ({}); durable phase skipped\n\
         (duplicates found == duplicates injected, lookup hits == hits expected, in every mode)",
        names(&|_| true),
        join(&args.batch_sizes),
        args.ids,
        join(&args.nondurable_threads),
        names(&|r| r.get("threaded").is_some()),
    )
}

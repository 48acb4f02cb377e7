//! Failure hunting with the model (not run by default): runs many seeded
//! scenarios, groups the failures by signature, shrinks the first scenario
//! of each group and prints it as an `Op` list for a regression test.
//!
//! `HUNT_SEEDS=2000 cargo test -p dedupstore-tests --test model_hunt -- --ignored --nocapture`
//!
//! `HUNT_SKIP=sig1;sig2` skips scenarios whose ops would hit an already
//! known defect first: `none-response` stores only non-empty responses
//! (the engine stores `complete(.., None, ..)` as `Some([])`).

use std::collections::BTreeMap;

use dedupstore::Durability;
use dedupstore_tests::model::{self, scenario, Op};

/// A failing run: seed, durability, key count, ops, failure.
type Run = (u64, Durability, u32, Vec<Op>, model::Failure);

#[test]
#[ignore = "hunting tool: run by hand"]
fn hunt() {
    let env = |k: &str| std::env::var(k).ok();
    let first: u64 = env("HUNT_FROM").and_then(|s| s.parse().ok()).unwrap_or(0);
    let seeds: u64 = env("HUNT_SEEDS")
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let skip = env("HUNT_SKIP").unwrap_or_default();
    let no_none = skip.contains("none-response");
    let skip_sigs: Vec<String> = skip
        .split(';')
        .filter(|s| !s.is_empty() && *s != "none-response")
        .map(str::to_string)
        .collect();
    std::panic::set_hook(Box::new(|_| {}));
    let mut groups: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    let (mut steps, mut t) = (0u64, std::time::Duration::ZERO);
    let mut total = model::Summary::default();
    for seed in first..first + seeds {
        let (mut durability, nkeys, mut ops) = scenario(seed);
        if no_none {
            for op in &mut ops {
                if let Op::Complete { resp, .. } = op {
                    if *resp % 4 == 0 {
                        *resp = 2;
                    }
                }
            }
        }
        if env("HUNT_NO_FAULTS").is_some() {
            ops.retain(|op| !matches!(op, Op::Fail { .. }));
        }
        if env("HUNT_NO_SYNC_FAULTS").is_some() {
            ops.retain(|op| !matches!(op, Op::Fail { kind, .. } if kind % 8 < 3));
        }
        if env("HUNT_NO_REWIND").is_some() {
            ops.retain(|op| !matches!(op, Op::Rewind { .. }));
        }
        if env("HUNT_NO_INTERVAL").is_some() {
            if let Durability::Interval(_) = durability {
                durability = Durability::None;
            }
        }
        let started = std::time::Instant::now();
        let r = model::check(durability, nkeys, &ops);
        t += started.elapsed();
        match r {
            Ok(s) => {
                steps += s.steps;
                total += s;
            }
            Err(f) => {
                steps += f.summary.steps;
                total += f.summary;
                let sig = f.signature();
                if skip_sigs.iter().any(|s| sig.contains(s.as_str())) {
                    continue;
                }
                groups
                    .entry(sig)
                    .or_default()
                    .push((seed, durability, nkeys, ops, f));
            }
        }
    }
    eprintln!(
        "{seeds} seeds, {steps} steps in {t:?} ({:.0} us/step); {} distinct failures",
        t.as_micros() as f64 / steps.max(1) as f64,
        groups.len()
    );
    eprintln!("{total:?}");
    let shrink = env("HUNT_SHRINK").is_some();
    for (sig, runs) in &groups {
        let seeds: Vec<u64> = runs.iter().map(|r| r.0).collect();
        eprintln!(
            "\n=== {sig}\n  {} runs, seeds {:?}",
            runs.len(),
            &seeds[..seeds.len().min(12)]
        );
        // Shrink the shortest failing prefix among the first few.
        let (seed, d, nkeys, ops, f) = runs.iter().take(4).min_by_key(|r| r.4.step).unwrap();
        eprintln!("  seed {seed}: {f}");
        if shrink {
            let (small, g) = model::shrink(*d, *nkeys, ops, f);
            eprintln!("  shrunk to {} ops: {g}", small.len());
            eprintln!("  model::run(Durability::{d:?}, {nkeys}, &[");
            for op in &small {
                eprintln!("      Op::{op:?},");
            }
            eprintln!("  ]);");
        }
    }
}

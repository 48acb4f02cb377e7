//! An idempotent consumer on an at-least-once stream, with a consumer crash.
//!
//! A simulated broker holds 50,000 messages; 3% of them are producer retries
//! (the same message ID sent again). The consumer commits its offset every
//! 500 messages, and now and then the commit is lost, so the broker
//! redelivers from the last committed offset. Halfway through, the consumer
//! process crashes (`abort()`) after applying effects it had not committed:
//! the restarted consumer gets all of them again.
//!
//! The consumer takes the broker's messages in batches of 100, as brokers
//! hand them over, and asks the store about a whole batch in one
//! `check_and_insert_batch` call; each message's effect (a line in a ledger
//! file) is applied only when its answer is `Inserted`. The store runs with
//! `Durability::Immediate`: every answer is on disk before it is returned,
//! and a batch shares one fsync (one per message would make this run take
//! tens of seconds on a disk with a 200 µs fsync). At the end the ledger is
//! checked: every distinct message ID took effect exactly once.
//!
//! The crash comes after a batch's effects are applied: a crash *between* an
//! `Inserted` answer and its effect would lose that effect, which is the
//! window `check_and_insert` cannot close; `claim` / `complete` close it
//! (see the `claim_consumer` example and the README).
//!
//! Run: `cargo run --release --example idempotent_consumer`

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dedupstore::{Config, Durability, Outcome, Store};

const MESSAGES: u64 = 50_000;
const COMMIT_EVERY: u64 = 500;
/// Messages per broker batch (COMMIT_EVERY is a multiple of it).
const BATCH: u64 = 100;

/// The broker's log: message `i` carries this ID (producer retries repeat one).
fn message_id(i: u64) -> String {
    let n = if i % 33 == 7 && i > 100 { i - 50 } else { i };
    format!("order-{:016x}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--consumer" {
        return consume(Path::new(&args[2]), args[3].parse()?);
    }
    let work = std::env::temp_dir().join(format!("dedupstore-example-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let started = Instant::now();
    let me = std::env::current_exe()?;
    let crash_at = MESSAGES / 2 + 123;
    println!(
        "{MESSAGES} messages, 3% producer retries, offsets committed every {COMMIT_EVERY} \
         (some commits lost), batches of {BATCH}, Durability::Immediate (one fsync per batch)"
    );
    let status = Command::new(&me)
        .args([
            "--consumer",
            work.to_str().unwrap_or_default(),
            &crash_at.to_string(),
        ])
        .status()?;
    println!("consumer crashed as planned after the batch holding message {crash_at} ({status})");
    let status = Command::new(&me)
        .args(["--consumer", work.to_str().unwrap_or_default(), "0"])
        .status()?;
    if !status.success() {
        return Err(format!("restarted consumer failed: {status}").into());
    }
    verify(&work, started.elapsed())?;
    fs::remove_dir_all(&work)?;
    Ok(())
}

fn offset_file(work: &Path) -> PathBuf {
    work.join("committed-offset")
}

/// One consumer process: resumes at the committed offset, processes to the
/// end (or crashes at message `crash_at`, if non-zero).
fn consume(work: &Path, crash_at: u64) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(
        work.join("dedup"),
        Config::default().durability(Durability::Immediate),
    )?;
    let mut ledger = OpenOptions::new()
        .create(true)
        .append(true)
        .open(work.join("ledger"))?;
    let mut offset: u64 = fs::read_to_string(offset_file(work))
        .map(|s| s.trim().parse().unwrap_or(0))
        .unwrap_or(0);
    let (mut delivered, mut processed, mut skipped) = (0u64, 0u64, 0u64);
    let ttl = Duration::from_secs(24 * 3600);
    let mut lost_acks = 0;
    let mut i = offset;
    let record = |delivered, processed, skipped, lost_acks| {
        // One line per consumer run, for the totals at the end.
        let line = format!("{delivered} {processed} {skipped} {lost_acks}\n");
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(work.join("runs"))
            .and_then(|mut f| f.write_all(line.as_bytes()))
    };
    while i < MESSAGES {
        let end = (i + BATCH).min(MESSAGES);
        let ids: Vec<String> = (i..end).map(message_id).collect();
        // One call, one fsync, for the whole batch.
        let answers = store.check_and_insert_batch(&ids, ttl)?;
        for (id, answer) in ids.iter().zip(answers) {
            match answer {
                Outcome::Inserted => {
                    // The side effect: exactly once per message ID.
                    writeln!(ledger, "{id}")?;
                    processed += 1;
                }
                Outcome::Duplicate { .. } => skipped += 1,
            }
        }
        delivered += end - i;
        if crash_at != 0 && (i..end).contains(&crash_at) {
            ledger.flush()?;
            record(delivered, processed, skipped, lost_acks)?;
            std::process::abort(); // offsets since the last commit are never acknowledged
        }
        i = end;
        if i.is_multiple_of(COMMIT_EVERY) {
            // Every 7th commit is lost on its way to the broker, which then
            // redelivers everything since the previous one.
            if (i / COMMIT_EVERY) % 7 == 3 && lost_acks < 5 {
                lost_acks += 1;
                i = offset;
                continue;
            }
            offset = i;
            fs::write(offset_file(work), offset.to_string())?;
        }
    }
    fs::write(offset_file(work), MESSAGES.to_string())?;
    record(delivered, processed, skipped, lost_acks)?;
    println!(
        "restarted consumer: {delivered} deliveries, {processed} effects, {skipped} duplicates skipped"
    );
    store.close()?;
    Ok(())
}

fn verify(work: &Path, took: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let mut expected: HashMap<String, u32> = HashMap::new();
    for i in 0..MESSAGES {
        expected.entry(message_id(i)).or_default();
    }
    let mut seen: HashMap<String, u32> = HashMap::new();
    for line in fs::read_to_string(work.join("ledger"))?.lines() {
        *seen.entry(line.to_owned()).or_default() += 1;
    }
    let mut totals = [0u64; 4];
    for line in fs::read_to_string(work.join("runs"))?.lines() {
        for (t, v) in totals.iter_mut().zip(line.split_whitespace()) {
            *t += v.parse::<u64>()?;
        }
    }
    let [delivered, processed, skipped, lost_acks] = totals;
    println!(
        "both consumer runs: {delivered} deliveries (the stream plus redeliveries after \
         {lost_acks} lost commits and the crash) -> {processed} effects, {skipped} duplicates skipped"
    );
    let missing = expected.keys().filter(|k| !seen.contains_key(*k)).count();
    let twice = seen.values().filter(|&&n| n > 1).count();
    let unknown = seen.keys().filter(|k| !expected.contains_key(*k)).count();
    println!(
        "{} messages, {} distinct IDs -> {} lines in the ledger, in {:.2?}",
        MESSAGES,
        expected.len(),
        seen.values().sum::<u32>(),
        took
    );
    if missing == 0 && twice == 0 && unknown == 0 {
        println!(
            "OK: every effect happened exactly once, despite redeliveries, lost acks and a crash"
        );
        Ok(())
    } else {
        Err(format!(
            "FAILED: {missing} effects missing, {twice} applied more than once, {unknown} unknown"
        )
        .into())
    }
}

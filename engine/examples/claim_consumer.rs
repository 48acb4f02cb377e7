//! Idempotent processing with claim / complete, surviving a crash in the
//! middle of processing.
//!
//! A simulated broker delivers 20,000 messages, 3% of them twice (producer
//! retries), with lost offset commits that redeliver whole ranges. The
//! consumer `claim`s each message ID, applies the side effect (a ledger
//! line), and `complete`s it with a receipt. Duplicates get the stored
//! receipt back instead of running the effect again.
//!
//! Halfway through, the consumer process dies right after claiming a message
//! and before acting on it. With `check_and_insert` that message would be
//! lost (its redelivery would be told "duplicate"). Here the restarted
//! consumer's `claim` takes the dead owner's claim over at once (a claim
//! made by an earlier opening of the store is orphaned: only one process
//! can hold the store, so its owner is gone) and processes it: nothing is
//! lost, nothing runs twice, and nobody waits for the dead lease to end.
//!
//! Run: `cargo run --release --example claim_consumer`

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dedupstore::{Claim, Config, Durability, Store};

const MESSAGES: u64 = 20_000;
const COMMIT_EVERY: u64 = 500;
const LEASE: Duration = Duration::from_millis(1500);

fn message_id(i: u64) -> String {
    let n = if i % 33 == 7 && i > 100 { i - 50 } else { i };
    format!("payment-{:016x}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn receipt(id: &str) -> Vec<u8> {
    format!("receipt for {id}").into_bytes()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--consumer" {
        return consume(Path::new(&args[2]), args[3].parse()?);
    }
    let work =
        std::env::temp_dir().join(format!("dedupstore-claim-example-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let started = Instant::now();
    let me = std::env::current_exe()?;
    let dir = work.to_str().ok_or("temp dir is not UTF-8")?;
    let crash_at = MESSAGES / 2 + 77;
    let status = Command::new(&me)
        .args(["--consumer", dir, &crash_at.to_string()])
        .status()?;
    println!("consumer died after claiming message {crash_at}, before acting on it ({status})");
    let status = Command::new(&me).args(["--consumer", dir, "0"]).status()?;
    if !status.success() {
        return Err(format!("restarted consumer failed: {status}").into());
    }
    verify(&work, started.elapsed())?;
    fs::remove_dir_all(&work)?;
    Ok(())
}

fn consume(work: &Path, crash_at: u64) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(
        work.join("dedup"),
        Config::default().durability(Durability::Immediate),
    )?;
    let mut ledger = OpenOptions::new()
        .create(true)
        .append(true)
        .open(work.join("ledger"))?;
    let offset_file = work.join("committed-offset");
    let mut offset: u64 = fs::read_to_string(&offset_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let (mut processed, mut replayed, mut waited, mut lost_acks) = (0u64, 0u64, 0u64, 0);
    let mut i = offset;
    while i < MESSAGES {
        let id = message_id(i);
        // The payload fingerprint: a reused ID with another payload is refused.
        let fingerprint = dedupstore::fingerprint(id.as_bytes());
        match store.claim(id.as_bytes(), LEASE, Some(fingerprint))? {
            Claim::Acquired(token) => {
                if i == crash_at {
                    std::process::abort(); // claimed, not acted on, never completed
                }
                writeln!(ledger, "{id}")?; // the side effect
                store.complete(&token, Some(&receipt(&id)), Duration::from_secs(24 * 3600))?;
                processed += 1;
            }
            Claim::Completed { response, .. } => {
                if response.as_deref() != Some(&receipt(&id)[..]) {
                    return Err(format!("{id}: wrong stored response").into());
                }
                replayed += 1;
            }
            Claim::InProgress { lease_expires_at } => {
                // Another worker of this process holds it (never here: one
                // worker, and the dead predecessor's claim is taken over at
                // once). Do not ack; try again once the lease has ended.
                let wait = lease_expires_at
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                std::thread::sleep(wait + Duration::from_millis(10));
                waited += 1;
                continue;
            }
        }
        i += 1;
        if i.is_multiple_of(COMMIT_EVERY) {
            if (i / COMMIT_EVERY) % 7 == 3 && lost_acks < 3 {
                lost_acks += 1;
                i = offset; // the commit was lost: everything since is redelivered
                continue;
            }
            offset = i;
            fs::write(&offset_file, offset.to_string())?;
        }
    }
    fs::write(&offset_file, MESSAGES.to_string())?;
    println!(
        "consumer: processed {processed}, answered {replayed} duplicates with their stored receipt, \
         waited {waited}x for a lease, replayed {lost_acks} lost commits"
    );
    store.close()?;
    Ok(())
}

fn verify(work: &Path, took: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let mut seen: HashMap<String, u32> = HashMap::new();
    for line in fs::read_to_string(work.join("ledger"))?.lines() {
        *seen.entry(line.to_owned()).or_default() += 1;
    }
    let distinct: std::collections::HashSet<String> = (0..MESSAGES).map(message_id).collect();
    let missing = distinct.iter().filter(|id| !seen.contains_key(*id)).count();
    let twice = seen.values().filter(|&&n| n > 1).count();
    println!(
        "{MESSAGES} deliveries of {} distinct IDs -> {} effects in {took:.2?}",
        distinct.len(),
        seen.values().sum::<u32>()
    );
    if missing == 0 && twice == 0 {
        println!("OK: every effect happened exactly once, including the message claimed by the consumer that died");
        Ok(())
    } else {
        Err(format!("FAILED: {missing} effects missing, {twice} applied more than once").into())
    }
}

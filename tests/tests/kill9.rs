//! Real processes killed with SIGKILL at random moments: every ID the child
//! reported as inserted is there after reopen, and no ID it never sent is.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use dedupstore::{Config, Store};

fn rounds(mode: &str, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(11);
    let mut next = 0u64;
    let mut acked_total = 0;
    for round in 0..rounds {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash_child"))
            .args([dir.path().to_str().unwrap(), mode, &next.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let (mut acked, mut synced) = (Vec::new(), None);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match line.strip_prefix("S ") {
                    Some(i) => synced = i.parse::<u64>().ok(),
                    None => acked.push(line.parse::<u64>().unwrap()),
                }
                let _ = first_tx.send(());
            }
            (acked, synced)
        });
        // Kill at a random moment once the child is inserting (on a loaded
        // machine, starting and opening the store can take longer than the
        // kill delay itself).
        let _ = first_rx.recv_timeout(Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(rng.u64(5..60)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (acked, synced) = reader.join().unwrap();

        let s = Store::open(dir.path(), Config::default())
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        for i in &acked {
            assert!(
                s.contains(format!("msg-{i}").as_bytes()).unwrap(),
                "round {round}: acknowledged {i} lost"
            );
        }
        if let Some(upto) = synced {
            assert!(acked.last().is_some_and(|&l| l >= upto));
        }
        let last = acked.last().copied().unwrap_or(next);
        // The child may have been inside the call for last+1; beyond that it
        // never sent anything.
        for i in last + 2..last + 200 {
            assert!(
                !s.contains(format!("msg-{i}").as_bytes()).unwrap(),
                "round {round}: never-sent {i} present"
            );
        }
        acked_total += acked.len();
        next = last + 2;
    }
    eprintln!("{mode}: {rounds} kill -9 rounds, {acked_total} acknowledged IDs verified");
    assert!(acked_total > rounds, "children made progress");
}

#[test]
fn kill_9_under_immediate() {
    rounds("immediate", 50);
}

#[test]
fn kill_9_under_interval_with_sync_points() {
    rounds("interval", 50);
}

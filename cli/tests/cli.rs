//! The `dedupstore` binary against real store directories made by the
//! library: clean stores, damaged ones, non-stores, and a locked one.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::cargo::cargo_bin_cmd;
use assert_cmd::Command;
use dedupstore::inspect::Dir;
use dedupstore::{Claim, Config, Durability, Store};
use predicates::prelude::*;
use serde_json::Value;

const DAY: Duration = Duration::from_secs(86_400);
const KEYS: u32 = 6000;
/// Records written by `build`: the inserts, two claims, one complete, one remove.
const RECORDS: usize = KEYS as usize + 4;

fn cfg() -> Config {
    Config::default()
        .segment_size(64 << 10)
        .durability(Durability::None)
        .gc_interval(None)
}

/// A cleanly closed store over several 64 KiB segments: `key-0..6000`
/// inserted, `key-5` removed, `job-1` completed with a response, `job-2`
/// claimed (in progress).
fn build() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), cfg()).unwrap();
    for i in 0..KEYS {
        let _ = s
            .check_and_insert(format!("key-{i}").as_bytes(), DAY)
            .unwrap();
    }
    let Claim::Acquired(tok) = s.claim(b"job-1", DAY, Some(7)).unwrap() else {
        panic!("fresh key")
    };
    s.complete(&tok, Some(b"receipt-1"), DAY).unwrap();
    assert!(matches!(
        s.claim(b"job-2", DAY, None).unwrap(),
        Claim::Acquired(_)
    ));
    assert!(s.remove(b"key-5").unwrap());
    assert!(s.stats().segments >= 3);
    s.close().unwrap();
    t
}

fn cli() -> Command {
    cargo_bin_cmd!("dedupstore")
}

fn seg(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("seg-{id:010}.log"))
}

fn stdout_json(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

#[test]
fn stats_prints_the_counters() {
    let t = build();
    cli()
        .args(["stats"])
        .arg(t.path())
        .assert()
        .success()
        .stdout(predicate::str::contains("live_keys"))
        .stdout(predicate::str::contains("segments"));
    let out = cli()
        .args(["stats", "--json"])
        .arg(t.path())
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v = stdout_json(&out);
    assert!(v["stats"]["live_keys"].as_u64().unwrap() >= u64::from(KEYS));
    assert!(v["stats"]["segments"].as_u64().unwrap() >= 3);
    assert_eq!(v["stats"]["truncated_records"], 0);
}

#[test]
fn verify_a_clean_store_exits_0() {
    let t = build();
    cli()
        .arg("verify")
        .arg(t.path())
        .assert()
        .code(0)
        .stdout(predicate::str::contains("result      clean"))
        .stdout(predicate::str::contains(format!("records     {RECORDS} ")));
    let out = cli()
        .args(["--json", "verify"])
        .arg(t.path())
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let v = stdout_json(&out);
    assert_eq!(v["clean"], true);
    assert_eq!(v["locked"], false);
    assert_eq!(v["records"]["total"], RECORDS as u64);
    assert_eq!(v["records"]["insert"], u64::from(KEYS));
    assert_eq!(v["records"]["claim"], 2);
    assert_eq!(v["records"]["complete"], 1);
    assert_eq!(v["records"]["remove"], 1);
    assert_eq!(v["torn_tail"], Value::Null);
}

#[test]
fn dump_lists_every_record() {
    let t = build();
    let out = cli().arg("dump").arg(t.path()).assert().success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert_eq!(text.lines().count(), RECORDS);
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with("seg=1 off=64 insert   key=key-0 expires=20"),
        "{first}"
    );
    assert!(text.contains("complete key=job-1 expires="));
    assert!(text.contains("fingerprint=0x0000000000000007 response=9B:726563656970742d31"));

    let out = cli()
        .args(["dump", "--json"])
        .arg(t.path())
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| stdout_json(l.as_bytes())).collect();
    assert_eq!(lines.len(), RECORDS);
    let complete = lines.iter().find(|v| v["kind"] == "complete").unwrap();
    assert_eq!(complete["key"], "job-1");
    assert_eq!(complete["response_len"], 9);
    assert_eq!(complete["response_hex"], "726563656970742d31");
    assert_eq!(complete["fingerprint"], "0x0000000000000007");
    let claim = lines.iter().find(|v| v["kind"] == "claim").unwrap();
    assert!(claim["token"].as_str().unwrap().starts_with("0x"));
    assert!(lines
        .iter()
        .all(|v| v["expires_at_ms"].as_u64().unwrap() > 0));
    // Log order: strictly increasing (segment, offset).
    let pos: Vec<(u64, u64)> = lines
        .iter()
        .map(|v| {
            (
                v["segment"].as_u64().unwrap(),
                v["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn get_reports_each_state() {
    let t = build();
    let get = |key: &str| {
        let out = cli().arg("get").arg(t.path()).arg(key).assert().success();
        String::from_utf8(out.get_output().stdout.clone()).unwrap()
    };
    assert!(get("key-1").starts_with("key-1: present until 20"));
    assert!(get("nope").starts_with("nope: absent (no record of it)"));
    assert!(get("key-5").starts_with("key-5: absent (removed, segment"));
    let done = get("job-1");
    assert!(done.starts_with("job-1: completed, kept until"), "{done}");
    assert!(done.contains("response 9 bytes: \"receipt-1\""), "{done}");
    assert!(get("job-2").starts_with("job-2: in progress, leased until"));

    let get_json = |args: &[&str]| {
        let out = cli()
            .args(["get", "--json"])
            .arg(t.path())
            .args(args)
            .assert()
            .success();
        stdout_json(&out.get_output().stdout)
    };
    assert_eq!(get_json(&["key-1"])["state"], "present");
    assert_eq!(get_json(&["nope"])["state"], "absent");
    assert_eq!(get_json(&["key-5"])["state"], "absent");
    assert_eq!(get_json(&["key-5"])["last_record"]["kind"], "remove");
    assert_eq!(get_json(&["job-2"])["state"], "in_progress");
    let done = get_json(&["job-1"]);
    assert_eq!(done["state"], "completed");
    assert_eq!(done["response_utf8"], "receipt-1");
    assert_eq!(done["fingerprint"], "0x0000000000000007");
    // The same key given in hex.
    let hex: String = b"key-1".iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(get_json(&["--hex", &hex])["state"], "present");
    // Bad hex is a usage error.
    cli()
        .arg("get")
        .arg(t.path())
        .args(["--hex", "xyz"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("hex"));
}

#[test]
fn compact_reclaims_space_and_keeps_answers() {
    let t = build();
    {
        // Make most of the first segments dead.
        let s = Store::open(t.path(), cfg()).unwrap();
        for i in 0..2000 {
            s.remove(format!("key-{i}").as_bytes()).unwrap();
        }
        s.close().unwrap();
    }
    let out = cli()
        .args(["compact", "--json"])
        .arg(t.path())
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v = stdout_json(&out);
    let c = &v["compact"];
    assert!(
        c["segments_deleted"].as_u64().unwrap() + c["segments_compacted"].as_u64().unwrap() >= 1,
        "{v}"
    );
    assert!(c["bytes_reclaimed"].as_u64().unwrap() > 0, "{v}");
    cli()
        .arg("compact")
        .arg(t.path())
        .assert()
        .success()
        .stdout(predicate::str::contains("bytes_reclaimed"));
    cli().arg("verify").arg(t.path()).assert().code(0);
    let out = cli()
        .args(["get", "--json"])
        .arg(t.path())
        .arg("key-5500")
        .assert()
        .success();
    assert_eq!(stdout_json(&out.get_output().stdout)["state"], "present");
    let out = cli()
        .args(["get", "--json"])
        .arg(t.path())
        .arg("key-10")
        .assert()
        .success();
    assert_eq!(stdout_json(&out.get_output().stdout)["state"], "absent");
}

#[test]
fn flipped_byte_in_a_sealed_segment_is_reported_with_file_and_offset() {
    let t = build();
    let path = seg(t.path(), 1);
    let mut b = fs::read(&path).unwrap();
    // Inside the first record (at 64): a key byte.
    b[64 + 17] ^= 0x40;
    fs::write(&path, &b).unwrap();
    cli()
        .arg("verify")
        .arg(t.path())
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "seg-0000000001.log at offset 64: record checksum mismatch",
        ))
        .stdout(predicate::str::contains("result      DAMAGED"));
    let out = cli()
        .args(["verify", "--json"])
        .arg(t.path())
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v = stdout_json(&out);
    assert_eq!(v["clean"], false);
    let p = &v["problems"][0];
    assert_eq!(p["kind"], "corruption");
    assert_eq!(p["offset"], 64);
    assert!(p["file"].as_str().unwrap().ends_with("seg-0000000001.log"));
    // The other records are still listed, and the store refuses to open.
    let out = cli().arg("dump").arg(t.path()).assert().success();
    let n = String::from_utf8_lossy(&out.get_output().stdout)
        .lines()
        .count();
    assert_eq!(n, RECORDS - 1);
    cli()
        .arg("stats")
        .arg(t.path())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("corruption in"))
        .stderr(predicate::str::contains("at offset 64"));
}

/// Makes the newest segment look like a crash mid-append: its watermark
/// back at the header (nothing known to be synced, as after a crash under
/// `Durability::None`), and the file cut in the middle of its last record.
fn tear_newest(dir: &Path) -> (PathBuf, u64) {
    let d = Dir::open(dir).unwrap();
    let newest = d.segment_files().last().unwrap().clone();
    let last = d
        .read_segment(&newest)
        .unwrap()
        .records()
        .last()
        .map(|r| r.offset)
        .unwrap();
    let mut b = fs::read(&newest.path).unwrap();
    let wm = 64u64.to_le_bytes();
    b[24..32].copy_from_slice(&wm);
    b[32..36].copy_from_slice(&crc32fast::hash(&wm).to_le_bytes());
    b.truncate(last as usize + 5);
    fs::write(&newest.path, &b).unwrap();
    (newest.path, last)
}

#[test]
fn newest_segment_cut_mid_record_is_a_torn_tail_not_an_error() {
    let t = build();
    let (path, last) = tear_newest(t.path());
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    cli()
        .arg("verify")
        .arg(t.path())
        .assert()
        .code(0)
        .stdout(predicate::str::contains(format!(
            "torn tail   {} at offset {last}: 5 bytes, 1 record(s)",
            path.display()
        )))
        .stdout(predicate::str::contains("result      clean"));
    let out = cli()
        .args(["verify", "--json"])
        .arg(t.path())
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let v = stdout_json(&out);
    assert_eq!(v["clean"], true);
    assert_eq!(v["torn_tail"]["offset"], last);
    assert_eq!(v["torn_tail"]["records"], 1);
    assert!(v["torn_tail"]["file"].as_str().unwrap().ends_with(&name));
    // Recovery agrees: it truncates exactly that record.
    let s = Store::open(t.path(), cfg()).unwrap();
    assert_eq!(s.stats().truncated_records, 1);
}

#[test]
fn non_stores_are_clear_errors_with_exit_2() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("plain.txt");
    fs::write(&file, b"hello").unwrap();
    for cmd in ["verify", "dump", "stats", "compact"] {
        cli()
            .arg(cmd)
            .arg(&file)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("is not a directory"));
        cli()
            .arg(cmd)
            .arg(t.path().join("missing"))
            .assert()
            .code(2)
            .stderr(predicate::str::contains("no such directory"));
    }
    let empty = t.path().join("empty");
    fs::create_dir(&empty).unwrap();
    for cmd in ["verify", "dump", "stats", "compact"] {
        cli()
            .arg(cmd)
            .arg(&empty)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("is not a dedupstore directory"));
    }
    // Neither stats nor compact made a store of it.
    assert_eq!(fs::read_dir(&empty).unwrap().count(), 0);
    assert!(!t.path().join("missing").exists());
    let out = cli()
        .args(["get", "--json"])
        .arg(&empty)
        .arg("k")
        .assert()
        .code(2)
        .get_output()
        .stdout
        .clone();
    assert_eq!(stdout_json(&out)["error"]["kind"], "not_a_store");
    // A file named like the metadata file but holding something else.
    fs::write(
        empty.join("dedupstore.meta"),
        b"this is not a dedupstore at all",
    )
    .unwrap();
    cli()
        .arg("verify")
        .arg(&empty)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("not a dedupstore metadata file"));
}

#[test]
fn newer_format_versions_are_refused_clearly() {
    let t = build();
    let meta = t.path().join("dedupstore.meta");
    let orig = fs::read(&meta).unwrap();
    let mut b = orig.clone();
    b[8] = 9;
    fs::write(&meta, &b).unwrap();
    for cmd in ["verify", "dump", "stats"] {
        cli()
            .arg(cmd)
            .arg(t.path())
            .assert()
            .code(2)
            .stderr(predicate::str::contains("has format version 9"))
            .stderr(predicate::str::contains("newer dedupstore"));
    }
    // A segment of a newer version (the metadata file restored).
    fs::write(&meta, &orig).unwrap();
    let path = seg(t.path(), 2);
    let mut b = fs::read(&path).unwrap();
    b[8] = 9;
    fs::write(&path, &b).unwrap();
    cli()
        .arg("verify")
        .arg(t.path())
        .assert()
        .code(2)
        .stdout(predicate::str::contains("segment format version 9"))
        .stdout(predicate::str::contains("cannot check"));
}

#[test]
fn a_store_open_elsewhere_is_locked_for_stats_but_readable() {
    let t = build();
    let s = Store::open(t.path(), cfg()).unwrap();
    let _ = s.check_and_insert(b"while-open", DAY).unwrap();
    for cmd in ["stats", "compact"] {
        cli()
            .arg(cmd)
            .arg(t.path())
            .assert()
            .code(2)
            .stderr(predicate::str::contains(
                "is locked: another process has the store open",
            ));
    }
    cli()
        .arg("verify")
        .arg(t.path())
        .assert()
        .code(0)
        .stdout(predicate::str::contains("open in another process"));
    let out = cli()
        .args(["verify", "--json"])
        .arg(t.path())
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    assert_eq!(stdout_json(&out)["locked"], true);
    // Durability::None: the insert is in the page cache, which reads see.
    let out = cli()
        .args(["get", "--json"])
        .arg(t.path())
        .arg("while-open")
        .assert()
        .success();
    assert_eq!(stdout_json(&out.get_output().stdout)["state"], "present");
    // The probes left the store working and the lock with it.
    let _ = s.check_and_insert(b"after", DAY).unwrap();
    s.close().unwrap();
    cli().arg("stats").arg(t.path()).assert().success();
}

#[test]
fn usage_errors_exit_2() {
    cli().assert().code(2);
    cli().arg("frobnicate").assert().code(2);
    cli().arg("verify").assert().code(2);
    let t = build();
    let long = "k".repeat(2000);
    cli()
        .arg("get")
        .arg(t.path())
        .arg(long)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("a key is 1 to 1024 bytes"));
}

/// Runs `dedupstore CMD --json DIR FILE`, which must succeed; its output.
fn snapshot_json(cmd: &str, dir: &Path, file: &Path) -> Value {
    let out = cli()
        .args([cmd, "--json"])
        .arg(dir)
        .arg(file)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    stdout_json(&out)
}

#[test]
fn export_then_import_into_a_new_store_and_a_damaged_snapshot_exits_1() {
    let t = build();
    let work = tempfile::tempdir().unwrap();
    let snap = work.path().join("s.ddsnap");
    let v = snapshot_json("export", t.path(), &snap);
    // key-5 was removed; job-1 completed, job-2 claimed.
    assert_eq!(v["export"]["ids"], u64::from(KEYS) - 1 + 2);
    assert_eq!(v["export"]["claims"], 1);
    assert!(!work.path().join("s.ddsnap.tmp").exists());

    let mut bad = fs::read(&snap).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x10;
    let bad_path = work.path().join("bad.ddsnap");
    fs::write(&bad_path, &bad).unwrap();
    let dst = work.path().join("dst");
    cli()
        .args(["import"])
        .arg(&dst)
        .arg(&bad_path)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("snapshot rejected at byte"));
    assert!(!dst.exists(), "a refused snapshot creates no store");

    let v = snapshot_json("import", &dst, &snap);
    assert_eq!(v["import"]["added"], u64::from(KEYS) + 1);
    let s = Store::open(&dst, cfg()).unwrap();
    assert!(s.contains(b"key-0").unwrap());
    assert!(!s.contains(b"key-5").unwrap());
    assert!(matches!(
        s.claim(b"job-1", DAY, Some(7)).unwrap(),
        Claim::Completed { response: Some(r), .. } if r == b"receipt-1"
    ));
}

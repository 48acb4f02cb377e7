//! `dedupstore`: inspect, verify and maintain dedupstore directories.
//!
//! `verify`, `dump` and `get` only read the files (no lock, no write), so
//! they work while a consumer has the store open. `stats`, `compact`,
//! `export` and `import` open the store with `Store::open`, which needs its
//! lock and, like any open, recovers it (a torn tail is truncated).
//!
//! Exit codes: 0 success (for `verify`: clean); 1 the store is damaged
//! (`verify` found corruption, or an open refused it), or `import` refused
//! a damaged snapshot; 2 usage error, I/O error, not a store, store locked,
//! or a newer format or snapshot version.

mod show;

/// `eprintln!` that cannot panic: stderr may be a closed pipe
/// (`dedupstore dump DIR 2>&1 | head`).
macro_rules! say {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use dedupstore::inspect::{self, Dir, KeyState, LockState, ProblemKind, Report};
use dedupstore::{Config, Error, GcReport, Stats, Store};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use show::{hex, id64, iso8601, key_display, key_text};

#[derive(Parser)]
#[command(
    name = "dedupstore",
    version,
    about = "Inspect, verify and maintain dedupstore directories",
    after_help = "Exit codes: 0 success (verify: clean), 1 store or snapshot damaged, \
                  2 usage/I/O error, not a store, locked, or newer format version."
)]
struct Cli {
    /// Machine-readable output: one JSON object (JSON lines for dump).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open the store (takes its lock and recovers it, as a consumer's open
    /// does) and print its counters.
    Stats { dir: PathBuf },
    /// Check every file, read-only and without the lock, like fsck.
    /// Exit 0 clean, 1 damage found, 2 error.
    Verify { dir: PathBuf },
    /// Print every record in log order, read-only and without the lock.
    Dump { dir: PathBuf },
    /// Show a key's state, replayed from the files as they are on disk
    /// (read-only, without the lock).
    Get {
        dir: PathBuf,
        key: String,
        /// KEY is hex (e.g. 0x00ff or 00ff) rather than UTF-8 text.
        #[arg(long)]
        hex: bool,
    },
    /// Open the store (takes its lock) and compact every sealed segment that
    /// has dead records.
    Compact { dir: PathBuf },
    /// Open the store (takes its lock) and write a snapshot of its live
    /// state to FILE (written as FILE.tmp, synced, then renamed).
    Export { dir: PathBuf, file: PathBuf },
    /// Check the snapshot FILE whole, then merge it into the store in DIR
    /// (created if it does not exist; takes its lock). A damaged snapshot
    /// imports nothing (exit 1).
    Import { dir: PathBuf, file: PathBuf },
}

/// A failure, with the exit code it maps to.
struct Failure {
    code: u8,
    kind: &'static str,
    message: String,
    hint: Option<String>,
}

impl Failure {
    fn usage(message: String) -> Failure {
        Failure {
            code: 2,
            kind: "usage",
            message,
            hint: None,
        }
    }

    fn output(e: io::Error) -> Failure {
        Failure {
            code: 2,
            kind: if e.kind() == io::ErrorKind::BrokenPipe {
                "broken_pipe"
            } else {
                "io"
            },
            message: format!("cannot write output: {e}"),
            hint: None,
        }
    }

    /// Maps a library error, with `dir` for the messages.
    fn from_error(e: Error, dir: &Path) -> Failure {
        let d = dir.display();
        match e {
            Error::Io { op, ref source, .. }
                if op == "list" && source.kind() == io::ErrorKind::NotFound =>
            {
                Failure {
                    code: 2,
                    kind: "not_found",
                    message: format!("no such directory: {d}"),
                    hint: None,
                }
            }
            Error::Io { op, ref source, .. }
                if op == "list" && source.kind() == io::ErrorKind::NotADirectory =>
            {
                Failure {
                    code: 2,
                    kind: "not_a_store",
                    message: format!("{d} is not a directory, so not a dedupstore"),
                    hint: None,
                }
            }
            Error::Io { op, ref source, .. }
                if op == "open metadata" && source.kind() == io::ErrorKind::NotFound =>
            {
                Failure {
                    code: 2,
                    kind: "not_a_store",
                    message: format!(
                    "{d} is not a dedupstore directory: it has no dedupstore.meta and no segments"
                ),
                    hint: None,
                }
            }
            Error::Locked { .. } => Failure {
                code: 2,
                kind: "locked",
                message: format!("{d} is locked: another process has the store open"),
                hint: Some(
                    "stop that process first; `verify`, `dump` and `get` work without the lock"
                        .into(),
                ),
            },
            Error::UnsupportedVersion { .. } | Error::UnsupportedSnapshotVersion { .. } => {
                Failure {
                    code: 2,
                    kind: "unsupported_version",
                    message: e.to_string(),
                    hint: Some(format!(
                        "it was written by a newer dedupstore; use a newer build of this tool ({})",
                        env!("CARGO_PKG_VERSION")
                    )),
                }
            }
            Error::Corruption { .. } => Failure {
                code: 1,
                kind: "corruption",
                message: e.to_string(),
                hint: Some(format!(
                    "run `dedupstore verify {d}` for every damaged place"
                )),
            },
            Error::Io { .. } => Failure {
                code: 2,
                kind: "io",
                message: e.to_string(),
                hint: None,
            },
            Error::SnapshotCorrupt { .. } => Failure {
                code: 1,
                kind: "snapshot_corrupt",
                message: e.to_string(),
                hint: Some("nothing was imported; export the snapshot again".into()),
            },
            _ => Failure {
                code: 2,
                kind: "error",
                message: e.to_string(),
                hint: None,
            },
        }
    }
}

type Run = Result<ExitCode, Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli) {
        Ok(code) => code,
        Err(f) => {
            if f.kind == "broken_pipe" {
                return ExitCode::SUCCESS; // `dedupstore dump DIR | head`
            }
            say!("dedupstore: error: {}", f.message);
            if let Some(h) = &f.hint {
                say!("hint: {h}");
            }
            if json {
                let v =
                    json!({ "error": { "kind": f.kind, "message": f.message, "hint": f.hint } });
                let _ = writeln!(io::stdout(), "{v}");
            }
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: Cli) -> Run {
    let json = cli.json;
    // Progress only for a person watching: not into pipes, not with --json.
    let progress = !json && io::stdout().is_terminal() && io::stderr().is_terminal();
    let mut out = io::BufWriter::new(io::stdout().lock());
    let code = match cli.command {
        Command::Stats { dir } => stats(&dir, json, progress, &mut out),
        Command::Verify { dir } => verify(&dir, json, progress, &mut out),
        Command::Dump { dir } => dump(&dir, json, progress, &mut out),
        Command::Get { dir, key, hex } => get(&dir, &key, hex, json, progress, &mut out),
        Command::Compact { dir } => compact(&dir, json, progress, &mut out),
        Command::Export { dir, file } => export(&dir, &file, json, progress, &mut out),
        Command::Import { dir, file } => import(&dir, &file, json, progress, &mut out),
    }?;
    out.flush().map_err(Failure::output)?;
    Ok(code)
}

/// A byte-counting bar over the segment files, or a hidden one.
fn bar(total: u64, shown: bool, what: &'static str) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{msg:8} [{bar:40}] {binary_bytes}/{binary_total_bytes} ({eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    ProgressBar::new(total).with_style(style).with_message(what)
}

/// A spinner while a store opens (recovery reads every segment).
fn spinner(shown: bool, what: &'static str) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner().with_message(what);
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Lists and checks the directory (read-only).
fn open_dir(dir: &Path) -> Result<Dir, Failure> {
    Dir::open(dir).map_err(|e| Failure::from_error(e, dir))
}

/// Whether a store has the directory open; a failed probe is reported as
/// unknown (None), not as an error: reading does not need the lock.
fn probe(dir: &Path) -> Option<bool> {
    match inspect::lock_state(dir) {
        Ok(LockState::Locked) => Some(true),
        Ok(_) => Some(false),
        Err(_) => None,
    }
}

/// Opens the store for `stats` and `compact`: only an existing store (a plain
/// `Store::open` would create one), without background GC, and with the
/// segment size of its newest segment so that the open does not resize it.
fn open_store(dir: &Path, progress: bool) -> Result<Store, Failure> {
    let d = open_dir(dir)?;
    let mut cfg = Config::default().gc_interval(None);
    if let Some(newest) = d.segment_files().last() {
        cfg = cfg.segment_size(newest.len.clamp(64 << 10, 1 << 30));
    }
    let pb = spinner(progress, "opening the store (recovery)");
    let store = Store::open(dir, cfg).map_err(|e| Failure::from_error(e, dir));
    pb.finish_and_clear();
    store
}

fn close(store: Store, dir: &Path) -> Result<(), Failure> {
    store.close().map_err(|e| Failure::from_error(e, dir))
}

fn stats_fields(s: &Stats) -> Vec<(&'static str, u64)> {
    vec![
        ("live_keys", s.live_keys),
        ("expired_keys", s.expired_keys),
        ("indexed_keys", s.indexed_keys),
        ("segments", s.segments),
        ("disk_bytes", s.disk_bytes),
        ("log_bytes", s.log_bytes),
        ("dead_bytes", s.dead_bytes),
        ("index_bytes", s.index_bytes),
        ("truncated_records", s.truncated_records),
        ("truncated_bytes", s.truncated_bytes),
        ("salvaged_bytes", s.salvaged_bytes),
        ("syncs", s.syncs),
        ("gc_runs", s.gc_runs),
        ("gc_bytes_reclaimed", s.gc_bytes_reclaimed),
        ("gc_segments_deleted", s.gc_segments_deleted),
        ("gc_segments_compacted", s.gc_segments_compacted),
        ("gc_records_copied", s.gc_records_copied),
        ("gc_last_duration_us", s.gc_last_duration.as_micros() as u64),
    ]
}

fn gc_fields(r: &GcReport) -> Vec<(&'static str, u64)> {
    vec![
        ("entries_dropped", r.entries_dropped),
        ("segments_deleted", r.segments_deleted),
        ("segments_compacted", r.segments_compacted),
        ("records_copied", r.records_copied),
        ("bytes_reclaimed", r.bytes_reclaimed),
    ]
}

fn fields_json(fields: &[(&'static str, u64)]) -> Value {
    Value::Object(
        fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect(),
    )
}

fn write_table(out: &mut impl Write, fields: &[(&'static str, u64)]) -> io::Result<()> {
    for (k, v) in fields {
        writeln!(out, "{k:<24}{v}")?;
    }
    Ok(())
}

fn stats(dir: &Path, json: bool, progress: bool, out: &mut impl Write) -> Run {
    let store = open_store(dir, progress)?;
    let s = store.stats();
    close(store, dir)?;
    let fields = stats_fields(&s);
    if json {
        let v = json!({ "dir": dir.display().to_string(), "stats": fields_json(&fields) });
        writeln!(out, "{v}").map_err(Failure::output)?;
    } else {
        writeln!(out, "{:<24}{}", "store", dir.display()).map_err(Failure::output)?;
        write_table(out, &fields).map_err(Failure::output)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn compact(dir: &Path, json: bool, progress: bool, out: &mut impl Write) -> Run {
    let store = open_store(dir, progress)?;
    let pb = spinner(progress, "compacting");
    let report = store.compact().map_err(|e| Failure::from_error(e, dir));
    pb.finish_and_clear();
    let report = report?;
    let segments = store.stats().segments;
    close(store, dir)?;
    let fields = gc_fields(&report);
    if json {
        let v = json!({
            "dir": dir.display().to_string(),
            "compact": fields_json(&fields),
            "segments_after": segments,
        });
        writeln!(out, "{v}").map_err(Failure::output)?;
    } else {
        writeln!(out, "{:<24}{}", "store", dir.display()).map_err(Failure::output)?;
        write_table(out, &fields).map_err(Failure::output)?;
        writeln!(out, "{:<24}{segments}", "segments_after").map_err(Failure::output)?;
    }
    Ok(ExitCode::SUCCESS)
}

const LIVE_NOTE: &str = "the store is open in another process: its newest segment may be \
                         mid-write, so a torn tail there is a write in progress, not an error";

fn verify(dir: &Path, json: bool, progress: bool, out: &mut impl Write) -> Run {
    let d = match Dir::open(dir) {
        Ok(d) => d,
        // A damaged metadata file: damage found, reported like the rest.
        Err(e @ Error::Corruption { .. }) => {
            if json {
                let v = json!({
                    "dir": dir.display().to_string(),
                    "clean": false,
                    "problems": [{ "kind": "corruption", "message": e.to_string() }],
                });
                writeln!(out, "{v}").map_err(Failure::output)?;
            } else {
                writeln!(out, "problem     {e}").map_err(Failure::output)?;
                writeln!(out, "result      DAMAGED: the store will not open")
                    .map_err(Failure::output)?;
            }
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(Failure::from_error(e, dir)),
    };
    let locked = probe(dir);
    let pb = bar(d.file_bytes(), progress, "verify");
    let report = d
        .verify_with(|f| pb.inc(f.len))
        .map_err(|e| Failure::from_error(e, dir));
    pb.finish_and_clear();
    let report = report?;
    let corrupt = report
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::Corruption);
    if json {
        writeln!(out, "{}", verify_json(dir, &report, locked)).map_err(Failure::output)?;
    } else {
        write_verify(out, dir, &report, locked).map_err(Failure::output)?;
    }
    Ok(if corrupt {
        ExitCode::from(1)
    } else if report.has_unsupported_version() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn verify_json(dir: &Path, r: &Report, locked: Option<bool>) -> Value {
    let c = &r.records;
    json!({
        "dir": dir.display().to_string(),
        "clean": r.is_clean(),
        "locked": locked,
        "note": (locked == Some(true)).then_some(LIVE_NOTE),
        "segments": r.segments,
        "file_bytes": r.file_bytes,
        "records": {
            "total": c.total(), "insert": c.insert, "remove": c.remove,
            "claim": c.claim, "complete": c.complete, "bytes": c.bytes,
        },
        "torn_tail": r.torn_tail.as_ref().map(|t| json!({
            "segment": t.segment, "file": t.file.display().to_string(),
            "offset": t.offset, "bytes": t.bytes, "records": t.records,
        })),
        "problems": r.problems.iter().map(|p| json!({
            "kind": match p.kind {
                ProblemKind::UnsupportedVersion => "unsupported_version",
                _ => "corruption",
            },
            "file": p.file.display().to_string(),
            "offset": p.offset,
            "reason": p.reason,
            "skipped_bytes": p.skipped_bytes,
        })).collect::<Vec<_>>(),
        "tmp_files": r.tmp_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "vanished_segments": r.vanished_segments,
    })
}

fn write_verify(
    out: &mut impl Write,
    dir: &Path,
    r: &Report,
    locked: Option<bool>,
) -> io::Result<()> {
    let c = &r.records;
    writeln!(out, "store       {}", dir.display())?;
    match locked {
        Some(true) => writeln!(out, "note        {LIVE_NOTE}")?,
        Some(false) => {}
        None => writeln!(
            out,
            "note        could not tell whether a store has it open"
        )?,
    }
    writeln!(out, "segments    {} ({} bytes)", r.segments, r.file_bytes)?;
    writeln!(
        out,
        "records     {} (insert {}, remove {}, claim {}, complete {}; {} bytes)",
        c.total(),
        c.insert,
        c.remove,
        c.claim,
        c.complete,
        c.bytes
    )?;
    match &r.torn_tail {
        None => writeln!(out, "torn tail   none")?,
        Some(t) => writeln!(
            out,
            "torn tail   {} at offset {}: {} bytes, {} record(s); not an error \
             (an interrupted write; the next open truncates it)",
            t.file.display(),
            t.offset,
            t.bytes,
            t.records
        )?,
    }
    for t in &r.tmp_files {
        writeln!(
            out,
            "tmp file    {} (an unfinished creation; the next open deletes it)",
            t.display()
        )?;
    }
    for id in &r.vanished_segments {
        writeln!(
            out,
            "vanished    segment {id} (deleted while reading: GC of the open store)"
        )?;
    }
    for p in &r.problems {
        match p.kind {
            ProblemKind::UnsupportedVersion => writeln!(out, "unsupported {p}")?,
            _ => {
                write!(out, "corruption  {p}")?;
                if p.skipped_bytes > 0 {
                    write!(out, " ({} bytes to the next valid record)", p.skipped_bytes)?;
                }
                writeln!(out)?;
            }
        }
    }
    if r.is_clean() {
        writeln!(out, "result      clean")
    } else if r.has_unsupported_version()
        && !r.problems.iter().any(|p| p.kind == ProblemKind::Corruption)
    {
        writeln!(
            out,
            "result      cannot check: written by a newer format version than this build reads"
        )
    } else {
        writeln!(
            out,
            "result      DAMAGED: {} problem(s); opening the store fails with Error::Corruption \
             unless an index checkpoint covers the damage (RecoveryMode::Salvage keeps every valid record)",
            r.problems.len()
        )
    }
}

fn dump(dir: &Path, json: bool, progress: bool, out: &mut impl Write) -> Run {
    let d = open_dir(dir)?;
    let pb = bar(d.file_bytes(), progress, "dump");
    let mut problems = 0;
    let mut result = Ok(());
    for file in d.segment_files() {
        let seg = match d.read_segment(file) {
            Ok(seg) => seg,
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                say!("note: segment {} was deleted while reading", file.id);
                continue;
            }
            Err(e) => {
                pb.finish_and_clear();
                return Err(Failure::from_error(e, dir));
            }
        };
        for p in seg.problems() {
            problems += 1;
            pb.suspend(|| say!("warning: {p}"));
        }
        result = pb.suspend(|| -> io::Result<()> {
            for rec in seg.records() {
                if json {
                    writeln!(out, "{}", show::record_json(&rec))?;
                } else {
                    writeln!(out, "{}", show::record_line(&rec))?;
                }
            }
            out.flush()
        });
        if result.is_err() {
            break;
        }
        if let Some(t) = seg.torn_tail() {
            pb.suspend(|| {
                say!(
                    "note: torn tail in {} at offset {}: {} bytes, not listed",
                    t.file.display(),
                    t.offset,
                    t.bytes
                )
            });
        }
        pb.inc(file.len);
    }
    pb.finish_and_clear();
    result.map_err(Failure::output)?;
    if problems > 0 {
        say!(
            "warning: {problems} damaged place(s) skipped; run `dedupstore verify {}`",
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn get(
    dir: &Path,
    key: &str,
    is_hex: bool,
    json: bool,
    progress: bool,
    out: &mut impl Write,
) -> Run {
    let key = if is_hex {
        show::parse_hex(key).ok_or_else(|| {
            Failure::usage(format!(
                "--hex: {key:?} is not an even number of hex digits"
            ))
        })?
    } else {
        key.as_bytes().to_vec()
    };
    if key.is_empty() || key.len() > dedupstore::MAX_KEY_LEN {
        return Err(Failure::usage(format!(
            "a key is 1 to {} bytes; this one is {}",
            dedupstore::MAX_KEY_LEN,
            key.len()
        )));
    }
    let d = open_dir(dir)?;
    let locked = probe(dir);
    let now = now_ms();
    let pb = bar(d.file_bytes(), progress, "get");
    let found = d
        .lookup_with(&key, now, |f| pb.inc(f.len))
        .map_err(|e| Failure::from_error(e, dir));
    pb.finish_and_clear();
    let found = found?;
    if found.problems > 0 {
        say!(
            "warning: the store is damaged ({} place(s) skipped); run `dedupstore verify {}`",
            found.problems,
            dir.display()
        );
    }
    let (state, expires) = match &found.state {
        KeyState::Absent => ("absent", None),
        KeyState::Present { expires_at_ms } => ("present", Some(*expires_at_ms)),
        KeyState::InProgress { expires_at_ms, .. } => ("in_progress", Some(*expires_at_ms)),
        KeyState::Completed { expires_at_ms, .. } => ("completed", Some(*expires_at_ms)),
        _ => ("unknown", None),
    };
    let last = found.last.as_ref();
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(Failure::output);
    if json {
        let (k, k_hex) = key_text(&key, true);
        let mut v = json!({
            "dir": dir.display().to_string(),
            "key": k,
            "key_encoding": if k_hex { "hex" } else { "utf8" },
            "state": state,
            "now_ms": now,
            "records": found.records,
            "locked": locked,
            "last_record": last.map(|l| json!({
                "segment": l.segment, "offset": l.offset, "kind": l.kind.as_str(),
                "expires_at": iso8601(l.expires_at_ms), "expires_at_ms": l.expires_at_ms,
            })),
        });
        if let Some(e) = expires {
            v["expires_at"] = json!(iso8601(e));
            v["expires_at_ms"] = json!(e);
        }
        match &found.state {
            KeyState::InProgress {
                token, fingerprint, ..
            } => {
                v["token"] = json!(id64(*token));
                v["fingerprint"] = json!(fingerprint.map(id64));
            }
            KeyState::Completed {
                fingerprint,
                response,
                ..
            } => {
                v["fingerprint"] = json!(fingerprint.map(id64));
                v["response_len"] = json!(response.len());
                v["response_hex"] = json!(hex(response));
                if let Ok(s) = std::str::from_utf8(response) {
                    v["response_utf8"] = json!(s);
                }
            }
            _ => {}
        }
        return w(out, v.to_string()).map(|()| ExitCode::SUCCESS);
    }
    let k = key_display(&key);
    let at = |l: &inspect::LastRecord| format!("segment {} offset {}", l.segment, l.offset);
    let when = |ms: u64| format!("{} ({ms})", iso8601(ms));
    let line = match (&found.state, last) {
        (KeyState::Absent, None) => format!("{k}: absent (no record of it)"),
        (KeyState::Absent, Some(l)) if l.kind == inspect::RecordKind::Remove => {
            format!("{k}: absent (removed, {})", at(l))
        }
        (KeyState::Absent, Some(l)) => format!(
            "{k}: absent (its {} expired at {}, {})",
            l.kind,
            when(l.expires_at_ms),
            at(l)
        ),
        (KeyState::Present { expires_at_ms }, Some(l)) => {
            format!("{k}: present until {}, {}", when(*expires_at_ms), at(l))
        }
        (
            KeyState::InProgress {
                expires_at_ms,
                token,
                fingerprint,
            },
            Some(l),
        ) => format!(
            "{k}: in progress, leased until {}, token {}, fingerprint {}, {}",
            when(*expires_at_ms),
            id64(*token),
            fingerprint.map_or("none".into(), id64),
            at(l)
        ),
        (
            KeyState::Completed {
                expires_at_ms,
                fingerprint,
                response,
            },
            Some(l),
        ) => {
            let body = match std::str::from_utf8(response) {
                Ok(s) if !s.chars().any(char::is_control) => format!("{s:?}"),
                _ => format!("hex {}", hex(response)),
            };
            format!(
                "{k}: completed, kept until {}, fingerprint {}, response {} bytes: {body}, {}",
                when(*expires_at_ms),
                fingerprint.map_or("none".into(), id64),
                response.len(),
                at(l)
            )
        }
        (s, _) => format!("{k}: {s:?}"),
    };
    w(out, line)?;
    if locked == Some(true) {
        say!("note: the store is open in another process; this is the state of its files on disk now");
    }
    Ok(ExitCode::SUCCESS)
}

/// An I/O failure on a snapshot file.
fn file_failure(op: &str, file: &Path, e: io::Error) -> Failure {
    Failure {
        code: 2,
        kind: "io",
        message: format!("cannot {op} {}: {e}", file.display()),
        hint: None,
    }
}

fn export(dir: &Path, file: &Path, json: bool, progress: bool, out: &mut impl Write) -> Run {
    let store = open_store(dir, progress)?;
    let mut tmp_name = file.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let f = std::fs::File::create(&tmp).map_err(|e| file_failure("create", &tmp, e))?;
    let mut w = io::BufWriter::with_capacity(1 << 20, f);
    let pb = spinner(progress, "exporting");
    let report = store
        .export(&mut w, |p| {
            pb.set_message(format!("exporting: {} IDs", p.ids))
        })
        .map_err(|e| Failure::from_error(e, dir));
    pb.finish_and_clear();
    let report = report?;
    let f = w
        .into_inner()
        .map_err(|e| file_failure("write", &tmp, e.into_error()))?;
    f.sync_all().map_err(|e| file_failure("fsync", &tmp, e))?;
    std::fs::rename(&tmp, file).map_err(|e| file_failure("rename", &tmp, e))?;
    close(store, dir)?;
    let fields = vec![
        ("ids", report.ids),
        ("inserts", report.inserts),
        ("claims", report.claims),
        ("completes", report.completes),
        ("bytes", report.bytes),
    ];
    snapshot_report(out, json, "export", dir, file, &fields)
}

fn import(dir: &Path, file: &Path, json: bool, progress: bool, out: &mut impl Write) -> Run {
    let f = std::fs::File::open(file).map_err(|e| file_failure("open", file, e))?;
    let store = if dir.exists() {
        open_store(dir, progress)?
    } else {
        // Check the snapshot before creating anything: a bad one leaves no
        // new directory behind.
        let check = std::fs::File::open(file).map_err(|e| file_failure("open", file, e))?;
        dedupstore::verify_snapshot(io::BufReader::new(check))
            .map_err(|e| Failure::from_error(e, dir))?;
        Store::open(dir, Config::default().gc_interval(None))
            .map_err(|e| Failure::from_error(e, dir))?
    };
    let pb = spinner(progress, "importing");
    let report = store
        .import(f, |p| {
            pb.set_message(format!("{:?}: {} IDs", p.phase, p.ids))
        })
        .map_err(|e| Failure::from_error(e, dir));
    pb.finish_and_clear();
    let report = report?;
    close(store, dir)?;
    let fields = vec![
        ("ids", report.info.ids),
        ("added", report.added),
        ("merged", report.merged),
        ("unchanged", report.unchanged),
        ("expired", report.expired),
        ("source_store_id", u64::from(report.info.source_store_id)),
    ];
    snapshot_report(out, json, "import", dir, file, &fields)
}

/// Prints what `export` or `import` (`what`) did: one JSON object, or a
/// table headed by the store and the snapshot file.
fn snapshot_report(
    out: &mut impl Write,
    json: bool,
    what: &str,
    dir: &Path,
    file: &Path,
    fields: &[(&'static str, u64)],
) -> Run {
    if json {
        let v = json!({
            "dir": dir.display().to_string(),
            "file": file.display().to_string(),
            what: fields_json(fields),
        });
        writeln!(out, "{v}").map_err(Failure::output)?;
    } else {
        writeln!(out, "{:<24}{}", "store", dir.display()).map_err(Failure::output)?;
        writeln!(out, "{:<24}{}", "snapshot", file.display()).map_err(Failure::output)?;
        write_table(out, fields).map_err(Failure::output)?;
    }
    Ok(ExitCode::SUCCESS)
}

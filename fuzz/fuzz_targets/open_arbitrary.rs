//! Arbitrary bytes as the metadata file and log segments of a store: open
//! either succeeds (and then answers, inserts and reopens) or returns an
//! error. It never panics, hangs, or allocates without bound.
//!
//! Input framing (see `fuzz/README.md`): repeated
//! `[file: u8][len: u16 LE][len bytes]`, where file 0 is `dedupstore.meta`
//! and file n > 0 is segment n (at most 4 segments).

#![no_main]

use std::path::{Path, PathBuf};
use std::time::Duration;

use dedupstore::sim::{CrashMode, SimFs};
use dedupstore::{Config, RecoveryMode, Store};
use libfuzzer_sys::fuzz_target;

fn files(mut data: &[u8]) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    while data.len() >= 3 && out.len() < 6 {
        let which = data[0] % 5;
        let len = (u16::from_le_bytes([data[1], data[2]]) as usize).min(data.len() - 3);
        let bytes = data[3..3 + len].to_vec();
        data = &data[3 + len..];
        let name = if which == 0 {
            "dedupstore.meta".to_string()
        } else {
            format!("seg-{which:010}.log")
        };
        out.push((Path::new("/db").join(name), bytes));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let fs = SimFs::new();
    for (path, bytes) in files(data) {
        fs.write_file(&path, &bytes);
    }
    for mode in [RecoveryMode::Strict, RecoveryMode::Salvage] {
        let fs = fs.crash(CrashMode::Kill);
        let cfg = Config::default()
            .segment_size(64 << 10)
            .gc_interval(None)
            .recovery(mode);
        let Ok(store) = Store::open_with(fs.clone(), "/db", cfg.clone()) else {
            continue;
        };
        // An opened store must work, whatever it was opened from.
        let _ = store.contains(b"probe");
        let _ = store.stats();
        if store
            .check_and_insert(b"fuzz-new-key", Duration::from_secs(60))
            .is_ok()
        {
            assert!(store.contains(b"fuzz-new-key").unwrap_or(true));
        }
        let _ = store.compact();
        drop(store);
        if let Ok(store) = Store::open_with(fs, "/db", cfg) {
            let _ = store.contains(b"fuzz-new-key");
        }
    }
});

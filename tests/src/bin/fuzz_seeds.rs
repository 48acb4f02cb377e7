//! Writes the committed seed corpora of the fuzz targets:
//! `cargo run -p dedupstore-tests --bin fuzz_seeds -- fuzz/corpus`

use std::path::{Path, PathBuf};
use std::time::Duration;

use dedupstore::sim::{CrashMode, SimFs};
use dedupstore::{Config, Durability, Store};

/// `[file][len u16][bytes]` framing of `open_arbitrary`; trailing zeros of a
/// segment are left out (the store re-extends its newest segment).
fn frame(fs: &SimFs) -> Vec<u8> {
    let mut out = Vec::new();
    let mut names = fs.file_names(Path::new("/db"));
    names.sort();
    for name in names {
        let which = match name.as_str() {
            "dedupstore.meta" => 0u8,
            n => match n
                .strip_prefix("seg-")
                .and_then(|s| s.strip_suffix(".log"))
                .and_then(|s| s.parse().ok())
            {
                Some(id) => id,
                None => continue,
            },
        };
        let bytes = fs
            .read_file(&Path::new("/db").join(&name))
            .unwrap_or_default();
        let end = bytes
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |p| p + 1)
            .min(u16::MAX as usize);
        out.push(which);
        out.extend_from_slice(&(end as u16).to_le_bytes());
        out.extend_from_slice(&bytes[..end]);
    }
    out
}

fn store_image(keys: u32, remove: bool, crash: Option<CrashMode>) -> Vec<u8> {
    let fs = SimFs::new();
    let cfg = Config::default()
        .durability(Durability::None)
        .segment_size(64 << 10)
        .gc_interval(None);
    let s = Store::open_with(fs.clone(), "/db", cfg).expect("open");
    for i in 0..keys {
        let _ = s
            .check_and_insert(format!("id-{i}").as_bytes(), Duration::from_secs(3600))
            .expect("insert");
    }
    if remove {
        s.remove(b"id-1").expect("remove");
    }
    let image = match crash {
        Some(mode) => fs.crash(mode),
        None => {
            drop(s);
            return frame(&fs);
        }
    };
    std::mem::forget(s);
    frame(&image)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)
}

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    let open = root.join("open_arbitrary");
    write(&open, "clean-30", &store_image(30, false, None))?;
    write(&open, "removed", &store_image(20, true, None))?;
    write(
        &open,
        "killed",
        &store_image(25, true, Some(CrashMode::Kill)),
    )?;
    write(&open, "empty", &store_image(0, false, None))?;

    let ops = root.join("ops_model");
    let mut rng = fastrand::Rng::with_seed(5);
    for i in 0..8 {
        let bytes: Vec<u8> = (0..rng.usize(16..400)).map(|_| rng.u8(..)).collect();
        write(&ops, &format!("random-{i}"), &bytes)?;
    }
    // Insert, sync, remove, torn crash, contains.
    write(
        &ops,
        "insert-crash",
        &[0, 8, 0, 3, 9, 11, 0, 0, 8, 3, 0, 15, 2, 7, 6, 3, 0],
    )?;

    let rec = root.join("record_decode");
    let image = store_image(3, true, None);
    // The framed image holds the meta file, then segment 1: header + records.
    write(&rec, "meta", &image[3..23])?;
    write(&rec, "segment-header", &image[26..90])?;
    write(&rec, "records", &image[90..])?;
    Ok(())
}

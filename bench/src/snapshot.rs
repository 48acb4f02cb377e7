//! `--export-import N,...`: export and import rates of one store to and
//! from a local file, dedupstore only, in this process.
//!
//! For each N: insert N random 16-byte IDs (batches of 1000, no fsync, GC
//! off) into a store; export it to a file in the same directory (buffered
//! writes, then an fsync of the file, counted); import the file into a
//! fresh empty store (`Durability::Immediate`: one sync per batch) and into
//! the same store again (every ID already there: the merge writes nothing);
//! check that the new store holds every ID. Prints IDs/s each way and
//! snapshot bytes per ID. The page cache is warm (the files were just
//! written).

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::time::{Duration, Instant};

use dedupstore::{Config, Durability, Store};

use crate::reopen::key;
use crate::Res;

const TTL: Duration = Duration::from_secs(86_400);

pub fn run(root: &std::path::Path, sizes: &[usize]) -> Res<()> {
    std::fs::create_dir_all(root)?;
    println!(
        "| IDs | export IDs/s | snapshot B/ID | import into empty store IDs/s | \
         import again (no change) IDs/s | verify only IDs/s |"
    );
    println!("|---|---|---|---|---|---|");
    for &n in sizes {
        let n = n as u64;
        let tmp = tempfile::Builder::new()
            .prefix("snapshot-")
            .tempdir_in(root)?;
        let cfg = || {
            Config::default()
                .durability(Durability::None)
                .gc_interval(None)
        };
        let src = Store::open(tmp.path().join("src"), cfg())?;
        let mut batch = Vec::with_capacity(1000);
        let mut i = 0;
        while i < n {
            batch.clear();
            batch.extend((i..n.min(i + 1000)).map(key));
            src.check_and_insert_batch(&batch, TTL)?;
            i += batch.len() as u64;
        }
        src.sync()?;

        let path = tmp.path().join("snapshot.ddsnap");
        let t = Instant::now();
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&path)?);
        let rep = src.export(&mut out, |_| {})?;
        out.flush()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        let export = n as f64 / t.elapsed().as_secs_f64();
        if rep.ids != n {
            return Err(format!("exported {} IDs of {n}", rep.ids).into());
        }
        drop(src);

        let t = Instant::now();
        let info = dedupstore::verify_snapshot(BufReader::new(File::open(&path)?))?;
        let verify = n as f64 / t.elapsed().as_secs_f64();

        let dst = Store::open(
            tmp.path().join("dst"),
            Config::default()
                .durability(Durability::Immediate)
                .gc_interval(None),
        )?;
        let t = Instant::now();
        let r = dst.import(File::open(&path)?, |_| {})?;
        let import = n as f64 / t.elapsed().as_secs_f64();
        if r.added != n {
            return Err(format!("imported {} IDs of {n}", r.added).into());
        }
        let t = Instant::now();
        let again = dst.import(File::open(&path)?, |_| {})?;
        let import_again = n as f64 / t.elapsed().as_secs_f64();
        if again.unchanged != n {
            return Err("a second import changed IDs".into());
        }
        let probe: Vec<[u8; 16]> = (0..n).step_by(997).map(key).collect();
        if dst.contains_batch(&probe)?.iter().any(|&b| !b) {
            return Err("an exported ID is missing after the import".into());
        }
        println!(
            "| {n} | {export:.0} | {:.1} | {import:.0} | {import_again:.0} | {verify:.0} |",
            info.bytes as f64 / n as f64
        );
    }
    Ok(())
}

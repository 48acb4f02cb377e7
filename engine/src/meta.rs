//! The store's metadata file, `dedupstore.meta`: it marks a directory as a
//! dedupstore and carries the format version, checked before anything else.
//!
//! ```text
//! 0..8    magic "DDUPMETA"
//! 8..12   format version (u32)
//! 12..16  store id (u32): random at creation; 0 in older stores
//! 16..20  crc32 of bytes 0..16
//! ```

use std::path::Path;

use crate::error::{io_err, Error, Result};
use crate::format::{le, meta as at, FORMAT_VERSION};
use crate::vfs::{Vfs, VfsFile};

pub const FILE_NAME: &str = "dedupstore.meta";
const TMP_NAME: &str = "dedupstore.meta.tmp";
pub use crate::format::meta::{LEN, MAGIC};

fn encode(store_id: u32) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0..MAGIC.len()].copy_from_slice(MAGIC);
    le::put_u32(&mut b, at::VERSION, FORMAT_VERSION);
    le::put_u32(&mut b, at::STORE_ID, store_id);
    let crc = crc32fast::hash(&b[0..at::CRC]);
    le::put_u32(&mut b, at::CRC, crc);
    b
}

/// Checks a metadata file's bytes: magic, version, checksum.
pub fn check(b: &[u8], path: &Path) -> Result<()> {
    let corrupt = |offset, reason| Error::Corruption {
        file: path.to_path_buf(),
        offset,
        reason,
    };
    if b.len() < LEN {
        return Err(corrupt(b.len() as u64, "metadata file is truncated"));
    }
    if &b[0..MAGIC.len()] != MAGIC {
        return Err(corrupt(0, "not a dedupstore metadata file (bad magic)"));
    }
    let version = le::u32_at(b, at::VERSION);
    if version > FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            file: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if crc32fast::hash(&b[0..at::CRC]) != le::u32_at(b, at::CRC) {
        return Err(corrupt(at::CRC as u64, "metadata checksum mismatch"));
    }
    if version == 0 {
        return Err(corrupt(at::VERSION as u64, "format version 0"));
    }
    Ok(())
}

/// A new store's id: random (hashed from a per-process random key, the
/// time and the pid), never 0 (0 marks a store older than checkpoints).
fn new_store_id() -> u32 {
    use std::hash::BuildHasher;
    let h = std::collections::hash_map::RandomState::new()
        .hash_one((std::process::id(), std::time::SystemTime::now()));
    u32::try_from(h >> 32).unwrap_or(1) | 1
}

/// Checks the metadata file, creating it (crash-safely) in a new store.
/// Returns the store id (see `format::meta::STORE_ID`).
pub fn open_or_create<F: Vfs>(fs: &F, dir: &Path, names: &[String]) -> Result<u32> {
    let path = dir.join(FILE_NAME);
    if names.iter().any(|n| n == FILE_NAME) {
        let f = fs.open(&path, false).map_err(io_err("open", &path))?;
        let bytes = f.read_all().map_err(io_err("read", &path))?;
        check(&bytes, &path)?;
        return Ok(le::u32_at(&bytes, at::STORE_ID));
    }
    if names
        .iter()
        .any(|n| crate::segment::parse_name(n).is_some())
    {
        // The metadata file is made durable before the first segment exists.
        return Err(Error::Corruption {
            file: path,
            offset: 0,
            reason: "metadata file missing beside log segments",
        });
    }
    let tmp = dir.join(TMP_NAME);
    let id = new_store_id();
    let f = fs.open(&tmp, true).map_err(io_err("create", &tmp))?;
    f.write_all(&encode(id)).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    fs.rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
    fs.sync_dir(dir).map_err(io_err("fsync dir", dir))?;
    Ok(id)
}

//! The in-memory index: key hash -> record location, sharded by hash.
//!
//! Each entry is 16 bytes: a 32-bit tag from the key's hash, the record's
//! segment and offset, and the key's horizon rounded up to the second. A lookup that
//! matches a tag is always confirmed against the full key in the log before it
//! counts, so the index is exact: hash collisions cost a comparison, never a
//! wrong answer. A miss touches no log byte unless two different keys in one
//! shard share all 32 tag bits (about 1 in 4 billion per probe).

use std::sync::{Mutex, MutexGuard};

use crossbeam_utils::CachePadded;
use hashbrown::HashTable;

pub const SHARD_BITS: u32 = 8;
pub const SHARDS: usize = 1 << SHARD_BITS;

/// One index entry: where the key's latest record is, and its horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Low 32 bits of the key's hash; a match is confirmed against the key.
    pub tag: u32,
    /// Segment id of the record.
    pub seg: u32,
    /// Byte offset of the record in its segment.
    pub off: u32,
    /// The key's *horizon* in whole seconds, rounded up: the latest expiry of
    /// the record the entry points at and of every older record of the key
    /// that it shadows (an insert it replaced, a claim whose lease a shorter
    /// completion ended, the insert a removal removed). Until it has passed,
    /// the entry and its record are kept, so no older record can come back
    /// once a shorter-lived newer one is gone. `u32::MAX` means never (an
    /// expiry past 2106): such an entry is never dropped by time.
    ///
    /// Whether the key is present is decided by its record (kind and exact
    /// expiry in milliseconds), read from the log.
    pub keep_s: u32,
}

/// The key's 64-bit hash (xxh3): shard, tag and table position come from it.
pub fn hash_key(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The shard of a hash: its top `SHARD_BITS` bits.
pub fn shard_of(hash: u64) -> usize {
    (hash >> (64 - SHARD_BITS)) as usize
}

/// The tag of a hash: its low 32 bits.
#[expect(
    clippy::cast_possible_truncation,
    reason = "the tag is the low 32 bits of the hash by definition"
)]
pub fn tag_of(hash: u64) -> u32 {
    hash as u32
}

/// Table hash of an entry: derived from the tag alone, so the table can
/// rehash on growth without reading keys back from the log.
fn spread(tag: u32) -> u64 {
    (tag as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// A horizon in ms as stored in an entry: seconds rounded up, saturating to
/// `u32::MAX` = never, so the stored value is never earlier than the real one.
pub fn keep_secs(horizon_ms: u64) -> u32 {
    u32::try_from(horizon_ms.div_ceil(1000)).unwrap_or(u32::MAX)
}

impl Entry {
    /// The horizon in ms, rounded up (`u64::MAX` for never).
    pub fn horizon_ms(&self) -> u64 {
        if self.keep_s == u32::MAX {
            u64::MAX
        } else {
            self.keep_s as u64 * 1000
        }
    }

    /// True once the horizon has certainly passed at `now_ms`: the entry and
    /// its record no longer matter. Never early (rounded up), never true for
    /// a saturated horizon.
    pub fn past_horizon(&self, now_ms: u64) -> bool {
        self.horizon_ms() <= now_ms
    }
}

/// One shard of the index: a hash table of entries, behind its own lock.
#[derive(Default)]
pub struct Shard {
    table: HashTable<Entry>,
}

impl Shard {
    /// The entry for the key whose hash has `tag`, confirmed by `is_key`
    /// (which compares the full key in the log).
    pub fn find(&self, tag: u32, mut is_key: impl FnMut(&Entry) -> bool) -> Option<Entry> {
        self.table
            .find(spread(tag), |e| e.tag == tag && is_key(e))
            .copied()
    }

    /// Every entry whose tag is `tag`, unconfirmed: candidates for a key
    /// whose hash has it (almost always zero or one). The caller confirms a
    /// candidate against the full key before it counts.
    pub fn candidates(&self, tag: u32) -> impl Iterator<Item = &Entry> {
        self.table
            .iter_hash(spread(tag))
            .filter(move |e| e.tag == tag)
    }

    /// The key's slot, found in one probe: occupied by its entry, or vacant
    /// (room reserved) for it.
    pub fn entry(
        &mut self,
        tag: u32,
        mut is_key: impl FnMut(&Entry) -> bool,
    ) -> hashbrown::hash_table::Entry<'_, Entry> {
        self.table.entry(
            spread(tag),
            |e| e.tag == tag && is_key(e),
            |e| spread(e.tag),
        )
    }

    /// Inserts or replaces the entry for the key that `is_key` confirms.
    pub fn upsert(&mut self, entry: Entry, mut is_key: impl FnMut(&Entry) -> bool) {
        let tag = entry.tag;
        match self
            .table
            .find_mut(spread(tag), |e| e.tag == tag && is_key(e))
        {
            Some(slot) => *slot = entry,
            None => {
                self.table
                    .insert_unique(spread(tag), entry, |e| spread(e.tag));
            }
        }
    }

    /// Removes the entry for the key that `is_key` confirms; returns it.
    pub fn remove(&mut self, tag: u32, mut is_key: impl FnMut(&Entry) -> bool) -> Option<Entry> {
        match self
            .table
            .find_entry(spread(tag), |e| e.tag == tag && is_key(e))
        {
            Ok(occupied) => Some(occupied.remove().0),
            Err(_) => None,
        }
    }

    /// Entries in the shard.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True if the shard has no entry.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Visits every entry.
    pub fn for_each(&self, f: impl FnMut(&Entry)) {
        self.table.iter().for_each(f);
    }

    /// Keeps only the entries `keep` accepts.
    pub fn retain(&mut self, keep: impl FnMut(&mut Entry) -> bool) {
        self.table.retain(keep);
    }

    /// Makes room for `additional` more entries.
    pub fn reserve(&mut self, additional: usize) {
        self.table.reserve(additional, |e| spread(e.tag));
    }

    /// Adds entries known to be of distinct keys (a checkpoint's), without
    /// comparing keys: the table is sized once for `at_most` more entries,
    /// then each goes in unchecked.
    pub fn bulk_load(&mut self, entries: impl Iterator<Item = Entry>, at_most: usize) {
        self.table.reserve(at_most, |e| spread(e.tag));
        for e in entries {
            self.table
                .insert_unique(spread(e.tag), e, |e| spread(e.tag));
        }
    }

    /// Bytes of heap this shard's table holds.
    pub fn heap_bytes(&self) -> usize {
        // hashbrown: one entry plus one control byte per bucket.
        self.table.capacity() * (std::mem::size_of::<Entry>() + 1)
    }
}

pub struct Index {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            shards: (0..SHARDS)
                .map(|_| CachePadded::new(Mutex::new(Shard::default())))
                .collect(),
        }
    }
}

impl Index {
    pub fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard lock cannot leave a half-made entry
        // (each mutation is one table call), so poisoning is ignored.
        self.shards[shard].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Exclusive access without locking, while the index is not shared yet.
    pub fn shard_mut(&mut self, shard: usize) -> &mut Shard {
        self.shards[shard]
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves room for about `n` more keys spread over all shards.
    pub fn reserve_total(&mut self, n: usize) {
        let per = n / SHARDS + n / SHARDS / 16;
        for s in 0..SHARDS {
            self.shard_mut(s).reserve(per);
        }
    }

    pub fn len(&self) -> usize {
        (0..SHARDS).map(|s| self.lock(s).len()).sum()
    }

    pub fn heap_bytes(&self) -> usize {
        (0..SHARDS).map(|s| self.lock(s).heap_bytes()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_is_16_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 16);
    }

    #[test]
    fn colliding_tags_are_kept_apart_by_the_key_check() {
        // Two "keys" (told apart by offset) with the same tag.
        let mut s = Shard::default();
        let a = Entry {
            tag: 7,
            seg: 1,
            off: 64,
            keep_s: 10,
        };
        let b = Entry {
            tag: 7,
            seg: 1,
            off: 96,
            keep_s: 20,
        };
        s.upsert(a, |e| e.off == 64);
        s.upsert(b, |e| e.off == 96);
        assert_eq!(s.len(), 2);
        assert_eq!(s.find(7, |e| e.off == 96), Some(b));
        assert_eq!(s.find(7, |e| e.off == 64), Some(a));
        assert_eq!(
            s.find(7, |_| false),
            None,
            "a tag match alone is never a hit"
        );
        assert_eq!(s.remove(7, |e| e.off == 64), Some(a));
        assert_eq!(s.find(7, |e| e.off == 96), Some(b));
    }

    #[test]
    fn keep_secs_rounds_up_and_saturates_to_never() {
        assert_eq!(keep_secs(0), 0);
        assert_eq!(keep_secs(1), 1);
        assert_eq!(keep_secs(1000), 1);
        assert_eq!(keep_secs(1001), 2);
        assert_eq!(keep_secs(u64::MAX), u32::MAX);
        // 2106-02-07 and later: saturated, so never past.
        let e = Entry {
            tag: 0,
            seg: 1,
            off: 64,
            keep_s: keep_secs((u32::MAX as u64 + 10) * 1000),
        };
        assert!(!e.past_horizon(u64::MAX - 1));
        let e = Entry { keep_s: 5, ..e };
        assert!(!e.past_horizon(4_999));
        assert!(e.past_horizon(5_000));
    }
}

//! Opening a store: load the index checkpoint if it matches the log (see
//! `checkpoint`), replay the segments after it (every segment without one)
//! into the index, truncate a torn tail, and refuse (or, in salvage mode,
//! skip) anything else that is damaged.

use std::path::Path;
use std::sync::Arc;

use crate::checkpoint::{self, Written};
use crate::config::{Checkpoints, Config, RecoveryMode};
use crate::error::{io_err, Error, Result};
use crate::index::{hash_key, keep_secs, shard_of, tag_of, Entry, Index, SHARDS};
use crate::log::{entry_is_key, key_of, record_at, Damage, SegmentTable};
use crate::poison::Poison;
use crate::record::{self, Decoded, Record};
use crate::segment::{self, Segment, HEADER_LEN};
use crate::vfs::Vfs;

#[derive(Debug, Default, Clone, Copy)]
pub struct RecoveryStats {
    /// Torn or unsynced records cut from the tail of the newest segment.
    pub truncated_records: u64,
    pub truncated_bytes: u64,
    /// Damaged bytes skipped by `RecoveryMode::Salvage`.
    pub salvaged_bytes: u64,
    /// Entries loaded from the index checkpoint (0: none was used).
    pub checkpoint_entries: u64,
    /// Why a checkpoint file present was ignored, if it was.
    pub checkpoint_ignored: Option<&'static str>,
    /// Records replayed from the log.
    pub replayed_records: u64,
}

pub struct Recovered<F: Vfs> {
    pub active: Arc<Segment<F>>,
    pub end: usize,
    /// The active segment's watermark as found: below it every byte was
    /// synced successfully; at and above it, pages may be clean in the page
    /// cache without being on disk (a failed writeback), so open re-dirties them.
    pub active_wm: u64,
    pub stats: RecoveryStats,
    /// Segments in which `RecoveryMode::Salvage` skipped damaged bytes; open
    /// rewrites them so that later strict opens do not trip on the damage.
    pub damaged: Vec<u32>,
    /// The checkpoint used, if one was.
    pub checkpoint: Option<Written>,
}

/// A record read during recovery, waiting to be applied to the index.
#[derive(Clone, Copy)]
struct Pending {
    hash: u64,
    /// For a remove: the horizon it was written with.
    expires_at: u64,
    off: u32,
}

/// Applies one segment's records, in log order, to the index. The latest
/// record for a key decides: an unexpired insert, claim or complete makes it
/// present; an expired one or a remove makes it absent. Each record's entry
/// keeps the key's horizon (the latest expiry of it and of the records it
/// shadows, `Entry::keep_s`), and the segment is told that horizon.
///
/// The records are first grouped by shard (a stable counting sort, so each
/// key's records keep their log order), then applied shard by shard: one
/// shard's table is small enough to stay in cache, which makes replay
/// several times faster than inserting in log order across all shards.
fn apply_segment<F: Vfs>(
    index: &mut Index,
    table: &SegmentTable<F>,
    seg: &Segment<F>,
    recs: &[Pending],
    sorted: &mut Vec<Pending>,
    now: u64,
) -> Result<()> {
    let mut starts = vec![0usize; SHARDS + 1];
    for r in recs {
        starts[shard_of(r.hash) + 1] += 1;
    }
    for s in 0..SHARDS {
        starts[s + 1] += starts[s];
    }
    // Scatter the records themselves (not indexes into them), so that the
    // apply loop below reads them sequentially.
    let mut fill = starts.clone();
    sorted.clear();
    sorted.resize(
        recs.len(),
        Pending {
            hash: 0,
            expires_at: 0,
            off: 0,
        },
    );
    for r in recs {
        let s = shard_of(r.hash);
        sorted[fill[s]] = *r;
        fill[s] += 1;
    }
    for s in 0..SHARDS {
        let shard = index.shard_mut(s);
        for r in &sorted[starts[s]..starts[s + 1]] {
            // The key is read from the log only on a tag match (rare): the
            // records are visited in shard order, so reading it for every
            // record would be a cache miss each.
            // A record an entry loaded from the checkpoint points at was not
            // read by this open: a damaged one fails it (`Damage`), as a
            // full replay would.
            let damage = Damage::default();
            let is_key = |e: &Entry| entry_is_key(table, e, key_of(record_at(seg, r.off)), &damage);
            let tag = tag_of(r.hash);
            let prev = shard.find(tag, is_key).map_or(0, |e| e.horizon_ms());
            damage.check()?;
            let horizon = r.expires_at.max(prev);
            seg.note_record(horizon);
            if horizon > now {
                shard.upsert(
                    Entry {
                        tag,
                        seg: seg.id,
                        off: r.off,
                        keep_s: keep_secs(horizon),
                    },
                    is_key,
                );
            } else {
                shard.remove(tag, is_key);
            }
        }
    }
    Ok(())
}

pub fn recover<F: Vfs>(
    fs: &F,
    dir: &Path,
    cfg: &Config,
    store_id: u32,
    table: &SegmentTable<F>,
    index: &mut Index,
    poison: &Arc<Poison>,
) -> Result<Recovered<F>> {
    let now = cfg.clock.now_ms();
    let mut ids = Vec::new();
    let mut removed_tmp = false;
    let mut has_checkpoint = false;
    for name in fs.list(dir).map_err(io_err("list", dir))? {
        if name == checkpoint::FILE_NAME {
            has_checkpoint = true;
        } else if name.ends_with(".tmp") {
            // A segment or metadata file whose creation did not finish.
            let p = dir.join(&name);
            fs.remove(&p).map_err(io_err("remove orphan", &p))?;
            removed_tmp = true;
        } else if let Some(id) = segment::parse_name(&name) {
            ids.push(id);
        }
    }
    // Invariant: everything open relies on is durable before it answers,
    // directory entries included. The previous process may have died
    // between renaming a segment into place and fsyncing the directory, or
    // between unlinking one and the fsync: this makes the names it left
    // durable (and the removal of the temp files above).
    let _ = removed_tmp;
    poison.sync(|| fs.sync_dir(dir).map_err(io_err("fsync dir", dir)))?;
    ids.sort_unstable();
    let mut stats = RecoveryStats::default();
    let mut ckpt = None;
    if has_checkpoint && cfg.checkpoints != Checkpoints::Off {
        if cfg.recovery == RecoveryMode::Salvage {
            stats.checkpoint_ignored = Some("salvage mode replays the whole log");
        } else {
            match checkpoint::open(fs, dir) {
                Ok(c) => ckpt = Some(c),
                Err(why) => stats.checkpoint_ignored = Some(why),
            }
        }
    }
    let Some(&newest) = ids.last() else {
        if has_checkpoint && cfg.checkpoints != Checkpoints::Off {
            stats.checkpoint_ignored.get_or_insert("the log is empty");
            checkpoint::remove(fs, dir);
        }
        let seg = Arc::new(Segment::create(
            fs,
            dir,
            1,
            crate::log::first_segment_size(cfg.segment_size),
            poison.clone(),
        )?);
        table.insert(seg.clone());
        return Ok(Recovered {
            active: seg,
            end: HEADER_LEN,
            active_wm: HEADER_LEN as u64,
            stats,
            damaged: Vec::new(),
            checkpoint: None,
        });
    };
    // Segments below the one the checkpoint ends in are not read (unless it
    // turns out not to match): no need to prefault them.
    let covered_below = ckpt.as_ref().map_or(0, |c| c.covers().0);
    let mut opened = Vec::with_capacity(ids.len());
    for &id in &ids {
        let path = dir.join(segment::file_name(id));
        let (seg, wm) = Segment::open(
            fs,
            &path,
            id,
            // Segments grow (`log::next_segment_size`): the newest keeps its
            // size, and the next roll sizes the next one; only one cut
            // shorter than a first segment (a file truncated by a crash or
            // a copy) is extended, to that size.
            (id == newest).then_some(crate::log::first_segment_size(cfg.segment_size)),
            id >= covered_below,
            poison.clone(),
        )?;
        let seg = Arc::new(seg);
        table.insert(seg.clone());
        opened.push((seg, wm));
    }
    // Use the checkpoint if it matches the log; otherwise replay it all.
    let mut used = None;
    if let Some(c) = ckpt.take() {
        let checked = checkpoint::validate(&c, store_id, &opened, now).and_then(|()| {
            let capacity = |id: u32| {
                opened
                    .iter()
                    .find(|(s, _)| s.id == id)
                    .map(|(s, _)| s.capacity())
            };
            checkpoint::load(&c, index, now, &capacity)
        });
        match checked {
            Ok(n) => {
                for row in &c.segs {
                    if let Some((seg, _)) = opened.iter().find(|(s, _)| s.id == row.id) {
                        seg.set_counts(row.records, row.max_horizon);
                    }
                }
                stats.checkpoint_entries = n;
                used = Some((
                    c.covers(),
                    Written {
                        covers: c.covers,
                        bytes: c.file_len(),
                    },
                ));
            }
            Err(why) => {
                *index = Index::default();
                stats.checkpoint_ignored = Some(why);
            }
        }
    }
    if stats.checkpoint_ignored.is_some() {
        // Rebuilt later (at close, after GC, or in the background).
        checkpoint::remove(fs, dir);
    }
    // What to replay: every segment from the one the checkpoint ends in,
    // that one from where the checkpoint ends.
    let (from_seg, from_off) = used.map_or((0, HEADER_LEN as u64), |(c, _)| c);
    let from_off = usize::try_from(from_off).unwrap_or(usize::MAX);
    let start_of = |id: u32| if id == from_seg { from_off } else { HEADER_LEN };
    let opened: Vec<_> = opened
        .into_iter()
        .filter(|(s, _)| s.id >= from_seg)
        .collect();
    // Bytes of records to replay, as far as the watermarks tell. A hostile
    // watermark may claim more than the file holds: never trust it for sizes.
    let logged: u64 = opened
        .iter()
        .map(|(seg, wm)| {
            wm.unwrap_or(0)
                .min(seg.capacity() as u64)
                .saturating_sub(start_of(seg.id) as u64)
        })
        .sum();
    // Two stages on two threads: one reads and checks segment i+1 while the
    // other applies segment i to the index. Segments reach the index in id
    // order, so each key's records are applied in log order.
    let mode = cfg.recovery;
    let (tx, rx) = crossbeam_channel::bounded::<Result<(usize, Vec<Pending>, usize)>>(1);
    let mut active = None;
    let mut damaged = Vec::new();
    let scanned = std::thread::scope(|s| -> Result<(RecoveryStats, Vec<u32>)> {
        let opened = &opened;
        let scanner = s.spawn(move || {
            let mut stats = RecoveryStats::default();
            let mut damaged = Vec::new();
            for (i, (seg, wm)) in opened.iter().enumerate() {
                let guess = wm.unwrap_or(0).min(seg.capacity() as u64) / 24;
                let mut recs = Vec::with_capacity(guess as usize);
                let salvaged = stats.salvaged_bytes;
                let from = start_of(seg.id);
                let scanned = scan(
                    seg,
                    *wm,
                    from,
                    seg.id == newest,
                    mode,
                    &mut stats,
                    |rec, off| {
                        recs.push(Pending {
                            hash: hash_key(rec.key),
                            expires_at: rec.expires_at,
                            off: u32::try_from(off).unwrap_or(u32::MAX),
                        });
                    },
                );
                if stats.salvaged_bytes != salvaged {
                    damaged.push(seg.id);
                }
                let failed = scanned.is_err();
                if tx.send(scanned.map(|end| (i, recs, end))).is_err() || failed {
                    break;
                }
            }
            (stats, damaged)
        });
        let mut sorted = Vec::new();
        let mut replayed = 0;
        for msg in rx {
            let (i, recs, end) = msg?;
            let seg = &opened[i].0;
            replayed += recs.len() as u64;
            if i == 0 && !recs.is_empty() {
                // Size the tables once, from the first segment's bytes per
                // record, instead of growing them step by step.
                let per_record = (end.saturating_sub(start_of(seg.id)) / recs.len()).max(1) as u64;
                index.reserve_total(usize::try_from(logged / per_record).unwrap_or(0));
            }
            apply_segment(index, table, seg, &recs, &mut sorted, now)?;
            if seg.id == newest {
                active = Some((seg.clone(), end));
            }
        }
        stats.replayed_records = replayed;
        scanner
            .join()
            .map_err(|_| Error::InvalidConfig("recovery scanner panicked".into()))
    })?;
    let (scanned, found_damage) = scanned;
    damaged.extend(found_damage);
    stats.truncated_records += scanned.truncated_records;
    stats.truncated_bytes += scanned.truncated_bytes;
    stats.salvaged_bytes += scanned.salvaged_bytes;
    let (active, end) = active.ok_or_else(|| Error::InvalidConfig("no newest segment".into()))?;
    let active_wm = opened
        .last()
        .and_then(|(_, wm)| *wm)
        .unwrap_or(HEADER_LEN as u64);
    Ok(Recovered {
        active,
        end,
        active_wm,
        stats,
        damaged,
        checkpoint: used.map(|(_, w)| w),
    })
}

/// Reads a segment's records in order, calling `apply` on each. Returns the
/// end of the valid records (where appends continue, for the newest one).
fn scan<F: Vfs>(
    seg: &Segment<F>,
    wm: Option<u64>,
    from: usize,
    is_newest: bool,
    mode: RecoveryMode,
    stats: &mut RecoveryStats,
    mut apply: impl FnMut(&Record<'_>, usize),
) -> Result<usize> {
    let cap = seg.capacity();
    let corrupt = |offset: usize, reason| Error::Corruption {
        file: seg.path.clone(),
        offset: offset as u64,
        reason,
    };
    // Sealed segments were synced whole and their watermark persisted before
    // the next segment was created; only the newest may lack a readable one.
    let wm = match wm {
        Some(w) => w,
        None if is_newest => HEADER_LEN as u64,
        None if mode == RecoveryMode::Salvage => cap as u64,
        None => return Err(corrupt(24, "sealed segment has no valid watermark")),
    };
    if wm > cap as u64 && mode == RecoveryMode::Strict {
        return Err(corrupt(cap, "segment is shorter than its synced length"));
    }
    let mut off = from;
    let end = loop {
        let problem = match record::decode(seg.read(off, cap - off)) {
            Decoded::Record(rec, len) => {
                apply(&rec, off);
                off += len;
                continue;
            }
            Decoded::End => None,
            Decoded::Invalid(reason) => Some(reason),
        };
        let below_wm = (off as u64) < wm;
        // Invariant: the log ends at the first blank or bad record, unless
        // that spot was already synced (then it is damage, not a tail), and
        // only the newest segment can have a torn tail.
        if !below_wm && (problem.is_none() || is_newest) {
            break off;
        }
        let reason = problem.unwrap_or("blank bytes inside synced records");
        if mode == RecoveryMode::Strict {
            return Err(corrupt(off, reason));
        }
        match next_record(seg, off + 1) {
            Some(next) => {
                stats.salvaged_bytes += (next - off) as u64;
                off = next;
            }
            None => {
                stats.salvaged_bytes +=
                    (last_nonzero(seg, off).map_or(off, |l| l + 1) - off) as u64;
                break off;
            }
        }
    };
    if is_newest {
        truncate_tail(seg, end, stats);
    }
    Ok(end)
}

/// First offset at or after `from` where a valid record starts.
fn next_record<F: Vfs>(seg: &Segment<F>, from: usize) -> Option<usize> {
    let cap = seg.capacity();
    (from..cap).find(|&p| matches!(record::decode(seg.read(p, cap - p)), Decoded::Record(..)))
}

/// Offset of the last non-zero byte at or after `from`.
fn last_nonzero<F: Vfs>(seg: &Segment<F>, from: usize) -> Option<usize> {
    let cap = seg.capacity();
    seg.read(from, cap - from)
        .iter()
        .rposition(|&b| b != 0)
        .map(|p| from + p)
}

/// Zeroes whatever follows the last valid record of the newest segment: a
/// torn record, or records that outlived a lost earlier page. Leaving them
/// would let a later append line up with them and bring them back.
fn truncate_tail<F: Vfs>(seg: &Segment<F>, end: usize, stats: &mut RecoveryStats) {
    let cap = seg.capacity();
    let Some(last) = last_nonzero(seg, end) else {
        return;
    };
    let mut p = end;
    while p <= last {
        match record::decode(seg.read(p, cap - p)) {
            Decoded::Record(_, len) => {
                stats.truncated_records += 1;
                p += len;
            }
            Decoded::End => {
                // Skip the blank run. A record after it may start with zero
                // bytes of its checksum, so look back up to three bytes.
                let next = p + seg
                    .read(p, last + 1 - p)
                    .iter()
                    .position(|&b| b != 0)
                    .unwrap_or(last + 1 - p);
                p = (next.saturating_sub(3).max(p + 1)..=next)
                    .find(|&q| matches!(record::decode(seg.read(q, cap - q)), Decoded::Record(..)))
                    .unwrap_or(next);
            }
            Decoded::Invalid(_) => {
                stats.truncated_records += 1;
                p += 1;
                while p <= last
                    && matches!(record::decode(seg.read(p, cap - p)), Decoded::Invalid(_))
                {
                    p += 1;
                }
            }
        }
    }
    stats.truncated_bytes += (last + 1 - end) as u64;
    // SAFETY: recovery runs before the segment is shared with any reader or
    // writer; the scanner is the only thread touching this segment.
    unsafe { seg.zero_range(end, last + 1) };
}

//! The replica manifest: the one object that says what a restore needs.
//!
//! Text, one item per line, fields separated by one space, numbers in
//! decimal except checksums (16 lowercase hex digits, XXH3-64, seed 0):
//!
//! ```text
//! dedupstore-replica 1
//! round <n>
//! segment <id> <record bytes>
//! chunk <segment id> <start> <end> <xxh3 of the chunk's bytes>
//! ...
//! end <xxh3 of every byte before this line>
//! ```
//!
//! `segment` lines ascend by id; each is followed by its `chunk` lines,
//! which cover its record bytes `[0, record bytes)` exactly, in order, with
//! no gap or overlap (offsets count from the end of the segment's 64-byte
//! header). A chunk is stored as the object `chunks/<name>` under the
//! replica's prefix ([`Chunk::name`]): the name carries the segment, the
//! range and the checksum, so two objects of one name have the same bytes.
//! The version on the first line is checked before anything else: a
//! manifest from a newer version is refused, never half read.

use std::fmt::Write as _;

/// The manifest format version this build writes and reads (up to).
pub const VERSION: u32 = 1;
const MAGIC: &str = "dedupstore-replica";

/// One uploaded, immutable byte range of a segment's record bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub seg: u32,
    pub start: u64,
    pub end: u64,
    pub hash: u64,
}

impl Chunk {
    /// Its object name under `<prefix>/chunks/`.
    pub fn name(&self) -> String {
        format!(
            "{:010}-{:012}-{:012}-{:016x}",
            self.seg, self.start, self.end, self.hash
        )
    }
}

/// One segment of the manifest: its record bytes, in chunks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Segment {
    pub id: u32,
    pub chunks: Vec<Chunk>,
}

impl Segment {
    /// Record bytes covered (the end of the last chunk).
    pub fn len(&self) -> u64 {
        self.chunks.last().map_or(0, |c| c.end)
    }
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub round: u64,
    pub segments: Vec<Segment>,
}

/// Why a manifest was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Written by a newer version.
    Newer(u32),
    /// Damaged or not a manifest.
    Bad(String),
}

impl Manifest {
    pub fn encode(&self) -> String {
        let mut s = format!("{MAGIC} {VERSION}\nround {}\n", self.round);
        for seg in &self.segments {
            let _ = writeln!(s, "segment {} {}", seg.id, seg.len());
            for c in &seg.chunks {
                let _ = writeln!(s, "chunk {} {} {} {:016x}", c.seg, c.start, c.end, c.hash);
            }
        }
        let sum = xxhash_rust::xxh3::xxh3_64(s.as_bytes());
        let _ = writeln!(s, "end {sum:016x}");
        s
    }

    pub fn parse(bytes: &[u8]) -> Result<Manifest, ParseError> {
        let bad = |why: String| ParseError::Bad(why);
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
        // The version first: a newer manifest may be laid out differently.
        let first = text.lines().next().unwrap_or("");
        let version = match first.split(' ').collect::<Vec<_>>()[..] {
            [MAGIC, v] => v
                .parse::<u32>()
                .map_err(|_| bad(format!("bad version {v:?}")))?,
            _ => return Err(bad("not a dedupstore replica manifest".into())),
        };
        if version > VERSION {
            return Err(ParseError::Newer(version));
        }
        if version == 0 {
            return Err(bad("version 0".into()));
        }
        // The checksum line: the last line, over everything before it.
        let body_end = text
            .trim_end_matches('\n')
            .rfind('\n')
            .map(|i| i + 1)
            .ok_or_else(|| bad("truncated: no checksum line".into()))?;
        let (body, last) = text.split_at(body_end);
        let want = last
            .strip_prefix("end ")
            .map(|h| h.trim_end_matches('\n'))
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .ok_or_else(|| bad("truncated: no checksum line".into()))?;
        if !last.ends_with('\n') || xxhash_rust::xxh3::xxh3_64(body.as_bytes()) != want {
            return Err(bad("checksum mismatch".into()));
        }
        let mut m = Manifest::default();
        let mut declared: Vec<u64> = Vec::new();
        for (n, line) in body.lines().enumerate().skip(1) {
            let f: Vec<&str> = line.split(' ').collect();
            let num = |i: usize| -> Result<u64, ParseError> {
                f.get(i)
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| ParseError::Bad(format!("line {}: bad number", n + 1)))
            };
            match f.first().copied() {
                Some("round") if n == 1 && f.len() == 2 => m.round = num(1)?,
                Some("segment") if f.len() == 3 => {
                    let id = u32::try_from(num(1)?)
                        .ok()
                        .filter(|&id| id > m.segments.last().map_or(0, |s| s.id))
                        .ok_or_else(|| bad(format!("line {}: segment ids must ascend", n + 1)))?;
                    m.segments.push(Segment { id, chunks: vec![] });
                    declared.push(num(2)?);
                }
                Some("chunk") if f.len() == 5 => {
                    let seg = m
                        .segments
                        .last_mut()
                        .ok_or_else(|| bad(format!("line {}: chunk before any segment", n + 1)))?;
                    let hash = u64::from_str_radix(f[4], 16)
                        .map_err(|_| bad(format!("line {}: bad checksum", n + 1)))?;
                    let c = Chunk {
                        seg: u32::try_from(num(1)?).unwrap_or(0),
                        start: num(2)?,
                        end: num(3)?,
                        hash,
                    };
                    if c.seg != seg.id || c.start != seg.len() || c.end <= c.start {
                        return Err(bad(format!(
                            "line {}: chunk does not continue its segment",
                            n + 1
                        )));
                    }
                    seg.chunks.push(c);
                }
                _ => return Err(bad(format!("line {}: unexpected {line:?}", n + 1))),
            }
        }
        for (seg, len) in m.segments.iter().zip(declared) {
            if seg.len() != len {
                return Err(bad(format!(
                    "segment {}: chunks cover {} of its {len} bytes",
                    seg.id,
                    seg.len()
                )));
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let c = |seg, start, end| Chunk {
            seg,
            start,
            end,
            hash: start ^ 0xabc,
        };
        Manifest {
            round: 7,
            segments: vec![
                Segment {
                    id: 2,
                    chunks: vec![c(2, 0, 10), c(2, 10, 64)],
                },
                Segment {
                    id: 3,
                    chunks: vec![],
                },
                Segment {
                    id: 5,
                    chunks: vec![c(5, 0, 32)],
                },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(Manifest::parse(m.encode().as_bytes()), Ok(m));
    }

    #[test]
    fn any_changed_byte_or_cut_is_refused() {
        let text = sample().encode().into_bytes();
        for i in 0..text.len() {
            let mut t = text.clone();
            t[i] ^= 0x01;
            assert!(Manifest::parse(&t).is_err(), "flip at {i} accepted");
            assert!(Manifest::parse(&text[..i]).is_err(), "cut at {i} accepted");
        }
    }

    #[test]
    fn a_newer_version_is_refused_as_such() {
        let text = sample().encode().replacen(" 1\n", " 2\n", 1);
        assert_eq!(Manifest::parse(text.as_bytes()), Err(ParseError::Newer(2)));
    }

    #[test]
    fn gaps_and_disorder_are_refused_even_with_a_right_checksum() {
        let reseal = |body: &str| {
            let sum = xxhash_rust::xxh3::xxh3_64(body.as_bytes());
            format!("{body}end {sum:016x}\n")
        };
        for body in [
            "dedupstore-replica 1\nround 1\nsegment 2 20\nchunk 2 0 10 0\nchunk 2 11 20 0\n",
            "dedupstore-replica 1\nround 1\nsegment 2 20\nchunk 2 0 10 0\n",
            "dedupstore-replica 1\nround 1\nsegment 3 0\nsegment 2 0\n",
            "dedupstore-replica 1\nround 1\nchunk 2 0 10 0\n",
            "dedupstore-replica 1\nround 1\nsegment 2 10\nchunk 3 0 10 0\n",
        ] {
            assert!(
                matches!(
                    Manifest::parse(reseal(body).as_bytes()),
                    Err(ParseError::Bad(_))
                ),
                "{body:?} accepted"
            );
        }
    }
}

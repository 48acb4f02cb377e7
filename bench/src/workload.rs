//! The dedup workload: a stream of message IDs with redeliveries.

/// Key format of the generated IDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyKind {
    /// 16 random bytes.
    Random16,
    /// 36-byte UUID strings (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`).
    Uuid,
}

impl KeyKind {
    /// Bytes per key: every key of a kind has this length.
    pub const fn key_len(self) -> usize {
        match self {
            KeyKind::Random16 => 16,
            KeyKind::Uuid => 36,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Params {
    pub ids: usize,
    pub key: KeyKind,
    /// Fraction of messages that are redeliveries of an earlier ID.
    pub redelivery: f64,
    /// A redelivered ID was first seen at most this many messages back.
    pub distance: usize,
    pub seed: u64,
}

pub struct Stream {
    /// Key bytes, all of equal length, back to back.
    pub bytes: Vec<u8>,
    pub key_len: usize,
    /// Redeliveries injected: the exact number of duplicates a correct
    /// backend reports.
    pub duplicates: usize,
    /// Indexes (into the stream) of first deliveries, for lookups.
    pub firsts: Vec<u32>,
}

impl Stream {
    pub fn len(&self) -> usize {
        self.bytes.len() / self.key_len
    }
    pub fn key(&self, i: usize) -> &[u8] {
        &self.bytes[i * self.key_len..(i + 1) * self.key_len]
    }
}

pub fn new_key(rng: &mut fastrand::Rng, kind: KeyKind, out: &mut Vec<u8>) {
    match kind {
        KeyKind::Random16 => out.extend((0..16).map(|_| rng.u8(..))),
        KeyKind::Uuid => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for i in 0..36 {
                out.push(match i {
                    8 | 13 | 18 | 23 => b'-',
                    14 => b'4',
                    19 => HEX[8 + rng.usize(..4)],
                    _ => HEX[rng.usize(..16)],
                });
            }
        }
    }
}

pub fn generate(p: &Params) -> Stream {
    let mut rng = fastrand::Rng::with_seed(p.seed);
    let key_len = p.key.key_len();
    let mut bytes = Vec::with_capacity(p.ids * key_len);
    let mut firsts = Vec::with_capacity(p.ids);
    let mut duplicates = 0;
    for i in 0..p.ids {
        if i > 0 && rng.f64() < p.redelivery {
            let back = 1 + rng.usize(..p.distance.min(firsts.len()));
            let src = firsts[firsts.len() - back] as usize;
            bytes.extend_from_within(src * key_len..(src + 1) * key_len);
            duplicates += 1;
        } else {
            new_key(&mut rng, p.key, &mut bytes);
            firsts.push(i as u32);
        }
    }
    Stream {
        bytes,
        key_len,
        duplicates,
        firsts,
    }
}

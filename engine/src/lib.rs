#![doc = include_str!("../../README.md")]

mod claim;
mod clock;
mod commit;
mod config;
mod error;
mod gc;
mod index;
mod log;
mod meta;
mod poison;
mod record;
mod recovery;
mod segment;
mod store;
pub mod vfs;

#[cfg(any(test, feature = "sim"))]
pub mod sim;

/// Hot-path internals, for micro-benchmarks only. Not a stable API.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::index::{hash_key, shard_of, tag_of, Entry, Shard};
    pub use crate::meta::check as check_meta;
    pub use crate::record::{
        body_len, decode, encode, encode_body, encoded_len, Body, Decoded, Kind, Record,
    };
    pub use crate::segment::check_header as check_segment_header;
}

pub use claim::{Claim, ClaimToken};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, Durability, RecoveryMode};
pub use error::{Error, Result};
pub use gc::GcReport;
pub use record::{MAX_KEY_LEN, MAX_RESPONSE_LEN};
pub use store::{Outcome, Stats, Store, MAX_TTL};

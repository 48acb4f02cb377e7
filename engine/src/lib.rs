#![doc = include_str!("../../README.md")]

mod clock;
mod commit;
mod config;
mod error;
mod index;
mod log;
mod meta;
mod record;
mod recovery;
mod segment;
mod store;
pub mod vfs;

#[cfg(any(test, feature = "sim"))]
pub mod sim;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, Durability, RecoveryMode};
pub use error::{Error, Result};
pub use record::MAX_KEY_LEN;
pub use store::{Outcome, Stats, Store, MAX_TTL};

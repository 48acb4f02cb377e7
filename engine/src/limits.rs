//! Limits on what callers pass in, and their checks. A leaf module: every
//! other module may use it, it uses none of them.

use std::time::Duration;

use crate::error::{Error, Result};

/// Longest key accepted, in bytes (keys are 1 to 1024 bytes).
pub const MAX_KEY_LEN: usize = 1024;

/// Largest response [`crate::Store::complete`] stores, in bytes.
pub const MAX_RESPONSE_LEN: usize = 32 << 10;

/// The longest TTL (and lease) accepted: 10 years.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Keys are 1 to [`MAX_KEY_LEN`] bytes.
pub fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidKey { len: key.len() });
    }
    Ok(())
}

/// TTLs and leases are greater than zero and at most [`MAX_TTL`].
pub fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(Error::InvalidTtl { ttl });
    }
    Ok(())
}

/// A duration in whole milliseconds; saturates (never reached for a TTL
/// that passed `check_ttl`).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `now + ttl` in ms since the epoch, saturating.
pub fn expiry(now_ms: u64, ttl: Duration) -> u64 {
    now_ms.saturating_add(millis(ttl))
}

// The key length is stored as a u16 and the response length as a u32.
const _: () = assert!(MAX_KEY_LEN <= u16::MAX as usize);
const _: () = assert!(MAX_RESPONSE_LEN <= u32::MAX as usize);

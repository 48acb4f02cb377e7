//! Formatting helpers: hex, keys, timestamps, records.

use std::fmt::Write as _;

use dedupstore::inspect::RecordView;
use serde_json::{json, Value};

/// Bytes of a response shown by `dump` before it is cut.
pub const RESPONSE_PREVIEW: usize = 32;

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses hex digits (an optional `0x` prefix, even length).
pub fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A 64-bit id (token, fingerprint) as fixed-width hex: exact in JSON,
/// where large numbers lose precision in many readers.
pub fn id64(v: u64) -> String {
    format!("{v:#018x}")
}

/// A key as it reads best: UTF-8 text when it is printable, else hex.
/// Returns the text and whether it is hex.
pub fn key_text(key: &[u8], for_json: bool) -> (String, bool) {
    match std::str::from_utf8(key) {
        Ok(s)
            if !s.chars().any(char::is_control)
                && (for_json || !(s.starts_with("hex:") || s.chars().any(char::is_whitespace))) =>
        {
            (s.to_owned(), false)
        }
        _ => (hex(key), true),
    }
}

/// A key for text output: `order-42`, or `hex:0001ff` when not printable.
pub fn key_display(key: &[u8]) -> String {
    match key_text(key, false) {
        (s, false) => s,
        (h, true) => format!("hex:{h}"),
    }
}

/// Milliseconds since the Unix epoch as ISO-8601 UTC, e.g.
/// `2026-11-23T13:33:22.000Z`.
pub fn iso8601(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let rem = ms % 86_400_000;
    let (h, m, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    // Days to a civil date (H. Hinnant's algorithm, proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// A response cut to `RESPONSE_PREVIEW` bytes, in hex, with `...` if cut.
pub fn response_preview(r: &[u8]) -> (String, bool) {
    let cut = r.len() > RESPONSE_PREVIEW;
    let mut s = hex(&r[..r.len().min(RESPONSE_PREVIEW)]);
    if cut {
        s.push_str("...");
    }
    (s, cut)
}

/// One `dump` line.
pub fn record_line(r: &RecordView<'_>) -> String {
    let mut s = format!(
        "seg={} off={} {:<8} key={} expires={} ({})",
        r.segment,
        r.offset,
        r.kind,
        key_display(r.key),
        iso8601(r.expires_at_ms),
        r.expires_at_ms
    );
    if let Some(fp) = r.fingerprint {
        let _ = write!(s, " fingerprint={}", id64(fp));
    }
    if let Some(t) = r.token {
        let _ = write!(s, " token={}", id64(t));
    }
    if let Some(resp) = r.response {
        let (preview, _) = response_preview(resp);
        let _ = write!(s, " response={}B:{preview}", resp.len());
    }
    s
}

/// One `dump --json` line.
pub fn record_json(r: &RecordView<'_>) -> Value {
    let (key, is_hex) = key_text(r.key, true);
    let mut v = json!({
        "segment": r.segment,
        "offset": r.offset,
        "len": r.len,
        "kind": r.kind.as_str(),
        "key": key,
        "key_encoding": if is_hex { "hex" } else { "utf8" },
        "expires_at": iso8601(r.expires_at_ms),
        "expires_at_ms": r.expires_at_ms,
    });
    if let Some(fp) = r.fingerprint {
        v["fingerprint"] = json!(id64(fp));
    }
    if let Some(t) = r.token {
        v["token"] = json!(id64(t));
    }
    if let Some(resp) = r.response {
        let (preview, cut) = response_preview(resp);
        v["response_len"] = json!(resp.len());
        v["response_hex"] = json!(preview);
        v["response_truncated"] = json!(cut);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_known_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso8601(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        // Never panics, even at the end of the range.
        assert!(iso8601(u64::MAX).ends_with('Z'));
    }

    #[test]
    fn hex_round_trip_and_keys() {
        assert_eq!(parse_hex("0x00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(parse_hex(&hex(b"abc")), Some(b"abc".to_vec()));
        assert_eq!(parse_hex("abc"), None);
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(parse_hex("é1"), None);
        assert_eq!(key_display(b"order-42"), "order-42");
        assert_eq!(key_display(&[0, 1]), "hex:0001");
        assert_eq!(key_display(b"a b"), "hex:612062");
        assert_eq!(key_text(b"a b", true), ("a b".into(), false));
    }
}

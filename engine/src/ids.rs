//! Id sources and time formatting.
//!
//! Ids that steer a run (invocation ids, approval ids) are made once and journaled;
//! the source is injectable so tests and golden journals are reproducible.

use std::sync::atomic::{AtomicU64, Ordering};

use ulid::Ulid;

/// Makes new run ids (ULIDs) and uuid4-shaped ids.
pub trait IdSource: Send + Sync + 'static {
    fn ulid(&self) -> Ulid;
    fn uuid4(&self) -> String;
}

/// Random ids (the default).
pub struct RandomIds;

fn uuid4_from(bits: u128) -> String {
    // Set the version (4) and variant (10xx) bits of RFC 9562.
    let bits = (bits & !(0xf << 76)) | (0x4 << 76);
    let bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

impl IdSource for RandomIds {
    fn ulid(&self) -> Ulid {
        Ulid::generate()
    }

    fn uuid4(&self) -> String {
        uuid4_from(Ulid::generate().random() ^ (Ulid::generate().random() << 48))
    }
}

/// Deterministic ids from a counter, for tests and golden journals.
pub struct SequentialIds {
    next: AtomicU64,
    timestamp_ms: u64,
}

impl SequentialIds {
    pub fn new(timestamp_ms: u64) -> SequentialIds {
        SequentialIds {
            next: AtomicU64::new(1),
            timestamp_ms,
        }
    }
}

impl IdSource for SequentialIds {
    fn ulid(&self) -> Ulid {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Ulid::from_parts(self.timestamp_ms + n, u128::from(n))
    }

    fn uuid4(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        uuid4_from(u128::from(n))
    }
}

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (hour, minute, second) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_764_028_800_000), "2025-11-25T00:00:00.000Z");
    }

    #[test]
    fn uuid4_shape() {
        let id = RandomIds.uuid4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        let seq = SequentialIds::new(1);
        assert_ne!(seq.uuid4(), seq.uuid4());
    }
}

//! The deduplication key: `timestamp:distinct_id:token:event_name`.
//!
//! Two events are duplicates when they have the same event time (normalised to epoch
//! milliseconds), `distinct_id`, `token` and `event` name. The UUID is never part of the
//! key, because a retried event often carries a fresh UUID.
//!
//! What RocksDB stores is a fixed-width [`StoredKey`]: the timestamp as 8 order-preserving
//! big-endian bytes followed by a 128-bit XXH3 hash of the length-prefixed text fields.
//! The timestamp prefix makes "evict everything older than T" a single range delete; the
//! length prefixes keep `("a:b", "c")` and `("a", "b:c")` apart.
//!
//! This module knows nothing about JSON; [`crate::event`] turns message bytes into an
//! [`EventKey`].

use std::fmt;

use xxhash_rust::xxh3::Xxh3;

/// Width in bytes of a [`StoredKey`].
pub const STORED_KEY_LEN: usize = 24;

/// The fields of an event that decide whether it is a duplicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventKey<'a> {
    /// Event time in milliseconds since the Unix epoch (UTC).
    pub timestamp_ms: i64,
    pub distinct_id: &'a str,
    pub token: &'a str,
    pub event: &'a str,
}

impl EventKey<'_> {
    /// The fixed-width key kept in the store.
    pub fn stored(&self) -> StoredKey {
        let mut hasher = Xxh3::new();
        for field in [self.distinct_id, self.token, self.event] {
            hasher.update(&(field.len() as u64).to_le_bytes());
            hasher.update(field.as_bytes());
        }
        StoredKey::from_parts(self.timestamp_ms, hasher.digest128())
    }
}

/// The human-readable composite key, `timestamp:distinct_id:token:event_name`, as the
/// product documentation describes it. Used in logs; the store keeps [`StoredKey`].
impl fmt::Display for EventKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.timestamp_ms, self.distinct_id, self.token, self.event
        )
    }
}

/// A deduplication key as stored: 8 bytes of order-preserving timestamp, then 16 bytes of
/// hash. Byte order equals timestamp order, so keys older than T form one key range.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredKey([u8; STORED_KEY_LEN]);

impl StoredKey {
    fn from_parts(timestamp_ms: i64, hash: u128) -> Self {
        let mut bytes = [0u8; STORED_KEY_LEN];
        bytes[..8].copy_from_slice(&encode_timestamp(timestamp_ms));
        bytes[8..].copy_from_slice(&hash.to_be_bytes());
        Self(bytes)
    }

    /// Rebuilds a key read back from the store; `None` if it is not a stored key.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The event time this key was built from, in epoch milliseconds.
    pub fn timestamp_ms(&self) -> i64 {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.0[..8]);
        decode_timestamp(prefix)
    }

    /// The smallest stored key whose timestamp is `timestamp_ms`: every key older than
    /// the timestamp sorts strictly before it.
    pub fn lower_bound(timestamp_ms: i64) -> Self {
        Self::from_parts(timestamp_ms, 0)
    }
}

/// The key already ends in a 128-bit hash; handing 64 of its bits to the hasher lets
/// in-memory maps use a pass-through hasher instead of hashing 24 bytes again.
impl std::hash::Hash for StoredKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.0[8..16]);
        state.write_u64(u64::from_ne_bytes(word));
    }
}

impl AsRef<[u8]> for StoredKey {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoredKey({}:", self.timestamp_ms())?;
        for byte in &self.0[8..] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

/// Big-endian with the sign bit flipped, so that byte order equals numeric order for every
/// `i64` (events dated before 1970 sort before those after it).
fn encode_timestamp(timestamp_ms: i64) -> [u8; 8] {
    ((timestamp_ms as u64) ^ (1 << 63)).to_be_bytes()
}

fn decode_timestamp(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key<'a>(ts: i64, distinct_id: &'a str, token: &'a str, event: &'a str) -> EventKey<'a> {
        EventKey {
            timestamp_ms: ts,
            distinct_id,
            token,
            event,
        }
    }

    #[test]
    fn composite_key_reads_as_documented() {
        let k = key(1_700_000_000_000, "user-1", "phc_abc", "$pageview");
        assert_eq!(k.to_string(), "1700000000000:user-1:phc_abc:$pageview");
    }

    #[test]
    fn stored_key_is_fixed_width_and_keeps_timestamp() {
        let k = key(1_700_000_000_123, "u", "t", "e").stored();
        assert_eq!(k.as_ref().len(), STORED_KEY_LEN);
        assert_eq!(k.timestamp_ms(), 1_700_000_000_123);
        assert_eq!(StoredKey::from_slice(k.as_ref()), Some(k));
        assert_eq!(StoredKey::from_slice(&[0u8; 8]), None);
    }

    #[test]
    fn field_boundaries_do_not_collide() {
        let a = key(1, "a:b", "c", "e").stored();
        let b = key(1, "a", "b:c", "e").stored();
        let c = key(1, "a", "bc", "e").stored();
        let d = key(1, "ab", "c", "e").stored();
        let e = key(1, "", "abc", "e").stored();
        let all = [a, b, c, d, e];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }

    #[test]
    fn negative_timestamps_sort_before_positive() {
        let before = key(-1, "u", "t", "e").stored();
        let epoch = key(0, "u", "t", "e").stored();
        assert!(before < epoch);
        assert_eq!(before.timestamp_ms(), -1);
    }

    proptest! {
        #[test]
        fn byte_order_is_timestamp_order(a in any::<i64>(), b in any::<i64>()) {
            let ka = key(a, "u", "t", "e").stored();
            let kb = key(b, "u", "t", "e").stored();
            if a < b {
                prop_assert!(ka < kb);
                prop_assert!(ka < StoredKey::lower_bound(b));
            }
            prop_assert!(StoredKey::lower_bound(a) <= ka);
            prop_assert_eq!(ka.timestamp_ms(), a);
        }

        #[test]
        fn same_fields_same_key(ts in any::<i64>(), d in ".*", t in ".*", e in ".*") {
            prop_assert_eq!(key(ts, &d, &t, &e).stored(), key(ts, &d, &t, &e).stored());
        }

        #[test]
        fn moving_a_boundary_changes_the_key(
            ts in any::<i64>(), x in ".{0,8}", y in ".{0,8}", z in ".{0,8}", split in 0usize..8,
        ) {
            // Re-split x+y at another char boundary: the concatenation is the same, the
            // fields are not, so the key must differ.
            let joined = format!("{x}{y}");
            let boundaries: Vec<usize> = joined
                .char_indices()
                .map(|(i, _)| i)
                .chain(std::iter::once(joined.len()))
                .collect();
            let cut = boundaries[split % boundaries.len()];
            let (x2, y2) = joined.split_at(cut);
            if x2 != x {
                prop_assert_ne!(key(ts, &x, &y, &z).stored(), key(ts, x2, y2, &z).stored());
            }
        }
    }
}

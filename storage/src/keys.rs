//! Key encodings. Every key is compared as plain bytes (memcmp), so each encoding is chosen
//! so that byte order is the order the readers need: big-endian integers, and strings
//! prefixed with their u32 big-endian length so one string never runs into the next.

use crate::RunId;

pub(crate) const JOURNAL_KEY_LEN: usize = 24;
pub(crate) const RUN_KEY_LEN: usize = 16;
pub(crate) const STATUS_KEY_LEN: usize = 17;

/// The seq of a run's sentinel: an empty `journal` entry written with the run's creation,
/// before its first record (seq 1). It is not a record; readers start at seq 1.
///
/// It keeps small records from taking a page each. In redb's B-tree a key greater than a
/// leaf's last key goes to the next leaf, and a key inserted in front of a leaf that holds
/// one value larger than a page gets a new leaf of its own. Without sentinels the leaf after
/// a run's last records is the next run's first record, and a run's first record (its
/// prompt) is often that large: while runs take turns, every record appended to one of them
/// took a 4 KiB leaf of its own (64 concurrent runs of 100 steps: 170 MB, against 42.5 MB
/// with sentinels; FORMAT.md). The small sentinel in front of each run takes those keys
/// instead, and its leaf fills and splits as leaves do.
pub(crate) const RUN_SENTINEL_SEQ: u64 = 0;

/// `run_id (u128 BE) ‖ seq (u64 BE)`: records of a run are contiguous and in seq order.
pub(crate) fn journal_key(run: RunId, seq: u64) -> [u8; JOURNAL_KEY_LEN] {
    let mut key = [0u8; JOURNAL_KEY_LEN];
    key[..16].copy_from_slice(&run.0.to_be_bytes());
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// Inverse of [`journal_key`].
pub(crate) fn split_journal_key(key: &[u8; JOURNAL_KEY_LEN]) -> (RunId, u64) {
    let mut run = [0u8; 16];
    run.copy_from_slice(&key[..16]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&key[16..]);
    (
        ulid::Ulid(u128::from_be_bytes(run)),
        u64::from_be_bytes(seq),
    )
}

/// `run_id (u128 BE)`: ULIDs start with their millisecond time, so byte order is age order.
pub(crate) fn run_key(run: RunId) -> [u8; RUN_KEY_LEN] {
    run.0.to_be_bytes()
}

pub(crate) fn run_from_key(bytes: &[u8]) -> Option<RunId> {
    let arr: [u8; 16] = bytes.try_into().ok()?;
    Some(ulid::Ulid(u128::from_be_bytes(arr)))
}

/// `status tag ‖ run_id`.
pub(crate) fn status_key(tag: u8, run: RunId) -> [u8; STATUS_KEY_LEN] {
    let mut key = [0u8; STATUS_KEY_LEN];
    key[0] = tag;
    key[1..].copy_from_slice(&run.0.to_be_bytes());
    key
}

/// Builder of variable-length composite keys.
#[derive(Default, Clone, Debug)]
pub(crate) struct KeyBuf(Vec<u8>);

impl KeyBuf {
    pub fn new() -> Self {
        KeyBuf(Vec::with_capacity(64))
    }

    /// A length-prefixed string: `len (u32 BE) ‖ bytes`.
    pub fn str(mut self, s: &str) -> Self {
        // Strings longer than 4 GiB cannot reach here: redb values are limited far below.
        let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }

    /// Raw bytes, only as the last component (nothing follows them).
    pub fn tail(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }

    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn run(mut self, run: RunId) -> Self {
        self.0.extend_from_slice(&run.0.to_be_bytes());
        self
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None` when no such
/// key exists (prefix all 0xFF).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// An i64 mapped so that unsigned byte order equals signed numeric order.
pub(crate) fn ordered_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

pub(crate) fn runs_by_tenant_key(tenant: &str, run: RunId) -> Vec<u8> {
    KeyBuf::new().str(tenant).run(run).into_vec()
}

pub(crate) fn runs_by_thread_key(tenant: &str, thread: &str, run: RunId) -> Vec<u8> {
    KeyBuf::new().str(tenant).str(thread).run(run).into_vec()
}

pub(crate) fn approval_of_run_key(run: RunId, id: &str) -> Vec<u8> {
    KeyBuf::new().run(run).tail(id.as_bytes()).into_vec()
}

pub(crate) fn plan_key(tenant: &str, plan_id: &str) -> Vec<u8> {
    KeyBuf::new()
        .str(tenant)
        .tail(plan_id.as_bytes())
        .into_vec()
}

pub(crate) fn memory_prefix(tenant: &str, thread: &str, agent: &str) -> Vec<u8> {
    KeyBuf::new().str(tenant).str(thread).str(agent).into_vec()
}

pub(crate) fn memory_key(prefix: &[u8], index: u64) -> Vec<u8> {
    KeyBuf::new().tail(prefix).u64(index).into_vec()
}

pub(crate) fn reference_key(tenant: &str, kind: &str, id: &str) -> Vec<u8> {
    KeyBuf::new()
        .str(tenant)
        .str(kind)
        .tail(id.as_bytes())
        .into_vec()
}

pub(crate) fn expiry_key(expires_at_ms: i64, reference_key: &[u8]) -> Vec<u8> {
    KeyBuf::new()
        .tail(&ordered_i64(expires_at_ms))
        .tail(reference_key)
        .into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(v: u128) -> RunId {
        ulid::Ulid(v)
    }

    proptest! {
        #[test]
        fn journal_key_order_is_run_then_seq(a: u128, b: u128, s: u64, t: u64) {
            let ka = journal_key(run(a), s);
            let kb = journal_key(run(b), t);
            prop_assert_eq!(ka.cmp(&kb), (a, s).cmp(&(b, t)));
            prop_assert_eq!(split_journal_key(&ka), (run(a), s));
        }

        #[test]
        fn every_seq_of_a_run_sorts_between_its_bounds(a: u128, b: u128, s: u64) {
            // Runs are grouped: a key of run b is never inside run a's range unless a == b.
            let k = journal_key(run(b), s);
            let inside = journal_key(run(a), 0) <= k && k <= journal_key(run(a), u64::MAX);
            prop_assert_eq!(inside, a == b);
        }

        #[test]
        fn ordered_i64_preserves_order(a: i64, b: i64) {
            prop_assert_eq!(ordered_i64(a).cmp(&ordered_i64(b)), a.cmp(&b));
        }

        #[test]
        fn length_prefixed_strings_never_collide(a in ".{0,8}", b in ".{0,8}", c in ".{0,8}", d in ".{0,8}") {
            let k1 = KeyBuf::new().str(&a).str(&b).into_vec();
            let k2 = KeyBuf::new().str(&c).str(&d).into_vec();
            prop_assert_eq!(k1 == k2, a == c && b == d);
        }

        #[test]
        fn tenant_prefix_groups_runs(t1 in "[a-c]{0,3}", t2 in "[a-c]{0,3}", r: u128) {
            let prefix = KeyBuf::new().str(&t1).into_vec();
            let key = runs_by_tenant_key(&t2, run(r));
            let end = prefix_end(&prefix).unwrap();
            let inside = key.as_slice() >= prefix.as_slice() && key.as_slice() < end.as_slice();
            prop_assert_eq!(inside, t1 == t2);
        }

        #[test]
        fn memory_keys_order_by_index(i: u64, j: u64) {
            let p = memory_prefix("t", "th", "ag");
            prop_assert_eq!(memory_key(&p, i).cmp(&memory_key(&p, j)), i.cmp(&j));
        }

        #[test]
        fn run_keys_order_like_ulids(a: u128, b: u128) {
            prop_assert_eq!(run_key(run(a)).cmp(&run_key(run(b))), run(a).cmp(&run(b)));
            prop_assert_eq!(run_from_key(&run_key(run(a))), Some(run(a)));
        }
    }

    #[test]
    fn prefix_end_handles_carries() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
    }
}

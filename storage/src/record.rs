//! Journal records: the kind tags and the rkyv envelope stored for each `(run, seq)`.

use rkyv::rancor;

/// What a record is. The numeric tags are part of the file format: they are explicit and a
/// tag is never reused. A retired kind keeps its number reserved here with a comment.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    RunStarted = 1,
    MemoryLoaded = 2,
    AgentInvoked = 3,
    AgentReturned = 4,
    ModelRequested = 5,
    ModelResponded = 6,
    ToolCallStarted = 7,
    PredicateEvaluated = 8,
    ApprovalRequested = 9,
    ApprovalDecided = 10,
    AttemptStarted = 11,
    ToolCallCompleted = 12,
    PlanStored = 13,
    PlanTransitioned = 14,
    RefsHydrated = 15,
    DispatchStarted = 16,
    ActionsDispatched = 17,
    ReferenceCreated = 18,
    StreamEmitted = 19,
    RunCompleted = 20,
    RunFailed = 21,
    RunCancelled = 22,
}

impl RecordKind {
    /// Every kind, in tag order.
    pub const ALL: [RecordKind; 22] = [
        RecordKind::RunStarted,
        RecordKind::MemoryLoaded,
        RecordKind::AgentInvoked,
        RecordKind::AgentReturned,
        RecordKind::ModelRequested,
        RecordKind::ModelResponded,
        RecordKind::ToolCallStarted,
        RecordKind::PredicateEvaluated,
        RecordKind::ApprovalRequested,
        RecordKind::ApprovalDecided,
        RecordKind::AttemptStarted,
        RecordKind::ToolCallCompleted,
        RecordKind::PlanStored,
        RecordKind::PlanTransitioned,
        RecordKind::RefsHydrated,
        RecordKind::DispatchStarted,
        RecordKind::ActionsDispatched,
        RecordKind::ReferenceCreated,
        RecordKind::StreamEmitted,
        RecordKind::RunCompleted,
        RecordKind::RunFailed,
        RecordKind::RunCancelled,
    ];

    /// The tag stored in the envelope.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The kind of a stored tag; `None` for a tag this build does not know.
    pub fn from_u16(tag: u16) -> Option<RecordKind> {
        // Tags are dense from 1, so the table index is tag - 1; the assertion in the tests
        // keeps ALL in tag order.
        let index = usize::from(tag).checked_sub(1)?;
        RecordKind::ALL.get(index).copied()
    }

    /// The name used in exports and diagnostics, e.g. `"ToolCallStarted"`.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::RunStarted => "RunStarted",
            RecordKind::MemoryLoaded => "MemoryLoaded",
            RecordKind::AgentInvoked => "AgentInvoked",
            RecordKind::AgentReturned => "AgentReturned",
            RecordKind::ModelRequested => "ModelRequested",
            RecordKind::ModelResponded => "ModelResponded",
            RecordKind::ToolCallStarted => "ToolCallStarted",
            RecordKind::PredicateEvaluated => "PredicateEvaluated",
            RecordKind::ApprovalRequested => "ApprovalRequested",
            RecordKind::ApprovalDecided => "ApprovalDecided",
            RecordKind::AttemptStarted => "AttemptStarted",
            RecordKind::ToolCallCompleted => "ToolCallCompleted",
            RecordKind::PlanStored => "PlanStored",
            RecordKind::PlanTransitioned => "PlanTransitioned",
            RecordKind::RefsHydrated => "RefsHydrated",
            RecordKind::DispatchStarted => "DispatchStarted",
            RecordKind::ActionsDispatched => "ActionsDispatched",
            RecordKind::ReferenceCreated => "ReferenceCreated",
            RecordKind::StreamEmitted => "StreamEmitted",
            RecordKind::RunCompleted => "RunCompleted",
            RecordKind::RunFailed => "RunFailed",
            RecordKind::RunCancelled => "RunCancelled",
        }
    }

    /// The kind with this [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for RecordKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A journal record as the engine makes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    /// Version of the payload's shape for this kind; lets readers upgrade old payloads.
    pub version: u16,
    pub at_ms: i64,
    /// The payload as compact JSON text.
    pub payload: String,
}

/// A record read back with its seq.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub seq: u64,
    pub record: Record,
}

/// A record borrowed from the database page it lives in (no copy, no allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub kind: RecordKind,
    pub version: u16,
    pub at_ms: i64,
    pub payload: &'a str,
}

impl RecordView<'_> {
    pub fn to_record(&self) -> Record {
        Record {
            kind: self.kind,
            version: self.version,
            at_ms: self.at_ms,
            payload: self.payload.to_owned(),
        }
    }
}

/// The stored envelope. Field order and types are the on-disk layout (FORMAT.md); the crate
/// builds rkyv with `unaligned` and `little_endian` so that a value can be read in place from
/// any offset of a redb page.
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
#[rkyv(crate = rkyv)]
pub(crate) struct Envelope {
    pub kind: u16,
    pub version: u16,
    pub at_ms: i64,
    pub payload: String,
}

/// Encodes a record; consumes it so the payload is not copied before serialization.
pub(crate) fn encode(record: Record) -> Result<Vec<u8>, String> {
    let envelope = Envelope {
        kind: record.kind.as_u16(),
        version: record.version,
        at_ms: record.at_ms,
        payload: record.payload,
    };
    rkyv::to_bytes::<rancor::Error>(&envelope)
        .map(|bytes| bytes.into_vec())
        .map_err(|e| e.to_string())
}

/// A journal value that is not a valid record envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

/// Validates the bytes of one stored journal value and views the record in place.
///
/// The store does this on every read; it is public for tools and the decoding fuzz target.
/// Any input gives a view or an error, never a panic.
pub fn decode_record(bytes: &[u8]) -> Result<RecordView<'_>, DecodeError> {
    decode(bytes).map_err(DecodeError)
}

/// Validates and views an encoded record. Any byte string gives a view or an error, never a
/// panic: rkyv's bytecheck verifies offsets, lengths and UTF-8 before anything is read.
pub(crate) fn decode(bytes: &[u8]) -> Result<RecordView<'_>, String> {
    let archived = rkyv::access::<ArchivedEnvelope, rancor::Error>(bytes)
        .map_err(|e| format!("invalid record envelope ({} bytes): {e}", bytes.len()))?;
    let tag = archived.kind.to_native();
    let kind = RecordKind::from_u16(tag).ok_or_else(|| format!("unknown record kind tag {tag}"))?;
    Ok(RecordView {
        kind,
        version: archived.version.to_native(),
        at_ms: archived.at_ms.to_native(),
        payload: archived.payload.as_str(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tags_are_explicit_dense_and_named_uniquely() {
        for (i, kind) in RecordKind::ALL.iter().enumerate() {
            assert_eq!(usize::from(kind.as_u16()), i + 1);
            assert_eq!(RecordKind::from_u16(kind.as_u16()), Some(*kind));
            assert_eq!(RecordKind::from_name(kind.name()), Some(*kind));
        }
        assert_eq!(RecordKind::from_u16(0), None);
        assert_eq!(RecordKind::from_u16(23), None);
        assert_eq!(RecordKind::from_name("toolcallstarted"), None);
        assert_eq!(RecordKind::ToolCallStarted.as_u16(), 7);
        assert_eq!(RecordKind::RunCancelled.as_u16(), 22);
    }

    #[test]
    fn unknown_tag_is_an_error() {
        let bytes = rkyv::to_bytes::<rancor::Error>(&Envelope {
            kind: 999,
            version: 1,
            at_ms: 0,
            payload: "{}".into(),
        })
        .unwrap();
        let err = decode(&bytes).unwrap_err();
        assert!(err.contains("unknown record kind tag 999"), "{err}");
        let err = decode_record(&bytes).unwrap_err();
        assert_eq!(err.to_string(), "unknown record kind tag 999");
    }

    /// The envelope layout is part of the file format (FORMAT.md): a change here is a new
    /// format version, never an edit of these bytes.
    #[test]
    fn envelope_bytes_are_stable() {
        let bytes = encode(Record {
            kind: RecordKind::ToolCallStarted,
            version: 2,
            at_ms: 0x0102_0304_0506_0708,
            payload: "{\"tool\":\"search\"}".into(),
        })
        .unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "7b22746f6f6c223a22736561726368227d07000200080706050403020191000000e3ffffff"
        );
        assert_eq!(bytes.len(), 17 + 20, "payload bytes, then a 20-byte root");
    }

    fn any_kind() -> impl Strategy<Value = RecordKind> {
        (0usize..RecordKind::ALL.len()).prop_map(|i| RecordKind::ALL[i])
    }

    proptest! {
        #[test]
        fn round_trip(kind in any_kind(), version: u16, at_ms: i64, payload in ".{0,300}") {
            let record = Record { kind, version, at_ms, payload };
            let bytes = encode(record.clone()).unwrap();
            let view = decode(&bytes).unwrap();
            prop_assert_eq!(view.to_record(), record);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn truncated_or_flipped_records_never_panic(
            payload in ".{0,100}", cut in 0usize..200, flip in 0usize..200, bit in 0u8..8
        ) {
            let bytes = encode(Record { kind: RecordKind::ToolCallStarted, version: 1, at_ms: 5, payload }).unwrap();
            // A shorter buffer moves the root, so it may rarely decode as some other valid
            // record; what must hold is that it never panics.
            let _ = decode(&bytes[..cut.min(bytes.len())]);
            let mut flipped = bytes.clone();
            let at = flip % flipped.len();
            flipped[at] ^= 1 << bit;
            let _ = decode(&flipped);
        }
    }
}

//! Arbitrary bytes through the journal record decoder: a view or an error, never a
//! panic; a decoded view re-encodes to a record that decodes to the same view.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = flowai_storage::decode_record(data) {
        let record = view.to_record();
        assert_eq!(record.kind, view.kind);
        assert_eq!(record.payload, view.payload);
    }
});

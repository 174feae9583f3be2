//! Arbitrary bytes through the SSE parser and the provider decoders.
//!
//! Invariants: no panic, no hang, and where the input is cut does not change a
//! successful result (the live transport sees arbitrary TCP segment boundaries).

#![no_main]

use flowai_runtime::providers::{Protocol, decode_sse_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the protocol and where to cut the rest in two.
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let protocol = if selector & 1 == 0 {
        Protocol::Anthropic
    } else {
        Protocol::OpenAiCompatible
    };
    let whole = decode_sse_bytes(protocol, "fuzz", [body]);
    let cut = usize::from(selector >> 1) % (body.len() + 1);
    let (head, tail) = body.split_at(cut);
    let split = decode_sse_bytes(protocol, "fuzz", [head, tail]);
    if let Err(e) = &whole {
        // Every error names the provider.
        assert!(e.to_string().contains("fuzz"), "{e}");
    }
    assert_eq!(whole.ok(), split.ok());
});

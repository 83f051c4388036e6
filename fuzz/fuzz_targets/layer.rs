//! The whole layer on a tokio runtime, with arbitrary headers, frame splits, stalls,
//! trailers, body errors and size hints: it never panics, never answers 5xx, and lets a
//! request through exactly when an independent reading says it should.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::drive_layer(data));

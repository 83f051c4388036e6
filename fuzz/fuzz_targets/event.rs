//! Event parsing on arbitrary bytes: it never panics, and what it accepts has the `event`
//! it reports.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::parse_event(data));

//! The core check on arbitrary secrets, timestamp, signature, body, clock and tolerance:
//! it never panics and accepts exactly when the signature is `sign(...)` of those inputs.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check_core(data));

//! The security boundary under attack over real HTTP on loopback, with the process's heap
//! measured while each attack lasts: the findings of the security review (`boundary`),
//! attacks on the example receiver's server configuration (`attacks`), and hostile clients
//! writing raw bytes (`hostile`).
//!
//! One test binary, one module per kind of attack, so that the code they share is compiled
//! and linked once. Run one with its module path, for example
//! `cargo test --test security hostile::`.
//!
//! [`heap`] is this binary's global allocator, and it counts every allocation of the
//! process. So these tests have a binary of their own, where nothing else allocates beside
//! them, and every test that measures holds [`heap::serial`] so that one attack is measured
//! at a time, across all three modules. The timings they assert see only their own attack
//! for the same reason.

#[path = "../heap/mod.rs"]
mod heap;
#[path = "../support/mod.rs"]
mod support;

#[path = "../../examples/receiver.rs"]
#[allow(dead_code)]
mod receiver;

mod attacks;
mod boundary;
mod hostile;
mod round_five;
mod round_six;
mod wire;

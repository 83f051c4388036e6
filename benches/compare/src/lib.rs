//! Benchmarks of `openmail-webhooks` against other crates, kept out of the crate's own
//! build because their dependencies are heavy or need system libraries (svix links
//! OpenSSL). The code is in `benches/`:
//!
//! - `svix`: the crate's check and the raw-HMAC limit against `svix::webhooks::Webhook`;
//! - `backend`: HMAC-SHA256 from `sha2` (the crate's backend) against `ring`.
//!
//! `cargo bench --bench svix` and `cargo bench --bench backend`, run in this directory.

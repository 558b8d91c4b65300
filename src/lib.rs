//! The taskscope package as a library: what the binary `taskscope` and the benchmarks
//! (package `taskscope-bench`, under `bench/`) share. The product itself lives in the binary
//! (`src/main.rs`); this crate holds only what a second binary needs.
//!
//! # Layout
//! - [`store`]: the DuckDB history (the benchmarks generate histories with `store::synthetic`).
//! - [`loadgen`]: the load generator of `taskscope demo` and `taskscope-bench load`, with the
//!   private `redis-server` and child `taskscope serve` it runs against.

pub mod loadgen;
pub mod store;

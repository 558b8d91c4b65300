//! Pure decoding and inference for the task queues taskscope watches.
//!
//! # Layout
//! - [`model`]: the shared vocabulary (tasks, states, observations, workers, queue samples).
//! - [`adapter`]: the sans-I/O seam: what an adapter asks Redis for and what it gets back.
//! - [`state`]: the one state machine every broker shares, and the abandon sweep.
//! - [`codec`]: payload helpers every adapter needs (JSON, msgpack, base64, pickle).
//! - [`limits`]: the decode budget every decoder works within.
//! - [`bounded`]: `FifoSet` and `FifoMap`, the bounded memories every adapter keeps.
//! - [`pickle`]: an iterative pickle VM into JSON, within the budget.
//! - [`detect`]: which brokers live in a Redis, from key names and sampled messages.
//! - [`fingerprint`]: failure fingerprints, what groups failures into "the same error".
//! - one module per broker: [`arq`], [`bullmq`], [`celery`], [`dramatiq`], [`rq`], [`taskiq`].
//!
//! # Invariant
//! Nothing in this crate does I/O or reads the clock: bytes and `now` in, observations out. That
//! is what lets every decoder be tested on captured payloads and fuzzed with garbage.

pub mod adapter;
pub mod arq;
pub mod bounded;
mod budgeted;
pub mod bullmq;
pub mod celery;
pub mod codec;
pub mod detect;
pub mod dramatiq;
pub mod fingerprint;
pub mod limits;
pub mod model;
pub mod pickle;
pub mod rq;
pub mod sidekiq;
pub mod state;
pub mod taskiq;
pub mod worker_state;

pub use adapter::{
    too_large_error, unknown_tag, Adapter, DecodeError, FirstSight, FirstSightRead, FollowTags,
    Interest, OpenTask, Output, Prefetch, PrefetchRead, Publish, Read, ReadRequest, Reply, Tag,
    UnknownTag,
};
pub use model::*;

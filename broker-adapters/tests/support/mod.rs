//! Test support shared by the adapter tests: an in-memory Redis (`fake_redis`, streams in
//! `fake_stream`), a driver that runs any adapter against it the way the ingest layer does
//! (`driver`), and per broker the writes its library makes, command for command, on captured
//! payloads (`<broker>_worker`). Each test binary uses a part of it.
#![allow(dead_code)]

pub mod arq_worker;
pub mod bullmq_worker;
pub mod celery_worker;
pub mod dramatiq_worker;
pub mod driver;
pub mod fake_redis;
pub mod fake_stream;
pub mod rq_worker;
pub mod sidekiq_worker;
pub mod tagged;
pub mod taskiq_worker;

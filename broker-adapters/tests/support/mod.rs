//! Test support shared by the adapter tests: an in-memory Redis and a driver that runs any
//! adapter against it the way the ingest layer does. Each test binary uses a part of it.
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
pub mod taskiq_worker;

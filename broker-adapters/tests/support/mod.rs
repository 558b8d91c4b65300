//! Test support shared by the adapter tests: an in-memory Redis and a driver that runs any
//! adapter against it the way the ingest layer does. Each test binary uses a part of it.
#![allow(dead_code)]

pub mod dramatiq_worker;
pub mod driver;
pub mod fake_redis;
pub mod tagged;

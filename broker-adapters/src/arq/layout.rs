//! arq's key names (`arq/constants.py`), both ways: building the keys taskscope reads, and
//! classifying a key named by a notification or a SCAN. Knows nothing about their content.
//!
//! arq's per-job prefixes are fixed (`arq:job:`, `arq:in-progress:`, `arq:retry:`,
//! `arq:result:`); queues are sorted sets of any name (`arq:queue` unless the application sets
//! `queue_name`), each with a health-check string `<queue>:health-check` (unless a worker sets
//! `health_check_key`).

use std::collections::BTreeSet;

/// The queue arq uses unless the application names another (`default_queue_name`).
pub const DEFAULT_QUEUE: &str = "arq:queue";
/// A job's definition, pickled unless `job_serializer` says otherwise.
pub const JOB_PREFIX: &str = "arq:job:";
/// `b"1"` while a worker runs the job (`PSETEX` of the longest timeout + 10 s).
pub const IN_PROGRESS_PREFIX: &str = "arq:in-progress:";
/// The try counter, `INCR`ed as each try starts.
pub const RETRY_PREFIX: &str = "arq:retry:";
/// The outcome, kept `keep_result` seconds (an hour by default).
pub const RESULT_PREFIX: &str = "arq:result:";
/// `Job.abort` requests (job id -> request time).
pub const ABORT_KEY: &str = "arq:abort";
/// Appended to a queue's name for its health-check key.
pub const HEALTH_CHECK_SUFFIX: &str = ":health-check";

/// Which of arq's keys a name is, with the job id or queue it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArqKey<'k> {
    Job(&'k str),
    InProgress(&'k str),
    Retry(&'k str),
    Result(&'k str),
    Abort,
    /// `<queue>:health-check`: the queue's name.
    HealthCheck(&'k str),
    /// A queue taskscope knows of (configured, detected or named by a result).
    Queue(&'k str),
}

/// Classifies `key`; `queues` are the queue names known (any name may be a queue).
pub fn classify<'k>(key: &'k str, queues: &BTreeSet<String>) -> Option<ArqKey<'k>> {
    let id = |prefix: &str| key.strip_prefix(prefix).filter(|id| !id.is_empty());
    if let Some(id) = id(JOB_PREFIX) {
        return Some(ArqKey::Job(id));
    }
    if let Some(id) = id(IN_PROGRESS_PREFIX) {
        return Some(ArqKey::InProgress(id));
    }
    if let Some(id) = id(RETRY_PREFIX) {
        return Some(ArqKey::Retry(id));
    }
    if let Some(id) = id(RESULT_PREFIX) {
        return Some(ArqKey::Result(id));
    }
    if key == ABORT_KEY {
        return Some(ArqKey::Abort);
    }
    if let Some(queue) = key
        .strip_suffix(HEALTH_CHECK_SUFFIX)
        .filter(|q| !q.is_empty())
    {
        return Some(ArqKey::HealthCheck(queue));
    }
    queues.contains(key).then_some(ArqKey::Queue(key))
}

pub fn job(id: &str) -> String {
    format!("{JOB_PREFIX}{id}")
}

pub fn in_progress(id: &str) -> String {
    format!("{IN_PROGRESS_PREFIX}{id}")
}

pub fn retry(id: &str) -> String {
    format!("{RETRY_PREFIX}{id}")
}

pub fn result(id: &str) -> String {
    format!("{RESULT_PREFIX}{id}")
}

pub fn health_check(queue: &str) -> String {
    format!("{queue}{HEALTH_CHECK_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_classify_back_to_what_built_them() {
        let queues: BTreeSet<String> = ["arq:queue".to_string(), "billing".to_string()].into();
        assert_eq!(classify(&job("a1"), &queues), Some(ArqKey::Job("a1")));
        assert_eq!(
            classify(&in_progress("a1"), &queues),
            Some(ArqKey::InProgress("a1"))
        );
        assert_eq!(classify(&retry("a1"), &queues), Some(ArqKey::Retry("a1")));
        assert_eq!(classify(&result("a1"), &queues), Some(ArqKey::Result("a1")));
        assert_eq!(
            classify(&health_check("arq:queue"), &queues),
            Some(ArqKey::HealthCheck("arq:queue"))
        );
        assert_eq!(classify("billing", &queues), Some(ArqKey::Queue("billing")));
        assert_eq!(classify("arq:abort", &queues), Some(ArqKey::Abort));
        assert_eq!(classify("other", &queues), None);
        assert_eq!(classify("arq:job:", &queues), None, "no id");
    }
}

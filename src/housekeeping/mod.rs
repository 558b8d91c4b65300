//! Scheduled housekeeping: roll-ups, retention and compaction on cron schedules, so the
//! history file stays bounded without anyone remembering to clean up.
//!
//! One tokio task runs every job, so a run never overlaps itself (nor another job). Jobs
//! without a schedule of their own share `--housekeeping` and run in the order of
//! [`jobs::Job::ALL`] (roll-up, retention, compaction). A failed job is logged, recorded
//! (`/`, `/healthz`, `/metrics`) and simply runs again at its next time; missed times while
//! taskscope was down are skipped, not caught up.
//!
//! - [`schedule`]: cron parsing with helpful errors.
//! - [`jobs`]: what each job does, as store steps run on the writer thread.

pub mod jobs;
pub mod schedule;

use crate::metrics::{HousekeepingRun, Metrics};
use crate::store::maintenance::{RunRecord, Step};
use crate::store::{StoreReader, StoreWriter};
use chrono::Utc;
use jobs::{Context, Job, JobReport, Policy};
use schedule::Schedule;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use tracing::{error, info, info_span, Instrument};

/// When each job runs and what it keeps.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--housekeeping`: every job without a schedule of its own.
    pub default_schedule: Schedule,
    /// `--schedule-<job>`.
    pub job_schedules: BTreeMap<Job, Schedule>,
    pub policy: Policy,
}

impl Settings {
    /// Each schedule with the jobs it triggers, in run order.
    pub fn plan(&self) -> Vec<(Schedule, Vec<Job>)> {
        let mut plan: Vec<(Schedule, Vec<Job>)> = Vec::new();
        let shared: Vec<Job> = Job::ALL
            .into_iter()
            .filter(|j| !self.job_schedules.contains_key(j))
            .collect();
        if !shared.is_empty() {
            plan.push((self.default_schedule.clone(), shared));
        }
        for (job, schedule) in &self.job_schedules {
            plan.push((schedule.clone(), vec![*job]));
        }
        plan
    }
}

/// Runs one job now and records it: in the store (for the next process), in `metrics` (for
/// `/`, `/healthz`, `/metrics`) and in the log.
pub async fn run_job(
    job: Job,
    cx: &Context<'_>,
    metrics: Option<&Metrics>,
    dry_run: bool,
) -> Result<JobReport, crate::store::StoreError> {
    let started_at = Utc::now();
    let clock = Instant::now();
    let result = jobs::run(job, cx, started_at, dry_run)
        .instrument(info_span!("housekeeping", %job, dry_run))
        .await;
    let duration_ms = clock.elapsed().as_secs_f64() * 1000.0;
    if dry_run {
        return result;
    }
    let (rows, detail, error) = match &result {
        Ok(r) => (r.rows, r.detail.clone(), None),
        Err(e) => (0, String::new(), Some(e.to_string())),
    };
    match &error {
        None => {
            info!(%job, rows, took_ms = format!("{duration_ms:.1}"), %detail, "Housekeeping job done.")
        }
        Some(e) => {
            error!(%job, error = %e, "Housekeeping job failed; it runs again at its next time.")
        }
    }
    let record = RunRecord {
        job: job.as_str().to_string(),
        started_at,
        duration_ms,
        rows,
        detail,
        error,
    };
    if let Some(metrics) = metrics {
        metrics.housekeeping_ran(HousekeepingRun::from(&record), true);
    }
    if let Err(e) = cx.writer.maintain(Step::RecordRun(record)).await {
        error!(%job, error = %e, "Could not record the housekeeping run.");
    }
    result
}

/// Starts the scheduler task.
pub fn spawn(
    settings: Settings,
    writer: StoreWriter,
    reader: StoreReader,
    db_path: PathBuf,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Show the last runs of the previous process until this one runs.
        match reader.last_housekeeping_runs().await {
            Ok(runs) => {
                for run in &runs {
                    metrics.housekeeping_ran(HousekeepingRun::from(run), false);
                }
            }
            Err(e) => error!(error = %e, "Cannot read the last housekeeping runs."),
        }
        let plan = settings.plan();
        for (schedule, jobs) in &plan {
            info!(schedule = schedule.text(), jobs = ?jobs.iter().map(|j| j.as_str()).collect::<Vec<_>>(), "Housekeeping scheduled.");
        }
        loop {
            let now = Utc::now();
            let Some((at, jobs)) = plan
                .iter()
                .filter_map(|(s, jobs)| s.next_after(now).map(|at| (at, jobs)))
                .min_by_key(|(at, _)| *at)
            else {
                info!("No housekeeping schedule fires again; the scheduler stops.");
                return;
            };
            for job in jobs {
                metrics.housekeeping_next(job.as_str(), at);
            }
            let wait = (at - now).to_std().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            let cx = Context {
                writer: &writer,
                reader: &reader,
                db_path: db_path.clone(),
                policy: &settings.policy,
            };
            for job in jobs {
                if *shutdown.borrow() {
                    return;
                }
                let _ = run_job(*job, &cx, Some(&metrics), false).await;
            }
        }
    })
}

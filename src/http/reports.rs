//! The report routes (`/api/reports/*`) and the parsing of their time window, shared with the
//! pages that draw them (`/`, `/reports`, `/queues`).
//!
//! A window is `since` (default: an hour before `until`; `range=24h` is a shorthand for
//! `since=24h`), `until` (default: now) and `step` (default: the smallest of [`NICE_STEPS`] that
//! cuts the window into at most [`AUTO_BUCKETS`] buckets). Times are RFC 3339 or a duration ago
//! (`30m`); a step is a duration (`500ms`, `5m`, `2h`, `30d`). A window of more than
//! [`MAX_BUCKETS`] buckets is refused rather than silently coarsened.

use super::query::parse_time_filter;
use super::{ApiError, AppState};
use crate::store::{NameOrder, ReportFilter, ReportRange};
use axum::extract::{Query, State};
use axum::Json;
use broker_adapters::{rfc3339, Broker};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

/// Buckets an automatic step aims for: enough for a smooth chart, few enough to read.
pub const AUTO_BUCKETS: i64 = 90;
/// The most buckets a report may have.
pub const MAX_BUCKETS: i64 = 5_000;
/// Default window length.
pub const DEFAULT_WINDOW: Duration = Duration::hours(1);
/// The largest step: bucket arithmetic in microseconds stays far from `i64`'s ends.
pub const MAX_STEP: Duration = Duration::days(36_525);
/// How many names the failure series and the top lists hold.
pub const TOP_NAMES: usize = 8;
pub const TOP_ROWS: usize = 20;

/// Steps an automatic step is chosen from, in seconds.
const NICE_STEPS: &[i64] = &[
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1_800, 3_600, 7_200, 10_800, 21_600, 43_200,
    86_400, 172_800, 604_800,
];

/// The raw query string of a report or a report page.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ReportParams {
    pub broker: Option<String>,
    pub queue: Option<String>,
    pub name: Option<String>,
    /// A shorthand for `since` on pages' range selector (`1h`, `24h`, `7d`, `30d`).
    pub range: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub step: Option<String>,
    /// `failures` (default), `runs` or `retries`: the order of `/api/reports/names`.
    pub order: Option<String>,
    /// `open` (default) or `all`: which failure groups `/api/failures/groups` lists.
    pub state: Option<String>,
}

fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The smallest nice step that cuts `span` into at most [`AUTO_BUCKETS`] buckets.
pub fn auto_step(span: Duration) -> Duration {
    let secs = span.num_seconds().max(1);
    let step = NICE_STEPS
        .iter()
        .copied()
        .find(|s| secs / s <= AUTO_BUCKETS)
        .unwrap_or_else(|| secs / AUTO_BUCKETS + 1);
    Duration::seconds(step)
}

impl ReportParams {
    /// The window and filters, validated; `now` is the default `until` and the anchor of
    /// durations ago.
    pub fn window(&self, now: DateTime<Utc>) -> Result<(ReportRange, ReportFilter), ApiError> {
        let until = set(&self.until)
            .map(|t| parse_time_filter("until", t, now))
            .transpose()?
            .unwrap_or(now);
        let since = match (set(&self.since), set(&self.range)) {
            (Some(t), _) => parse_time_filter("since", t, now)?,
            (None, Some(r)) => parse_time_filter("range", r, until)?,
            (None, None) => until
                .checked_sub_signed(DEFAULT_WINDOW)
                .ok_or_else(|| ApiError::bad_request("until is too early"))?,
        };
        if since >= until {
            return Err(ApiError::bad_request(format!(
                "since ({}) must be before until ({})",
                rfc3339(&since),
                rfc3339(&until)
            )));
        }
        let step = match set(&self.step) {
            Some(s) => {
                let d = humantime::parse_duration(s)
                    .ok()
                    .and_then(|d| Duration::from_std(d).ok())
                    .filter(|d| d.num_milliseconds() > 0 && *d <= MAX_STEP)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "step={s:?}: expected a duration from 1ms to 100 years (500ms, 5m, 2h, 30d)"
                        ))
                    })?;
                d
            }
            None => auto_step(until - since),
        };
        let step_us = step
            .num_microseconds()
            .filter(|us| *us > 0)
            .ok_or_else(|| ApiError::bad_request("step is too large"))?;
        let range = ReportRange {
            since,
            until,
            step_us,
        };
        let buckets = range.buckets();
        if buckets > MAX_BUCKETS {
            return Err(ApiError::bad_request(format!(
                "step is too small for this window: {buckets} buckets, at most {MAX_BUCKETS}; \
                 use a larger step or a shorter window"
            )));
        }
        let mut filter = ReportFilter::default();
        if let Some(brokers) = set(&self.broker) {
            for b in brokers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                filter.brokers.push(
                    b.parse::<Broker>()
                        .map_err(|e| ApiError::bad_request(format!("broker: {e}")))?,
                );
            }
        }
        filter.queue = set(&self.queue).map(str::to_string);
        filter.name = set(&self.name).map(str::to_string);
        Ok((range, filter))
    }

    fn order(&self) -> Result<NameOrder, ApiError> {
        match set(&self.order) {
            None | Some("failures") => Ok(NameOrder::Failures),
            Some("runs") => Ok(NameOrder::Runs),
            Some("retries") => Ok(NameOrder::Retries),
            Some(other) => Err(ApiError::bad_request(format!(
                "order={other:?}: expected failures, runs or retries"
            ))),
        }
    }
}

pub(super) fn window_json(range: &ReportRange) -> Value {
    json!({
        "since": rfc3339(&range.since),
        "until": rfc3339(&range.until),
        "step_ms": range.step_us / 1_000,
    })
}

pub(super) fn merge(mut base: Value, extra: Value) -> Value {
    if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
        b.extend(e);
    }
    base
}

/// `GET /api/reports/backlog`: per queue, `[time, length]` per bucket that has samples (the
/// highest length sampled in it).
pub async fn backlog(
    State(state): State<AppState>,
    Query(params): Query<ReportParams>,
) -> Result<Json<Value>, ApiError> {
    let (range, filter) = params.window(Utc::now())?;
    let series = state.reader.backlog(range, filter).await?;
    let series: Vec<Value> = series
        .iter()
        .map(|s| {
            json!({
                "broker": s.broker.as_str(),
                "queue": s.queue,
                "points": s.points.iter()
                    .map(|p| json!([rfc3339(&p.at), p.length]))
                    .collect::<Vec<_>>(),
                // Extension: the other counts of the same samples, `[time, delayed, dead, running]`.
                "other_points": s.points.iter()
                    .map(|p| json!([rfc3339(&p.at), p.delayed, p.dead, p.running]))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(merge(
        json!({ "series": series }),
        window_json(&range),
    )))
}

/// `GET /api/reports/runtime`: runtime percentiles per task name, slowest (p95) first.
pub async fn runtime(
    State(state): State<AppState>,
    Query(params): Query<ReportParams>,
) -> Result<Json<Value>, ApiError> {
    let (range, filter) = params.window(Utc::now())?;
    let rows = state
        .reader
        .runtime(range.since, range.until, filter, 100)
        .await?;
    let tasks: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "broker": r.broker.as_str(), "name": r.name, "count": r.count,
                "p50_ms": r.p50_ms, "p95_ms": r.p95_ms, "p99_ms": r.p99_ms,
                "max_ms": r.max_ms, "mean_ms": r.mean_ms,
            })
        })
        .collect();
    Ok(Json(merge(json!({ "tasks": tasks }), window_json(&range))))
}

/// `GET /api/reports/wait`: wait-time (enqueued or eta -> started) percentiles per queue and
/// task name of the tasks that finished in the window, the longest waits (p95) first.
pub async fn wait(
    State(state): State<AppState>,
    Query(params): Query<ReportParams>,
) -> Result<Json<Value>, ApiError> {
    let (range, filter) = params.window(Utc::now())?;
    let rows = state
        .reader
        .wait(range.since, range.until, filter, 100)
        .await?;
    let tasks: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "broker": r.broker.as_str(), "queue": r.queue, "name": r.name, "count": r.count,
                "p50_ms": r.p50_ms, "p95_ms": r.p95_ms, "p99_ms": r.p99_ms, "max_ms": r.max_ms,
            })
        })
        .collect();
    Ok(Json(merge(json!({ "tasks": tasks }), window_json(&range))))
}

fn failure_points(points: &[(DateTime<Utc>, u64, u64)]) -> Vec<Value> {
    points
        .iter()
        .map(|(at, f, r)| json!([rfc3339(at), f, r]))
        .collect()
}

/// `GET /api/reports/failures`: failure and retry transitions per bucket for the names with the
/// most of them, the total (extension), and the top failing names.
pub async fn failures(
    State(state): State<AppState>,
    Query(params): Query<ReportParams>,
) -> Result<Json<Value>, ApiError> {
    let (range, filter) = params.window(Utc::now())?;
    let (report, top) = tokio::join!(
        state.reader.failures(range, filter.clone(), TOP_NAMES),
        state.reader.name_stats(
            range.since,
            range.until,
            filter,
            NameOrder::Failures,
            TOP_ROWS
        ),
    );
    let (report, top) = (report?, top?);
    let series: Vec<Value> = report
        .series
        .iter()
        .map(|s| json!({ "name": s.name, "points": failure_points(&s.points) }))
        .collect();
    Ok(Json(merge(
        json!({
            "series": series,
            "total": failure_points(&report.total.points),
            "top": top.iter().map(name_stats_json).collect::<Vec<_>>(),
        }),
        window_json(&range),
    )))
}

fn name_stats_json(n: &crate::store::NameStats) -> Value {
    json!({
        "name": n.name, "runs": n.runs, "failures": n.failures, "retries": n.retries,
        "failure_rate": n.failure_rate,
    })
}

/// `GET /api/reports/throughput` (extension): transitions into each state per bucket.
pub async fn throughput(
    State(state): State<AppState>,
    Query(params): Query<ReportParams>,
) -> Result<Json<Value>, ApiError> {
    let (range, filter) = params.window(Utc::now())?;
    let series = state.reader.throughput(range, filter).await?;
    let series: Vec<Value> = series
        .iter()
        .map(|s| {
            json!({
                "state": s.state.as_str(),
                "points": s.points.iter().map(|(at, n)| json!([rfc3339(at), n])).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(merge(
        json!({ "series": series }),
        window_json(&range),
    )))
}

/// `GET /api/reports/names` (extension): runs, failures and retries per task name, ranked by
/// `order` (`failures`, `runs`, `retries`).
pub async fn names(
    State(state): State<AppState>,
    Query(params): Query<ReportParams>,
) -> Result<Json<Value>, ApiError> {
    let (range, filter) = params.window(Utc::now())?;
    let order = params.order()?;
    let rows = state
        .reader
        .name_stats(range.since, range.until, filter, order, 100)
        .await?;
    Ok(Json(merge(
        json!({ "names": rows.iter().map(name_stats_json).collect::<Vec<_>>() }),
        window_json(&range),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_default_validate_and_cap() {
        let now = DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let (r, _) = ReportParams::default().window(now).unwrap();
        assert_eq!((r.until - r.since), DEFAULT_WINDOW);
        assert_eq!(r.step_us, 60_000_000, "1 h in 60 one-minute buckets");
        let p = ReportParams {
            range: Some("7d".into()),
            ..Default::default()
        };
        let (r, _) = p.window(now).unwrap();
        assert_eq!(r.step_us, 7_200 * 1_000_000);
        for (since, until, step) in [
            ("1h", "2h", ""),
            ("yesterday", "", ""),
            ("1h", "", "0s"),
            ("30d", "", "1s"),
            ("1h", "", "often"),
        ] {
            let p = ReportParams {
                since: Some(since.into()),
                until: Some(until.into()),
                step: Some(step.into()),
                ..Default::default()
            };
            assert!(p.window(now).is_err(), "{since} {until} {step}");
        }
        let p = ReportParams {
            since: Some("2026-11-23T11:30:00Z".into()),
            step: Some("500ms".into()),
            ..Default::default()
        };
        assert_eq!(p.window(now).unwrap().0.step_us, 500_000);
    }
}

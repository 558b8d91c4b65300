//! The task-list filters shared by `/api/tasks` and `/tasks`, parsed from the query string.
//! Empty values mean "not set" (HTML forms send them).

use super::ApiError;
use crate::store::TaskQuery;
use broker_adapters::{Broker, TaskState};
use chrono::{DateTime, Utc};
use serde::Deserialize;

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;

/// The raw query string of a task list.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct TaskFilterParams {
    pub broker: Option<String>,
    pub queue: Option<String>,
    pub name: Option<String>,
    pub state: Option<String>,
    pub q: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
    /// A failure group (`/api/failures/groups`): tasks whose error, or a failed attempt's, is
    /// of this group.
    pub fingerprint: Option<String>,
}

fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// A time filter: RFC 3339, or a duration meaning "that long ago" (`1h`, `7d`).
pub fn parse_time_filter(
    name: &str,
    text: &str,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = humantime::parse_duration(text) {
        // Checked: `300000y` ago is before the first representable time, and chrono's `-`
        // panics there.
        return chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{name}={text:?}: too long ago (give a duration of at most a few thousand years)"
                ))
            });
    }
    Err(ApiError::bad_request(format!(
        "{name}={text:?}: expected an RFC 3339 time (2026-11-23T12:00:00Z) or a duration ago (1h, 7d)"
    )))
}

impl TaskFilterParams {
    pub fn to_query(&self, now: DateTime<Utc>) -> Result<TaskQuery, ApiError> {
        let mut query = TaskQuery {
            limit: DEFAULT_LIMIT,
            ..TaskQuery::default()
        };
        if let Some(brokers) = set(&self.broker) {
            for b in brokers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                query.brokers.push(
                    b.parse::<Broker>()
                        .map_err(|e| ApiError::bad_request(format!("broker: {e}")))?,
                );
            }
        }
        if let Some(states) = set(&self.state) {
            for s in states.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                query.states.push(
                    s.parse::<TaskState>()
                        .map_err(|e| ApiError::bad_request(format!("state: {e}")))?,
                );
            }
        }
        query.queue = set(&self.queue).map(str::to_string);
        query.name = set(&self.name).map(str::to_string);
        query.q = set(&self.q).map(str::to_string);
        query.since = set(&self.since)
            .map(|t| parse_time_filter("since", t, now))
            .transpose()?;
        query.until = set(&self.until)
            .map(|t| parse_time_filter("until", t, now))
            .transpose()?;
        if let Some(limit) = set(&self.limit) {
            let n: usize = limit.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "limit={limit:?}: expected a number from 1 to {MAX_LIMIT}"
                ))
            })?;
            query.limit = n.clamp(1, MAX_LIMIT);
        }
        query.cursor = set(&self.cursor).map(str::to_string);
        query.fingerprint = set(&self.fingerprint).map(str::to_string);
        Ok(query)
    }

    /// The filters as the templates show and keep them in links.
    pub fn to_view(&self) -> templates::TaskFilters {
        let own = |v: &Option<String>| set(v).map(str::to_string);
        templates::TaskFilters {
            broker: own(&self.broker),
            queue: own(&self.queue),
            name: own(&self.name),
            state: own(&self.state),
            q: own(&self.q),
            since: own(&self.since),
            until: own(&self.until),
            limit: own(&self.limit),
            fingerprint: own(&self.fingerprint),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_clamp() {
        let now = Utc::now();
        let p = TaskFilterParams {
            state: Some("failure, retried".into()),
            broker: Some("celery".into()),
            limit: Some("5000".into()),
            since: Some("1h".into()),
            queue: Some("".into()),
            ..Default::default()
        };
        let q = p.to_query(now).unwrap();
        assert_eq!(q.states, vec![TaskState::Failure, TaskState::Retried]);
        assert_eq!(q.limit, MAX_LIMIT);
        assert_eq!(q.queue, None);
        assert_eq!(q.since, Some(now - chrono::Duration::hours(1)));
        let bad = TaskFilterParams {
            state: Some("done".into()),
            ..Default::default()
        };
        assert!(bad.to_query(now).is_err());
    }
}

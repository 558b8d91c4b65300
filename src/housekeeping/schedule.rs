//! Cron schedules (`cron` crate: six fields, seconds first; day-of-week counts Sunday as 1, so
//! names like `Mon` are safer than numbers) with errors that say how to fix the expression.

use chrono::{DateTime, Utc};
use std::str::FromStr;

/// A parsed schedule that remembers its text.
#[derive(Debug, Clone)]
pub struct Schedule {
    text: String,
    inner: cron::Schedule,
}

impl Schedule {
    /// Parses `sec min hour day-of-month month day-of-week [year]` or `@hourly`-style macros.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        let inner = cron::Schedule::from_str(text).map_err(|e| {
            let fields = text.split_whitespace().count();
            if fields == 5 {
                format!(
                    "{text:?} has 5 fields; taskscope's cron has a seconds field first: try \"0 {text}\""
                )
            } else {
                format!(
                    "{text:?} is not a cron expression ({e}); expected `sec min hour day month weekday`, e.g. \"0 0 * * * *\" (hourly)"
                )
            }
        })?;
        Ok(Schedule {
            text: text.to_string(),
            inner,
        })
    }

    /// The first time strictly after `after` this schedule fires.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.inner.after(&after).next()
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn six_field_expressions_and_macros_parse() {
        let hourly = Schedule::parse("0 0 * * * *").unwrap();
        let at = Utc.with_ymd_and_hms(2026, 11, 23, 10, 15, 0).unwrap();
        assert_eq!(
            hourly.next_after(at),
            Some(Utc.with_ymd_and_hms(2026, 11, 23, 11, 0, 0).unwrap())
        );
        let every_2s = Schedule::parse("*/2 * * * * *").unwrap();
        assert_eq!(
            every_2s.next_after(at),
            Some(Utc.with_ymd_and_hms(2026, 11, 23, 10, 15, 2).unwrap())
        );
        assert!(Schedule::parse("@daily").is_ok());
        // Sunday is day 1 for this crate: a name avoids the confusion.
        let sunday = Schedule::parse("0 0 3 * * Sun").unwrap();
        let next = sunday.next_after(at).unwrap();
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 11, 29, 3, 0, 0).unwrap());
    }

    #[test]
    fn five_field_crontab_gets_a_hint() {
        let err = Schedule::parse("*/5 * * * *").unwrap_err();
        assert!(err.contains("seconds field"), "{err}");
        assert!(Schedule::parse("every hour").is_err());
    }
}

//! Display helpers every page shares: times, runtimes, truncated table cells and URL encoding.
//!
//! Everything here is a pure function of its inputs. The current time is passed in rather than
//! read, so a page renders the same way in a test as it did in the browser that reported a bug.

use broker_adapters::rfc3339;
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use std::borrow::Cow;

/// What a table cell shows when a value is unknown.
pub const UNKNOWN: &str = "—";

/// A compact absolute time: `12:16:07` when `at` falls on the same UTC day as `now`, else
/// `2026-11-22 12:16`. Pages put the full RFC 3339 time in a tooltip next to it.
pub fn short_time(at: &DateTime<Utc>, now: &DateTime<Utc>) -> String {
    if at.date_naive() == now.date_naive() {
        at.format("%H:%M:%S").to_string()
    } else {
        at.format("%Y-%m-%d %H:%M").to_string()
    }
}

/// A full absolute time for detail views: `2026-11-23 12:16:07.706`.
pub fn long_time(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

/// How far `at` is from `now`, coarsely: `just now`, `12 s ago`, `5 m ago`, `3 h ago`,
/// `2 d ago`, or `in 30 s` for times still ahead (an ETA).
pub fn relative_time(at: &DateTime<Utc>, now: &DateTime<Utc>) -> String {
    let delta = now.signed_duration_since(*at).num_seconds();
    let secs = delta.unsigned_abs();
    if secs < 5 {
        return "just now".to_string();
    }
    let amount = if secs < 60 {
        format!("{secs} s")
    } else if secs < 3_600 {
        format!("{} m", secs / 60)
    } else if secs < 86_400 {
        format!("{} h", secs / 3_600)
    } else {
        format!("{} d", secs / 86_400)
    };
    if delta < 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// A `<time>` element showing [`short_time`], with the exact RFC 3339 time as `datetime` and
/// tooltip.
pub fn time(at: &DateTime<Utc>, now: &DateTime<Utc>) -> Markup {
    let exact = rfc3339(at);
    html! { time datetime=(exact) title=(exact) { (short_time(at, now)) } }
}

/// A `<time>` element showing [`relative_time`], with the exact time as tooltip.
pub fn time_ago(at: &DateTime<Utc>, now: &DateTime<Utc>) -> Markup {
    let exact = rfc3339(at);
    html! { time datetime=(exact) title=(exact) { (relative_time(at, now)) } }
}

/// [`time`] for an optional time; unknown times show as a muted dash.
pub fn opt_time(at: Option<&DateTime<Utc>>, now: &DateTime<Utc>) -> Markup {
    match at {
        Some(at) => time(at, now),
        None => unknown(),
    }
}

/// The muted dash for an unknown value.
pub fn unknown() -> Markup {
    html! { span.muted { (UNKNOWN) } }
}

/// The age of a queue's oldest waiting message: `-` when nothing waits, the muted dash when
/// the broker does not say (Celery, taskiq lists) or its message is not read yet.
pub fn oldest_age(waiting: u64, age_ms: Option<f64>) -> Markup {
    match age_ms {
        Some(ms) => html! { (runtime(ms)) },
        None if waiting == 0 => html! { span.muted { "-" } },
        None => unknown(),
    }
}

/// A runtime in the unit a person reads fastest: `0.42 ms`, `12.5 ms`, `512 ms`, `2.01 s`,
/// `14.2 s`, `3 m 4 s`, `2 h 5 m`, `1 d 3 h`.
pub fn runtime(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        return UNKNOWN.to_string();
    }
    // The thresholds sit where rounding would otherwise print `100.0 ms` or `10.00 s`.
    if ms < 0.995 {
        return format!("{ms:.2} ms");
    }
    if ms < 99.95 {
        return format!("{ms:.1} ms");
    }
    if ms < 999.5 {
        return format!("{ms:.0} ms");
    }
    let secs = ms / 1_000.0;
    if secs < 9.995 {
        return format!("{secs:.2} s");
    }
    if secs < 59.95 {
        return format!("{secs:.1} s");
    }
    let total = secs.round() as u64;
    let (days, hours, mins, secs) = (
        total / 86_400,
        total % 86_400 / 3_600,
        total % 3_600 / 60,
        total % 60,
    );
    if total < 3_600 {
        format!("{mins} m {secs} s")
    } else if total < 86_400 {
        format!("{hours} h {mins} m")
    } else {
        format!("{days} d {hours} h")
    }
}

/// Cuts `s` to at most `max_chars` characters, ending with `…` when it had to cut. Counts
/// characters, not bytes, so it never splits a UTF-8 sequence.
pub fn truncate(s: &str, max_chars: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max_chars) {
        None => Cow::Borrowed(s),
        Some(_) => {
            let keep = max_chars.saturating_sub(1);
            let end = s.char_indices().nth(keep).map_or(s.len(), |(i, _)| i);
            Cow::Owned(format!("{}…", &s[..end]))
        }
    }
}

/// A table cell's text: [`truncate`]d, with the whole value as tooltip when it was cut.
pub fn cell_text(s: &str, max_chars: usize) -> Markup {
    let shown = truncate(s, max_chars);
    let cut = matches!(shown, Cow::Owned(_));
    html! { span title=[cut.then_some(s)] { (shown) } }
}

/// Percent-encodes `s` for use as one URL query value or path segment: every byte but the
/// unreserved `A-Z a-z 0-9 - . _ ~` becomes `%XX` (RFC 3986).
pub fn encode_component(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
    out
}

/// Joins key/value pairs into an encoded query string (`a=1&b=x%20y`, no leading `?`).
pub fn query<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .into_iter()
        .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, h, m, s).unwrap()
    }

    #[test]
    fn runtime_picks_a_readable_unit() {
        assert_eq!(runtime(0.42), "0.42 ms");
        assert_eq!(runtime(12.5), "12.5 ms");
        assert_eq!(runtime(99.97), "100 ms");
        assert_eq!(runtime(512.3), "512 ms");
        assert_eq!(runtime(2_010.0), "2.01 s");
        assert_eq!(runtime(14_230.0), "14.2 s");
        assert_eq!(runtime(184_000.0), "3 m 4 s");
        assert_eq!(runtime(7_500_000.0), "2 h 5 m");
        assert_eq!(runtime(97_200_000.0), "1 d 3 h");
        assert_eq!(runtime(f64::NAN), UNKNOWN);
    }

    #[test]
    fn short_time_shows_the_date_only_for_other_days() {
        let now = at(15, 0, 0);
        assert_eq!(short_time(&at(12, 16, 7), &now), "12:16:07");
        let yesterday = Utc.with_ymd_and_hms(2026, 11, 22, 9, 5, 0).unwrap();
        assert_eq!(short_time(&yesterday, &now), "2026-11-22 09:05");
    }

    #[test]
    fn relative_time_reads_past_and_future() {
        let now = at(12, 0, 0);
        assert_eq!(relative_time(&at(12, 0, 0), &now), "just now");
        assert_eq!(relative_time(&at(11, 59, 48), &now), "12 s ago");
        assert_eq!(relative_time(&at(11, 55, 0), &now), "5 m ago");
        assert_eq!(relative_time(&at(9, 0, 0), &now), "3 h ago");
        assert_eq!(relative_time(&at(12, 0, 30), &now), "in 30 s");
    }

    #[test]
    fn truncate_counts_characters_not_bytes() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("exactly10!", 10), "exactly10!");
        assert_eq!(truncate("abcdefghijk", 5), "abcd…");
        assert_eq!(truncate("ééééééé", 4), "ééé…");
    }

    #[test]
    fn encode_component_escapes_everything_but_unreserved() {
        assert_eq!(encode_component("a-Z_0.9~"), "a-Z_0.9~");
        assert_eq!(encode_component("a b&c=d/e?#"), "a%20b%26c%3Dd%2Fe%3F%23");
        assert_eq!(encode_component("é"), "%C3%A9");
        assert_eq!(
            query([("state", "failure,retried"), ("q", "x y")]),
            "state=failure%2Cretried&q=x%20y"
        );
    }
}

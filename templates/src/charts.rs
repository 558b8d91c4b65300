//! Time-series charts drawn on the server as inline SVG: no script, no build step, no library.
//!
//! A chart is a plot (an SVG stretched to its box with `preserveAspectRatio="none"`, lines kept
//! crisp by `vector-effect: non-scaling-stroke`) with its axis labels in HTML around it, so text
//! stays readable at any width, from a phone to a wide screen. Each bucket has a transparent
//! column on top that names every value in it (`<title>`, shown natively on hover; `app.js`
//! turns it into a styled tooltip) and links to the task list filtered to that bucket.
//!
//! Colours come from CSS only: a series carries a class (`state-failure`, `series-2`) whose
//! `--state` variable the stylesheet defines once, so a state has one colour on every page.
//!
//! Why not a chart library: pages must work without JavaScript and the project has no front-end
//! build. A vendored library (uPlot ~50 kB, Chart.js ~200 kB) draws nothing without JS, needs the
//! data a second time as JSON and brings its own colours and fonts; the charts needed (stacked
//! columns, lines over time buckets) are few and simple.
//!
//! Degenerate data is drawn on purpose: no data at all shows the frame with a note; a single
//! point is a dot (there is no line to draw); all-zero counts show a flat baseline on a 0..1 axis.

use crate::format;
use chrono::{DateTime, Utc};
use maud::{html, Markup};

/// Width and height of the plot's coordinate system (stretched to the box by CSS).
const W: f64 = 1000.0;
const H: f64 = 100.0;

/// The buckets shared by every series of a chart: `count` buckets of `step_ms` from `start`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeAxis {
    pub start: DateTime<Utc>,
    pub step_ms: i64,
    pub count: usize,
}

impl TimeAxis {
    fn end(&self) -> DateTime<Utc> {
        self.bucket_start(self.count)
    }

    pub fn bucket_start(&self, i: usize) -> DateTime<Utc> {
        self.start + chrono::Duration::milliseconds(self.step_ms.saturating_mul(i as i64))
    }

    /// The x of a time, 0..W.
    fn x(&self, at: &DateTime<Utc>) -> f64 {
        let span = (self.end() - self.start).num_milliseconds().max(1) as f64;
        ((*at - self.start).num_milliseconds() as f64 / span * W).clamp(0.0, W)
    }

    /// The bucket a time falls in, if any.
    fn index_of(&self, at: &DateTime<Utc>) -> Option<usize> {
        let off = (*at - self.start).num_milliseconds();
        if off < 0 || self.step_ms <= 0 {
            return None;
        }
        let i = usize::try_from(off / self.step_ms).ok()?;
        (i < self.count).then_some(i)
    }
}

/// One series of counts per bucket (`values.len() == axis.count`).
#[derive(Debug, Clone, PartialEq)]
pub struct BarSeries {
    pub label: String,
    /// `state-failure`, `series-0`, ...
    pub class: String,
    pub values: Vec<u64>,
}

/// One line: `(time, value)` points, oldest first; a gap of more than two buckets breaks it.
#[derive(Debug, Clone, PartialEq)]
pub struct LineSeries {
    pub label: String,
    pub class: String,
    pub points: Vec<(DateTime<Utc>, u64)>,
}

/// Where a bucket's column links to: the task list for `[from, to)`.
pub type BucketHref<'a> = &'a dyn Fn(DateTime<Utc>, DateTime<Utc>) -> String;

/// A nice axis maximum (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 x 10^k, whole numbers only) at or above
/// `max`, and at least 1.
pub fn nice_max(max: u64) -> u64 {
    if max <= 1 {
        return 1;
    }
    if max <= 6 {
        return max;
    }
    let mut magnitude = 1u64;
    while magnitude.saturating_mul(10) < max {
        magnitude = magnitude.saturating_mul(10);
    }
    // In tenths of the magnitude, so 1.5 and 2.5 stay whole when the magnitude is 10 or more.
    for tenths in [10u64, 15, 20, 25, 30, 40, 50, 60, 80, 100] {
        let candidate = magnitude.saturating_mul(tenths) / 10;
        if candidate >= max && (magnitude >= 10 || tenths % 10 == 0) {
            return candidate;
        }
    }
    magnitude.saturating_mul(10)
}

/// Axis values from 0 to `max`: every whole number up to 6, else 4, 3 or 2 equal parts when
/// they are whole numbers.
fn y_ticks(max: u64) -> Vec<u64> {
    if max <= 6 {
        return (0..=max).collect();
    }
    for parts in [4u64, 3, 2] {
        if max.is_multiple_of(parts) {
            return (0..=parts).map(|i| max / parts * i).collect();
        }
    }
    vec![0, max]
}

/// How a tick on a time axis is labelled, given the axis span.
fn time_label(at: &DateTime<Utc>, span_ms: i64) -> String {
    if span_ms <= 10 * 60_000 {
        at.format("%H:%M:%S").to_string()
    } else if span_ms <= 36 * 3_600_000 {
        at.format("%H:%M").to_string()
    } else if span_ms <= 8 * 86_400_000 {
        at.format("%a %H:%M").to_string()
    } else {
        at.format("%b %d").to_string()
    }
}

/// A bucket's range as people read it in a tooltip.
fn bucket_label(from: &DateTime<Utc>, to: &DateTime<Utc>) -> String {
    if from.date_naive() == to.date_naive() || *to - *from <= chrono::Duration::hours(1) {
        format!(
            "{} – {} UTC",
            from.format("%Y-%m-%d %H:%M:%S"),
            to.format("%H:%M:%S")
        )
    } else {
        format!(
            "{} – {} UTC",
            from.format("%Y-%m-%d %H:%M"),
            to.format("%Y-%m-%d %H:%M")
        )
    }
}

fn fmt(v: f64) -> String {
    format!("{v:.2}")
}

/// The frame around a plot: y labels, the plot, x labels, the legend.
fn frame(
    axis: &TimeAxis,
    y_max: u64,
    legend: &[(&str, &str)],
    empty_note: Option<&str>,
    plot: Markup,
) -> Markup {
    let span_ms = (axis.end() - axis.start).num_milliseconds();
    let ticks = 6.min(axis.count.max(1));
    let x_ticks: Vec<(f64, String)> = (0..=ticks)
        .map(|i| {
            let at = axis.start + chrono::Duration::milliseconds(span_ms * i as i64 / ticks as i64);
            (i as f64 / ticks as f64 * 100.0, time_label(&at, span_ms))
        })
        .collect();
    html! {
        div.chart {
            @if !legend.is_empty() {
                ul.legend {
                    @for (label, class) in legend {
                        li class=(class) { span.swatch {} (label) }
                    }
                }
            }
            div.chart-body {
                div.chart-y aria-hidden="true" {
                    @for v in y_ticks(y_max) {
                        span style={ "bottom:" (fmt(v as f64 / y_max as f64 * 100.0)) "%" } {
                            (crate::components::count(v))
                        }
                    }
                }
                div.chart-plot {
                    (plot)
                    @if let Some(note) = empty_note {
                        p.chart-empty { (note) }
                    }
                }
                div.chart-x aria-hidden="true" {
                    @for (i, (pct, label)) in x_ticks.iter().enumerate() {
                        span.minor[i % 2 == 1] style={ "left:" (fmt(*pct)) "%" } { (label) }
                    }
                }
            }
        }
    }
}

fn grid(y_max: u64) -> Markup {
    html! {
        @for v in y_ticks(y_max) {
            @let y = H - v as f64 / y_max as f64 * H;
            path.grid d={ "M0 " (fmt(y)) "H" (W) } {}
        }
    }
}

/// A column chart of counts per bucket; several series are stacked in the given order.
/// `empty_note` is shown when every value is zero.
pub fn bar_chart(
    axis: &TimeAxis,
    series: &[BarSeries],
    href: BucketHref<'_>,
    unit: &str,
    empty_note: &str,
) -> Markup {
    let totals: Vec<u64> = (0..axis.count)
        .map(|i| {
            series
                .iter()
                .map(|s| s.values.get(i).copied().unwrap_or(0))
                .sum()
        })
        .collect();
    let y_max = nice_max(totals.iter().copied().max().unwrap_or(0));
    let all_zero = totals.iter().all(|t| *t == 0);
    let n = axis.count.max(1) as f64;
    let col = W / n;
    let gap = if axis.count > 60 { 0.1 } else { 0.2 };
    let legend: Vec<(&str, &str)> = series
        .iter()
        .map(|s| (s.label.as_str(), s.class.as_str()))
        .collect();
    // Stacked rectangles: (class, x, y, width, height), bottom series first.
    let mut rects: Vec<(&str, f64, f64, f64, f64)> = Vec::new();
    for i in 0..axis.count {
        let x = i as f64 * col + col * gap / 2.0;
        let w = col * (1.0 - gap);
        let mut base = 0u64;
        for s in series {
            let v = s.values.get(i).copied().unwrap_or(0);
            if v > 0 {
                let y0 = H - (base + v) as f64 / y_max as f64 * H;
                let h = v as f64 / y_max as f64 * H;
                rects.push((s.class.as_str(), x, y0, w, h));
            }
            base += v;
        }
    }
    let plot = html! {
        svg.plot viewBox={ "0 0 " (W) " " (H) } preserveAspectRatio="none" role="img"
            aria-label=(format!("{} per bucket", unit)) {
            (grid(y_max))
            @for (class, x, y0, w, h) in &rects {
                rect class={ "bar " (class) } x=(fmt(*x)) y=(fmt(*y0)) width=(fmt(*w)) height=(fmt(*h)) {}
            }
            (hit_columns(axis, href, |i| {
                let parts: Vec<String> = series
                    .iter()
                    .map(|s| format!("{} {}", s.label, s.values.get(i).copied().unwrap_or(0)))
                    .collect();
                parts.join(" · ")
            }))
        }
    };
    frame(axis, y_max, &legend, all_zero.then_some(empty_note), plot)
}

/// Transparent full-height columns, one per bucket: the hover target, its tooltip and its link.
fn hit_columns(axis: &TimeAxis, href: BucketHref<'_>, tip: impl Fn(usize) -> String) -> Markup {
    let col = W / axis.count.max(1) as f64;
    html! {
        @for i in 0..axis.count {
            @let from = axis.bucket_start(i);
            @let to = axis.bucket_start(i + 1);
            a href=(href(from, to)) {
                rect.hit x=(fmt(i as f64 * col)) y="0" width=(fmt(col)) height=(H) {
                    title { (bucket_label(&from, &to)) "\n" (tip(i)) }
                }
            }
        }
    }
}

/// A line per series over the axis. Points are drawn as dots when there are few of them (and
/// always for a single point); `empty_note` is shown when no series has a point.
pub fn line_chart(
    axis: &TimeAxis,
    series: &[LineSeries],
    href: BucketHref<'_>,
    empty_note: &str,
) -> Markup {
    let y_max = nice_max(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|(_, v)| *v))
            .max()
            .unwrap_or(0),
    );
    let no_points = series.iter().all(|s| s.points.is_empty());
    let half_step = chrono::Duration::milliseconds(axis.step_ms / 2);
    let legend: Vec<(&str, &str)> = series
        .iter()
        .map(|s| (s.label.as_str(), s.class.as_str()))
        .collect();
    let y = |v: u64| H - v as f64 / y_max as f64 * H;
    let plot = html! {
        svg.plot viewBox={ "0 0 " (W) " " (H) } preserveAspectRatio="none" role="img"
            aria-label="backlog over time" {
            (grid(y_max))
            @for s in series {
                @let d = line_path(axis, &s.points, half_step, y);
                path class={ "line " (s.class) } d=(d) {}
                @if s.points.len() <= 40 {
                    @for (at, v) in &s.points {
                        @let x = axis.x(&(*at + half_step));
                        path class={ "dot " (s.class) } d={ "M" (fmt(x)) " " (fmt(y(*v))) "h0" } {}
                    }
                }
            }
            (hit_columns(axis, href, |i| {
                let from = axis.bucket_start(i);
                let parts: Vec<String> = series
                    .iter()
                    .filter_map(|s| {
                        s.points
                            .iter()
                            .find(|(at, _)| axis.index_of(at) == Some(i) || *at == from)
                            .map(|(_, v)| format!("{} {}", s.label, v))
                    })
                    .collect();
                if parts.is_empty() { "no sample".to_string() } else { parts.join(" · ") }
            }))
        }
    };
    frame(axis, y_max, &legend, no_points.then_some(empty_note), plot)
}

/// An SVG path through the points at bucket centres, broken where samples are missing for more
/// than two buckets (taskscope was down, or the queue did not exist).
fn line_path(
    axis: &TimeAxis,
    points: &[(DateTime<Utc>, u64)],
    half_step: chrono::Duration,
    y: impl Fn(u64) -> f64,
) -> String {
    let mut d = String::new();
    let mut prev: Option<DateTime<Utc>> = None;
    for (at, v) in points {
        let x = axis.x(&(*at + half_step));
        let joined = prev.is_some_and(|p| (*at - p).num_milliseconds() <= axis.step_ms * 2);
        d.push_str(if joined { "L" } else { "M" });
        d.push_str(&format!("{} {}", fmt(x), fmt(y(*v))));
        prev = Some(*at);
    }
    d
}

/// A small inline bar for tables: `value` as a share of `max`.
pub fn meter(value: f64, max: f64, class: &str) -> Markup {
    let pct = if max > 0.0 {
        (value / max * 100.0).clamp(0.0, 100.0)
    } else {
        0.0
    };
    html! {
        span class={ "meter " (class) } aria-hidden="true" {
            span style={ "width:" (fmt(pct)) "%" } {}
        }
    }
}

/// The tooltip text of a runtime.
pub fn runtime_label(ms: f64) -> String {
    format::runtime(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_maxima_are_nice_whole_numbers() {
        let cases = [
            (0, 1),
            (1, 1),
            (5, 5),
            (7, 8),
            (11, 15),
            (101, 150),
            (160, 200),
            (2_600, 3_000),
        ];
        for (max, nice) in cases {
            assert_eq!(nice_max(max), nice, "{max}");
        }
        assert_eq!(y_ticks(5), [0, 1, 2, 3, 4, 5]);
        assert_eq!(y_ticks(150), [0, 50, 100, 150]);
        assert_eq!(y_ticks(200), [0, 50, 100, 150, 200]);
    }
}

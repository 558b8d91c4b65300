//! What a child taskscope shows, read through its HTTP API: readiness (`/healthz`), the
//! transition feed (`/api/events`, timestamped on arrival for the lag), and every task
//! (`/api/tasks`, paged) for the ground-truth check.

use anyhow::{bail, Context};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A task as the checker needs it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub state: String,
    pub retries: u32,
}

/// The HTTP side of a child taskscope.
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Api { base, http })
    }

    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.base, path);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        if !resp.status().is_success() {
            bail!("GET {url}: HTTP {}", resp.status());
        }
        resp.json()
            .await
            .with_context(|| format!("GET {url}: not JSON"))
    }

    /// Waits until `/healthz` says Redis is connected and keyspace notifications are on.
    pub async fn wait_ready(
        &self,
        deadline: Duration,
        proc: &mut taskscope::loadgen::sandbox::Proc,
    ) -> anyhow::Result<Value> {
        let until = Instant::now() + deadline;
        loop {
            if let Ok(Some(status)) = proc.child.try_wait() {
                bail!("taskscope exited during start ({status})");
            }
            if let Ok(h) = self.get_json("/healthz").await {
                if h["redis"] == "connected" && h["change_feed"] == "notifications" {
                    return Ok(h);
                }
            }
            if Instant::now() > until {
                bail!(
                    "taskscope was not ready within {deadline:?} ({}/healthz)",
                    self.base
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `redis_commands` and `redis_round_trips` from `/healthz`: what taskscope sent so far.
    pub async fn redis_commands(&self) -> anyhow::Result<(u64, u64)> {
        let h = self.get_json("/healthz").await?;
        Ok((
            h["redis_commands"]
                .as_u64()
                .context("/healthz has no redis_commands")?,
            h["redis_round_trips"]
                .as_u64()
                .context("/healthz has no redis_round_trips")?,
        ))
    }

    /// Pub/sub messages taskscope dropped so far and re-read (`/healthz` `lagged_events`), and
    /// the most notifications that waited for its prefetcher (`subscriber_backlog_max`).
    pub async fn lagged_events(&self) -> anyhow::Result<(u64, u64)> {
        let h = self.get_json("/healthz").await?;
        Ok((
            h["lagged_events"]
                .as_u64()
                .context("/healthz has no lagged_events")?,
            h["subscriber_backlog_max"].as_u64().unwrap_or(0),
        ))
    }

    /// Tasks in a final state (`/api/stats`).
    pub async fn final_tasks(&self) -> anyhow::Result<u64> {
        let stats = self.get_json("/api/stats").await?;
        Ok(["success", "failure"]
            .iter()
            .map(|s| stats["by_state"][*s].as_u64().unwrap_or(0))
            .sum())
    }

    /// Every task, newest first, paged by 1,000.
    pub async fn all_tasks(&self) -> anyhow::Result<HashMap<String, Seen>> {
        let mut out = HashMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/api/tasks?limit=1000&cursor={c}"),
                None => "/api/tasks?limit=1000".to_string(),
            };
            let page = self.get_json(&path).await?;
            for t in page["tasks"].as_array().into_iter().flatten() {
                if let Some(id) = t["id"].as_str() {
                    out.insert(
                        id.to_string(),
                        Seen {
                            state: t["state"].as_str().unwrap_or("").to_string(),
                            retries: t["retries"].as_u64().unwrap_or(0) as u32,
                        },
                    );
                }
            }
            match page["next_cursor"].as_str() {
                Some(c) if !c.is_empty() => cursor = Some(urlencode(c)),
                _ => return Ok(out),
            }
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Arrivals on `/api/events`: the first time each id was seen in a final state, and how
/// many times the feed said it lagged (dropped events).
#[derive(Debug, Default)]
pub struct Arrivals {
    pub final_at: HashMap<String, Instant>,
    pub transitions: u64,
    pub lagged: u64,
}

/// Subscribes to `/api/events` and records arrivals until the task is aborted.
pub async fn follow_events(api: Api, arrivals: Arc<Mutex<Arrivals>>) -> anyhow::Result<()> {
    let url = format!("{}/api/events", api.base);
    let http = reqwest::Client::builder()
        .build()
        .context("cannot build the HTTP client")?;
    let mut resp = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let now = Instant::now();
        // Events are cut from the front of `buf` by offset and the rest dropped at once: one
        // large chunk (a writer batch of a thousand transitions) costs linear time, so parsing
        // never delays the stamping of the next chunk.
        let scan_from = buf.len().saturating_sub(1);
        buf.extend_from_slice(&chunk);
        let mut start = 0;
        let mut from = scan_from;
        while let Some(end) = find(&buf[from..], b"\n\n").map(|e| from + e) {
            let event = &buf[start..end + 2];
            start = end + 2;
            from = start;
            let text = String::from_utf8_lossy(event);
            let mut kind = "message";
            let mut data = String::new();
            for line in text.lines() {
                if let Some(k) = line.strip_prefix("event:") {
                    kind = if k.trim() == "transition" {
                        "transition"
                    } else if k.trim() == "lagged" {
                        "lagged"
                    } else {
                        "other"
                    };
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            let Ok(mut a) = arrivals.lock() else { continue };
            match kind {
                "transition" => {
                    a.transitions += 1;
                    if let Ok(task) = serde_json::from_str::<Value>(&data) {
                        let state = task["state"].as_str().unwrap_or("");
                        if matches!(state, "success" | "failure") {
                            if let Some(id) = task["id"].as_str() {
                                a.final_at.entry(id.to_string()).or_insert(now);
                            }
                        }
                    }
                }
                "lagged" => a.lagged += 1,
                _ => {}
            }
        }
        buf.drain(..start);
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

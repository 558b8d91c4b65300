//! `taskscope export` and `GET /export.csv` on a large generated history: every row comes out,
//! and the exporting process's peak memory (VmHWM) stays flat, far below the size of the data.
// The test reads the exported Parquet and the history file with DuckDB itself (clippy.toml).
#![allow(clippy::disallowed_types)]

mod common;

use common::{RedisServer, Taskscope};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const ROWS: i64 = 1_000_000;

/// Creates the schema by starting taskscope once, then fills `tasks` with `ROWS` generated rows
/// (about 300 bytes of CSV each: far more than the memory bound below).
fn generate_store(db: &Path) {
    {
        let redis = RedisServer::start();
        let mut ts = Taskscope::start(&redis.url(), db, &[]);
        ts.stop();
    }
    let conn = duckdb::Connection::open(db).expect("open the generated store");
    conn.execute_batch(&format!(
        // Schema v3: tasks live in `task_rows` (number, 16-byte key, the id's text when it is
        // not a UUID); readers see them through the `tasks` view.
        "INSERT INTO task_rows (num, broker, uid, id_text, queue, name, state, args, kwargs,
                                retries, enqueued_at, finished_at, runtime_ms, updated_at)
         SELECT i + 1, 'celery', md5('task-' || i)::UUID, 'task-' || i, 'q' || (i % 7),
                'bulk.job' || (i % 13),
                CASE WHEN i % 10 = 0 THEN 'failure' ELSE 'success' END,
                '[' || i || ', \"' || repeat('x', 180) || '\"]', '{{}}', 0,
                TIMESTAMP '2026-01-01' + to_microseconds(i * 1000),
                TIMESTAMP '2026-01-01' + to_microseconds(i * 1000 + 500),
                i % 1000, TIMESTAMP '2026-01-01' + to_microseconds(i * 1000 + 500)
         FROM range({ROWS}) t(i)"
    ))
    .expect("generate rows");
    conn.execute_batch("CHECKPOINT").expect("checkpoint");
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Runs `cmd` to completion, polling its peak resident memory; returns (success, peak KiB).
fn run_measured(cmd: &mut Command) -> (bool, u64) {
    let mut child = cmd.spawn().expect("spawn taskscope export");
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(kib) = vm_hwm_kib(child.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            return (status.success(), peak);
        }
        assert!(Instant::now() < deadline, "export did not finish in time");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn count_lines(path: &Path) -> usize {
    use std::io::BufRead;
    let file = std::fs::File::open(path).expect("open export");
    std::io::BufReader::new(file).lines().count()
}

#[test]
fn export_of_a_million_tasks_streams_with_flat_memory() {
    let _slot = common::test_slot();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("big.duckdb");
    generate_store(&db);

    let csv = dir.path().join("all.csv");
    let (ok, peak_kib) = run_measured(
        Command::new(common::taskscope_bin())
            .args(["export", "--format", "csv", "--db"])
            .arg(&db)
            .arg("--out")
            .arg(&csv),
    );
    assert!(ok, "taskscope export csv failed");
    let size = std::fs::metadata(&csv).expect("csv").len();
    assert_eq!(count_lines(&csv), ROWS as usize + 1, "header + every row");
    eprintln!("csv: {size} bytes, peak RSS {peak_kib} KiB");
    assert!(size > 250_000_000, "the data is large: {size}");
    assert!(
        peak_kib < 200 * 1024,
        "peak RSS {peak_kib} KiB for a {size}-byte export: rows are being held in memory"
    );

    let failures = dir.path().join("failures.csv");
    let (ok, _) = run_measured(
        Command::new(common::taskscope_bin())
            .args([
                "export",
                "--state",
                "failure",
                "--name",
                "bulk.job3",
                "--db",
            ])
            .arg(&db)
            .arg("--out")
            .arg(&failures),
    );
    assert!(ok);
    // i % 10 == 0 and i % 13 == 3: one in 130.
    assert_eq!(
        count_lines(&failures),
        1 + (0..ROWS).filter(|i| i % 10 == 0 && i % 13 == 3).count()
    );

    let parquet = dir.path().join("all.parquet");
    let (ok, peak_kib) = run_measured(
        Command::new(common::taskscope_bin())
            .args(["export", "--format", "parquet", "--db"])
            .arg(&db)
            .arg("--out")
            .arg(&parquet),
    );
    assert!(ok, "taskscope export parquet failed");
    eprintln!("parquet peak RSS {peak_kib} KiB");
    assert!(
        peak_kib < 300 * 1024,
        "parquet export peak RSS {peak_kib} KiB"
    );
    let conn = duckdb::Connection::open_in_memory().expect("duckdb");
    let n: i64 = conn
        .query_row(
            &format!("SELECT count(*) FROM read_parquet('{}')", parquet.display()),
            [],
            |r| r.get(0),
        )
        .expect("read the parquet back");
    assert_eq!(n, ROWS);

    let bad = Command::new(common::taskscope_bin())
        .args(["export", "--state", "done", "--out", "-", "--db"])
        .arg(&db)
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2), "bad filters are bad usage");
}

#[test]
fn http_csv_export_streams_a_million_tasks_with_flat_memory() {
    let _slot = common::test_slot();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("big.duckdb");
    generate_store(&db);
    let redis = RedisServer::start();
    let ts = Taskscope::start(&redis.url(), &db, &[]);
    let pid = ts.pid();
    let before = vm_hwm_kib(pid).unwrap_or(0);
    let mut resp = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(180))
        .build()
        .expect("client")
        .get(ts.url("/export.csv"))
        .send()
        .expect("GET /export.csv");
    assert_eq!(resp.status(), 200);
    let mut counter = LineCounter::default();
    std::io::copy(&mut resp, &mut counter).expect("read the export");
    let after = vm_hwm_kib(pid).unwrap_or(0);
    eprintln!(
        "served {} bytes; VmHWM {before} -> {after} KiB",
        counter.bytes
    );
    assert_eq!(counter.lines, ROWS as usize + 1);
    assert!(
        after.saturating_sub(before) < 200 * 1024,
        "serving the export grew the peak RSS by {} KiB",
        after.saturating_sub(before)
    );
}

#[derive(Default)]
struct LineCounter {
    lines: usize,
    bytes: usize,
}

impl std::io::Write for LineCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lines += buf.iter().filter(|b| **b == b'\n').count();
        self.bytes += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

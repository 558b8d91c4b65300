//! Harness for the integration tests: a private redis-server, the taskscope binary, real Celery
//! workers and producers (tests/python), an HTTP client and a polling helper.
//!
//! Every test owns its processes: they are killed on drop, and when a test fails the last lines
//! of each process's log are printed. Nothing here sleeps to synchronise: `wait_for` polls a
//! condition until a deadline and reports the last value it saw.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Deadline for anything that should happen within a few seconds on a healthy machine.
pub const SHORT: Duration = Duration::from_secs(30);
/// Deadline for outcomes that involve a worker starting or a task running.
pub const LONG: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Paths and environment

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn python_dir() -> PathBuf {
    repo_root().join("tests").join("python")
}

/// The venv's python: `TASKSCOPE_TEST_PYTHON`, else `<repo>/.venv/bin/python`. Never skips.
pub fn python() -> PathBuf {
    let path = match std::env::var_os("TASKSCOPE_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => repo_root().join(".venv").join("bin").join("python"),
    };
    if !path.exists() {
        panic!(
            "no Python for the Celery workers at {}: run scripts/setup.sh (it creates .venv from \
             tests/python/requirements.txt), or set TASKSCOPE_TEST_PYTHON to a python that has them",
            path.display()
        );
    }
    path
}

/// The binary under test: `TASKSCOPE_TEST_BIN` (a snapshot, so a long run is not disturbed by
/// rebuilds), else the one cargo built for these tests.
pub fn taskscope_bin() -> PathBuf {
    std::env::var_os("TASKSCOPE_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_taskscope")))
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// A port that was free a moment ago (bind to port 0, read it, release it). Callers retry when
/// the port got taken in between.
/// A temporary directory for a test's history file (`taskscope-db-*`, removed when dropped).
pub fn db_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("taskscope-db-")
        .tempdir()
        .expect("tempdir")
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

// ---------------------------------------------------------------------------------------------
// Limiting how many scenarios run at once

static SLOTS: Mutex<usize> = Mutex::new(0);
static SLOT_FREED: Condvar = Condvar::new();

/// Each scenario runs a redis-server, taskscope and a 3-process Celery worker; on a 2-core CI
/// machine running all of them at once makes every deadline flaky. Hold a slot for the whole
/// test (`let _slot = test_slot();` as the first line, so it is released last).
/// `TASKSCOPE_TEST_JOBS` sets how many tests run at once (default 2).
pub struct Slot;

pub fn test_slot() -> Slot {
    let max = std::env::var("TASKSCOPE_TEST_JOBS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2);
    let mut used = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
    while *used >= max {
        used = SLOT_FREED.wait(used).unwrap_or_else(|e| e.into_inner());
    }
    *used += 1;
    Slot
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut used = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        *used -= 1;
        SLOT_FREED.notify_one();
    }
}

// ---------------------------------------------------------------------------------------------
// Polling

/// Polls `probe` every 100 ms until it returns `Ok(value)` or `timeout` passes; then panics with
/// `what` and the last `Err` the probe returned (the last observed value).
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    let mut last;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(observed) => last = observed,
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last observed: {last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts that `/api/queues` knows the age of the oldest message waiting in `broker`/`queue`
/// (from the broker's own data) and that it grows as time passes: it is an age computed when
/// asked, not a number stored once.
pub fn assert_oldest_age_grows(ts: &Taskscope, broker: &str, queue: &str) {
    let age = || {
        let q = ts.get("/api/queues");
        q["queues"].as_array().and_then(|qs| {
            qs.iter()
                .find(|q| q["broker"] == broker && q["name"] == queue)
                .and_then(|q| q["oldest_age_ms"].as_f64())
        })
    };
    let first = wait_for(
        &format!("oldest_age_ms of {broker}/{queue}"),
        Duration::from_secs(30),
        || age().ok_or_else(|| "not known yet".to_string()),
    );
    assert!(first < 120_000.0, "{first} ms");
    let later = wait_for(
        &format!("oldest_age_ms of {broker}/{queue} to grow by 1 s"),
        Duration::from_secs(30),
        || match age() {
            Some(later) if later >= first + 1_000.0 => Ok(later),
            other => Err(format!("{first} then {other:?}")),
        },
    );
    assert!(later < first + 60_000.0, "{first} then {later}");
}

fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn read_to_string_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn log_file(path: &Path) -> (Stdio, Stdio) {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open log {}: {e}", path.display()));
    let err = file.try_clone().expect("clone log file handle");
    (Stdio::from(file), Stdio::from(err))
}

fn signal(pid_or_group: &str, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, "--", pid_or_group])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

// ---------------------------------------------------------------------------------------------
// redis-server

pub struct RedisServer {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A private redis-server on a free port (never 6379), without persistence.
    pub fn start() -> RedisServer {
        if !which("redis-server") {
            panic!(
                "redis-server is not on PATH: run scripts/setup.sh (installs the Debian package)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("taskscope-redis-")
            .tempdir()
            .expect("tempdir");
        let log = dir.path().join("redis.log");
        for _attempt in 0..5 {
            let port = free_port();
            if port == 6379 {
                continue;
            }
            let (out, err) = log_file(&log);
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .expect("spawn redis-server");
            let start = Instant::now();
            while start.elapsed() < SHORT {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // most likely the port was taken meanwhile: try another
                }
                if resp_ping(port) {
                    return RedisServer { port, child, dir };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start; its log:\n{}", tail(&log, 50));
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to clients, all data and config gone) and starts a
    /// fresh one on the same port, as a crashed-and-restarted Redis looks to its clients.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.dir.path().join("redis.log");
        let start = Instant::now();
        while start.elapsed() < SHORT {
            let (out, err) = log_file(&log);
            let mut child = Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .expect("spawn redis-server");
            let up = Instant::now();
            while up.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port is not free again yet: retry
                }
                if resp_ping(self.port) {
                    self.child = child;
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "redis-server did not restart on port {}; its log:\n{}",
            self.port,
            tail(&log, 50)
        );
    }

    /// `redis-cli --raw` against this server; returns stdout without the trailing newline.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("run redis-cli (Debian package redis-tools, installed with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// The Celery result stored for `id` (`celery-task-meta-<id>`), if any.
    pub fn celery_result(&self, id: &str) -> Option<Value> {
        let raw = self.cli(&["GET", &format!("celery-task-meta-{id}")]);
        if raw.is_empty() {
            return None;
        }
        serde_json::from_str(&raw).ok()
    }
}

fn resp_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(n) => buf[..n].starts_with(b"+PONG"),
        Err(_) => false,
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- redis-server :{} log (last 20 lines) -----\n{}",
                self.port,
                tail(&self.dir.path().join("redis.log"), 20)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// taskscope

pub struct Taskscope {
    pub base_url: String,
    pub redis_url: String,
    pub db_path: PathBuf,
    pub extra_args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
    /// Environment variables set for the server (besides the harness's own).
    env: Vec<(String, String)>,
    http: reqwest::blocking::Client,
    _dir: tempfile::TempDir,
}

impl Taskscope {
    /// `taskscope serve --redis <redis_url> --db <db_path> --listen 127.0.0.1:<free port>
    /// --abandon-after 5s <extra_args>`, with stdout and stderr in a log file; returns once
    /// `/healthz` answers.
    pub fn start(redis_url: &str, db_path: &Path, extra_args: &[&str]) -> Taskscope {
        Taskscope::start_with_env(redis_url, db_path, extra_args, &[])
    }

    /// [`Taskscope::start`] with these environment variables set for the server.
    pub fn start_with_env(
        redis_url: &str,
        db_path: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Taskscope {
        let dir = tempfile::Builder::new()
            .prefix("taskscope-log-")
            .tempdir()
            .expect("tempdir");
        let mut ts = Taskscope {
            base_url: String::new(),
            redis_url: redis_url.to_string(),
            db_path: db_path.to_path_buf(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            log: dir.path().join("taskscope.log"),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("reqwest client"),
            _dir: dir,
        };
        ts.spawn();
        ts
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "taskscope is already running");
        for attempt in 0..3 {
            let port = free_port();
            let listen = format!("127.0.0.1:{port}");
            {
                let mut f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .expect("open taskscope log");
                let _ = writeln!(
                    f,
                    "===== harness: starting taskscope (attempt {}) on {listen} =====",
                    attempt + 1
                );
            }
            let (out, err) = log_file(&self.log);
            let mut cmd = Command::new(taskscope_bin());
            cmd.arg("serve")
                .args(["--redis", &self.redis_url])
                .arg("--db")
                .arg(&self.db_path)
                .args(["--listen", &listen]);
            // 5 s unless the test gives its own (Sidekiq 6 beats every 5 s).
            if !self.extra_args.iter().any(|a| a == "--abandon-after") {
                cmd.args(["--abandon-after", "5s"]);
            }
            cmd.args(&self.extra_args)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "info");
            }
            cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
            let child = cmd.spawn().expect("spawn taskscope");
            self.child = Some(child);
            self.base_url = format!("http://{listen}");
            let start = Instant::now();
            while start.elapsed() < LONG {
                if let Some(status) = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    self.child = None;
                    let log = read_to_string_lossy(&self.log);
                    let bind_problem = log.contains("in use") || log.contains("AddrInUse");
                    if bind_problem && attempt < 2 {
                        break; // the free port was taken meanwhile: try another
                    }
                    panic!(
                        "taskscope exited during startup ({status}); its log:\n{}",
                        tail(&self.log, 100)
                    );
                }
                // Ready once it serves and is connected to the Redis it watches.
                if let Ok((200, health)) = self.try_get("/healthz") {
                    if health["redis"] == "connected" {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if self.child.is_some() {
                panic!(
                    "taskscope did not answer GET /healthz with redis \"connected\" within {LONG:?}; its log:\n{}",
                    tail(&self.log, 100)
                );
            }
        }
        panic!(
            "taskscope could not bind a free port; its log:\n{}",
            tail(&self.log, 100)
        );
    }

    /// The running process's id (for `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("taskscope is running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// SIGKILL once the history file holds everything taskscope has shown (`/healthz`
    /// `store.unflushed` is 0; at most 10 s): a crash that falls between two writes of the file.
    /// The file is written once per flush interval, so a kill right after a state was shown
    /// would lose what only the file keeps (a Celery task's name); [`Self::crash`] is that case,
    /// tested in `tests/crash_recovery.rs`.
    pub fn kill(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.is_some() && Instant::now() < deadline {
            match self.try_get("/healthz") {
                Ok((200, v)) if v["store"]["unflushed"] == 0 => break,
                Ok(_) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => break,
            }
        }
        self.crash();
    }

    /// SIGKILL at once: a crash, nothing flushed on the way out.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the process to exit (SIGKILL after 30 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child.id().to_string(), "-TERM");
            let start = Instant::now();
            while start.elapsed() < SHORT {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("taskscope ignored SIGTERM for {SHORT:?}; killing it");
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait up to `limit` for the exit: how long it took and the exit status
    /// (`None`: still running at `limit`, then killed).
    pub fn stop_timed(&mut self, limit: Duration) -> (Duration, Option<std::process::ExitStatus>) {
        let mut child = self.child.take().expect("taskscope is running");
        let start = Instant::now();
        signal(&child.id().to_string(), "-TERM");
        while start.elapsed() < limit {
            if let Ok(Some(status)) = child.try_wait() {
                return (start.elapsed(), Some(status));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        (start.elapsed(), None)
    }

    /// Starts it again with the same Redis, database and flags (on a new free port).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log_text(&self) -> String {
        read_to_string_lossy(&self.log)
    }

    /// GET `path`, returning the status and the JSON body (`Value::Null` when not JSON).
    pub fn try_get(&self, path: &str) -> Result<(u16, Value), String> {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = self.auth_token() {
            request = request.bearer_auth(token);
        }
        let resp = request.send().map_err(|e| format!("GET {path}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().map_err(|e| format!("GET {path}: body: {e}"))?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// The `--auth-token` it was started with: the harness's requests send it as a bearer.
    pub fn auth_token(&self) -> Option<&str> {
        self.extra_args
            .iter()
            .position(|a| a == "--auth-token")
            .and_then(|i| self.extra_args.get(i + 1))
            .map(String::as_str)
    }

    /// GET `path`, which must answer 200 with JSON.
    pub fn get(&self, path: &str) -> Value {
        match self.try_get(path) {
            Ok((200, v)) => v,
            Ok((status, v)) => panic!("GET {path}: status {status}: {v}"),
            Err(e) => panic!("{e}"),
        }
    }

    /// The task as taskscope knows it (with `transitions`), `None` on 404.
    pub fn task(&self, id: &str) -> Option<Value> {
        let path = format!("/api/tasks/{id}");
        match self.try_get(&path) {
            Ok((200, v)) => Some(v),
            Ok((404, _)) => None,
            Ok((status, v)) => panic!("GET {path}: unexpected status {status}: {v}"),
            Err(e) => panic!("{e}"),
        }
    }

    /// Polls `/api/tasks/{id}` until `pred` holds; returns the task. `what` names the condition.
    pub fn wait_task(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_for(&format!("task {id}: {what}"), timeout, || {
            match self.try_get(&format!("/api/tasks/{id}")) {
                Ok((200, task)) if pred(&task) => Ok(task),
                Ok((200, task)) => Err(task.to_string()),
                Ok((status, body)) => Err(format!("HTTP {status} {body}")),
                Err(e) => Err(e),
            }
        })
    }

    /// Polls until the task's `state` is `state`; returns the task.
    pub fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        self.wait_task(id, &format!("state == {state:?}"), timeout, |t| {
            t["state"] == state
        })
    }

    pub fn wait_all_state(&self, ids: &[String], state: &str, timeout: Duration) -> Vec<Value> {
        ids.iter()
            .map(|id| self.wait_state(id, state, timeout))
            .collect()
    }
}

impl Drop for Taskscope {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- taskscope log {} (last 100 lines) -----\n{}\n----- end of taskscope log -----",
                self.log.display(),
                tail(&self.log, 100)
            );
        }
        self.crash();
    }
}

pub fn http_get_json(client: &reqwest::blocking::Client, url: &str) -> Value {
    let resp = client
        .get(url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status();
    let text = resp
        .text()
        .unwrap_or_else(|e| panic!("GET {url}: body: {e}"));
    assert!(status.is_success(), "GET {url}: HTTP {status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {text}"))
}

// ---------------------------------------------------------------------------------------------
// Celery

/// The environment of every Celery process the tests start.
fn celery_env(cmd: &mut Command, redis_url: &str) {
    cmd.env("TS_REDIS_URL", redis_url)
        .env("PYTHONPATH", python_dir())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(python_dir());
}

/// A worker's process group, with a scratch directory for its log and start markers.
/// Killed (the whole group) on drop; its log is printed when a test fails.
pub struct WorkerProcess {
    label: &'static str,
    child: Option<Child>,
    pgid: u32,
    dir: tempfile::TempDir,
}

impl WorkerProcess {
    /// Spawns `cmd` in its own process group with `TS_MARKER_DIR` and the log in `dir`.
    pub fn spawn(label: &'static str, mut cmd: Command, dir: tempfile::TempDir) -> WorkerProcess {
        let (out, err) = log_file(&dir.path().join("worker.log"));
        cmd.env("TS_MARKER_DIR", dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn the {label} worker: {e}"));
        WorkerProcess {
            label,
            pgid: child.id(),
            child: Some(child),
            dir,
        }
    }

    /// Panics with the log when the worker exited (during startup).
    pub fn assert_running(&mut self) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!(
                "the {} worker exited during startup ({status}); its log:\n{}",
                self.label,
                tail(&self.log_path(), 60)
            );
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("worker.log")
    }

    pub fn log_text(&self) -> String {
        read_to_string_lossy(&self.log_path())
    }

    /// Waits until the task `id` has begun executing in this worker (`slow` and `hang` touch a
    /// marker file as they start).
    pub fn wait_started(&self, id: &str, timeout: Duration) {
        let marker = self.dir.path().join(format!("{id}.started"));
        wait_for(
            &format!("task {id} to start in the {} worker", self.label),
            timeout,
            || {
                if marker.exists() {
                    Ok(())
                } else {
                    Err(format!(
                        "no marker yet; worker log:\n{}",
                        tail(&self.log_path(), 5)
                    ))
                }
            },
        )
    }

    /// SIGKILL to the whole process group (main process and pool children): no goodbye, the
    /// running task is lost.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&format!("-{}", self.pgid), "-KILL");
            let _ = child.wait();
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- {} worker log (last 40 lines) -----\n{}\n----- end of worker log -----",
                self.label,
                tail(&self.log_path(), 40)
            );
        }
        self.sigkill();
    }
}

pub struct CeleryWorker {
    pub hostname: String,
    process: WorkerProcess,
}

impl std::ops::Deref for CeleryWorker {
    type Target = WorkerProcess;
    fn deref(&self) -> &WorkerProcess {
        &self.process
    }
}

impl std::ops::DerefMut for CeleryWorker {
    fn deref_mut(&mut self) -> &mut WorkerProcess {
        &mut self.process
    }
}

impl CeleryWorker {
    /// `celery -A celery_app worker -P prefork -c 2 -Q <queues> [-E] --hostname w1@%h <extra>`
    /// in its own process group; returns once the worker logged "ready.".
    pub fn start(redis_url: &str, queues: &str, events: bool, extra: &[&str]) -> CeleryWorker {
        CeleryWorker::start_with_env(redis_url, queues, events, extra, &[])
    }

    /// [`CeleryWorker::start`] with extra environment variables (celery_app.py's `TS_*`).
    pub fn start_with_env(
        redis_url: &str,
        queues: &str,
        events: bool,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> CeleryWorker {
        let dir = tempfile::Builder::new()
            .prefix("taskscope-celery-")
            .tempdir()
            .expect("tempdir");
        let log = dir.path().join("worker.log");
        let mut cmd = Command::new(python());
        cmd.args([
            "-m",
            "celery",
            "-A",
            "celery_app",
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
        ])
        .args(["-Q", queues, "--hostname", "w1@%h", "-l", "info"]);
        if events {
            cmd.arg("-E");
        }
        cmd.args(extra);
        celery_env(&mut cmd, redis_url);
        cmd.envs(env.iter().copied());
        let mut worker = CeleryWorker {
            hostname: String::new(),
            process: WorkerProcess::spawn("Celery", cmd, dir),
        };
        worker.hostname = wait_for("the Celery worker to log \"ready.\"", LONG, || {
            worker.process.assert_running();
            let text = read_to_string_lossy(&log);
            // "[... INFO/MainProcess] w1@host ready."
            text.lines()
                .find_map(|l| {
                    let l = l.trim_end();
                    let rest = l.strip_suffix(" ready.")?;
                    Some(rest.rsplit(' ').next()?.to_string())
                })
                .ok_or_else(|| format!("log so far:\n{}", tail(&log, 10)))
        });
        worker
    }
}

/// Options of tests/python/produce.py.
#[derive(Default, Clone)]
pub struct ProduceOpts {
    /// Positional arguments for every task (else produce.py's per-kind defaults: add [i, i+1],
    /// fail [i+1], flaky ["k<i>", 2], slow [2.0], hang []).
    pub args: Option<Value>,
    pub countdown: Option<f64>,
    /// RFC 3339 time the task is due.
    pub eta: Option<String>,
    /// `json` or `msgpack`.
    pub serializer: Option<String>,
    pub seconds: Option<f64>,
    pub fail_times: Option<u32>,
    /// `task_compression` of the producer (e.g. `zlib`).
    pub compression: Option<String>,
    /// More of celery_app.py's `TS_*` variables (e.g. `TS_RESULT_URL`).
    pub env: Vec<(String, String)>,
}

/// Sends `n` tasks of `kind` (add, fail, flaky, slow, hang) to `queue` like an application
/// would; returns their Celery task ids in order.
pub fn produce(
    redis_url: &str,
    kind: &str,
    n: usize,
    queue: &str,
    opts: &ProduceOpts,
) -> Vec<String> {
    let mut cmd = Command::new(python());
    cmd.arg(python_dir().join("produce.py")).arg(kind).args([
        "--n",
        &n.to_string(),
        "--queue",
        queue,
    ]);
    if let Some(args) = &opts.args {
        cmd.args(["--args", &args.to_string()]);
    }
    if let Some(c) = opts.countdown {
        cmd.args(["--countdown", &c.to_string()]);
    }
    if let Some(eta) = &opts.eta {
        cmd.args(["--eta", eta]);
    }
    if let Some(s) = &opts.serializer {
        cmd.args(["--serializer", s]);
    }
    if let Some(s) = opts.seconds {
        cmd.args(["--seconds", &s.to_string()]);
    }
    if let Some(f) = opts.fail_times {
        cmd.args(["--fail-times", &f.to_string()]);
    }
    celery_env(&mut cmd, redis_url);
    cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
    if let Some(c) = &opts.compression {
        cmd.env("TS_COMPRESSION", c);
    }
    let out = cmd.output().expect("run produce.py");
    assert!(
        out.status.success(),
        "produce.py {kind} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ids: Vec<String> = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("produce.py printed no JSON list of ids ({e}): {stdout}"));
    assert_eq!(
        ids.len(),
        n,
        "produce.py returned {} ids for --n {n}",
        ids.len()
    );
    ids
}

// ---------------------------------------------------------------------------------------------
// Assertions on taskscope's JSON

/// The `state` of every transition, oldest first.
pub fn transition_states(task: &Value) -> Vec<String> {
    task["transitions"]
        .as_array()
        .unwrap_or_else(|| panic!("task has no transitions array: {task}"))
        .iter()
        .map(|t| t["state"].as_str().unwrap_or("<not a string>").to_string())
        .collect()
}

pub fn parse_time(task: &Value, field: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let s = task[field]
        .as_str()
        .unwrap_or_else(|| panic!("task.{field} is not a time string: {task}"));
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("task.{field} = {s:?} is not RFC 3339 ({e}): {task}"))
}

/// Every field of the contract's Task is present (null when unknown, never absent).
pub fn assert_task_shape(task: &Value) {
    const FIELDS: [&str; 21] = [
        "id",
        "broker",
        "queue",
        "name",
        "state",
        "args",
        "kwargs",
        "result",
        "error",
        "traceback",
        "retries",
        "worker",
        "eta",
        "enqueued_at",
        "started_at",
        "finished_at",
        "runtime_ms",
        "wait_ms",
        "fingerprint",
        "updated_at",
        "transitions",
    ];
    let obj = task
        .as_object()
        .unwrap_or_else(|| panic!("task is not an object: {task}"));
    for field in FIELDS {
        assert!(
            obj.contains_key(field),
            "task lacks field {field:?}: {task}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Dramatiq

/// The `TS_*` variables dramatiq_app.py reads besides `TS_REDIS_URL`: cleared in every Dramatiq
/// process the tests start (so the caller's environment cannot leak in), then set from `env`.
const DRAMATIQ_VARS: [&str; 6] = [
    "TS_DRAMATIQ_NAMESPACE",
    "TS_DRAMATIQ_RESULTS",
    "TS_DRAMATIQ_QUEUE",
    "TS_DRAMATIQ_HEARTBEAT_TIMEOUT",
    "TS_DRAMATIQ_MAINTENANCE_CHANCE",
    "TS_MARKER_DIR",
];

/// The environment of every Dramatiq process the tests start (the same as Celery's, plus
/// dramatiq_app.py's `TS_DRAMATIQ_*` from `env`).
fn dramatiq_env(cmd: &mut Command, redis_url: &str, env: &[(&str, &str)]) {
    celery_env(cmd, redis_url);
    for var in DRAMATIQ_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
}

/// The members of `<namespace>:__heartbeats__`: the broker ids of every Dramatiq worker and
/// producer that talked to this Redis (until maintenance drops stale ones).
pub fn dramatiq_heartbeat_ids(redis_url: &str, namespace: &str) -> Vec<String> {
    let out = Command::new("redis-cli")
        .args(["-u", redis_url, "--raw", "ZRANGE"])
        .arg(format!("{namespace}:__heartbeats__"))
        .args(["0", "-1"])
        .output()
        .expect("run redis-cli (Debian package redis-tools, installed with redis-server)");
    assert!(
        out.status.success(),
        "redis-cli ZRANGE {namespace}:__heartbeats__ failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

pub struct DramatiqWorker {
    /// The worker's broker id(s) (Dramatiq's `broker_id`, what taskscope reports as `worker`):
    /// the members of `<ns>:__heartbeats__` that appeared while it started. Meaningful only when
    /// no producer runs while a worker starts (the tests never do that).
    pub broker_ids: Vec<String>,
    process: WorkerProcess,
}

impl std::ops::Deref for DramatiqWorker {
    type Target = WorkerProcess;
    fn deref(&self) -> &WorkerProcess {
        &self.process
    }
}

impl std::ops::DerefMut for DramatiqWorker {
    fn deref_mut(&mut self) -> &mut WorkerProcess {
        &mut self.process
    }
}

impl DramatiqWorker {
    /// `python -m dramatiq dramatiq_app --processes 1 --threads 2` (cwd tests/python) in its own
    /// process group, with dramatiq_app.py's `TS_*` variables from `env` (`TS_MARKER_DIR` is
    /// the worker's own scratch directory); returns once the worker process logged "ready for
    /// action" and its first fetch put a new broker id in `<ns>:__heartbeats__`.
    pub fn start(redis_url: &str, env: &[(&str, &str)]) -> DramatiqWorker {
        let namespace = env
            .iter()
            .find(|(k, _)| *k == "TS_DRAMATIQ_NAMESPACE")
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| "dramatiq".to_string());
        let before = dramatiq_heartbeat_ids(redis_url, &namespace);
        let dir = tempfile::Builder::new()
            .prefix("taskscope-dramatiq-")
            .tempdir()
            .expect("tempdir");
        let log = dir.path().join("worker.log");
        let mut cmd = Command::new(python());
        cmd.args(["-m", "dramatiq", "dramatiq_app"])
            .args(["--processes", "1", "--threads", "2"]);
        dramatiq_env(&mut cmd, redis_url, env);
        let mut worker = DramatiqWorker {
            broker_ids: Vec::new(),
            process: WorkerProcess::spawn("Dramatiq", cmd, dir),
        };
        worker.broker_ids = wait_for(
            "the Dramatiq worker to be ready and heartbeat",
            LONG,
            || {
                worker.process.assert_running();
                let text = read_to_string_lossy(&log);
                if !text.contains("Worker process is ready for action.") {
                    return Err(format!("log so far:\n{}", tail(&log, 10)));
                }
                let new: Vec<String> = dramatiq_heartbeat_ids(redis_url, &namespace)
                    .into_iter()
                    .filter(|id| !before.contains(id))
                    .collect();
                if new.is_empty() {
                    Err(format!(
                        "ready, but no new member of {namespace}:__heartbeats__ yet"
                    ))
                } else {
                    Ok(new)
                }
            },
        );
        worker
    }
}

/// Options of tests/python/dramatiq_produce.py.
#[derive(Default, Clone)]
pub struct DramatiqProduceOpts {
    /// Queue to send to (else the actors' queue, `default`).
    pub queue: Option<String>,
    /// Positional arguments for every message (else dramatiq_produce.py's per-kind defaults:
    /// add [i, i+1], fail [i+1], flaky ["k<i>", fail_times], slow [seconds], hang []).
    pub args: Option<Value>,
    pub kwargs: Option<Value>,
    /// Milliseconds before the message is due (sent to the delay queue `<q>.DQ`).
    pub delay_ms: Option<u64>,
    pub fail_times: Option<u32>,
    pub seconds: Option<f64>,
    /// dramatiq_app.py's `TS_DRAMATIQ_*` variables (the namespace must match the worker's).
    pub env: Vec<(String, String)>,
}

/// Sends `n` messages of `kind` (add, fail, flaky, slow, hang) like an application would;
/// returns their Dramatiq `message_id`s in order.
pub fn dramatiq_produce(
    redis_url: &str,
    kind: &str,
    n: usize,
    opts: &DramatiqProduceOpts,
) -> Vec<String> {
    let mut cmd = Command::new(python());
    cmd.arg(python_dir().join("dramatiq_produce.py"))
        .arg(kind)
        .args(["--n", &n.to_string()]);
    if let Some(q) = &opts.queue {
        cmd.args(["--queue", q]);
    }
    if let Some(args) = &opts.args {
        cmd.args(["--args", &args.to_string()]);
    }
    if let Some(kwargs) = &opts.kwargs {
        cmd.args(["--kwargs", &kwargs.to_string()]);
    }
    if let Some(d) = opts.delay_ms {
        cmd.args(["--delay", &d.to_string()]);
    }
    if let Some(f) = opts.fail_times {
        cmd.args(["--fail-times", &f.to_string()]);
    }
    if let Some(s) = opts.seconds {
        cmd.args(["--seconds", &s.to_string()]);
    }
    let env: Vec<(&str, &str)> = opts
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    dramatiq_env(&mut cmd, redis_url, &env);
    let out = cmd.output().expect("run dramatiq_produce.py");
    assert!(
        out.status.success(),
        "dramatiq_produce.py {kind} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ids: Vec<String> = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("dramatiq_produce.py printed no JSON list of message_ids ({e}): {stdout}")
    });
    assert_eq!(
        ids.len(),
        n,
        "dramatiq_produce.py returned {} ids for --n {n}",
        ids.len()
    );
    ids
}

/// A real `rq worker` (RQ's default forking `Worker`) on a private redis-server.
pub struct RqWorker {
    /// The worker's name (`--name`), what taskscope reports as `worker`.
    pub name: String,
    process: WorkerProcess,
}

impl Drop for RqWorker {
    fn drop(&mut self) {
        // The process group goes with `process`; the horses are in sessions of their own.
        self.kill_horses();
    }
}

impl std::ops::Deref for RqWorker {
    type Target = WorkerProcess;
    fn deref(&self) -> &WorkerProcess {
        &self.process
    }
}

impl std::ops::DerefMut for RqWorker {
    fn deref_mut(&mut self) -> &mut WorkerProcess {
        &mut self.process
    }
}

impl RqWorker {
    /// `rq worker --url <redis> --name <unique> <extra...> <queues...>` (cwd tests/python, so
    /// `rq_app` imports) in its own process group, with `env` (e.g. `RQ_KEY_PREFIX`); returns
    /// once it listens on its queues.
    pub fn start(
        redis_url: &str,
        queues: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> RqWorker {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "w{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix("taskscope-rq-")
            .tempdir()
            .expect("tempdir");
        let log = dir.path().join("worker.log");
        let rq = python().with_file_name("rq");
        let mut cmd = Command::new(rq);
        cmd.args(["worker", "--url", redis_url, "--name", &name])
            .args(extra)
            .args(queues)
            .env("PYTHONUNBUFFERED", "1")
            .env_remove("RQ_KEY_PREFIX")
            .envs(env.iter().copied())
            .current_dir(python_dir());
        let mut worker = RqWorker {
            name,
            process: WorkerProcess::spawn("RQ", cmd, dir),
        };
        wait_for("the RQ worker to listen", LONG, || {
            worker.process.assert_running();
            if read_to_string_lossy(&log).contains("*** Listening on") {
                Ok(())
            } else {
                Err(format!("log so far:\n{}", tail(&log, 10)))
            }
        });
        worker
    }

    /// SIGKILL to the worker's process group and to the work horses of its long jobs (RQ
    /// forks each horse into a session of its own; a machine or container dying takes both).
    pub fn sigkill(&mut self) {
        self.process.sigkill();
        self.kill_horses();
    }

    /// Kills the processes whose pid long jobs wrote to their start markers.
    fn kill_horses(&self) {
        let Ok(entries) = std::fs::read_dir(self.process.dir.path()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "started") {
                let pid = read_to_string_lossy(&path);
                if let Ok(pid) = pid.trim().parse::<u32>() {
                    signal(&pid.to_string(), "-KILL");
                }
            }
        }
    }
}

/// Options of tests/python/rq_produce.py.
#[derive(Default, Clone)]
pub struct RqProduceOpts {
    pub queue: Option<String>,
    pub args: Option<Value>,
    pub kwargs: Option<Value>,
    pub seconds: Option<f64>,
    /// `enqueue_in` seconds.
    pub delay_s: Option<f64>,
    /// `Retry(max=...)` on enqueue, with `retry_interval` seconds between attempts.
    pub retry: Option<u32>,
    pub retry_interval: Option<u32>,
    pub depends_on: Option<String>,
    /// `json` for RQ's JSONSerializer (default pickle).
    pub serializer: Option<String>,
    pub cancel: bool,
    /// `result_ttl` (0: RQ deletes the job as soon as it succeeds).
    pub result_ttl: Option<u32>,
    /// `job_timeout` in seconds.
    pub timeout: Option<u32>,
    /// Environment of the producer (e.g. `RQ_KEY_PREFIX`).
    pub env: Vec<(String, String)>,
}

/// Enqueues `n` jobs of `kind` (a function of rq_app.py) like an application would; returns
/// their RQ job ids in order.
pub fn rq_produce(redis_url: &str, kind: &str, n: usize, opts: &RqProduceOpts) -> Vec<String> {
    let mut cmd = Command::new(python());
    cmd.arg(python_dir().join("rq_produce.py")).arg(kind).args([
        "--url",
        redis_url,
        "--n",
        &n.to_string(),
    ]);
    let mut flag = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            cmd.args([name, &v]);
        }
    };
    flag("--queue", opts.queue.clone());
    flag("--args", opts.args.as_ref().map(Value::to_string));
    flag("--kwargs", opts.kwargs.as_ref().map(Value::to_string));
    flag("--seconds", opts.seconds.map(|s| s.to_string()));
    flag("--in", opts.delay_s.map(|s| s.to_string()));
    flag("--retry", opts.retry.map(|s| s.to_string()));
    flag(
        "--retry-interval",
        opts.retry_interval.map(|s| s.to_string()),
    );
    flag("--depends-on", opts.depends_on.clone());
    flag("--serializer", opts.serializer.clone());
    flag("--result-ttl", opts.result_ttl.map(|s| s.to_string()));
    flag("--timeout", opts.timeout.map(|s| s.to_string()));
    if opts.cancel {
        cmd.arg("--cancel");
    }
    cmd.env_remove("RQ_KEY_PREFIX")
        .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(python_dir());
    let out = cmd.output().expect("run rq_produce.py");
    assert!(
        out.status.success(),
        "rq_produce.py {kind} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ids: Vec<String> = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("rq_produce.py printed no JSON list of job ids ({e}): {stdout}")
    });
    assert_eq!(ids.len(), n, "rq_produce.py returned {} ids", ids.len());
    ids
}

// ---------------------------------------------------------------------------------------------
// taskiq (tests/python/taskiq_app.py, taskiq_produce.py)

/// The `TS_*` variables taskiq_app.py reads besides `TS_REDIS_URL`: cleared in every process
/// the tests start (the caller's environment cannot leak in), then set per scenario.
pub const TASKIQ_VARS: [&str; 8] = [
    "TS_TASKIQ_IDLE_TIMEOUT",
    "TS_TASKIQ_BROKER",
    "TS_TASKIQ_QUEUE",
    "TS_TASKIQ_SERIALIZER",
    "TS_TASKIQ_RESULTS",
    "TS_TASKIQ_RESULT_PREFIX",
    "TS_TASKIQ_RETRY",
    "TS_MARKER_DIR",
];

pub fn taskiq_env(cmd: &mut Command, redis_url: &str, env: &[(&str, &str)]) {
    cmd.env("TS_REDIS_URL", redis_url)
        .env("PYTHONPATH", python_dir())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(python_dir());
    for var in TASKIQ_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
}

/// `python -m taskiq worker taskiq_app:broker --workers 1` in its own process group, configured
/// by `env` (`TS_TASKIQ_*`); returns once the worker process logged "Listening started." (the
/// stream broker has created its consumer group by then).
pub fn taskiq_worker(redis_url: &str, env: &[(&str, &str)]) -> WorkerProcess {
    let dir = tempfile::Builder::new()
        .prefix("taskscope-taskiq-")
        .tempdir()
        .expect("tempdir");
    let mut cmd = Command::new(python());
    cmd.args([
        "-m",
        "taskiq",
        "worker",
        "taskiq_app:broker",
        "--workers",
        "1",
    ]);
    taskiq_env(&mut cmd, redis_url, env);
    spawn_taskiq_worker(cmd, dir)
}

/// Spawns a `taskiq worker` command (logging into `dir`) and returns once it listens (the
/// stream broker has created its consumer group by then).
pub fn spawn_taskiq_worker(cmd: Command, dir: tempfile::TempDir) -> WorkerProcess {
    let log = dir.path().join("worker.log");
    let mut worker = WorkerProcess::spawn("taskiq", cmd, dir);
    wait_for("the taskiq worker to listen", LONG, || {
        worker.assert_running();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Listening started.") {
            Ok(())
        } else {
            Err(format!("log so far:\n{text}"))
        }
    });
    worker
}

/// Sends `n` tasks of `kind` (add, fail, flaky, slow, hang) with taskiq_produce.py, configured
/// by `env`; their task ids in order.
pub fn taskiq_produce(
    redis_url: &str,
    env: &[(&str, &str)],
    kind: &str,
    n: usize,
    extra: &[&str],
) -> Vec<String> {
    let mut cmd = Command::new(python());
    cmd.arg(python_dir().join("taskiq_produce.py"))
        .arg(kind)
        .args(["--n", &n.to_string()])
        .args(extra);
    taskiq_env(&mut cmd, redis_url, env);
    let out = cmd.output().expect("run taskiq_produce.py");
    assert!(
        out.status.success(),
        "taskiq_produce.py {kind} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ids: Vec<String> = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("taskiq_produce.py printed no JSON list ({e}): {stdout}"));
    assert_eq!(ids.len(), n, "taskiq_produce.py ids: {stdout}");
    ids
}

// ---------------------------------------------------------------------------------------------
// arq (tests/python/arq_app.py, arq_produce.py)

/// `arq arq_app.<settings>` (`WorkerSettings`, `JsonWorkerSettings`, `MsgpackWorkerSettings`)
/// on `queue` of the Redis on `port`, in its own process group; returns once it logged its
/// start.
pub fn arq_worker(port: u16, settings: &str, queue: &str) -> WorkerProcess {
    let dir = tempfile::Builder::new()
        .prefix("taskscope-arq-")
        .tempdir()
        .expect("tempdir");
    let mut cmd = Command::new(python().with_file_name("arq"));
    cmd.arg(format!("arq_app.{settings}"))
        .env("TS_REDIS_PORT", port.to_string())
        .env("TS_ARQ_QUEUE", queue)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(python_dir());
    let log = dir.path().join("worker.log");
    let mut worker = WorkerProcess::spawn("arq", cmd, dir);
    wait_for("the arq worker to start", LONG, || {
        worker.assert_running();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Starting worker") {
            Ok(())
        } else {
            Err(format!("log so far:\n{text}"))
        }
    });
    worker
}

/// `arq_produce.py --port <port> <args>` (`ArqRedis.enqueue_job`, or `abort ID`): the job ids.
pub fn arq_produce(port: u16, args: &[&str]) -> Vec<String> {
    let out = Command::new(python())
        .arg(python_dir().join("arq_produce.py"))
        .args(["--port", &port.to_string()])
        .args(args)
        .current_dir(python_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run arq_produce.py");
    assert!(
        out.status.success(),
        "arq_produce.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("arq_produce.py prints JSON");
    v["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|id| {
            id.as_str()
                .expect("an id (null: a duplicate job id)")
                .to_string()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// BullMQ (tests/node: worker.js, producer.js; bullmq pinned in tests/node/package-lock.json)

/// `tests/node`, with its `node_modules` (installed by `scripts/setup.sh`).
pub fn node_dir() -> PathBuf {
    let dir = repo_root().join("tests/node");
    assert!(
        dir.join("node_modules/bullmq").is_dir(),
        "tests/node/node_modules is missing: run scripts/setup.sh (npm ci in tests/node)"
    );
    dir
}

/// `node worker.js <redis> <queue> <prefix>` with `env` (`WORKER_NAME`, `LOCK_MS`,
/// `STALLED_MS`), in its own process group; returns once it is connected.
pub fn bullmq_worker(
    redis_url: &str,
    queue: &str,
    prefix: &str,
    env: &[(&str, &str)],
) -> WorkerProcess {
    let dir = tempfile::Builder::new()
        .prefix("taskscope-bullmq-")
        .tempdir()
        .expect("tempdir");
    let mut cmd = Command::new("node");
    cmd.arg("worker.js")
        .args([redis_url, queue, prefix])
        .envs(env.iter().copied())
        .current_dir(node_dir());
    let log = dir.path().join("worker.log");
    let mut worker = WorkerProcess::spawn("bullmq", cmd, dir);
    wait_for("the BullMQ worker to connect", LONG, || {
        worker.assert_running();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("ready") {
            Ok(())
        } else {
            Err(format!("log so far:\n{text}"))
        }
    });
    worker
}

/// `node producer.js <redis> <queue> <prefix> <jobs>` (`Queue.add`, or a flow through
/// `FlowProducer`): the task ids taskscope gives the jobs, `<prefix>:<queue>:<job id>`, in
/// order (a flow: the parent, then its children depth first).
pub fn bullmq_produce(redis_url: &str, queue: &str, prefix: &str, jobs: &Value) -> Vec<String> {
    bullmq_produce_env(redis_url, queue, prefix, jobs, &[])
}

/// [`bullmq_produce`] with `env` (`MAX_LEN_EVENTS`: the queue's `maxLenEvents`).
pub fn bullmq_produce_env(
    redis_url: &str,
    queue: &str,
    prefix: &str,
    jobs: &Value,
    env: &[(&str, &str)],
) -> Vec<String> {
    let out = Command::new("node")
        .arg("producer.js")
        .args([redis_url, queue, prefix, &jobs.to_string()])
        .envs(env.iter().copied())
        .current_dir(node_dir())
        .output()
        .expect("run node producer.js");
    assert!(
        out.status.success(),
        "producer.js {jobs} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<Value> = serde_json::from_slice(&out.stdout).expect("producer.js prints JSON");
    ids.iter()
        .map(|id| format!("{prefix}:{queue}:{}", id.as_str().expect("a job id")))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Sidekiq (Ruby, Debian's ruby-sidekiq 6.4)

/// The Ruby side of the Sidekiq tests.
pub fn ruby_dir() -> PathBuf {
    repo_root().join("tests").join("ruby")
}

/// `sidekiq -r tests/ruby/app.rb -q <queue>... -c 5` on the Redis at `redis`, started once it
/// has written its first heartbeat (its identity in `processes`); `namespace`: the
/// `redis-namespace` of the app (`TS_SIDEKIQ_NAMESPACE`).
pub fn sidekiq_worker(
    redis: &RedisServer,
    queues: &[&str],
    namespace: Option<&str>,
) -> WorkerProcess {
    let dir = tempfile::Builder::new()
        .prefix("taskscope-sidekiq-")
        .tempdir()
        .expect("tempdir");
    let processes = match namespace {
        Some(ns) => format!("{ns}:processes"),
        None => "processes".to_string(),
    };
    let before = redis.cli(&["SMEMBERS", &processes]);
    let mut cmd = Command::new("sidekiq");
    cmd.arg("-r").arg(ruby_dir().join("app.rb"));
    for q in queues {
        cmd.args(["-q", q]);
    }
    cmd.args(["-c", "5"])
        .env("REDIS_URL", redis.url())
        .current_dir(ruby_dir());
    if let Some(ns) = namespace {
        cmd.env("TS_SIDEKIQ_NAMESPACE", ns);
    }
    let mut worker = WorkerProcess::spawn("sidekiq", cmd, dir);
    wait_for("the sidekiq process's first heartbeat", LONG, || {
        worker.assert_running();
        let now = redis.cli(&["SMEMBERS", &processes]);
        if now.lines().count() > before.lines().count() {
            Ok(())
        } else {
            Err(format!(
                "processes: {now:?}; log so far:\n{}",
                worker.log_text()
            ))
        }
    });
    worker
}

/// `ruby tests/ruby/produce.rb <args>` on the Redis at `redis`: the jids it enqueued.
pub fn sidekiq_produce(redis: &RedisServer, namespace: Option<&str>, args: &[&str]) -> Vec<String> {
    let mut cmd = Command::new("ruby");
    cmd.arg(ruby_dir().join("produce.rb"))
        .args(args)
        .env("REDIS_URL", redis.url())
        .current_dir(ruby_dir());
    if let Some(ns) = namespace {
        cmd.env("TS_SIDEKIQ_NAMESPACE", ns);
    }
    let out = cmd.output().expect("run produce.rb");
    assert!(
        out.status.success(),
        "produce.rb {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Assertions the broker suites share

/// The detail of the task's last transition to `state` (empty when none).
pub fn detail_of(t: &Value, state: &str) -> String {
    t["transitions"]
        .as_array()
        .and_then(|tr| tr.iter().rev().find(|x| x["state"] == state))
        .and_then(|x| x["detail"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// A finished task of `broker`: the contract's shape, its name and queue, every time of its
/// life known, seen queued first and running on the way, its timeline ending in its state.
pub fn assert_finished_task(t: &Value, broker: &str, name: &str, queue: &str) {
    assert_task_shape(t);
    assert_eq!(t["broker"], broker, "{t}");
    assert_eq!(t["name"], name, "{t}");
    assert_eq!(t["queue"], queue, "{t}");
    assert!(t["enqueued_at"].is_string(), "enqueued_at: {t}");
    assert!(t["started_at"].is_string(), "started_at: {t}");
    assert!(t["finished_at"].is_string(), "finished_at: {t}");
    assert!(t["runtime_ms"].is_number(), "runtime_ms: {t}");
    let states = transition_states(t);
    assert_eq!(states.first().map(String::as_str), Some("queued"), "{t}");
    assert!(states.iter().any(|s| s == "running"), "running shown: {t}");
    assert_eq!(
        states.last().map(String::as_str),
        t["state"].as_str(),
        "{t}"
    );
}

/// The worker `id` from `/api/workers`, polled until listed: workers are read from the file,
/// which follows the live view by up to a flush interval.
pub fn wait_worker(ts: &Taskscope, id: &str, timeout: Duration) -> serde_json::Value {
    wait_for(&format!("GET /api/workers to list {id}"), timeout, || {
        let workers = ts.get("/api/workers");
        workers["workers"]
            .as_array()
            .and_then(|ws| ws.iter().find(|x| x["id"] == id))
            .cloned()
            .ok_or_else(|| workers.to_string())
    })
}

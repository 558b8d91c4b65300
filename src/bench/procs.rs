//! Child processes of the benchmarks and `demo`: a private `redis-server` and a `taskscope
//! serve`, both killed when dropped; and what `/proc` says about a process.

use anyhow::{bail, Context};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind a local port")?;
    Ok(l.local_addr()?.port())
}

/// `program` on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the process to stop (`SIGTERM`), waits up to `grace`, then kills it.
    pub fn stop(&mut self, grace: Duration) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Makes the kernel kill the child when this process dies, however it dies (Linux), so an
/// interrupted benchmark or demo leaves no `redis-server` behind.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs between fork and exec and only calls `prctl`, which is
        // async-signal-safe; it allocates nothing and touches no lock.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

/// A private `redis-server` on a free port, no persistence.
#[derive(Debug)]
pub struct RedisServer {
    /// Killed on drop.
    _process: Proc,
    pub port: u16,
}

impl RedisServer {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

/// Starts `redis-server` from `PATH`, waits until it accepts connections.
pub fn start_redis(dir: &Path) -> anyhow::Result<RedisServer> {
    let Some(bin) = which("redis-server") else {
        bail!(
            "redis-server is not on PATH: install it (Debian/Ubuntu: `sudo apt-get install \
             redis-server`; macOS: `brew install redis`) and run this again"
        );
    };
    let port = free_port()?;
    let child = die_with_parent(&mut Command::new(bin))
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start redis-server")?;
    let server = RedisServer {
        _process: Proc { child },
        port,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("redis-server did not accept connections on port {port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

/// Starts `taskscope serve` (this very binary) with `args`, its log to `log`.
pub fn start_taskscope(args: &[String], log: &Path) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe().context("cannot find the taskscope binary")?;
    let log_file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = die_with_parent(&mut Command::new(exe))
        .arg("serve")
        .args(args)
        .env(
            "TASKSCOPE_LOG",
            std::env::var("TASKSCOPE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        // The child reads only its flags, not a user's environment or config file.
        .env_remove("TASKSCOPE_CONFIG")
        .env_remove("TASKSCOPE_BROKERS")
        .env_remove("TASKSCOPE_REDIS_URL")
        .env_remove("TASKSCOPE_DB")
        .env_remove("TASKSCOPE_LISTEN")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .context("cannot start taskscope serve")?;
    Ok(Proc { child })
}

/// CPU seconds (user + system) and peak RSS of a live process, from `/proc`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcUsage {
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
}

pub fn usage(pid: u32) -> anyhow::Result<ProcUsage> {
    let cpu_seconds = cpu_seconds(pid).with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    let peak = status_bytes(pid, "VmHWM")
        .with_context(|| format!("cannot read VmHWM in /proc/{pid}/status"))?;
    Ok(ProcUsage {
        cpu_seconds,
        peak_rss_mb: peak as f64 / (1024.0 * 1024.0),
    })
}

/// A `kB` line of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in bytes.
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// CPU time (user + system) of a process so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`, which may hold spaces, start at field 3 (state): utime (14)
    // is index 11, stime (15) index 12.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux we run on (`getconf CLK_TCK` says so).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

//! Child processes of `demo` and the benchmarks: a private `redis-server` and a `taskscope
//! serve`, both killed when dropped and when we die; a scratch directory for them.

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

/// Starts `exe serve` (a taskscope binary) with `args`, its log to `log`.
pub fn start_taskscope(exe: &Path, args: &[String], log: &Path) -> anyhow::Result<Proc> {
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
        .with_context(|| format!("cannot start {} serve", exe.display()))?;
    Ok(Proc { child })
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new, empty directory under the system's temporary directory.
pub fn tempdir() -> anyhow::Result<TempDir> {
    let p = std::env::temp_dir().join(format!("taskscope-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
    Ok(TempDir(p))
}

/// The serve flags of a child watching the generator's keys.
pub fn serve_args(redis_url: &str, db: &Path, listen: &str, brokers: &str) -> Vec<String> {
    vec![
        "--redis".into(),
        redis_url.into(),
        "--db".into(),
        db.display().to_string(),
        "--listen".into(),
        listen.into(),
        "--brokers".into(),
        brokers.into(),
        "--taskiq-queues".into(),
        super::taskiq::STREAM.into(),
        "--celery-queues".into(),
        super::celery::QUEUE.into(),
    ]
}

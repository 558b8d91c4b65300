//! In a `heap-profile` build, `kill -USR2 <pid>` writes a jemalloc heap profile (where the live
//! memory was allocated, sampled) to `<prof_prefix>.<pid>.<n>.m<n>.heap`, read with `jeprof`.
//! It needs `MALLOC_CONF=prof:true,prof_prefix:/some/dir/jeprof` in the environment; without
//! `prof:true` jemalloc refuses the dump and this logs why. For finding what holds memory at a
//! chosen moment of a soak (an idle server allocates nothing, so jemalloc's own interval dumps
//! never come).

use tracing::{info, warn};

/// Listens for SIGUSR2 until the process ends; each one writes a profile.
pub fn spawn_dump_on_signal() {
    let mut signals =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "heap-profile: cannot listen for SIGUSR2");
                return;
            }
        };
    tokio::spawn(async move {
        while signals.recv().await.is_some() {
            // SAFETY: "prof.dump" takes no old value and, with a null new value, writes to the
            // default file name; every pointer passed is null with length 0.
            let rc = unsafe {
                tikv_jemalloc_sys::mallctl(
                    c"prof.dump".as_ptr(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    0,
                )
            };
            if rc == 0 {
                info!("heap-profile: profile written");
            } else {
                warn!(
                    errno = rc,
                    "heap-profile: jemalloc wrote no profile (is MALLOC_CONF prof:true set?)"
                );
            }
        }
    });
}

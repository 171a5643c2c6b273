//! Real workloads shared by tracer's integration tests (`tracer/tests/integration`) and its
//! benchmarks (`cargo xtask bench`): two network namespaces joined by a veth pair
//! ([`netns::NetnsPair`]), bounded SYN floods between them, and Debian's nginx with a throw-away
//! configuration ([`nginx::Nginx`]). Everything made here is removed on drop, and traffic never
//! leaves the namespaces (or 127.0.0.1) it creates.

pub mod netns;
pub mod nginx;

use std::{
    process::Child,
    thread,
    time::{Duration, Instant},
};

/// Stops a child server the polite way: SIGTERM, up to `grace` to exit, then SIGKILL; always
/// reaped.
pub fn terminate(child: &mut Child, grace: Duration) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

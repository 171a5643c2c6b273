//! Helpers the benchmarks share: start a tracer or a peer tool, wait until it is attached,
//! stop it with SIGINT, and simple statistics.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

pub use crate::util::release_bin;

/// A tool running in the background; its stdout goes where the Command said (or is copied to
/// `stdout_copy` when piped), its stderr is collected.
pub struct Attached {
    child: Child,
    stderr: mpsc::Receiver<String>,
    stdout_thread: Option<thread::JoinHandle<()>>,
}

impl Attached {
    /// Spawns `cmd` and waits (up to 30 s) for a line on stdout or stderr that satisfies
    /// `ready` (tracer: "Hit Ctrl-C to end."; bpftrace: "Attaching N probes").
    /// With `stdout_to`, stdout is piped and copied to that file (so it can be watched too).
    pub fn spawn_to(
        cmd: &mut Command,
        stdout_to: Option<PathBuf>,
        ready: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Result<Self> {
        let ready = std::sync::Arc::new(ready);
        cmd.stderr(Stdio::piped());
        if stdout_to.is_some() {
            cmd.stdout(Stdio::piped());
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let (err_tx, err_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        {
            let ready = ready.clone();
            let ready_tx = ready_tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if ready(&line) {
                        let _ = ready_tx.send(());
                    }
                    let _ = err_tx.send(line);
                }
            });
        }
        let stdout_thread = match (stdout_to, child.stdout.take()) {
            (Some(path), Some(stdout)) => Some(thread::spawn(move || {
                let mut file =
                    std::io::BufWriter::new(std::fs::File::create(path).expect("output file"));
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if ready(&line) {
                        let _ = ready_tx.send(());
                    }
                    let _ = writeln!(file, "{line}");
                }
            })),
            _ => None,
        };
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let said: Vec<String> = err_rx.try_iter().collect();
            bail!("{cmd:?} did not attach within 30 s: {}", said.join(" | "));
        }
        Ok(Self {
            child,
            stderr: err_rx,
            stdout_thread,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGINT, wait, and return what it printed on stderr.
    pub fn stop(self) -> Result<String> {
        self.stop_measured().map(|(stderr, _)| stderr)
    }

    /// `stop`, also returning the process's peak RSS over its whole life (ru_maxrss, in MiB:
    /// what it took to symbolize and write at the end included).
    pub fn stop_measured(mut self) -> Result<(String, f64)> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let pid = self.child.id() as i32;
        let mut raw = 0;
        // SAFETY: zeroed rusage is valid; wait4 on our own child, which Child never reaped.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::wait4(pid, &mut raw, 0, &mut usage) };
        if rc < 0 {
            bail!("wait4 on {pid} failed");
        }
        let rss_mib = usage.ru_maxrss as f64 / 1024.0;
        let status = std::os::unix::process::ExitStatusExt::from_raw(raw);
        let status: std::process::ExitStatus = status;
        if let Some(t) = self.stdout_thread.take() {
            let _ = t.join();
        }
        let stderr: Vec<String> = self.stderr.try_iter().collect();
        if !status.success() && status.code() != Some(130) {
            // bpftrace exits 0 on SIGINT; tracer exits 0; anything else is worth showing.
            eprintln!("note: {} exited with {status}", self.child.id());
        }
        Ok((stderr.join("\n"), rss_mib))
    }
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Wall time and CPU time (user + system) of one run of a command, measured with wait4 so
/// that the figure stays meaningful when other work shares the machine.
#[derive(Clone, Copy, Debug)]
pub struct RunTimes {
    pub pid: u32,
    pub wall: f64,
    pub cpu: f64,
    /// Peak resident set size of the process, in MiB (ru_maxrss).
    pub max_rss_mib: f64,
}

pub fn timed(cmd: &mut Command) -> Result<RunTimes> {
    let start = std::time::Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let pid = child.id();
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 on our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
    let wall = start.elapsed().as_secs_f64();
    if rc < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed");
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    std::mem::forget(child);
    Ok(RunTimes {
        pid,
        wall,
        cpu: secs(usage.ru_utime) + secs(usage.ru_stime),
        max_rss_mib: usage.ru_maxrss as f64 / 1024.0,
    })
}

/// CPU seconds (user + system) a running process has used so far, from /proc/PID/stat.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // After the comm: state is field 3, utime 14, stime 15 (1-based) -> indexes 11 and 12 here.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

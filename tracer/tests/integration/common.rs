//! Helpers every integration test uses: running tracer and the workload generator, waiting
//! for a tool to be attached, stopping it with a signal, skipping with a reason, and checking
//! that nothing of ours stays loaded in the kernel.

#![allow(dead_code, reason = "each test module uses a different subset")]

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use libtest_mimic::{Completion, Failed, Trial};

pub const TRACER: &str = env!("CARGO_BIN_EXE_tracer");
pub const WORKLOAD: &str = env!("CARGO_BIN_EXE_tracer-workload");

pub type TestResult = Result<Completion, Failed>;

/// Tests whose assertions need native speed: duty cycles, scheduling latencies, sampling
/// rates, packet floods, multi-second intervals. Under qemu's TCG emulation (the VM stage,
/// which exists for the kprobe/fentry paths) they measure the emulator, and SCHED_FIFO
/// spinners there starve the guest's RCU kthreads; they run on the host instead.
const NATIVE_SPEED_ONLY: &[&str] = &[
    "sched::",
    "profile::",
    "softirq_top::histograms_count_every_entry",
    "softirq_top::syn_flood_",
    "forksnoop::summary_intervals",
];

/// A test that needs the given features; skipped with the first missing feature's reason.
pub fn trial(name: &str, needs: &'static [Need], body: fn() -> Result<(), Failed>) -> Trial {
    let emulated = std::env::var("TRACER_VM")
        .ok()
        .filter(|_| NATIVE_SPEED_ONLY.iter().any(|p| name.starts_with(p)));
    Trial::ignorable_test(name, move || {
        if let Some(kernel) = emulated {
            return Ok(Completion::ignored_with(format!(
                "needs native speed; runs on the host, not under qemu TCG ({kernel})"
            )));
        }
        for need in needs {
            if let Some(reason) = need.missing() {
                return Ok(Completion::ignored_with(reason));
            }
        }
        body().map(|()| Completion::Completed)
    })
}

/// What a test needs from the machine.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    Root,
    Kprobes,
    Fentry,
    Tracefs,
    Command(&'static str),
}

impl Need {
    pub fn missing(self) -> Option<String> {
        match self {
            Need::Root => (unsafe { libc::geteuid() } != 0)
                .then(|| "needs root to load BPF programs".to_string()),
            Need::Kprobes => (!Path::new("/sys/bus/event_source/devices/kprobe/type").exists())
                .then(|| "kprobes not available on this kernel (CONFIG_KPROBES unset); runs under cargo xtask vm-test".into()),
            Need::Fentry => doctor_says_unavailable("fentry")
                .map(|why| format!("fentry not available on this kernel ({why}); runs under cargo xtask vm-test")),
            Need::Tracefs => (!Path::new("/sys/kernel/tracing").exists()).then(|| "no tracefs".into()),
            Need::Command(cmd) => which(cmd).is_none().then(|| format!("{cmd} is not installed (cargo xtask setup installs it)")),
        }
    }
}

pub fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .map(|p| p.join(cmd))
            .find(|p| p.is_file())
    })
}

/// Asks `tracer doctor --json` whether a feature is unavailable, and why.
pub fn doctor_says_unavailable(feature: &str) -> Option<String> {
    let out = Command::new(TRACER)
        .args(["doctor", "--json"])
        .output()
        .ok()?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    json["checks"]
        .as_array()?
        .iter()
        .find(|c| c["feature"] == feature)
        .and_then(|c| {
            (c["available"] == false).then(|| c["detail"].as_str().unwrap_or("").to_string())
        })
}

/// Fails the test with a message.
pub fn fail(msg: impl Into<String>) -> Failed {
    Failed::from(msg.into())
}

pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond { Ok(()) } else { Err(fail(msg())) }
}

/// A running tracer tool whose stdout and stderr are collected in the background.
pub struct Running {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    pub stderr_lines: Vec<String>,
}

fn collect(reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Starts `tracer ARGS` and waits until it says it is attached ("Hit Ctrl-C to end.").
pub fn start(args: &[&str]) -> Result<Running, Failed> {
    let mut child = Command::new(TRACER)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start tracer: {e}")))?;
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let mut running = Running {
        child,
        stdout,
        stderr,
        stderr_lines: Vec::new(),
    };
    running.wait_stderr("Hit Ctrl-C to end.", Duration::from_secs(20))?;
    Ok(running)
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> Result<(), Failed> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr_lines.iter().any(|l| l.contains(needle)) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .stderr
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) => self.stderr_lines.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        // Drain what it said before dying.
                        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(200)) {
                            self.stderr_lines.push(line);
                        }
                        return Err(fail(format!(
                            "tracer exited ({status}) before '{needle}': {}",
                            self.stderr_lines.join(" | ")
                        )));
                    }
                    if Instant::now() >= deadline {
                        return Err(fail(format!(
                            "timed out waiting for '{needle}' on stderr: {}",
                            self.stderr_lines.join(" | ")
                        )));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(fail(format!("tracer closed stderr before '{needle}'")));
                }
            }
        }
    }

    /// Stdout lines printed so far, waiting up to `timeout` for at least `n` lines.
    pub fn stdout_lines(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        while lines.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => break,
            }
        }
        lines
    }

    /// Sends `signal` and collects everything the tool printed; fails if it does not exit.
    pub fn stop(self, signal: i32) -> Result<Finished, Failed> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.wait(Duration::from_secs(15))
    }

    /// Waits for the tool to exit by itself (duration or count reached).
    pub fn wait(mut self, timeout: Duration) -> Result<Finished, Failed> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().map_err(|e| fail(e.to_string()))? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(fail("tracer did not exit in time (hang)"));
            }
            thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = Vec::new();
        while let Ok(line) = self.stdout.recv_timeout(Duration::from_millis(500)) {
            stdout.push(line);
        }
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            self.stderr_lines.push(line);
        }
        Ok(Finished {
            code: status.code(),
            stdout,
            stderr: self.stderr_lines,
        })
    }
}

/// What a finished tool printed.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

impl Finished {
    pub fn ok(self) -> Result<Self, Failed> {
        if self.code == Some(0) {
            Ok(self)
        } else {
            Err(fail(format!(
                "tracer exited with {:?}: {}",
                self.code,
                self.stderr.join(" | ")
            )))
        }
    }

    /// Parses every stdout line as JSON.
    pub fn json(&self) -> Result<Vec<serde_json::Value>, Failed> {
        self.stdout
            .iter()
            .map(|l| serde_json::from_str(l).map_err(|e| fail(format!("not JSON ({e}): {l}"))))
            .collect()
    }
}

/// Runs `tracer ARGS` to completion (for one-shot commands and error cases).
pub fn run(args: &[&str]) -> Output {
    Command::new(TRACER)
        .args(args)
        .output()
        .expect("run tracer")
}

/// A workload started with --wait: it prints its PID and starts when `go` is called.
pub struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    pub pid: u32,
}

impl Workload {
    pub fn spawn(args: &[&str]) -> Result<Self, Failed> {
        let mut child = Command::new(WORKLOAD)
            .arg("--wait")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot start workload: {e}")))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .map_err(|e| fail(e.to_string()))?;
        let pid = line
            .trim()
            .parse()
            .map_err(|_| fail(format!("workload said '{line}'")))?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin, pid })
    }

    /// Lets it run and waits until it is done.
    pub fn go_and_wait(mut self) -> Result<(), Failed> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "go");
        }
        let status = self.child.wait().map_err(|e| fail(e.to_string()))?;
        ensure(status.success(), || format!("workload failed: {status}"))
    }
}

/// Names of BPF programs currently loaded in the kernel (bpftool, else aya's listing).
pub fn loaded_program_names() -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output();
    let Ok(out) = out else { return Vec::new() };
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    json.as_array()
        .map(|progs| {
            progs
                .iter()
                .filter_map(|p| p["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Fails if any program whose name starts with `prefix` is still loaded.
pub fn assert_nothing_loaded(prefix: &str) -> Result<(), Failed> {
    // The kernel frees programs asynchronously after the last fd closes.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left: Vec<String> = loaded_program_names()
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(fail(format!("programs still loaded after exit: {left:?}")));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// uprobe_multi links exist since Linux 6.6; older kernels must fall back to perf-event uprobes.
pub fn kernel_has_uprobe_multi() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 6)
}

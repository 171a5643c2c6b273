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

/// Go's pprof, built by `cargo xtask setup` from Debian's source.
pub const GO_PPROF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/tools/bin/pprof");

/// Runs Go's pprof with `args`; its standard output, or why it failed.
pub fn go_pprof(args: &[&str]) -> Result<String, Failed> {
    let out = Command::new(GO_PPROF)
        .args(args)
        .output()
        .map_err(|e| fail(format!("{GO_PPROF}: {e} (cargo xtask setup builds it)")))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(fail(format!(
            "pprof {} failed: {}{text}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(text)
}

/// The longest any one command a test runs may take (a tracer run to completion, a workload,
/// bpftool): past it the command is killed and the test fails naming it, so a hang fails one
/// test instead of stalling the suite.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The qemu kernel this suite runs in (`TRACER_VM`, set by the VM stage's init), or None on
/// the host. Under qemu's TCG emulation everything runs 10-50x slower and timers fire late,
/// so tests that depend on speed use `emulated()`/`scaled()` to pick TCG-tolerant
/// rates, windows and assertions instead of skipping.
pub fn emulated() -> Option<String> {
    std::env::var("TRACER_VM").ok().filter(|k| !k.is_empty())
}

/// A time budget: as given on the host, stretched under TCG emulation (x8), where a
/// program's load, attach and symbolization take many times longer than natively.
pub fn scaled(budget: Duration) -> Duration {
    if emulated().is_some() {
        budget * 8
    } else {
        budget
    }
}

/// A test that needs the given features; skipped with the first missing feature's reason.
///
/// Every test runs in the VM kernels too (the kernel-dependent ones in `cargo xtask test`,
/// xtask vm.rs `EVERY_GUEST`; all of them in `--full`): a test whose native assertions depend
/// on speed picks TCG-tolerant ones with `emulated()`; a skip is only for a missing kernel
/// feature.
pub fn trial(name: &str, needs: &'static [Need], body: fn() -> Result<(), Failed>) -> Trial {
    let owned = name.to_string();
    Trial::ignorable_test(name, move || {
        for need in needs {
            if let Some(reason) = need.missing() {
                return Ok(Completion::ignored_with(reason));
            }
        }
        announced(&owned, body().map(|()| Completion::Completed))
    })
}

/// Prints a failed test's message at once, behind `==test-failed== NAME: ` (xtask vm.rs
/// `FAILED_MARK`): libtest prints it only after the last test, which a guest that dies or
/// times out never reaches.
pub fn announced(name: &str, result: TestResult) -> TestResult {
    if let Err(failed) = &result {
        let message = failed.message().unwrap_or("failed");
        // On a line of its own: libtest has printed "test NAME ... " without a newline.
        println!(
            "\n==test-failed== {name}: {}",
            message.lines().next().unwrap_or_default()
        );
    }
    result
}

/// What a test needs from the machine.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    Root,
    Kprobes,
    Fentry,
    /// kprobe_multi links (Linux 5.18+ with CONFIG_FPROBE) or tracefs's function_graph tracer:
    /// funcgraph's rungs.
    KernelFunctionGraph,
    /// kprobe_multi links or a usable tracefs function tracer: functrace's rungs.
    KernelFunctionTracer,
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
            Need::KernelFunctionGraph => (!kernel_has_kprobe_multi() && !kernel_has_function_graph()).then(|| {
                "neither kprobe_multi links (Linux 5.18+ with CONFIG_FPROBE) nor a usable tracefs function_graph tracer on this kernel; runs under cargo xtask vm-test".into()
            }),
            Need::KernelFunctionTracer => (!kernel_has_kprobe_multi() && !kernel_has_function_tracer()).then(|| {
                "neither kprobe_multi links (Linux 5.18+ with CONFIG_FPROBE) nor a usable tracefs function tracer on this kernel; runs under cargo xtask vm-test".into()
            }),
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
    let out = output_within(Command::new(TRACER).args(["doctor", "--json"]), DEADLINE).ok()?;
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
    start_with_env(args, &[])
}

/// `start` with these environment variables set for tracer.
pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Running, Failed> {
    let mut child = Command::new(TRACER)
        .args(args)
        .envs(env.iter().copied())
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
    // Loading and verifying a tool's programs takes seconds under TCG.
    running.wait_stderr("Hit Ctrl-C to end.", scaled(Duration::from_secs(20)))?;
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
                    // stderr closed: it is exiting; say how, with what it printed.
                    let end = Instant::now() + Duration::from_secs(5);
                    let status = loop {
                        match self.child.try_wait() {
                            Ok(Some(status)) => break status.to_string(),
                            Ok(None) if Instant::now() < end => {
                                thread::sleep(Duration::from_millis(10))
                            }
                            _ => break "still running".to_string(),
                        }
                    };
                    return Err(fail(format!(
                        "tracer closed stderr ({status}) before '{needle}': {}",
                        self.stderr_lines.join(" | ")
                    )));
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
            signal: std::os::unix::process::ExitStatusExt::signal(&status),
            stdout,
            stderr: std::mem::take(&mut self.stderr_lines),
        })
    }
}

/// A test that fails half-way must not leave its tracer running (still attached, it would
/// fail every later "nothing loaded" check).
impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a finished tool printed.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
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

/// Runs `tracer ARGS` to completion (for one-shot commands and error cases); a run that
/// outlives `DEADLINE` is killed and fails the test (a panic, which libtest-mimic reports as
/// the test's failure) with the command line.
pub fn run(args: &[&str]) -> Output {
    run_within(args, DEADLINE)
}

/// `run` with another deadline.
pub fn run_within(args: &[&str], deadline: Duration) -> Output {
    output_within(Command::new(TRACER).args(args), deadline)
        .unwrap_or_else(|e| panic!("{}", e.message))
}

/// Why `output_within` gave up.
#[derive(Debug)]
pub struct Timeout {
    pub message: String,
}

impl From<Timeout> for Failed {
    fn from(t: Timeout) -> Self {
        fail(t.message)
    }
}

/// Runs `cmd` to completion like `Command::output` (stdin closed), but kills it after
/// `deadline` and says which command hung, with what it had printed.
pub fn output_within(cmd: &mut Command, deadline: Duration) -> Result<Output, Timeout> {
    let line = command_line(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Timeout {
            message: format!("cannot start {line}: {e}"),
        })?;
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let stderr = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let end = Instant::now() + deadline;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let said = stderr.join().unwrap_or_default();
                return Err(Timeout {
                    message: format!(
                        "timed out after {deadline:?} (killed): {line}; stderr: {}",
                        String::from_utf8_lossy(&said).trim()
                    ),
                });
            }
        }
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// `prog arg arg...` for messages.
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
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
        // Its first line is its PID; read it on a thread so a wedged workload cannot hang us.
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "workload {} did not say its PID within 10 s",
                    args.join(" ")
                )));
            }
        };
        let pid = line
            .trim()
            .parse()
            .map_err(|_| fail(format!("workload said '{line}'")))?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin, pid })
    }

    /// Lets it run and waits until it is done (killed and failed after `DEADLINE`).
    pub fn go_and_wait(self) -> Result<(), Failed> {
        self.go_and_wait_within(DEADLINE)
    }

    /// Lets it run and waits until it is done, at most `deadline`.
    pub fn go_and_wait_within(mut self, deadline: Duration) -> Result<(), Failed> {
        self.go();
        let end = Instant::now() + deadline;
        loop {
            match self.child.try_wait().map_err(|e| fail(e.to_string()))? {
                Some(status) => {
                    return ensure(status.success(), || format!("workload failed: {status}"));
                }
                None if Instant::now() >= end => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(fail(format!(
                        "workload {} still running after {deadline:?} (killed)",
                        self.pid
                    )));
                }
                None => thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Lets it run and waits until it has exited, without reaping it: as a zombie its
    /// /proc/PID/status and schedstat still hold its final counters, with no race against
    /// the exit (dropping the Workload reaps it).
    pub fn go_and_wait_exited(&mut self, deadline: Duration) -> Result<(), Failed> {
        self.go();
        let end = Instant::now() + deadline;
        loop {
            // SAFETY: waitid fills `info`; WNOWAIT leaves the child waitable (a zombie).
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let ret = unsafe {
                libc::waitid(
                    libc::P_PID,
                    self.pid,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
                )
            };
            if ret != 0 {
                return Err(fail(format!(
                    "waitid({}): {}",
                    self.pid,
                    std::io::Error::last_os_error()
                )));
            }
            // SAFETY: si_pid is set (non-zero) once the child has exited.
            if unsafe { info.si_pid() } != 0 {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(fail(format!(
                    "workload {} still running after {deadline:?}",
                    self.pid
                )));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets it run without waiting.
    pub fn go(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "go");
        }
    }

    /// Whether it has finished.
    pub fn finished(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

/// A workload abandoned by a failing test is killed, not left running.
impl Drop for Workload {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Fails if any program whose name starts with `prefix` is still loaded while no process
/// holds it (through a program or link fd): left behind by a tool that exited. Programs of
/// the same name held by live processes — another test, a soak or a colleague's run on the
/// same kernel — are not ours to judge.
pub fn assert_nothing_loaded(prefix: &str) -> Result<(), Failed> {
    // The kernel frees programs asynchronously after the last fd closes.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let named: Vec<(u32, String)> = loaded_programs()
            .into_iter()
            .filter(|(_, n)| n.starts_with(prefix))
            .collect();
        let left: Vec<String> = if named.is_empty() {
            Vec::new()
        } else {
            let held = held_program_ids();
            named
                .into_iter()
                .filter(|(id, _)| !held.contains(id))
                .map(|(id, n)| format!("{n} (id {id})"))
                .collect()
        };
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(fail(format!(
                "programs still loaded after exit, held by no process: {left:?}"
            )));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// (id, name) of every loaded BPF program (bpftool).
pub fn loaded_programs() -> Vec<(u32, String)> {
    let out = output_within(
        Command::new("bpftool").args(["prog", "show", "--json"]),
        DEADLINE,
    );
    let Ok(out) = out else { return Vec::new() };
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    json.as_array()
        .map(|progs| {
            progs
                .iter()
                .filter_map(|p| Some((p["id"].as_u64()? as u32, p["name"].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The kernel objects a tool process holds: BPF programs, maps and links by their kernel ids
/// (from /proc/PID/fdinfo), and how many perf events it has open.
#[derive(Clone, Debug, Default)]
pub struct BpfObjects {
    pub progs: Vec<u32>,
    pub maps: Vec<u32>,
    pub links: Vec<u32>,
    pub perf_events: usize,
}

/// What `pid` holds open right now.
pub fn bpf_objects_of(pid: u32) -> BpfObjects {
    let mut objects = BpfObjects::default();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return objects;
    };
    for fd in fds.flatten() {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        if target.to_string_lossy() == "anon_inode:[perf_event]" {
            objects.perf_events += 1;
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
        let Ok(info) = std::fs::read_to_string(info) else {
            continue;
        };
        for line in info.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let Ok(id) = value.trim().parse::<u32>() else {
                continue;
            };
            match key {
                "prog_id" if !objects.progs.contains(&id) => objects.progs.push(id),
                "map_id" if !objects.maps.contains(&id) => objects.maps.push(id),
                "link_id" if !objects.links.contains(&id) => objects.links.push(id),
                _ => {}
            }
        }
    }
    objects
}

/// bpf(2) commands that open an object by id (ENOENT when it no longer exists).
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

/// Whether the kernel still has the object `id` of this kind.
fn bpf_id_exists(cmd: libc::c_long, id: u32) -> bool {
    // union bpf_attr for *_GET_FD_BY_ID: { u32 id; u32 next_id; u32 open_flags; }, zero-padded.
    let mut attr = [0u32; 32];
    attr[0] = id;
    // SAFETY: bpf(2) reads `size` bytes of `attr`, which we own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if fd >= 0 {
        // SAFETY: closing the fd the kernel just gave us.
        unsafe { libc::close(fd as i32) };
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT)
}

/// Entries under /sys/fs/bpf (pinned objects), recursively.
pub fn pinned_paths() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            out.push(path.display().to_string());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/bpf"), &mut out);
    out
}

/// Probe events that aya created through tracefs for process `pid` (its fallback when the
/// kernel has no perf PMU for the probe type): they would outlive a killed process.
fn tracefs_probe_events_of(pid: u32) -> Vec<String> {
    let tag = format!("aya_{pid}_");
    ["kprobe_events", "uprobe_events"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(format!("/sys/kernel/tracing/{f}")).ok())
        .flat_map(|text| {
            text.lines()
                .filter(|l| l.contains(&tag))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Fails unless every object that process `pid` held is gone from the kernel: its programs,
/// maps and links (by id; the kernel frees them asynchronously, so this waits up to 5 s), any
/// probe event it made through tracefs, and any entry pinned in /sys/fs/bpf since `pinned_before`.
/// Perf events need no lookup of their own: an fd-only perf event dies with the process, and
/// one kept alive by the kernel would hold a link or program of ours, which is checked.
pub fn assert_released(
    pid: u32,
    objects: &BpfObjects,
    pinned_before: &[String],
) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut left = Vec::new();
        for (cmd, what, ids) in [
            (BPF_PROG_GET_FD_BY_ID, "program", &objects.progs),
            (BPF_MAP_GET_FD_BY_ID, "map", &objects.maps),
            (BPF_LINK_GET_FD_BY_ID, "link", &objects.links),
        ] {
            left.extend(
                ids.iter()
                    .filter(|&&id| bpf_id_exists(cmd, id))
                    .map(|id| format!("{what} {id}")),
            );
        }
        left.extend(tracefs_probe_events_of(pid));
        left.extend(
            pinned_paths()
                .into_iter()
                .filter(|p| !pinned_before.contains(p))
                .map(|p| format!("pinned {p}")),
        );
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(fail(format!(
                "after process {pid} exited, still in the kernel: {}",
                left.join(", ")
            )));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Ids of every BPF program loaded in the kernel now (BPF_PROG_GET_NEXT_ID).
pub fn program_ids() -> Vec<u32> {
    const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
    let mut ids = Vec::new();
    let mut start = 0u32;
    loop {
        // union bpf_attr: { u32 start_id; u32 next_id; ... }
        let mut attr = [0u32; 32];
        attr[0] = start;
        // SAFETY: bpf(2) reads and writes within `attr`, which we own.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_GET_NEXT_ID,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr) as u32,
            )
        };
        if rc != 0 {
            return ids;
        }
        start = attr[1];
        ids.push(start);
    }
}

/// Program ids held by some process, through a program or link fd (/proc/*/fdinfo).
fn held_program_ids() -> std::collections::HashSet<u32> {
    let mut held = std::collections::HashSet::new();
    for proc_dir in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = proc_dir
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        held.extend(bpf_objects_of(pid).progs);
    }
    held
}

/// Programs loaded since `before` that still exist after `grace` while no process holds
/// them: left behind by a process that has exited. Programs of other running processes
/// (other tests, other tools on the machine) are not counted.
pub fn orphaned_programs(before: &[u32], grace: Duration) -> Vec<u32> {
    let deadline = Instant::now() + grace;
    loop {
        let new: Vec<u32> = program_ids()
            .into_iter()
            .filter(|id| !before.contains(id))
            .collect();
        let orphans: Vec<u32> = if new.is_empty() {
            Vec::new()
        } else {
            let held = held_program_ids();
            new.into_iter().filter(|id| !held.contains(id)).collect()
        };
        if orphans.is_empty() || Instant::now() >= deadline {
            return orphans;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// kprobe_multi links need the link code (Linux 5.18: `bpf_kprobe_multi_link_attach`, a stub
/// returning EOPNOTSUPP without CONFIG_FPROBE) and fprobe itself (`register_fprobe`, only with
/// CONFIG_FPROBE): the kernel's own symbol table says both, independently of doctor.
pub fn kernel_has_kprobe_multi() -> bool {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let has = |symbol: &str| {
        kallsyms
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some(symbol))
    };
    has("bpf_kprobe_multi_link_attach") && has("register_fprobe")
}

/// tracefs's function_graph tracer, usable (this host lists none, and its function tracer
/// answers EPERM).
pub fn kernel_has_function_graph() -> bool {
    std::fs::read_to_string("/sys/kernel/tracing/available_tracers")
        .unwrap_or_default()
        .split_whitespace()
        .any(|t| t == "function_graph")
        && std::fs::read("/sys/kernel/tracing/available_filter_functions").is_ok()
}

/// tracefs's function tracer, usable (this host lists it but answers EPERM).
pub fn kernel_has_function_tracer() -> bool {
    std::fs::read_to_string("/sys/kernel/tracing/available_tracers")
        .unwrap_or_default()
        .split_whitespace()
        .any(|t| t == "function")
        && std::fs::read("/sys/kernel/tracing/available_filter_functions").is_ok()
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

/// Each `tracer ARGS` must fail with one stderr line containing its needle (and no panic):
/// the bad-input rule every tool's own table checks with this.
pub fn expect_one_line_errors(cases: &[(Vec<&str>, &str)]) -> Result<(), Failed> {
    for (args, needle) in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure(!out.status.success(), || format!("{args:?} succeeded"))?;
        ensure(stderr.contains(needle), || {
            format!("{args:?}: stderr lacks '{needle}': {stderr}")
        })?;
        ensure(stderr.trim().lines().count() == 1, || {
            format!("{args:?}: not one line: {stderr}")
        })?;
        ensure(!stderr.contains("panicked"), || {
            format!("{args:?} panicked: {stderr}")
        })?;
    }
    Ok(())
}

/// Columns of /proc/stat's "cpu" line (the label is column 0).
const STAT_IRQ: usize = 6;
pub const STAT_SOFTIRQ: usize = 7;
const STAT_STEAL: usize = 8;

/// One column of /proc/stat's "cpu" line (all CPUs), in USER_HZ ticks.
pub fn proc_stat_ticks(column: usize) -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(column))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// USER_HZ, the unit of /proc/stat.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1)
}

/// Hard-IRQ plus stolen time of all CPUs so far, in µs: time a running task's wall-clock
/// on-CPU span holds but its schedstat run time does not (with IRQ_TIME_ACCOUNTING and
/// paravirt steal accounting, as on a cloud VM), and in which it takes no cpu-clock sample.
/// Tests judging our clock against schedstat allow the growth of this over their window.
pub fn irq_steal_us() -> u64 {
    (proc_stat_ticks(STAT_IRQ) + proc_stat_ticks(STAT_STEAL)) * 1_000_000 / clock_ticks_per_sec()
}

/// Whether a CPU time of ours (wall clock from switch-in to switch-out) agrees with the
/// scheduler's run time: at least `schedstat` (read inside our window) less `pct` % and
/// `slack`, at most `outer` (schedstat read around the window; `schedstat` again when there
/// is no edge to cover) plus `unseen` (the growth of `irq_steal_us`, which schedstat leaves
/// out), plus `pct` % of that and `slack`. All in one unit.
pub fn agrees_with_schedstat(
    ours: u64,
    schedstat: u64,
    outer: u64,
    unseen: u64,
    pct: f64,
    slack: u64,
) -> bool {
    let margin = |t: u64| t as f64 * pct / 100.0 + slack as f64;
    let ours = ours as f64;
    ours >= schedstat as f64 - margin(schedstat)
        && ours <= (outer + unseen) as f64 + margin(outer + unseen)
}

/// The histograms in funclatency's and argdist's `--json` output: each interval is one
/// "histograms" record holding a list of them.
pub fn histograms(records: &[serde_json::Value]) -> Vec<serde_json::Value> {
    records
        .iter()
        .filter(|r| r["type"] == "histograms")
        .flat_map(|r| r["histograms"].as_array().cloned().unwrap_or_default())
        .collect()
}

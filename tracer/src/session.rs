//! How a tool run ends: Ctrl-C, SIGTERM, a duration (`-d`), `[interval] [count]` running out,
//! nobody reading the output any more (`tracer forksnoop | head`), or every `-p`/`-t` target
//! gone (as `perf record -p`: the final report, a line saying so, exit status 0).
//! Dropping the `aya::Ebpf` afterwards detaches and unloads everything (nothing is pinned).

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Result;
use clap::Args;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// `-d SECS`: stop by itself.
#[derive(Args, Clone, Debug, Default)]
pub struct DurationArgs {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(short = 'd', long = "duration", value_name = "SECS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,
}

/// BCC's positional `[interval] [count]`.
#[derive(Args, Clone, Debug, Default)]
pub struct IntervalArgs {
    /// Print every INTERVAL seconds (fractions allowed, e.g. 0.5).
    #[arg(value_name = "INTERVAL", value_parser = parse_seconds)]
    pub interval: Option<Duration>,
    /// Stop after COUNT intervals.
    #[arg(value_name = "COUNT", value_parser = parse_count)]
    pub count: Option<u64>,
}

/// Parses a positive number of seconds (at most a day), with a one-line error otherwise.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds (try 1 or 0.5)"))?;
    if !(0.01..=86_400.0).contains(&secs) {
        return Err(format!(
            "'{text}' is out of range: use 0.01 to 86400 seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration with its unit (`200us`, `1.5ms`, `2s`; ns, us or µs, ms, s) in nanoseconds.
pub fn parse_ns(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return None,
    };
    let ns = number * scale;
    (ns.is_finite() && ns >= 0.0 && ns < u64::MAX as f64).then_some(ns.round() as u64)
}

fn parse_count(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) | Err(_) => Err(format!("'{text}' is not a positive count")),
        Ok(n) => Ok(n),
    }
}

/// Why the run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Interrupted,
    Terminated,
    DurationElapsed,
    /// stdout's reader went away (see `output::stdout_gone`).
    OutputClosed,
    /// Every process or thread named by `-p`/`-t` exited (see `check_pid`).
    TargetsExited,
}

/// The `-p`/`-t` targets of this run (`check_pid`, `check_tid`): when all of them are gone,
/// the run ends.
static TARGETS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Whether a process or thread is gone: no /proc entry, or a zombie (exited, not yet reaped by
/// its parent — a test harness or a shell may reap late).
fn task_gone(id: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{id}/stat")) {
        Err(_) => true,
        // "pid (comm) S ...": the state follows the last ')', comm may hold anything.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// How often a waiting tool looks whether its stdout's reader went away.
const OUTPUT_CHECK_PERIOD: Duration = Duration::from_millis(200);

/// SIGINT, SIGTERM and SIGHUP listeners, registered once when the runtime starts (see
/// `install_signal_handlers`): a Ctrl-C that arrives between "Hit Ctrl-C to end." and the
/// first poll of `stop_requested` is then still seen, instead of killing the process.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

static SIGNALS: Mutex<Option<Signals>> = Mutex::new(None);

/// Set when the tool first waits in `stop_requested`: from then on a stop signal ends the run
/// through the tool's own loop (final output, detach).
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Registers the stop signals; call inside the tokio runtime, before loading anything.
pub fn install_signal_handlers() -> Result<()> {
    let signals = Signals {
        int: signal(SignalKind::interrupt())?,
        term: signal(SignalKind::terminate())?,
        hup: signal(SignalKind::hangup())?,
    };
    *SIGNALS.lock().unwrap_or_else(|e| e.into_inner()) = Some(signals);
    watch_setup_signals()
}

/// With the handlers above installed, a stop signal that arrives while the tool is still
/// setting up (symbol lookup in a big binary, loading, a slow read) would wait, unseen, until
/// the tool first polls `stop_requested` — forever if setup hangs. A helper thread with its
/// own small runtime hears the same signals (tokio broadcasts each to every listener) and,
/// if the tool does not reach `stop_requested` within `SETUP_GRACE`, exits with 128 + the
/// signal number, as the default action would; the kernel frees whatever was loaded so far
/// (nothing is pinned).
fn watch_setup_signals() -> Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("setup-signals".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                let _ = ready_tx.send(());
                return;
            };
            runtime.block_on(async move {
                let listen = |kind: SignalKind| signal(kind).ok();
                let (Some(mut int), Some(mut term), Some(mut hup)) = (
                    listen(SignalKind::interrupt()),
                    listen(SignalKind::terminate()),
                    listen(SignalKind::hangup()),
                ) else {
                    let _ = ready_tx.send(());
                    return;
                };
                let _ = ready_tx.send(());
                let number = tokio::select! {
                    _ = int.recv() => libc::SIGINT,
                    _ = term.recv() => libc::SIGTERM,
                    _ = hup.recv() => libc::SIGHUP,
                };
                // A tool that has just attached may still be busy for a moment before its
                // first wait (printing, symbol prefetch): give it that moment, so a signal
                // right after "Hit Ctrl-C to end." still ends the run cleanly.
                let grace = std::time::Instant::now() + SETUP_GRACE;
                while !RUNNING.load(Ordering::SeqCst) {
                    if std::time::Instant::now() >= grace {
                        std::process::exit(128 + number);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        })?;
    // Listening before setup starts, so no early signal slips through.
    let _ = ready_rx.recv_timeout(Duration::from_secs(5));
    Ok(())
}

/// Puts the listeners back when a wait ends or is cancelled (e.g. lost a `select!`).
struct Borrowed(Option<Signals>);

impl Drop for Borrowed {
    fn drop(&mut self) {
        if let Some(signals) = self.0.take() {
            *SIGNALS.lock().unwrap_or_else(|e| e.into_inner()) = Some(signals);
        }
    }
}

/// How long a stop signal that came during setup waits for the tool to reach its first
/// `stop_requested` before the process exits without it.
const SETUP_GRACE: Duration = Duration::from_secs(5);

/// Resolves when the run should stop. From the first call on (not the first poll), stop
/// signals are the tool's to handle.
pub fn stop_requested(
    duration: Option<Duration>,
) -> impl std::future::Future<Output = Result<StopReason>> {
    RUNNING.store(true, Ordering::SeqCst);
    wait_for_stop(duration)
}

async fn wait_for_stop(duration: Option<Duration>) -> Result<StopReason> {
    let taken = SIGNALS.lock().unwrap_or_else(|e| e.into_inner()).take();
    let mut signals = Borrowed(Some(match taken {
        Some(s) => s,
        None => Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        },
    }));
    let s = signals.0.as_mut().expect("signals present");
    let sleep = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let output_gone = async {
        while !crate::output::stdout_gone() {
            tokio::time::sleep(OUTPUT_CHECK_PERIOD).await;
        }
    };
    let targets = TARGETS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let targets_gone = async {
        if targets.is_empty() {
            std::future::pending::<()>().await;
        }
        while !targets.iter().all(|&t| task_gone(t)) {
            tokio::time::sleep(OUTPUT_CHECK_PERIOD).await;
        }
        let which: Vec<String> = targets.iter().map(u32::to_string).collect();
        errln!(
            "{}: {} {} exited; ending the run",
            crate::output::tool_name(),
            if targets.len() == 1 {
                "target"
            } else {
                "targets"
            },
            which.join(", ")
        );
    };
    Ok(tokio::select! {
        _ = s.int.recv() => StopReason::Interrupted,
        _ = s.term.recv() => StopReason::Terminated,
        _ = s.hup.recv() => StopReason::Terminated,
        _ = sleep => StopReason::DurationElapsed,
        _ = output_gone => StopReason::OutputClosed,
        _ = targets_gone => StopReason::TargetsExited,
    })
}

/// Validates that a pid names a live process, and makes it a target of the run: when every
/// target has exited, `stop_requested` ends the run.
pub fn check_pid(pid: u32) -> Result<()> {
    if pid == 0 || task_gone(pid) {
        usage_bail!("no process with PID {pid} (check the PID with 'ps -p {pid}')");
    }
    watch(pid);
    Ok(())
}

/// `check_pid` for a thread (`-t TID`).
pub fn check_tid(tid: u32) -> Result<()> {
    if tid == 0 || task_gone(tid) {
        usage_bail!("no thread with TID {tid} (list threads with 'ps -eLf')");
    }
    watch(tid);
    Ok(())
}

/// The `-p`/`-t` targets of this run (`check_pid`, `check_tid`).
pub fn targets() -> Vec<u32> {
    TARGETS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn watch(id: u32) {
    let mut targets = TARGETS.lock().unwrap_or_else(|e| e.into_inner());
    if !targets.contains(&id) {
        targets.push(id);
    }
}

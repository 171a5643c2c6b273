//! How a tool run ends: Ctrl-C, SIGTERM, a duration (`-d`), or `[interval] [count]` running out.
//! Dropping the `aya::Ebpf` afterwards detaches and unloads everything (nothing is pinned).

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

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
    if !secs.is_finite() || secs < 0.01 || secs > 86_400.0 {
        return Err(format!("'{text}' is out of range: use 0.01 to 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
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
}

/// Resolves when the run should stop.
pub async fn stop_requested(duration: Option<Duration>) -> Result<StopReason> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let sleep = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    Ok(tokio::select! {
        _ = int.recv() => StopReason::Interrupted,
        _ = term.recv() => StopReason::Terminated,
        _ = hup.recv() => StopReason::Terminated,
        _ = sleep => StopReason::DurationElapsed,
    })
}

/// Validates that a pid names a live process.
pub fn check_pid(pid: u32) -> Result<()> {
    if pid == 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        bail!("no process with PID {pid} (check the PID with 'ps -p {pid}')");
    }
    Ok(())
}

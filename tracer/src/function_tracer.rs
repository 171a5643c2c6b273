//! The kernel's function tracer in a tracefs instance of our own, for kernels where BPF cannot
//! hook kernel functions in bulk (no kprobe_multi). An instance (`instances/tracer-<pid>`)
//! leaves the global tracer, and anyone else's instance, alone; it is removed when the run
//! ends. Set up as ftrace's classic walkthrough does — `set_ftrace_filter` with the globs,
//! `set_ftrace_pid` with the `function-fork` option — with the mono clock (the BPF rung's
//! stamps) and `record-tgid`; `trace_pipe` is read without blocking and each line turned back
//! into a call.

use std::{fs::File, os::unix::fs::OpenOptionsExt as _, path::PathBuf};

use anyhow::{Context as _, Result, anyhow};

/// One call, as parsed from a `function` tracer line.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub function: String,
    pub caller: String,
    pub tid: u32,
    /// From `record-tgid`, where the line carries it.
    pub tgid: Option<u32>,
    pub comm: String,
    pub cpu: u32,
    /// CLOCK_MONOTONIC, ns.
    pub ts_ns: u64,
}

/// What to trace.
pub struct Setup<'a> {
    /// Globs for set_ftrace_filter (the kernel matches them).
    pub patterns: &'a [String],
    /// Threads to trace (with `function-fork`, their children too); empty: every task.
    pub tids: Vec<u32>,
}

/// The instance, set up; dropping it turns the tracer off and removes the instance.
pub struct FunctionTracer {
    dir: PathBuf,
    pipe: Option<File>,
    partial: String,
    /// "[LOST N EVENTS]": the per-CPU buffer overran.
    pub lost: u64,
    /// Functions set_ftrace_filter ended up with.
    pub functions: usize,
}

/// Whether a tracefs instance of this kernel can run the function tracer. Tries it: a kernel
/// may list `function` and still refuse it (EPERM where ftrace's text patching is locked).
pub fn available() -> Result<(), String> {
    let root = crate::tracefs::root().map_err(|e| format!("{e:#}"))?;
    let tracers = std::fs::read_to_string(root.join("available_tracers"))
        .map_err(|e| format!("cannot read available_tracers: {e}"))?;
    if !tracers.split_whitespace().any(|t| t == "function") {
        return Err("no function in available_tracers (CONFIG_FUNCTION_TRACER)".into());
    }
    std::fs::read_to_string(root.join("set_ftrace_filter")).map_err(|e| {
        format!("the function tracer is listed but its set_ftrace_filter refuses root ({e})")
    })?;
    Ok(())
}

impl FunctionTracer {
    pub fn start(setup: &Setup<'_>) -> Result<Self> {
        let root = crate::tracefs::root()?;
        let dir = root
            .join("instances")
            .join(format!("tracer-functrace-{}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| {
            format!(
                "cannot create the tracefs instance {} (tracefs instances: Linux 3.10+)",
                dir.display()
            )
        })?;
        let mut this = Self {
            dir,
            pipe: None,
            partial: String::new(),
            lost: 0,
            functions: 0,
        };
        this.set("tracing_on", "0")?;
        if !std::fs::read_to_string(this.dir.join("available_tracers"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|t| t == "function")
        {
            return Err(anyhow!(
                "this kernel's tracefs instances cannot run the function tracer (Linux 4.x+)"
            ));
        }
        for pattern in setup.patterns {
            // One write each, appended: a pattern that matches nothing fails alone (EINVAL).
            let file = this.dir.join("set_ftrace_filter");
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            std::io::Write::write_all(&mut f, pattern.as_bytes())
                .map_err(|_| anyhow!("no traceable kernel function matches '{pattern}'"))?;
        }
        this.functions = std::fs::read_to_string(this.dir.join("set_ftrace_filter"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .count();
        this.set("trace_clock", "mono")?;
        let tids: Vec<String> = setup.tids.iter().map(u32::to_string).collect();
        if !tids.is_empty() {
            this.set("set_ftrace_pid", &tids.join(" "))?;
            this.set("options/function-fork", "1").map_err(|_| {
                anyhow!("-p on the function rung needs the function-fork option (Linux 4.14+)")
            })?;
        }
        // The tgid column is optional: older kernels' instances lack the option.
        let _ = this.set("options/record-tgid", "1");
        this.set("current_tracer", "function")?;
        std::fs::write(this.dir.join("trace"), "").ok();
        this.pipe = Some(
            File::options()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(this.dir.join("trace_pipe"))
                .context("cannot open trace_pipe")?,
        );
        this.set("tracing_on", "1")?;
        Ok(this)
    }

    fn set(&self, file: &str, value: &str) -> Result<()> {
        std::fs::write(self.dir.join(file), value)
            .with_context(|| format!("cannot write '{value}' to the instance's {file}"))
    }

    /// The calls traced since the last read, in order per CPU.
    pub fn read(&mut self) -> Result<Vec<Call>> {
        let Some(pipe) = self.pipe.as_mut() else {
            return Ok(Vec::new());
        };
        let complete = crate::tracefs::drain_pipe(pipe, &mut self.partial)?;
        let mut calls = Vec::new();
        for line in complete.lines() {
            if line.contains("[LOST") {
                self.lost += line
                    .split_whitespace()
                    .find_map(|w| w.parse::<u64>().ok())
                    .unwrap_or(1);
            } else if let Some(call) = parse_line(line) {
                calls.push(call);
            }
        }
        Ok(calls)
    }

    /// Stops tracing and returns what is still buffered: read until three reads 50 ms apart
    /// found nothing (other CPUs' buffers reach the pipe page by page).
    pub fn finish(&mut self) -> Result<Vec<Call>> {
        let _ = self.set("tracing_on", "0");
        let mut calls = Vec::new();
        let mut quiet = 0;
        while quiet < 3 {
            let more = self.read()?;
            quiet = if more.is_empty() { quiet + 1 } else { 0 };
            calls.extend(more);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(calls)
    }
}

impl Drop for FunctionTracer {
    fn drop(&mut self) {
        let _ = self.set("tracing_on", "0");
        // A reader holds the instance: close it before removing.
        self.pipe = None;
        let _ = self.set("current_tracer", "nop");
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `comm-tid (tgid) [cpu] flags ts: function <-caller`; the tgid column and the flags are
/// optional (record-tgid, irq-info); comm may hold spaces and dashes.
fn parse_line(line: &str) -> Option<Call> {
    if line.starts_with('#') {
        return None;
    }
    let (head, tail) = line.split_once("] ")?;
    let (task, cpu) = head.rsplit_once('[')?;
    let cpu: u32 = cpu.trim().parse().ok()?;
    let (task, tgid) = match task.rsplit_once('(') {
        Some((task, tgid)) => (task, tgid.trim().trim_end_matches(')').trim().parse().ok()),
        None => (task, None),
    };
    let (comm, tid) = task.trim().rsplit_once('-')?;
    let tid: u32 = tid.parse().ok()?;
    let mut words = tail.split_whitespace();
    let ts = words.by_ref().find(|w| w.ends_with(':'))?;
    let ts_ns = parse_stamp(ts.trim_end_matches(':'))?;
    let function = words.next()?.to_string();
    let caller = words
        .next()
        .and_then(|w| w.strip_prefix("<-"))
        .unwrap_or("")
        .to_string();
    Some(Call {
        function,
        caller,
        tid,
        tgid,
        comm: comm.to_string(),
        cpu,
        ts_ns,
    })
}

/// `123.456789` (seconds, microseconds) → ns.
fn parse_stamp(text: &str) -> Option<u64> {
    let (secs, frac) = text.split_once('.')?;
    let secs: u64 = secs.parse().ok()?;
    let digits = frac.len().min(9);
    let frac: u64 = frac.get(..digits)?.parse().ok()?;
    Some(secs * 1_000_000_000 + frac * 10u64.pow(9 - digits as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_function_lines() {
        let call = parse_line(
            " tracer-workload-4242    (   4240) [001] ..... 1234.567890: do_nanosleep \
             <-hrtimer_nanosleep",
        )
        .unwrap();
        assert_eq!(call.function, "do_nanosleep");
        assert_eq!(call.caller, "hrtimer_nanosleep");
        assert_eq!((call.tid, call.tgid, call.cpu), (4242, Some(4240), 1));
        assert_eq!(call.comm, "tracer-workload");
        assert_eq!(call.ts_ns, 1_234_567_890_000);
        let old =
            parse_line("   my-prog x-17  [000] d..1   5.000001: vfs_read <-ksys_read").unwrap();
        assert_eq!(
            (old.comm.as_str(), old.tid, old.tgid, old.cpu),
            ("my-prog x", 17, None, 0)
        );
        assert_eq!(old.ts_ns, 5_000_001_000);
        assert!(parse_line("# tracer: function").is_none());
    }
}

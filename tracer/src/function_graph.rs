//! The kernel's own function_graph tracer through tracefs, for kernels where BPF cannot hook
//! kernel functions in bulk (no kprobe_multi: Debian 12's 6.1 has no CONFIG_FPROBE; 5.10 has
//! no multi links at all). tracer sets it up as perf-tools' funcgraph does —
//! `set_graph_function`, `max_graph_depth`, `set_ftrace_pid` with the `function-fork` option,
//! the mono trace clock so times compare with BPF's — reads `trace_pipe` without blocking, and
//! turns its lines back into calls: one per call that returned, callees first, as the BPF
//! programs send them. Every setting is restored when the run ends.

use std::{collections::HashMap, fs::File, os::unix::fs::OpenOptionsExt as _, path::PathBuf};

use anyhow::{Context as _, Result, anyhow};

/// One call that returned, as parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub function: String,
    pub tid: u32,
    pub comm: String,
    pub cpu: u16,
    /// CLOCK_MONOTONIC, ns.
    pub start_ns: u64,
    pub duration_ns: u64,
    /// 0 = the root.
    pub depth: u16,
    pub retval: Option<u64>,
}

/// What to trace.
pub struct Setup<'a> {
    pub root: &'a str,
    pub max_depth: u32,
    /// Threads to trace (with `function-fork`, their children too); empty: every task.
    pub tids: Vec<u32>,
    pub irqs: bool,
    pub retval: bool,
}

/// The tracer, set up; dropping it restores every file it changed.
pub struct FunctionGraph {
    root: PathBuf,
    saved: Vec<(String, String)>,
    /// Opened once the tracer is set: a reader holds the tracer (switching it is EBUSY).
    pipe: Option<File>,
    partial: String,
    threads: HashMap<u32, Thread>,
    /// Whether a leaf line's time is its return's (6.1) rather than its entry's (6.12):
    /// learned from the first tree where it matters.
    leaf_time_is_return: Option<bool>,
    /// "[LOST N EVENTS]" lines: the per-CPU buffer overran.
    pub lost: u64,
    /// Closing lines without their opening one, and openings never closed.
    pub unmatched: u64,
    /// Bytes the last read got.
    last_read: usize,
    /// Levels kept (max_graph_depth): deeper lines are dropped.
    max_depth: u32,
}

struct Open {
    function: String,
    start_ns: u64,
}

/// A thread inside a root: its open calls, and the calls that returned, held until the root
/// returns (a leaf's start is known only once the tree says which time its line shows).
#[derive(Default)]
struct Thread {
    open: Vec<Open>,
    done: Vec<(Call, bool)>,
}

/// Whether this kernel has the function_graph tracer (and lets us use it).
pub fn available() -> Result<(), String> {
    let root = crate::tracefs::root().map_err(|e| format!("{e:#}"))?;
    let tracers = std::fs::read_to_string(root.join("available_tracers"))
        .map_err(|e| format!("cannot read available_tracers: {e}"))?;
    if !tracers.split_whitespace().any(|t| t == "function_graph") {
        return Err("no function_graph in available_tracers (CONFIG_FUNCTION_GRAPH_TRACER)".into());
    }
    Ok(())
}

impl FunctionGraph {
    pub fn start(setup: &Setup<'_>) -> Result<Self> {
        let root = crate::tracefs::root()?;
        let current = read(&root, "current_tracer")?;
        if current != "nop" {
            return Err(anyhow!(
                "tracefs's current_tracer is '{current}': the function_graph rung needs it idle \
                 (echo nop > {}/current_tracer)",
                root.display()
            ));
        }
        let mut this = Self {
            pipe: None,
            root,
            saved: Vec::new(),
            partial: String::new(),
            threads: HashMap::new(),
            leaf_time_is_return: None,
            unmatched: 0,
            last_read: 0,
            max_depth: setup.max_depth,
            lost: 0,
        };
        this.set("tracing_on", "0")?;
        this.set("set_graph_function", setup.root)
            .with_context(|| format!("tracefs refused set_graph_function {}", setup.root))?;
        this.set("max_graph_depth", &setup.max_depth.to_string())?;
        this.set("trace_clock", "mono")?;
        let tids: Vec<String> = setup.tids.iter().map(u32::to_string).collect();
        this.set("set_ftrace_pid", &tids.join(" "))?;
        this.set(
            "options/function-fork",
            if tids.is_empty() { "0" } else { "1" },
        )?;
        this.set("options/funcgraph-irqs", if setup.irqs { "1" } else { "0" })?;
        for (option, value) in [
            ("funcgraph-proc", "1"),
            ("funcgraph-abstime", "1"),
            ("funcgraph-cpu", "1"),
            ("funcgraph-duration", "1"),
            ("funcgraph-overhead", "1"),
            ("funcgraph-tail", "1"),
        ] {
            this.set(&format!("options/{option}"), value)?;
        }
        if setup.retval {
            this.set("options/funcgraph-retval", "1").map_err(|_| {
                anyhow!("--retval on the function_graph rung needs funcgraph-retval (Linux 6.5+)")
            })?;
        }
        this.set("current_tracer", "function_graph")?;
        // Drop what the switch left in the buffer, then go.
        std::fs::write(this.root.join("trace"), "").ok();
        this.pipe = Some(
            File::options()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(this.root.join("trace_pipe"))
                .context("cannot open trace_pipe")?,
        );
        this.set("tracing_on", "1")?;
        Ok(this)
    }

    /// Writes `value` to tracefs file `file`, remembering the old value to restore.
    fn set(&mut self, file: &str, value: &str) -> Result<()> {
        if !self.saved.iter().any(|(f, _)| f == file) {
            let old = read(&self.root, file)?;
            self.saved.push((file.to_string(), old));
        }
        std::fs::write(self.root.join(file), value)
            .with_context(|| format!("cannot write '{value}' to {file}"))
    }

    /// The calls that returned since the last call, in order.
    pub fn read(&mut self) -> Result<Vec<Call>> {
        let Some(pipe) = self.pipe.as_mut() else {
            return Ok(Vec::new());
        };
        let complete = crate::tracefs::drain_pipe(pipe, &mut self.partial)?;
        self.last_read = complete.len();
        let mut calls = Vec::new();
        for line in complete.lines() {
            self.line(line, &mut calls);
        }
        Ok(calls)
    }

    fn line(&mut self, line: &str, calls: &mut Vec<Call>) {
        if line.contains("[LOST") {
            self.lost += line
                .split_whitespace()
                .find_map(|w| w.parse::<u64>().ok())
                .unwrap_or(1);
            return;
        }
        let Some(event) = parse_line(line) else {
            return;
        };
        let thread = self.threads.entry(event.tid).or_default();
        let depth = thread.open.len() as u16;
        match event.kind {
            Kind::Open(function) => thread.open.push(Open {
                function,
                start_ns: event.ts_ns,
            }),
            Kind::Leaf(function, duration_ns, retval) => {
                let call = Call {
                    function,
                    tid: event.tid,
                    comm: event.comm,
                    cpu: event.cpu,
                    start_ns: event.ts_ns,
                    duration_ns,
                    depth,
                    retval,
                };
                if depth > 0 {
                    thread.done.push((call, true));
                    return;
                }
                // A root without callees: a tree of its own.
                let mut call = call;
                if self.leaf_time_is_return == Some(true) {
                    call.start_ns = call.start_ns.saturating_sub(call.duration_ns);
                }
                calls.push(call);
                if thread.open.is_empty() && thread.done.is_empty() {
                    self.threads.remove(&event.tid);
                }
            }
            Kind::Close(name, duration_ns, retval) => {
                // Closes match their open by name: one without its open (the thread was
                // inside the root when we started, or an interrupt's return that
                // funcgraph-irqs left unopened) is dropped; opens above it lost their close.
                let Some(at) = thread
                    .open
                    .iter()
                    .rposition(|o| name.is_empty() || o.function == name)
                else {
                    self.unmatched += 1;
                    return;
                };
                self.unmatched += (thread.open.len() - 1 - at) as u64;
                thread.open.truncate(at + 1);
                let depth = at as u16 + 1;
                let Some(open) = thread.open.pop() else {
                    return;
                };
                thread.done.push((
                    Call {
                        function: open.function,
                        tid: event.tid,
                        comm: event.comm,
                        cpu: event.cpu,
                        start_ns: open.start_ns,
                        duration_ns,
                        depth: depth - 1,
                        retval,
                    },
                    false,
                ));
                if thread.open.is_empty() {
                    let Some(thread) = self.threads.remove(&event.tid) else {
                        return;
                    };
                    let mut done = thread.done;
                    if self.leaf_time_is_return.is_none() {
                        self.leaf_time_is_return = leaf_time_is_return(&done);
                    }
                    for (call, leaf) in &mut done {
                        if *leaf && self.leaf_time_is_return == Some(true) {
                            call.start_ns = call.start_ns.saturating_sub(call.duration_ns);
                        }
                    }
                    keep_inside_callers(&mut done);
                    // 5.10 shows interrupts' edges (irq_enter_rcu) past max_graph_depth.
                    let max = self.max_depth;
                    calls.extend(
                        done.into_iter()
                            .map(|(c, _)| c)
                            .filter(|c| u32::from(c.depth) < max),
                    );
                }
            }
        }
    }

    /// Stops tracing and reads what is left: trace_pipe can still hold lines it has not shown
    /// (it waits to see whether an entry's return follows), so it is read until it stays
    /// empty for a while.
    pub fn finish(&mut self) -> Result<Vec<Call>> {
        let _ = std::fs::write(self.root.join("tracing_on"), "0");
        let mut calls = Vec::new();
        let mut quiet = 0;
        while quiet < 3 {
            let more = self.read()?;
            quiet = if self.last_read == 0 { quiet + 1 } else { 0 };
            calls.extend(more);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(calls)
    }

    /// Threads still inside the root.
    pub fn unfinished(&self) -> usize {
        self.threads.len()
    }
}

impl Drop for FunctionGraph {
    fn drop(&mut self) {
        self.pipe = None;
        let _ = std::fs::write(self.root.join("tracing_on"), "0");
        let _ = std::fs::write(self.root.join("current_tracer"), "nop");
        for (file, value) in self.saved.iter().rev() {
            // Files listing several entries are emptied by writing nothing.
            let value = if file == "set_graph_function" || file == "set_ftrace_pid" {
                if value.starts_with("#") || value.starts_with("no pid") {
                    ""
                } else {
                    value.as_str()
                }
            } else {
                value.as_str()
            };
            let _ = std::fs::write(self.root.join(file), value);
        }
        let _ = std::fs::write(self.root.join("tracing_on"), "1");
    }
}

/// Which reading of leaf times nests this tree's leaves inside their callers (None: both or
/// neither). Calls are in return order: a call's caller is the next one a level up.
fn leaf_time_is_return(done: &[(Call, bool)]) -> Option<bool> {
    let (mut as_entry, mut as_return) = (0, 0);
    for (i, (call, leaf)) in done.iter().enumerate() {
        if !*leaf || call.depth == 0 {
            continue;
        }
        let Some((parent, _)) = done[i + 1..]
            .iter()
            .find(|(c, _)| c.depth + 1 == call.depth)
        else {
            continue;
        };
        let inside = |start: u64| {
            start >= parent.start_ns
                && start + call.duration_ns <= parent.start_ns + parent.duration_ns
        };
        as_entry += usize::from(!inside(call.start_ns));
        as_return += usize::from(!inside(call.start_ns.saturating_sub(call.duration_ns)));
    }
    match as_entry.cmp(&as_return) {
        std::cmp::Ordering::Less => Some(false),
        std::cmp::Ordering::Greater => Some(true),
        std::cmp::Ordering::Equal => None,
    }
}

/// Moves each call's start inside its caller's time and after its earlier siblings, callers
/// first. A line's time is stamped when its event is written, in whole microseconds, while
/// durations are the calls' own: a callee can seem to stick out of its caller, or overlap its
/// sibling, by that lag (tens of µs under emulation).
fn keep_inside_callers(done: &mut [(Call, bool)]) {
    let n = done.len();
    // Backwards, calls come callers first: the last one seen a level up is the caller.
    let mut parent = vec![usize::MAX; n];
    let mut last_at_depth: Vec<usize> = Vec::new();
    for i in (0..n).rev() {
        let depth = done[i].0.depth as usize;
        last_at_depth.resize(depth, usize::MAX);
        if let Some(&p) = depth.checked_sub(1).and_then(|d| last_at_depth.get(d)) {
            parent[i] = p;
        }
        last_at_depth.push(i);
    }
    let mut children = vec![Vec::new(); n];
    for (i, &p) in parent.iter().enumerate() {
        if p != usize::MAX {
            children[p].push(i);
        }
    }
    // Callers before callees; each caller's callees in the order they ran.
    let mut stack: Vec<usize> = (0..n).filter(|&i| parent[i] == usize::MAX).collect();
    while let Some(p) = stack.pop() {
        let start = done[p].0.start_ns;
        let end = start + done[p].0.duration_ns;
        let mut cursor = start;
        for &c in &children[p] {
            let call = &mut done[c].0;
            let latest = end.saturating_sub(call.duration_ns).max(cursor);
            call.start_ns = call.start_ns.clamp(cursor, latest);
            cursor = (call.start_ns + call.duration_ns).min(end);
            stack.push(c);
        }
    }
}

/// A tracefs file's value: the first line, or for `trace_clock` the one in brackets.
fn read(root: &std::path::Path, file: &str) -> Result<String> {
    let text = std::fs::read_to_string(root.join(file))
        .with_context(|| format!("cannot read tracefs {file}"))?;
    if file == "trace_clock" {
        return Ok(text
            .split_whitespace()
            .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
            .unwrap_or("local")
            .to_string());
    }
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}

#[derive(Debug, PartialEq)]
enum Kind {
    Open(String),
    Leaf(String, u64, Option<u64>),
    /// The function's name (funcgraph-tail), duration, return value.
    Close(String, u64, Option<u64>),
}

#[derive(Debug, PartialEq)]
struct Event {
    ts_ns: u64,
    cpu: u16,
    comm: String,
    tid: u32,
    kind: Kind,
}

/// One function_graph line with abstime, cpu, proc and duration columns:
/// ` 6152.421779 |   0)  bash-1234   | + 12.345 us   |    }  /* copy_process */`.
fn parse_line(line: &str) -> Option<Event> {
    let mut fields = line.splitn(4, '|');
    let ts = fields.next()?.trim();
    let task = fields.next()?;
    let duration = fields.next()?;
    let text = fields.next()?.trim();
    let ts_ns = parse_seconds_ns(ts)?;
    let (cpu, proc_) = task.split_once(')')?;
    let cpu = cpu.trim().parse().ok()?;
    let (comm, tid) = proc_.trim().rsplit_once('-')?;
    let tid = tid.parse().ok()?;
    let retval = text
        .split_once("/* = ")
        .or_else(|| text.split_once(" = "))
        .and_then(|(_, r)| {
            let r = r.trim_end_matches("*/").trim();
            let r = r.split_whitespace().next()?;
            match r.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => r.parse::<i64>().ok().map(|v| v as u64),
            }
        });
    let kind = if let Some(rest) = text.strip_prefix('}') {
        // funcgraph-tail: "} /* name */" or, with funcgraph-retval, "} /* name = 0x0 */".
        let name = rest
            .trim()
            .trim_start_matches("/*")
            .trim_end_matches("*/")
            .split(" = ")
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        Kind::Close(name, parse_duration_ns(duration)?, retval)
    } else if let Some(name) = text.strip_suffix("() {") {
        Kind::Open(name.trim().to_string())
    } else if let Some((name, _)) = text.split_once("();") {
        Kind::Leaf(
            name.trim().to_string(),
            parse_duration_ns(duration)?,
            retval,
        )
    } else {
        return None;
    };
    Some(Event {
        ts_ns,
        cpu,
        comm: comm.to_string(),
        tid,
        kind,
    })
}

/// `6152.421779` (seconds) in ns.
fn parse_seconds_ns(text: &str) -> Option<u64> {
    let (secs, frac) = text.split_once('.')?;
    let secs: u64 = secs.parse().ok()?;
    let digits = frac.len().min(9);
    let frac: u64 = frac[..digits].parse().ok()?;
    Some(secs * 1_000_000_000 + frac * 10u64.pow(9 - digits as u32))
}

/// `+ 12.345 us` in ns (markers and spaces ignored).
fn parse_duration_ns(text: &str) -> Option<u64> {
    let number = text
        .trim()
        .trim_start_matches(['+', '!', '#', '*', '@', '$'])
        .trim()
        .strip_suffix("us")?
        .trim();
    let us: f64 = number.parse().ok()?;
    Some((us * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_as_open_leaf_close() {
        let open =
            parse_line(" 6152.421779 |   0)  bash-1234    |               |  kernel_clone() {")
                .unwrap();
        assert_eq!(open.ts_ns, 6_152_421_779_000);
        assert_eq!((open.cpu, open.tid, open.comm.as_str()), (0, 1234, "bash"));
        assert_eq!(open.kind, Kind::Open("kernel_clone".into()));
        let leaf = parse_line(" 6152.421790 |   1)  my-cmd-77    |   0.123 us    |    pid_vnr();")
            .unwrap();
        assert_eq!((leaf.tid, leaf.comm.as_str()), (77, "my-cmd"));
        assert_eq!(leaf.kind, Kind::Leaf("pid_vnr".into(), 123, None));
        let close =
            parse_line(" 6152.431790 |   1)  bash-1234    | # 1234.567 us |  } /* kernel_clone */")
                .unwrap();
        assert_eq!(
            close.kind,
            Kind::Close("kernel_clone".into(), 1_234_567, None)
        );
        let ret = parse_line(" 1.000001 |   1)  a-1  |   0.500 us    |    put_pid(); /* = 0x0 */")
            .unwrap();
        assert_eq!(ret.kind, Kind::Leaf("put_pid".into(), 500, Some(0)));
        assert!(parse_line(" ------------------------------------------").is_none());
        assert!(parse_line("   0)   bash-1  =>  cat-2   ").is_none());
    }

    fn call(function: &str, depth: u16, start_ns: u64, duration_ns: u64) -> (Call, bool) {
        let call = Call {
            function: function.into(),
            tid: 1,
            comm: "t".into(),
            cpu: 0,
            start_ns,
            duration_ns,
            depth,
            retval: None,
        };
        (call, depth > 0)
    }

    #[test]
    fn callees_are_kept_inside_their_caller_and_in_order() {
        // root [100, 200]: a [95 +10] starts early, b [108 +50] overlaps a, c [190 +20] ends late.
        let mut done = vec![
            call("a", 1, 95, 10),
            call("b", 1, 108, 50),
            call("c", 1, 190, 20),
            call("root", 0, 100, 100),
        ];
        keep_inside_callers(&mut done);
        let starts: Vec<u64> = done.iter().map(|(c, _)| c.start_ns).collect();
        assert_eq!(starts, [100, 110, 180, 100]);
    }
}

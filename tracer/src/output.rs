//! Output shared by every tool: human text or JSON lines (each object carries a `schema`
//! version), optional wall-clock timestamps, and a stdout that turns a closed pipe
//! (`tracer forksnoop | head`) into a clean stop instead of a panic.
//!
//! Every line tracer prints goes through here: `Out` for a tool's output, `outln!` for a
//! one-off stdout line, `errln!` for stderr. std's `println!`/`eprintln!` panic when the pipe
//! is closed (Rust ignores SIGPIPE, so the write returns EPIPE); these never do. A stdout
//! whose reader went away ends the run as Ctrl-C would (`session::stop_requested` watches
//! `stdout_gone`), with everything detached and exit status 0; a closed stderr is ignored.

use std::{
    fmt,
    io::{self, IsTerminal as _, Write},
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use clap::Args;
use serde_json::Value;

/// Output options every tool takes.
#[derive(Args, Clone, Debug, Default)]
pub struct OutputArgs {
    /// Print one JSON object per line (each with a "schema" field) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Prefix output with the wall-clock time (HH:MM:SS).
    #[arg(short = 'T', long = "timestamp", global = true)]
    pub timestamp: bool,
}

/// `println!` that never panics: a failed write marks stdout closed (see `stdout_gone`).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_stdout_line(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics: a closed stderr is ignored.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::write_stderr_line(format_args!($($arg)*))
    };
}

/// The name stderr lines start with (`funccount`, or `tracer` outside a tool), set once by main.
static TOOL_NAME: OnceLock<&'static str> = OnceLock::new();

pub fn set_tool_name(name: &'static str) {
    let _ = TOOL_NAME.set(name);
}

/// For notes from code shared by several tools, which does not know which one runs.
pub fn tool_name() -> &'static str {
    TOOL_NAME.get().copied().unwrap_or("tracer")
}

/// Set when a write to stdout failed: nobody reads the tool's output any more.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Set when the tool made stdout its output channel (`Out::new`): from then on a reader that
/// goes away ends the run even before the next write. `serve`, whose output is HTTP, does not.
static STDOUT_IS_OUTPUT: AtomicBool = AtomicBool::new(false);

/// Whether the tool should stop because its output cannot be read: a write to stdout failed,
/// or stdout is the tool's output and a pipe whose reader has exited (poll reports POLLERR
/// on the write end of a pipe without readers, so `tracer funccount ... 10 | head -3` stops
/// when head does, not at the next interval).
pub fn stdout_gone() -> bool {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return true;
    }
    if !STDOUT_IS_OUTPUT.load(Ordering::Relaxed) {
        return false;
    }
    let mut stdout = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let ready = unsafe { libc::poll(&mut stdout, 1, 0) };
    ready == 1 && stdout.revents & libc::POLLERR != 0
}

fn mark_stdout_closed(err: &io::Error) {
    // A closed pipe is a normal way to stop; anything else is worth one line.
    if err.kind() != io::ErrorKind::BrokenPipe && !STDOUT_CLOSED.load(Ordering::Relaxed) {
        errln!("tracer: cannot write output: {err}");
    }
    STDOUT_CLOSED.store(true, Ordering::Relaxed);
}

/// What `outln!` expands to: one line on stdout, written at once.
pub fn write_stdout_line(args: fmt::Arguments) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let line = format!("{args}\n");
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout
        .write_all(line.as_bytes())
        .and_then(|()| stdout.flush())
    {
        mark_stdout_closed(&e);
    }
}

/// Raw bytes on stdout (a generated completion script), with `outln!`'s error handling.
pub fn write_stdout_bytes(bytes: &[u8]) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        mark_stdout_closed(&e);
    }
}

/// What `errln!` expands to: one line on stderr in one write (so it does not interleave with
/// stdout mid-line under `2>&1`); errors, a closed pipe included, are dropped.
pub fn write_stderr_line(args: fmt::Arguments) {
    let line = format!("{args}\n");
    let _ = io::stderr().lock().write_all(line.as_bytes());
}

/// Buffered stdout that flushes per line on a terminal and per batch when piped.
pub struct Out {
    inner: io::BufWriter<io::Stdout>,
    tty: bool,
}

impl Out {
    pub fn new() -> Self {
        let stdout = io::stdout();
        let tty = stdout.is_terminal();
        STDOUT_IS_OUTPUT.store(true, Ordering::Relaxed);
        Self {
            inner: io::BufWriter::with_capacity(64 * 1024, stdout),
            tty,
        }
    }

    pub fn is_tty(&self) -> bool {
        self.tty
    }

    /// Whether the reader went away (EPIPE): the tool should stop.
    pub fn closed(&self) -> bool {
        STDOUT_CLOSED.load(Ordering::Relaxed)
    }

    pub fn line(&mut self, text: &str) {
        if self.closed() {
            return;
        }
        let result = writeln!(self.inner, "{text}");
        self.check(result);
        if self.tty {
            self.flush();
        }
    }

    pub fn json(&mut self, value: &Value) {
        self.line(&value.to_string());
    }

    pub fn flush(&mut self) {
        if !self.closed() {
            let result = self.inner.flush();
            self.check(result);
        }
    }

    fn check(&self, result: io::Result<()>) {
        if let Err(e) = result {
            mark_stdout_closed(&e);
        }
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The version of every tool's JSON records: 2 since every end record has the same `attach`,
/// `map_full` and `read_errors` fields and every per-interval record `time` and `interval_ns`
/// (docs/cli.md, "JSON records").
pub const SCHEMA_VERSION: u32 = 2;

/// The JSON schema tag of a tool's records: "tracer.<tool>.v2".
pub fn schema(tool: &str) -> String {
    format!("tracer.{tool}.v{SCHEMA_VERSION}")
}

/// One entry of an end record's `attach` list: what was attached, and how.
pub fn attach_json(target: &str, mechanism: impl fmt::Display) -> Value {
    serde_json::json!({"target": target, "mechanism": mechanism.to_string()})
}

/// The record every tool's `--json` output ends with: `"type": "end"`, `attach` (a list of
/// `{"target", "mechanism"}`), the kernel side's `map_full` and `read_errors` counts, then the
/// tool's own fields (`extra`, an object).
pub fn end_record(
    tool: &str,
    attach: Vec<Value>,
    map_full: u64,
    read_errors: u64,
    extra: Value,
) -> Value {
    let record = serde_json::json!({
        "type": "end",
        "attach": attach,
        "map_full": map_full,
        "read_errors": read_errors,
    });
    with_schema(tool, with_fields(record, extra))
}

/// `base` with the fields of `extra` added (both JSON objects; a non-object `extra` adds none).
pub fn with_fields(mut base: Value, extra: Value) -> Value {
    if let (Value::Object(base), Value::Object(extra)) = (&mut base, extra) {
        base.extend(extra);
    }
    base
}

/// A per-interval record (one per interval, empty ones too) of type `kind` ("interval",
/// "histograms", "counts", ...): `time` (local `HH:MM:SS` at its end) and `interval_ns` (its
/// length), then the tool's own fields (`extra`, an object).
pub fn interval_record(tool: &str, kind: &str, interval_ns: u64, extra: Value) -> Value {
    let record = serde_json::json!({
        "type": kind,
        "time": hms_now(),
        "interval_ns": interval_ns,
    });
    with_schema(tool, with_fields(record, extra))
}

/// Merges `"schema"` into a JSON object.
pub fn with_schema(tool: &str, mut value: Value) -> Value {
    if let Value::Object(map) = &mut value {
        map.insert("schema".into(), Value::String(schema(tool)));
    }
    value
}

/// Converts the kernel's CLOCK_MONOTONIC stamps (bpf_ktime_get_ns) to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    realtime_minus_monotonic_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    pub fn new() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            realtime_minus_monotonic_ns: real - mono,
        }
    }

    /// Nanoseconds since the Unix epoch for a kernel monotonic stamp.
    pub fn unix_ns(&self, monotonic_ns: u64) -> i128 {
        monotonic_ns as i128 + self.realtime_minus_monotonic_ns
    }

    /// Seconds since the Unix epoch, for JSON.
    pub fn unix_secs(&self, monotonic_ns: u64) -> f64 {
        self.unix_ns(monotonic_ns) as f64 / 1e9
    }

    pub fn now_monotonic_ns() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC) as u64
    }
}

/// Local wall-clock time as HH:MM:SS, as BCC's `-T` prints it.
pub fn hms(unix_ns: i128) -> String {
    // `as _`: time_t's width is the libc's (musl's alias is marked deprecated by the libc crate).
    let secs = (unix_ns / 1_000_000_000) as _;
    // SAFETY: localtime_r writes into the provided struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&secs, &mut tm) };
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

pub fn hms_now() -> String {
    hms(clock_ns(libc::CLOCK_REALTIME))
}

impl Out {
    /// Opens an interval's text block with the wall-clock time, when `show` (the tool's rule:
    /// `-T`, and for some tools every periodic interval): one `HH:MM:SS` line, the one
    /// interval-header format every interval tool prints (docs/cli.md).
    pub fn interval_header(&mut self, show: bool) {
        if show {
            self.line(&hms_now());
        }
    }

    /// Opens a top screen's interval (ktop, wqtop, reclaimtop): on a terminal redraw, home and
    /// clear first, like top; with `-T` (`timestamp`) the `HH:MM:SS` line every interval tool
    /// opens with; then `TOOL - HH:MM:SS  title` (top's own first line).
    pub fn screen_title(&mut self, tool: &str, redraw: bool, timestamp: bool, title: &str) {
        let clear = if redraw { "\x1b[H\x1b[2J" } else { "" };
        let now = hms_now();
        if timestamp {
            self.line(&format!("{clear}{now}"));
            self.line(&format!("{tool} - {now}  {title}"));
        } else {
            self.line(&format!("{clear}{tool} - {now}  {title}"));
        }
    }
}

/// A NUL-padded kernel comm as a string.
pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

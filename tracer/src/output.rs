//! Output shared by every tool: human text or JSON lines (each object carries a `schema`
//! version), optional wall-clock timestamps, and a stdout that turns a closed pipe
//! (`tracer forksnoop | head`) into a clean stop instead of a panic.

use std::io::{self, IsTerminal as _, Write};

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

/// Buffered stdout that flushes per line on a terminal and per batch when piped.
pub struct Out {
    inner: io::BufWriter<io::Stdout>,
    tty: bool,
    closed: bool,
}

impl Out {
    pub fn new() -> Self {
        let stdout = io::stdout();
        let tty = stdout.is_terminal();
        Self {
            inner: io::BufWriter::with_capacity(64 * 1024, stdout),
            tty,
            closed: false,
        }
    }

    pub fn is_tty(&self) -> bool {
        self.tty
    }

    /// Whether the reader went away (EPIPE): the tool should stop.
    pub fn closed(&self) -> bool {
        self.closed
    }

    pub fn line(&mut self, text: &str) {
        if self.closed {
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
        if !self.closed {
            let result = self.inner.flush();
            self.check(result);
        }
    }

    fn check(&mut self, result: io::Result<()>) {
        if let Err(e) = result {
            // A closed pipe is a normal way to stop; anything else is worth one line.
            if e.kind() != io::ErrorKind::BrokenPipe {
                eprintln!("tracer: cannot write output: {e}");
            }
            self.closed = true;
        }
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The JSON schema tag of a tool's records: "tracer.<tool>.v1".
pub fn schema(tool: &str) -> String {
    format!("tracer.{tool}.v1")
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
}

/// A NUL-padded kernel comm as a string.
pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

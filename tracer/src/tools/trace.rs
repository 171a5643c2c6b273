//! trace: one line per probe hit, printf-style, with an optional in-kernel filter and a rate
//! limit, through a ring buffer.

use std::time::Duration;

use anyhow::{Result, anyhow};
use aya::maps::{MapData, RingBuf};
use clap::Args;
use serde_json::json;
use tracer_common::probes::{MODE_TRACE, ProbesConfig, STR_NONE, TRACE_VALUES, TraceEvent};

use crate::{
    output::{Clock, Out, comm_str, hms, with_schema},
    pidns::NsPid,
    probe_attach::{self, Expr, ProbeStats, Request},
    probe_spec::{self, Probe},
    session,
    tools::CommonArgs,
};

const TOOL: &str = "trace";

/// Print a line per probe hit: `trace PROBE 'FORMAT' ARGS...`.
#[derive(Args, Clone, Debug)]
#[command(
    after_help = "FORMAT takes %d %i %u %x %X %p %c %s (and %ld, %llu, ...: sizes are ignored) and %%.\n\
ARGS: arg0..arg5, $retval, $pid, $tid, $cpu, tracepoint fields (tplist -v lists them), or the\n\
names of a signature declared after the probe: 'k:func(int fd, char *path)'.\n\
Examples:\n  \
    trace 'u:libc:write' 'fd=%d size=%d' arg0 arg2 -p 1234\n  \
    trace 'ur:libc:malloc' 'ptr=%p' '$retval' --max-rate 100\n  \
    trace t:sched:sched_process_exec 'exec %s' filename\n  \
    trace 'u:libc:openat(int dfd, const char *path)' '%d %s' dfd path\n  \
    trace t:syscalls:sys_enter_openat '%s' filename --filter 'dfd == -100'"
)]
pub struct TraceArgs {
    /// The probe (a glob attaches several; the FUNC column tells them apart), optionally with
    /// a signature naming its arguments: `u:libc:write(int fd, const void *buf, size_t n)`.
    #[arg(value_name = "PROBE")]
    pub probe: String,
    /// printf-style format (default: no message, just the task and probe).
    #[arg(value_name = "FORMAT")]
    pub format: Option<String>,
    /// One value per conversion in FORMAT.
    #[arg(value_name = "ARG")]
    pub args: Vec<String>,
    /// Only hits where EXPR OP NUMBER holds (e.g. 'arg2 > 100'); evaluated in the kernel.
    #[arg(long, value_name = "FILTER")]
    pub filter: Option<String>,
    /// Only this process.
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Only this thread.
    #[arg(short = 't', long = "tid", value_name = "TID")]
    pub tid: Option<u32>,
    /// At most this many events per second (in the kernel; the rest are counted, not sent).
    #[arg(long = "max-rate", value_name = "N")]
    pub max_rate: Option<u32>,
    /// Stop after N events.
    #[arg(long = "max-events", value_name = "N")]
    pub max_events: Option<u64>,
    /// Also probe tracer's own process (left out by default, so that a probe on libc does not
    /// see tracer's own calls).
    #[arg(long)]
    pub include_self: bool,
    #[command(flatten)]
    pub cgroup: crate::cgroup::CgroupArgs,
    #[command(flatten)]
    pub pidns: crate::pidns::PidnsArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// One conversion of the format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conv {
    Signed,
    Unsigned,
    Hex,
    HexUpper,
    Pointer,
    Char,
    Str,
}

/// Literal text and conversions, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Conv(Conv),
}

fn parse_format(format: &str) -> Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            text.push('%');
            continue;
        }
        // Length modifiers are accepted and ignored: every value is 64-bit here.
        while matches!(chars.peek(), Some('l' | 'h' | 'z' | 'j' | 't')) {
            chars.next();
        }
        let conv = match chars.next() {
            Some('d' | 'i') => Conv::Signed,
            Some('u') => Conv::Unsigned,
            Some('x') => Conv::Hex,
            Some('X') => Conv::HexUpper,
            Some('p') => Conv::Pointer,
            Some('c') => Conv::Char,
            Some('s') => Conv::Str,
            Some(other) => {
                usage_bail!(
                    "unsupported conversion '%{other}' in '{format}' (use %d %u %x %X %p %c %s)"
                )
            }
            None => usage_bail!("format '{format}' ends with a lone '%'"),
        };
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        pieces.push(Piece::Conv(conv));
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

pub async fn run(args: TraceArgs) -> Result<()> {
    args.cgroup.install(&crate::btf::KernelBtf::new())?;
    crate::tools::TaskArgs {
        pid: args.pid,
        tid: args.tid,
    }
    .check()?;
    let pieces = parse_format(args.format.as_deref().unwrap_or(""))?;
    let convs: Vec<Conv> = pieces
        .iter()
        .filter_map(|p| {
            if let Piece::Conv(c) = p {
                Some(*c)
            } else {
                None
            }
        })
        .collect();
    if convs.len() != args.args.len() {
        usage_bail!(
            "the format has {} conversions but {} arguments were given",
            convs.len(),
            args.args.len()
        );
    }
    if convs.len() > TRACE_VALUES {
        usage_bail!(
            "at most {TRACE_VALUES} values per event ({} given)",
            convs.len()
        );
    }
    if args.max_rate == Some(0) {
        usage_bail!("--max-rate needs a positive number of events per second");
    }
    let (probe_text, params) = probe_attach::split_signature(&args.probe)?;
    let spec = probe_spec::parse(&probe_text)?;
    let probes = probe_spec::resolve(&spec, args.pid)?;
    let mut exprs: Vec<Expr> = Vec::new();
    for (text, conv) in args.args.iter().zip(&convs) {
        exprs.push(probe_attach::parse_expr(
            text,
            &probes,
            &params,
            *conv == Conv::Str,
        )?);
    }
    let mut config = ProbesConfig {
        mode: MODE_TRACE,
        include_self: args.include_self.into(),
        tgid: args.pid.unwrap_or(0),
        tid: args.tid.unwrap_or(0),
        rate_limit: args.max_rate.unwrap_or(0),
        ..ProbesConfig::DEFAULT
    };
    let mut needs_record = false;
    for (slot, expr) in config.values.iter_mut().zip(&exprs) {
        *slot = expr.spec;
        needs_record |= expr.needs_record;
    }
    if let Some(filter) = &args.filter {
        let (filter, record) = probe_attach::parse_filter(filter, &probes, &params)?;
        config.filter = filter;
        needs_record |= record;
    }
    let mut loaded = probe_attach::attach_all(&Request {
        probes: &probes,
        config,
        pid: args.pid,
        force: args.common.attach,
        entry_and_return: false,
        needs_record,
    })?;
    if args.common.verbose {
        loaded.print_summary(TOOL);
    }
    let mut rings: Vec<RingBuf<MapData>> = Vec::new();
    for instance in &mut loaded.instances {
        let map = instance
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("EVENTS map missing (build bug)"))?;
        rings.push(RingBuf::try_from(map)?);
    }
    errln!(
        "Tracing {} probes for \"{}\" ({})... Hit Ctrl-C to end.",
        probes.len(),
        args.probe,
        loaded.mechanism()
    );

    let mut out = Out::new();
    let json = args.common.output.json;
    if !json {
        let time = if args.common.output.timestamp {
            format!("{:<9}", "TIME")
        } else {
            String::new()
        };
        let nspid = if args.pidns.pidns {
            format!(" {:>7}", "NSPID")
        } else {
            String::new()
        };
        out.line(&format!(
            "{time}{:>7} {:>7}{nspid} {:<16} {:<24} {}",
            "PID", "TID", "COMM", "FUNC", "-"
        ));
    }
    let clock = Clock::new();
    let stop = session::stop_requested(args.common.duration.duration);
    tokio::pin!(stop);
    // Few events by design (rate-limited): polling every few ms costs nothing measurable and
    // serves any number of rings.
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut report = tokio::time::interval(Duration::from_secs(1));
    let mut printed = 0u64;
    let mut reported = ProbeStats::default();
    'outer: loop {
        let stopping = tokio::select! {
            reason = &mut stop => { reason?; true }
            _ = tick.tick() => false,
            _ = report.tick() => { loaded.report_problems(TOOL, &mut reported); false }
        };
        for ring in &mut rings {
            while let Some(item) = ring.next() {
                let Ok(event) = crate::loader::ring_record::<TraceEvent>(&item) else {
                    continue;
                };
                print_event(&args, &probes, &pieces, &exprs, &event, &clock, &mut out);
                printed += 1;
                if args.max_events.is_some_and(|max| printed >= max) || out.closed() {
                    break 'outer;
                }
            }
        }
        out.flush();
        if stopping || out.closed() {
            break;
        }
    }
    let stats = loaded.stats();
    if json {
        out.json(&loaded.end_record(TOOL, json!({"events": printed})));
    } else if stats.throttled > 0 {
        errln!(
            "{TOOL}: {} events suppressed by --max-rate",
            stats.throttled
        );
    }
    out.flush();
    Ok(())
}

fn print_event(
    args: &TraceArgs,
    probes: &[Probe],
    pieces: &[Piece],
    exprs: &[Expr],
    event: &TraceEvent,
    clock: &Clock,
    out: &mut Out,
) {
    let mut message = String::new();
    let mut i = 0;
    let mut values = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => message.push_str(t),
            Piece::Conv(conv) => {
                let raw = event.values.get(i).copied().unwrap_or(0);
                let text = match conv {
                    Conv::Str => {
                        let s = event
                            .strings
                            .get(i)
                            .map(|b| comm_str(b))
                            .unwrap_or_default();
                        values.push(json!(s));
                        s
                    }
                    Conv::Signed => {
                        let signed = match exprs.get(i).map(|e| e.spec) {
                            Some(spec)
                                if spec.string == STR_NONE
                                    && spec.size == 4
                                    && !exprs[i].signed =>
                            {
                                raw as i32 as i64
                            }
                            _ => raw as i64,
                        };
                        values.push(json!(signed));
                        signed.to_string()
                    }
                    Conv::Unsigned => {
                        values.push(json!(raw));
                        raw.to_string()
                    }
                    Conv::Hex | Conv::Pointer => {
                        values.push(json!(raw));
                        format!("{raw:#x}")
                    }
                    Conv::HexUpper => {
                        values.push(json!(raw));
                        format!("{raw:X}")
                    }
                    Conv::Char => {
                        let c = char::from_u32(raw as u32).unwrap_or('?');
                        values.push(json!(c.to_string()));
                        c.to_string()
                    }
                };
                message.push_str(&text);
                i += 1;
            }
        }
    }
    let pid = (event.pid_tgid >> 32) as u32;
    let tid = event.pid_tgid as u32;
    let comm = comm_str(&event.comm);
    let name = probes
        .get(event.probe_id as usize)
        .map(|p| p.name.as_str())
        .unwrap_or("?");
    let nspid = args.pidns.pidns.then(|| NsPid::of(pid));
    if args.common.output.json {
        let mut record = json!({"type": "event", "ts": clock.unix_secs(event.ts_ns), "pid": pid,
               "tid": tid, "cpu": event.cpu, "comm": comm, "probe": name, "message": message,
               "values": values});
        if let Some(ns) = nspid {
            record["nspid"] = ns.json(pid);
        }
        out.json(&with_schema(TOOL, record));
    } else {
        let time = if args.common.output.timestamp {
            format!("{} ", hms(clock.unix_ns(event.ts_ns)))
        } else {
            String::new()
        };
        let nspid = nspid.map_or(String::new(), |ns| format!(" {:>7}", ns.text()));
        out.line(&format!(
            "{time}{pid:>7} {tid:>7}{nspid} {comm:<16} {name:<24} {message}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(
            parse_format("fd=%d %s 100%%").unwrap(),
            vec![
                Piece::Text("fd=".into()),
                Piece::Conv(Conv::Signed),
                Piece::Text(" ".into()),
                Piece::Conv(Conv::Str),
                Piece::Text(" 100%".into())
            ]
        );
        assert_eq!(
            parse_format("%llu").unwrap(),
            vec![Piece::Conv(Conv::Unsigned)]
        );
        assert!(parse_format("%q").is_err());
        assert!(parse_format("50%").is_err());
    }
}

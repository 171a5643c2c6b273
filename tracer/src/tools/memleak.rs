//! memleak: outstanding libc allocations of one process by allocating user stack (BCC's
//! `memleak -p PID`): uprobes on malloc/calloc/realloc/free keep every live block in the kernel
//! (address → size, time, stack); every interval (or at the end) the blocks older than `-o`
//! are summed by stack: bytes and allocations, top stacks, folded lines, SVG, pprof.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};
use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    programs::{UProbe, uprobe::UProbeScope},
};
use clap::Args;
use serde_json::json;
use tracer_common::{
    memleak::{AllocInfo, MemleakConfig},
    stats::STAT_EVENTS,
};

use crate::{
    attach::{self, Mechanism},
    loader::{self, StatsReader, objects},
    output::{self, Out, end_record, hms_now, with_schema},
    pprof::PprofKind,
    probe_spec, session,
    session::IntervalArgs,
    stack_files::StackFiles,
    stacks::{self, Frames, RawStack, Stack, StackLoss, StackMap, Symbols, Unit},
    tools::CommonArgs,
};

const TOOL: &str = "memleak";

/// (libc symbol, program), return probes first: an entry probe attached before its return
/// probe would leave a stale size behind for a call already in flight.
const ATTACH: &[(&str, &str)] = &[
    ("malloc", "memleak_alloc_return"),
    ("calloc", "memleak_alloc_return"),
    ("realloc", "memleak_alloc_return"),
    ("malloc", "memleak_malloc"),
    ("calloc", "memleak_calloc"),
    ("realloc", "memleak_realloc"),
    ("free", "memleak_free"),
];

/// Outstanding libc allocations (malloc/calloc/realloc not yet freed) by user stack.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    memleak -p 1234                  every 5 s: stacks holding the most unfreed bytes\n  \
    memleak -p 1234 10 3             every 10 s, 3 times\n  \
    memleak -p 1234 -o 60000         only blocks older than a minute\n  \
    memleak -p 1234 -d 30 --svg leak.svg   memory flame graph of what is still held")]
pub struct MemleakArgs {
    /// The process whose allocations are traced (its libc).
    #[arg(short = 'p', long = "pid", value_name = "PID", required = true)]
    pub pid: u32,
    /// Only allocations older than this many milliseconds (BCC's default: 500).
    #[arg(short = 'o', long = "older", value_name = "MS", default_value_t = 500)]
    pub older_ms: u64,
    /// Ignore allocations smaller than this many bytes.
    #[arg(short = 'z', long = "min-size", value_name = "BYTES")]
    pub min_size: Option<u64>,
    /// Ignore allocations larger than this many bytes.
    #[arg(short = 'Z', long = "max-size", value_name = "BYTES")]
    pub max_size: Option<u64>,
    /// How many stacks to print (BCC's -T).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 10)]
    pub top: usize,
    /// Print FlameGraph folded lines ("comm;frame;...;leaf bytes").
    #[arg(short = 'f', long)]
    pub folded: bool,
    /// Write an SVG flame graph (bytes outstanding at the end) here.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Write the outstanding bytes at the end as a gzipped pprof profile here.
    #[arg(long, value_name = "FILE")]
    pub pprof: Option<PathBuf>,
    /// The library whose allocator is probed (a path or a name like libc).
    #[arg(long = "obj", value_name = "LIB", default_value = "libc")]
    pub obj: String,
    #[command(flatten)]
    pub interval: IntervalArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Outstanding bytes and allocations of one (thread, user stack).
#[derive(Default, Clone, Copy)]
struct Held {
    bytes: u64,
    allocations: u64,
}

pub async fn run(args: MemleakArgs) -> Result<()> {
    session::check_pid(args.pid)?;
    let min_size = args.min_size.unwrap_or(0);
    let max_size = args.max_size.unwrap_or(u64::MAX);
    if max_size < min_size {
        usage_bail!("-Z {max_size} is below -z {min_size}: no allocation could match");
    }
    if let Some(m) = args.common.attach
        && m != Mechanism::Uprobe
    {
        usage_bail!("--attach {m}: memleak attaches only uprobes (uprobe)");
    }
    let files = StackFiles::open(args.svg.as_deref(), args.pprof.as_deref())?;
    let library = probe_spec::resolve_binary(&args.obj, Some(args.pid))?;
    let config = MemleakConfig {
        tgid: args.pid,
        _reserved: 0,
        min_size,
        max_size,
    };
    let mut ebpf = loader::load(objects::MEMLEAK, |l| {
        l.override_global("CONFIG", &config, true);
    })?;
    let scope = UProbeScope::OneProcess(
        std::num::NonZeroU32::new(args.pid).ok_or_else(|| usage_err!("PID 0 is not a process"))?,
    );
    let mut loaded_programs: HashSet<&str> = HashSet::new();
    let mut attach = Vec::new();
    for &(symbol, program) in ATTACH {
        let prog: &mut UProbe = ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("program {program} missing (build bug)"))?
            .try_into()?;
        if loaded_programs.insert(program) {
            prog.load().map_err(|e| {
                anyhow!(
                    "cannot load the {program} program: {}",
                    attach::describe(Mechanism::Uprobe, &e)
                )
            })?;
        }
        prog.attach(symbol, &library, scope).map_err(|e| {
            anyhow!(
                "cannot attach to {symbol} in {}: {e} (is it a libc? -O names the allocator's library)",
                library.display()
            )
        })?;
        // The same "TARGET via MECHANISM" as every tool's -v and end record.
        let (kind, target) = if program == "memleak_alloc_return" {
            ("uretprobe", format!("return of {symbol}()"))
        } else {
            ("uprobe", format!("{symbol}()"))
        };
        attach.push(output::attach_json(
            &format!("{target} in {}", library.display()),
            kind,
        ));
        if args.common.verbose {
            errln!(
                "{TOOL}: {target} in {} (PID {}) via {kind}",
                library.display(),
                args.pid
            );
        }
    }
    let allocs: BpfHashMap<MapData, u64, AllocInfo> = BpfHashMap::try_from(
        ebpf.take_map("ALLOCS")
            .ok_or_else(|| anyhow!("ALLOCS map missing (build bug)"))?,
    )?;
    let stack_map = StackMap::take(&mut ebpf, "STACKS")?;
    let stats = StatsReader::take(&mut ebpf)?;
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", args.pid))
        .map(|c| c.trim().to_string())
        .unwrap_or_default();
    let title = format!(
        "memleak: PID {} ({comm}), bytes outstanding (older than {} ms) by allocating stack",
        args.pid, args.older_ms
    );
    errln!(
        "Attaching to malloc, calloc, realloc and free in {} of PID {}... Hit Ctrl-C to end.",
        library.display(),
        args.pid
    );

    let mut symbols = Symbols::new().recording_origins(files.pprof());
    // Its mappings now: a process that exits before the report still names its stacks.
    symbols.keep_targets();
    let mut out = Out::new();
    let stop = session::stop_requested(args.common.duration.duration);
    tokio::pin!(stop);
    // BCC's memleak reports every 5 s by default; with -d alone, once at the end.
    let every = args.interval.interval.or_else(|| {
        args.common
            .duration
            .duration
            .is_none()
            .then(|| Duration::from_secs(5))
    });
    let mut ticker = every.map(|d| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut warm = tokio::time::interval(Duration::from_secs(1));
    warm.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warmed: HashSet<i32> = HashSet::new();
    let mut printed = 0u64;
    let started = Instant::now();
    let mut last_report = started;
    let last = loop {
        let stopped = tokio::select! {
            reason = &mut stop => { reason?; true }
            _ = async { match ticker.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending::<()>().await } } => false,
            _ = warm.tick() => {
                symbols.keep_targets();
                for (_, info) in allocs.iter().flatten() {
                    if info.ustack >= 0 && warmed.insert(info.ustack) {
                        symbols.prefetch_user(args.pid, &stack_map.frames(info.ustack));
                    }
                }
                continue;
            }
        };
        let resolved = outstanding(&args, &allocs, &stack_map, &comm, &mut symbols);
        report(
            &args,
            &resolved,
            (started.elapsed(), last_report.elapsed()),
            &mut out,
        );
        last_report = Instant::now();
        out.flush();
        printed += 1;
        if stopped || out.closed() || args.interval.count.is_some_and(|c| printed >= c) {
            break resolved;
        }
    };
    if files.wanted() {
        let stacks: Vec<Stack> = last
            .iter()
            .map(|(s, held)| Stack {
                value: held.bytes,
                ..s.clone()
            })
            .collect();
        let lines = stacks::folded(&stacks, Unit::Samples);
        files.write(
            &lines,
            &title,
            "bytes",
            PprofKind::Count("outstanding_bytes"),
            symbols.origins(),
        )?;
    }
    symbols.report_unknown(TOOL);
    let end = stats.read();
    let loss = StackLoss::read(&stats);
    loss.report_with_hint(TOOL, "fewer distinct allocation stacks fit");
    if end.map_full > 0 {
        errln!(
            "{TOOL}: {} allocations not tracked: a map was full (too many outstanding blocks)",
            end.map_full
        );
    }
    if args.common.output.json {
        out.json(&end_record(
            TOOL,
            attach,
            end.map_full,
            end.read_errors,
            json!({"allocations_tracked": stats.slot(STAT_EVENTS), "stacks_lost": loss.json()}),
        ));
    }
    out.flush();
    drop(ebpf);
    Ok(())
}

/// The outstanding blocks older than `-o`, summed by (thread, stack) and symbolized; stacks
/// that symbolize alike merged, most bytes first.
fn outstanding(
    args: &MemleakArgs,
    allocs: &BpfHashMap<MapData, u64, AllocInfo>,
    stack_map: &StackMap,
    comm: &str,
    symbols: &mut Symbols,
) -> Vec<(Stack, Held)> {
    let now = monotonic_ns();
    let older_ns = args.older_ms.saturating_mul(1_000_000);
    let mut by_stack: HashMap<(u32, i32), Held> = HashMap::new();
    for (_, info) in allocs.iter().flatten() {
        if now.saturating_sub(info.ts_ns) < older_ns {
            continue;
        }
        let held = by_stack.entry((info.tid, info.ustack)).or_default();
        held.bytes += info.size;
        held.allocations += 1;
    }
    // Symbolized as "stacks" whose value is the bytes; allocations are matched back by frames.
    let raws: Vec<RawStack> = by_stack
        .iter()
        .map(|(&(tid, ustack), held)| RawStack {
            comm: comm.to_string(),
            pid: args.pid,
            tid,
            kernel: Frames::None,
            user: stack_map.frames(ustack),
            value: held.bytes,
        })
        .collect();
    let counts: Vec<u64> = by_stack.values().map(|h| h.allocations).collect();
    let resolved = symbols.resolve_all(&raws);
    // One entry per distinct frame list (threads merged, as BCC's memleak shows stacks).
    let mut merged: HashMap<Vec<std::rc::Rc<str>>, (Stack, Held)> = HashMap::new();
    for (stack, allocations) in resolved.into_iter().zip(counts) {
        let entry = merged.entry(stack.user.clone()).or_insert_with(|| {
            (
                Stack {
                    value: 0,
                    ..stack.clone()
                },
                Held::default(),
            )
        });
        entry.1.bytes += stack.value;
        entry.1.allocations += allocations;
        entry.0.value = entry.1.bytes;
    }
    let mut list: Vec<(Stack, Held)> = merged.into_values().collect();
    list.sort_by(|a, b| {
        b.1.bytes
            .cmp(&a.1.bytes)
            .then(b.1.allocations.cmp(&a.1.allocations))
            .then(a.0.user.cmp(&b.0.user))
    });
    list
}

/// One report: `times` is (since the run started, since the previous report).
fn report(
    args: &MemleakArgs,
    list: &[(Stack, Held)],
    (elapsed, interval): (Duration, Duration),
    out: &mut Out,
) {
    let bytes: u64 = list.iter().map(|(_, h)| h.bytes).sum();
    let allocations: u64 = list.iter().map(|(_, h)| h.allocations).sum();
    if args.folded {
        let stacks: Vec<Stack> = list.iter().map(|(s, _)| s.clone()).collect();
        for line in stacks::folded(&stacks, Unit::Samples) {
            out.line(&line);
        }
        return;
    }
    let shown = list.len().min(args.top);
    if args.common.output.json {
        let stacks: Vec<_> = list[..shown]
            .iter()
            .map(|(s, held)| {
                json!({"bytes": held.bytes, "allocations": held.allocations,
                       "pct": if bytes > 0 { (held.bytes as f64 * 10_000.0 / bytes as f64).round() / 100.0 } else { 0.0 },
                       "user": s.user.iter().map(|f| f.as_ref()).collect::<Vec<_>>()})
            })
            .collect();
        out.json(&with_schema(
            TOOL,
            json!({"type": "outstanding", "time": hms_now(),
                   "interval_ns": interval.as_nanos() as u64, "elapsed_ns": elapsed.as_nanos() as u64,
                   "pid": args.pid, "older_ms": args.older_ms, "bytes": bytes,
                   "allocations": allocations, "stacks_total": list.len(), "stacks": stacks}),
        ));
        return;
    }
    // BCC's layout: "[HH:MM:SS] Top N stacks with outstanding allocations:".
    out.line(&format!(
        "[{}] Top {shown} stacks with outstanding allocations ({bytes} bytes in {allocations} allocations):",
        hms_now()
    ));
    for (stack, held) in &list[..shown] {
        out.line(&format!(
            "\t{} bytes in {} allocations from stack",
            held.bytes, held.allocations
        ));
        for frame in &stack.user {
            out.line(&format!("\t\t{frame}"));
        }
    }
    if list.len() > shown {
        out.line(&format!(
            "\t... {} more stacks (-n to show more, --folded for all)",
            list.len() - shown
        ));
    }
}

/// CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

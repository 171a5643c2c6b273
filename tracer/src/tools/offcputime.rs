//! offcputime: how long tasks were blocked (off CPU), and where: on sched_switch the kernel notes
//! when and with which stacks a task left the CPU, and when it runs again adds the blocked time to
//! that (task, kernel stack, user stack). Shows why a kworker, jbd2 or a process waits.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, IterableMap as _, MapData, PerCpuHashMap},
};
use clap::Args;
use serde_json::json;
use tracer_common::{
    offcputime::{OffcpuConfig, OffcpuKey, OffcpuValue, SwitchOut},
    stats::STAT_EVENTS,
};

use crate::{
    attach::{self, Mechanism, Rung, Target},
    btf::KernelBtf,
    filters,
    loader::{self, StatsReader, objects},
    output::{Out, end_record, hms_now, with_schema},
    pprof::PprofKind,
    session::{self, IntervalArgs},
    stack_files::StackFiles,
    stacks::{self, Evictor, RawStack, StackLoss, StackMap, Symbols, Unit},
    tools::{CommonArgs, StackKindArgs, StackOutputArgs, TaskArgs},
};

const TOOL: &str = "offcputime";

/// Summarize off-CPU (blocked) time by kernel and user stack, from sched_switch.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    offcputime -d 10                 all tasks for 10 s, longest-blocked stacks\n  \
    offcputime -p 1234               why PID 1234 waits\n  \
    offcputime --kthreads -K         why kernel threads (kworker, jbd2, ...) wait\n  \
    offcputime --min-block-time 1000 -f > out.folded   blocks of 1 ms or more, folded (values in us)\n  \
    offcputime --svg offcpu.svg -d 30    off-CPU flame graph")]
pub struct OffcputimeArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Only tasks with this comm: exact, or a prefix ending in '*' ('kworker/*').
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Only kernel threads.
    #[arg(long, conflicts_with = "user_threads_only")]
    pub kthreads: bool,
    /// Only user tasks (no kernel threads).
    #[arg(long)]
    pub user_threads_only: bool,
    #[command(flatten)]
    pub stack_kind: StackKindArgs,
    /// Ignore blocks shorter than this many microseconds.
    #[arg(long = "min-block-time", value_name = "US", default_value_t = 1)]
    pub min_us: u64,
    /// Ignore blocks longer than this many microseconds.
    #[arg(long = "max-block-time", short_alias = 'M', value_name = "US")]
    pub max_us: Option<u64>,
    /// How many stacks to print (text and JSON).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    #[command(flatten)]
    pub stacks: StackOutputArgs,
    #[command(flatten)]
    pub interval: IntervalArgs,
    #[command(flatten)]
    pub cgroup: crate::cgroup::CgroupArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: OffcputimeArgs) -> Result<()> {
    args.cgroup.install(&crate::btf::KernelBtf::new())?;
    args.task.check()?;
    let max_us = args.max_us.unwrap_or(u64::MAX / 1000);
    if max_us < args.min_us {
        usage_bail!(
            "--max-block-time {max_us} is below --min-block-time {}: no block could match",
            args.min_us
        );
    }
    args.stacks.check()?;
    let config = OffcpuConfig {
        tgid: args.task.pid.unwrap_or(0),
        tid: args.task.tid.unwrap_or(0),
        min_ns: args.min_us.saturating_mul(1000),
        max_ns: max_us.saturating_mul(1000),
        kernel_stacks: args.stack_kind.kernel_stacks(),
        user_stacks: args.stack_kind.user_stacks(),
        kthreads_only: args.kthreads.into(),
        user_only: args.user_threads_only.into(),
        _reserved: [0; 4],
        comm: filters::comm_filter(args.comm.as_deref())?,
    };
    let files = StackFiles::open(args.stacks.svg.as_deref(), args.stacks.pprof.as_deref())?;

    let (mut ebpf, attachment) =
        load_and_attach(TOOL, &config, args.stacks.stack_storage_size, &args.common)?;
    let counts: PerCpuHashMap<MapData, OffcpuKey, OffcpuValue> = PerCpuHashMap::try_from(
        ebpf.take_map("OFFCPU")
            .ok_or_else(|| anyhow!("OFFCPU map missing (build bug)"))?,
    )?;
    let blocked: BpfHashMap<MapData, u32, SwitchOut> = BpfHashMap::try_from(
        ebpf.take_map("START")
            .ok_or_else(|| anyhow!("START map missing (build bug)"))?,
    )?;
    let mut stack_map = StackMap::take(&mut ebpf, "STACKS")?;
    let stats = StatsReader::take(&mut ebpf)?;
    let title = title(&args);
    errln!(
        "Tracing off-CPU time ({}) of {}... Hit Ctrl-C to end.",
        attachment.mechanism,
        scope(&args)
    );

    let mut symbols = Symbols::new()
        .strip_tracing_frames()
        .recording_origins(files.pprof());
    let mut out = Out::new();
    let json = args.common.output.json;
    let stop = session::stop_requested(args.common.duration.duration);
    tokio::pin!(stop);
    let mut ticker = args.interval.interval.map(|d| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    // Symbolize user stacks while their processes exist (see profile's sample_loop): those of
    // tasks blocked right now too, since a process often exits right after its last block.
    // The -p/-t targets' mappings too (profile's sample_loop does the same).
    let mut warm = tokio::time::interval(symbols.keep_targets());
    warm.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warmed: HashSet<(u32, i32)> = HashSet::new();
    // In interval mode keys are deleted after each report (see profile's sample_loop and
    // `Evictor`); the end-of-run flame graph gets their folded totals.
    let mut evictor = Evictor::new(files.wanted());
    let mut printed = 0u64;
    let mut since = Instant::now();
    loop {
        let stopped = tokio::select! {
            reason = &mut stop => { reason?; true }
            _ = async { match ticker.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending::<()>().await } } => false,
            _ = warm.tick() => {
                symbols.keep_targets();
                let now_blocked = blocked.iter().flatten().map(|(_, out)| out.key);
                for key in counts.keys().flatten().chain(now_blocked) {
                    if key.ustack >= 0 && warmed.insert((key.tgid, key.ustack)) {
                        symbols.prefetch_user(key.tgid, &stack_map.frames(key.ustack));
                    }
                }
                continue;
            }
        };
        let raws: Vec<RawStack> = evictor
            .round(snapshot(&counts))
            .iter()
            .map(|(key, &ns)| stack_map.raw(key, ns))
            .collect();
        let elapsed = since.elapsed();
        since = Instant::now();
        if !stopped || args.interval.interval.is_none() || !raws.is_empty() {
            report(&args, &raws, elapsed, &title, &mut symbols, &mut out);
        }
        out.flush();
        printed += 1;
        let last = stopped || out.closed() || args.interval.count.is_some_and(|c| printed >= c);
        if last {
            break;
        }
        if args.interval.interval.is_some() {
            evictor.evict(
                &mut stack_map,
                &mut symbols,
                &mut warmed,
                |key| {
                    let held = loader::lookup_and_delete_per_cpu::<OffcpuKey, OffcpuValue>(
                        counts.map(),
                        key,
                    )?;
                    Ok(held.map(|per_cpu| per_cpu.iter().map(|v| v.total_ns).sum()))
                },
                // The stacks of tasks blocked right now are still to be counted.
                || {
                    counts
                        .keys()
                        .flatten()
                        .chain(blocked.iter().flatten().map(|(_, out)| out.key))
                        .collect()
                },
            )?;
        }
    }
    if args.common.verbose && args.interval.interval.is_some() {
        errln!(
            "{TOOL}: evicted {} keys of exited threads and {} keys idle for {} intervals",
            evictor.evicted_exited,
            evictor.evicted_idle,
            stacks::IDLE_ROUNDS
        );
    }

    if files.wanted() {
        let (totals, evicted) = evictor.totals();
        let raws: Vec<RawStack> = totals.iter().map(|(k, &ns)| stack_map.raw(k, ns)).collect();
        let resolved = symbols.resolve_all(&raws);
        let lines = stacks::folded_with(evicted, &resolved, Unit::Nanoseconds);
        files.write(
            &lines,
            &title,
            "us",
            PprofKind::OffCpuMicros,
            symbols.origins(),
        )?;
    }
    symbols.report_unknown(TOOL);
    let end = stats.read();
    let loss = StackLoss::read(&stats);
    loss.report(TOOL);
    if end.map_full > 0 {
        errln!(
            "{TOOL}: {} blocks not counted: a map was full (too many blocked tasks or stacks)",
            end.map_full
        );
    }
    if end.read_errors > 0 {
        errln!("{TOOL}: {} task_struct reads failed", end.read_errors);
    }
    if json {
        out.json(&end_record(
            TOOL,
            vec![attachment.json()],
            end.map_full,
            end.read_errors,
            json!({"blocks": stats.slot(STAT_EVENTS), "stacks_lost": loss.json()}),
        ));
    }
    out.flush();
    drop(ebpf);
    Ok(())
}

/// Blocked nanoseconds per key so far (summed over CPUs).
fn snapshot(counts: &PerCpuHashMap<MapData, OffcpuKey, OffcpuValue>) -> HashMap<OffcpuKey, u64> {
    let mut totals = HashMap::new();
    for (key, per_cpu) in counts.iter().flatten() {
        *totals.entry(key).or_default() += per_cpu.iter().map(|v| v.total_ns).sum::<u64>();
    }
    totals
}

fn report(
    args: &OffcputimeArgs,
    raws: &[RawStack],
    elapsed: Duration,
    title: &str,
    symbols: &mut Symbols,
    out: &mut Out,
) {
    let total: u64 = raws.iter().map(|r| r.value).sum();
    let resolved = stacks::merge(symbols.resolve_all(raws));
    if args.stacks.folded {
        for line in stacks::folded(&resolved, Unit::Nanoseconds) {
            out.line(&line);
        }
        return;
    }
    let shown = resolved.len().min(args.top);
    if args.common.output.json {
        let list: Vec<_> = resolved[..shown]
            .iter()
            .map(|s| stacks::stack_json(s, total))
            .collect();
        out.json(&with_schema(
            TOOL,
            json!({"type": "offcpu", "time": hms_now(), "interval_ns": elapsed.as_nanos() as u64, "unit": "ns",
                   "total_ns": total, "stacks_total": resolved.len(), "stacks": list}),
        ));
        return;
    }
    out.interval_header(args.interval.interval.is_some() || args.common.output.timestamp);
    out.line(&format!(
        "{} off CPU in {:.1}s of tracing ({} distinct stacks) — {title}",
        stacks::format_ns(total),
        elapsed.as_secs_f64(),
        resolved.len()
    ));
    out.line("");
    stacks::print_top(out, &resolved[..shown], total, Unit::Nanoseconds);
    if resolved.len() > shown {
        out.line(&format!(
            "... {} more stacks (--top to show more, --folded for all)",
            resolved.len() - shown
        ));
    }
}

fn scope(args: &OffcputimeArgs) -> String {
    let mut what = args.task.describe();
    if let Some(comm) = &args.comm {
        what.push(format!("comm {comm}"));
    }
    if args.kthreads {
        what.push("kernel threads".into());
    }
    if args.user_threads_only {
        what.push("user tasks".into());
    }
    if what.is_empty() {
        "all tasks".into()
    } else {
        what.join(", ")
    }
}

fn title(args: &OffcputimeArgs) -> String {
    let mut title = format!("offcputime: {}, blocked time", scope(args));
    if args.min_us > 1 || args.max_us.is_some() {
        title.push_str(&format!(
            " ({} to {} us per block)",
            args.min_us,
            args.max_us.map_or("any".into(), |m| m.to_string())
        ));
    }
    title
}

/// Loads the sched_switch object with `config` and attaches it (tp_btf, else raw_tp): shared
/// with `profile --offcpu`, whose off-CPU half is this tool's kernel side.
pub(super) fn load_and_attach(
    tool: &str,
    config: &OffcpuConfig,
    stack_storage_size: u32,
    common: &CommonArgs,
) -> Result<(Ebpf, attach::Attachment)> {
    let btf = KernelBtf::new();
    let offsets = btf
        .task_offsets()
        .context("offcputime reads prev/next task_struct members at offsets from kernel BTF")?;
    let mut ebpf = loader::load(objects::OFFCPUTIME, |l| {
        l.override_global("CONFIG", config, true);
        l.override_global("TASK_OFFSETS", &offsets, false);
        l.map_max_entries("STACKS", stack_storage_size);
    })?;
    let rungs = [
        Rung {
            mechanism: Mechanism::TpBtf,
            program: "offcputime_switch_btf",
        },
        Rung {
            mechanism: Mechanism::RawTp,
            program: "offcputime_switch_raw",
        },
    ];
    let target = Target::Tracepoint {
        category: "sched",
        event: "sched_switch",
    };
    let attachment = attach::attach(
        &mut ebpf,
        &btf,
        target,
        &rungs,
        common.attach_for(tool, &[Mechanism::TpBtf, Mechanism::RawTp])?,
    )?;
    if common.verbose {
        errln!("{tool}: {}", attachment.summary());
    }
    Ok((ebpf, attachment))
}

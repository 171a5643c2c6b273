//! `profile --offcpu`: hot/cold flame graphs. profile's perf-event sampler gives the on-CPU half
//! and offcputime's sched_switch object (loaded as is) the off-CPU half; both become time (one
//! sample = 1/F s of CPU), so a thread's wall time splits into where it ran and where it waited.
//! Off-CPU frames carry the `_[o]` annotation in folded output, which `flame_svg::render_svg`
//! draws blue (the on-CPU frames keep the warm palette).

use std::{
    collections::{HashMap, HashSet},
    rc::Rc,
    time::Duration,
};

use anyhow::{Result, anyhow};
use aya::maps::{HashMap as BpfHashMap, IterableMap as _, MapData, PerCpuHashMap};
use serde_json::json;
use tracer_common::{
    offcputime::{OffcpuConfig, OffcpuKey, OffcpuValue, SwitchOut},
    profile::{IDLE_EXCLUDE, ProfileConfig},
};

use crate::{
    loader::{self, StatsReader},
    output::{Out, hms_now, with_schema},
    pprof::PprofKind,
    session,
    stack_files::StackFiles,
    stacks::{self, Evictor, OFFCPU_SUFFIX, RawStack, Stack, StackLoss, StackMap, Symbols, Unit},
    tools::{
        offcputime,
        profile::{ProfileArgs, Sampler},
    },
};

const TOOL: &str = "profile";

/// Time between eviction rounds. Hot/cold reports once, at the end, but a long run must not
/// keep every key it saw: each forked task adds its own (tgid, pid, stacks, comm) keys to both
/// halves' maps, and the soak's fork loop (~500 tasks/s) filled the 16384-entry OFFCPU map in
/// minutes, and live tasks add keys as their stacks move. A round deletes the keys of threads
/// gone since the round before and those unchanged for `stacks::IDLE_ROUNDS` rounds (see
/// `Evictor`), so the maps follow the last few seconds; rounds this far apart keep the walk of
/// the maps a negligible cost.
const EVICT_EVERY: Duration = Duration::from_secs(2);

pub(super) async fn run(args: &ProfileArgs, mut config: ProfileConfig) -> Result<()> {
    let sample = &args.sample;
    if sample.interval.interval.is_some() {
        usage_bail!("profile --offcpu reports the whole run: drop INTERVAL [COUNT] (use -d SECS)");
    }
    sample.stacks.check()?;
    // The idle tasks run when nothing else does: that time is neither hot nor cold.
    config.idle = IDLE_EXCLUDE;
    let offcpu_config = OffcpuConfig {
        tgid: config.tgid,
        tid: config.tid,
        min_ns: 0,
        max_ns: u64::MAX,
        kernel_stacks: config.kernel_stacks,
        user_stacks: config.user_stacks,
        kthreads_only: config.kthreads_only,
        user_only: 0,
        _reserved: [0; 4],
        comm: config.comm,
    };
    let files = StackFiles::open(sample.stacks.svg.as_deref(), sample.stacks.pprof.as_deref())?;

    // --attach chooses the sched_switch mechanism; the sampler has only perf events.
    let (mut off_ebpf, attachment) = offcputime::load_and_attach(
        TOOL,
        &offcpu_config,
        sample.stacks.stack_storage_size,
        &sample.common,
    )?;
    let off_counts: PerCpuHashMap<MapData, OffcpuKey, OffcpuValue> = PerCpuHashMap::try_from(
        off_ebpf
            .take_map("OFFCPU")
            .ok_or_else(|| anyhow!("OFFCPU map missing (build bug)"))?,
    )?;
    let blocked: BpfHashMap<MapData, u32, SwitchOut> = BpfHashMap::try_from(
        off_ebpf
            .take_map("START")
            .ok_or_else(|| anyhow!("START map missing (build bug)"))?,
    )?;
    let mut off_stacks = StackMap::take(&mut off_ebpf, "STACKS")?;
    let off_stats = StatsReader::take(&mut off_ebpf)?;
    let mut on_sample = sample.clone();
    on_sample.common.attach = None;
    let mut sampler = Sampler::start(TOOL, &on_sample, config, false)?;
    // Off-CPU time counts from the moment sampling starts: what was blocked before is taken
    // off again: from a key's total when it is evicted, from the rest at the end (see
    // `Baseline`).
    let mut baseline = Baseline::read(&off_counts, &blocked);
    let title = format!(
        "{}, hot/cold (on CPU + off CPU, {})",
        super::profile::what_sampled(TOOL, Some(args), sample, sampler.event),
        attachment.mechanism
    );
    errln!(
        "Sampling on-CPU stacks at {} Hz ({}) and off-CPU time ({}) of {}... Hit Ctrl-C to end.",
        sample.frequency,
        sampler.event,
        attachment.mechanism,
        scope(args)
    );

    // Origins (--pprof mappings) of the on-CPU half's frames; off-CPU frames carry the `_[o]`
    // suffix, so their names are not the symbols' own and stay without a mapping.
    let mut on_symbols = Symbols::new().recording_origins(files.pprof());
    let mut off_symbols = Symbols::new().strip_tracing_frames();
    let stop = session::stop_requested(
        sample
            .common
            .duration
            .duration
            .map(|d| d.saturating_sub(sampler.started.elapsed())),
    );
    tokio::pin!(stop);
    // User stacks are symbolized while their processes exist (see profile's sample_loop).
    let mut warm = tokio::time::interval(Duration::from_secs(1));
    warm.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warmed_on: HashSet<(u32, i32)> = HashSet::new();
    let mut warmed_off: HashSet<(u32, i32)> = HashSet::new();
    // Keys leave the maps on the way (see `EVICT_EVERY`), their totals kept as stacks merged
    // by frames: per live thread, so each is still reported as itself, and into one stack of
    // "exited threads" once the thread is gone.
    let mut evict =
        tokio::time::interval_at(tokio::time::Instant::now() + EVICT_EVERY, EVICT_EVERY);
    evict.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drain = tokio::time::interval(super::profile::USER_STACKS_DRAIN);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut on_evictor = Evictor::new(true).keeping_threads();
    let mut off_evictor = Evictor::new(true).keeping_threads();
    loop {
        tokio::select! {
            reason = &mut stop => { reason?; break; }
            _ = drain.tick(), if sampler.unwinds_user_stacks() => sampler.drain_user_stacks(),
            _ = warm.tick() => {
                sampler.prefetch_new_user_stacks(&mut on_symbols, &mut warmed_on);
                let now_blocked = blocked.iter().flatten().map(|(_, out)| out.key);
                for key in off_counts.keys().flatten().chain(now_blocked) {
                    if key.ustack >= 0 && warmed_off.insert((key.tgid, key.ustack)) {
                        off_symbols.prefetch_user(key.tgid, &off_stacks.frames(key.ustack));
                    }
                }
            }
            _ = evict.tick() => {
                on_evictor.round(sampler.snapshot());
                sampler.evict(&mut on_evictor, &mut on_symbols, &mut warmed_on)?;
                baseline.settle(&blocked);
                off_evictor.round(completed_ns(&off_counts, &baseline.completed));
                off_evictor.evict(
                    &mut off_stacks,
                    &mut off_symbols,
                    &mut warmed_off,
                    |key| {
                        let held = loader::lookup_and_delete_per_cpu::<OffcpuKey, OffcpuValue>(
                            off_counts.map(),
                            key,
                        )?;
                        // The key is gone for good: its pre-sampling time comes off now.
                        let before = baseline.completed.remove(key).unwrap_or(0);
                        Ok(held.map(|per_cpu| {
                            per_cpu
                                .iter()
                                .map(|v| v.total_ns)
                                .sum::<u64>()
                                .saturating_sub(before)
                        }))
                    },
                    // The stacks of tasks blocked right now are still to be counted.
                    || {
                        off_counts
                            .keys()
                            .flatten()
                            .chain(blocked.iter().flatten().map(|(_, out)| out.key))
                            .collect()
                    },
                )?;
            }
        }
    }
    if sample.common.verbose {
        errln!(
            "{TOOL}: evicted keys of exited threads: {} on CPU, {} off CPU; idle for {} rounds: {} on CPU, {} off CPU",
            on_evictor.evicted_exited,
            off_evictor.evicted_exited,
            stacks::IDLE_ROUNDS,
            on_evictor.evicted_idle,
            off_evictor.evicted_idle
        );
    }
    // The traced time ends here, not after the detach (which takes long under emulation).
    let elapsed = sampler.started.elapsed();
    sampler.stop_sampling()?;
    baseline.settle(&blocked);
    let mut off = off_cpu_ns(&off_counts, &blocked);
    baseline.subtract(&mut off);
    let period_ns = 1_000_000_000 / sample.frequency;
    let on_raws: Vec<RawStack> = sampler
        .snapshot()
        .iter()
        .map(|(key, &n)| sampler.stack_map.raw(key, n * period_ns))
        .collect();
    let off_raws: Vec<RawStack> = off
        .iter()
        .filter(|&(_, &ns)| ns > 0)
        .map(|(key, &ns)| off_stacks.raw(key, ns))
        .collect();
    // The evicted keys' stacks join the rest: pid and tid 0, "[exited threads]" in the text.
    let on_retired = on_evictor.retired_stacks().into_iter().map(|s| Stack {
        value: s.value * period_ns,
        ..s
    });
    let off_retired = off_evictor.retired_stacks().into_iter();
    let on = stacks::merge(
        on_symbols
            .resolve_all(&on_raws)
            .into_iter()
            .chain(on_retired)
            .collect(),
    );
    let off = stacks::merge(
        off_symbols
            .resolve_all(&off_raws)
            .into_iter()
            .chain(off_retired)
            .filter(|s| s.value > 0)
            .collect(),
    );
    let on_ns: u64 = on.iter().map(|s| s.value).sum();
    let off_ns: u64 = off.iter().map(|s| s.value).sum();

    let mut out = Out::new();
    let marked: Vec<Stack> = off.iter().map(mark_off_cpu).collect();
    let lines = if sample.stacks.folded || files.wanted() {
        let both: Vec<Stack> = on.iter().cloned().chain(marked).collect();
        stacks::folded(&both, Unit::Nanoseconds)
    } else {
        Vec::new()
    };
    if sample.stacks.folded {
        for line in &lines {
            out.line(line);
        }
    } else if sample.common.output.json {
        let list = |stacks: &[Stack]| -> Vec<_> {
            stacks[..stacks.len().min(args.top)]
                .iter()
                .map(|s| stacks::stack_json(s, on_ns + off_ns))
                .collect()
        };
        out.json(&with_schema(
            TOOL,
            json!({"type": "hotcold", "time": hms_now(), "interval_ns": elapsed.as_nanos() as u64,
                   "event": sampler.event, "hz": sampler.hz, "unit": "ns",
                   "on_cpu_ns": on_ns, "off_cpu_ns": off_ns,
                   "on_cpu_pct": pct(on_ns, on_ns + off_ns),
                   "on_cpu_stacks_total": on.len(), "off_cpu_stacks_total": off.len(),
                   "on_cpu": list(&on), "off_cpu": list(&off)}),
        ));
    } else {
        out.interval_header(sample.common.output.timestamp);
        out.line(&format!(
            "{} on CPU ({:.1}%), {} off CPU ({:.1}%) in {:.1}s of tracing — {title}",
            stacks::format_ns(on_ns),
            pct(on_ns, on_ns + off_ns),
            stacks::format_ns(off_ns),
            pct(off_ns, on_ns + off_ns),
            elapsed.as_secs_f64()
        ));
        for (heading, stacks) in [("On CPU (hot)", &on), ("Off CPU (cold)", &off)] {
            out.line("");
            out.line(&format!("{heading}: {} distinct stacks", stacks.len()));
            out.line("");
            let shown = stacks.len().min(args.top);
            stacks::print_top_as(
                &mut out,
                &stacks[..shown],
                on_ns + off_ns,
                Unit::Nanoseconds,
                task,
            );
            if stacks.len() > shown {
                out.line(&format!(
                    "... {} more stacks (--top to show more, --folded for all)",
                    stacks.len() - shown
                ));
            }
        }
    }
    // Folded values are microseconds: as 1 MHz "samples", pprof's time is exact.
    files.write(
        &lines,
        &title,
        "us",
        PprofKind::Samples { hz: 1_000_000 },
        on_symbols.origins(),
    )?;
    on_symbols.report_unknown(TOOL);
    off_symbols.report_unknown(TOOL);
    let on_end = sampler.report_losses(TOOL);
    let off_end = off_stats.read();
    let off_loss = StackLoss::read(&off_stats);
    off_loss.report(TOOL);
    if off_end.map_full > 0 {
        errln!(
            "{TOOL}: {} off-CPU blocks not counted: a map was full (too many blocked tasks or stacks)",
            off_end.map_full
        );
    }
    if sample.common.output.json {
        // map_full and read_errors: the sampler's; the off-CPU side's are in offcpu_stats.
        out.json(&sampler.end_record(
            TOOL,
            vec![attachment.json()],
            json!({"stats": on_end,
                   "offcpu_stats": {"map_full": off_end.map_full, "read_errors": off_end.read_errors,
                                    "stacks_lost": off_loss.json()}}),
        ));
    }
    out.flush();
    drop(off_ebpf);
    Ok(())
}

/// Off-CPU time before sampling started, taken off the run's, per key: that of the blocks
/// completed then (OFFCPU's), and the part before the start of the blocks in progress then.
/// Evicting a key (idle or exited) takes its completed part off its total; a block still in
/// progress is not in OFFCPU yet, so its part waits (`settle`) until the block ends.
struct Baseline {
    completed: HashMap<OffcpuKey, u64>,
    /// Tasks blocked at the start: their switch-out, and how long they had been blocked then.
    blocked: HashMap<u32, (SwitchOut, u64)>,
}

impl Baseline {
    fn read(
        counts: &PerCpuHashMap<MapData, OffcpuKey, OffcpuValue>,
        start: &BpfHashMap<MapData, u32, SwitchOut>,
    ) -> Self {
        let now = monotonic_ns();
        let mut completed: HashMap<OffcpuKey, u64> = HashMap::new();
        for (key, per_cpu) in counts.iter().flatten() {
            *completed.entry(key).or_default() += per_cpu.iter().map(|v| v.total_ns).sum::<u64>();
        }
        let blocked = start
            .iter()
            .flatten()
            .filter(|(_, out)| task_alive(out.key.tgid, out.key.pid))
            .map(|(tid, out)| (tid, (out, now.saturating_sub(out.ts_ns))))
            .collect();
        Self { completed, blocked }
    }

    /// Moves the part of each block in progress at the start that has ended since (its whole
    /// time is in OFFCPU now) to the completed part.
    fn settle(&mut self, start: &BpfHashMap<MapData, u32, SwitchOut>) {
        let Self { completed, blocked } = self;
        blocked.retain(|tid, (out, before)| {
            let ongoing = start.get(tid, 0).is_ok_and(|now| now.ts_ns == out.ts_ns);
            if !ongoing {
                *completed.entry(out.key).or_default() += *before;
            }
            ongoing
        });
    }

    /// Takes the baseline off the end's totals (completed blocks and those in progress).
    fn subtract(&self, totals: &mut HashMap<OffcpuKey, u64>) {
        let parts = self.completed.iter().map(|(key, &ns)| (key, ns));
        let ongoing = self.blocked.values().map(|(out, ns)| (&out.key, *ns));
        for (key, before) in parts.chain(ongoing) {
            if let Some(ns) = totals.get_mut(key) {
                *ns = ns.saturating_sub(before);
            }
        }
    }
}

/// Off-CPU nanoseconds per key of the completed blocks since sampling started (the baseline of
/// each key taken off), for the eviction rounds.
fn completed_ns(
    counts: &PerCpuHashMap<MapData, OffcpuKey, OffcpuValue>,
    baseline: &HashMap<OffcpuKey, u64>,
) -> HashMap<OffcpuKey, u64> {
    let mut totals: HashMap<OffcpuKey, u64> = HashMap::new();
    for (key, per_cpu) in counts.iter().flatten() {
        *totals.entry(key).or_default() += per_cpu.iter().map(|v| v.total_ns).sum::<u64>();
    }
    for (key, ns) in totals.iter_mut() {
        *ns = ns.saturating_sub(baseline.get(key).copied().unwrap_or(0));
    }
    totals
}

/// The task of a top-list stack: the evicted keys' stacks (pid and tid 0; the idle tasks are
/// not traced) merge the threads that exited on the way.
fn task(stack: &Stack) -> String {
    if stack.pid == 0 && stack.tid == 0 {
        format!("{} [exited threads]", stack.comm)
    } else {
        format!("{} [pid {} tid {}]", stack.comm, stack.pid, stack.tid)
    }
}

/// Off-CPU nanoseconds per key: completed blocks, plus the part so far of the blocks still in
/// progress (a task asleep for the whole run is all cold, not absent; an exited one is not
/// blocked).
fn off_cpu_ns(
    counts: &PerCpuHashMap<MapData, OffcpuKey, OffcpuValue>,
    blocked: &BpfHashMap<MapData, u32, SwitchOut>,
) -> HashMap<OffcpuKey, u64> {
    let now = monotonic_ns();
    let mut totals: HashMap<OffcpuKey, u64> = HashMap::new();
    for (key, per_cpu) in counts.iter().flatten() {
        *totals.entry(key).or_default() += per_cpu.iter().map(|v| v.total_ns).sum::<u64>();
    }
    for (_, out) in blocked.iter().flatten() {
        if task_alive(out.key.tgid, out.key.pid) {
            *totals.entry(out.key).or_default() += now.saturating_sub(out.ts_ns);
        }
    }
    totals
}

/// Whether thread `pid` of `tgid` can still run. An exiting task's last switch-out leaves a
/// START entry no switch-in ever completes: counted as a block in progress, each task of a
/// fork loop would add the rest of the run to the cold half (13117 s off CPU in 8 s of a fork
/// loop's ~500 tasks/s).
fn task_alive(tgid: u32, pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{tgid}/task/{pid}/stat"))
        .ok()
        .and_then(|stat| crate::procfs::parse_stat(pid, &stat))
        // Z zombie, X dead.
        .is_some_and(|task| !matches!(task.state, 'Z' | 'X'))
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

/// The stack with every frame annotated `_[o]` (the comm stays shared with the on-CPU half).
fn mark_off_cpu(stack: &Stack) -> Stack {
    let mark = |frames: &[Rc<str>]| -> Vec<Rc<str>> {
        frames
            .iter()
            .map(|f| Rc::from(format!("{f}{OFFCPU_SUFFIX}")))
            .collect()
    };
    Stack {
        kernel: mark(&stack.kernel),
        user: mark(&stack.user),
        ..stack.clone()
    }
}

fn pct(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (part as f64 * 10_000.0 / total as f64).round() / 100.0
    }
}

fn scope(args: &ProfileArgs) -> String {
    let mut what = args.task.describe();
    if let Some(comm) = &args.sample.comm {
        what.push(format!("comm {comm}"));
    }
    if args.kthreads {
        what.push("kernel threads".into());
    }
    if what.is_empty() {
        "all tasks".into()
    } else {
        what.join(", ")
    }
}

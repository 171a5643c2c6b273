//! profile: sample what every CPU is running at a fixed frequency (perf event: CPU cycles where
//! the PMU allows, else the cpu-clock software timer), count samples in the kernel per task and
//! (kernel stack, user stack), print the hottest stacks, folded lines or a flame graph.
//!
//! kstacks is the same sampler preset for kernel threads (`--kthreads -K`), with output grouped
//! per thread: who among ksoftirqd/N, kworker/*, kswapd0, jbd2/*, rcu_* is busy, and where.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{IterableMap as _, MapData, PerCpuHashMap},
    programs::{
        PerfEvent,
        perf_event::{
            HardwareEvent, PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy,
            SoftwareEvent,
        },
    },
    util::online_cpus,
};
use clap::{Args, ValueEnum};
use serde_json::json;
use tracer_common::{
    profile::{IDLE_ANY, IDLE_EXCLUDE, IDLE_ONLY, ProfileConfig, SampleKey},
    stats::{STAT_EVENTS, STAT_USTACK_FALLBACK},
    ustack::UserRegsOffsets,
};

use crate::{
    attach::{self, Mechanism, Rung, Target},
    btf::KernelBtf,
    cgroup::CgroupArgs,
    filters,
    flame_svg::{self, SvgFile},
    loader::{self, StatsReader, objects},
    output::{self, Out, hms_now, with_schema},
    pprof::{PprofFile, PprofKind},
    session::{self, IntervalArgs},
    stacks::{self, Evictor, RawStack, Stack, StackLoss, StackMap, Symbols, UNWOUND_BASE, Unit},
    tools::{CommonArgs, StackKindArgs, StackOutputArgs, TaskArgs},
    unwind::UserStacks,
};

/// How often the stacks the unwinding thread found are counted here (the thread itself reads
/// the ring every 20 ms: it holds ~500 samples, 0.25 s of 997 Hz on two CPUs).
pub(super) const USER_STACKS_DRAIN: Duration = Duration::from_millis(100);

/// Sampling frequencies above this cost more than they tell (and perf caps them anyway).
const MAX_HZ: u64 = 10_000;

/// Which perf event drives the sampling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SampleEvent {
    /// The cpu-clock software timer: samples proportional to time on CPU, idle included.
    CpuClock,
    /// Hardware CPU cycles (not counted while a CPU is halted; in VMs the rate can drift).
    Cycles,
}

/// How user stacks are walked (perf's `--call-graph`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CallGraph {
    /// Copy 16 KiB of the user stack per sample and unwind it in userspace with the binaries'
    /// .eh_frame/.debug_frame tables (frame pointers where a binary has none): complete
    /// stacks for code built without frame pointers (most distributions' packages).
    Dwarf,
    /// Walk frame pointers in the kernel (bpf_get_stackid): cheapest, but code built without
    /// them shows one frame and [unknown] callers.
    Fp,
}

/// Options shared by profile and kstacks.
#[derive(Args, Clone, Debug)]
pub struct SampleArgs {
    /// Sample at this frequency per CPU, in Hz (1 to 10000).
    #[arg(
        short = 'F',
        long = "frequency",
        value_name = "HZ",
        default_value_t = 49
    )]
    pub frequency: u64,
    /// Sample only these CPUs: a list like 0,2-3 (default: all CPUs).
    #[arg(short = 'C', long = "cpu", value_name = "CPUS")]
    pub cpu: Option<String>,
    /// The perf event that triggers samples.
    #[arg(long, value_enum, default_value_t = SampleEvent::CpuClock)]
    pub event: SampleEvent,
    /// Only tasks with this comm: exact, or a prefix ending in '*' ('kworker/*').
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    #[command(flatten)]
    pub cgroup: CgroupArgs,
    #[command(flatten)]
    pub stacks: StackOutputArgs,
    #[command(flatten)]
    pub interval: IntervalArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Sample on-CPU stacks (kernel and user) at a frequency, counted in the kernel.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    profile -d 10                    all CPUs for 10 s, hottest stacks\n  \
    profile -p 1234 -U -F 99         user stacks of PID 1234 at 99 Hz\n  \
    profile --comm 'ksoftirqd/*' -K  what the softirq threads execute\n  \
    profile --softirq -K             everything run in softirq context (inline or ksoftirqd)\n  \
    profile -f -d 30 > out.folded    folded stacks for flamegraph.pl / inferno\n  \
    profile --svg cpu.svg -d 30      flame graph directly
  \
    profile --svg diff.svg -d 30 --diff-against before.folded   what changed since then\n  \
    profile --offcpu -p 1234 --svg hotcold.svg -d 10   on- and off-CPU time in one graph")]
pub struct ProfileArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Only kernel threads (PF_KTHREAD; the idle tasks are not counted as kernel threads).
    #[arg(long)]
    pub kthreads: bool,
    /// Only samples taken while the CPU was serving a softirq (inline or in ksoftirqd).
    #[arg(long)]
    pub softirq: bool,
    /// Only samples of the idle tasks (swapper/N).
    #[arg(long, conflicts_with = "no_idle")]
    pub idle: bool,
    /// Drop samples of the idle tasks.
    #[arg(long)]
    pub no_idle: bool,
    #[command(flatten)]
    pub stack_kind: StackKindArgs,
    /// How to walk user stacks: dwarf (unwind tables, complete without frame pointers) or fp
    /// (frame pointers only).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = CallGraph::Dwarf)]
    pub call_graph: CallGraph,
    /// How many stacks to print (text and JSON).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Hot/cold: add off-CPU time by stack (sched_switch, as offcputime) to the on-CPU samples,
    /// both as time (a sample counts 1/F s); off-CPU frames end in "_[o]" and are drawn blue.
    #[arg(short = 'O', long, conflicts_with_all = ["idle", "softirq", "diff_against"])]
    pub offcpu: bool,
    /// With --svg: draw the flame graph as a differential one against an earlier run's folded
    /// stacks (red grew, blue shrank; BEFORE scaled to this run's total).
    #[arg(long, value_name = "BEFORE.folded")]
    pub diff_against: Option<PathBuf>,
    #[command(flatten)]
    pub sample: SampleArgs,
}

/// Hot kernel stacks of kernel threads, grouped per thread.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    kstacks -d 10                    busiest kernel threads and their stacks\n  \
    kstacks --comm 'kworker/*' 1 5   kworkers, every second, 5 times\n  \
    kstacks --svg kthreads.svg -d 30  flame graph of kernel-thread CPU time")]
pub struct KstacksArgs {
    /// How many threads to print.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 10)]
    pub top: usize,
    /// How many stacks to print per thread.
    #[arg(long = "stacks-per-thread", value_name = "N", default_value_t = 3)]
    pub stacks: usize,
    #[command(flatten)]
    pub sample: SampleArgs,
}

/// The loaded and attached sampler.
pub(super) struct Sampler {
    /// Keeps the programs attached; dropping it detaches everything.
    ebpf: Ebpf,
    /// The sampling perf events (one per CPU) until `stop_sampling` detaches them.
    links: Vec<PerfEventLinkId>,
    /// When the perf events were attached: the first interval and `-d` count from here, so
    /// that the time reported is the time sampled (load and symbol setup take seconds under
    /// emulation).
    pub(super) started: Instant,
    counts: PerCpuHashMap<MapData, SampleKey, u64>,
    /// User stacks copied for unwinding here (`--call-graph dwarf`), and their counts.
    user_stacks: Option<UserStacks>,
    pub(super) stack_map: StackMap,
    pub(super) stats: StatsReader,
    pub(super) event: &'static str,
    pub(super) cpus: usize,
    pub(super) hz: u64,
}

pub(super) fn check_frequency(hz: u64) -> Result<()> {
    if hz == 0 || hz > MAX_HZ {
        usage_bail!(
            "-F {hz}: the sampling frequency must be 1 to {MAX_HZ} Hz (49 or 99 are typical)"
        );
    }
    Ok(())
}

impl Sampler {
    pub(super) fn start(
        tool: &str,
        sample: &SampleArgs,
        config: ProfileConfig,
        softirq: bool,
    ) -> Result<Self> {
        let btf = KernelBtf::new();
        let offsets = btf
            .task_offsets()
            .context("profile reads task flags (kernel threads) at offsets from kernel BTF")?;
        let cpus = online_cpus().map_err(|(what, e)| anyhow!("cannot list CPUs ({what}): {e}"))?;
        let cpus: Vec<u32> = match &sample.cpu {
            Some(list) => filters::cpu_list(list, &cpus).with_context(|| format!("-C {list}"))?,
            None => cpus,
        };
        sample.stacks.check()?;
        sample.cgroup.install(&btf)?;
        if !softirq && let Some(m) = sample.common.attach {
            let with_softirq = if tool == "profile" {
                ", unless --softirq (then choose one of tp_btf, raw_tp)"
            } else {
                ""
            };
            usage_bail!("--attach {m}: {tool} attaches only perf events{with_softirq}");
        }
        // Without the pt_regs layout only samples that hit user mode are copied; the others
        // walk frame pointers (and are counted as fallbacks).
        let user_regs = match btf.user_regs_offsets() {
            Ok(o) => o,
            Err(e) => {
                if sample.common.verbose {
                    errln!("{tool}: user registers of kernel-mode samples unknown ({e:#})");
                }
                UserRegsOffsets::UNSET
            }
        };
        let mut ebpf = loader::load(objects::PROFILE, |l| {
            l.override_global("CONFIG", &config, true);
            l.override_global("TASK_OFFSETS", &offsets, false);
            l.override_global("USER_REGS", &user_regs, false);
            l.map_max_entries("STACKS", sample.stacks.stack_storage_size);
        })?;
        if softirq {
            for (event, btf_prog, raw_prog) in [
                (
                    "softirq_entry",
                    "profile_softirq_entry_btf",
                    "profile_softirq_entry_raw",
                ),
                (
                    "softirq_exit",
                    "profile_softirq_exit_btf",
                    "profile_softirq_exit_raw",
                ),
            ] {
                let rungs = [
                    Rung {
                        mechanism: Mechanism::TpBtf,
                        program: btf_prog,
                    },
                    Rung {
                        mechanism: Mechanism::RawTp,
                        program: raw_prog,
                    },
                ];
                let target = Target::Tracepoint {
                    category: "irq",
                    event,
                };
                let force = sample
                    .common
                    .attach_for(tool, &[Mechanism::TpBtf, Mechanism::RawTp])?;
                let attachment = attach::attach(&mut ebpf, &btf, target, &rungs, force)?;
                if sample.common.verbose {
                    errln!("{tool}: {}", attachment.summary());
                }
            }
        }
        let program: &mut PerfEvent = ebpf
            .program_mut("profile_sample")
            .ok_or_else(|| anyhow!("profile_sample missing from the object (build bug)"))?
            .try_into()?;
        program.load().map_err(|e| {
            anyhow!(
                "cannot load the sampling program: {}",
                attach::describe(Mechanism::Tracepoint, &e)
            )
        })?;
        let (event, links) = attach_sampler(program, &cpus, sample.frequency, sample.event)?;
        let started = Instant::now();
        if sample.common.verbose {
            errln!(
                "{tool}: perf event {event} at {} Hz on CPUs {}",
                sample.frequency,
                cpus_text(&cpus)
            );
        }
        let counts = PerCpuHashMap::try_from(
            ebpf.take_map("COUNTS")
                .ok_or_else(|| anyhow!("COUNTS map missing (build bug)"))?,
        )?;
        let stack_map = StackMap::take(&mut ebpf, "STACKS")?;
        let user_stacks = if config.copy_user_stacks != 0 && config.user_stacks != 0 {
            Some(UserStacks::take(&mut ebpf, "USER_STACKS")?)
        } else {
            None
        };
        let stats = StatsReader::take(&mut ebpf)?;
        Ok(Self {
            ebpf,
            links,
            started,
            counts,
            user_stacks,
            stack_map,
            stats,
            event,
            cpus: cpus.len(),
            hz: sample.frequency,
        })
    }

    /// Detaches the sampling perf events, so that the last report and the end record's stats
    /// are read from counts that no longer change: every sample taken is in the last report
    /// (or was not stored: map_full). Disabling a perf event runs on its CPU with interrupts
    /// off, so no sample is half-counted once this returns.
    pub(super) fn stop_sampling(&mut self) -> Result<()> {
        if self.links.is_empty() {
            return Ok(());
        }
        let program: &mut PerfEvent = self
            .ebpf
            .program_mut("profile_sample")
            .ok_or_else(|| anyhow!("profile_sample missing from the object (build bug)"))?
            .try_into()?;
        for link in self.links.drain(..) {
            program
                .detach(link)
                .map_err(|e| anyhow!("cannot stop sampling: {e}"))?;
        }
        // Every copied stack still in the ring is unwound and counted before the last report.
        if let Some(user) = self.user_stacks.as_mut() {
            user.finish(&mut self.stack_map);
        }
        Ok(())
    }

    /// Totals per key so far (summed over CPUs), the user stacks waiting unwound first.
    pub(super) fn snapshot(&mut self) -> HashMap<SampleKey, u64> {
        self.drain_user_stacks();
        let mut totals = HashMap::new();
        for (key, per_cpu) in self.counts.iter().flatten() {
            *totals.entry(key).or_default() += per_cpu.iter().sum::<u64>();
        }
        if let Some(user) = &self.user_stacks {
            totals.extend(user.counts.iter().map(|(k, &v)| (*k, v)));
        }
        totals
    }

    /// Unwinds the user stacks the kernel copied since the last call.
    pub(super) fn drain_user_stacks(&mut self) {
        if let Some(user) = self.user_stacks.as_mut() {
            user.drain(&mut self.stack_map);
        }
    }

    /// Whether user stacks are unwound here (and must be drained often).
    pub(super) fn unwinds_user_stacks(&self) -> bool {
        self.user_stacks.is_some()
    }

    /// Symbolizes the user stacks of keys not seen yet (`warmed`: the (process, stack) pairs
    /// done), while their processes still exist.
    pub(super) fn prefetch_new_user_stacks(
        &self,
        symbols: &mut Symbols,
        warmed: &mut HashSet<(u32, i32)>,
    ) {
        let new: Vec<_> = self
            .keys()
            .into_iter()
            .filter(|key| key.ustack >= 0 && warmed.insert((key.tgid, key.ustack)))
            .map(|key| (key.tgid, self.stack_map.frames(key.ustack)))
            .collect();
        symbols.prefetch_users(new);
    }

    /// Every key counted so far: in the kernel's map and unwound here.
    pub(super) fn keys(&self) -> Vec<SampleKey> {
        let mut keys: Vec<SampleKey> = self.counts.keys().flatten().collect();
        if let Some(user) = &self.user_stacks {
            keys.extend(user.counts.keys().copied());
        }
        keys
    }

    /// After a report in interval mode: evicts the keys due (see `Evictor::evict`) from the
    /// kernel's map and from the unwound counts.
    pub(super) fn evict(
        &mut self,
        evictor: &mut Evictor,
        symbols: &mut Symbols,
        warmed: &mut HashSet<(u32, i32)>,
    ) -> Result<()> {
        let Sampler {
            counts,
            stack_map,
            user_stacks,
            ..
        } = self;
        let user = std::cell::RefCell::new(user_stacks);
        evictor.evict(
            stack_map,
            symbols,
            warmed,
            |key| {
                if key.ustack >= UNWOUND_BASE {
                    return Ok(user.borrow_mut().as_mut().and_then(|u| u.take_key(key)));
                }
                let held = loader::lookup_and_delete_per_cpu::<SampleKey, u64>(counts.map(), key)?;
                Ok(held.map(|per_cpu| per_cpu.iter().sum()))
            },
            || {
                let mut keys: Vec<SampleKey> = counts.keys().flatten().collect();
                if let Some(u) = user.borrow().as_ref() {
                    keys.extend(u.counts.keys().copied());
                }
                keys
            },
        )
    }

    fn raw(&self, key: &SampleKey, value: u64) -> RawStack {
        self.stack_map.raw(key, value)
    }

    /// The end record: the sampling perf events (and `more` attachments) as `attach`, the
    /// event, rate and CPU count, and `extra`.
    pub(super) fn end_record(
        &self,
        tool: &str,
        more: Vec<serde_json::Value>,
        extra: serde_json::Value,
    ) -> serde_json::Value {
        let stats = self.stats.read();
        let mut attach = vec![output::attach_json(
            &format!("{} at {} Hz on {} CPUs", self.event, self.hz, self.cpus),
            "perf_event",
        )];
        attach.extend(more);
        let fields = output::with_fields(
            json!({"event": self.event, "hz": self.hz, "cpus": self.cpus}),
            extra,
        );
        output::end_record(tool, attach, stats.map_full, stats.read_errors, fields)
    }

    pub(super) fn report_losses(&self, tool: &str) -> serde_json::Value {
        let stats = self.stats.read();
        let loss = StackLoss::read(&self.stats);
        loss.report(tool);
        if stats.map_full > 0 {
            errln!(
                "{tool}: {} samples not counted: the counts map was full",
                stats.map_full
            );
        }
        let fallback = self.stats.slot(STAT_USTACK_FALLBACK);
        if fallback > 0 {
            errln!(
                "{tool}: {fallback} user stacks walked with frame pointers instead of unwound \
                 (the copy ring was full, or the user registers were not found)"
            );
        }
        let user_stacks = self
            .user_stacks
            .as_ref()
            .map(|u| json!({"unwound": u.unwound, "no_frames": u.empty, "fallback_fp": fallback}));
        json!({"samples": self.stats.slot(STAT_EVENTS), "map_full": stats.map_full,
               "stacks_lost": loss.json(), "user_stacks": user_stacks})
    }
}

fn cpus_text(cpus: &[u32]) -> String {
    cpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Opens one sampling perf event per CPU; returns the event's name and the links.
pub(super) fn attach_sampler(
    program: &mut PerfEvent,
    cpus: &[u32],
    hz: u64,
    event: SampleEvent,
) -> Result<(&'static str, Vec<PerfEventLinkId>)> {
    let attach_all = |program: &mut PerfEvent,
                      config: PerfEventConfig|
     -> Result<Vec<PerfEventLinkId>, String> {
        let mut links = Vec::new();
        for &cpu in cpus {
            match program.attach(
                config,
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(hz),
                false,
            ) {
                Ok(link) => links.push(link),
                Err(e) => {
                    for link in links {
                        let _ = program.detach(link);
                    }
                    return Err(attach::describe(Mechanism::Tracepoint, &e));
                }
            }
        }
        Ok(links)
    };
    match event {
        SampleEvent::Cycles => {
            attach_all(program, PerfEventConfig::Hardware(HardwareEvent::CpuCycles))
                .map(|links| ("cycles", links))
                .map_err(|e| anyhow!("cannot sample CPU cycles here ({e}); use --event cpu-clock"))
        }
        SampleEvent::CpuClock => {
            attach_all(program, PerfEventConfig::Software(SoftwareEvent::CpuClock))
                .map(|links| ("cpu-clock", links))
                .map_err(|e| anyhow!("cannot open the cpu-clock perf event: {e}"))
        }
    }
}

/// Waits for the next interval tick, or forever without an interval.
async fn next_tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker.as_mut() {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}

fn ticker(interval: Option<Duration>) -> Option<tokio::time::Interval> {
    interval.map(|d| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    })
}

/// Runs until stopped, calling `report` with the counts of each interval (or of the whole run);
/// returns the totals of the whole run for the flame graph: the keys still in the map, and the
/// folded totals of the keys evicted on the way (kept only when `keep_totals`). Every second it
/// symbolizes the user stacks it has not seen yet, while their processes still exist
/// (short-lived processes would otherwise end up `[unknown]`); kernel frames wait until printed.
///
/// In interval mode, after each report the keys of exited threads and the keys idle for a few
/// rounds are deleted (see `Evictor`), with the stacks only they used and the cached symbols no
/// remaining key needs, so that the maps and memory follow recent activity. Without an
/// interval the end report needs every key.
async fn sample_loop(
    tool: &str,
    sampler: &mut Sampler,
    sample: &SampleArgs,
    symbols: &mut Symbols,
    keep_totals: bool,
    mut report: impl FnMut(&Sampler, &HashMap<SampleKey, u64>, Duration, &mut Symbols, &mut Out),
    out: &mut Out,
) -> Result<(HashMap<SampleKey, u64>, HashMap<String, u64>)> {
    let stop = session::stop_requested(
        sample
            .common
            .duration
            .duration
            .map(|d| d.saturating_sub(sampler.started.elapsed())),
    );
    tokio::pin!(stop);
    let mut ticker = ticker(sample.interval.interval);
    // The -p/-t targets' mappings now, and again each round (an exec is noted anew): so the
    // run still names their frames if they exit or exec before the report.
    let mut warm = tokio::time::interval(symbols.keep_targets());
    warm.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warmed: HashSet<(u32, i32)> = HashSet::new();
    let mut evictor = Evictor::new(keep_totals);
    let mut drain = tokio::time::interval(USER_STACKS_DRAIN);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut printed = 0u64;
    let mut since = sampler.started;
    loop {
        let stopped = tokio::select! {
            reason = &mut stop => { reason?; true }
            _ = next_tick(&mut ticker) => false,
            _ = drain.tick(), if sampler.unwinds_user_stacks() => {
                sampler.drain_user_stacks();
                continue;
            }
            _ = warm.tick() => {
                symbols.keep_targets();
                sampler.prefetch_new_user_stacks(symbols, &mut warmed);
                continue;
            }
        };
        let final_round = stopped || sample.interval.count.is_some_and(|c| printed + 1 >= c);
        if final_round {
            sampler.stop_sampling()?;
        }
        let elapsed = since.elapsed();
        since = Instant::now();
        let delta = evictor.round(sampler.snapshot());
        // The last partial interval is only printed if it saw something.
        if !stopped || sample.interval.interval.is_none() || !delta.is_empty() {
            report(sampler, &delta, elapsed, symbols, out);
        }
        out.flush();
        printed += 1;
        if final_round || out.closed() {
            break;
        }
        if sample.interval.interval.is_some() {
            sampler.evict(&mut evictor, symbols, &mut warmed)?;
        }
    }
    if sample.common.verbose && sample.interval.interval.is_some() {
        errln!(
            "{tool}: evicted {} keys of exited threads and {} keys idle for {} intervals",
            evictor.evicted_exited,
            evictor.evicted_idle,
            stacks::IDLE_ROUNDS
        );
    }
    Ok(evictor.totals())
}

pub(super) fn what_sampled(
    tool: &str,
    args: Option<&ProfileArgs>,
    sample: &SampleArgs,
    event: &str,
) -> String {
    let mut what = vec![];
    if let Some(args) = args {
        what.extend(args.task.describe());
        if args.kthreads {
            what.push("kernel threads".into());
        }
        if args.softirq {
            what.push("softirq context".into());
        }
        if args.idle {
            what.push("idle".into());
        }
        if args.no_idle {
            what.push("not idle".into());
        }
    } else {
        what.push("kernel threads".into());
    }
    if let Some(comm) = &sample.comm {
        what.push(format!("comm {comm}"));
    }
    let cpus = sample
        .cpu
        .as_ref()
        .map(|c| format!("CPU {c}"))
        .unwrap_or_else(|| "all CPUs".into());
    let filter = if what.is_empty() {
        String::new()
    } else {
        format!(", {}", what.join(", "))
    };
    format!("{tool}: {cpus}{filter}, {event} at {} Hz", sample.frequency)
}

pub async fn run(args: ProfileArgs) -> Result<()> {
    const TOOL: &str = "profile";
    let sample = &args.sample;
    check_frequency(sample.frequency)?;
    args.task.check()?;
    let config = ProfileConfig {
        tgid: args.task.pid.unwrap_or(0),
        tid: args.task.tid.unwrap_or(0),
        kernel_stacks: args.stack_kind.kernel_stacks(),
        user_stacks: args.stack_kind.user_stacks(),
        kthreads_only: args.kthreads.into(),
        softirq_only: args.softirq.into(),
        idle: match (args.idle, args.no_idle) {
            (true, _) => IDLE_ONLY,
            (_, true) => IDLE_EXCLUDE,
            _ => IDLE_ANY,
        },
        copy_user_stacks: (args.call_graph == CallGraph::Dwarf).into(),
        _reserved: [0; 2],
        comm: filters::comm_filter(sample.comm.as_deref())?,
    };
    if args.offcpu {
        return super::hotcold::run(&args, config).await;
    }
    run_sampler(
        TOOL,
        sample,
        config,
        Some(&args),
        |sampler, title, resolved, elapsed, out| {
            let total: u64 = resolved.iter().map(|r| r.value).sum();
            let shown = resolved.len().min(args.top);
            if sample.common.output.json {
                let list: Vec<_> = resolved[..shown]
                    .iter()
                    .map(|s| stacks::stack_json(s, total))
                    .collect();
                out.json(&with_schema(
                    TOOL,
                    json!({"type": "profile", "time": hms_now(),
                           "interval_ns": elapsed.as_nanos() as u64,
                           "event": sampler.event, "hz": sampler.hz, "samples": total,
                           "stacks_total": resolved.len(), "stacks": list}),
                ));
                return;
            }
            out.interval_header(
                sample.interval.interval.is_some() || sample.common.output.timestamp,
            );
            out.line(&format!(
                "{total} samples in {:.1}s ({} distinct stacks) — {}",
                elapsed.as_secs_f64(),
                resolved.len(),
                title
            ));
            out.line("");
            stacks::print_top(out, &resolved[..shown], total, Unit::Samples);
            if resolved.len() > shown {
                out.line(&format!(
                    "... {} more stacks (--top to show more, --folded for all)",
                    resolved.len() - shown
                ));
            }
        },
    )
    .await
}

/// What profile and kstacks share: start the sampler, print the banner, report every interval
/// (folded lines, or `render` with the merged stacks), then the flame graph, loss reports and
/// the JSON end record. `profile` is None for kstacks.
async fn run_sampler(
    tool: &str,
    sample: &SampleArgs,
    config: ProfileConfig,
    profile: Option<&ProfileArgs>,
    mut render: impl FnMut(&Sampler, &str, &[Stack], Duration, &mut Out),
) -> Result<()> {
    let svg = sample
        .stacks
        .svg
        .as_deref()
        .map(SvgFile::create)
        .transpose()?;
    let pprof = sample
        .stacks
        .pprof
        .as_deref()
        .map(PprofFile::create)
        .transpose()?;
    // The earlier run is read before sampling, so a bad file fails at once.
    let before = match profile.and_then(|p| p.diff_against.as_deref()) {
        Some(_) if svg.is_none() => {
            usage_bail!("--diff-against draws a differential flame graph: add --svg FILE")
        }
        Some(path) => Some((path, super::flamegraph::read_stacks(Some(path))?)),
        None => None,
    };
    let softirq = profile.is_some_and(|p| p.softirq);
    let mut sampler = Sampler::start(tool, sample, config, softirq)?;
    let title = what_sampled(tool, profile, sample, sampler.event);
    errln!(
        "Sampling {} at {} Hz ({})... Hit Ctrl-C to end.",
        title_scope(&title),
        sample.frequency,
        sampler.event
    );

    let mut symbols = Symbols::new().recording_origins(pprof.is_some());
    let mut out = Out::new();
    let (totals, evicted) = sample_loop(
        tool,
        &mut sampler,
        sample,
        &mut symbols,
        svg.is_some() || pprof.is_some(),
        |sampler, counts, elapsed, symbols, out| {
            let raws: Vec<RawStack> = counts.iter().map(|(k, &v)| sampler.raw(k, v)).collect();
            let resolved = stacks::merge(symbols.resolve_all(&raws));
            if sample.stacks.folded {
                for line in stacks::folded(&resolved, Unit::Samples) {
                    out.line(&line);
                }
                return;
            }
            render(sampler, &title, &resolved, elapsed, out);
        },
        &mut out,
    )
    .await?;
    let lines = if svg.is_some() || pprof.is_some() {
        let raws: Vec<RawStack> = totals.iter().map(|(k, &v)| sampler.raw(k, v)).collect();
        let resolved = symbols.resolve_all(&raws);
        stacks::folded_with(evicted, &resolved, Unit::Samples)
    } else {
        Vec::new()
    };
    if let Some(pprof) = pprof {
        pprof.write(
            &lines,
            PprofKind::Samples { hz: sampler.hz },
            &title,
            symbols.origins(),
        )?;
    }
    if let Some(svg) = svg {
        match &before {
            Some((path, before)) => {
                let diff = flame_svg::diff_lines(before, &lines)?;
                let title = format!(
                    "{title}: differential against {} (red grew, blue shrank)",
                    path.display()
                );
                svg.write(&diff, &title, "samples")?;
            }
            None => svg.write(&lines, &title, "samples")?,
        }
    }
    symbols.report_unknown(tool);
    let end = sampler.report_losses(tool);
    if sample.common.output.json {
        out.json(&sampler.end_record(tool, Vec::new(), json!({"stats": end})));
    }
    out.flush();
    Ok(())
}

/// "all CPUs, PID 5" out of the title, for the stderr banner.
fn title_scope(title: &str) -> &str {
    let scope = title.split_once(": ").map_or(title, |(_, rest)| rest);
    scope.rsplit_once(", ").map_or(scope, |(scope, _)| scope)
}

pub async fn run_kstacks(args: KstacksArgs) -> Result<()> {
    const TOOL: &str = "kstacks";
    let sample = &args.sample;
    check_frequency(sample.frequency)?;
    let config = ProfileConfig {
        kernel_stacks: 1,
        user_stacks: 0,
        kthreads_only: 1,
        idle: IDLE_EXCLUDE,
        comm: filters::comm_filter(sample.comm.as_deref())?,
        ..ProfileConfig::DEFAULT
    };
    run_sampler(
        TOOL,
        sample,
        config,
        None,
        |sampler, _title, resolved, elapsed, out| {
            print_threads(
                &args,
                sampler,
                resolved,
                elapsed,
                sample.common.output.json,
                out,
            );
        },
    )
    .await
}

/// Per kernel thread: samples, CPU %, share of all kernel-thread samples, top stacks.
fn print_threads(
    args: &KstacksArgs,
    sampler: &Sampler,
    resolved: &[Stack],
    elapsed: Duration,
    json: bool,
    out: &mut Out,
) {
    const TOOL: &str = "kstacks";
    // `resolved` is sorted largest first, so each thread's stacks stay in that order.
    let mut threads: HashMap<(u32, &str), (u64, Vec<&Stack>)> = HashMap::new();
    for stack in resolved {
        let entry = threads.entry((stack.tid, stack.comm.as_str())).or_default();
        entry.0 += stack.value;
        entry.1.push(stack);
    }
    let mut threads: Vec<_> = threads.into_iter().collect();
    threads.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(&b.0)));
    let total: u64 = resolved.iter().map(|r| r.value).sum();
    // One CPU fully busy for the whole interval = 100%.
    let possible = sampler.hz as f64 * elapsed.as_secs_f64();
    let cpu_pct = |samples: u64| {
        if possible > 0.0 {
            samples as f64 * 100.0 / possible
        } else {
            0.0
        }
    };
    let share = |samples: u64| {
        if total > 0 {
            samples as f64 * 100.0 / total as f64
        } else {
            0.0
        }
    };
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let shown = threads.len().min(args.top);
    if json {
        let list: Vec<_> = threads[..shown]
            .iter()
            .map(|((tid, comm), (samples, thread_stacks))| {
                let top: Vec<_> =
                    thread_stacks.iter().take(args.stacks).map(|s| stacks::stack_json(s, *samples)).collect();
                json!({"comm": comm, "pid": tid, "samples": samples, "cpu_pct": round(cpu_pct(*samples)),
                       "share_pct": round(share(*samples)), "stacks_total": thread_stacks.len(), "stacks": top})
            })
            .collect();
        out.json(&with_schema(
            TOOL,
            json!({"type": "kstacks", "time": hms_now(), "interval_ns": elapsed.as_nanos() as u64,
                   "event": sampler.event, "hz": sampler.hz, "cpus": sampler.cpus, "samples": total,
                   "threads_total": threads.len(), "threads": list}),
        ));
        return;
    }
    out.interval_header(
        args.sample.interval.interval.is_some() || args.sample.common.output.timestamp,
    );
    out.line(&format!(
        "{} kernel-thread samples in {:.1}s at {} Hz on {} CPU(s) ({}); CPU% is of one CPU",
        total,
        elapsed.as_secs_f64(),
        sampler.hz,
        sampler.cpus,
        sampler.event
    ));
    out.line("");
    for ((tid, comm), (samples, thread_stacks)) in &threads[..shown] {
        out.line(&format!(
            "{comm} [pid {tid}]  {samples} samples  {:.1}% CPU  {:.1}% of kernel-thread samples",
            cpu_pct(*samples),
            share(*samples)
        ));
        for stack in thread_stacks.iter().take(args.stacks) {
            out.line(&format!(
                "  {} samples ({:.1}%)",
                stack.value,
                stack.value as f64 * 100.0 / *samples as f64
            ));
            for frame in &stack.kernel {
                out.line(&format!("      {frame}"));
            }
        }
        if thread_stacks.len() > args.stacks {
            out.line(&format!(
                "  ... {} more stacks (--stacks-per-thread to show more)",
                thread_stacks.len() - args.stacks
            ));
        }
        out.line("");
    }
    if threads.len() > shown {
        out.line(&format!(
            "... {} more kernel threads (--top to show more)",
            threads.len() - shown
        ));
    }
    if threads.is_empty() {
        out.line("(no kernel thread was on a CPU during the samples)");
    }
}

//! softirq-top: a live per-CPU × softirq-vector view (time and entries per interval), who ran
//! the softirqs (inline in a task, inline from idle, or ksoftirqd, with ksoftirqd's own CPU
//! time), raise→entry latency and run-time histograms, a NET_RX drill-down per NAPI device,
//! and kernel stacks sampled only while a softirq is being served.
//!
//! The kernel keeps running totals in one per-CPU value; every interval we read it once and
//! print differences, so nothing is lost between reads and the hot path has no atomics.

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Read as _},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{
        PerfEvent,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use tracer_common::{
    hist::Log2Hist,
    softirq_top::{
        CTX_IDLE, CTX_KSOFTIRQD, CTX_NAMES, CTX_TASK, CpuState, NR_CTX, NR_SOFTIRQS, NapiKey,
        NapiStats, NetRxAction, STACK_TRACES_ENTRIES, STACK_VEC_KSOFTIRQD, SoftirqConfig, StackKey,
        VEC_NAMES, VEC_NET_RX,
    },
    task::PF_KTHREAD,
};

use crate::{
    attach::{self, Attachment, Mechanism, Rung, Target},
    btf::KernelBtf,
    filters,
    flame_svg::SvgFile,
    hist::Log2,
    loader::{self, StatsReader, objects, take},
    output::{Clock, Out, comm_str, hms_now, with_schema},
    pprof::{PprofFile, PprofKind},
    session::{self, IntervalArgs},
    stacks::{self, Frames, RawStack, StackLoss, StackMap, Symbols, Unit},
    tools::{
        CommonArgs,
        hardirqs::{self, HardirqProgram, IrqNames, RowKey, Totals},
    },
    tracefs,
};

const TOOL: &str = "softirq_top";

/// How vector rows are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortKey {
    /// Most time in the interval first.
    Time,
    /// Most entries in the interval first.
    Count,
    /// Kernel order (HI, TIMER, NET_TX, NET_RX, ...).
    Vec,
}

/// Live softirq view: per-CPU × vector time and counts, who ran them, NET_RX and hot stacks.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    softirq-top                      live view, 1 s refresh (q quits on a terminal)\n  \
    softirq-top 2 5                  every 2 s, 5 times\n  \
    softirq-top --vec NET_RX -C 0    only NET_RX, only CPU 0\n  \
    softirq-top --net                NET_RX drill-down: NAPI polls and packets per device\n  \
    softirq-top --latency -D         raise->entry latency and run-time histograms per vector\n  \
    softirq-top --stacks -d 10       hot kernel stacks while serving softirqs, for 10 s\n  \
    softirq-top --stacks --svg si.svg -d 10   flame graph of softirq context\n  \
    softirq-top --json 1 3           one JSON object per interval\n  \
    softirq-top --no-hardirqs        without the hard-IRQ line (irq_handler_* unprobed)")]
pub struct SoftirqTopArgs {
    /// Only these CPUs: a list like 0,2-3.
    #[arg(short = 'C', long = "cpu", value_name = "CPUS")]
    pub cpu: Option<String>,
    /// Only these vectors, e.g. NET_RX or NET_RX,TIMER (names as in /proc/softirqs).
    #[arg(long = "vec", value_name = "VECS")]
    pub vec: Option<String>,
    /// Order of the vector rows.
    #[arg(short = 's', long, value_enum, default_value_t = SortKey::Time)]
    pub sort: SortKey,
    /// Per-vector run-time histograms (BCC softirqs -d; -d is the duration here).
    #[arg(short = 'D', long = "dist")]
    pub dist: bool,
    /// Per-vector raise→entry latency histograms (irq:softirq_raise).
    #[arg(long)]
    pub latency: bool,
    /// Histograms in nanoseconds instead of microseconds.
    #[arg(short = 'N', long = "nanoseconds")]
    pub nanoseconds: bool,
    /// Time every softirq. By default a CPU serving more than 8192 softirqs a second times a
    /// random sample of them (enough for ~1-2 % accuracy) and estimates the rest, which cuts
    /// the cost per softirq under a flood by ~40 %; counts are always exact.
    #[arg(long)]
    pub exact: bool,
    /// NET_RX drill-down: NAPI polls, packets and budget use per device (napi:napi_poll),
    /// and net_rx_action() time.
    #[arg(long)]
    pub net: bool,
    /// Sample kernel stacks (cpu-clock) while a softirq is served or ksoftirqd runs; printed
    /// at the end.
    #[arg(long)]
    pub stacks: bool,
    /// With --stacks: samples per second per CPU.
    #[arg(short = 'F', long, value_name = "HZ", default_value_t = 997,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub frequency: u64,
    /// With --stacks: how many stacks to print.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 10)]
    pub top: usize,
    /// With --stacks: entries of the stack map (more means fewer hash collisions).
    #[arg(long, value_name = "N", default_value_t = STACK_TRACES_ENTRIES,
          value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub stack_storage_size: u32,
    /// With --stacks: print folded stacks (FlameGraph's input) instead of the top list.
    #[arg(short = 'f', long)]
    pub folded: bool,
    /// With --stacks: write a flame graph of softirq context to FILE.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// With --stacks: write the sampled stacks as a gzipped pprof profile to FILE (the vector
    /// as a `vec` label).
    #[arg(long, value_name = "FILE")]
    pub pprof: Option<PathBuf>,
    /// Plain interval blocks even on a terminal (no screen redraw).
    #[arg(short = 'b', long = "no-redraw", alias = "batch")]
    pub batch: bool,
    /// No hard-IRQ line in the header: irq_handler_entry/exit stay unprobed (its cost is one
    /// map update per hardware interrupt handler run).
    #[arg(long = "no-hardirqs")]
    pub no_hardirqs: bool,
    #[command(flatten)]
    pub interval: IntervalArgs,
    #[command(flatten)]
    pub cgroup: crate::cgroup::CgroupArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Parses "NET_RX,timer" into vector numbers.
fn parse_vecs(text: &str) -> Result<Vec<usize>> {
    let mut vecs = Vec::new();
    for name in text.split(',').map(str::trim) {
        let upper = name.to_ascii_uppercase();
        let upper = upper.strip_suffix("_SOFTIRQ").unwrap_or(&upper);
        let Some(v) = VEC_NAMES.iter().position(|n| *n == upper) else {
            usage_bail!(
                "unknown softirq vector '{name}' (known: {})",
                VEC_NAMES.join(", ")
            );
        };
        if !vecs.contains(&v) {
            vecs.push(v);
        }
    }
    Ok(vecs)
}

/// The ksoftirqd thread of each CPU, from /proc (kernel threads named ksoftirqd/N).
pub(crate) fn ksoftirqd_threads() -> BTreeMap<u32, u32> {
    crate::procfs::tasks()
        .filter(|t| t.flags & PF_KTHREAD != 0)
        .filter_map(|t| {
            Some((
                t.comm.strip_prefix("ksoftirqd/")?.parse::<u32>().ok()?,
                t.pid,
            ))
        })
        .collect()
}

/// Rungs for an irq:softirq_* / sched / napi tracepoint program family named `base`.
fn tp_rungs(base: &'static str, btf_ok: bool, tp_ok: bool) -> Vec<Rung<'static>> {
    let (btf, raw, tp) = match base {
        "softirq_entry" => ("softirq_entry_btf", "softirq_entry_raw", "softirq_entry_tp"),
        "softirq_exit" => ("softirq_exit_btf", "softirq_exit_raw", "softirq_exit_tp"),
        "softirq_raise" => ("softirq_raise_btf", "softirq_raise_raw", "softirq_raise_tp"),
        "sched_switch" => ("sched_switch_btf", "sched_switch_raw", "sched_switch_tp"),
        _ => ("napi_poll_btf", "napi_poll_raw", "napi_poll_tp"),
    };
    let mut rungs = Vec::new();
    if btf_ok {
        rungs.push(Rung {
            mechanism: Mechanism::TpBtf,
            program: btf,
        });
        rungs.push(Rung {
            mechanism: Mechanism::RawTp,
            program: raw,
        });
    }
    if tp_ok {
        rungs.push(Rung {
            mechanism: Mechanism::Tracepoint,
            program: tp,
        });
    }
    rungs
}

/// Which rungs this kernel can feed for the irq:softirq_* tracepoints.
pub(crate) struct Feeds {
    /// Kernel BTF is there: tp_btf and raw_tp.
    pub btf_ok: bool,
    /// entry and exit records have `vec` at the same offset: the classic tracepoint.
    pub tp_ok: bool,
    pub tp_vec_offset: u32,
}

impl Feeds {
    pub(crate) fn probe(btf: &KernelBtf) -> Self {
        let vec_offset = tracefs::field_offset("irq", "softirq_entry", "vec");
        let exit_offset = tracefs::field_offset("irq", "softirq_exit", "vec");
        Self {
            btf_ok: btf.available(),
            tp_ok: matches!((&vec_offset, &exit_offset), (Ok(a), Ok(b)) if a == b),
            tp_vec_offset: *vec_offset.as_ref().unwrap_or(&8),
        }
    }
}

/// Loads the softirq object; `stacks` (stack map size) and `net` size the optional maps.
pub(crate) fn load_object(config: &SoftirqConfig, stacks: Option<u32>, net: bool) -> Result<Ebpf> {
    loader::load(objects::SOFTIRQ_TOP, |l| {
        l.override_global("CONFIG", config, true);
        // Maps of features not asked for are kept tiny (a stack map preallocates its entries).
        match stacks {
            Some(size) => {
                l.map_max_entries("STACKS", size);
            }
            None => {
                l.map_max_entries("STACKS", 1);
                l.map_max_entries("STACK_COUNTS", 1);
            }
        }
        if !net {
            l.map_max_entries("NAPI", 1);
        }
    })
}

/// Tells each CPU's state which pid its ksoftirqd has, before anything runs.
pub(crate) fn init_cpu_state(
    ebpf: &mut Ebpf,
) -> Result<(PerCpuArray<MapData, CpuState>, BTreeMap<u32, u32>)> {
    let ksoftirqd = ksoftirqd_threads();
    let mut state: PerCpuArray<MapData, CpuState> = take(ebpf, "CPU_STATE")?;
    let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| anyhow!("cannot count CPUs: {e}"))?;
    let initial: Vec<CpuState> = (0..nr_cpus as u32)
        .map(|cpu| CpuState {
            ksoftirqd_pid: ksoftirqd.get(&cpu).copied().unwrap_or(0),
            // Any nonzero xorshift seed; a different one per CPU.
            rng: 0x9e37_79b9 ^ cpu.wrapping_mul(0x85eb_ca6b) | 1,
            ..CpuState::ZERO
        })
        .collect();
    state
        .set(0, PerCpuValues::try_from(initial)?, 0)
        .context("cannot initialise CPU_STATE")?;
    Ok((state, ksoftirqd))
}

/// One tracepoint of the softirq object through the ladder (`force`: one rung only).
pub(crate) fn attach_tp(
    ebpf: &mut Ebpf,
    btf: &KernelBtf,
    (category, event): (&'static str, &'static str),
    btf_ok: bool,
    tp_ok: bool,
    force: Option<Mechanism>,
) -> Result<Attachment> {
    let rungs = tp_rungs(event, btf_ok, tp_ok);
    if rungs.is_empty() {
        bail!("cannot attach to {category}:{event}: no kernel BTF and no tracefs format for it");
    }
    Ok(attach::attach(
        ebpf,
        btf,
        Target::Tracepoint { category, event },
        &rungs,
        force,
    )?)
}

/// The programs every softirq view needs: time and entries per CPU × vector, and ksoftirqd's
/// own time. ksoftirqd accounting first, then exit before entry: no entry is left without its
/// exit.
pub(crate) fn attach_core(
    ebpf: &mut Ebpf,
    btf: &KernelBtf,
    force: Option<Mechanism>,
) -> Result<Vec<Attachment>> {
    let feeds = Feeds::probe(btf);
    let mut done = Vec::new();
    for (event, tp_ok) in [
        (("sched", "sched_switch"), true),
        (("irq", "softirq_exit"), feeds.tp_ok),
        (("irq", "softirq_entry"), feeds.tp_ok),
    ] {
        done.push(attach_tp(ebpf, btf, event, feeds.btf_ok, tp_ok, force)?);
    }
    Ok(done)
}

/// Where the NET_RX drill-down's net_rx_action() time comes from.
#[derive(Clone, Debug)]
enum NetRxSource {
    /// fentry/fexit or kprobe/kretprobe on net_rx_action().
    Function(Mechanism),
    /// The NET_RX softirq's entry/exit time (net_rx_action is NET_RX's handler), and why.
    Softirq(String),
}

/// The maps a run reads (the optional ones only when their feature is on).
pub(crate) struct Maps {
    pub state: PerCpuArray<MapData, CpuState>,
    pub runtime: Option<PerCpuArray<MapData, Log2Hist>>,
    pub latency: Option<PerCpuArray<MapData, Log2Hist>>,
    pub napi: Option<PerCpuHashMap<MapData, NapiKey, NapiStats>>,
    pub net_rx_action: Option<PerCpuArray<MapData, NetRxAction>>,
}

/// Cumulative counters at one moment.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    mono_ns: u64,
    /// Index = CPU id (possible CPUs).
    pub cpus: Vec<CpuState>,
    /// Run-time histogram per vector (with `Maps::runtime`).
    pub runtime: Vec<Log2>,
    latency: Vec<Log2>,
    napi: BTreeMap<String, NapiStats>,
    net_rx_action: Option<(u64, u64, Log2)>,
}

/// Reads the running totals of the `selected` CPUs (the maps are never cleared).
pub(crate) struct Reader<'a> {
    pub maps: &'a Maps,
    pub selected: &'a [u32],
}

impl Reader<'_> {
    fn hists(&self, map: &Option<PerCpuArray<MapData, Log2Hist>>) -> Vec<Log2> {
        let Some(map) = map else { return Vec::new() };
        (0..NR_SOFTIRQS as u32)
            .map(|v| match map.get(&v, 0) {
                Ok(values) => Log2::from_per_cpu(self.pick(&values)),
                Err(_) => Log2::new(),
            })
            .collect()
    }

    fn pick<'v, T: aya::Pod>(
        &self,
        values: &'v PerCpuValues<T>,
    ) -> impl Iterator<Item = &'v T> + use<'v, T> {
        let selected = self.selected.to_vec();
        values
            .iter()
            .enumerate()
            .filter(move |(cpu, _)| selected.contains(&(*cpu as u32)))
            .map(|(_, v)| v)
    }

    pub(crate) fn read(&self) -> Result<Snapshot> {
        let mono_ns = Clock::now_monotonic_ns();
        let cpus = self
            .maps
            .state
            .get(&0, 0)
            .context("cannot read CPU_STATE")?
            .iter()
            .copied()
            .collect();
        let mut napi = BTreeMap::new();
        if let Some(map) = &self.maps.napi {
            for (key, values) in map.iter().flatten() {
                let total: &mut NapiStats = napi.entry(comm_str(&key.dev)).or_default();
                for v in self.pick(&values) {
                    total.polls += v.polls;
                    total.work += v.work;
                    total.budget += v.budget;
                    total.exhausted += v.exhausted;
                }
            }
        }
        let net_rx_action = self
            .maps
            .net_rx_action
            .as_ref()
            .and_then(|map| map.get(&0, 0).ok())
            .map(|values| {
                let mut count = 0;
                let mut time = 0;
                let mut hist = Log2::new();
                for v in self.pick(&values) {
                    count += v.count;
                    time += v.time_ns;
                    hist.merge(&Log2::from_per_cpu([&v.hist]));
                }
                (count, time, hist)
            });
        Ok(Snapshot {
            mono_ns,
            cpus,
            runtime: self.hists(&self.maps.runtime),
            latency: self.hists(&self.maps.latency),
            napi,
            net_rx_action,
        })
    }
}

/// One vector (or the total) on one CPU in one interval.
#[derive(Clone, Copy, Debug, Default)]
struct Cell {
    count: [u64; NR_CTX],
    time_ns: [u64; NR_CTX],
}

impl Cell {
    fn count(&self) -> u64 {
        self.count.iter().sum()
    }
    fn time_ns(&self) -> u64 {
        self.time_ns.iter().sum()
    }
    fn add(&mut self, other: &Cell) {
        for c in 0..NR_CTX {
            self.count[c] += other.count[c];
            self.time_ns[c] += other.time_ns[c];
        }
    }
}

/// What one interval showed, before rendering.
struct Interval {
    seconds: f64,
    /// Softirqs served on the selected CPUs, and those of them not timed (sampled out).
    served: u64,
    untimed: u64,
    cpus: Vec<u32>,
    vecs: Vec<usize>,
    /// [vec][i] for cpus[i].
    cells: Vec<Vec<Cell>>,
    ksoftirqd: Vec<KsoftirqdRow>,
    runtime: Vec<Log2>,
    latency: Vec<Log2>,
    napi: Vec<(String, NapiStats)>,
    net_rx_action: Option<(u64, u64, Log2)>,
}

struct KsoftirqdRow {
    cpu: u32,
    pid: u32,
    run_ns: u64,
    runs: u64,
    softirq_ns: u64,
    /// Vector that took most of its softirq time, and that time.
    top_vec: Option<(usize, u64)>,
}

fn pct(ns: u64, seconds: f64, cpus: usize) -> f64 {
    if seconds <= 0.0 || cpus == 0 {
        0.0
    } else {
        ns as f64 / 1e9 / (seconds * cpus as f64) * 100.0
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Handlers named in the text header's hard-IRQ line (JSON lists `HARDIRQ_TOP_JSON`).
const HARDIRQ_TOP_TEXT: usize = 3;
const HARDIRQ_TOP_JSON: usize = 5;

/// The header's hard-IRQ line: time in hard IRQ handlers per CPU in the interval, and the
/// handlers that took most of it (hardirqs' program, read at the same ticks).
struct HardIrqLine {
    /// (CPU, runs, ns) for each selected CPU.
    per_cpu: Vec<(u32, u64, u64)>,
    /// (IRQ, handler names, runs, ns), most time first.
    top: Vec<(u32, String, u64, u64)>,
}

impl HardIrqLine {
    fn new(
        cpus: &[u32],
        now: &BTreeMap<RowKey, Totals>,
        before: &BTreeMap<RowKey, Totals>,
    ) -> Self {
        let rows = hardirqs::deltas(now, before);
        let per_cpu = cpus
            .iter()
            .map(|&cpu| {
                rows.iter()
                    .filter(|((_, c), _)| *c == Some(cpu))
                    .fold((cpu, 0, 0), |(cpu, n, ns), (_, t)| {
                        (cpu, n + t.count, ns + t.time_ns)
                    })
            })
            .collect();
        let mut by_irq: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for ((irq, _), t) in &rows {
            let e = by_irq.entry(*irq).or_default();
            e.0 += t.count;
            e.1 += t.time_ns;
        }
        let mut top: Vec<(u32, u64, u64)> =
            by_irq.into_iter().map(|(i, (n, t))| (i, n, t)).collect();
        top.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        top.truncate(HARDIRQ_TOP_JSON);
        let names = IrqNames::read();
        let top = top
            .into_iter()
            .map(|(irq, n, t)| (irq, names.name(irq), n, t))
            .collect();
        Self { per_cpu, top }
    }

    fn total_ns(&self) -> u64 {
        self.per_cpu.iter().map(|c| c.2).sum()
    }

    fn share(&self, ns: u64) -> f64 {
        ns as f64 / self.total_ns().max(1) as f64 * 100.0
    }

    /// "hard IRQ 0.81% of CPU time (CPU0 1.20%, CPU1 0.42%); top: virtio2-req.0 [IRQ 25] 71%, ..."
    fn text(&self, seconds: f64) -> String {
        let cpus: Vec<String> = self
            .per_cpu
            .iter()
            .map(|(cpu, _, ns)| format!("CPU{cpu} {:.2}%", pct(*ns, seconds, 1)))
            .collect();
        let top: Vec<String> = self
            .top
            .iter()
            .take(HARDIRQ_TOP_TEXT)
            .map(|(irq, name, _, ns)| format!("{name} [IRQ {irq}] {:.0}%", self.share(*ns)))
            .collect();
        format!(
            "hard IRQ {:.2}% of CPU time ({}); top: {}",
            pct(self.total_ns(), seconds, self.per_cpu.len()),
            cpus.join(", "),
            if top.is_empty() {
                "-".into()
            } else {
                top.join(", ")
            }
        )
    }

    fn json(&self, seconds: f64) -> Value {
        let per_cpu: Vec<Value> = self
            .per_cpu
            .iter()
            .map(|(cpu, n, ns)| {
                json!({"cpu": cpu, "count": n, "time_us": us(*ns), "pct": round2(pct(*ns, seconds, 1))})
            })
            .collect();
        let top: Vec<Value> = self
            .top
            .iter()
            .map(|(irq, name, n, ns)| {
                json!({"irq": irq, "name": name, "count": n, "time_us": us(*ns),
                       "share_pct": round2(self.share(*ns))})
            })
            .collect();
        json!({"time_us": us(self.total_ns()), "pct": round2(pct(self.total_ns(), seconds, self.per_cpu.len())),
               "per_cpu": per_cpu, "top": top})
    }
}

/// hardirqs' program for the hard-IRQ line, unless `--no-hardirqs`. Where it cannot attach
/// (or `--attach tracepoint` asks for a mechanism it has no program for) softirq-top runs
/// without the line and says why.
fn attach_hardirqs(
    args: &SoftirqTopArgs,
    btf: &KernelBtf,
    force: Option<Mechanism>,
) -> Option<HardirqProgram> {
    if args.no_hardirqs {
        return None;
    }
    let why = match force {
        Some(m) if !hardirqs::LADDER.contains(&m) => {
            format!("irq_handler_entry/exit have no {m} program here (choose tp_btf or raw_tp)")
        }
        _ => match HardirqProgram::attach(btf, force, false, false) {
            Ok(program) => {
                if args.common.verbose {
                    for a in [&program.entry, &program.exit] {
                        errln!("{TOOL}: {}", a.summary());
                    }
                }
                return Some(program);
            }
            Err(e) => format!("{e:#}"),
        },
    };
    errln!("{TOOL}: no hard-IRQ line: {why} (--no-hardirqs leaves it out)");
    None
}

fn compute(args: &SoftirqTopArgs, ctx: &RunContext, now: &Snapshot, before: &Snapshot) -> Interval {
    let seconds = now.mono_ns.saturating_sub(before.mono_ns) as f64 / 1e9;
    let cell = |vec: usize, cpu: u32| -> Cell {
        let (Some(a), Some(b)) = (now.cpus.get(cpu as usize), before.cpus.get(cpu as usize)) else {
            return Cell::default();
        };
        let mut c = Cell::default();
        for x in 0..NR_CTX {
            c.count[x] = a.vecs[vec].count[x].saturating_sub(b.vecs[vec].count[x]);
            c.time_ns[x] = a.vecs[vec].time_ns[x].saturating_sub(b.vecs[vec].time_ns[x]);
        }
        c
    };
    let all_cells: Vec<Vec<Cell>> = (0..NR_SOFTIRQS)
        .map(|v| ctx.cpus.iter().map(|&cpu| cell(v, cpu)).collect())
        .collect();
    let mut vecs = ctx.vecs.clone();
    let total = |v: usize| -> (u64, u64) {
        let mut c = Cell::default();
        all_cells[v].iter().for_each(|x| c.add(x));
        (c.time_ns(), c.count())
    };
    match args.sort {
        SortKey::Time => vecs.sort_by(|a, b| total(*b).0.cmp(&total(*a).0).then(a.cmp(b))),
        SortKey::Count => vecs.sort_by(|a, b| total(*b).1.cmp(&total(*a).1).then(a.cmp(b))),
        SortKey::Vec => vecs.sort_unstable(),
    }
    let cells = vecs.iter().map(|&v| all_cells[v].clone()).collect();
    let ksoftirqd = ctx
        .cpus
        .iter()
        .filter_map(|&cpu| {
            let pid = *ctx.ksoftirqd.get(&cpu)?;
            let (a, b) = (now.cpus.get(cpu as usize)?, before.cpus.get(cpu as usize)?);
            let i = ctx.cpus.iter().position(|&c| c == cpu)?;
            let softirq_ns: u64 = all_cells
                .iter()
                .map(|row| row[i].time_ns[CTX_KSOFTIRQD])
                .sum();
            let top_vec = (0..NR_SOFTIRQS)
                .map(|v| (v, all_cells[v][i].time_ns[CTX_KSOFTIRQD]))
                .filter(|(_, t)| *t > 0)
                .max_by_key(|(_, t)| *t);
            Some(KsoftirqdRow {
                cpu,
                pid,
                run_ns: a.ksoftirqd_ns.saturating_sub(b.ksoftirqd_ns),
                runs: a.ksoftirqd_runs.saturating_sub(b.ksoftirqd_runs),
                softirq_ns,
                top_vec,
            })
        })
        .collect();
    let hist_delta = |a: &[Log2], b: &[Log2]| -> Vec<Log2> {
        a.iter()
            .enumerate()
            .map(|(i, h)| b.get(i).map(|e| h.since(e)).unwrap_or_else(|| h.clone()))
            .collect()
    };
    let mut napi: Vec<(String, NapiStats)> = now
        .napi
        .iter()
        .map(|(dev, s)| {
            let e = before.napi.get(dev).copied().unwrap_or_default();
            let d = NapiStats {
                polls: s.polls.saturating_sub(e.polls),
                work: s.work.saturating_sub(e.work),
                budget: s.budget.saturating_sub(e.budget),
                exhausted: s.exhausted.saturating_sub(e.exhausted),
            };
            (dev.clone(), d)
        })
        .filter(|(_, d)| d.polls > 0)
        .collect();
    napi.sort_by(|a, b| {
        b.1.work
            .cmp(&a.1.work)
            .then(b.1.polls.cmp(&a.1.polls))
            .then(a.0.cmp(&b.0))
    });
    let net_rx_action = match (&now.net_rx_action, &before.net_rx_action) {
        (Some(a), Some(b)) => Some((
            a.0.saturating_sub(b.0),
            a.1.saturating_sub(b.1),
            a.2.since(&b.2),
        )),
        _ => None,
    };
    let (mut served, mut untimed) = (0, 0);
    for &cpu in &ctx.cpus {
        if let (Some(a), Some(b)) = (now.cpus.get(cpu as usize), before.cpus.get(cpu as usize)) {
            served += (0..NR_SOFTIRQS)
                .flat_map(|v| (0..NR_CTX).map(move |x| (v, x)))
                .map(|(v, x)| a.vecs[v].count[x].saturating_sub(b.vecs[v].count[x]))
                .sum::<u64>();
            untimed += a.untimed.saturating_sub(b.untimed);
        }
    }
    Interval {
        seconds,
        served,
        untimed,
        cpus: ctx.cpus.clone(),
        vecs,
        cells,
        ksoftirqd,
        runtime: hist_delta(&now.runtime, &before.runtime),
        latency: hist_delta(&now.latency, &before.latency),
        napi,
        net_rx_action,
    }
}

/// Everything fixed for a run.
struct RunContext {
    cpus: Vec<u32>,
    vecs: Vec<usize>,
    ksoftirqd: BTreeMap<u32, u32>,
    attach: String,
    net_source: Option<NetRxSource>,
    hist_unit: &'static str,
}

impl Interval {
    fn row_total(&self, row: usize) -> Cell {
        let mut c = Cell::default();
        self.cells[row].iter().for_each(|x| c.add(x));
        c
    }

    fn cpu_total(&self, i: usize) -> Cell {
        let mut c = Cell::default();
        self.cells.iter().for_each(|row| c.add(&row[i]));
        c
    }

    fn grand_total(&self) -> Cell {
        let mut c = Cell::default();
        (0..self.cells.len()).for_each(|r| c.add(&self.row_total(r)));
        c
    }

    /// NET_RX time/count over the selected CPUs (even if --vec hides it).
    fn net_rx(&self, all: &Snapshot, before: &Snapshot) -> (u64, u64) {
        let mut time = 0;
        let mut count = 0;
        for &cpu in &self.cpus {
            if let (Some(a), Some(b)) = (all.cpus.get(cpu as usize), before.cpus.get(cpu as usize))
            {
                let (a, b) = (&a.vecs[VEC_NET_RX as usize], &b.vecs[VEC_NET_RX as usize]);
                for x in 0..NR_CTX {
                    time += a.time_ns[x].saturating_sub(b.time_ns[x]);
                    count += a.count[x].saturating_sub(b.count[x]);
                }
            }
        }
        (time, count)
    }
}

fn us(ns: u64) -> u64 {
    ns / 1000
}

impl Interval {
    /// Percent of the softirqs whose time was measured (the rest estimated from them).
    fn timed_pct(&self) -> f64 {
        if self.served == 0 {
            100.0
        } else {
            let timed = self.served.saturating_sub(self.untimed);
            timed as f64 / self.served as f64 * 100.0
        }
    }

    /// How the times were obtained, for the header.
    fn timing(&self) -> String {
        if self.untimed == 0 {
            "every softirq timed".into()
        } else {
            format!(
                "times estimated from {:.1}% of softirqs (--exact: all)",
                self.timed_pct()
            )
        }
    }
}

fn render_text(
    ctx: &RunContext,
    iv: &Interval,
    net_rx: (u64, u64),
    hard: Option<&HardIrqLine>,
    live: bool,
) -> String {
    let mut s = String::new();
    let n = iv.cpus.len();
    let total = iv.grand_total();
    let mut head = format!(
        "softirq-top  {}  interval {:.2}s  CPUs {}  softirq {:.1}% of CPU time  [{}; {}]",
        hms_now(),
        iv.seconds,
        filters::describe_cpus(&iv.cpus),
        pct(total.time_ns(), iv.seconds, n),
        ctx.attach,
        iv.timing()
    );
    if live {
        head.push_str("  (q quits)");
    }
    s.push_str(&head);
    s.push('\n');
    if let Some(hard) = hard {
        s.push_str(&hard.text(iv.seconds));
        s.push('\n');
    }
    // The matrix: one row per vector; totals first, then each CPU's % and entries.
    let mut h = format!(
        "{:<9} {:>9} {:>11} {:>6} {:>8}",
        "VECTOR", "COUNT", "TIME(us)", "%CPU", "AVG(us)"
    );
    for cpu in &iv.cpus {
        h.push_str(&format!(
            " |{:>6} {:>8}",
            format!("CPU{cpu}%"),
            format!("CPU{cpu}#")
        ));
    }
    s.push_str(&h);
    s.push('\n');
    let row = |name: &str, c: &Cell, per_cpu: Vec<Cell>| -> String {
        let avg = if c.count() > 0 {
            c.time_ns() as f64 / c.count() as f64 / 1000.0
        } else {
            0.0
        };
        let mut line = format!(
            "{:<9} {:>9} {:>11} {:>6.1} {:>8.1}",
            name,
            c.count(),
            us(c.time_ns()),
            pct(c.time_ns(), iv.seconds, n),
            avg
        );
        for pc in per_cpu {
            line.push_str(&format!(
                " |{:>6.1} {:>8}",
                pct(pc.time_ns(), iv.seconds, 1),
                pc.count()
            ));
        }
        line
    };
    for (r, &v) in iv.vecs.iter().enumerate() {
        s.push_str(&row(VEC_NAMES[v], &iv.row_total(r), iv.cells[r].clone()));
        s.push('\n');
    }
    s.push_str(&row(
        "TOTAL",
        &total,
        (0..n).map(|i| iv.cpu_total(i)).collect(),
    ));
    s.push('\n');

    // Who ran them.
    s.push('\n');
    s.push_str(&format!(
        "{:<24} {:>11} {:>6} {:>9}   {}\n",
        "RUN BY", "TIME(us)", "%CPU", "COUNT", "TOP VECTORS"
    ));
    let labels = ["inline, in a task", "inline, from idle", "ksoftirqd"];
    for (x, label) in labels.iter().enumerate() {
        let time: u64 = total.time_ns[x];
        let count: u64 = total.count[x];
        let mut tops: Vec<(usize, u64)> = iv
            .vecs
            .iter()
            .enumerate()
            .map(|(r, &v)| (v, iv.row_total(r).time_ns[x]))
            .filter(|(_, t)| *t > 0)
            .collect();
        tops.sort_by_key(|t| std::cmp::Reverse(t.1));
        let tops: Vec<String> = tops
            .iter()
            .take(3)
            .map(|(v, t)| format!("{} {:.1}%", VEC_NAMES[*v], pct(*t, iv.seconds, n)))
            .collect();
        s.push_str(&format!(
            "{:<24} {:>11} {:>6.1} {:>9}   {}\n",
            label,
            us(time),
            pct(time, iv.seconds, n),
            count,
            tops.join(", ")
        ));
    }
    if !iv.ksoftirqd.is_empty() {
        s.push_str(&format!(
            "{:<14} {:>7} {:>6} {:>8} {:>10}   {}\n",
            "THREAD", "PID", "CPU%", "SOFTIRQ%", "RUNS", "MOSTLY"
        ));
        for k in &iv.ksoftirqd {
            let mostly = k
                .top_vec
                .map(|(v, t)| format!("{} {:.1}%", VEC_NAMES[v], pct(t, iv.seconds, 1)))
                .unwrap_or_else(|| "-".into());
            s.push_str(&format!(
                "{:<14} {:>7} {:>6.1} {:>8.1} {:>10}   {}\n",
                format!("ksoftirqd/{}", k.cpu),
                k.pid,
                pct(k.run_ns, iv.seconds, 1),
                pct(k.softirq_ns, iv.seconds, 1),
                k.runs,
                mostly
            ));
        }
    }

    if let Some(source) = &ctx.net_source {
        s.push('\n');
        match (source, &iv.net_rx_action) {
            (NetRxSource::Function(m), Some((count, time, _))) => s.push_str(&format!(
                "NET_RX drill-down: net_rx_action() via {m}: {count} runs, {} us, {:.1}% CPU\n",
                us(*time),
                pct(*time, iv.seconds, n)
            )),
            (NetRxSource::Softirq(_), _) | (NetRxSource::Function(_), None) => {
                s.push_str(&format!(
                    "NET_RX drill-down: net_rx_action() time = NET_RX softirq entry/exit (no fexit or \
                     kretprobe on this kernel; -v says why): {} runs, {} us, {:.1}% CPU\n",
                    net_rx.1,
                    us(net_rx.0),
                    pct(net_rx.0, iv.seconds, n)
                ));
            }
        }
        s.push_str(&format!(
            "{:<18} {:>9} {:>10} {:>9} {:>8} {:>10}\n",
            "DEVICE", "POLLS", "PACKETS", "PKTS/POLL", "BUDGET", "EXHAUSTED"
        ));
        for (dev, d) in &iv.napi {
            let per_poll = if d.polls > 0 {
                d.work as f64 / d.polls as f64
            } else {
                0.0
            };
            let budget = d.budget.checked_div(d.polls).unwrap_or(0);
            s.push_str(&format!(
                "{:<18} {:>9} {:>10} {:>9.1} {:>8} {:>10}\n",
                device_label(dev),
                d.polls,
                d.work,
                per_poll,
                budget,
                d.exhausted
            ));
        }
        if iv.napi.is_empty() {
            s.push_str("(no NAPI polls in this interval)\n");
        }
    }

    for (title, hists) in [
        ("run time", &iv.runtime),
        ("raise -> entry latency", &iv.latency),
    ] {
        for &v in &iv.vecs {
            if let Some(h) = hists.get(v)
                && h.count() > 0
            {
                s.push_str(&format!("\n{} {}:\n", VEC_NAMES[v], title));
                s.push_str(&h.render(ctx.hist_unit));
            }
        }
    }
    s
}

fn device_label(dev: &str) -> String {
    if dev == "(no_device)" {
        "backlog(no_device)".into()
    } else {
        dev.to_string()
    }
}

fn cell_json(c: &Cell, seconds: f64, cpus: usize) -> Value {
    json!({"count": c.count(), "time_us": us(c.time_ns()), "pct": round2(pct(c.time_ns(), seconds, cpus))})
}

fn contexts_json(c: &Cell) -> Value {
    let mut map = serde_json::Map::new();
    for x in [CTX_TASK, CTX_IDLE, CTX_KSOFTIRQD] {
        map.insert(
            CTX_NAMES[x].into(),
            json!({"count": c.count[x], "time_us": us(c.time_ns[x])}),
        );
    }
    Value::Object(map)
}

fn render_json(
    ctx: &RunContext,
    iv: &Interval,
    net_rx: (u64, u64),
    hard: Option<&HardIrqLine>,
) -> Value {
    let n = iv.cpus.len();
    let per_cpu = |cells: &[Cell]| -> Vec<Value> {
        iv.cpus
            .iter()
            .zip(cells)
            .map(|(cpu, c)| {
                let mut v = cell_json(c, iv.seconds, 1);
                v["cpu"] = json!(cpu);
                v
            })
            .collect()
    };
    let vectors: Vec<Value> = iv
        .vecs
        .iter()
        .enumerate()
        .map(|(r, &v)| {
            let t = iv.row_total(r);
            let mut o = cell_json(&t, iv.seconds, n);
            o["vec"] = json!(VEC_NAMES[v]);
            o["per_cpu"] = json!(per_cpu(&iv.cells[r]));
            o["contexts"] = contexts_json(&t);
            o
        })
        .collect();
    let total = iv.grand_total();
    let cpu_totals: Vec<Cell> = (0..n).map(|i| iv.cpu_total(i)).collect();
    let mut total_json = cell_json(&total, iv.seconds, n);
    total_json["per_cpu"] = json!(per_cpu(&cpu_totals));
    total_json["contexts"] = contexts_json(&total);
    let ksoftirqd: Vec<Value> = iv
        .ksoftirqd
        .iter()
        .map(|k| {
            json!({"cpu": k.cpu, "pid": k.pid, "comm": format!("ksoftirqd/{}", k.cpu),
                   "cpu_time_us": us(k.run_ns), "pct": round2(pct(k.run_ns, iv.seconds, 1)), "runs": k.runs,
                   "softirq_time_us": us(k.softirq_ns), "softirq_pct": round2(pct(k.softirq_ns, iv.seconds, 1)),
                   "top_vec": k.top_vec.map(|(v, _)| VEC_NAMES[v])})
        })
        .collect();
    let mut o = json!({
        "type": "interval",
        "time": hms_now(),
        "interval_ns": (iv.seconds * 1e9) as u64,
        "cpus": iv.cpus,
        "attach": ctx.attach,
        "timed_pct": round2(iv.timed_pct()),
        "vectors": vectors,
        "total": total_json,
        "ksoftirqd": ksoftirqd,
    });
    let hists = |hs: &[Log2]| -> Value {
        let mut map = serde_json::Map::new();
        for &v in &iv.vecs {
            if let Some(h) = hs.get(v)
                && h.count() > 0
            {
                map.insert(VEC_NAMES[v].into(), h.to_json(ctx.hist_unit));
            }
        }
        Value::Object(map)
    };
    if let Some(hard) = hard {
        o["hardirqs"] = hard.json(iv.seconds);
    }
    if !iv.runtime.is_empty() {
        o["runtime_hist"] = hists(&iv.runtime);
    }
    if !iv.latency.is_empty() {
        o["latency_hist"] = hists(&iv.latency);
    }
    if let Some(source) = &ctx.net_source {
        let net_rx_action = match (source, &iv.net_rx_action) {
            (NetRxSource::Function(m), Some((count, time, hist))) => json!({
                "source": m.name(), "count": count, "time_us": us(*time),
                "pct": round2(pct(*time, iv.seconds, n)), "hist": hist.to_json(ctx.hist_unit)}),
            _ => json!({
                "source": "softirq", "count": net_rx.1, "time_us": us(net_rx.0),
                "pct": round2(pct(net_rx.0, iv.seconds, n)),
                "why": match source { NetRxSource::Softirq(why) => why.as_str(), NetRxSource::Function(_) => "no data" }}),
        };
        let devices: Vec<Value> = iv
            .napi
            .iter()
            .map(|(dev, d)| {
                json!({"dev": dev, "polls": d.polls, "packets": d.work, "budget": d.budget, "exhausted": d.exhausted})
            })
            .collect();
        o["net"] = json!({"net_rx_action": net_rx_action, "devices": devices});
    }
    with_schema(TOOL, o)
}

/// Puts the terminal in non-canonical mode (keys without Enter, no echo; Ctrl-C still works)
/// and restores it when dropped.
struct RawTty {
    saved: libc::termios,
}

impl RawTty {
    fn enable() -> Option<Self> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        // SAFETY: termios calls on fd 0 with valid pointers.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            raw.c_lflag &= !(libc::ICANON | libc::ECHO);
            raw.c_cc[libc::VMIN] = 1;
            raw.c_cc[libc::VTIME] = 0;
            if libc::tcsetattr(0, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(Self { saved })
        }
    }
}

impl Drop for RawTty {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in enable().
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

/// A channel that receives once when 'q' is typed on the terminal.
fn quit_key() -> tokio::sync::mpsc::UnboundedReceiver<()> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        let mut stdin = std::io::stdin();
        while let Ok(1) = stdin.read(&mut byte) {
            if matches!(byte[0], b'q' | b'Q') {
                let _ = tx.send(());
                return;
            }
        }
    });
    rx
}

pub async fn run(args: SoftirqTopArgs) -> Result<()> {
    args.cgroup.refuse(
        "softirq-top's rows are per CPU and vector, and a softirq does no task's work (it runs in whichever task it interrupted); profile --softirq --cgroup PATH samples softirqs over a cgroup's tasks",
    )?;
    // Everything the user typed is checked before anything is loaded.
    let online =
        aya::util::online_cpus().map_err(|(_, e)| anyhow!("cannot read the online CPUs: {e}"))?;
    let cpus = match &args.cpu {
        Some(text) => filters::cpu_list(text, &online)?,
        None => online.clone(),
    };
    let vecs = match &args.vec {
        Some(text) => parse_vecs(text)?,
        None => (0..NR_SOFTIRQS).collect(),
    };
    if !args.stacks && (args.folded || args.svg.is_some() || args.pprof.is_some()) {
        usage_bail!("--folded, --svg and --pprof print sampled stacks: add --stacks");
    }
    let svg = args.svg.as_deref().map(SvgFile::create).transpose()?;
    let pprof = args.pprof.as_deref().map(PprofFile::create).transpose()?;

    let btf = KernelBtf::new();
    let Feeds {
        btf_ok,
        tp_ok,
        tp_vec_offset,
    } = Feeds::probe(&btf);
    let mut config = SoftirqConfig {
        tp_vec_offset,
        runtime_hist: args.dist.into(),
        latency_hist: args.latency.into(),
        hist_ns: args.nanoseconds.into(),
        timed_per_sec: if args.exact {
            0
        } else {
            SoftirqConfig::DEFAULT.timed_per_sec
        },
        ..SoftirqConfig::DEFAULT
    };
    if args.vec.is_some() {
        config.stacks_vec_mask = vecs.iter().fold(0, |m, v| m | (1 << v));
        config.stacks_ksoftirqd = 0;
    }
    let mut napi_btf_ok = false;
    let mut napi_tp_ok = false;
    if args.net {
        if let (Ok(dev), Ok(name)) = (
            btf.member_offset("napi_struct", "dev"),
            btf.member_offset("net_device", "name"),
        ) {
            config.napi_dev_offset = dev;
            config.netdev_name_offset = name;
            napi_btf_ok = btf_ok;
        }
        if let Ok(fields) = tracefs::fields("napi", "napi_poll") {
            let find = |n: &str| fields.iter().find(|f| f.name == n).map(|f| f.offset);
            if let (Some(dev), Some(work), Some(budget)) =
                (find("dev_name"), find("work"), find("budget"))
            {
                config.tp_napi_dev_name_offset = dev;
                config.tp_napi_work_offset = work;
                config.tp_napi_budget_offset = budget;
                napi_tp_ok = true;
            }
        }
    }

    let mut ebpf = load_object(
        &config,
        args.stacks.then_some(args.stack_storage_size),
        args.net,
    )?;

    let (state, ksoftirqd) = init_cpu_state(&mut ebpf)?;

    let force = args.common.attach_for(
        "softirq-top",
        &[Mechanism::TpBtf, Mechanism::RawTp, Mechanism::Tracepoint],
    )?;
    let mut attachments = attach_core(&mut ebpf, &btf, force)?;
    let mut attach_tp = |ebpf: &mut Ebpf,
                         category: &'static str,
                         event: &'static str,
                         btf_ok: bool,
                         tp_ok: bool|
     -> Result<()> {
        attachments.push(attach_tp(
            ebpf,
            &btf,
            (category, event),
            btf_ok,
            tp_ok,
            force,
        )?);
        Ok(())
    };
    if args.latency {
        attach_tp(&mut ebpf, "irq", "softirq_raise", btf_ok, tp_ok)?;
    }
    let mut net_source = None;
    if args.net {
        attach_tp(&mut ebpf, "napi", "napi_poll", napi_btf_ok, napi_tp_ok)?;
        net_source = Some(attach_net_rx_action(&mut ebpf, &btf));
    }
    let attach_summary = summarize_mechanisms(&attachments);
    if args.common.verbose {
        for a in &attachments {
            errln!("{TOOL}: {}", a.summary());
        }
        if let Some(NetRxSource::Softirq(why)) = &net_source {
            errln!("{TOOL}: net_rx_action(): {why}; using NET_RX softirq entry/exit time");
        }
    }
    if args.stacks {
        attach_stacks(&mut ebpf, &online, args.frequency)?;
    }
    let hard_irqs = attach_hardirqs(&args, &btf, force);

    let stats = StatsReader::take(&mut ebpf)?;
    let maps = Maps {
        state,
        runtime: if args.dist {
            Some(take(&mut ebpf, "RUNTIME_HIST")?)
        } else {
            None
        },
        latency: if args.latency {
            Some(take(&mut ebpf, "LATENCY_HIST")?)
        } else {
            None
        },
        napi: if args.net {
            Some(take(&mut ebpf, "NAPI")?)
        } else {
            None
        },
        net_rx_action: match &net_source {
            Some(NetRxSource::Function(_)) => Some(take(&mut ebpf, "NET_RX_ACTION")?),
            _ => None,
        },
    };
    let ctx = RunContext {
        cpus,
        vecs,
        ksoftirqd,
        attach: attach_summary.clone(),
        net_source,
        hist_unit: if args.nanoseconds { "nsecs" } else { "usecs" },
    };

    let mut out = Out::new();
    let json = args.common.output.json;
    let live = out.is_tty() && !json && !args.batch;
    let tty = if live { RawTty::enable() } else { None };
    let mut quit = if tty.is_some() {
        Some(quit_key())
    } else {
        None
    };
    errln!("Tracing softirqs ({attach_summary})... Hit Ctrl-C to end.");

    let reader = Reader {
        maps: &maps,
        selected: &ctx.cpus,
    };
    let period = args.interval.interval.unwrap_or(Duration::from_secs(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = session::stop_requested(args.common.duration.duration);
    tokio::pin!(stop);
    let hard_snapshot = || {
        hard_irqs
            .as_ref()
            .map(|p| p.snapshot(&ctx.cpus, true))
            .unwrap_or_default()
    };
    let mut before = reader.read()?;
    let mut hard_before = hard_snapshot();
    let mut printed = 0u64;
    loop {
        let stopped = tokio::select! {
            reason = &mut stop => { reason?; true }
            _ = async { match quit.as_mut() { Some(q) => { q.recv().await; } None => std::future::pending::<()>().await } } => true,
            _ = ticker.tick() => false,
        };
        // With histograms, the last interval's maps are read with nothing attached, so its
        // counts and histograms cover the same events (mid-run, one read's skew is the next
        // one's gain). Not otherwise: under TCG detaching takes long enough (each tracepoint
        // waits for RCU) to count ~1 s more than a /proc/softirqs read at the signal.
        let last = stopped || args.interval.count.is_some_and(|c| printed + 1 >= c);
        let detached = last && (args.dist || args.latency);
        if detached {
            attach::detach_all(&mut ebpf, &["raise", "entry"]);
        }
        let now = reader.read()?;
        let hard_now = hard_snapshot();
        // A stop right after a print would add an empty sliver of an interval; not when
        // detached: that sliver carries the last skew between the count and histogram maps.
        if !stopped || detached || now.mono_ns.saturating_sub(before.mono_ns) >= 10_000_000 {
            let iv = compute(&args, &ctx, &now, &before);
            let net_rx = iv.net_rx(&now, &before);
            let hard = hard_irqs
                .as_ref()
                .map(|_| HardIrqLine::new(&ctx.cpus, &hard_now, &hard_before));
            if json {
                out.json(&render_json(&ctx, &iv, net_rx, hard.as_ref()));
            } else {
                let text = render_text(&ctx, &iv, net_rx, hard.as_ref(), live);
                if live {
                    out.line(&format!("\x1b[H\x1b[2J{}", text.trim_end()));
                } else {
                    out.interval_header(args.common.output.timestamp);
                    out.line(&text);
                }
            }
            out.flush();
            printed += 1;
        }
        before = now;
        hard_before = hard_now;
        if stopped || out.closed() || args.interval.count.is_some_and(|c| printed >= c) {
            break;
        }
    }
    drop(tty);

    if args.stacks {
        print_stacks(&args, &mut ebpf, &mut out, svg, pprof)?;
        StackLoss::read(&stats).report(TOOL);
    }
    let end = stats.read();
    if end.map_full > 0 {
        errln!(
            "{TOOL}: {} updates not counted: a map was full",
            end.map_full
        );
    }
    if end.read_errors > 0 {
        errln!("{TOOL}: {} kernel reads failed", end.read_errors);
    }
    if json {
        out.json(&with_schema(
            TOOL,
            json!({"type": "end", "intervals": printed, "map_full": end.map_full, "read_errors": end.read_errors,
                   "attach": attachments.iter().chain(hard_irqs.iter().flat_map(|p| [&p.entry, &p.exit]))
                       .map(|a| json!({"target": a.target, "mechanism": a.mechanism})).collect::<Vec<_>>()}),
        ));
    }
    out.flush();
    drop(ebpf);
    Ok(())
}

/// "tp_btf", or "tp_btf, tracepoint" when the targets ended up on different mechanisms.
fn summarize_mechanisms(attachments: &[Attachment]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for a in attachments {
        if !names.contains(&a.mechanism.name()) {
            names.push(a.mechanism.name());
        }
    }
    names.join(", ")
}

/// net_rx_action() entry and return through fentry/fexit or kprobes; the NET_RX softirq's own
/// entry/exit time (of which net_rx_action is the whole handler) where neither attaches.
fn attach_net_rx_action(ebpf: &mut Ebpf, btf: &KernelBtf) -> NetRxSource {
    let ret_rungs = [
        Rung {
            mechanism: Mechanism::Fexit,
            program: "net_rx_action_fexit",
        },
        Rung {
            mechanism: Mechanism::Kretprobe,
            program: "net_rx_action_kretprobe",
        },
    ];
    let ret = match attach::attach(
        ebpf,
        btf,
        Target::Function {
            name: "net_rx_action",
            on_return: true,
        },
        &ret_rungs,
        None,
    ) {
        Ok(a) => a,
        Err(e) => {
            let why: Vec<String> = e
                .declined
                .iter()
                .map(|d| format!("{}: {}", d.mechanism, d.reason))
                .collect();
            return NetRxSource::Softirq(why.join("; "));
        }
    };
    let entry_rungs: Vec<Rung> = if ret.mechanism == Mechanism::Fexit {
        vec![
            Rung {
                mechanism: Mechanism::Fentry,
                program: "net_rx_action_fentry",
            },
            Rung {
                mechanism: Mechanism::Kprobe,
                program: "net_rx_action_kprobe",
            },
        ]
    } else {
        vec![Rung {
            mechanism: Mechanism::Kprobe,
            program: "net_rx_action_kprobe",
        }]
    };
    match attach::attach(
        ebpf,
        btf,
        Target::Function {
            name: "net_rx_action",
            on_return: false,
        },
        &entry_rungs,
        None,
    ) {
        Ok(_) => NetRxSource::Function(ret.mechanism),
        // The return program alone never records anything (it needs the entry stamp).
        Err(e) => NetRxSource::Softirq(e.to_string()),
    }
}

fn attach_stacks(ebpf: &mut Ebpf, online: &[u32], frequency: u64) -> Result<()> {
    let program: &mut PerfEvent = ebpf
        .program_mut("softirq_stacks")
        .ok_or_else(|| anyhow!("softirq_stacks program missing (build bug)"))?
        .try_into()?;
    program.load().map_err(|e| {
        anyhow!(
            "cannot load the stack sampler: {}",
            attach::describe(Mechanism::Tracepoint, &e)
        )
    })?;
    for &cpu in online {
        program
            .attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(frequency),
                false,
            )
            .map_err(|e| anyhow!("cannot sample CPU {cpu} with perf_event cpu-clock: {e}"))?;
    }
    Ok(())
}

fn stack_label(vec: u32) -> &'static str {
    if vec == STACK_VEC_KSOFTIRQD {
        "ksoftirqd"
    } else {
        VEC_NAMES.get(vec as usize).copied().unwrap_or("?")
    }
}

/// The stacks sampled over the whole run: top-N, folded, SVG, or JSON.
fn print_stacks(
    args: &SoftirqTopArgs,
    ebpf: &mut Ebpf,
    out: &mut Out,
    svg: Option<SvgFile>,
    pprof: Option<PprofFile>,
) -> Result<()> {
    let counts: PerCpuHashMap<MapData, StackKey, u64> = take(ebpf, "STACK_COUNTS")?;
    let map = StackMap::take(ebpf, "STACKS")?;
    let mut raws: Vec<RawStack> = Vec::new();
    for (key, values) in counts.iter().flatten() {
        let value: u64 = values.iter().sum();
        if value == 0 {
            continue;
        }
        raws.push(RawStack {
            // The vector stands where a task's comm would: folded lines start "NET_RX;...".
            comm: stack_label(key.vec).to_string(),
            pid: 0,
            tid: 0,
            kernel: map.frames(key.stack_id),
            user: Frames::None,
            value,
        });
    }
    stacks::sort(&mut raws);
    let total: u64 = raws.iter().map(|r| r.value).sum();
    let mut symbols = Symbols::new().recording_origins(pprof.is_some());
    let wanted = if args.folded || svg.is_some() || pprof.is_some() {
        raws.len()
    } else {
        raws.len().min(args.top)
    };
    let resolved = symbols.resolve_all(&raws[..wanted]);
    const TITLE: &str = "softirq-top: kernel stacks while serving softirqs";
    if let Some(pprof) = pprof {
        let lines = stacks::folded(&resolved, Unit::Samples);
        let kind = PprofKind::Samples { hz: args.frequency };
        pprof.write_labelled(&lines, kind, TITLE, "vec", symbols.origins())?;
    }
    if let Some(svg) = svg {
        let lines = stacks::folded(&resolved, Unit::Samples);
        svg.write(&lines, TITLE, "samples")?;
    }
    if args.common.output.json {
        let list: Vec<Value> = resolved
            .iter()
            .take(args.top)
            .map(|s| {
                let mut v = stacks::stack_json(s, total);
                v["vec"] = json!(s.comm);
                v
            })
            .collect();
        out.json(&with_schema(
            TOOL,
            json!({"type": "stacks", "samples": total, "frequency_hz": args.frequency, "stacks": list}),
        ));
    } else if args.folded {
        for line in stacks::folded(&resolved, Unit::Samples) {
            out.line(&line);
        }
    } else {
        out.line(&format!(
            "Kernel stacks sampled at {} Hz while serving softirqs: {total} samples, top {}",
            args.frequency,
            wanted.min(args.top)
        ));
        for s in resolved.iter().take(args.top) {
            let share = if total > 0 {
                s.value as f64 * 100.0 / total as f64
            } else {
                0.0
            };
            out.line(&format!("{} samples  {share:.2}%  [{}]", s.value, s.comm));
            for frame in &s.kernel {
                out.line(&format!("    {frame}"));
            }
            out.line("");
        }
    }
    symbols.report_unknown(TOOL);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_names() {
        assert_eq!(parse_vecs("net_rx,TIMER").unwrap(), vec![3, 1]);
        assert_eq!(parse_vecs("NET_RX_SOFTIRQ").unwrap(), vec![3]);
        let err = parse_vecs("BOGUS").unwrap_err().to_string();
        assert!(err.starts_with("unknown softirq vector 'BOGUS'"), "{err}");
    }
}

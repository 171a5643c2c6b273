//! reclaimtop: memory reclaim, live — who reclaims (kswapd per node: wakeups, time awake, its
//! CPU), how well (pages scanned vs reclaimed and their ratio, kswapd vs direct), who pays
//! (direct and memcg reclaim stalls per process and per memory cgroup), the slowest
//! shrinkers and the OOM kills, from the `vmscan:` tracepoints and `oom:mark_victim`.
//!
//! The kernel keeps running totals for the system-wide counters (userspace diffs them) and
//! per-CPU records for stalls and shrinkers that userspace drains every report.

use std::{
    collections::{BTreeMap, HashMap},
    io::IsTerminal as _,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, IterableMap as _, MapData, PerCpuArray, PerCpuHashMap},
};
use clap::Args;
use serde_json::{Value, json};
use tracer_common::{
    hist::Log2Hist,
    reclaimtop::{
        KIND_MEMCG, MAX_NODES, NodeStats, OomKill, ReclaimConfig, ReclaimTotals, SHRINKERS_ENTRIES,
        STALLS_ENTRIES, ShrinkerStats, StallKey, StallStats, WakerStats,
    },
    task::PF_KTHREAD,
};

use crate::{
    attach::{self, Attachment, Mechanism, Rung, Target},
    btf::KernelBtf,
    cgroup::{Controller, Resolver},
    filters,
    hist::Log2,
    loader::{self, Stats, StatsReader, objects, take},
    output::{Clock, Out, comm_str, hms_now, with_schema},
    session::{self, IntervalArgs},
    stacks::{self, Symbols},
    tools::{CommonArgs, runqlat},
    tracefs,
};

const TOOL: &str = "reclaimtop";

/// Memory reclaim, live: kswapd per node, scanned vs reclaimed, direct/memcg reclaim stalls
/// per process and cgroup, slow shrinkers, OOM kills.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    reclaimtop               refresh every second until Ctrl-C\n  \
    reclaimtop -G 5          every 5 s, with each process's memory cgroup\n  \
    reclaimtop -D -d 30      stall-time histograms per process, one report after 30 s\n  \
    reclaimtop --comm postgres   only stalls of processes named postgres\n  \
    reclaimtop --json 1 10   JSON lines, 10 reports")]
pub struct ReclaimtopArgs {
    /// Only stalls of this process (the system-wide sections stay whole).
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Only stalls of tasks with this comm (exact, or a prefix ending in '*').
    #[arg(long, value_name = "COMM")]
    pub comm: Option<String>,
    /// Add each process's memory cgroup (CGROUP column) to the stall rows.
    #[arg(short = 'G', long = "show-cgroup")]
    pub show_cgroup: bool,
    /// Stall-time log2 histograms per process and kind.
    #[arg(short = 'D', long = "dist")]
    pub dist: bool,
    /// Millisecond histograms (default: microseconds).
    #[arg(short = 'm', long = "milliseconds")]
    pub milliseconds: bool,
    /// Rows per section (text output; JSON has every row).
    #[arg(short = 'n', long = "top", value_name = "N", default_value_t = 10)]
    pub top: usize,
    /// Print plain blocks even on a terminal (no clear-and-redraw).
    #[arg(short = 'b', long, alias = "batch")]
    pub no_redraw: bool,
    #[command(flatten)]
    pub interval: IntervalArgs,
    #[command(flatten)]
    pub cgroup: crate::cgroup::CgroupArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The events and the program family of each: `<base>_btf`, `<base>_raw`, `<base>_tp`.
pub const EVENTS: &[(&str, &str, &str)] = &[
    ("vmscan", "mm_vmscan_kswapd_wake", "kswapd_wake"),
    ("vmscan", "mm_vmscan_kswapd_sleep", "kswapd_sleep"),
    ("vmscan", "mm_vmscan_wakeup_kswapd", "wakeup_kswapd"),
    ("vmscan", "mm_vmscan_lru_shrink_inactive", "shrink_inactive"),
    ("vmscan", "mm_vmscan_direct_reclaim_begin", "direct_begin"),
    ("vmscan", "mm_vmscan_direct_reclaim_end", "direct_end"),
    ("vmscan", "mm_vmscan_memcg_reclaim_begin", "memcg_begin"),
    ("vmscan", "mm_vmscan_memcg_reclaim_end", "memcg_end"),
    ("vmscan", "mm_shrink_slab_start", "slab_start"),
    ("vmscan", "mm_shrink_slab_end", "slab_end"),
];

pub async fn run(args: ReclaimtopArgs) -> Result<()> {
    args.cgroup.install(&crate::btf::KernelBtf::new())?;
    if let Some(pid) = args.pid {
        session::check_pid(pid)?;
    }
    if args.top == 0 {
        usage_bail!("--top must be at least 1");
    }
    let comm = filters::comm_filter(args.comm.as_deref())?;
    let force = args.common.attach_for(
        TOOL,
        &[Mechanism::TpBtf, Mechanism::RawTp, Mechanism::Tracepoint],
    )?;
    let btf = KernelBtf::new();
    let base = ReclaimConfig {
        tgid: args.pid.unwrap_or(0),
        histograms: args.dist.into(),
        unit_div: if args.milliseconds { 1_000_000 } else { 1000 },
        comm,
        ..ReclaimConfig::DEFAULT
    };
    let (mut ebpf, attachments) = load_and_attach(&btf, base, force)?;
    if args.common.verbose {
        for a in &attachments {
            errln!("{TOOL}: {}", a.summary());
        }
    }
    let mut view = View::new(&mut ebpf, &args)?;
    errln!(
        "Tracing memory reclaim ({})... Hit Ctrl-C to end.",
        attachments[0].mechanism
    );
    view.run(&args, &attachments).await
}

/// Loads reclaimtop's object with `base`'s filters and histogram switch (the field offsets
/// are filled in here) and attaches every event by the ladder; serve's reclaim collector
/// shares it. The OOM tracepoint is optional (a line on stderr when it cannot attach).
pub fn load_and_attach(
    btf: &KernelBtf,
    base: ReclaimConfig,
    force: Option<Mechanism>,
) -> Result<(Ebpf, Vec<Attachment>)> {
    let (config, tp_ok) = config(base, btf);
    let offsets = btf
        .task_offsets()
        .context("reclaimtop reads task_struct flags (kswapd or not)")?;
    let mut ebpf = loader::load(objects::RECLAIMTOP, |l| {
        l.override_global("RECLAIM_CONFIG", &config, true);
        l.override_global("TASK_OFFSETS", &offsets, false);
        l.map_max_entries("STALLS", STALLS_ENTRIES);
        l.map_max_entries("SHRINKERS", SHRINKERS_ENTRIES);
        l.map_max_entries("WAKERS", STALLS_ENTRIES);
        l.map_max_entries(
            "HISTS",
            if config.histograms != 0 {
                STALLS_ENTRIES
            } else {
                1
            },
        );
    })?;
    let mut attachments = Vec::new();
    let btf_ok = btf.available() && config.shrinker_scan_objects != 0;
    for &(category, event, base) in EVENTS {
        let mut mechanisms = Vec::new();
        if btf_ok {
            mechanisms.extend([Mechanism::TpBtf, Mechanism::RawTp]);
        }
        if tp_ok.get(event).copied().unwrap_or(false) {
            mechanisms.push(Mechanism::Tracepoint);
        }
        attachments.push(attach::tracepoint_ladder(
            &mut ebpf,
            btf,
            category,
            event,
            base,
            &mechanisms,
            force,
        )?);
    }
    // oom:mark_victim changed its prototype: only the classic tracepoint, whatever --attach says.
    let oom_rung = [Rung {
        mechanism: Mechanism::Tracepoint,
        program: "mark_victim_tp",
    }];
    let oom = Target::Tracepoint {
        category: "oom",
        event: "mark_victim",
    };
    match attach::attach(&mut ebpf, btf, oom, &oom_rung, None) {
        Ok(a) => attachments.push(a),
        Err(e) => errln!("{TOOL}: no OOM kills: {e}"),
    }
    Ok((ebpf, attachments))
}

/// Pages scanned and reclaimed since load, summed over CPUs (running totals).
pub fn read_totals(map: &PerCpuArray<MapData, ReclaimTotals>) -> ReclaimTotals {
    let mut totals = ReclaimTotals::default();
    if let Ok(per_cpu) = map.get(&0, 0) {
        for t in per_cpu.iter() {
            totals.kswapd_scanned += t.kswapd_scanned;
            totals.kswapd_reclaimed += t.kswapd_reclaimed;
            totals.direct_scanned += t.direct_scanned;
            totals.direct_reclaimed += t.direct_reclaimed;
            totals.memcg_scanned += t.memcg_scanned;
            totals.memcg_reclaimed += t.memcg_reclaimed;
        }
    }
    totals
}

/// The kernel-side configuration, and which events the classic-tracepoint rung can read.
fn config(base: ReclaimConfig, btf: &KernelBtf) -> (ReclaimConfig, HashMap<&'static str, bool>) {
    let offset = |event: &str, field: &str| tracefs::field_offset("vmscan", event, field).ok();
    let mut tp_ok = HashMap::new();
    let mut config = ReclaimConfig {
        shrinker_scan_objects: btf.member_offset("shrinker", "scan_objects").unwrap_or(0),
        ..base
    };
    // Each event's fields, or None when its format file lacks one (then no tracepoint rung).
    let mut fields = |event: &'static str, names: &[&str]| -> Vec<u32> {
        let found: Option<Vec<u32>> = names.iter().map(|f| offset(event, f)).collect();
        tp_ok.insert(event, found.is_some());
        found.unwrap_or_else(|| vec![0; names.len()])
    };
    if let [nid] = fields("mm_vmscan_kswapd_wake", &["nid"])[..] {
        config.tp_wake_nid = nid;
    }
    if let [nid] = fields("mm_vmscan_kswapd_sleep", &["nid"])[..] {
        config.tp_sleep_nid = nid;
    }
    if let [nid, scanned, reclaimed] = fields(
        "mm_vmscan_lru_shrink_inactive",
        &["nid", "nr_scanned", "nr_reclaimed"],
    )[..]
    {
        config.tp_lru_nid = nid;
        config.tp_lru_scanned = scanned;
        config.tp_lru_reclaimed = reclaimed;
    }
    fields("mm_vmscan_wakeup_kswapd", &[]);
    fields("mm_vmscan_direct_reclaim_begin", &[]);
    fields("mm_vmscan_memcg_reclaim_begin", &[]);
    if let [end] = fields("mm_vmscan_direct_reclaim_end", &["nr_reclaimed"])[..] {
        config.tp_end_reclaimed = end;
    }
    if let [end] = fields("mm_vmscan_memcg_reclaim_end", &["nr_reclaimed"])[..] {
        config.tp_memcg_end_reclaimed = end;
    }
    if let [shrink] = fields("mm_shrink_slab_start", &["shrink"])[..] {
        config.tp_slab_shrink = shrink;
    }
    if let [retval] = fields("mm_shrink_slab_end", &["retval"])[..] {
        config.tp_slab_retval = retval;
    }
    // mark_victim: pid on every kernel; comm only since 5.16 (userspace asks /proc otherwise).
    config.tp_victim_pid = tracefs::field_offset("oom", "mark_victim", "pid").unwrap_or(8);
    config.tp_victim_comm = tracefs::field_offset("oom", "mark_victim", "comm").unwrap_or(0);
    (config, tp_ok)
}

/// What one report covers: the system-wide counters at a moment (running totals).
#[derive(Clone, Default)]
struct Counters {
    now_ns: u64,
    totals: ReclaimTotals,
    nodes: Vec<(u32, NodeStats)>,
    /// kswapd thread pid → utime + stime in clock ticks.
    kswapd_ticks: BTreeMap<u32, (String, i64)>,
}

/// A kswapd row of one report.
struct NodeRow {
    nid: u32,
    pid: u32,
    comm: String,
    wakeups: u64,
    awake_ns: u64,
    cpu_pct: f64,
    scanned: u64,
    reclaimed: u64,
}

/// A process's stalls of one kind in one report.
struct StallRow {
    tgid: u32,
    kind: u32,
    comm: String,
    cgroup: String,
    stats: StallStats,
    hist: Option<Log2>,
}

/// A process whose allocations woke kswapd in one report.
struct WakerRow {
    tgid: u32,
    comm: String,
    cgroup: String,
    wakeups: u64,
}

struct ShrinkerRow {
    function: String,
    stats: ShrinkerStats,
}

struct OomRow {
    victim: u32,
    victim_comm: String,
    trigger_tgid: u32,
    trigger_comm: String,
    cgroup: String,
    unix_ns: i128,
}

struct View {
    totals: PerCpuArray<MapData, ReclaimTotals>,
    nodes: Array<MapData, NodeStats>,
    stalls: PerCpuHashMap<MapData, StallKey, StallStats>,
    hists: PerCpuHashMap<MapData, StallKey, Log2Hist>,
    shrinkers: PerCpuHashMap<MapData, u64, ShrinkerStats>,
    wakers: PerCpuHashMap<MapData, u32, WakerStats>,
    ooms: BpfHashMap<MapData, u32, OomKill>,
    stats: StatsReader,
    symbols: Symbols,
    names: HashMap<u64, String>,
    cgroups: Resolver,
    clock: Clock,
    ticks_per_sec: f64,
    dist: bool,
}

impl View {
    fn new(ebpf: &mut Ebpf, args: &ReclaimtopArgs) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Ok(Self {
            totals: take(ebpf, "TOTALS")?,
            nodes: take(ebpf, "NODES")?,
            stalls: take(ebpf, "STALLS")?,
            hists: take(ebpf, "HISTS")?,
            shrinkers: take(ebpf, "SHRINKERS")?,
            wakers: take(ebpf, "WAKERS")?,
            ooms: take(ebpf, "OOMS")?,
            stats: StatsReader::take(ebpf)?,
            symbols: Symbols::new(),
            names: HashMap::new(),
            cgroups: Resolver::default(),
            clock: Clock::new(),
            ticks_per_sec: if ticks > 0 { ticks as f64 } else { 100.0 },
            dist: args.dist,
        })
    }

    fn counters(&self) -> Counters {
        let totals = read_totals(&self.totals);
        let nodes = (0..MAX_NODES)
            .filter_map(|nid| Some((nid, self.nodes.get(&nid, 0).ok()?)))
            .filter(|(_, n)| n.pid != 0 || n.wakeups != 0)
            .collect();
        let kswapd_ticks = crate::procfs::tasks()
            .filter(|t| t.flags & PF_KTHREAD != 0 && t.comm.starts_with("kswapd"))
            .map(|t| (t.pid, (t.comm, t.cpu_ticks)))
            .collect();
        Counters {
            now_ns: Clock::now_monotonic_ns(),
            totals,
            nodes,
            kswapd_ticks,
        }
    }

    fn function_name(&mut self, address: u64) -> String {
        stacks::kernel_function_name(&mut self.symbols, &mut self.names, address)
    }

    fn node_rows(&self, now: &Counters, before: &Counters) -> Vec<NodeRow> {
        let interval_ns = now.now_ns.saturating_sub(before.now_ns).max(1);
        let open = |n: &NodeStats, at: u64| {
            if n.woke_at_ns != 0 {
                at.saturating_sub(n.woke_at_ns)
            } else {
                0
            }
        };
        let mut rows = Vec::new();
        // Every kswapd thread, woken or not, so an idle one reads as 0 and not as missing.
        let mut seen = std::collections::HashSet::new();
        for (nid, n) in &now.nodes {
            let prev = before
                .nodes
                .iter()
                .find(|(id, _)| id == nid)
                .map(|(_, p)| *p)
                .unwrap_or_default();
            let awake = (n.awake_ns + open(n, now.now_ns))
                .saturating_sub(prev.awake_ns + open(&prev, before.now_ns))
                .min(interval_ns);
            let pid = if n.pid != 0 { n.pid } else { prev.pid };
            seen.insert(pid);
            rows.push(NodeRow {
                nid: *nid,
                pid,
                comm: format!("kswapd{nid}"),
                wakeups: n.wakeups - prev.wakeups,
                awake_ns: awake,
                cpu_pct: self.cpu_pct(pid, now, before, interval_ns),
                scanned: n.scanned - prev.scanned,
                reclaimed: n.reclaimed - prev.reclaimed,
            });
        }
        for (pid, (comm, _)) in &now.kswapd_ticks {
            if seen.contains(pid) {
                continue;
            }
            let nid = comm
                .strip_prefix("kswapd")
                .and_then(|n| n.split(':').next()?.parse().ok())
                .unwrap_or(0);
            rows.push(NodeRow {
                nid,
                pid: *pid,
                comm: comm.clone(),
                wakeups: 0,
                awake_ns: 0,
                cpu_pct: self.cpu_pct(*pid, now, before, interval_ns),
                scanned: 0,
                reclaimed: 0,
            });
        }
        rows.sort_by_key(|r| (r.nid, r.pid));
        rows
    }

    fn cpu_pct(&self, pid: u32, now: &Counters, before: &Counters, interval_ns: u64) -> f64 {
        let (Some((_, a)), Some((_, b))) =
            (now.kswapd_ticks.get(&pid), before.kswapd_ticks.get(&pid))
        else {
            return 0.0;
        };
        let secs = (a - b).max(0) as f64 / self.ticks_per_sec;
        100.0 * secs * 1e9 / interval_ns as f64
    }

    fn stall_rows(&mut self) -> Result<Vec<StallRow>> {
        let mut hists: HashMap<StallKey, Log2> = HashMap::new();
        if self.dist {
            for (key, per_cpu) in loader::drain_per_cpu::<StallKey, Log2Hist>(self.hists.map())? {
                hists.insert(key, Log2::from_per_cpu(per_cpu.iter()));
            }
        }
        let mut rows = Vec::new();
        for (key, per_cpu) in loader::drain_per_cpu::<StallKey, StallStats>(self.stalls.map())? {
            let mut sum = StallStats::default();
            for s in &per_cpu {
                sum.count += s.count;
                sum.total_ns += s.total_ns;
                sum.max_ns = sum.max_ns.max(s.max_ns);
                sum.reclaimed += s.reclaimed;
                sum.lru_scanned += s.lru_scanned;
                sum.lru_reclaimed += s.lru_reclaimed;
                if s.comm[0] != 0 {
                    sum.comm = s.comm;
                }
            }
            if sum.count == 0 && sum.lru_scanned == 0 {
                continue;
            }
            rows.push(StallRow {
                tgid: key.tgid,
                kind: key.kind,
                comm: comm_str(&sum.comm),
                // Always resolved (the cgroup section needs it); -G only adds the column.
                cgroup: self.cgroups.label(key.tgid, Controller::Memory),
                stats: sum,
                hist: hists.remove(&key),
            });
        }
        rows.sort_by(|a, b| {
            b.stats
                .total_ns
                .cmp(&a.stats.total_ns)
                .then(a.tgid.cmp(&b.tgid))
        });
        Ok(rows)
    }

    fn waker_rows(&mut self) -> Result<Vec<WakerRow>> {
        let mut rows = Vec::new();
        for (tgid, per_cpu) in loader::drain_per_cpu::<u32, WakerStats>(self.wakers.map())? {
            let wakeups = per_cpu.iter().map(|w| w.wakeups).sum();
            let comm = per_cpu
                .iter()
                .find(|w| w.comm[0] != 0)
                .map(|w| comm_str(&w.comm))
                .unwrap_or_default();
            rows.push(WakerRow {
                tgid,
                comm,
                cgroup: self.cgroups.label(tgid, Controller::Memory),
                wakeups,
            });
        }
        rows.sort_by_key(|r| (std::cmp::Reverse(r.wakeups), r.tgid));
        Ok(rows)
    }

    fn shrinker_rows(&mut self) -> Result<Vec<ShrinkerRow>> {
        let mut rows = Vec::new();
        for (function, per_cpu) in
            loader::drain_per_cpu::<u64, ShrinkerStats>(self.shrinkers.map())?
        {
            let mut sum = ShrinkerStats::default();
            for s in &per_cpu {
                sum.calls += s.calls;
                sum.total_ns += s.total_ns;
                sum.max_ns = sum.max_ns.max(s.max_ns);
                sum.freed += s.freed;
            }
            rows.push(ShrinkerRow {
                function: self.function_name(function),
                stats: sum,
            });
        }
        rows.sort_by_key(|r| std::cmp::Reverse(r.stats.total_ns));
        Ok(rows)
    }

    fn oom_rows(&mut self) -> Vec<OomRow> {
        let kills: Vec<(u32, OomKill)> = self.ooms.iter().flatten().collect();
        let mut rows = Vec::new();
        for (victim, kill) in kills {
            let _ = self.ooms.remove(&victim);
            let victim_comm = if kill.victim_comm[0] != 0 {
                comm_str(&kill.victim_comm)
            } else {
                std::fs::read_to_string(format!("/proc/{victim}/comm"))
                    .map(|s| s.trim_end().to_string())
                    .unwrap_or_else(|_| "?".to_string())
            };
            rows.push(OomRow {
                victim,
                victim_comm,
                trigger_tgid: kill.trigger_tgid,
                trigger_comm: comm_str(&kill.trigger_comm),
                cgroup: self.cgroups.label(victim, Controller::Memory),
                unix_ns: self.clock.unix_ns(kill.ts),
            });
        }
        rows.sort_by_key(|r| r.unix_ns);
        rows
    }

    async fn run(&mut self, args: &ReclaimtopArgs, attachments: &[Attachment]) -> Result<()> {
        let mut out = Out::new();
        let redraw = out.is_tty()
            && std::io::stdout().is_terminal()
            && !args.common.output.json
            && !args.no_redraw;
        let stop = session::stop_requested(args.common.duration.duration);
        tokio::pin!(stop);
        let interval = args.interval.interval.unwrap_or(Duration::from_secs(1));
        let mut ticker = runqlat::ticker(Some(interval));
        let mut before = self.counters();
        let mut printed = 0u64;
        let mut reported = Stats::default();
        loop {
            let stopped = tokio::select! {
                reason = &mut stop => { reason?; true }
                _ = runqlat::tick(&mut ticker) => false,
            };
            self.cgroups.clear();
            let now = self.counters();
            let report = Report {
                interval_ns: now.now_ns.saturating_sub(before.now_ns),
                totals: diff_totals(&now.totals, &before.totals),
                nodes: self.node_rows(&now, &before),
                stalls: self.stall_rows()?,
                wakers: self.waker_rows()?,
                shrinkers: self.shrinker_rows()?,
                ooms: self.oom_rows(),
            };
            if args.common.output.json {
                out.json(&report.json(args));
            } else {
                report.print(args, redraw, &mut out);
            }
            out.flush();
            runqlat::report_drops(TOOL, &self.stats.read(), &mut reported);
            printed += 1;
            if stopped || out.closed() || args.interval.count.is_some_and(|c| printed >= c) {
                break;
            }
            before = now;
        }
        if args.common.output.json {
            let end = self.stats.read();
            let attach: Vec<Value> = attachments
                .iter()
                .map(|a| json!({"target": a.target, "mechanism": a.mechanism}))
                .collect();
            out.json(&with_schema(
                TOOL,
                json!({"type": "end", "map_full": end.map_full, "read_errors": end.read_errors,
                       "attach": attach}),
            ));
        }
        Ok(())
    }
}

fn diff_totals(now: &ReclaimTotals, before: &ReclaimTotals) -> ReclaimTotals {
    ReclaimTotals {
        kswapd_scanned: now.kswapd_scanned - before.kswapd_scanned,
        kswapd_reclaimed: now.kswapd_reclaimed - before.kswapd_reclaimed,
        direct_scanned: now.direct_scanned - before.direct_scanned,
        direct_reclaimed: now.direct_reclaimed - before.direct_reclaimed,
        memcg_scanned: now.memcg_scanned - before.memcg_scanned,
        memcg_reclaimed: now.memcg_reclaimed - before.memcg_reclaimed,
    }
}

/// Reclaimed / scanned in percent; None when nothing was scanned.
fn efficiency(scanned: u64, reclaimed: u64) -> Option<f64> {
    (scanned > 0).then(|| 100.0 * reclaimed as f64 / scanned as f64)
}

fn eff_text(scanned: u64, reclaimed: u64) -> String {
    efficiency(scanned, reclaimed)
        .map(|e| format!("{e:.0}%"))
        .unwrap_or_else(|| "-".to_string())
}

pub fn kind_name(kind: u32) -> &'static str {
    if kind == KIND_MEMCG {
        "memcg"
    } else {
        "direct"
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// One cgroup's memcg (or direct) reclaim in a report.
#[derive(Default)]
struct CgroupRow {
    stalls: u64,
    total_ns: u64,
    max_ns: u64,
    scanned: u64,
    reclaimed: u64,
    /// The process that stalled longest in it, and how long.
    top: (u64, u32, String),
    processes: usize,
}

struct Report {
    interval_ns: u64,
    totals: ReclaimTotals,
    nodes: Vec<NodeRow>,
    stalls: Vec<StallRow>,
    wakers: Vec<WakerRow>,
    shrinkers: Vec<ShrinkerRow>,
    ooms: Vec<OomRow>,
}

impl Report {
    /// Stalls merged per (cgroup, kind).
    fn cgroups(&self) -> BTreeMap<(String, u32), CgroupRow> {
        let mut cgroups: BTreeMap<(String, u32), CgroupRow> = BTreeMap::new();
        for s in &self.stalls {
            let c = cgroups.entry((s.cgroup.clone(), s.kind)).or_default();
            c.stalls += s.stats.count;
            c.total_ns += s.stats.total_ns;
            c.max_ns = c.max_ns.max(s.stats.max_ns);
            c.scanned += s.stats.lru_scanned;
            c.reclaimed += s.stats.lru_reclaimed;
            c.processes += 1;
            if s.stats.total_ns >= c.top.0 {
                c.top = (s.stats.total_ns, s.tgid, s.comm.clone());
            }
        }
        cgroups
    }

    fn print(&self, args: &ReclaimtopArgs, redraw: bool, out: &mut Out) {
        let t = &self.totals;
        let scanned = t.kswapd_scanned + t.direct_scanned + t.memcg_scanned;
        let reclaimed = t.kswapd_reclaimed + t.direct_reclaimed + t.memcg_reclaimed;
        out.screen_title(
            "reclaimtop",
            redraw,
            args.common.output.timestamp,
            &format!(
                "interval {:.2}s  pages scanned {scanned} reclaimed {reclaimed} ({})",
                self.interval_ns as f64 / 1e9,
                eff_text(scanned, reclaimed),
            ),
        );
        out.line(&format!(
            "  kswapd {}/{} ({})  direct {}/{} ({})  memcg {}/{} ({})",
            t.kswapd_scanned,
            t.kswapd_reclaimed,
            eff_text(t.kswapd_scanned, t.kswapd_reclaimed),
            t.direct_scanned,
            t.direct_reclaimed,
            eff_text(t.direct_scanned, t.direct_reclaimed),
            t.memcg_scanned,
            t.memcg_reclaimed,
            eff_text(t.memcg_scanned, t.memcg_reclaimed),
        ));
        out.line("");
        out.line(&format!(
            "{:>4} {:>7} {:<10} {:>7} {:>9} {:>6} {:>10} {:>10} {:>5}",
            "NODE", "PID", "KSWAPD", "WAKEUPS", "AWAKE-ms", "%CPU", "SCANNED", "RECLAIMED", "EFF"
        ));
        for n in &self.nodes {
            out.line(&format!(
                "{:>4} {:>7} {:<10} {:>7} {:>9.1} {:>6.1} {:>10} {:>10} {:>5}",
                n.nid,
                n.pid,
                n.comm,
                n.wakeups,
                ms(n.awake_ns),
                n.cpu_pct,
                n.scanned,
                n.reclaimed,
                eff_text(n.scanned, n.reclaimed)
            ));
        }
        if !self.wakers.is_empty() {
            let cg_header = if args.show_cgroup { "  CGROUP" } else { "" };
            out.line(&format!(
                "{:>7} {:<16} {:>12}{cg_header}",
                "PID", "COMM", "WOKE-KSWAPD"
            ));
            for w in self.wakers.iter().take(args.top) {
                let cg = if args.show_cgroup {
                    format!("  {}", w.cgroup)
                } else {
                    String::new()
                };
                out.line(&format!(
                    "{:>7} {:<16} {:>12}{cg}",
                    w.tgid, w.comm, w.wakeups
                ));
            }
        }
        out.line("");
        let cg_header = if args.show_cgroup { "  CGROUP" } else { "" };
        out.line(&format!(
            "{:>7} {:<16} {:<6} {:>7} {:>9} {:>9} {:>10} {:>10} {:>5}{cg_header}",
            "PID", "COMM", "KIND", "STALLS", "TOTAL-ms", "MAX-ms", "SCANNED", "RECLAIMED", "EFF"
        ));
        for s in self.stalls.iter().take(args.top) {
            let cg = if args.show_cgroup {
                format!("  {}", s.cgroup)
            } else {
                String::new()
            };
            out.line(&format!(
                "{:>7} {:<16} {:<6} {:>7} {:>9.2} {:>9.2} {:>10} {:>10} {:>5}{cg}",
                s.tgid,
                s.comm,
                kind_name(s.kind),
                s.stats.count,
                ms(s.stats.total_ns),
                ms(s.stats.max_ns),
                s.stats.lru_scanned,
                s.stats.lru_reclaimed,
                eff_text(s.stats.lru_scanned, s.stats.lru_reclaimed)
            ));
        }
        if self.stalls.is_empty() {
            out.line("(no direct or memcg reclaim stalls)");
        } else if self.stalls.len() > args.top {
            out.line(&format!(
                "... {} more (-n to show more)",
                self.stalls.len() - args.top
            ));
        }
        let cgroups = self.cgroups();
        if !cgroups.is_empty() {
            out.line("");
            out.line(&format!(
                "{:<6} {:>7} {:>9} {:>9} {:>10} {:>10} {:>5}  {:<28} CGROUP",
                "KIND",
                "STALLS",
                "TOTAL-ms",
                "MAX-ms",
                "SCANNED",
                "RECLAIMED",
                "EFF",
                "TOP PROCESS"
            ));
            let mut rows: Vec<_> = cgroups.iter().collect();
            rows.sort_by_key(|r| std::cmp::Reverse(r.1.total_ns));
            for ((cgroup, kind), c) in rows.into_iter().take(args.top) {
                out.line(&format!(
                    "{:<6} {:>7} {:>9.2} {:>9.2} {:>10} {:>10} {:>5}  {:<28} {cgroup}",
                    kind_name(*kind),
                    c.stalls,
                    ms(c.total_ns),
                    ms(c.max_ns),
                    c.scanned,
                    c.reclaimed,
                    eff_text(c.scanned, c.reclaimed),
                    format!("{} {} ({} procs)", c.top.1, c.top.2, c.processes),
                ));
            }
        }
        if !self.shrinkers.is_empty() {
            out.line("");
            out.line(&format!(
                "{:>7} {:>9} {:>9} {:>10}  SHRINKER",
                "CALLS", "TOTAL-ms", "MAX-ms", "FREED"
            ));
            for s in self.shrinkers.iter().take(args.top) {
                out.line(&format!(
                    "{:>7} {:>9.2} {:>9.2} {:>10}  {}",
                    s.stats.calls,
                    ms(s.stats.total_ns),
                    ms(s.stats.max_ns),
                    s.stats.freed,
                    s.function
                ));
            }
        }
        for o in &self.ooms {
            out.line(&format!(
                "OOM KILL {} {} (cgroup {}) triggered by {} {}",
                o.victim, o.victim_comm, o.cgroup, o.trigger_tgid, o.trigger_comm
            ));
        }
        if args.dist {
            let unit = if args.milliseconds { "msecs" } else { "usecs" };
            for s in &self.stalls {
                let Some(h) = &s.hist else { continue };
                out.line("");
                out.line(&format!(
                    "pid = {} {} {} reclaim stalls",
                    s.tgid,
                    s.comm,
                    kind_name(s.kind)
                ));
                for line in h.render(unit).lines() {
                    out.line(line);
                }
            }
        }
        if !redraw {
            out.line("");
        }
    }

    fn json(&self, args: &ReclaimtopArgs) -> Value {
        let t = &self.totals;
        let unit = if args.milliseconds { "msecs" } else { "usecs" };
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|n| {
                json!({"node": n.nid, "pid": n.pid, "comm": n.comm, "wakeups": n.wakeups,
                       "awake_ns": n.awake_ns, "cpu_pct": n.cpu_pct, "scanned": n.scanned,
                       "reclaimed": n.reclaimed, "efficiency_pct": efficiency(n.scanned, n.reclaimed)})
            })
            .collect();
        let stalls: Vec<Value> = self
            .stalls
            .iter()
            .map(|s| {
                json!({"pid": s.tgid, "comm": s.comm, "kind": kind_name(s.kind),
                       "cgroup": s.cgroup, "stalls": s.stats.count, "total_ns": s.stats.total_ns,
                       "max_ns": s.stats.max_ns, "nr_reclaimed": s.stats.reclaimed,
                       "scanned": s.stats.lru_scanned, "reclaimed": s.stats.lru_reclaimed,
                       "hist": s.hist.as_ref().map(|h| h.to_json(unit))})
            })
            .collect();
        let cgroups: Vec<Value> = self
            .cgroups()
            .iter()
            .map(|((cgroup, kind), c)| {
                json!({"cgroup": cgroup, "kind": kind_name(*kind), "stalls": c.stalls,
                       "total_ns": c.total_ns, "max_ns": c.max_ns, "scanned": c.scanned,
                       "reclaimed": c.reclaimed, "processes": c.processes,
                       "top_pid": c.top.1, "top_comm": c.top.2})
            })
            .collect();
        let wakers: Vec<Value> = self
            .wakers
            .iter()
            .map(|w| {
                json!({"pid": w.tgid, "comm": w.comm, "cgroup": w.cgroup, "wakeups": w.wakeups})
            })
            .collect();
        let shrinkers: Vec<Value> = self
            .shrinkers
            .iter()
            .map(|s| {
                json!({"function": s.function, "calls": s.stats.calls,
                       "total_ns": s.stats.total_ns, "max_ns": s.stats.max_ns,
                       "freed": s.stats.freed})
            })
            .collect();
        let ooms: Vec<Value> = self
            .ooms
            .iter()
            .map(|o| {
                json!({"victim_pid": o.victim, "victim_comm": o.victim_comm, "cgroup": o.cgroup,
                       "trigger_pid": o.trigger_tgid, "trigger_comm": o.trigger_comm,
                       "time": o.unix_ns as f64 / 1e9})
            })
            .collect();
        with_schema(
            TOOL,
            json!({
                "type": "interval",
                "time": hms_now(),
                "interval_ns": self.interval_ns,
                "kswapd_scanned": t.kswapd_scanned,
                "kswapd_reclaimed": t.kswapd_reclaimed,
                "direct_scanned": t.direct_scanned,
                "direct_reclaimed": t.direct_reclaimed,
                "memcg_scanned": t.memcg_scanned,
                "memcg_reclaimed": t.memcg_reclaimed,
                "efficiency_pct": efficiency(
                    t.kswapd_scanned + t.direct_scanned + t.memcg_scanned,
                    t.kswapd_reclaimed + t.direct_reclaimed + t.memcg_reclaimed),
                "kswapd": nodes,
                "kswapd_wakers": wakers,
                "stalls": stalls,
                "cgroups": cgroups,
                "shrinkers": shrinkers,
                "oom_kills": ooms,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::reclaimtop::KIND_DIRECT;

    #[test]
    fn efficiency_is_reclaimed_over_scanned() {
        assert_eq!(efficiency(0, 0), None);
        assert_eq!(efficiency(200, 50), Some(25.0));
        assert_eq!(eff_text(0, 0), "-");
        assert_eq!(eff_text(3, 3), "100%");
    }

    #[test]
    fn kinds_are_named() {
        assert_eq!(kind_name(KIND_DIRECT), "direct");
        assert_eq!(kind_name(KIND_MEMCG), "memcg");
    }
}

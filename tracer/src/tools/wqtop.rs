//! wqtop: workqueue work, live. Per work function and workqueue: runs, time in the worker
//! (workqueue_execute_start → workqueue_execute_end), queue latency (workqueue_queue_work →
//! execute_start), the worker threads that ran it and who queued it — the task, or "softirq" /
//! "irq" when it was queued from interrupt context. It answers "kworker/u8 is at 100 %: which
//! work, queued by whom".
//!
//! The kernel keeps running totals (tracer-ebpf/src/wqtop.rs); every interval is the difference
//! of two snapshots. Offsets the programs need come from BTF and the tracepoint formats at load
//! time: the workqueue tracepoints' records differ across kernels (the workqueue name is a
//! pointer before 5.19 or so and a string after).

use std::{collections::HashMap, io::IsTerminal as _, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use tracer_common::{
    hist::Log2Hist,
    wqtop::{
        CTX_HARDIRQ, CTX_NMI, CTX_SOFTIRQ, CTX_TASK, FuncKey, FuncStats, HIST_LATENCY, HIST_RUN,
        QueuerKey, QueuerStats, WorkerKey, WorkerStats, WqConfig, WqHistKey,
    },
};

use super::runqlat;
use crate::{
    attach::{self, Attachment, Mechanism},
    btf::KernelBtf,
    cgroup::{self, Controller},
    filters,
    hist::Log2,
    loader::{self, Stats, StatsReader, objects},
    output::{Clock, Out, comm_str, end_record, hms_now, with_schema},
    session::{self, IntervalArgs},
    stacks::{self, Symbols},
    tools::CommonArgs,
    tracefs,
};

const TOOL: &str = "wqtop";

/// Order of the function rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortKey {
    /// Most time in the worker first.
    Time,
    /// Most runs first.
    Runs,
    /// Longest average queue latency first.
    Latency,
}

/// Live workqueue view: per work function, runs, time in the worker, queue latency, the workers
/// that ran it and the tasks (or interrupt contexts) that queued it.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    wqtop                    live view, 1 s refresh\n  \
    wqtop -D 5 1             one 5 s interval with latency and run-time histograms\n  \
    wqtop -p 1234            only work queued by PID 1234\n  \
    wqtop --worker 38        only work kworker 38 ran (after ktop: \"kworker 38 busy; see wqtop\")\n  \
    wqtop --comm 'kswapd*'   only work queued by tasks named kswapd...\n  \
    wqtop -G -s runs         queuers with their cgroup, busiest functions by runs\n  \
    wqtop --json 1 3         JSON lines")]
pub struct WqtopArgs {
    /// Only work queued by this process (work queued from interrupt context is left out).
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Only work queued by tasks with this comm (exact, or a prefix ending in '*').
    #[arg(long, value_name = "COMM")]
    pub comm: Option<String>,
    /// Only work this worker thread ran (a kworker's TID, as ktop names it): each function's
    /// runs and run time are that worker's; queue latency and queuers stay the function's.
    #[arg(long, value_name = "TID")]
    pub worker: Option<u32>,
    /// Show each queuing process's cgroup (its /proc/PID/cgroup while it lives; recorded in
    /// the kernel when it queued, so one that exited since is still named).
    #[arg(short = 'G', long = "show-cgroup")]
    pub show_cgroup: bool,
    /// Per-function log2 histograms of queue latency and run time (microseconds).
    #[arg(short = 'D', long = "dist")]
    pub dist: bool,
    /// Order of the function rows.
    #[arg(short = 's', long, value_enum, default_value_t = SortKey::Time)]
    pub sort: SortKey,
    /// Function rows to print per interval (text output; JSON has every function).
    #[arg(short = 'n', long = "top", value_name = "N", default_value_t = 20)]
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

/// Queuers and workers shown per function in text.
const TOP_PER_FUNCTION: usize = 3;

pub async fn run(args: WqtopArgs) -> Result<()> {
    args.cgroup.install(&crate::btf::KernelBtf::new())?;
    if let Some(pid) = args.pid {
        session::check_pid(pid)?;
    }
    if args.top == 0 {
        usage_bail!("--top must be at least 1");
    }
    if let Some(tid) = args.worker
        && (tid == 0 || !std::path::Path::new(&format!("/proc/{tid}")).exists())
    {
        usage_bail!("--worker {tid}: no such thread (ktop and 'ps -eLf' list kworkers)");
    }
    let comm = filters::comm_filter(args.comm.as_deref())?;
    let btf = KernelBtf::new();
    let force = args.common.attach_for(
        TOOL,
        &[Mechanism::TpBtf, Mechanism::RawTp, Mechanism::Tracepoint],
    )?;
    let config = WqConfig {
        tgid: args.pid.unwrap_or(0),
        queuer_filter: u32::from(
            args.pid.is_some() || args.comm.is_some() || args.cgroup.cgroup.is_some(),
        ),
        comm,
        hists: args.dist.into(),
        with_cgroup: args.show_cgroup.into(),
        ..offsets(&btf)?
    };
    let (mut ebpf, attached) = load_and_attach(&btf, config, force)?;
    if args.common.verbose {
        for a in &attached {
            errln!("{TOOL}: {}", a.summary());
        }
        if config.preempt_known == 0 {
            errln!(
                "{TOOL}: this kernel's preempt count is not in its BTF: work queued from \
                 interrupt context is charged to the interrupted task"
            );
        }
    }
    let mut view = View::new(&mut ebpf, args)?;
    view.attach = attached.iter().map(Attachment::json).collect();
    errln!(
        "Tracing workqueue work ({})... Hit Ctrl-C to end.",
        attached[1].mechanism
    );
    view.run().await
}

/// Loads wqtop's object with `config` (filters, histograms and the offsets from `offsets`)
/// and attaches queue, execute_start and execute_end; serve's workqueue collector shares it.
pub fn load_and_attach(
    btf: &KernelBtf,
    config: WqConfig,
    force: Option<Mechanism>,
) -> Result<(Ebpf, Vec<Attachment>)> {
    let mut ebpf = loader::load(objects::WQTOP, |l| {
        l.override_global("WQ_CONFIG", &config, true);
    })?;
    let mut attached = Vec::new();
    for (event, prefix, btf_args) in [
        (
            "workqueue_queue_work",
            "wq_queue",
            config.work_func_offset != 0,
        ),
        (
            "workqueue_execute_start",
            "wq_start",
            config.work_func_offset != 0,
        ),
        ("workqueue_execute_end", "wq_end", true),
    ] {
        attached.push(attach_event(
            &mut ebpf, btf, event, prefix, btf_args, force,
        )?);
    }
    Ok((ebpf, attached))
}

/// The offsets the programs read, from BTF and the tracepoint formats. The BTF-argument rungs
/// need `work_struct::func` (zero leaves them out); the classic tracepoint rung needs the
/// format fields.
pub fn offsets(btf: &KernelBtf) -> Result<WqConfig> {
    let mut config = WqConfig::DEFAULT;
    let member = |s: &str, m: &str| btf.member_offset(s, m).ok();
    if let (Some(func), Some(wq), Some(name)) = (
        member("work_struct", "func"),
        member("pool_workqueue", "wq"),
        member("workqueue_struct", "name"),
    ) {
        // `func` is never at 0 (the `data` word comes first): 0 means "not available".
        config.work_func_offset = func;
        config.pwq_wq_offset = wq;
        config.wq_name_offset = name;
    }
    if let Ok(fields) = tracefs::fields("workqueue", "workqueue_queue_work") {
        let find = |n: &str| fields.iter().find(|f| f.name == n);
        if let (Some(work), Some(function), Some(wq)) =
            (find("work"), find("function"), find("workqueue"))
        {
            config.tp_queue_work_offset = work.offset;
            config.tp_queue_function_offset = function.offset;
            config.tp_queue_wq_offset = wq.offset;
            config.tp_queue_wq_is_string = u32::from(wq.declaration.starts_with("__data_loc"));
        }
    }
    if let Ok(fields) = tracefs::fields("workqueue", "workqueue_execute_start") {
        let find = |n: &str| fields.iter().find(|f| f.name == n);
        if let (Some(work), Some(function)) = (find("work"), find("function")) {
            config.tp_start_work_offset = work.offset;
            config.tp_start_function_offset = function.offset;
        }
    }
    if config.work_func_offset == 0 && config.tp_start_function_offset == 0 {
        bail!(
            "this kernel has neither BTF for work_struct nor the workqueue tracepoints \
             (CONFIG_WORKQUEUE tracing); {}",
            crate::btf::SUPPORTED
        );
    }
    // The preempt count: `__preempt_count` (x86 up to 6.1 and since 6.15) or a member of
    // `pcpu_hot` (6.2 to 6.14), a per-CPU variable like `runqueues`.
    let preempt = btf.percpu_var_offset("__preempt_count").ok().or_else(|| {
        let hot = btf.percpu_var_offset("pcpu_hot").ok()?;
        Some(hot + btf.member_offset("pcpu_hot", "preempt_count").ok()?)
    });
    let btf_distance = preempt.and_then(|preempt| {
        let rq = btf.percpu_var_offset("runqueues").ok()?;
        Some(i64::from(preempt) - i64::from(rq))
    });
    // BTF without per-CPU variables (pahole before 1.18 built it: Debian's 5.10): the same
    // distance from /proc/kallsyms, which lists per-CPU symbols with CONFIG_KALLSYMS_ALL.
    let distance = btf_distance.or_else(kallsyms_preempt_from_rq);
    if let (Some(distance), Some(se), Some(cfs_rq), Some(rq_of), Some(cpu)) = (
        distance,
        member("task_struct", "se"),
        member("sched_entity", "cfs_rq"),
        member("cfs_rq", "rq"),
        member("rq", "cpu"),
    ) {
        config.task_se_offset = se;
        config.se_cfs_rq_offset = cfs_rq;
        config.cfs_rq_rq_offset = rq_of;
        config.rq_cpu_offset = cpu;
        config.preempt_from_rq = distance;
        config.preempt_known = 1;
    }
    Ok(config)
}

/// `&__preempt_count - &runqueues` from /proc/kallsyms, when it lists both.
fn kallsyms_preempt_from_rq() -> Option<i64> {
    let text = std::fs::read_to_string("/proc/kallsyms").ok()?;
    let (mut preempt, mut rq) = (None, None);
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(address), Some(_kind), Some(name), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let slot = match name {
            "__preempt_count" => &mut preempt,
            "runqueues" => &mut rq,
            _ => continue,
        };
        *slot = u64::from_str_radix(address, 16).ok();
        if preempt.is_some() && rq.is_some() {
            break;
        }
    }
    let (preempt, rq) = (preempt?, rq?);
    // All zeros: kptr_restrict hides the addresses.
    if preempt == 0 && rq == 0 {
        return None;
    }
    Some(preempt.wrapping_sub(rq) as i64)
}

fn attach_event(
    ebpf: &mut Ebpf,
    btf: &KernelBtf,
    event: &'static str,
    prefix: &str,
    btf_args: bool,
    force: Option<Mechanism>,
) -> Result<Attachment> {
    let mechanisms: &[Mechanism] = if btf_args {
        &[Mechanism::TpBtf, Mechanism::RawTp, Mechanism::Tracepoint]
    } else {
        &[Mechanism::Tracepoint]
    };
    let force = force.filter(|f| mechanisms.contains(f));
    attach::tracepoint_ladder(ebpf, btf, "workqueue", event, prefix, mechanisms, force)
        .with_context(|| format!("cannot attach to workqueue:{event}"))
}

/// One reading of the kernel's running totals, summed over CPUs.
#[derive(Default)]
struct Snapshot {
    now_ns: u64,
    funcs: HashMap<FuncKey, FuncStats>,
    queuers: HashMap<QueuerKey, (u64, [u8; 16])>,
    workers: HashMap<WorkerKey, WorkerStats>,
    hists: HashMap<WqHistKey, Log2>,
}

/// Who queued a function, over one interval.
#[derive(Clone, Debug)]
struct Queuer {
    key: QueuerKey,
    comm: String,
    queued: u64,
}

#[derive(Clone, Debug)]
struct Worker {
    tid: u32,
    comm: String,
    runs: u64,
    run_ns: u64,
}

/// One function on one workqueue, over one interval.
#[derive(Clone, Debug)]
struct Row {
    function: String,
    workqueue: String,
    stats: FuncStats,
    queuers: Vec<Queuer>,
    queued: u64,
    workers: Vec<Worker>,
    latency_hist: Option<Log2>,
    run_hist: Option<Log2>,
}

impl Row {
    fn avg_latency_ns(&self) -> u64 {
        self.stats
            .latency_ns
            .checked_div(self.stats.waited)
            .unwrap_or(0)
    }
}

struct View {
    args: WqtopArgs,
    funcs: PerCpuHashMap<MapData, FuncKey, FuncStats>,
    queuers: PerCpuHashMap<MapData, QueuerKey, QueuerStats>,
    workers: PerCpuHashMap<MapData, WorkerKey, WorkerStats>,
    hists: PerCpuHashMap<MapData, WqHistKey, Log2Hist>,
    stats: StatsReader,
    symbols: Symbols,
    function_names: HashMap<u64, String>,
    cgroups: cgroup::Resolver,
    ncpus: usize,
    /// The end record's `attach` list.
    attach: Vec<Value>,
}

impl View {
    fn new(ebpf: &mut Ebpf, args: WqtopArgs) -> Result<Self> {
        let ncpus = aya::util::online_cpus()
            .map_err(|(path, e)| anyhow!("cannot read {path}: {e}"))?
            .len();
        Ok(Self {
            funcs: loader::take(ebpf, "FUNCS")?,
            queuers: loader::take(ebpf, "QUEUERS")?,
            workers: loader::take(ebpf, "WORKERS")?,
            hists: loader::take(ebpf, "HISTS")?,
            stats: StatsReader::take(ebpf)?,
            args,
            symbols: Symbols::new(),
            function_names: HashMap::new(),
            cgroups: cgroup::Resolver::default(),
            ncpus,
            attach: Vec::new(),
        })
    }

    fn snapshot(&self) -> Snapshot {
        let funcs = self
            .funcs
            .iter()
            .flatten()
            .map(|(k, per_cpu)| {
                let mut sum = FuncStats::default();
                for s in per_cpu.iter() {
                    sum.runs += s.runs;
                    sum.ended += s.ended;
                    sum.run_ns += s.run_ns;
                    sum.max_run_ns = sum.max_run_ns.max(s.max_run_ns);
                    sum.waited += s.waited;
                    sum.latency_ns += s.latency_ns;
                    sum.max_latency_ns = sum.max_latency_ns.max(s.max_latency_ns);
                }
                (k, sum)
            })
            .collect();
        let queuers = self
            .queuers
            .iter()
            .flatten()
            .map(|(k, per_cpu)| {
                let queued = per_cpu.iter().map(|s| s.queued).sum();
                // The comm is written where the record was created; on the other CPUs the
                // kernel started the value zeroed and only counts into it.
                let comm = per_cpu
                    .iter()
                    .find(|s| s.comm[0] != 0)
                    .map(|s| s.comm)
                    .unwrap_or([0; 16]);
                (k, (queued, comm))
            })
            .collect();
        let workers = self
            .workers
            .iter()
            .flatten()
            .map(|(k, per_cpu)| {
                let mut sum = WorkerStats::default();
                for s in per_cpu.iter() {
                    sum.runs += s.runs;
                    sum.run_ns += s.run_ns;
                }
                (k, sum)
            })
            .collect();
        let hists = if self.args.dist {
            self.hists
                .iter()
                .flatten()
                .map(|(k, per_cpu)| (k, Log2::from_per_cpu(per_cpu.iter())))
                .collect()
        } else {
            HashMap::new()
        };
        Snapshot {
            now_ns: Clock::now_monotonic_ns(),
            funcs,
            queuers,
            workers,
            hists,
        }
    }

    fn function_name(&mut self, address: u64) -> String {
        stacks::kernel_function_name(&mut self.symbols, &mut self.function_names, address)
    }

    /// The functions' activity between two snapshots, sorted.
    fn rows(&mut self, now: &Snapshot, before: &Snapshot) -> Vec<Row> {
        let mut queuers: HashMap<u64, Vec<Queuer>> = HashMap::new();
        for (key, (queued, comm)) in &now.queuers {
            let old = before.queuers.get(key).map(|q| q.0).unwrap_or(0);
            let delta = queued.saturating_sub(old);
            if delta > 0 {
                queuers.entry(key.function).or_default().push(Queuer {
                    key: *key,
                    comm: comm_str(comm),
                    queued: delta,
                });
            }
        }
        let mut workers: HashMap<u64, Vec<Worker>> = HashMap::new();
        for (key, stats) in &now.workers {
            let old = before.workers.get(key).copied().unwrap_or_default();
            let runs = stats.runs.saturating_sub(old.runs);
            if runs > 0 {
                workers.entry(key.function).or_default().push(Worker {
                    tid: key.tid,
                    comm: thread_comm(key.tid),
                    runs,
                    run_ns: stats.run_ns.saturating_sub(old.run_ns),
                });
            }
        }
        let mut rows = Vec::new();
        for (key, stats) in &now.funcs {
            let old = before.funcs.get(key).copied().unwrap_or_default();
            let delta = FuncStats {
                runs: stats.runs.saturating_sub(old.runs),
                ended: stats.ended.saturating_sub(old.ended),
                run_ns: stats.run_ns.saturating_sub(old.run_ns),
                // Maxima are since attach: an interval's own maximum would need a reset.
                max_run_ns: stats.max_run_ns,
                waited: stats.waited.saturating_sub(old.waited),
                latency_ns: stats.latency_ns.saturating_sub(old.latency_ns),
                max_latency_ns: stats.max_latency_ns,
            };
            if delta.runs == 0 && delta.ended == 0 {
                continue;
            }
            let hist = |kind| {
                let key = WqHistKey {
                    function: key.function,
                    kind,
                    _reserved: 0,
                };
                now.hists.get(&key).map(|h| match before.hists.get(&key) {
                    Some(b) => h.since(b),
                    None => h.clone(),
                })
            };
            let mut q = queuers.get(&key.function).cloned().unwrap_or_default();
            q.sort_by(|a, b| b.queued.cmp(&a.queued).then(a.key.pid.cmp(&b.key.pid)));
            let mut w = workers.get(&key.function).cloned().unwrap_or_default();
            w.sort_by(|a, b| b.run_ns.cmp(&a.run_ns).then(a.tid.cmp(&b.tid)));
            let mut delta = delta;
            if let Some(tid) = self.args.worker {
                // The function as this worker ran it: its runs and time only.
                w.retain(|worker| worker.tid == tid);
                let Some(mine) = w.first() else {
                    continue;
                };
                delta.runs = mine.runs;
                delta.ended = mine.runs;
                delta.run_ns = mine.run_ns;
            }
            rows.push(Row {
                function: self.function_name(key.function),
                workqueue: comm_str(&key.wq),
                stats: delta,
                queued: q.iter().map(|q| q.queued).sum(),
                queuers: q,
                workers: w,
                latency_hist: hist(HIST_LATENCY),
                run_hist: hist(HIST_RUN),
            });
        }
        rows.sort_by(|a, b| {
            let order = match self.args.sort {
                SortKey::Time => b.stats.run_ns.cmp(&a.stats.run_ns),
                SortKey::Runs => b.stats.runs.cmp(&a.stats.runs),
                SortKey::Latency => b.avg_latency_ns().cmp(&a.avg_latency_ns()),
            };
            order
                .then(b.stats.runs.cmp(&a.stats.runs))
                .then(a.function.cmp(&b.function))
                .then(a.workqueue.cmp(&b.workqueue))
        });
        rows
    }

    /// Forgets the queuer and worker records that did not change in an interval (exited
    /// tasks, finished bursts), so the maps do not fill; a record that comes back starts
    /// from zero, which the next interval's difference handles.
    fn forget_idle(&mut self, now: &mut Snapshot, before: &Snapshot) {
        let idle_queuers: Vec<QueuerKey> = now
            .queuers
            .iter()
            .filter(|(k, v)| before.queuers.get(*k).map(|b| b.0) == Some(v.0))
            .map(|(k, _)| *k)
            .collect();
        for key in idle_queuers {
            let _ = self.queuers.remove(&key);
            now.queuers.remove(&key);
        }
        let idle_workers: Vec<WorkerKey> = now
            .workers
            .iter()
            .filter(|(k, v)| before.workers.get(*k) == Some(*v))
            .map(|(k, _)| *k)
            .collect();
        for key in idle_workers {
            let _ = self.workers.remove(&key);
            now.workers.remove(&key);
        }
    }

    async fn run(&mut self) -> Result<()> {
        let mut out = Out::new();
        let json = self.args.common.output.json;
        let redraw =
            out.is_tty() && std::io::stdout().is_terminal() && !json && !self.args.no_redraw;
        let stop = session::stop_requested(self.args.common.duration.duration);
        tokio::pin!(stop);
        let interval = self
            .args
            .interval
            .interval
            .unwrap_or(Duration::from_secs(1));
        let mut ticker = runqlat::ticker(Some(interval));
        // The maps are empty at attach: the first interval counts from there (a first
        // snapshot here would hide what ran since the "Tracing" line).
        let mut before = Snapshot {
            now_ns: Clock::now_monotonic_ns(),
            ..Snapshot::default()
        };
        let mut printed = 0u64;
        let mut reported = Stats::default();
        loop {
            let stopped = tokio::select! {
                reason = &mut stop => { reason?; true }
                _ = runqlat::tick(&mut ticker) => false,
            };
            let mut now = self.snapshot();
            let rows = self.rows(&now, &before);
            let interval_ns = now.now_ns.saturating_sub(before.now_ns).max(1);
            self.cgroups.clear();
            if json {
                let value = self.interval_json(&rows, interval_ns);
                out.json(&value);
            } else {
                self.print_text(&rows, interval_ns, redraw, &mut out);
            }
            out.flush();
            runqlat::report_drops(TOOL, &self.stats.read(), &mut reported);
            printed += 1;
            if stopped || out.closed() || self.args.interval.count.is_some_and(|c| printed >= c) {
                break;
            }
            self.forget_idle(&mut now, &before);
            before = now;
        }
        if json {
            let end = self.stats.read();
            out.json(&end_record(
                TOOL,
                self.attach.clone(),
                end.map_full,
                end.read_errors,
                json!({}),
            ));
        }
        Ok(())
    }

    fn queuer_label(&mut self, q: &Queuer) -> String {
        let who = match q.key.context {
            CTX_SOFTIRQ => "softirq".to_string(),
            CTX_HARDIRQ => "irq".to_string(),
            CTX_NMI => "nmi".to_string(),
            CTX_TASK => format!("{} {}", q.key.tgid, q.comm),
            // The preempt count was not found: the task may be one an interrupt interrupted.
            _ => format!("{} {}?", q.key.tgid, q.comm),
        };
        if self.args.show_cgroup && q.key.tgid != 0 {
            let path = self
                .cgroups
                .label_at(q.key.tgid, q.key.cgroup, Controller::Cpu);
            format!("{who} [{path}]")
        } else {
            who
        }
    }

    fn print_text(&mut self, rows: &[Row], interval_ns: u64, redraw: bool, out: &mut Out) {
        let runs: u64 = rows.iter().map(|r| r.stats.runs).sum();
        let busy: u64 = rows.iter().map(|r| r.stats.run_ns).sum();
        out.screen_title(
            "wqtop",
            redraw,
            self.args.common.output.timestamp,
            &format!(
                "interval {:.2}s  {runs} runs  {:.1} ms in work items ({:.1}% of {} CPUs)",
                interval_ns as f64 / 1e9,
                busy as f64 / 1e6,
                pct(busy, interval_ns * self.ncpus as u64),
                self.ncpus,
            ),
        );
        out.line(&format!(
            "{:>7} {:>6} {:>9} {:>9} {:>9} {:>9}  {:<32} {}",
            "RUNS", "%TIME", "TIME-ms", "AVG-us", "QLAT-us", "QMAX-us", "FUNCTION", "WORKQUEUE"
        ));
        for row in rows.iter().take(self.args.top) {
            let s = &row.stats;
            let avg_us = s.run_ns.checked_div(s.ended).unwrap_or(0) as f64 / 1e3;
            out.line(&format!(
                "{:>7} {:>6.1} {:>9.2} {:>9.1} {:>9.1} {:>9.1}  {:<32} {}",
                s.runs,
                pct(s.run_ns, interval_ns),
                s.run_ns as f64 / 1e6,
                avg_us,
                row.avg_latency_ns() as f64 / 1e3,
                s.max_latency_ns as f64 / 1e3,
                row.function,
                if row.workqueue.is_empty() {
                    "?"
                } else {
                    &row.workqueue
                },
            ));
            if !row.queuers.is_empty() {
                let mut shown: Vec<String> = Vec::new();
                for q in row.queuers.iter().take(TOP_PER_FUNCTION) {
                    shown.push(format!("{} ×{}", self.queuer_label(q), q.queued));
                }
                if row.queuers.len() > TOP_PER_FUNCTION {
                    shown.push(format!("+{} more", row.queuers.len() - TOP_PER_FUNCTION));
                }
                out.line(&format!("        queued by: {}", shown.join(", ")));
            }
            if !row.workers.is_empty() {
                let mut shown: Vec<String> = row
                    .workers
                    .iter()
                    .take(TOP_PER_FUNCTION)
                    .map(|w| {
                        format!(
                            "{} {} ×{} {:.2} ms",
                            w.tid,
                            w.comm,
                            w.runs,
                            w.run_ns as f64 / 1e6
                        )
                    })
                    .collect();
                if row.workers.len() > TOP_PER_FUNCTION {
                    shown.push(format!("+{} more", row.workers.len() - TOP_PER_FUNCTION));
                }
                out.line(&format!("        ran in:    {}", shown.join(", ")));
            }
            for (what, hist) in [
                ("queue latency", &row.latency_hist),
                ("run time", &row.run_hist),
            ] {
                if let Some(hist) = hist
                    && hist.count() > 0
                {
                    out.line(&format!("        {what} of {}:", row.function));
                    for line in hist.render("usecs").lines() {
                        out.line(&format!("        {line}"));
                    }
                }
            }
        }
        if rows.is_empty() {
            out.line("(no work ran)");
        }
        if rows.len() > self.args.top {
            out.line(&format!(
                "... {} more functions (-n to show more)",
                rows.len() - self.args.top
            ));
        }
        if !redraw {
            out.line("");
        }
    }

    fn interval_json(&mut self, rows: &[Row], interval_ns: u64) -> Value {
        let mut functions = Vec::new();
        for row in rows {
            let s = &row.stats;
            let queuers: Vec<Value> = row
                .queuers
                .iter()
                .map(|q| {
                    let in_task = q.key.context == CTX_TASK || q.key.tgid != 0;
                    let mut value = json!({
                        "context": context_name(q.key.context),
                        "queued": q.queued,
                        "pid": in_task.then_some(q.key.tgid),
                        "tid": in_task.then_some(q.key.pid),
                        "comm": in_task.then_some(&q.comm),
                    });
                    if self.args.show_cgroup {
                        value["cgroup"] = json!(in_task.then(|| self.cgroups.label_at(
                            q.key.tgid,
                            q.key.cgroup,
                            Controller::Cpu
                        )));
                    }
                    value
                })
                .collect();
            let workers: Vec<Value> = row
                .workers
                .iter()
                .map(|w| json!({"tid": w.tid, "comm": w.comm, "runs": w.runs, "run_ns": w.run_ns}))
                .collect();
            let mut value = json!({
                "function": row.function,
                "workqueue": (!row.workqueue.is_empty()).then_some(&row.workqueue),
                "runs": s.runs, "ended": s.ended, "run_ns": s.run_ns,
                "run_pct": pct(s.run_ns, interval_ns), "max_run_ns": s.max_run_ns,
                "latency_count": s.waited, "latency_ns": s.latency_ns,
                "max_latency_ns": s.max_latency_ns,
                "queued": row.queued, "queuers": queuers, "workers": workers,
            });
            if self.args.dist {
                value["latency_hist"] =
                    json!(row.latency_hist.as_ref().map(|h| h.to_json("usecs")));
                value["run_hist"] = json!(row.run_hist.as_ref().map(|h| h.to_json("usecs")));
            }
            functions.push(value);
        }
        with_schema(
            TOOL,
            json!({"type": "interval", "time": hms_now(), "interval_ns": interval_ns,
                   "cpus": self.ncpus, "functions": functions}),
        )
    }
}

fn context_name(context: u32) -> &'static str {
    match context {
        CTX_TASK => "task",
        CTX_SOFTIRQ => "softirq",
        CTX_HARDIRQ => "irq",
        CTX_NMI => "nmi",
        _ => "unknown",
    }
}

/// A worker's name as /proc shows it (`kworker/0:1-events`: the workqueue it last served).
fn thread_comm(tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{tid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "(exited)".to_string())
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

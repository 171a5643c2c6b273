//! ktop: a top-like view of threads by on-CPU time, measured from `sched_switch` (every slice,
//! to the nanosecond) rather than sampled from /proc. Per interval and thread: on-CPU %,
//! voluntary/involuntary switches, run-queue wait; kernel threads carry their role, kworkers
//! the work function they ran (`workqueue_execute_start`).
//!
//! The kernel keeps running totals per (thread, CPU) and, per CPU, who runs since when; at each
//! snapshot the still-open slice is added to the running thread, so per CPU the threads' times
//! (idle task included) add up to the interval.

use std::{
    collections::{BTreeMap, HashMap},
    io::IsTerminal as _,
    time::Duration,
};

use anyhow::{Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
};
use clap::Args;
use serde_json::{Value, json};
use tracer_common::{
    sched::{CpuState, SchedConfig, ThreadKey, ThreadStats, WorkStats},
    task::PF_KTHREAD,
};

use super::runqlat::{self, SchedTool};
use crate::{
    attach::{self, Attachment, Mechanism, Rung, Target},
    btf::KernelBtf,
    kthread_roles,
    loader::{self, Stats, StatsReader},
    output::{Clock, Out, comm_str, end_record, hms_now, with_schema},
    session::{self, IntervalArgs},
    stacks::{self, Symbols},
    tools::CommonArgs,
    tracefs,
};

const TOOL: &str = "ktop";

/// Live top-like view of threads by on-CPU time from sched_switch, with kernel-thread roles.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    ktop                     refresh every second until Ctrl-C\n  \
    ktop --kthreads          kernel threads only, with their roles and kworker functions\n  \
    ktop -p 185 2 5          threads of PID 185, every 2 s, 5 times\n  \
    ktop --json 1 3          JSON lines (every thread with activity, per-CPU times)")]
pub struct KtopArgs {
    /// Only kernel threads (PF_KTHREAD; the idle tasks are shown per CPU in the header).
    #[arg(long)]
    pub kthreads: bool,
    /// Only threads of this process.
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Rows to print per interval (text output; JSON has every active thread).
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

pub async fn run(args: KtopArgs) -> Result<()> {
    args.cgroup.install(&crate::btf::KernelBtf::new())?;
    if let Some(pid) = args.pid {
        session::check_pid(pid)?;
    }
    if args.top == 0 {
        usage_bail!("--top must be at least 1");
    }
    let btf = KernelBtf::new();
    // Workqueue functions: tp_btf/raw_tp read work_struct::func, the classic tracepoint has it
    // as a field. Offer whichever rungs this kernel can feed.
    let work_func_offset = btf.member_offset("work_struct", "func").ok();
    let tp_function_offset =
        tracefs::field_offset("workqueue", "workqueue_execute_start", "function").ok();
    let config = SchedConfig {
        work_func_offset: work_func_offset.unwrap_or(0),
        tp_function_offset: tp_function_offset.unwrap_or(0),
        ..SchedConfig::DEFAULT
    };
    let mut ebpf = runqlat::load(&btf, config, SchedTool::Ktop)?;
    let force = args
        .common
        .attach_for(TOOL, &[Mechanism::TpBtf, Mechanism::RawTp])?;
    let switch = runqlat::attach_switch(&mut ebpf, &btf, "ktop", force)?;
    let wakeups = runqlat::attach_wakeups(&mut ebpf, &btf, force)?;
    let work = attach_work(
        &mut ebpf,
        &btf,
        work_func_offset.is_some(),
        tp_function_offset.is_some(),
        force,
    );
    if args.common.verbose {
        for a in wakeups.iter().chain([&switch]) {
            errln!("{TOOL}: {}", a.summary());
        }
        match &work {
            Ok(a) => errln!("{TOOL}: {}", a.summary()),
            Err(e) => errln!("{TOOL}: no kworker functions: {e}"),
        }
    }
    let mut view = View::new(&mut ebpf, work.is_ok())?;
    view.attach = wakeups
        .iter()
        .chain([&switch])
        .chain(work.as_ref().ok())
        .map(Attachment::json)
        .collect();
    kick_cpus(&view.online);
    view.wait_for_cpus().await;
    errln!(
        "Tracing on-CPU time ({})... Hit Ctrl-C to end.",
        switch.mechanism
    );
    view.run(&args).await
}

fn attach_work(
    ebpf: &mut Ebpf,
    btf: &KernelBtf,
    have_btf_offset: bool,
    have_tp_offset: bool,
    force: Option<Mechanism>,
) -> Result<Attachment> {
    let mut rungs = Vec::new();
    if have_btf_offset {
        rungs.push(Rung {
            mechanism: Mechanism::TpBtf,
            program: "ktop_work_btf",
        });
        rungs.push(Rung {
            mechanism: Mechanism::RawTp,
            program: "ktop_work_raw",
        });
    }
    if have_tp_offset {
        rungs.push(Rung {
            mechanism: Mechanism::Tracepoint,
            program: "ktop_work_tp",
        });
    }
    if rungs.is_empty() {
        bail!("this kernel has no workqueue:workqueue_execute_start tracepoint");
    }
    // A forced mechanism the workqueue ladder does not offer falls back to the ladder.
    let force = force.filter(|f| rungs.iter().any(|r| r.mechanism == *f));
    let target = Target::Tracepoint {
        category: "workqueue",
        event: "workqueue_execute_start",
    };
    Ok(attach::attach(ebpf, btf, target, &rungs, force)?)
}

/// Makes every online CPU switch once, so each CPU's running task is known from the start
/// (an idle CPU may otherwise not switch for seconds).
fn kick_cpus(cpus: &[u32]) {
    let handles: Vec<_> = cpus
        .iter()
        .map(|&cpu| {
            std::thread::spawn(move || {
                // SAFETY: a zeroed cpu_set_t with one bit set, for this thread only.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu as usize, &mut set);
                    libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
                }
                std::thread::sleep(Duration::from_millis(1));
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

/// One consistent reading of the kernel's totals.
pub(super) struct Snapshot {
    /// CLOCK_MONOTONIC ns (the clock of bpf_ktime_get_ns) when it was taken.
    now_ns: u64,
    /// Totals per (thread, CPU), open slices included.
    pub threads: HashMap<ThreadKey, ThreadStats>,
    /// Per online CPU: its state.
    cpus: BTreeMap<u32, CpuState>,
    work: HashMap<u32, WorkStats>,
}

/// One thread's activity in an interval, summed over CPUs.
#[derive(Clone, Debug, Default)]
struct Row {
    tid: u32,
    tgid: u32,
    comm: String,
    kthread: bool,
    oncpu_ns: u64,
    /// The CPU it spent most of the interval on.
    cpu: u32,
    per_cpu: BTreeMap<u32, u64>,
    voluntary: u64,
    involuntary: u64,
    runq_ns: u64,
    runq_count: u64,
    /// Work function (symbol) and items run in the interval, for kworkers.
    work: Option<(String, u64)>,
}

/// The `THREADS`, `CPU_STATE` and `WORK` maps of a loaded ktop object (`tracer serve` reads
/// kernel threads' on-CPU time through it too).
pub(super) struct View {
    threads: BpfHashMap<MapData, ThreadKey, ThreadStats>,
    cpu_state: PerCpuArray<MapData, CpuState>,
    work: Option<BpfHashMap<MapData, u32, WorkStats>>,
    stats: StatsReader,
    online: Vec<u32>,
    symbols: Symbols,
    function_names: HashMap<u64, String>,
    /// The end record's `attach` list.
    pub(super) attach: Vec<serde_json::Value>,
}

impl View {
    pub(super) fn new(ebpf: &mut Ebpf, with_work: bool) -> Result<Self> {
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("{name} map missing (build bug)"))
        };
        let threads = BpfHashMap::try_from(take(ebpf, "THREADS")?)?;
        let cpu_state = PerCpuArray::try_from(take(ebpf, "CPU_STATE")?)?;
        let work = if with_work {
            Some(BpfHashMap::try_from(take(ebpf, "WORK")?)?)
        } else {
            None
        };
        let stats = StatsReader::take(ebpf)?;
        let online =
            aya::util::online_cpus().map_err(|(path, e)| anyhow!("cannot read {path}: {e}"))?;
        Ok(Self {
            threads,
            cpu_state,
            work,
            stats,
            online,
            symbols: Symbols::new(),
            function_names: HashMap::new(),
            attach: Vec::new(),
        })
    }

    fn cpu_states(&self) -> BTreeMap<u32, CpuState> {
        let Ok(values) = self.cpu_state.get(&0, 0) else {
            return BTreeMap::new();
        };
        self.online
            .iter()
            .filter_map(|&cpu| values.get(cpu as usize).map(|s| (cpu, *s)))
            .collect()
    }

    async fn wait_for_cpus(&self) {
        for _ in 0..100 {
            if self.cpu_states().values().all(|s| s.since_ns != 0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every (thread, CPU) record: one batch read where the kernel has it (5.6+), else a walk.
    fn read_threads(&self) -> HashMap<ThreadKey, ThreadStats> {
        use aya::maps::IterableMap as _;
        match loader::read_all_batch::<ThreadKey, ThreadStats>(self.threads.map()) {
            Ok(Some(entries)) => entries.into_iter().collect(),
            _ => self.threads.iter().flatten().collect(),
        }
    }

    /// Reads the totals; retried while a CPU switched during the read, so that the open slices
    /// and the closed ones describe the same moment. A read that a switch splits misses the
    /// slice the switch closed (the record was copied before it, the CPU's state after), and
    /// the next interval then gains it: CI saw a CPU at 132 % of its interval when a walk of
    /// ~1 100 records (two syscalls each, milliseconds) rarely fit between two switches of a
    /// loaded machine and five attempts all failed. The batch read takes microseconds, so a
    /// settled attempt is the rule and the fallback after `SNAPSHOT_ATTEMPTS` an exception.
    pub(super) fn snapshot(&self) -> Snapshot {
        let mut attempt = 0;
        loop {
            let before = self.cpu_states();
            let mut threads = self.read_threads();
            let now_ns = Clock::now_monotonic_ns();
            let cpus = self.cpu_states();
            attempt += 1;
            let settled = before
                .iter()
                .all(|(cpu, s)| cpus.get(cpu).is_some_and(|a| a.switches == s.switches));
            if settled || attempt >= SNAPSHOT_ATTEMPTS {
                for (&cpu, state) in &cpus {
                    if state.since_ns == 0 {
                        continue;
                    }
                    let key = ThreadKey {
                        pid: state.pid,
                        cpu,
                    };
                    // Under `--cgroup` only threads the kernel kept a record for are rows: the
                    // CPU's running thread may be outside the cgroup.
                    if crate::cgroup::filtering() && !threads.contains_key(&key) {
                        continue;
                    }
                    let open = now_ns.saturating_sub(state.since_ns);
                    let entry = threads.entry(key).or_insert_with(|| ThreadStats {
                        tgid: state.pid,
                        task_flags: if state.pid == 0 { PF_KTHREAD } else { 0 },
                        comm: comm_of(state.pid),
                        ..ThreadStats::default()
                    });
                    entry.oncpu_ns += open;
                }
                let work = self
                    .work
                    .as_ref()
                    .map(|w| w.iter().flatten().collect())
                    .unwrap_or_default();
                return Snapshot {
                    now_ns,
                    threads,
                    cpus,
                    work,
                };
            }
        }
    }

    fn function_name(&mut self, address: u64) -> String {
        stacks::kernel_function_name(&mut self.symbols, &mut self.function_names, address)
    }

    /// Per-thread activity between two snapshots.
    fn rows(&mut self, now: &Snapshot, before: &Snapshot) -> Vec<Row> {
        let mut rows: HashMap<u32, Row> = HashMap::new();
        let mut latest: HashMap<u32, u64> = HashMap::new();
        for (key, stats) in &now.threads {
            if key.pid == 0 {
                continue;
            }
            let old = before.threads.get(key).copied().unwrap_or_default();
            let row = rows.entry(key.pid).or_insert_with(|| Row {
                tid: key.pid,
                ..Row::default()
            });
            let oncpu = stats.oncpu_ns.saturating_sub(old.oncpu_ns);
            row.oncpu_ns += oncpu;
            if oncpu > 0 {
                *row.per_cpu.entry(key.cpu).or_default() += oncpu;
            }
            row.voluntary += stats.voluntary.saturating_sub(old.voluntary);
            row.involuntary += stats.involuntary.saturating_sub(old.involuntary);
            row.runq_ns += stats.runq_ns.saturating_sub(old.runq_ns);
            row.runq_count += stats.runq_count.saturating_sub(old.runq_count);
            // Identity from the most recently updated record (comm changes on exec).
            let last = latest.entry(key.pid).or_default();
            if stats.last_ns >= *last || row.comm.is_empty() {
                *last = stats.last_ns;
                row.tgid = stats.tgid;
                row.comm = comm_str(&stats.comm);
                row.kthread = stats.task_flags & PF_KTHREAD != 0;
                row.cpu = key.cpu;
            }
        }
        let mut rows: Vec<Row> = rows
            .into_values()
            .filter(|r| r.oncpu_ns > 0 || r.voluntary + r.involuntary + r.runq_count > 0)
            .collect();
        for row in &mut rows {
            if let Some((&cpu, _)) = row.per_cpu.iter().max_by_key(|(_, ns)| **ns) {
                row.cpu = cpu;
            }
            if let Some(work) = now.work.get(&row.tid) {
                let items = work.count - before.work.get(&row.tid).map(|w| w.count).unwrap_or(0);
                row.work = Some((self.function_name(work.function), items));
            }
        }
        rows.sort_by(|a, b| {
            b.oncpu_ns
                .cmp(&a.oncpu_ns)
                .then((b.voluntary + b.involuntary).cmp(&(a.voluntary + a.involuntary)))
                .then(a.tid.cmp(&b.tid))
        });
        rows
    }

    /// Drops the records of threads that exited and did nothing this interval; returns them
    /// (with their final totals) for callers that keep running sums.
    pub(super) fn forget_dead(
        &mut self,
        now: &mut Snapshot,
        before: &Snapshot,
    ) -> Vec<(ThreadKey, ThreadStats)> {
        let dead: Vec<ThreadKey> = now
            .threads
            .iter()
            .filter(|(k, v)| k.pid != 0 && before.threads.get(*k) == Some(*v))
            .filter(|(k, _)| !std::path::Path::new(&format!("/proc/{}", k.pid)).exists())
            .map(|(k, _)| *k)
            .collect();
        let mut removed = Vec::new();
        for key in dead {
            let _ = self.threads.remove(&key);
            if let Some(stats) = now.threads.remove(&key) {
                removed.push((key, stats));
            }
            if let Some(work) = self.work.as_mut() {
                let _ = work.remove(&key.pid);
            }
        }
        removed
    }

    /// Kernel-side drop counters.
    pub(super) fn stats(&self) -> Stats {
        self.stats.read()
    }

    async fn run(&mut self, args: &KtopArgs) -> Result<()> {
        let mut out = Out::new();
        let redraw = out.is_tty()
            && std::io::stdout().is_terminal()
            && !args.common.output.json
            && !args.no_redraw;
        let stop = session::stop_requested(args.common.duration.duration);
        tokio::pin!(stop);
        let interval = args.interval.interval.unwrap_or(Duration::from_secs(1));
        let mut ticker = runqlat::ticker(Some(interval));
        let mut before = self.snapshot();
        let mut printed = 0u64;
        let mut reported = Stats::default();
        loop {
            let stopped = tokio::select! {
                reason = &mut stop => { reason?; true }
                _ = runqlat::tick(&mut ticker) => false,
            };
            let mut now = self.snapshot();
            let rows = self.rows(&now, &before);
            let shown: Vec<&Row> = rows.iter().filter(|r| keep(args, r)).collect();
            if args.common.output.json {
                out.json(&interval_json(&now, &before, &shown));
            } else {
                print_text(args, &now, &before, &shown, redraw, &mut out);
            }
            out.flush();
            runqlat::report_drops(TOOL, &self.stats.read(), &mut reported);
            printed += 1;
            if stopped || out.closed() || args.interval.count.is_some_and(|c| printed >= c) {
                break;
            }
            let gone = self.forget_dead(&mut now, &before);
            if gone.len() >= BURST_GONE {
                now.threads.shrink_to_fit();
                loader::trim_heap();
            }
            before = now;
        }
        if args.common.output.json {
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
}

/// Reads of the records before `snapshot` settles for one a switch split (see there).
const SNAPSHOT_ATTEMPTS: u32 = 50;

/// Threads gone in one interval that mark the end of a burst: then the snapshot's table is
/// shrunk and freed memory handed back (see `loader::trim_heap`).
const BURST_GONE: usize = 256;

fn keep(args: &KtopArgs, row: &Row) -> bool {
    (!args.kthreads || row.kthread) && args.pid.is_none_or(|p| row.tgid == p)
}

/// The comm of a running task we have no record for yet (it has not switched since attach).
fn comm_of(pid: u32) -> [u8; 16] {
    let mut comm = [0u8; 16];
    let name = if pid == 0 {
        "swapper".to_string()
    } else {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim_end()
            .to_string()
    };
    let n = name.len().min(15);
    comm[..n].copy_from_slice(&name.as_bytes()[..n]);
    comm
}

/// Per CPU over the interval: idle ns, busy ns (all other threads), switches.
fn cpu_times(now: &Snapshot, before: &Snapshot) -> BTreeMap<u32, (u64, u64, u64)> {
    let mut times: BTreeMap<u32, (u64, u64, u64)> = BTreeMap::new();
    for (key, stats) in &now.threads {
        let old = before.threads.get(key).map(|s| s.oncpu_ns).unwrap_or(0);
        let delta = stats.oncpu_ns.saturating_sub(old);
        let entry = times.entry(key.cpu).or_default();
        if key.pid == 0 {
            entry.0 += delta;
        } else {
            entry.1 += delta;
        }
    }
    for (cpu, state) in &now.cpus {
        let old = before.cpus.get(cpu).map(|s| s.switches).unwrap_or(0);
        times.entry(*cpu).or_default().2 = state.switches.saturating_sub(old);
    }
    times
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// A kernel thread's role (a kworker's: the work function it ran) and the tool that breaks
/// its work down ("; see wqtop --worker TID": what this kworker ran).
fn role_or_work(row: &Row) -> String {
    if !row.kthread {
        return String::new();
    }
    let see = see_for(row);
    let see = see.as_deref();
    if let Some((function, items)) = &row.work
        && row.comm.starts_with("kworker/")
    {
        let work = if *items > 0 {
            format!("{function} ({items} items)")
        } else {
            format!("{function} (last)")
        };
        return kthread_roles::role_and_see(&work, see);
    }
    kthread_roles::role_and_see(
        kthread_roles::role(&row.comm).unwrap_or("kernel thread"),
        see,
    )
}

/// The command that breaks a kernel thread's work down; for a kworker, wqtop filtered to it.
fn see_for(row: &Row) -> Option<String> {
    let see = kthread_roles::see(&row.comm)?;
    Some(if row.comm.starts_with("kworker/") && see == "wqtop" {
        format!("wqtop --worker {}", row.tid)
    } else {
        see.to_string()
    })
}

fn print_text(
    args: &KtopArgs,
    now: &Snapshot,
    before: &Snapshot,
    rows: &[&Row],
    redraw: bool,
    out: &mut Out,
) {
    let interval_ns = now.now_ns.saturating_sub(before.now_ns).max(1);
    let cpus: Vec<String> = cpu_times(now, before)
        .iter()
        .map(|(cpu, (_idle, busy, switches))| {
            format!(
                "cpu{cpu} {:5.1}% busy {switches} sw",
                pct(*busy, interval_ns)
            )
        })
        .collect();
    out.screen_title(
        "ktop",
        redraw,
        args.common.output.timestamp,
        &format!(
            "interval {:.2}s  {}",
            interval_ns as f64 / 1e9,
            cpus.join("  ")
        ),
    );
    out.line(&format!(
        "{:>7} {:>7} {:<16} {:>3} {:>6} {:>6} {:>6} {:>8} {:>8}  {}",
        "PID",
        "TID",
        "COMM",
        "CPU",
        "%CPU",
        "VCSW",
        "IVCSW",
        "RUNQ-ms",
        "AVGQ-us",
        "ROLE / WORK FUNCTION"
    ));
    for row in rows.iter().take(args.top) {
        let avg_us = if row.runq_count == 0 {
            0.0
        } else {
            row.runq_ns as f64 / row.runq_count as f64 / 1e3
        };
        out.line(&format!(
            "{:>7} {:>7} {:<16} {:>3} {:>6.1} {:>6} {:>6} {:>8.2} {:>8.1}  {}{}",
            row.tgid,
            row.tid,
            row.comm,
            row.cpu,
            pct(row.oncpu_ns, interval_ns),
            row.voluntary,
            row.involuntary,
            row.runq_ns as f64 / 1e6,
            avg_us,
            if row.kthread { "[k] " } else { "" },
            role_or_work(row)
        ));
    }
    if rows.len() > args.top {
        out.line(&format!(
            "... {} more threads (-n to show more)",
            rows.len() - args.top
        ));
    }
    if !redraw {
        out.line("");
    }
}

fn interval_json(now: &Snapshot, before: &Snapshot, rows: &[&Row]) -> Value {
    let interval_ns = now.now_ns.saturating_sub(before.now_ns).max(1);
    let cpus: Vec<Value> = cpu_times(now, before)
        .iter()
        .map(|(cpu, (idle, busy, switches))| {
            json!({"cpu": cpu, "busy_ns": busy, "idle_ns": idle, "busy_pct": pct(*busy, interval_ns),
                   "switches": switches})
        })
        .collect();
    let threads: Vec<Value> = rows
        .iter()
        .map(|r| {
            let per_cpu: Vec<Value> = r
                .per_cpu
                .iter()
                .map(|(cpu, ns)| json!({"cpu": cpu, "oncpu_ns": ns}))
                .collect();
            json!({
                "pid": r.tgid, "tid": r.tid, "comm": r.comm, "kthread": r.kthread,
                "role": r.kthread.then(|| kthread_roles::role(&r.comm)).flatten(),
                "see": r.kthread.then(|| see_for(r)).flatten(),
                "cpu": r.cpu, "oncpu_ns": r.oncpu_ns, "oncpu_pct": pct(r.oncpu_ns, interval_ns),
                "per_cpu": per_cpu,
                "voluntary": r.voluntary, "involuntary": r.involuntary,
                "runq_wait_ns": r.runq_ns, "runq_waits": r.runq_count,
                "work": r.work.as_ref().map(|(f, n)| json!({"function": f, "items": n})),
            })
        })
        .collect();
    with_schema(
        TOOL,
        json!({"type": "interval", "time": hms_now(), "interval_ns": interval_ns, "cpus": cpus,
               "threads": threads}),
    )
}

//! migrations: task migrations between CPUs per interval, from `sched:sched_migrate_task` —
//! the source → destination matrix (or the top pairs on big machines), the tasks moved most,
//! migrations out of and into each CPU — and what the CPU stopper threads (migration/N) did:
//! the stopper work that carried out each stopper-driven migration, exactly, from the
//! stopper's kernel stack at the tracepoint (migration_cpu_stop for `sched_setaffinity`,
//! active_load_balance_cpu_stop for the load balancer's pushes), and with `--stoppers` their
//! sampled on-CPU stacks (profile's sampler, kept to the migration/* threads), which also show
//! stopper work that moves no task (multi_cpu_stop: stop_machine).

use std::{
    collections::{BTreeMap, HashMap},
    io::IsTerminal as _,
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
    programs::PerfEvent,
    util::online_cpus,
};
use clap::Args;
use serde_json::{Value, json};
use tracer_common::{
    migrations::{MigrationsConfig, PairKey, TaskCounts, TaskKey},
    profile::{IDLE_EXCLUDE, ProfileConfig, SampleKey},
};

use super::{
    profile::{SampleEvent, attach_sampler},
    runqlat,
};
use crate::{
    attach::{self, Attachment, Mechanism, Rung, Target},
    btf::KernelBtf,
    cgroup::{Controller, Resolver},
    filters,
    loader::{self, Stats, StatsReader, objects},
    output::{Out, comm_str, end_record, hms_now, with_schema},
    session::{self, IntervalArgs},
    stacks::{Frames, RawStack, StackMap, Symbols},
    tools::CommonArgs,
    tracefs,
};

const TOOL: &str = "migrations";

/// Above this many CPUs the from → to matrix is too wide: the top pairs are listed instead.
const MATRIX_MAX_CPUS: usize = 16;

/// Sampling frequencies above this cost more than they tell.
const MAX_HZ: u64 = 10_000;

/// The kernel function that runs every CPU stopper work item (kernel/stop_machine.c): the
/// frame below it in a stopper's stack is the work function.
const STOPPER_LOOP: &str = "cpu_stopper_thread";

/// Task migrations between CPUs per interval, and what the migration/N stopper threads ran.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    migrations                  until Ctrl-C, then the totals\n  \
    migrations 1 10             every second, 10 times\n  \
    migrations -p 185 -d 10     migrations of PID 185's threads for 10 s\n  \
    migrations --stoppers 1     also sample what the migration/N threads run on CPU\n  \
    migrations -G --json 1 3    with each task's cgroup, JSON lines")]
pub struct MigrationsArgs {
    /// Only threads of this process.
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Only tasks with this comm: exact, or a prefix ending in '*' ('kworker/*').
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Rows of the task and pair tables (text; JSON has every row).
    #[arg(short = 'n', long = "top", value_name = "N", default_value_t = 10)]
    pub top: usize,
    /// Show each task's cgroup (the cpu controller's hierarchy on cgroup v1).
    #[arg(short = 'G', long = "show-cgroup")]
    pub show_cgroup: bool,
    /// Also sample the on-CPU kernel stacks of the migration/N threads (perf cpu-clock).
    #[arg(long)]
    pub stoppers: bool,
    /// With --stoppers: samples per second per CPU (1 to 10000; stopper work lasts
    /// microseconds, so it takes a high rate to catch).
    #[arg(
        short = 'F',
        long = "frequency",
        value_name = "HZ",
        default_value_t = 999
    )]
    pub frequency: u64,
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

pub async fn run(args: MigrationsArgs) -> Result<()> {
    args.cgroup.install(&crate::btf::KernelBtf::new())?;
    if args.cgroup.cgroup.is_some() && args.common.attach == Some(Mechanism::Tracepoint) {
        usage_bail!(
            "--attach tracepoint: the classic sched_migrate_task record has no task pointer to read the cgroup from; --cgroup needs tp_btf or raw_tp"
        );
    }
    if let Some(pid) = args.pid {
        session::check_pid(pid)?;
    }
    if args.top == 0 {
        usage_bail!("--top must be at least 1");
    }
    if args.frequency == 0 || args.frequency > MAX_HZ {
        usage_bail!(
            "-F {}: the sampling frequency must be 1 to {MAX_HZ} Hz",
            args.frequency
        );
    }
    let comm = filters::comm_filter(args.comm.as_deref())?;
    let force = args.common.attach_for(
        TOOL,
        &[Mechanism::TpBtf, Mechanism::RawTp, Mechanism::Tracepoint],
    )?;
    let btf = KernelBtf::new();
    let (mut ebpf, attachment) = load_and_attach(
        &btf,
        MigrationsConfig {
            tgid: args.pid.unwrap_or(0),
            comm,
            ..MigrationsConfig::DEFAULT
        },
        force,
    )?;
    let sampler = if args.stoppers {
        Some(StopperSampler::start(&btf, args.frequency)?)
    } else {
        None
    };
    if args.common.verbose {
        errln!("{TOOL}: {}", attachment.summary());
        if let Some(s) = &sampler {
            errln!(
                "{TOOL}: perf event cpu-clock at {} Hz on {} CPUs, migration/* threads only",
                args.frequency,
                s.cpus
            );
        }
    }
    let mut view = View::new(&mut ebpf, sampler)?;
    errln!(
        "Tracing task migrations ({})... Hit Ctrl-C to end.",
        attachment.mechanism
    );
    view.run(&args, &attachment).await
}

/// The task's CPU: `task_struct::cpu` on kernels that keep it there (5.10), else
/// `thread_info.cpu` (x86 moved it in 5.16; thread_info is embedded in task_struct).
fn task_cpu_offset(btf: &KernelBtf) -> Result<u32> {
    if let Ok(offset) = btf.member_offset("task_struct", "cpu") {
        return Ok(offset);
    }
    let info = btf.member_offset("task_struct", "thread_info")?;
    let cpu = btf.member_offset("thread_info", "cpu")?;
    Ok(info + cpu)
}

/// Loads the migrations object and attaches it to sched_migrate_task through the ladder:
/// tp_btf and raw_tp read the task (BTF offsets), the classic tracepoint its record (tracefs).
fn load_and_attach(
    btf: &KernelBtf,
    mut config: MigrationsConfig,
    force: Option<Mechanism>,
) -> Result<(Ebpf, Attachment)> {
    let offsets = btf.task_offsets();
    let cpu_offset = task_cpu_offset(btf);
    let fields = tracefs::fields("sched", "sched_migrate_task");
    let mut rungs = Vec::new();
    if offsets.is_ok() && cpu_offset.is_ok() {
        rungs.push(Rung {
            mechanism: Mechanism::TpBtf,
            program: "migrations_btf",
        });
        rungs.push(Rung {
            mechanism: Mechanism::RawTp,
            program: "migrations_raw",
        });
    }
    // The classic record names the migrated task by pid only: no task pointer to read its
    // cgroup from, so that rung is left out under `--cgroup`.
    if let Ok(fields) = &fields
        && !crate::cgroup::filtering()
    {
        let find = |name: &str| fields.iter().find(|f| f.name == name);
        if let (Some(pid), Some(orig), Some(dest), Some(comm)) = (
            find("pid"),
            find("orig_cpu"),
            find("dest_cpu"),
            find("comm"),
        ) {
            config.tp_pid_offset = pid.offset;
            config.tp_orig_cpu_offset = orig.offset;
            config.tp_dest_cpu_offset = dest.offset;
            config.tp_comm_offset = comm.offset;
            config.tp_comm_data_loc = comm.declaration.contains("__data_loc").into();
            rungs.push(Rung {
                mechanism: Mechanism::Tracepoint,
                program: "migrations_tp",
            });
        }
    }
    if rungs.is_empty() {
        let why = match (&offsets, &cpu_offset, &fields) {
            (Err(e), _, _) | (_, Err(e), _) => format!("{e:#}"),
            _ => String::new(),
        };
        let tp_why = fields
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_else(|| "its tracefs record lacks pid/orig_cpu/dest_cpu".into());
        bail!("cannot trace sched:sched_migrate_task here: {why}; {tp_why}");
    }
    config.task_cpu_offset = cpu_offset.unwrap_or(0);
    let offsets = offsets.unwrap_or_default();
    let mut ebpf = loader::load(objects::MIGRATIONS, |l| {
        l.override_global("CONFIG", &config, true);
        l.override_global("TASK_OFFSETS", &offsets, false);
    })?;
    let target = Target::Tracepoint {
        category: "sched",
        event: "sched_migrate_task",
    };
    let attachment = attach::attach(&mut ebpf, btf, target, &rungs, force)?;
    Ok((ebpf, attachment))
}

/// `--stoppers`: profile's perf-event sampler, kept in the kernel to the migration/* kernel
/// threads (comm prefix and PF_KTHREAD), kernel stacks only.
struct StopperSampler {
    /// Keeps the sampling program and its perf events attached.
    _ebpf: Ebpf,
    counts: PerCpuHashMap<MapData, SampleKey, u64>,
    stacks: StackMap,
    cpus: usize,
    hz: u64,
}

impl StopperSampler {
    fn start(btf: &KernelBtf, hz: u64) -> Result<Self> {
        let offsets = btf
            .task_offsets()
            .context("--stoppers reads task flags at offsets from kernel BTF")?;
        let config = ProfileConfig {
            kernel_stacks: 1,
            user_stacks: 0,
            kthreads_only: 1,
            idle: IDLE_EXCLUDE,
            comm: filters::comm_filter(Some("migration/*"))?,
            ..ProfileConfig::DEFAULT
        };
        let cpus = online_cpus().map_err(|(what, e)| anyhow!("cannot list CPUs ({what}): {e}"))?;
        let mut ebpf = loader::load(objects::PROFILE, |l| {
            l.override_global("CONFIG", &config, true);
            l.override_global("TASK_OFFSETS", &offsets, false);
            l.map_max_entries("STACKS", 1024);
            l.map_max_entries("COUNTS", 1024);
        })?;
        let program: &mut PerfEvent = ebpf
            .program_mut("profile_sample")
            .ok_or_else(|| anyhow!("profile_sample missing from the object (build bug)"))?
            .try_into()?;
        program.load().map_err(|e| {
            anyhow!(
                "--stoppers: cannot load the sampling program: {}",
                attach::describe(Mechanism::Tracepoint, &e)
            )
        })?;
        // The links live as long as the program, which `_ebpf` keeps.
        let _links =
            attach_sampler(program, &cpus, hz, SampleEvent::CpuClock).context("--stoppers")?;
        let counts = loader::take(&mut ebpf, "COUNTS")?;
        let stacks = StackMap::take(&mut ebpf, "STACKS")?;
        Ok(Self {
            _ebpf: ebpf,
            counts,
            stacks,
            cpus: cpus.len(),
            hz,
        })
    }

    /// Samples so far per stopper kernel stack id.
    fn snapshot(&self) -> HashMap<i32, u64> {
        let mut totals = HashMap::new();
        for (key, per_cpu) in self.counts.iter().flatten() {
            *totals.entry(key.kstack).or_default() += per_cpu.iter().sum::<u64>();
        }
        totals
    }
}

/// Running totals read from the kernel at one moment.
#[derive(Clone, Default)]
struct Snapshot {
    pairs: HashMap<PairKey, u64>,
    tasks: HashMap<TaskKey, TaskCounts>,
    /// Stopper stack id → migrations it carried out.
    stopper_work: HashMap<i32, u64>,
    /// Stopper stack id → on-CPU samples (`--stoppers`).
    stopper_samples: HashMap<i32, u64>,
}

/// One task's migrations in an interval.
struct TaskRow {
    tgid: u32,
    pid: u32,
    comm: String,
    migrations: u64,
    by_stopper: u64,
}

/// What one interval shows.
struct Interval {
    seconds: f64,
    pairs: BTreeMap<(u32, u32), u64>,
    tasks: Vec<TaskRow>,
    /// (work function, migrations), most first.
    stopper_work: Vec<(String, u64)>,
    /// (work function, samples), most first; None without --stoppers.
    stopper_samples: Option<Vec<(String, u64)>>,
}

impl Interval {
    fn total(&self) -> u64 {
        self.pairs.values().sum()
    }

    fn by_stopper(&self) -> u64 {
        self.stopper_work.iter().map(|(_, n)| n).sum()
    }

    /// Per CPU: (migrations out, migrations in).
    fn per_cpu(&self, online: &[u32]) -> BTreeMap<u32, (u64, u64)> {
        let mut cpus: BTreeMap<u32, (u64, u64)> = online.iter().map(|&c| (c, (0, 0))).collect();
        for (&(from, to), &n) in &self.pairs {
            cpus.entry(from).or_default().0 += n;
            cpus.entry(to).or_default().1 += n;
        }
        cpus
    }
}

struct View {
    pairs: PerCpuHashMap<MapData, PairKey, u64>,
    tasks: PerCpuHashMap<MapData, TaskKey, TaskCounts>,
    stopper_work: PerCpuHashMap<MapData, i32, u64>,
    stacks: StackMap,
    stats: StatsReader,
    sampler: Option<StopperSampler>,
    online: Vec<u32>,
    symbols: Symbols,
    /// Stack id → work function, per stack map (false: the tracepoint's, true: the sampler's).
    functions: HashMap<(bool, i32), String>,
    cgroups: Resolver,
}

impl View {
    fn new(ebpf: &mut Ebpf, sampler: Option<StopperSampler>) -> Result<Self> {
        let online = online_cpus().map_err(|(path, e)| anyhow!("cannot read {path}: {e}"))?;
        Ok(Self {
            pairs: loader::take(ebpf, "PAIRS")?,
            tasks: loader::take(ebpf, "TASKS")?,
            stopper_work: loader::take(ebpf, "STOPPER_WORK")?,
            stacks: StackMap::take(ebpf, "STACKS")?,
            stats: StatsReader::take(ebpf)?,
            sampler,
            online,
            symbols: Symbols::new(),
            functions: HashMap::new(),
            cgroups: Resolver::default(),
        })
    }

    fn snapshot(&self) -> Snapshot {
        let sum = |v: aya::maps::PerCpuValues<u64>| v.iter().sum::<u64>();
        Snapshot {
            pairs: self
                .pairs
                .iter()
                .flatten()
                .map(|(k, v)| (k, sum(v)))
                .collect(),
            tasks: self
                .tasks
                .iter()
                .flatten()
                .map(|(k, v)| {
                    let total = v.iter().fold(TaskCounts::default(), |a, c| TaskCounts {
                        migrations: a.migrations + c.migrations,
                        by_stopper: a.by_stopper + c.by_stopper,
                    });
                    (k, total)
                })
                .collect(),
            stopper_work: self
                .stopper_work
                .iter()
                .flatten()
                .map(|(k, v)| (k, sum(v)))
                .collect(),
            stopper_samples: self
                .sampler
                .as_ref()
                .map(StopperSampler::snapshot)
                .unwrap_or_default(),
        }
    }

    /// The stopper work function of a stack: the frame `cpu_stopper_thread` called.
    fn work_function(&mut self, sampled: bool, id: i32) -> String {
        if let Some(name) = self.functions.get(&(sampled, id)) {
            return name.clone();
        }
        let frames = if sampled {
            match &self.sampler {
                Some(s) => s.stacks.frames(id),
                None => Frames::None,
            }
        } else {
            self.stacks.frames(id)
        };
        let raw = RawStack {
            comm: String::new(),
            pid: 0,
            tid: 0,
            kernel: frames,
            user: Frames::None,
            value: 0,
        };
        let stack = self.symbols.resolve(&raw);
        let frames: Vec<&str> = stack.kernel.iter().map(|f| &**f).collect();
        let name = work_function_of(&frames);
        self.functions.insert((sampled, id), name.clone());
        name
    }

    fn interval(&mut self, now: &Snapshot, before: &Snapshot, seconds: f64) -> Interval {
        let mut pairs = BTreeMap::new();
        for (key, &n) in &now.pairs {
            let delta = n.saturating_sub(before.pairs.get(key).copied().unwrap_or(0));
            if delta > 0 {
                pairs.insert((key.from_cpu, key.to_cpu), delta);
            }
        }
        let mut tasks: Vec<TaskRow> = now
            .tasks
            .iter()
            .filter_map(|(key, counts)| {
                let old = before.tasks.get(key).copied().unwrap_or_default();
                let migrations = counts.migrations.saturating_sub(old.migrations);
                (migrations > 0).then(|| TaskRow {
                    tgid: if key.tgid == 0 {
                        tgid_of(key.pid).unwrap_or(key.pid)
                    } else {
                        key.tgid
                    },
                    pid: key.pid,
                    comm: comm_str(&key.comm),
                    migrations,
                    by_stopper: counts.by_stopper.saturating_sub(old.by_stopper),
                })
            })
            .collect();
        tasks.sort_by(|a, b| b.migrations.cmp(&a.migrations).then(a.pid.cmp(&b.pid)));
        let stopper_work = self.by_function(false, &now.stopper_work, &before.stopper_work);
        let stopper_samples = self
            .sampler
            .is_some()
            .then(|| self.by_function(true, &now.stopper_samples, &before.stopper_samples));
        Interval {
            seconds,
            pairs,
            tasks,
            stopper_work,
            stopper_samples,
        }
    }

    fn by_function(
        &mut self,
        sampled: bool,
        now: &HashMap<i32, u64>,
        before: &HashMap<i32, u64>,
    ) -> Vec<(String, u64)> {
        let mut functions: HashMap<String, u64> = HashMap::new();
        for (&id, &n) in now {
            let delta = n.saturating_sub(before.get(&id).copied().unwrap_or(0));
            if delta > 0 {
                *functions
                    .entry(self.work_function(sampled, id))
                    .or_default() += delta;
            }
        }
        let mut list: Vec<(String, u64)> = functions.into_iter().collect();
        list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        list
    }

    /// Forgets the task records that did not change and whose thread is gone, so the map
    /// follows the live tasks.
    fn forget_dead(&mut self, now: &mut Snapshot, before: &Snapshot) {
        let dead: Vec<TaskKey> = now
            .tasks
            .iter()
            .filter(|(k, v)| before.tasks.get(*k) == Some(*v))
            .filter(|(k, _)| !std::path::Path::new(&format!("/proc/{}", k.pid)).exists())
            .map(|(k, _)| *k)
            .collect();
        for key in dead {
            let _ = self.tasks.remove(&key);
            now.tasks.remove(&key);
        }
    }

    async fn run(&mut self, args: &MigrationsArgs, attachment: &Attachment) -> Result<()> {
        let mut out = Out::new();
        let redraw = args.interval.interval.is_some()
            && out.is_tty()
            && std::io::stdout().is_terminal()
            && !args.common.output.json
            && !args.no_redraw;
        let stop = session::stop_requested(args.common.duration.duration);
        tokio::pin!(stop);
        let mut ticker = runqlat::ticker(args.interval.interval);
        let mut before = Snapshot::default();
        let mut since = Instant::now();
        let mut printed = 0u64;
        let mut reported = Stats::default();
        loop {
            let stopped = tokio::select! {
                reason = &mut stop => { reason?; true }
                _ = runqlat::tick(&mut ticker) => false,
            };
            let mut now = self.snapshot();
            let seconds = since.elapsed().as_secs_f64();
            since = Instant::now();
            let interval = self.interval(&now, &before, seconds);
            self.cgroups.clear();
            if args.common.output.json {
                let record = self.interval_json(args, &interval);
                out.json(&record);
            } else {
                self.print_text(args, &interval, redraw, &mut out);
            }
            out.flush();
            runqlat::report_drops(TOOL, &self.stats.read(), &mut reported);
            printed += 1;
            if stopped || out.closed() || args.interval.count.is_some_and(|c| printed >= c) {
                break;
            }
            self.forget_dead(&mut now, &before);
            before = now;
        }
        let end = self.stats.read();
        if args.common.output.json {
            out.json(&end_record(
                TOOL,
                vec![attachment.json()],
                end.map_full,
                end.read_errors,
                json!({}),
            ));
        }
        out.flush();
        Ok(())
    }

    fn cgroup(&mut self, args: &MigrationsArgs, tgid: u32) -> Option<String> {
        args.show_cgroup
            .then(|| self.cgroups.label(tgid, Controller::Cpu))
    }

    fn interval_json(&mut self, args: &MigrationsArgs, iv: &Interval) -> Value {
        let cpus: Vec<Value> = iv
            .per_cpu(&self.online)
            .iter()
            .map(|(cpu, (out, inn))| json!({"cpu": cpu, "out": out, "in": inn}))
            .collect();
        let pairs: Vec<Value> = iv
            .pairs
            .iter()
            .map(|(&(from, to), n)| json!({"from": from, "to": to, "count": n}))
            .collect();
        let mut tasks = Vec::new();
        for t in &iv.tasks {
            let mut row = json!({"pid": t.tgid, "tid": t.pid, "comm": t.comm,
                                 "migrations": t.migrations, "by_stopper": t.by_stopper});
            if let Some(cgroup) = self.cgroup(args, t.tgid) {
                row["cgroup"] = json!(cgroup);
            }
            tasks.push(row);
        }
        let work: Vec<Value> = iv
            .stopper_work
            .iter()
            .map(|(f, n)| json!({"function": f, "migrations": n}))
            .collect();
        let mut record = json!({
            "type": "interval", "time": hms_now(), "interval_ns": (iv.seconds * 1e9) as u64,
            "migrations": iv.total(), "by_stopper": iv.by_stopper(),
            "cpus": cpus, "pairs": pairs, "tasks": tasks, "stopper_work": work,
        });
        if let (Some(samples), Some(sampler)) = (&iv.stopper_samples, &self.sampler) {
            let list: Vec<Value> = samples
                .iter()
                .map(|(f, n)| json!({"function": f, "samples": n}))
                .collect();
            record["stopper_samples"] = json!({"hz": sampler.hz, "functions": list});
        }
        with_schema(TOOL, record)
    }

    fn print_text(&mut self, args: &MigrationsArgs, iv: &Interval, redraw: bool, out: &mut Out) {
        if !redraw {
            out.interval_header(args.common.output.timestamp);
        }
        out.line(&format!(
            "{}migrations - {}  {:.2}s  {} migrations, {} by stopper threads",
            if redraw { "\x1b[H\x1b[2J" } else { "" },
            hms_now(),
            iv.seconds,
            iv.total(),
            iv.by_stopper()
        ));
        let per_cpu = iv.per_cpu(&self.online);
        out.line("");
        out.line(&format!("{:>4} {:>8} {:>8}", "CPU", "OUT", "IN"));
        for (cpu, (o, i)) in &per_cpu {
            out.line(&format!("{cpu:>4} {o:>8} {i:>8}"));
        }
        out.line("");
        if per_cpu.len() <= MATRIX_MAX_CPUS {
            let cpus: Vec<u32> = per_cpu.keys().copied().collect();
            let mut header = format!("{:>8}", "FROM\\TO");
            for c in &cpus {
                header.push_str(&format!(" {c:>6}"));
            }
            out.line(&header);
            for from in &cpus {
                let mut line = format!("{from:>8}");
                for to in &cpus {
                    let cell = match iv.pairs.get(&(*from, *to)) {
                        _ if from == to => "-".to_string(),
                        Some(n) => n.to_string(),
                        None => "0".to_string(),
                    };
                    line.push_str(&format!(" {cell:>6}"));
                }
                out.line(&line);
            }
        } else {
            let mut pairs: Vec<(&(u32, u32), &u64)> = iv.pairs.iter().collect();
            pairs.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            out.line(&format!("{:>5} {:>5} {:>8}", "FROM", "TO", "COUNT"));
            for ((from, to), n) in pairs.iter().take(args.top) {
                out.line(&format!("{from:>5} {to:>5} {n:>8}"));
            }
            if pairs.len() > args.top {
                out.line(&format!(
                    "... {} more pairs (-n to show more)",
                    pairs.len() - args.top
                ));
            }
        }
        out.line("");
        let mut header = format!(
            "{:>7} {:>7} {:<16} {:>6} {:>8}",
            "PID", "TID", "COMM", "MIGR", "STOPPER"
        );
        if args.show_cgroup {
            header.push_str("  CGROUP");
        }
        out.line(&header);
        for i in 0..iv.tasks.len().min(args.top) {
            let t = &iv.tasks[i];
            let mut line = format!(
                "{:>7} {:>7} {:<16} {:>6} {:>8}",
                t.tgid, t.pid, t.comm, t.migrations, t.by_stopper
            );
            let tgid = t.tgid;
            if let Some(cgroup) = self.cgroup(args, tgid) {
                line.push_str(&format!("  {cgroup}"));
            }
            out.line(&line);
        }
        if iv.tasks.len() > args.top {
            out.line(&format!(
                "... {} more tasks (-n to show more)",
                iv.tasks.len() - args.top
            ));
        }
        if iv.tasks.is_empty() {
            out.line("(no migrations)");
        }
        out.line("");
        out.line("STOPPER WORK (migrations carried out by migration/N)");
        out.line(&format!("{:>8}  {}", "MIGR", "FUNCTION"));
        for (function, n) in &iv.stopper_work {
            out.line(&format!("{n:>8}  {function}"));
        }
        if iv.stopper_work.is_empty() {
            out.line("(none)");
        }
        if let (Some(samples), Some(sampler)) = (&iv.stopper_samples, &self.sampler) {
            out.line("");
            out.line(&format!(
                "STOPPER ON-CPU (samples of migration/N at {} Hz on {} CPUs)",
                sampler.hz, sampler.cpus
            ));
            out.line(&format!("{:>8}  {}", "SAMPLES", "FUNCTION"));
            for (function, n) in samples {
                out.line(&format!("{n:>8}  {function}"));
            }
            if samples.is_empty() {
                out.line("(no samples: the stopper threads were not caught on a CPU)");
            }
        }
        if !redraw {
            out.line("");
        }
    }
}

/// The work function in a stopper's kernel stack (leaf first): the frame that
/// `cpu_stopper_thread` called. A stack without that frame (lost, or the stopper's own loop)
/// is named by its leaf, in brackets.
fn work_function_of(frames: &[&str]) -> String {
    match frames.iter().position(|f| *f == STOPPER_LOOP) {
        Some(0) => format!("[{STOPPER_LOOP} itself]"),
        Some(at) => frames[at - 1].to_string(),
        None => match frames.first() {
            Some(leaf) if leaf.starts_with('[') => leaf.to_string(),
            Some(leaf) => format!("[{leaf}]"),
            None => "[no stack]".to_string(),
        },
    }
}

/// The thread group of a live thread, from /proc (the classic tracepoint has none).
fn tgid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_function_is_the_frame_the_stopper_loop_called() {
        let stack = [
            "set_task_cpu",
            "move_queued_task",
            "migration_cpu_stop",
            "cpu_stopper_thread",
            "smpboot_thread_fn",
            "kthread",
        ];
        assert_eq!(work_function_of(&stack), "migration_cpu_stop");
        assert_eq!(
            work_function_of(&["cpu_stopper_thread", "kthread"]),
            "[cpu_stopper_thread itself]"
        );
        assert_eq!(
            work_function_of(&["[lost: stack]"]),
            "[lost: stack]".to_string()
        );
        assert_eq!(work_function_of(&[]), "[no stack]");
    }
}

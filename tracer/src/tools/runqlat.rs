//! runqlat: how long runnable tasks wait on a run queue before they run (wakeup → switch-in,
//! and preemption → switch-in), as log2 histograms, in total or per process, thread or
//! kernel-thread group.
//!
//! Also home of what the three views of the `sched` object share (`cpudist` and `ktop` use it):
//! loading it with the offsets it needs and the maps sized for one tool, attaching
//! `sched_switch` and the wakeups through the ladder, and the keyed-histogram report loop.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
};
use clap::Args;
use serde_json::{Value, json};
use tracer_common::{
    hist::Log2Hist,
    sched::{
        HISTS_KEYED_ENTRIES, HistKey, KEY_NONE, KEY_PROCESS, KEY_THREAD, SchedConfig,
        THREADS_ENTRIES, WORK_ENTRIES,
    },
};

use crate::{
    attach::{self, Attachment, Mechanism},
    btf::KernelBtf,
    hist::Log2,
    kthread_roles,
    loader::{self, Stats, StatsReader, objects},
    output::{Out, comm_str, end_record, interval_record},
    session::{self, IntervalArgs},
    tools::CommonArgs,
};

const TOOL: &str = "runqlat";

/// Summarize run-queue latency (time from wakeup or preemption to running) as a histogram.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    runqlat                  histogram until Ctrl-C\n  \
    runqlat 1 10             every second, 10 times\n  \
    runqlat -mT 1            milliseconds, with timestamps\n  \
    runqlat -P               one histogram per process\n  \
    runqlat -p 185 -L        threads of PID 185 only, one histogram each\n  \
    runqlat --kthreads       kernel threads, one histogram per group (ksoftirqd/*, kworker/*...)\n  \
    runqlat --json 1 5       JSON lines")]
pub struct RunqlatArgs {
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub interval: IntervalArgs,
    #[command(flatten)]
    pub cgroup: crate::cgroup::CgroupArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// How histograms are split and filtered (runqlat and cpudist).
#[derive(Args, Clone, Debug, Default)]
pub struct KeyArgs {
    /// Millisecond histograms (default: microseconds).
    #[arg(short = 'm', long = "milliseconds")]
    pub milliseconds: bool,
    /// One histogram per process (thread group).
    #[arg(short = 'P', long = "per-pid", alias = "pids", conflicts_with = "tids")]
    pub pids: bool,
    /// One histogram per thread.
    #[arg(short = 'L', long = "per-tid", alias = "tids")]
    pub tids: bool,
    /// Only kernel threads, one histogram per group (ksoftirqd/*, kworker/*...; -L: per thread).
    #[arg(long, conflicts_with = "pids")]
    pub kthreads: bool,
    /// Only this process (thread group id).
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
}

pub async fn run(args: RunqlatArgs) -> Result<()> {
    args.cgroup.install(&crate::btf::KernelBtf::new())?;
    let view = HistView {
        tool: TOOL,
        what: "run queue latency",
        keys: args.keys,
        interval: args.interval,
        common: args.common,
    };
    let config = view.config()?;
    let btf = KernelBtf::new();
    let mut ebpf = load(&btf, config, SchedTool::Runqlat)?;
    let force = view
        .common
        .attach_for("runqlat", &[Mechanism::TpBtf, Mechanism::RawTp])?;
    let switch = attach_switch(&mut ebpf, &btf, "runqlat", force)?;
    let wakeups = attach_wakeups(&mut ebpf, &btf, force)?;
    if view.common.verbose {
        for a in wakeups.iter().chain([&switch]) {
            errln!("{TOOL}: {}", a.summary());
        }
    }
    view.report(&mut ebpf, &switch).await
}

// ---- what runqlat, cpudist and ktop share ----------------------------------------------------

/// Which tool's maps get their real size (the others are shrunk to one entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SchedTool {
    Runqlat,
    Cpudist,
    Ktop,
}

/// Loads the `sched` object with the offsets its programs read and the maps sized for `tool`.
pub(super) fn load(btf: &KernelBtf, mut config: SchedConfig, tool: SchedTool) -> Result<Ebpf> {
    let offsets = btf
        .task_offsets()
        .context("the scheduler views read task_struct")?;
    // `state` was renamed `__state` in 5.14.
    config.state_offset = btf
        .member_offset("task_struct", "__state")
        .or_else(|_| btf.member_offset("task_struct", "state"))
        .context("cannot find task_struct.__state in kernel BTF")?;
    let keyed = config.key_mode != KEY_NONE;
    let hists = if tool != SchedTool::Ktop && keyed {
        HISTS_KEYED_ENTRIES
    } else {
        1
    };
    let (threads, work) = if tool == SchedTool::Ktop {
        (THREADS_ENTRIES, WORK_ENTRIES)
    } else {
        (1, 1)
    };
    loader::load(objects::SCHED, |l| {
        l.override_global("SCHED_CONFIG", &config, true);
        l.override_global("TASK_OFFSETS", &offsets, false);
        l.map_max_entries("HISTS", hists);
        l.map_max_entries("THREADS", threads);
        l.map_max_entries("WORK", work);
    })
}

/// `sched_switch` through `<prefix>_switch_btf` or `<prefix>_switch_raw`.
pub(super) fn attach_switch(
    ebpf: &mut Ebpf,
    btf: &KernelBtf,
    prefix: &str,
    force: Option<Mechanism>,
) -> Result<Attachment> {
    Ok(attach::tracepoint_ladder(
        ebpf,
        btf,
        "sched",
        "sched_switch",
        &format!("{prefix}_switch"),
        &[Mechanism::TpBtf, Mechanism::RawTp],
        force,
    )?)
}

/// `sched_wakeup` and `sched_wakeup_new`, which stamp the moment a task becomes runnable.
pub(super) fn attach_wakeups(
    ebpf: &mut Ebpf,
    btf: &KernelBtf,
    force: Option<Mechanism>,
) -> Result<Vec<Attachment>> {
    let mut done = Vec::new();
    for (event, prefix) in [
        ("sched_wakeup", "sched_wakeup"),
        ("sched_wakeup_new", "sched_wnew"),
    ] {
        done.push(attach::tracepoint_ladder(
            ebpf,
            btf,
            "sched",
            event,
            prefix,
            &[Mechanism::TpBtf, Mechanism::RawTp],
            force,
        )?);
    }
    Ok(done)
}

/// Stderr lines for the kernel side's drop counters.
pub(super) fn report_drops(tool: &str, stats: &Stats, reported: &mut Stats) {
    if stats.map_full > reported.map_full {
        errln!(
            "{tool}: {} updates dropped so far: a map was full (too many tasks; narrow with -p)",
            stats.map_full
        );
    }
    if stats.read_errors > reported.read_errors {
        errln!("{tool}: {} task reads failed so far", stats.read_errors);
    }
    *reported = *stats;
}

/// A tick every `interval`, or never.
pub(super) fn ticker(interval: Option<Duration>) -> Option<tokio::time::Interval> {
    interval.map(|d| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    })
}

pub(super) async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker.as_mut() {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// A histogram view of the `HISTS` map: runqlat and cpudist.
pub(super) struct HistView {
    pub tool: &'static str,
    /// What is measured, for the "Tracing ..." line.
    pub what: &'static str,
    pub keys: KeyArgs,
    pub interval: IntervalArgs,
    pub common: CommonArgs,
}

/// How the printed histograms are labelled.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Label {
    All,
    Process(u32),
    Thread { tid: u32, comm: String },
    Group(String),
}

impl HistView {
    /// The kernel-side configuration for these options (validates them).
    pub fn config(&self) -> Result<SchedConfig> {
        if let Some(pid) = self.keys.pid {
            session::check_pid(pid)?;
        }
        let key_mode = if self.keys.pids {
            KEY_PROCESS
        } else if self.keys.tids || self.keys.kthreads {
            KEY_THREAD
        } else {
            KEY_NONE
        };
        Ok(SchedConfig {
            tgid: self.keys.pid.unwrap_or(0),
            unit_div: if self.keys.milliseconds {
                1_000_000
            } else {
                1000
            },
            key_mode,
            kthreads_only: self.keys.kthreads.into(),
            ..SchedConfig::DEFAULT
        })
    }

    fn unit(&self) -> &'static str {
        if self.keys.milliseconds {
            "msecs"
        } else {
            "usecs"
        }
    }

    fn label(&self, key: &HistKey) -> Label {
        if self.keys.pids {
            Label::Process(key.id)
        } else if self.keys.kthreads && !self.keys.tids {
            Label::Group(kthread_roles::group(&comm_str(&key.comm)))
        } else if self.keys.tids || self.keys.kthreads {
            Label::Thread {
                tid: key.id,
                comm: comm_str(&key.comm),
            }
        } else {
            Label::All
        }
    }

    /// Prints the histograms every interval (or once at the end) until stopped.
    pub async fn report(&self, ebpf: &mut Ebpf, attachment: &Attachment) -> Result<()> {
        let stats = StatsReader::take(ebpf)?;
        let mut hists: PerCpuHashMap<MapData, HistKey, Log2Hist> = PerCpuHashMap::try_from(
            ebpf.take_map("HISTS")
                .ok_or_else(|| anyhow!("HISTS map missing (build bug)"))?,
        )?;
        errln!(
            "Tracing {} ({})... Hit Ctrl-C to end.",
            self.what,
            attachment.mechanism
        );
        let mut out = Out::new();
        let stop = session::stop_requested(self.common.duration.duration);
        tokio::pin!(stop);
        let mut ticker = ticker(self.interval.interval);
        let mut previous: HashMap<HistKey, Log2> = HashMap::new();
        let mut printed = 0u64;
        let mut reported = Stats::default();
        let mut since = std::time::Instant::now();
        loop {
            let stopped = tokio::select! {
                reason = &mut stop => { reason?; true }
                _ = tick(&mut ticker) => false,
            };
            let current = snapshot(&hists);
            let interval_ns = since.elapsed().as_nanos() as u64;
            since = std::time::Instant::now();
            self.print(&current, &previous, interval_ns, &mut out);
            report_drops(self.tool, &stats.read(), &mut reported);
            printed += 1;
            if stopped || out.closed() || self.interval.count.is_some_and(|c| printed >= c) {
                break;
            }
            // Forget keys of tasks that stopped showing up, so the map does not fill with the dead.
            let stale: Vec<HistKey> = current
                .iter()
                .filter(|(k, h)| self.keys_are_tasks() && previous.get(*k) == Some(*h))
                .map(|(k, _)| *k)
                .collect();
            previous = current;
            for key in stale {
                let _ = hists.remove(&key);
                previous.remove(&key);
            }
        }
        let end = stats.read();
        if self.common.output.json {
            out.json(&end_record(
                self.tool,
                vec![attachment.json()],
                end.map_full,
                end.read_errors,
                json!({}),
            ));
        }
        out.flush();
        Ok(())
    }

    fn keys_are_tasks(&self) -> bool {
        self.keys.pids || self.keys.tids || self.keys.kthreads
    }

    fn print(
        &self,
        current: &HashMap<HistKey, Log2>,
        previous: &HashMap<HistKey, Log2>,
        interval_ns: u64,
        out: &mut Out,
    ) {
        // Per label: the merged histogram, the task ids in it, and a comm seen for it.
        let mut merged: HashMap<Label, (Log2, HashSet<u32>, String)> = HashMap::new();
        for (key, hist) in current {
            let delta = match previous.get(key) {
                Some(before) => hist.since(before),
                None => hist.clone(),
            };
            if delta.count() == 0 && self.keys_are_tasks() {
                continue;
            }
            let entry = merged
                .entry(self.label(key))
                .or_insert_with(|| (Log2::new(), HashSet::new(), comm_str(&key.comm)));
            entry.0.merge(&delta);
            entry.1.insert(key.id);
        }
        if merged.is_empty() && !self.keys_are_tasks() {
            merged.insert(Label::All, (Log2::new(), HashSet::new(), String::new()));
        }
        let mut rows: Vec<(Label, Log2, usize, String)> = merged
            .into_iter()
            .map(|(label, (h, ids, comm))| {
                // A live process is named as ps names it; an exited one by the comm we saw.
                let name = match label {
                    Label::Process(pid) => process_name(pid).unwrap_or(comm),
                    _ => comm,
                };
                (label, h, ids.len(), name)
            })
            .collect();
        rows.sort_by(|a, b| b.1.count().cmp(&a.1.count()).then(a.0.cmp(&b.0)));
        let unit = self.unit();
        if self.common.output.json {
            let hists: Vec<Value> = rows
                .iter()
                .map(|(label, h, n, name)| hist_json(label, h, *n, name, unit))
                .collect();
            out.json(&interval_record(
                self.tool,
                "histograms",
                interval_ns,
                json!({"unit": unit, "histograms": hists}),
            ));
            out.flush();
            return;
        }
        out.interval_header(self.common.output.timestamp);
        for (label, hist, threads, name) in &rows {
            match label {
                Label::All => {}
                Label::Process(pid) => out.line(&format!("\npid = {pid} {name}")),
                Label::Thread { tid, comm } => out.line(&format!("\ntid = {tid} {comm}")),
                Label::Group(group) => {
                    // The role of any member names the group's role.
                    let role = kthread_roles::group_role(group, name);
                    out.line(&format!(
                        "\nkthread group = {group} ({threads} thread{}){}",
                        if *threads == 1 { "" } else { "s" },
                        role.map(|r| format!(": {r}")).unwrap_or_default()
                    ));
                }
            }
            for line in hist.render(unit).lines() {
                out.line(line);
            }
            if let (Some(p50), Some(p99)) = (hist.percentile(50.0), hist.percentile(99.0)) {
                out.line(&format!(
                    "count {}, p50 <= {p50} {unit}, p99 <= {p99} {unit}",
                    hist.count()
                ));
            }
        }
        if rows.is_empty() {
            out.line("(no events)");
        }
        out.line("");
        out.flush();
    }
}

fn hist_json(label: &Label, hist: &Log2, threads: usize, name: &str, unit: &str) -> Value {
    let mut value = json!({
        "count": hist.count(),
        "p50": hist.percentile(50.0),
        "p99": hist.percentile(99.0),
        "hist": hist.to_json(unit),
    });
    let map = value.as_object_mut().expect("object");
    match label {
        Label::All => {}
        Label::Process(pid) => {
            map.insert("pid".into(), json!(pid));
            map.insert("comm".into(), json!(name));
        }
        Label::Thread { tid, comm } => {
            map.insert("tid".into(), json!(tid));
            map.insert("comm".into(), json!(comm));
        }
        Label::Group(group) => {
            map.insert("group".into(), json!(group));
            map.insert("threads".into(), json!(threads));
            map.insert("role".into(), json!(kthread_roles::group_role(group, name)));
        }
    }
    value
}

/// The process's name from /proc, while it lives.
fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// Every histogram of `HISTS`, summed over CPUs.
pub(super) fn snapshot(
    hists: &PerCpuHashMap<MapData, HistKey, Log2Hist>,
) -> HashMap<HistKey, Log2> {
    hists
        .iter()
        .flatten()
        .map(|(key, per_cpu)| (key, Log2::from_per_cpu(per_cpu.iter())))
        .collect()
}

//! forksnoop: every fork (sched_process_fork) with parent and child, thread/process and
//! kernel-thread flags; or, with `--summary`, fork counts per parent aggregated in the kernel.

use std::{collections::HashMap, time::Duration};

use anyhow::{Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{IterableMap as _, MapData, PerCpuHashMap, RingBuf},
};
use clap::Args;
use serde_json::json;
use tokio::io::unix::AsyncFd;
use tracer_common::{
    forksnoop::{
        FORK_KTHREAD, FORK_TGID_UNKNOWN, FORK_THREAD, ForkConfig, ForkEvent, KIND_ALL,
        KIND_PROCESSES, KIND_THREADS, ParentCounts, ParentKey,
    },
    task::TaskOffsets,
};

use crate::{
    attach::{self, Attachment, Mechanism, Rung, Target},
    btf::KernelBtf,
    cgroup::CgroupArgs,
    filters,
    loader::{self, Stats, StatsReader, objects},
    output::{Clock, Out, comm_str, hms, interval_record, with_schema},
    session::{self, IntervalArgs},
    tools::CommonArgs,
    tracefs,
};

const TOOL: &str = "forksnoop";

/// Trace fork() and clone(): who forks what, processes vs threads vs kernel threads.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    forksnoop                       every fork on the system\n  \
    forksnoop -p 1234 --no-threads  processes forked by PID 1234\n  \
    forksnoop --kthreads            new kernel threads (kworkers...)\n  \
    forksnoop --summary 1 5         top forking parents, every second, 5 times\n  \
    forksnoop --json -d 10          JSON lines for 10 seconds")]
pub struct ForksnoopArgs {
    /// Only forks made by this process (the parent's PID, i.e. its thread group id).
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Only forks made by tasks with this comm: exact, or a prefix ending in '*' ('kworker/*').
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    #[command(flatten)]
    pub cgroup: CgroupArgs,
    /// Only new threads (clone with CLONE_THREAD).
    #[arg(long, conflicts_with = "no_threads")]
    pub threads: bool,
    /// Only new processes (no threads).
    #[arg(long)]
    pub no_threads: bool,
    /// Only new kernel threads (PF_KTHREAD, or forked by kthreadd).
    #[arg(long)]
    pub kthreads: bool,
    /// Count forks per parent in the kernel and print the top parents instead of events.
    #[arg(long)]
    pub summary: bool,
    /// With --summary: how many parents to print per interval.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    #[command(flatten)]
    pub interval: IntervalArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: ForksnoopArgs) -> Result<()> {
    if args.interval.interval.is_some() && !args.summary {
        usage_bail!("INTERVAL and COUNT apply to --summary (e.g. 'forksnoop --summary 1 5')");
    }
    if let Some(pid) = args.pid {
        session::check_pid(pid)?;
    }
    let config = ForkConfig {
        parent_tgid: args.pid.unwrap_or(0),
        tp_child_pid_offset: 0,
        kind: match (args.threads, args.no_threads) {
            (true, _) => KIND_THREADS,
            (_, true) => KIND_PROCESSES,
            _ => KIND_ALL,
        },
        kthreads_only: args.kthreads.into(),
        emit_events: (!args.summary).into(),
        count_parents: args.summary.into(),
        parents_by_comm: 0,
        _reserved: [0; 3],
        comm: filters::comm_filter(args.comm.as_deref())?,
    };

    args.cgroup.install(&KernelBtf::new())?;
    let (mut ebpf, attachment) = load_and_attach(
        config,
        args.common.attach_for(
            TOOL,
            &[Mechanism::TpBtf, Mechanism::RawTp, Mechanism::Tracepoint],
        )?,
    )?;
    if args.common.verbose {
        errln!("{TOOL}: {}", attachment.summary());
    }
    let stats = StatsReader::take(&mut ebpf)?;

    let mut out = Out::new();
    if args.summary {
        let counts: PerCpuHashMap<MapData, ParentKey, ParentCounts> = PerCpuHashMap::try_from(
            ebpf.take_map("PARENT_COUNTS")
                .ok_or_else(|| anyhow!("PARENT_COUNTS map missing"))?,
        )?;
        errln!(
            "Counting forks per parent ({})... Hit Ctrl-C to end.",
            attachment.mechanism
        );
        summarize(&args, &counts, &stats, &mut out).await?;
    } else {
        let ring = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .ok_or_else(|| anyhow!("EVENTS map missing"))?,
        )?;
        errln!(
            "Tracing forks ({})... Hit Ctrl-C to end.",
            attachment.mechanism
        );
        stream(&args, ring, &stats, &mut out).await?;
    }
    let end = stats.read();
    report_drops(&end, &mut 0);
    if args.common.output.json {
        out.json(&with_schema(
            TOOL,
            json!({"type": "end", "events": end.events, "lost": end.lost, "map_full": end.map_full,
                   "read_errors": end.read_errors, "attach": [attachment.json()]}),
        ));
    }
    out.flush();
    drop(ebpf);
    Ok(())
}

/// Loads the forksnoop object with `config` (the record offsets filled in here) and attaches
/// it to sched_process_fork through the ladder. `tracer serve` counts forks with it too.
pub(crate) fn load_and_attach(
    config: ForkConfig,
    force: Option<Mechanism>,
) -> Result<(Ebpf, Attachment)> {
    let btf = KernelBtf::new();
    // tp_btf and raw_tp read the child's task_struct, which needs BTF offsets; the classic
    // tracepoint needs the record layout from tracefs. Offer whichever rungs we can feed.
    let offsets = btf.task_offsets();
    let tp_offset = tracefs::field_offset("sched", "sched_process_fork", "child_pid");
    let mut rungs = Vec::new();
    if offsets.is_ok() {
        rungs.push(Rung {
            mechanism: Mechanism::TpBtf,
            program: "forksnoop_tp_btf",
        });
        rungs.push(Rung {
            mechanism: Mechanism::RawTp,
            program: "forksnoop_raw_tp",
        });
    }
    if tp_offset.is_ok() {
        rungs.push(Rung {
            mechanism: Mechanism::Tracepoint,
            program: "forksnoop_tp",
        });
    }
    if rungs.is_empty() {
        let why = offsets.err().map(|e| format!("{e:#}")).unwrap_or_default();
        let tp_why = tp_offset
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        bail!("cannot trace forks here: {why}; {tp_why}");
    }
    let config = ForkConfig {
        tp_child_pid_offset: *tp_offset.as_ref().unwrap_or(&0),
        ..config
    };
    let offsets: TaskOffsets = offsets.unwrap_or_default();

    let mut ebpf = loader::load(objects::FORKSNOOP, |l| {
        l.override_global("CONFIG", &config, true);
        l.override_global("TASK_OFFSETS", &offsets, false);
        if config.emit_events == 0 {
            // The ring buffer's smallest size: one page.
            l.map_max_entries("EVENTS", 4096);
        }
    })?;
    let target = Target::Tracepoint {
        category: "sched",
        event: "sched_process_fork",
    };
    let attachment = attach::attach(&mut ebpf, &btf, target, &rungs, force)?;
    Ok((ebpf, attachment))
}

/// One line per fork, read from the ring buffer as it fills.
async fn stream(
    args: &ForksnoopArgs,
    ring: RingBuf<aya::maps::MapData>,
    stats: &StatsReader,
    out: &mut Out,
) -> Result<()> {
    let clock = Clock::new();
    let json = args.common.output.json;
    let timestamp = args.common.output.timestamp;
    if !json {
        let mut header = String::new();
        if timestamp {
            header.push_str("TIME     ");
        }
        header.push_str(&format!(
            "{:<16} {:>7} {:>7} {:>7} {:>7} {:<8} {:>3}",
            "PCOMM", "PID", "TID", "CPID", "CTID", "KIND", "CPU"
        ));
        out.line(&header);
    }
    // SAFETY: the RingBuf owns its fd and keeps it open for as long as the AsyncFd lives.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow!("cannot poll the ring buffer: {e}"))?;
    let stop = session::stop_requested(args.common.duration.duration);
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The kernel side wakes us only when a quarter of the ring is full; drain it on a short
    // timer too so that a quiet system still shows each fork within this delay.
    let mut drain = tokio::time::interval(Duration::from_millis(50));
    let mut reported_lost = 0;
    let print = |event: &ForkEvent, out: &mut Out| {
        if json {
            out.json(&event_json(event, &clock));
        } else {
            out.line(&event_text(
                event,
                timestamp.then(|| hms(clock.unix_ns(event.ts_ns))),
            ));
        }
    };
    loop {
        tokio::select! {
            reason = &mut stop => { reason?; break; }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    print(&loader::ring_record::<ForkEvent>(&item)?, out);
                }
                guard.clear_ready();
                out.flush();
                if out.closed() { break; }
            }
            _ = drain.tick() => {
                let ring = ring.get_mut();
                while let Some(item) = ring.next() {
                    print(&loader::ring_record::<ForkEvent>(&item)?, out);
                }
                out.flush();
                if out.closed() { break; }
            }
            _ = tick.tick() => report_drops(&stats.read(), &mut reported_lost),
        }
    }
    // Events already in the ring when the stop came are still printed.
    let ring = ring.get_mut();
    while let Some(item) = ring.next() {
        print(&loader::ring_record::<ForkEvent>(&item)?, out);
    }
    Ok(())
}

fn kind(event: &ForkEvent) -> &'static str {
    if event.flags & FORK_KTHREAD != 0 {
        "kthread"
    } else if event.flags & FORK_TGID_UNKNOWN != 0 {
        "task"
    } else if event.flags & FORK_THREAD != 0 {
        "thread"
    } else {
        "process"
    }
}

fn event_text(event: &ForkEvent, time: Option<String>) -> String {
    let mut line = time.map(|t| format!("{t} ")).unwrap_or_default();
    let child_tgid = if event.flags & FORK_TGID_UNKNOWN != 0 {
        "?".to_string()
    } else {
        event.child_tgid.to_string()
    };
    line.push_str(&format!(
        "{:<16} {:>7} {:>7} {:>7} {:>7} {:<8} {:>3}",
        comm_str(&event.parent_comm),
        event.parent_tgid,
        event.parent_pid,
        child_tgid,
        event.child_pid,
        kind(event),
        event.cpu
    ));
    line
}

fn event_json(event: &ForkEvent, clock: &Clock) -> serde_json::Value {
    let known = event.flags & FORK_TGID_UNKNOWN == 0;
    let comm = comm_str(&event.parent_comm);
    with_schema(
        TOOL,
        json!({
            "type": "fork",
            "ts": clock.unix_secs(event.ts_ns),
            "cpu": event.cpu,
            "parent": {"pid": event.parent_tgid, "tid": event.parent_pid, "comm": comm},
            // Until it execs, the child runs under its parent's comm.
            "child": {"pid": known.then_some(event.child_tgid), "tid": event.child_pid, "comm": comm},
            "kind": kind(event),
            "thread": known.then_some(event.flags & FORK_THREAD != 0),
            "kthread": event.flags & FORK_KTHREAD != 0,
        }),
    )
}

fn report_drops(stats: &Stats, reported_lost: &mut u64) {
    if stats.lost > *reported_lost {
        errln!(
            "{TOOL}: lost {} events so far (ring buffer full; --summary counts exactly)",
            stats.lost
        );
        *reported_lost = stats.lost;
    }
    if stats.map_full > 0 {
        errln!(
            "{TOOL}: {} forks not counted: per-parent map full",
            stats.map_full
        );
    }
}

pub(crate) type Totals = HashMap<ParentKey, ParentCounts>;

/// Running totals per parent, summed over CPUs (the map is not cleared).
pub(crate) fn snapshot(counts: &PerCpuHashMap<MapData, ParentKey, ParentCounts>) -> Totals {
    let mut totals = Totals::new();
    for (key, per_cpu) in counts.iter().flatten() {
        add(totals.entry(key).or_default(), per_cpu.iter());
    }
    totals
}

/// Counts per parent since the last drain, removing the keys (see `loader::drain_per_cpu`): in
/// interval mode parents that have exited must not stay in the map until it is full.
fn drain(counts: &PerCpuHashMap<MapData, ParentKey, ParentCounts>) -> Result<Totals> {
    let mut totals = Totals::new();
    for (key, per_cpu) in loader::drain_per_cpu::<ParentKey, ParentCounts>(counts.map())? {
        add(totals.entry(key).or_default(), per_cpu.iter());
    }
    Ok(totals)
}

fn add<'a>(total: &mut ParentCounts, per_cpu: impl Iterator<Item = &'a ParentCounts>) {
    for c in per_cpu {
        total.processes += c.processes;
        total.threads += c.threads;
    }
}

/// Per-parent counts: the kernel keeps running totals; every interval drains them with atomic
/// lookup-and-delete, so nothing is lost between reading and clearing.
async fn summarize(
    args: &ForksnoopArgs,
    counts: &PerCpuHashMap<MapData, ParentKey, ParentCounts>,
    stats: &StatsReader,
    out: &mut Out,
) -> Result<()> {
    let stop = session::stop_requested(args.common.duration.duration);
    tokio::pin!(stop);
    let mut previous = Totals::new();
    let mut printed = 0u64;
    let mut reported_lost = 0;
    let mut ticker = args.interval.interval.map(|d| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut since = std::time::Instant::now();
    loop {
        let stopped = tokio::select! {
            reason = &mut stop => { reason?; true }
            _ = async { match ticker.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending::<()>().await } } => false,
        };
        let interval_ns = since.elapsed().as_nanos() as u64;
        since = std::time::Instant::now();
        if args.interval.interval.is_some() {
            print_summary(args, &drain(counts)?, &previous, interval_ns, out);
        } else {
            let current = snapshot(counts);
            print_summary(args, &current, &previous, interval_ns, out);
            previous = current;
        }
        report_drops(&stats.read(), &mut reported_lost);
        printed += 1;
        if stopped || out.closed() || args.interval.count.is_some_and(|c| printed >= c) {
            return Ok(());
        }
    }
}

fn print_summary(
    args: &ForksnoopArgs,
    current: &Totals,
    previous: &Totals,
    interval_ns: u64,
    out: &mut Out,
) {
    let mut rows: Vec<(ParentKey, u64, u64)> = current
        .iter()
        .filter_map(|(key, now)| {
            let before = previous.get(key).copied().unwrap_or_default();
            let processes = now.processes - before.processes;
            let threads = now.threads - before.threads;
            (processes + threads > 0).then_some((*key, processes, threads))
        })
        .collect();
    rows.sort_by(|a, b| (b.1 + b.2).cmp(&(a.1 + a.2)).then(a.0.tgid.cmp(&b.0.tgid)));
    let total: u64 = rows.iter().map(|r| r.1 + r.2).sum();
    let shown = rows.len().min(args.top);
    if args.common.output.json {
        let parents: Vec<_> = rows[..shown]
            .iter()
            .map(|(key, processes, threads)| {
                json!({"pid": key.tgid, "comm": comm_str(&key.comm), "forks": processes + threads,
                       "processes": processes, "threads": threads})
            })
            .collect();
        out.json(&interval_record(
            TOOL,
            "summary",
            interval_ns,
            json!({"total": total, "parents_total": rows.len(), "parents": parents}),
        ));
    } else {
        out.interval_header(args.interval.interval.is_some() || args.common.output.timestamp);
        out.line(&format!(
            "{:<16} {:>7} {:>9} {:>9} {:>9}",
            "PCOMM", "PID", "FORKS", "PROCESSES", "THREADS"
        ));
        for (key, processes, threads) in &rows[..shown] {
            out.line(&format!(
                "{:<16} {:>7} {:>9} {:>9} {:>9}",
                comm_str(&key.comm),
                key.tgid,
                processes + threads,
                processes,
                threads
            ));
        }
        if rows.len() > shown {
            out.line(&format!(
                "... {} more parents (--top to show more)",
                rows.len() - shown
            ));
        }
        out.line("");
    }
    out.flush();
}

//! kthreads: a one-shot listing of kernel threads from /proc — the tree under kthreadd (pid 2)
//! with each thread's role (from the built-in table), CPU binding, state and cumulative CPU
//! time. No BPF: it runs anywhere, unprivileged.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use tracer_common::task::{KTHREADD_PID, PF_KTHREAD};

use crate::{
    filters, kthread_roles,
    output::{Out, OutputArgs, with_schema},
    procfs,
};

const TOOL: &str = "kthreads";

/// List kernel threads (the tree under kthreadd) with role, CPU binding, state and CPU time.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    kthreads                       every kernel thread, as a tree under kthreadd\n  \
    kthreads --group               one line per group (ksoftirqd/*, kworker/*...)\n  \
    kthreads --sort cpu --comm 'kworker/*'   kworkers by CPU time\n  \
    kthreads --json                JSON lines")]
pub struct KthreadsArgs {
    /// One line per group of same-named threads (ksoftirqd/*, kworker/*, ...).
    #[arg(long)]
    pub group: bool,
    /// Order: pid (the tree) or cpu (cumulative CPU time, largest first).
    #[arg(short = 's', long, value_enum, default_value = "pid")]
    pub sort: SortBy,
    /// Only threads whose name matches: exact, or a prefix ending in '*' ('kworker/*').
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    Pid,
    Cpu,
}

/// One kernel thread, from /proc/PID/stat and /proc/PID/status.
#[derive(Clone, Debug)]
struct Kthread {
    pid: u32,
    ppid: u32,
    comm: String,
    state: char,
    cpus_allowed: String,
    /// Last CPU it ran on.
    last_cpu: i64,
    /// utime + stime, seconds.
    cpu_secs: f64,
    nice: i64,
    /// Real-time priority (0: not real-time).
    rt_priority: u64,
}

pub async fn run(args: KthreadsArgs) -> Result<()> {
    let filter = filters::comm_filter(args.comm.as_deref())?;
    let mut threads = read_kthreads()?;
    if threads.is_empty() {
        bail!("no kernel threads found in /proc (is /proc mounted with hidepid?)");
    }
    threads.retain(|t| {
        let mut comm = [0u8; 16];
        let n = t.comm.len().min(15);
        comm[..n].copy_from_slice(&t.comm.as_bytes()[..n]);
        filter.matches(&comm)
    });
    let mut out = Out::new();
    out.interval_header(args.output.timestamp && !args.output.json);
    if args.group {
        print_groups(&args, &threads, &mut out);
    } else {
        print_threads(&args, &threads, &mut out);
    }
    out.flush();
    Ok(())
}

fn read_kthreads() -> Result<Vec<Kthread>> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    std::fs::metadata("/proc").context("cannot read /proc")?;
    let mut threads = Vec::new();
    for task in procfs::tasks() {
        if task.flags & PF_KTHREAD == 0 && task.pid != KTHREADD_PID {
            continue;
        }
        let pid = task.pid;
        let mut t = kthread(task, ticks);
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            t.cpus_allowed = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_string())
                .unwrap_or_default();
        }
        threads.push(t);
    }
    Ok(threads)
}

fn kthread(task: procfs::TaskStat, ticks: f64) -> Kthread {
    Kthread {
        pid: task.pid,
        ppid: task.ppid,
        comm: task.comm,
        state: task.state,
        cpus_allowed: String::new(),
        last_cpu: task.last_cpu,
        cpu_secs: task.cpu_ticks as f64 / ticks,
        nice: task.nice,
        rt_priority: task.rt_priority,
    }
}

/// Parses /proc/PID/stat; returns the thread and its `flags` field.
#[cfg(test)]
fn parse_stat(pid: u32, stat: &str, ticks: f64) -> Option<(Kthread, u32)> {
    let task = procfs::parse_stat(pid, stat)?;
    let flags = task.flags;
    Some((kthread(task, ticks), flags))
}

fn state_name(state: char) -> &'static str {
    match state {
        'R' => "running",
        'S' => "sleeping",
        'D' => "disk-sleep",
        'I' => "idle",
        'T' => "stopped",
        't' => "tracing-stop",
        'Z' => "zombie",
        'X' => "dead",
        _ => "other",
    }
}

fn priority(t: &Kthread) -> String {
    if t.rt_priority > 0 {
        format!("rt{}", t.rt_priority)
    } else {
        format!("{}", t.nice)
    }
}

fn thread_json(t: &Kthread, depth: usize) -> Value {
    with_schema(
        TOOL,
        json!({
            "type": "kthread", "pid": t.pid, "ppid": t.ppid, "depth": depth, "comm": t.comm,
            "group": kthread_roles::group(&t.comm), "role": kthread_roles::role(&t.comm),
            "see": kthread_roles::see(&t.comm),
            "state": t.state.to_string(), "state_name": state_name(t.state),
            "cpus_allowed": t.cpus_allowed, "last_cpu": t.last_cpu, "cpu_secs": t.cpu_secs,
            "nice": t.nice, "rt_priority": t.rt_priority,
        }),
    )
}

/// The tree: roots are threads whose parent is not a listed kernel thread (kthreadd).
fn print_threads(args: &KthreadsArgs, threads: &[Kthread], out: &mut Out) {
    let by_pid: HashMap<u32, &Kthread> = threads.iter().map(|t| (t.pid, t)).collect();
    let mut children: BTreeMap<u32, Vec<&Kthread>> = BTreeMap::new();
    let mut roots = Vec::new();
    for t in threads {
        if t.pid != t.ppid && by_pid.contains_key(&t.ppid) {
            children.entry(t.ppid).or_default().push(t);
        } else {
            roots.push(t);
        }
    }
    let order = |list: &mut Vec<&Kthread>| match args.sort {
        SortBy::Pid => list.sort_by_key(|t| t.pid),
        SortBy::Cpu => {
            list.sort_by(|a, b| b.cpu_secs.total_cmp(&a.cpu_secs).then(a.pid.cmp(&b.pid)))
        }
    };
    order(&mut roots);
    for list in children.values_mut() {
        order(list);
    }
    if !args.output.json {
        out.line(&format!(
            "{:>7} {:<5} {:>5} {:<9} {:>9}  {:<30} {}",
            "PID", "STATE", "PRIO", "CPUS", "CPU-SECS", "COMM", "ROLE"
        ));
    }
    let mut stack: Vec<(&Kthread, usize)> = roots.into_iter().rev().map(|t| (t, 0)).collect();
    while let Some((t, depth)) = stack.pop() {
        if args.output.json {
            out.json(&thread_json(t, depth));
        } else {
            let name = format!(
                "{}{}",
                if depth > 0 {
                    "  ".repeat(depth - 1) + "└ "
                } else {
                    String::new()
                },
                t.comm
            );
            out.line(&format!(
                "{:>7} {:<5} {:>5} {:<9} {:>9.2}  {:<30} {}",
                t.pid,
                t.state,
                priority(t),
                t.cpus_allowed,
                t.cpu_secs,
                name,
                kthread_roles::role_and_see(
                    kthread_roles::role(&t.comm).unwrap_or(""),
                    kthread_roles::see(&t.comm)
                )
            ));
        }
        if let Some(kids) = children.get(&t.pid) {
            stack.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
        }
    }
    if !args.output.json {
        out.line(&format!("{} kernel threads", threads.len()));
    }
}

fn print_groups(args: &KthreadsArgs, threads: &[Kthread], out: &mut Out) {
    #[derive(Default)]
    struct Group {
        threads: usize,
        running: usize,
        cpu_secs: f64,
        example: String,
    }
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for t in threads {
        let g = groups.entry(kthread_roles::group(&t.comm)).or_default();
        g.threads += 1;
        g.running += usize::from(t.state == 'R' || t.state == 'D');
        g.cpu_secs += t.cpu_secs;
        if g.example.is_empty() {
            g.example = t.comm.clone();
        }
    }
    let mut rows: Vec<(String, Group)> = groups.into_iter().collect();
    if args.sort == SortBy::Cpu {
        rows.sort_by(|a, b| b.1.cpu_secs.total_cmp(&a.1.cpu_secs));
    }
    if !args.output.json {
        out.line(&format!(
            "{:<24} {:>7} {:>7} {:>9}  {}",
            "GROUP", "THREADS", "ACTIVE", "CPU-SECS", "ROLE"
        ));
    }
    for (name, g) in rows {
        let role = kthread_roles::group_role(&name, &g.example);
        // Every member of a group is served by the same tool (all kworkers by wqtop).
        let see = kthread_roles::see(&g.example);
        if args.output.json {
            out.json(&with_schema(
                TOOL,
                json!({"type": "group", "group": name, "threads": g.threads, "active": g.running,
                       "cpu_secs": g.cpu_secs, "role": role, "see": see}),
            ));
        } else {
            out.line(&format!(
                "{:<24} {:>7} {:>7} {:>9.2}  {}",
                name,
                g.threads,
                g.running,
                g.cpu_secs,
                kthread_roles::role_and_see(role.unwrap_or(""), see)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let stat = "27 (kworker/0:1H-kblockd) I 2 0 0 0 -1 69238880 0 0 0 0 3 7 0 0 0 -20 1 0 \
                    130 0 0 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 17 0 0 0 0 0 0";
        let (t, flags) = parse_stat(27, stat, 100.0).unwrap();
        assert_eq!(t.comm, "kworker/0:1H-kblockd");
        assert_eq!(t.ppid, 2);
        assert_eq!(t.state, 'I');
        assert!(flags & PF_KTHREAD != 0);
        assert!((t.cpu_secs - 0.10).abs() < 1e-9);
        assert_eq!(t.nice, -20);
        assert_eq!(t.last_cpu, 0);
    }
}

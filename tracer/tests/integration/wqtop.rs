//! wqtop against ground truth. The workload reads /proc/sys/vm/stat_refresh N times; each read
//! runs schedule_on_each_cpu(refresh_vm_stats) in its own syscall, so `refresh_vm_stats` runs
//! exactly N × (online CPUs) times, all queued by the workload's PID from task context. The
//! kernel's own count comes from a private tracefs instance over the same window: a
//! `hist:keys=function.sym` trigger on workqueue_execute_start where the kernel has hist
//! triggers (CONFIG_HIST_TRIGGERS), else the same event recorded into the instance's buffer.

use std::{fs, path::PathBuf, time::Duration};

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::common::{
    Need, Workload, assert_nothing_loaded, emulated, ensure, expect_one_line_errors, fail, scaled,
    start, trial,
};

const ROOT: &[Need] = &[Need::Root, Need::Tracefs];
pub(crate) const FUNCTION: &str = "refresh_vm_stats";

pub fn tests() -> Vec<Trial> {
    vec![
        trial("wqtop::bad_input", &[], bad_input),
        trial(
            "wqtop::runs_match_tracefs_each_mechanism",
            ROOT,
            runs_match_tracefs_each_mechanism,
        ),
        trial(
            "wqtop::pid_filter_and_histograms",
            ROOT,
            pid_filter_and_histograms,
        ),
        trial("wqtop::text_names_queuer", ROOT, text_names_queuer),
        trial(
            "wqtop::cgroup_of_a_queuer_that_exited",
            ROOT,
            cgroup_of_exited_queuer,
        ),
        trial(
            "wqtop::worker_filter_shows_what_one_kworker_ran",
            ROOT,
            worker_filter,
        ),
    ]
}

fn bad_input() -> Result<(), Failed> {
    expect_one_line_errors(&[
        (vec!["wqtop", "0"], "out of range"),
        (vec!["wqtop", "1", "0"], "not a positive count"),
        (
            vec!["wqtop", "-p", "999999999"],
            "no process with PID 999999999",
        ),
        (vec!["wqtop", "-n", "0"], "--top must be at least 1"),
        (vec!["wqtop", "--comm", "a*b"], "only a trailing '*'"),
        (
            vec!["wqtop", "--attach", "kprobe"],
            "choose one of tp_btf, raw_tp, tracepoint",
        ),
    ])
}

/// Reads of stat_refresh per run: small under TCG, where each costs milliseconds.
pub(crate) fn reads() -> u64 {
    if emulated().is_some() { 20 } else { 200 }
}

pub(crate) fn online_cpus() -> Result<u64, Failed> {
    // SAFETY: sysconf without side effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    ensure(n > 0, || "sysconf(_SC_NPROCESSORS_ONLN) failed".into())?;
    Ok(n as u64)
}

/// The kernel's count of workqueue_execute_start per function, from a private tracefs
/// instance (other tests' and users' tracing is untouched).
pub(crate) struct KernelCount {
    instance: PathBuf,
    hist: bool,
}

impl KernelCount {
    pub(crate) fn start() -> Result<Self, Failed> {
        let root = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("instances").is_dir())
            .ok_or_else(|| fail("no tracefs with instances/"))?;
        let instance = root
            .join("instances")
            .join(format!("tracer-wqtop-{}", std::process::id()));
        let _ = fs::remove_dir(&instance);
        fs::create_dir(&instance).map_err(|e| fail(format!("mkdir {instance:?}: {e}")))?;
        let event = instance.join("events/workqueue/workqueue_execute_start");
        let hist = event.join("hist").exists();
        let result = if hist {
            fs::write(event.join("trigger"), "hist:keys=function.sym:size=4096")
        } else {
            fs::write(instance.join("buffer_size_kb"), "4096")
                .and_then(|()| fs::write(event.join("enable"), "1"))
        };
        let count = Self { instance, hist };
        result.map_err(|e| fail(format!("cannot start the tracefs count: {e}")))?;
        Ok(count)
    }

    fn event(&self) -> PathBuf {
        self.instance
            .join("events/workqueue/workqueue_execute_start")
    }

    /// Runs of `function` so far (stops the recording in the buffer case).
    pub(crate) fn runs(&self, function: &str) -> Result<u64, Failed> {
        if self.hist {
            let text = fs::read_to_string(self.event().join("hist"))
                .map_err(|e| fail(format!("read hist: {e}")))?;
            // "{ function: [ffffffff815d6150] refresh_vm_stats   } hitcount:   4"
            let total = text
                .lines()
                .filter(|l| l.split_whitespace().any(|w| w == function))
                .filter_map(|l| l.split("hitcount:").nth(1)?.trim().parse::<u64>().ok())
                .sum();
            return Ok(total);
        }
        let _ = fs::write(self.event().join("enable"), "0");
        let text = fs::read_to_string(self.instance.join("trace"))
            .map_err(|e| fail(format!("read trace: {e}")))?;
        ensure(!text.contains("LOST"), || {
            "the tracefs instance lost events".into()
        })?;
        let needle = format!("function {function}");
        Ok(text
            .lines()
            .filter(|l| l.contains("workqueue_execute_start") && l.trim_end().ends_with(&needle))
            .count() as u64)
    }
}

impl Drop for KernelCount {
    fn drop(&mut self) {
        let event = self.event();
        if self.hist {
            let _ = fs::write(event.join("trigger"), "!hist:keys=function.sym:size=4096");
        } else {
            let _ = fs::write(event.join("enable"), "0");
        }
        let _ = fs::remove_dir(&self.instance);
    }
}

/// Every interval's record of `function`, from wqtop's JSON lines.
fn records<'a>(lines: &'a [Value], function: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|v| v["type"] == "interval")
        .flat_map(|v| v["functions"].as_array().into_iter().flatten())
        .filter(|f| f["function"] == function)
        .collect()
}

fn sum(records: &[&Value], field: &str) -> u64 {
    records.iter().filter_map(|r| r[field].as_u64()).sum()
}

/// What one traced run saw.
struct Traced {
    lines: Vec<Value>,
    /// The kernel's count of FUNCTION's runs.
    kernel: u64,
    pid: u32,
    /// The workload's /proc/PID/cgroup.
    cgroup: String,
}

/// Runs the workload (which stays `linger` seconds after its work, so that wqtop can still
/// read its cgroup) under wqtop `args` and the kernel's count.
fn traced_run(args: &[&str], n: u64, linger: f64) -> Result<Traced, Failed> {
    let workload =
        Workload::spawn(&["stat-refresh", &n.to_string(), "sleep", &linger.to_string()])?;
    let pid = workload.pid;
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| fail(format!("/proc/{pid}/cgroup: {e}")))?;
    let pid_arg = pid.to_string();
    let mut full: Vec<&str> = vec!["wqtop", "--json", "0.5"];
    full.extend(
        args.iter()
            .map(|a| if *a == "PID" { pid_arg.as_str() } else { *a }),
    );
    let count = KernelCount::start()?;
    let tracer = start(&full)?;
    workload.go_and_wait_within(scaled(Duration::from_secs(30)))?;
    // schedule_on_each_cpu waits for the work, so every run has started and ended; one more
    // interval lets the last one show.
    std::thread::sleep(scaled(Duration::from_millis(700)));
    let kernel = count.runs(FUNCTION)?;
    let done = tracer.stop(libc::SIGINT)?.ok()?;
    drop(count);
    Ok(Traced {
        lines: done.json()?,
        kernel,
        pid,
        cgroup,
    })
}

fn check_queuers(records: &[&Value], pid: u32, expected: u64) -> Result<(), Failed> {
    let mut queued = 0;
    for r in records {
        for q in r["queuers"].as_array().into_iter().flatten() {
            ensure(q["pid"] == pid && q["context"] == "task", || {
                format!("{FUNCTION} queued by someone else than workload {pid}: {q}")
            })?;
            ensure(q["comm"] == "tracer-workload", || {
                format!("queuer comm: {q}")
            })?;
            queued += q["queued"].as_u64().unwrap_or(0);
        }
    }
    ensure(queued == expected, || {
        format!("{FUNCTION}: queued by the workload {queued} times, expected {expected}")
    })
}

fn runs_match_tracefs_each_mechanism() -> Result<(), Failed> {
    let n = reads();
    let expected = n * online_cpus()?;
    let mut contexts = std::collections::BTreeSet::new();
    for mechanism in ["tp_btf", "raw_tp", "tracepoint"] {
        let Traced {
            lines, kernel, pid, ..
        } = traced_run(&["--attach", mechanism], n, 0.0)?;
        contexts.extend(
            lines
                .iter()
                .flat_map(|v| v["functions"].as_array().into_iter().flatten())
                .flat_map(|f| f["queuers"].as_array().into_iter().flatten())
                .filter_map(|q| q["context"].as_str().map(str::to_string)),
        );
        ensure(lines.last().is_some_and(|v| v["type"] == "end"), || {
            format!("{mechanism}: no end record")
        })?;
        ensure(
            lines.iter().all(|v| v["schema"] == "tracer.wqtop.v2"),
            || format!("{mechanism}: a record without the schema"),
        )?;
        let recs = records(&lines, FUNCTION);
        let runs = sum(&recs, "runs");
        ensure(kernel == expected, || {
            format!(
                "{mechanism}: tracefs counted {kernel} runs of {FUNCTION}, the workload made {expected}"
            )
        })?;
        ensure(runs == kernel, || {
            format!("{mechanism}: wqtop counted {runs} runs of {FUNCTION}, tracefs {kernel}")
        })?;
        ensure(sum(&recs, "ended") == runs, || {
            format!("{mechanism}: {} of {runs} runs ended", sum(&recs, "ended"))
        })?;
        ensure(sum(&recs, "latency_count") == runs, || {
            format!(
                "{mechanism}: latency for {} of {runs} runs",
                sum(&recs, "latency_count")
            )
        })?;
        ensure(sum(&recs, "run_ns") > 0, || {
            format!("{mechanism}: no run time")
        })?;
        ensure(recs.iter().all(|r| r["workqueue"] == "events"), || {
            format!("{mechanism}: {FUNCTION} not on system_wq ('events'): {recs:?}")
        })?;
        check_queuers(&recs, pid, expected)?;
        // The workers that ran it are kworkers, and they account for every run.
        let workers: Vec<&Value> = recs
            .iter()
            .flat_map(|r| r["workers"].as_array().into_iter().flatten())
            .collect();
        ensure(sum(&workers, "runs") == runs, || {
            format!(
                "{mechanism}: workers ran {} of {runs}",
                sum(&workers, "runs")
            )
        })?;
        ensure(
            workers.iter().all(|w| {
                w["comm"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("kworker/"))
            }),
            || format!("{mechanism}: a worker that is not a kworker: {workers:?}"),
        )?;
    }
    // Timers queue delayed work (vmstat_shepherd every second, vmstat_update, ...) from the
    // timer softirq: over three runs some is always seen, and every queueing is classified.
    ensure(
        contexts.contains("softirq") || contexts.contains("irq"),
        || format!("no work queued from interrupt context in three runs: {contexts:?}"),
    )?;
    ensure(!contexts.contains("unknown"), || {
        format!("the preempt count was not found on this kernel: {contexts:?}")
    })?;
    assert_nothing_loaded("wq_")
}

fn pid_filter_and_histograms() -> Result<(), Failed> {
    let n = reads();
    let expected = n * online_cpus()?;
    // Lingering past two intervals: the queuer is alive when wqtop reads its cgroup.
    let linger = if emulated().is_some() { 4.0 } else { 1.5 };
    let Traced {
        lines,
        kernel,
        pid,
        cgroup,
    } = traced_run(&["-p", "PID", "-D", "-G"], n, linger)?;
    ensure(kernel == expected, || {
        format!("tracefs counted {kernel} runs, the workload made {expected}")
    })?;
    // Only work the workload queued: every queuer of every function is the workload.
    for f in lines
        .iter()
        .filter(|v| v["type"] == "interval")
        .flat_map(|v| v["functions"].as_array().into_iter().flatten())
    {
        for q in f["queuers"].as_array().into_iter().flatten() {
            ensure(q["pid"] == pid, || {
                format!("-p {pid} let through {q} ({f})")
            })?;
        }
    }
    let recs = records(&lines, FUNCTION);
    let runs = sum(&recs, "runs");
    ensure(runs == expected, || {
        format!("-p {pid}: {runs} runs of {FUNCTION}, expected {expected}")
    })?;
    check_queuers(&recs, pid, expected)?;
    // -G: the queuer's cgroup is a path from its /proc/PID/cgroup.
    let paths: Vec<&str> = cgroup
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .collect();
    for q in recs
        .iter()
        .flat_map(|r| r["queuers"].as_array().into_iter().flatten())
    {
        ensure(
            q["cgroup"].as_str().is_some_and(|c| paths.contains(&c)),
            || format!("-G: queuer {q} has no cgroup of {pid} ({paths:?})"),
        )?;
    }
    let hist_total = |field: &str| -> u64 {
        recs.iter()
            .filter_map(|r| r[field]["buckets"].as_array())
            .flatten()
            .filter_map(|b| b["count"].as_u64())
            .sum()
    };
    for field in ["latency_hist", "run_hist"] {
        ensure(hist_total(field) == runs, || {
            format!(
                "-D: {field} holds {} values for {runs} runs",
                hist_total(field)
            )
        })?;
    }
    assert_nothing_loaded("wq_")
}

/// `-G` names the cgroup of a queuer that exited before the report (the usual short-lived
/// culprit): the kernel recorded its cgroup id when it queued, and the id names the path.
fn cgroup_of_exited_queuer() -> Result<(), Failed> {
    let n = reads();
    let Traced {
        lines, pid, cgroup, ..
    } = traced_run(&["-p", "PID", "-G"], n, 0.0)?;
    // The unified (v2) path once it exited; while it lived, a v1 machine's cpu hierarchy path.
    let unified = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| fail(format!("no cgroup v2 line in {cgroup}")))?;
    let cpu = cgroup
        .lines()
        .filter_map(|l| {
            l.splitn(3, ':')
                .collect::<Vec<_>>()
                .get(1..3)
                .map(|f| (f[0], f[1]))
        })
        .find(|(controllers, _)| controllers.split(',').any(|c| c == "cpu"))
        .map_or(unified, |(_, path)| path);
    let queuers: Vec<&Value> = records(&lines, FUNCTION)
        .into_iter()
        .flat_map(|r| r["queuers"].as_array().into_iter().flatten())
        .collect();
    ensure(!queuers.is_empty(), || format!("no queuers of {FUNCTION}"))?;
    for q in queuers {
        ensure(
            q["pid"] == pid && (q["cgroup"] == unified || q["cgroup"] == cpu),
            || format!("-G: exited queuer {pid} should show cgroup {unified}: {q}"),
        )?;
    }
    assert_nothing_loaded("wq_")
}

/// The TIDs of CPU 0's normal-priority kworkers (`kworker/0:N`, with or without the `-wq`
/// suffix of the last work they ran), from /proc.
fn cpu0_kworkers() -> Result<Vec<u32>, Failed> {
    let mut tids = Vec::new();
    for entry in fs::read_dir("/proc").map_err(|e| fail(format!("/proc: {e}")))? {
        let Some(pid) = entry
            .ok()
            .and_then(|e| e.file_name().to_str()?.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let worker = comm.trim().strip_prefix("kworker/0:").unwrap_or("");
        let number = worker.split('-').next().unwrap_or("");
        if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
            tids.push(pid);
        }
    }
    Ok(tids)
}

/// `--worker TID` (what one kworker ran, after ktop names it): one unfiltered wqtop and one
/// `--worker` wqtop per CPU 0 kworker watch the same N reads of stat_refresh. Each filtered
/// run counts exactly the refresh_vm_stats runs the unfiltered run gives that worker, lists
/// no other worker anywhere, and together they saw the runs on CPU 0.
fn worker_filter() -> Result<(), Failed> {
    let n = reads();
    let workers = cpu0_kworkers()?;
    ensure(!workers.is_empty(), || "no kworker/0:N threads".into())?;
    let workload = Workload::spawn(&["stat-refresh", &n.to_string()])?;
    let all = start(&["wqtop", "--json", "0.5"])?;
    let mut filtered = Vec::new();
    for tid in &workers {
        let tid = tid.to_string();
        filtered.push((
            tid.clone(),
            start(&["wqtop", "--json", "0.5", "--worker", &tid])?,
        ));
    }
    workload.go_and_wait_within(scaled(Duration::from_secs(30)))?;
    std::thread::sleep(scaled(Duration::from_millis(700)));
    let mut seen = Vec::new();
    for (tid, tool) in filtered {
        seen.push((tid, tool.stop(libc::SIGINT)?.ok()?.json()?));
    }
    let all = all.stop(libc::SIGINT)?.ok()?.json()?;
    let unfiltered = records(&all, FUNCTION);
    let mut on_cpu0 = 0;
    for (tid, lines) in &seen {
        let by_worker: u64 = unfiltered
            .iter()
            .flat_map(|r| r["workers"].as_array().into_iter().flatten())
            .filter(|w| w["tid"].as_u64() == tid.parse().ok())
            .filter_map(|w| w["runs"].as_u64())
            .sum();
        let recs = records(lines, FUNCTION);
        let runs = sum(&recs, "runs");
        ensure(runs == by_worker, || {
            format!(
                "--worker {tid}: {runs} runs of {FUNCTION}, the unfiltered run gives it {by_worker}"
            )
        })?;
        on_cpu0 += runs;
        for f in lines
            .iter()
            .filter(|v| v["type"] == "interval")
            .flat_map(|v| v["functions"].as_array().into_iter().flatten())
        {
            let others: Vec<&Value> = f["workers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|w| w["tid"].as_u64() != tid.parse().ok())
                .collect();
            ensure(others.is_empty(), || {
                format!("--worker {tid} shows other workers: {f}")
            })?;
        }
    }
    // Every read runs it once on CPU 0, in one of these workers unless the pool made a new one.
    ensure(on_cpu0 > 0, || {
        format!("none of CPU 0's kworkers {workers:?} ran {FUNCTION} for {n} reads")
    })?;
    assert_nothing_loaded("wq_")
}

fn text_names_queuer() -> Result<(), Failed> {
    let workload = Workload::spawn(&["stat-refresh", &reads().to_string()])?;
    let pid = workload.pid;
    let tracer = start(&["wqtop", "-b", "--comm", "tracer-workload", "0.5"])?;
    workload.go_and_wait_within(scaled(Duration::from_secs(30)))?;
    std::thread::sleep(scaled(Duration::from_millis(700)));
    let done = tracer.stop(libc::SIGINT)?.ok()?;
    let text = done.stdout.join("\n");
    ensure(
        text.contains("wqtop - ") && text.contains("FUNCTION"),
        || format!("no screen: {text}"),
    )?;
    let row = done
        .stdout
        .iter()
        .position(|l| l.contains(FUNCTION) && l.contains("events"))
        .ok_or_else(|| fail(format!("no {FUNCTION} row: {text}")))?;
    let queued_by = &done.stdout[row + 1];
    ensure(
        queued_by.contains("queued by:") && queued_by.contains(&format!("{pid} tracer-workload")),
        || format!("the line under the row does not name workload {pid}: {queued_by}"),
    )?;
    ensure(done.stdout[row + 2].contains("ran in:"), || {
        format!("no workers line: {}", done.stdout[row + 2])
    })?;
    Ok(())
}

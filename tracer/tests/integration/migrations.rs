//! migrations against ground truth: a spinning task pinned to one CPU and moved N times
//! between two CPUs with `taskset -p` must show exactly N migrations, split between the two
//! directions as the moves were, matching the kernel's own count of sched_migrate_task for
//! that pid (a tracefs hist trigger where the kernel has CONFIG_HIST_TRIGGERS, else the
//! event in a private tracefs instance, filtered to the pid); the migrations a stopper thread
//! carried out must be named migration_cpu_stop (sched_setaffinity's stopper work). One tool
//! per rung of the attach ladder (tp_btf, raw_tp, the classic tracepoint) runs at once.

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use libtest_mimic::{Completion, Failed, Trial};
use serde_json::Value;

use crate::common::{
    DEADLINE, Need, TestResult, Workload, emulated, ensure, fail, output_within, scaled, start,
};

const TRACING: &str = "/sys/kernel/tracing";
const EVENT: &str = "events/sched/sched_migrate_task";

/// Every rung of the tool's ladder.
const RUNGS: &[&str] = &["tp_btf", "raw_tp", "tracepoint"];

pub fn tests() -> Vec<Trial> {
    const NAME: &str = "migrations::taskset_moves_are_counted_exactly";
    vec![Trial::ignorable_test(NAME, || {
        crate::common::announced(NAME, taskset_moves_are_counted_exactly())
    })]
}

/// The online CPUs, from sysfs ("0-1", "0,2-3").
fn online_cpus() -> Vec<u32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<u32>().ok()),
        }
    }
    cpus
}

/// The CPU a task last ran on (/proc/PID/stat field 39).
fn cpu_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after the comm start at field 3.
    rest.split_whitespace().nth(36)?.parse().ok()
}

fn taskset(pid: u32, cpu: u32) -> Result<(), Failed> {
    let out = output_within(
        Command::new("taskset").args(["-p", "-c", &cpu.to_string(), &pid.to_string()]),
        DEADLINE,
    )?;
    ensure(out.status.success(), || {
        format!(
            "taskset -p -c {cpu} {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The kernel's own count of sched_migrate_task for one pid, while it lives.
enum KernelCount {
    /// `hist:keys=pid if pid == N` on the event (CONFIG_HIST_TRIGGERS).
    Hist { trigger: PathBuf, spec: String },
    /// The event enabled in a private tracefs instance with a `pid == N` filter; the records
    /// in its buffer are counted.
    Instance { dir: PathBuf },
}

impl KernelCount {
    fn start(pid: u32) -> Result<Self, Failed> {
        let event = Path::new(TRACING).join(EVENT);
        if event.join("hist").exists() {
            let spec = format!("hist:keys=pid:vals=hitcount if pid == {pid}");
            let trigger = event.join("trigger");
            std::fs::write(&trigger, &spec)
                .map_err(|e| fail(format!("cannot set {}: {e}", trigger.display())))?;
            return Ok(Self::Hist { trigger, spec });
        }
        let dir = Path::new(TRACING)
            .join("instances")
            .join(format!("tracer-migrations-test-{pid}"));
        std::fs::create_dir(&dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        let counter = Self::Instance { dir: dir.clone() };
        let event = dir.join(EVENT);
        // A buffer big enough for the few records we expect, whatever else migrates.
        std::fs::write(dir.join("buffer_size_kb"), "256")
            .and_then(|()| std::fs::write(event.join("filter"), format!("pid == {pid}")))
            .and_then(|()| std::fs::write(event.join("enable"), "1"))
            .map_err(|e| fail(format!("cannot enable {}: {e}", event.display())))?;
        Ok(counter)
    }

    fn count(&self) -> Result<u64, Failed> {
        match self {
            Self::Hist { trigger, .. } => {
                let hist = trigger.with_file_name("hist");
                let text = std::fs::read_to_string(&hist)
                    .map_err(|e| fail(format!("cannot read {}: {e}", hist.display())))?;
                // "{ pid: 1234 } hitcount: 6"
                Ok(text
                    .lines()
                    .filter(|l| l.starts_with("{ pid:"))
                    .filter_map(|l| l.split("hitcount:").nth(1))
                    .filter_map(|n| n.trim().parse::<u64>().ok())
                    .sum())
            }
            Self::Instance { dir } => {
                let text = std::fs::read_to_string(dir.join("trace"))
                    .map_err(|e| fail(format!("cannot read the instance's trace: {e}")))?;
                Ok(text
                    .lines()
                    .filter(|l| !l.starts_with('#') && l.contains("sched_migrate_task:"))
                    .count() as u64)
            }
        }
    }
}

impl Drop for KernelCount {
    fn drop(&mut self) {
        match self {
            Self::Hist { trigger, spec } => {
                let _ = std::fs::write(trigger, format!("!{spec}"));
            }
            Self::Instance { dir } => {
                let _ = std::fs::write(dir.join(EVENT).join("enable"), "0");
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

fn taskset_moves_are_counted_exactly() -> TestResult {
    for need in [Need::Root, Need::Tracefs, Need::Command("taskset")] {
        if let Some(reason) = need.missing() {
            return Ok(Completion::ignored_with(reason));
        }
    }
    let cpus = online_cpus();
    if cpus.len() < 2 {
        return Ok(Completion::ignored_with(format!(
            "one online CPU ({cpus:?}): no task can migrate"
        )));
    }
    let (a, b) = (cpus[0], cpus[1]);
    let moves: u32 = if emulated().is_some() { 4 } else { 6 };
    let spinner = Workload::spawn(&["spin", "300"])?;
    let pid = spinner.pid;
    // Pinned before anything traces it: from now on only our moves can migrate it.
    taskset(pid, a)?;
    let mut spinner = spinner;
    spinner.go();
    let kernel = KernelCount::start(pid)?;
    let pid_text = pid.to_string();
    // One tool per rung of the ladder, all attached at once: each must see every move.
    let mut tools = Vec::new();
    for rung in RUNGS {
        tools.push((
            *rung,
            start(&["migrations", "-p", &pid_text, "--json", "--attach", rung])?,
        ));
    }
    let mut expected_ab = 0u64;
    let mut expected_ba = 0u64;
    let mut on = a;
    for _ in 0..moves {
        let to = if on == a { b } else { a };
        taskset(pid, to)?;
        // sched_setaffinity returns once the task is off the old CPU; wait until it has run
        // on the new one, so that every move is one migration and not a pending one.
        let until = Instant::now() + scaled(Duration::from_secs(5));
        while cpu_of(pid) != Some(to) && Instant::now() < until {
            thread::sleep(Duration::from_millis(5));
        }
        ensure(cpu_of(pid) == Some(to), || {
            format!("pid {pid} is not on CPU {to} after taskset")
        })?;
        if on == a {
            expected_ab += 1;
        } else {
            expected_ba += 1;
        }
        on = to;
        thread::sleep(Duration::from_millis(20));
    }
    let kernel_count = kernel.count()?;
    drop(kernel);
    drop(spinner);
    ensure(kernel_count == u64::from(moves), || {
        format!(
            "{moves} moves, the kernel's own count of sched_migrate_task for pid {pid}: {kernel_count}"
        )
    })?;
    for (rung, tool) in tools {
        let records = tool.stop(libc::SIGINT)?.ok()?.json()?;
        check_rung(
            rung,
            &records,
            pid,
            moves,
            (a, b),
            (expected_ab, expected_ba),
        )
        .map_err(|e| fail(format!("--attach {rung}: {}", e.message().unwrap_or(""))))?;
    }
    Ok(Completion::Completed)
}

/// What one tool counted against the moves made.
fn check_rung(
    rung: &str,
    records: &[Value],
    pid: u32,
    moves: u32,
    (a, b): (u32, u32),
    (expected_ab, expected_ba): (u64, u64),
) -> Result<(), Failed> {
    let end = records.iter().find(|r| r["type"] == "end");
    ensure(
        end.is_some_and(|e| e["attach"][0]["mechanism"] == rung),
        || format!("not attached with {rung}: {end:?}"),
    )?;
    let interval = records
        .iter()
        .find(|r| r["type"] == "interval")
        .ok_or_else(|| fail(format!("no interval record: {records:?}")))?;
    let task: Option<&Value> = interval["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["tid"] == pid));
    let counted = task.and_then(|t| t["migrations"].as_u64()).unwrap_or(0);
    ensure(counted == u64::from(moves), || {
        format!("{moves} moves of pid {pid}, migrations counted {counted}: {interval}")
    })?;
    let pair = |from: u32, to: u32| {
        interval["pairs"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["from"] == from && p["to"] == to))
            .and_then(|p| p["count"].as_u64())
            .unwrap_or(0)
    };
    ensure(
        pair(a, b) == expected_ab && pair(b, a) == expected_ba,
        || {
            format!(
                "expected {expected_ab} moves {a}→{b} and {expected_ba} {b}→{a}: {}",
                interval["pairs"]
            )
        },
    )?;
    ensure(interval["migrations"] == u64::from(moves), || {
        format!("total (with -p): {}", interval["migrations"])
    })?;
    // A spinning task is usually running when it is moved: then the stopper of its CPU moves
    // it (migration_cpu_stop); when it was only queued, the caller moves it directly.
    let by_stopper = task.and_then(|t| t["by_stopper"].as_u64()).unwrap_or(0);
    let work = interval["stopper_work"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let work_total: u64 = work.iter().filter_map(|w| w["migrations"].as_u64()).sum();
    ensure(work_total == by_stopper && by_stopper <= counted, || {
        format!("by_stopper {by_stopper}, stopper_work {work:?}")
    })?;
    ensure(
        work.iter().all(|w| w["function"] == "migration_cpu_stop"),
        || format!("stopper work of sched_setaffinity moves is not migration_cpu_stop: {work:?}"),
    )
}

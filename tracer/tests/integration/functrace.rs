//! functrace against counts the workload generated, on every rung the kernel has: a process
//! that sleeps N times and then forks a child that sleeps M times, traced with `-p` → N
//! do_nanosleep lines of the process and M of its child (forks followed), each called from
//! hrtimer_nanosleep, and a glob matching the same; bad input in one line.

use std::collections::BTreeMap;

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::common::*;

/// Sleeps of the traced process, then of the child it forks.
const PARENT_SLEEPS: u64 = 8;
const CHILD_SLEEPS: u64 = 5;

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "functrace::sleeps_of_pid_and_its_child_counted",
            &[Need::Root, Need::KernelFunctionTracer],
            sleeps_counted,
        ),
        trial(
            "functrace::bad_input_is_one_line",
            &[Need::Root],
            bad_input_is_one_line,
        ),
    ]
}

/// The rungs this kernel has.
fn rungs() -> Vec<&'static str> {
    let mut rungs = Vec::new();
    if kernel_has_kprobe_multi() {
        rungs.push("kprobe_multi");
    }
    if kernel_has_function_tracer() {
        rungs.push("function");
    }
    rungs
}

fn sleeps_counted() -> Result<(), Failed> {
    for rung in rungs() {
        sleeps_on(rung).map_err(|e| fail(format!("--attach {rung}: {}", msg(&e))))?;
    }
    Ok(())
}

fn msg(e: &Failed) -> String {
    e.message().unwrap_or_default().to_string()
}

fn sleeps_on(rung: &str) -> Result<(), Failed> {
    let mut work = Vec::new();
    for _ in 0..PARENT_SLEEPS {
        work.extend(["sleep", "0.000001"]);
    }
    let child = CHILD_SLEEPS.to_string();
    work.extend(["child-sleeps", &child]);
    let workload = Workload::spawn(&work)?;
    let pid = workload.pid;
    let pid_arg = pid.to_string();
    // A name and a glob: the glob must match hrtimer_nanosleep (and maybe more).
    let args = [
        "functrace",
        "do_nanosleep",
        "hrtimer_nanosl*",
        "-p",
        &pid_arg,
        "--json",
        "--attach",
        rung,
    ];
    let tracer = start(&args)?;
    workload.go_and_wait()?;
    let records = tracer.stop(libc::SIGINT)?.ok()?.json()?;
    ensure(
        records
            .iter()
            .all(|r| r["schema"] == "tracer.functrace.v2" && r["type"].is_string()),
        || format!("records without schema tracer.functrace.v2 or type: {records:?}"),
    )?;
    let problems = crate::cli::json_contract(&args, &records);
    ensure(problems.is_empty(), || problems.join("\n"))?;
    let calls: Vec<&Value> = records.iter().filter(|r| r["type"] == "call").collect();
    // (function, whose) → count; whose: the process itself or its child.
    let mut counts: BTreeMap<(String, &str), u64> = BTreeMap::new();
    let mut callers: BTreeMap<String, u64> = BTreeMap::new();
    for c in &calls {
        let function = c["function"].as_str().unwrap_or("?").to_string();
        let whose = if c["pid"] == pid { "parent" } else { "child" };
        if function == "do_nanosleep" {
            *callers
                .entry(c["caller"].as_str().unwrap_or("?").to_string())
                .or_insert(0) += 1;
        }
        *counts.entry((function, whose)).or_insert(0) += 1;
    }
    let count = |f: &str, whose: &str| counts.get(&(f.to_string(), whose)).copied().unwrap_or(0);
    for function in ["do_nanosleep", "hrtimer_nanosleep"] {
        ensure(
            count(function, "parent") == PARENT_SLEEPS && count(function, "child") == CHILD_SLEEPS,
            || {
                format!(
                    "{function}: {} calls of PID {pid} (want {PARENT_SLEEPS}) and {} of its \
                     child (want {CHILD_SLEEPS}); all counts {counts:?}",
                    count(function, "parent"),
                    count(function, "child")
                )
            },
        )?;
    }
    ensure(callers.keys().all(|c| c == "hrtimer_nanosleep"), || {
        format!("do_nanosleep called from {callers:?}, want hrtimer_nanosleep")
    })?;
    let end = records.last().cloned().unwrap_or_default();
    ensure(end["calls"] == calls.len(), || {
        format!(
            "end record says {} calls, {} printed",
            end["calls"],
            calls.len()
        )
    })?;
    ensure(end["lost"] == 0, || format!("calls lost: {end}"))?;
    Ok(())
}

fn bad_input_is_one_line() -> Result<(), Failed> {
    let mut cases: Vec<(Vec<&str>, &str)> = vec![(
        vec!["functrace", "do_nanosleep", "--max-functions", "0"],
        "--max-functions must be",
    )];
    if kernel_has_kprobe_multi() || kernel_has_function_tracer() {
        cases.push((
            vec!["functrace", "no_such_function_xyz*"],
            "no traceable kernel function matches",
        ));
        // Every traceable function: far more than the default limit.
        cases.push((vec!["functrace", "*"], "more than --max-functions"));
        // notrace: the scheduler's core is not in available_filter_functions.
        cases.push((
            vec!["functrace", "__schedule"],
            "no traceable kernel function matches",
        ));
    } else {
        cases.push((
            vec!["functrace", "do_nanosleep"],
            "needs kprobe_multi links",
        ));
    }
    if kernel_has_kprobe_multi() {
        cases.push((
            vec!["functrace", "bpf_prog_put", "--attach", "kprobe_multi"],
            "deny list",
        ));
    }
    expect_one_line_errors(&cases)
}

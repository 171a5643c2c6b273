//! Every tool that stays attached, stopped mid-run by SIGINT, SIGTERM and SIGKILL: afterwards
//! none of the programs, maps, links, perf events, tracefs probe events or pins it held may
//! be left in the kernel. SIGINT and SIGTERM must end it cleanly (exit 0) with its final
//! output flushed (the JSON "end" record, printed after the last summary).

use libtest_mimic::{Completion, Failed, Trial};

use crate::common::{
    Need, Running, TestResult, WORKLOAD, assert_released, bpf_objects_of, ensure, fail,
    pinned_paths, run, start,
};

/// Tools that attach and run until stopped, with arguments that make them do so. A tool
/// added to `tracer list-tools` must get a row here or in `NOT_LIVE`
/// (`signals::every_tool_is_covered` fails otherwise). `{workload}` is replaced by the path
/// of tracer-workload (uprobes on it touch no other process).
const LIVE: &[(&str, &[&str])] = &[
    ("forksnoop", &["--json"]),
    ("softirq-top", &["--json"]),
    ("profile", &["-F", "49", "--json"]),
    ("kstacks", &["--json"]),
    ("offcputime", &["--json"]),
    ("funccount", &["--json", "t:sched:sched_process_fork"]),
    (
        "funclatency",
        &["--json", "-u", "u:{workload}:tracer_workload_hot_function"],
    ),
    (
        "argdist",
        &["--json", "-C", "t:sched:sched_switch", "prev_pid"],
    ),
    (
        "trace",
        &["--json", "u:{workload}:tracer_workload_hot_function"],
    ),
    ("stackcount", &["--json", "t:sched:sched_process_fork"]),
    ("ktop", &["--json"]),
    ("runqlat", &["--json"]),
    ("cpudist", &["--json"]),
    // Skipped (with the reason) while `tracer serve` only says it is not implemented.
    ("serve", &[]),
];

/// Tools that load nothing, or load and unload by themselves, so there is no run to interrupt.
const NOT_LIVE: &[(&str, &str)] = &[
    ("doctor", "loads one probe program per feature and exits"),
    ("tplist", "lists tracepoints and symbols; loads nothing"),
    ("kthreads", "a snapshot of /proc; loads nothing"),
];

const SIGNALS: [(i32, &str); 3] = [
    (libc::SIGINT, "SIGINT"),
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGKILL, "SIGKILL"),
];

pub fn tests() -> Vec<Trial> {
    let mut trials = vec![Trial::test(
        "signals::every_tool_is_covered",
        every_tool_is_covered,
    )];
    for &(tool, args) in LIVE {
        let needs: &'static [Need] = &[Need::Root];
        let name = format!("signals::{}", tool.replace('-', "_"));
        trials.push(Trial::ignorable_test(name, move || {
            if let Some(reason) = needs.iter().find_map(|n| n.missing()) {
                return Ok(Completion::ignored_with(reason));
            }
            signals_leave_nothing(tool, args)
        }));
    }
    trials
}

/// `tracer list-tools` is exactly LIVE + NOT_LIVE.
fn every_tool_is_covered() -> Result<(), Failed> {
    let out = run(&["list-tools"]);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    let listed: Vec<&str> = listed.split_whitespace().collect();
    for tool in &listed {
        ensure(
            LIVE.iter().any(|(t, _)| t == tool) || NOT_LIVE.iter().any(|(t, _)| t == tool),
            || format!("{tool} is in neither LIVE nor NOT_LIVE of signals.rs"),
        )?;
    }
    let ours = LIVE
        .iter()
        .map(|(t, _)| t)
        .chain(NOT_LIVE.iter().map(|(t, _)| t));
    for tool in ours {
        ensure(listed.contains(tool), || {
            format!("signals.rs lists {tool}, tracer list-tools does not")
        })?;
    }
    Ok(())
}

fn signals_leave_nothing(tool: &str, args: &[&str]) -> TestResult {
    let mut argv = vec![tool.to_string()];
    argv.extend(args.iter().map(|a| a.replace("{workload}", WORKLOAD)));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    for (signal, name) in SIGNALS {
        let pinned_before = pinned_paths();
        let running = match start(&argv) {
            Ok(running) => running,
            Err(e) => {
                let message = e.message().unwrap_or_default().to_string();
                if message.contains("is not implemented yet") {
                    return Ok(Completion::ignored_with(format!(
                        "{tool} is not implemented yet"
                    )));
                }
                return Err(e);
            }
        };
        stop_and_check(running, tool, signal, name, &pinned_before)?;
    }
    Ok(Completion::Completed)
}

fn stop_and_check(
    running: Running,
    tool: &str,
    signal: i32,
    name: &str,
    pinned_before: &[String],
) -> Result<(), Failed> {
    let pid = running.pid();
    let held = bpf_objects_of(pid);
    ensure(!held.progs.is_empty() && !held.maps.is_empty(), || {
        format!("{tool} (pid {pid}) holds no programs or maps after attaching: {held:?}")
    })?;
    let done = running.stop(signal)?;
    let context = || {
        format!(
            "{tool} after {name}: exit {:?}, signal {:?}",
            done.code, done.signal
        )
    };
    if signal == libc::SIGKILL {
        ensure(done.signal == Some(libc::SIGKILL), context)?;
    } else {
        ensure(done.code == Some(0), || {
            format!("{}; stderr: {}", context(), done.stderr.join(" | "))
        })?;
        let last = done.stdout.last().map(String::as_str).unwrap_or("");
        let record: serde_json::Value = serde_json::from_str(last).map_err(|_| {
            fail(format!(
                "{}: last stdout line is not JSON: {last:?}",
                context()
            ))
        })?;
        ensure(record["type"] == "end", || {
            format!(
                "{}: output not flushed to the end record; last line: {last}",
                context()
            )
        })?;
        ensure(!done.stderr.iter().any(|l| l.contains("panicked")), || {
            format!("{}: {}", context(), done.stderr.join(" | "))
        })?;
    }
    assert_released(pid, &held, pinned_before).map_err(|e| {
        fail(format!(
            "{tool} after {name}: {}",
            e.message().unwrap_or_default()
        ))
    })
}

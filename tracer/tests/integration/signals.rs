//! Every tool that stays attached, stopped mid-run by SIGINT, SIGTERM and SIGKILL (in qemu
//! guests, where every kernel runs this module, by one of SIGTERM and SIGKILL): afterwards
//! none of the programs, maps, links, perf events, tracefs probe events or pins it held may
//! be left in the kernel. SIGINT and SIGTERM must end it cleanly (exit 0) with its final
//! output flushed (the JSON "end" record, printed after the last summary).

use libtest_mimic::{Completion, Failed, Trial};

use crate::common::{
    Need, Running, TestResult, WORKLOAD, assert_released, bpf_objects_of, emulated, ensure, fail,
    pinned_paths, run, start,
};

/// What a tool prints last when it ends cleanly: proof that its final output was flushed.
#[derive(Clone, Copy, Debug)]
enum Last {
    /// The JSON `{"type":"end"}` record, last on stdout (with `--json`).
    JsonEnd,
    /// A line on stderr containing this.
    Stderr(&'static str),
}

/// Tools that attach and run until stopped, with arguments that make them do so. A tool
/// added to `tracer list-tools` must get a row here or in `NOT_LIVE`
/// (`signals::every_tool_is_covered` fails otherwise). `{workload}` is replaced by the path
/// of tracer-workload (uprobes on it touch no other process), `{test_pid}` by this test
/// process's PID.
const LIVE: &[(&str, &[&str], Last)] = &[
    ("forksnoop", &["--json"], Last::JsonEnd),
    ("softirq-top", &["--json"], Last::JsonEnd),
    ("hardirqs", &["--json"], Last::JsonEnd),
    // BCC's name for softirq-top, in BCC's grammar (plus --json).
    ("softirqs", &["--json"], Last::JsonEnd),
    ("profile", &["-F", "49", "--json"], Last::JsonEnd),
    (
        "profile",
        &["--offcpu", "-F", "49", "--json"],
        Last::JsonEnd,
    ),
    ("kstacks", &["--json"], Last::JsonEnd),
    ("offcputime", &["--json"], Last::JsonEnd),
    // This test process: alive throughout, and it links libc.
    ("memleak", &["--json", "-p", "{test_pid}"], Last::JsonEnd),
    (
        "funccount",
        &["--json", "t:sched:sched_process_fork"],
        Last::JsonEnd,
    ),
    (
        "funclatency",
        &["--json", "-u", "u:{workload}:tracer_workload_hot_function"],
        Last::JsonEnd,
    ),
    (
        "argdist",
        &["--json", "--count", "t:sched:sched_switch", "prev_pid"],
        Last::JsonEnd,
    ),
    (
        "trace",
        &["--json", "u:{workload}:tracer_workload_hot_function"],
        Last::JsonEnd,
    ),
    (
        "stackcount",
        &["--json", "t:sched:sched_process_fork"],
        Last::JsonEnd,
    ),
    ("ktop", &["--json"], Last::JsonEnd),
    ("migrations", &["--json", "--stoppers"], Last::JsonEnd),
    ("wqtop", &["--json"], Last::JsonEnd),
    ("runqlat", &["--json"], Last::JsonEnd),
    ("cpudist", &["--json"], Last::JsonEnd),
    ("biotop", &["--json"], Last::JsonEnd),
    ("reclaimtop", &["--json"], Last::JsonEnd),
    // Its BPF rung; kernels without kprobe_multi skip (the tracefs rung loads nothing).
    (
        "funcgraph",
        &[
            "kernel_clone",
            "--max-depth",
            "2",
            "--json",
            "--attach",
            "kprobe_multi",
        ],
        Last::JsonEnd,
    ),
    // Likewise.
    (
        "functrace",
        &["do_nanosleep", "--json", "--attach", "kprobe_multi"],
        Last::JsonEnd,
    ),
    // A free port, so it cannot collide with another serve.
    (
        "serve",
        &["--listen", "127.0.0.1:0"],
        Last::Stderr("Detaching"),
    ),
];

/// Tools that load nothing, or load and unload by themselves, so there is no run to interrupt.
const NOT_LIVE: &[(&str, &str)] = &[
    ("doctor", "loads one probe program per feature and exits"),
    ("tplist", "lists tracepoints and symbols; loads nothing"),
    ("kthreads", "a snapshot of /proc; loads nothing"),
    ("flamegraph", "renders files into an SVG; loads nothing"),
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
    for &(tool, args, last) in LIVE {
        let needs: &'static [Need] = &[Need::Root];
        // A second row of one tool is a mode of it (profile --offcpu): named after the flag.
        let mode = args
            .first()
            .filter(|a| a.starts_with("--") && **a != "--json")
            .map_or(String::new(), |a| format!("_{}", a.trim_start_matches('-')));
        let name = format!("signals::{}{mode}", tool.replace('-', "_"));
        let index = trials.len();
        trials.push(Trial::ignorable_test(name.clone(), move || {
            if let Some(reason) = needs.iter().find_map(|n| n.missing()) {
                return Ok(Completion::ignored_with(reason));
            }
            crate::common::announced(&name, signals_leave_nothing(tool, args, last, index))
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
            LIVE.iter().any(|(t, _, _)| t == tool) || NOT_LIVE.iter().any(|(t, _)| t == tool),
            || format!("{tool} is in neither LIVE nor NOT_LIVE of signals.rs"),
        )?;
    }
    let ours = LIVE
        .iter()
        .map(|(t, _, _)| t)
        .chain(NOT_LIVE.iter().map(|(t, _)| t));
    for tool in ours {
        ensure(listed.contains(tool), || {
            format!("signals.rs lists {tool}, tracer list-tools does not")
        })?;
    }
    Ok(())
}

fn signals_leave_nothing(tool: &str, args: &[&str], last: Last, index: usize) -> TestResult {
    let mut argv = vec![tool.to_string()];
    let own_pid = std::process::id().to_string();
    argv.extend(args.iter().map(|a| {
        a.replace("{workload}", WORKLOAD)
            .replace("{test_pid}", &own_pid)
    }));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    // Under TCG a start costs seconds and every guest kernel runs this module
    // (xtask vm.rs EVERY_GUEST): one stop per tool there, a clean SIGTERM stop for every other
    // tool and SIGKILL for the rest, the other way round in the next kernel of the matrix, so
    // each kernel sees both detach paths (aya's own and the kernel's on close) for about half
    // of the tools and each tool both across the kernels. SIGINT and SIGTERM take the one stop
    // path in the tool (session.rs); the host runs all three for every tool.
    let signals: &[(i32, &str)] = match emulated() {
        Some(kernel) if (index + kernel_parity(&kernel)).is_multiple_of(2) => &SIGNALS[1..2],
        Some(_) => &SIGNALS[2..],
        None => &SIGNALS,
    };
    for &(signal, name) in signals {
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
                if message.contains("needs Linux 5.18+ with CONFIG_FPROBE") {
                    return Ok(Completion::ignored_with(format!(
                        "{tool}'s BPF rung needs kprobe_multi links (Linux 5.18+ with \
                         CONFIG_FPROBE), which this kernel lacks"
                    )));
                }
                return Err(e);
            }
        };
        stop_and_check(running, tool, signal, name, last, &pinned_before)?;
    }
    Ok(Completion::Completed)
}

/// 0 or 1 by the guest kernel's name, so that neighbouring kernels swap the two halves.
fn kernel_parity(kernel: &str) -> usize {
    kernel.bytes().map(usize::from).sum::<usize>() % 2
}

fn stop_and_check(
    running: Running,
    tool: &str,
    signal: i32,
    name: &str,
    last: Last,
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
        match last {
            Last::JsonEnd => {
                let line = done.stdout.last().map(String::as_str).unwrap_or("");
                let record: serde_json::Value = serde_json::from_str(line).map_err(|_| {
                    fail(format!(
                        "{}: last stdout line is not JSON: {line:?}",
                        context()
                    ))
                })?;
                ensure(record["type"] == "end", || {
                    format!(
                        "{}: output not flushed to the end record; last line: {line}",
                        context()
                    )
                })?;
            }
            Last::Stderr(needle) => {
                ensure(done.stderr.iter().any(|l| l.contains(needle)), || {
                    format!(
                        "{}: no final '{needle}' on stderr: {}",
                        context(),
                        done.stderr.join(" | ")
                    )
                })?;
            }
        }
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

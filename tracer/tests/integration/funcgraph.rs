//! funcgraph against the kernel's own function_graph tracer on the same workload: N forks give
//! N kernel_clone trees whose direct callees and their counts are tracefs's; durations nest;
//! the depth limit holds; --min-duration keeps exactly the slow trees; --stats counts hits;
//! --perfetto slices nest and match the trees call for call.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::common::*;

const FORKS: u64 = 12;

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "funcgraph::kernel_clone_trees_match_tracefs_function_graph",
            &[Need::Root, Need::Tracefs, Need::KernelFunctionGraph],
            kernel_clone_trees_match_tracefs,
        ),
        trial(
            "funcgraph::min_duration_keeps_exactly_the_slow_trees",
            &[Need::Root, Need::KernelFunctionGraph],
            min_duration_keeps_slow_trees,
        ),
        trial(
            "funcgraph::bad_input_is_one_line",
            &[Need::Root],
            bad_input_is_one_line,
        ),
    ]
}

/// A call and its callees, from funcgraph's JSON.
struct Call {
    function: String,
    start_ns: i64,
    duration_ns: i64,
    calls: Vec<Call>,
}

fn call(value: &Value) -> Result<Call, Failed> {
    Ok(Call {
        function: value["function"]
            .as_str()
            .ok_or_else(|| fail(format!("no function in {value}")))?
            .to_string(),
        start_ns: value["start_ns"].as_i64().unwrap_or(-1),
        duration_ns: value["duration_ns"].as_i64().unwrap_or(-1),
        calls: value["calls"]
            .as_array()
            .map(|calls| calls.iter().map(call).collect::<Result<Vec<_>, _>>())
            .transpose()?
            .unwrap_or_default(),
    })
}

/// Every callee is no longer than its caller and (where the rung times calls itself,
/// `exact`) starts and ends inside it; the tree is at most `depth` levels deep.
fn check_nesting(c: &Call, depth: usize, max_depth: usize, exact: bool) -> Result<(), Failed> {
    ensure(depth <= max_depth, || {
        format!("{} at level {depth} > --max-depth {max_depth}", c.function)
    })?;
    for child in &c.calls {
        ensure(child.duration_ns <= c.duration_ns, || {
            format!(
                "{} ({} ns) longer than its caller {} ({} ns)",
                child.function, child.duration_ns, c.function, c.duration_ns
            )
        })?;
        ensure(
            !exact
                || (child.start_ns >= c.start_ns
                    && child.start_ns + child.duration_ns <= c.start_ns + c.duration_ns),
            || {
                format!(
                    "{} [{} +{}] outside its caller {} [{} +{}]",
                    child.function,
                    child.start_ns,
                    child.duration_ns,
                    c.function,
                    c.start_ns,
                    c.duration_ns
                )
            },
        )?;
        check_nesting(child, depth + 1, max_depth, exact)?;
    }
    Ok(())
}

fn count_calls(c: &Call) -> usize {
    1 + c.calls.iter().map(count_calls).sum::<usize>()
}

fn trees(records: &[Value]) -> Result<Vec<(u64, Call)>, Failed> {
    records
        .iter()
        .filter(|r| r["type"] == "tree")
        .map(|r| Ok((r["pid"].as_u64().unwrap_or(0), call(&r["root"])?)))
        .collect()
}

/// The JSON fields every tool shares (docs/cli.md), as `cli::json_objects_have_schema_and_type`
/// checks them for the tools that run on every kernel.
fn contract(args: &[&str], records: &[Value]) -> Result<(), Failed> {
    ensure(
        records
            .iter()
            .all(|r| r["schema"] == "tracer.funcgraph.v2" && r["type"].is_string()),
        || format!("records without schema tracer.funcgraph.v2 or type: {records:?}"),
    )?;
    let problems = crate::cli::json_contract(args, records);
    ensure(problems.is_empty(), || problems.join("\n"))
}

fn write(root: &Path, file: &str, text: &str) -> Result<(), Failed> {
    std::fs::write(root.join(file), text).map_err(|e| fail(format!("{file}: {e}")))
}

/// Runs `fork N` under tracefs's function_graph with `root` as set_graph_function, two levels,
/// only the workload (set_ftrace_pid): the root's count and its direct callees' counts.
fn tracefs_direct_callees(root: &str) -> Result<(u64, BTreeMap<String, u64>), Failed> {
    let t = Path::new("/sys/kernel/tracing");
    if !std::fs::read_to_string(t.join("available_tracers"))
        .unwrap_or_default()
        .contains("function_graph")
    {
        return Err(fail("this kernel has no function_graph tracer"));
    }
    let workload = Workload::spawn(&["fork", &FORKS.to_string()])?;
    let reset = || {
        let _ = write(t, "tracing_on", "0");
        let _ = write(t, "current_tracer", "nop");
        let _ = write(t, "set_graph_function", "");
        let _ = write(t, "set_ftrace_pid", "");
        let _ = write(t, "max_graph_depth", "0");
        let _ = write(t, "options/funcgraph-irqs", "1");
        let _ = write(t, "options/function-fork", "0");
        let _ = write(t, "options/funcgraph-proc", "0");
        let _ = write(t, "tracing_on", "1");
    };
    reset();
    write(t, "trace", "")?;
    write(t, "set_graph_function", root)?;
    write(t, "max_graph_depth", "2")?;
    // As funcgraph by default: calls of interrupts that arrive inside a tree left out, and
    // (with -p) the processes forked followed.
    write(t, "options/funcgraph-irqs", "0")?;
    write(t, "options/function-fork", "1")?;
    write(t, "set_ftrace_pid", &workload.pid.to_string())?;
    write(t, "options/funcgraph-proc", "1")?;
    write(t, "current_tracer", "function_graph")?;
    let ran = workload.go_and_wait();
    let _ = write(t, "tracing_on", "0");
    let text = std::fs::read_to_string(t.join("trace")).unwrap_or_default();
    reset();
    ran?;
    // Lines of the tasks inside a root: older kernels also show a forked child's first calls
    // (schedule_tail) as if at the top, which are not the root's callees.
    let mut roots = 0;
    let mut callees = BTreeMap::new();
    let mut inside: BTreeSet<String> = BTreeSet::new();
    for line in text.lines() {
        let mut fields = line.split('|');
        let (Some(task), Some(_), Some(call)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let task = task
            .split_once(')')
            .map_or("", |(_, t)| t.trim())
            .to_string();
        let indent = call.len() - call.trim_start().len();
        let text = call.trim();
        let name = text.split('(').next().unwrap_or_default();
        match indent {
            2 if text == format!("{root}() {{") => {
                roots += 1;
                inside.insert(task);
            }
            2 if text.starts_with('}') => {
                inside.remove(&task);
            }
            4 if inside.contains(&task) && (text.ends_with("() {") || text.ends_with("();")) => {
                *callees.entry(name.to_string()).or_insert(0) += 1;
            }
            _ => {}
        }
    }
    Ok((roots, callees))
}

fn kernel_clone_trees_match_tracefs() -> Result<(), Failed> {
    let (tracefs_roots, tracefs_callees) = tracefs_direct_callees("kernel_clone")?;
    ensure(tracefs_roots == FORKS, || {
        format!("tracefs function_graph saw {tracefs_roots} kernel_clone calls, not {FORKS}")
    })?;

    for rung in rungs() {
        trees_match(rung, &tracefs_callees)?;
    }

    // The function profiler on the same workload: one hit per fork for the root (summed in
    // the kernel: the kprobe_multi rung only).
    if !kernel_has_kprobe_multi() {
        return Ok(());
    }
    let (records, _) = forks_under(&["--stats", "--max-depth", "2"])?;
    let profile = records
        .iter()
        .find(|r| r["type"] == "profile")
        .ok_or_else(|| fail("no profile record"))?;
    let hits = |name: &str| {
        profile["functions"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["function"] == name))
            .and_then(|f| f["hits"].as_u64())
            .unwrap_or(0)
    };
    ensure(hits("kernel_clone") == FORKS, || {
        format!(
            "--stats: kernel_clone hits {} for {FORKS} forks: {:?}",
            hits("kernel_clone"),
            records.last()
        )
    })?;
    ensure(
        hits("copy_process") == tracefs_callees.get("copy_process").copied().unwrap_or(0),
        || {
            format!(
                "--stats: copy_process hits {}, tracefs {:?}",
                hits("copy_process"),
                tracefs_callees.get("copy_process")
            )
        },
    )
}

/// `funcgraph kernel_clone -p PID --json ARGS` while PID forks N times: its records (checked
/// against the common JSON fields), and the PID.
fn forks_under(args: &[&str]) -> Result<(Vec<Value>, String), Failed> {
    let workload = Workload::spawn(&["fork", &FORKS.to_string()])?;
    let pid = workload.pid.to_string();
    let mut all = vec!["funcgraph", "kernel_clone", "-p", &pid, "--json"];
    all.extend_from_slice(args);
    let tracer = start(&all)?;
    workload.go_and_wait()?;
    let records = tracer.stop(libc::SIGINT)?.ok()?.json()?;
    contract(&["funcgraph"], &records)?;
    Ok((records, pid))
}

/// N forks under `funcgraph kernel_clone --attach RUNG`: N trees, nested durations, the depth
/// limit, tracefs's direct callees and counts, and a Perfetto file matching the trees.
fn trees_match(rung: &str, tracefs_callees: &BTreeMap<String, u64>) -> Result<(), Failed> {
    let dir = std::env::temp_dir().join(format!("tracer-funcgraph-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
    let perfetto = dir.join("forks.json");
    let (records, pid) = forks_under(&[
        "--max-depth",
        "3",
        "--perfetto",
        perfetto.to_str().unwrap_or_default(),
        "--attach",
        rung,
    ])?;
    let trees = trees(&records)?;
    ensure(trees.len() as u64 == FORKS, || {
        format!(
            "{rung}: {} kernel_clone trees for {FORKS} forks",
            trees.len()
        )
    })?;
    let mut callees: BTreeMap<String, u64> = BTreeMap::new();
    for (tree_pid, root) in &trees {
        ensure(tree_pid.to_string() == pid, || {
            format!("a tree of PID {tree_pid}, not the workload's {pid}")
        })?;
        ensure(root.function == "kernel_clone", || {
            format!("root {}", root.function)
        })?;
        check_nesting(root, 1, 3, exact(rung))?;
        for c in &root.calls {
            *callees.entry(c.function.clone()).or_insert(0) += 1;
        }
    }
    let end = records
        .iter()
        .find(|r| r["type"] == "end")
        .ok_or_else(|| fail("no end record"))?;
    let attached: BTreeSet<String> = end["callees"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    // On kprobe_multi the callees attached are listed; tracefs's function_graph sees them all.
    ensure(
        rung != "kprobe_multi" || attached.contains("copy_process"),
        || format!("copy_process is not among kernel_clone's callees found: {attached:?}"),
    )?;
    // tracefs's direct callees that funcgraph attached: the same functions, the same counts.
    let expected: BTreeMap<String, u64> = tracefs_callees
        .iter()
        .filter(|(name, _)| rung != "kprobe_multi" || attached.contains(*name))
        .map(|(n, c)| (n.clone(), *c))
        .collect();
    // The calls every fork makes; fewer are interrupts' (a softirq run on the way out of an
    // interrupt shows at depth 1 in tracefs: funcgraph-irqs leaves out hard interrupts only).
    let per_fork = |m: &BTreeMap<String, u64>| -> BTreeMap<String, u64> {
        m.iter()
            .filter(|(_, c)| **c >= FORKS)
            .map(|(n, c)| (n.clone(), *c))
            .collect()
    };
    ensure(per_fork(&callees) == per_fork(&expected), || {
        format!(
            "{rung}: direct callees of kernel_clone: funcgraph {callees:?}, tracefs \
             function_graph {expected:?} (of all it saw: {tracefs_callees:?})"
        )
    })?;

    // The Perfetto file: valid trace-event JSON, one slice per call, nested per thread.
    let text = std::fs::read_to_string(&perfetto).map_err(|e| fail(e.to_string()))?;
    let _ = std::fs::remove_dir_all(&dir);
    let doc: Value = serde_json::from_str(&text).map_err(|e| fail(format!("perfetto: {e}")))?;
    let slices: Vec<&Value> = doc["traceEvents"]
        .as_array()
        .ok_or_else(|| fail("no traceEvents"))?
        .iter()
        .filter(|e| e["ph"] == "X")
        .collect();
    let calls: usize = trees.iter().map(|(_, t)| count_calls(t)).sum();
    ensure(slices.len() == calls, || {
        format!("{} slices for {calls} calls", slices.len())
    })?;
    // Sorted by start (ties: longer first), each slice ends within every open one before it.
    let mut sorted: Vec<(f64, f64, u64)> = slices
        .iter()
        .map(|s| {
            let ts = s["ts"].as_f64().unwrap_or(-1.0);
            (
                ts,
                ts + s["dur"].as_f64().unwrap_or(-1.0),
                s["tid"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    sorted.sort_by(|a, b| (a.2, a.0, -a.1).partial_cmp(&(b.2, b.0, -b.1)).unwrap());
    let mut open: Vec<(f64, f64, u64)> = Vec::new();
    for slice in sorted {
        while open
            .last()
            .is_some_and(|o| o.2 != slice.2 || o.1 <= slice.0)
        {
            open.pop();
        }
        if let Some(parent) = open.last() {
            ensure(!exact(rung) || slice.1 <= parent.1 + 0.001, || {
                format!("slice {slice:?} overlaps its parent {parent:?} without nesting")
            })?;
        }
        open.push(slice);
    }

    Ok(())
}

/// Whether the rung times both ends of every call itself (BPF). tracefs's function_graph
/// stamps each line when its event is written, in whole microseconds, and with
/// funcgraph-irqs off still shows the edges of interrupts (irq_enter_rcu, handle_softirqs)
/// beside the interrupted call: there only durations are compared (a callee is never longer
/// than its caller), not start and end times.
fn exact(rung: &str) -> bool {
    rung != "function_graph"
}

/// The rungs this kernel has.
fn rungs() -> Vec<&'static str> {
    let mut rungs = Vec::new();
    if kernel_has_kprobe_multi() {
        rungs.push("kprobe_multi");
    }
    if kernel_has_function_graph() {
        rungs.push("function_graph");
    }
    rungs
}

fn min_duration_keeps_slow_trees() -> Result<(), Failed> {
    // 6 sleeps of 1 µs and 3 of 100 ms: with --min-duration 40ms only the slow ones are shown
    // (a 1 µs sleep takes well under a millisecond even under emulation).
    let mut args = Vec::new();
    for _ in 0..6 {
        args.extend(["sleep", "0.000001"]);
    }
    for _ in 0..3 {
        args.extend(["sleep", "0.1"]);
    }
    let workload = Workload::spawn(&args)?;
    let pid = workload.pid.to_string();
    let tracer = start(&[
        "funcgraph",
        "hrtimer_nanosleep",
        "--min-duration",
        "40ms",
        "--max-depth",
        "2",
        "-p",
        &pid,
        "--json",
    ])?;
    workload.go_and_wait_within(scaled(Duration::from_secs(10)))?;
    let records = tracer.stop(libc::SIGINT)?.ok()?.json()?;
    let trees = trees(&records)?;
    let end = records
        .iter()
        .find(|r| r["type"] == "end")
        .ok_or_else(|| fail("no end record"))?;
    ensure(end["trees"] == 9, || {
        format!("{} trees seen, not 9", end["trees"])
    })?;
    ensure(trees.len() == 3, || {
        format!("{} trees shown over 40 ms, not 3", trees.len())
    })?;
    for (_, root) in &trees {
        ensure(root.duration_ns >= 100_000_000, || {
            format!("a tree of {} ns shown", root.duration_ns)
        })?;
        check_nesting(root, 1, 2, false)?;
    }
    Ok(())
}

fn bad_input_is_one_line() -> Result<(), Failed> {
    let mut cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["funcgraph", "no_such_function_xyz"],
            "unknown kernel function",
        ),
        (
            vec!["funcgraph", "kernel_clone", "--max-depth", "0"],
            "--max-depth must be",
        ),
        (vec!["funcgraph", "bpf_prog_put"], "deny list"),
        (
            vec!["funcgraph", "kernel_clone", "--min-duration", "5"],
            "not a duration",
        ),
    ];
    if kernel_has_kprobe_multi() || kernel_has_function_graph() {
        // notrace: the scheduler's core is not in available_filter_functions.
        cases.push((vec!["funcgraph", "__schedule"], "cannot be traced"));
    } else {
        cases.push((
            vec!["funcgraph", "kernel_clone"],
            "needs kprobe_multi links",
        ));
    }
    expect_one_line_errors(&cases)
}

//! The command line itself: help lists every tool and command, busybox-style symlinks work
//! and errors through them name the tool, every JSON object carries "schema" and "type".
//! Bad input is in bad_input.rs.

use std::process::Command;

use libtest_mimic::{Failed, Trial};

use crate::common::{Need, TRACER, ensure, fail, run, trial};

pub fn tests() -> Vec<Trial> {
    vec![
        trial("cli::help_lists_every_tool", &[], help_lists_every_tool),
        trial(
            "cli::help_lists_man_and_completions",
            &[],
            help_lists_man_and_completions,
        ),
        trial("cli::symlink_invocation", &[], symlink_invocation),
        trial(
            "cli::interval_header_is_one_format",
            &[Need::Root],
            interval_header_is_one_format,
        ),
        trial(
            "cli::symlink_errors_name_the_tool",
            &[],
            symlink_errors_name_the_tool,
        ),
        trial(
            "cli::json_objects_have_schema_and_type",
            &[Need::Root],
            json_objects_have_schema_and_type,
        ),
        trial(
            "cli::runs_end_when_the_p_target_exits",
            &[Need::Root],
            runs_end_when_the_target_exits,
        ),
    ]
}

/// Every tool that takes `-p PID` ends by itself when its target exits, as `perf record -p`
/// does: its final report (the interval tools' last screen), one stderr line saying the target
/// exited, exit status 0 — instead of empty intervals until Ctrl-C.
fn runs_end_when_the_target_exits() -> Result<(), Failed> {
    // (tool and arguments before -p, whether a report is printed on stdout at the end)
    let cases: &[(&[&str], bool)] = &[
        (&["argdist", "t:sched:sched_switch", "prev_pid"], false),
        (&["biotop"], true),
        (&["cpudist"], false),
        (&["forksnoop"], false),
        (&["funccount", "t:sched:sched_switch"], false),
        (&["funclatency", "u:libc:write"], false),
        (&["ktop"], true),
        (&["memleak"], true),
        (&["migrations"], true),
        (&["offcputime"], false),
        (&["profile"], false),
        (&["reclaimtop"], true),
        (&["runqlat"], false),
        (&["stackcount", "t:sched:sched_switch"], false),
        (&["trace", "t:sched:sched_switch"], false),
        (&["wqtop"], true),
    ];
    for (args, reports) in cases {
        let mut target = Command::new("sleep")
            .arg("1000")
            .spawn()
            .map_err(|e| fail(format!("sleep: {e}")))?;
        let pid = target.id().to_string();
        let mut argv = args.to_vec();
        argv.extend(["-p", &pid]);
        let tool = crate::common::start(&argv);
        // Exited, not yet reaped: a zombie counts as gone.
        let _ = target.kill();
        let done = tool?.wait(crate::common::scaled(std::time::Duration::from_secs(15)));
        let _ = target.wait();
        let done = done.map_err(|e| fail(format!("{argv:?}: {e:?}")))?;
        ensure(
            done.code == Some(0)
                && done
                    .stderr
                    .iter()
                    .any(|l| l.contains(&format!("target {pid} exited; ending the run"))),
            || format!("{argv:?}: exit {:?}, stderr {:?}", done.code, done.stderr),
        )?;
        ensure(!reports || !done.stdout.is_empty(), || {
            format!("{argv:?}: no final report on stdout")
        })?;
    }
    Ok(())
}

fn help_lists_every_tool() -> Result<(), Failed> {
    let out = run(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    let tools = run(&["list-tools"]);
    for tool in String::from_utf8_lossy(&tools.stdout).split_whitespace() {
        ensure(help.contains(tool), || {
            format!("--help does not list {tool}")
        })?;
    }
    Ok(())
}

/// The README documents `tracer man` and `tracer completions`; --help must show them too.
fn help_lists_man_and_completions() -> Result<(), Failed> {
    let out = run(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["man", "completions"] {
        ensure(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            || format!("--help does not list '{command}':\n{help}"),
        )?;
    }
    ensure(!help.contains("list-tools"), || {
        "--help lists the internal list-tools".into()
    })?;
    let words = help.split_whitespace().collect::<Vec<_>>().join(" ");
    ensure(
        words.contains("the symlinks `cargo xtask build` creates"),
        || format!("--help does not say which xtask creates the symlinks:\n{help}"),
    )
}

/// Runs `forksnoop ARGS` through a symlink named forksnoop.
fn via_symlink(args: &[&str]) -> Result<std::process::Output, Failed> {
    let dir = std::env::temp_dir().join(format!(
        "tracer-symlink-{}-{}",
        std::process::id(),
        args.len()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| Failed::from(e.to_string()))?;
    let link = dir.join("forksnoop");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(TRACER, &link).map_err(|e| Failed::from(e.to_string()))?;
    let out = Command::new(&link)
        .args(args)
        .output()
        .map_err(|e| Failed::from(e.to_string()));
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// Errors say the name the user typed: `forksnoop: error: ...`, for clap's usage errors
/// (exit 2) and for the tool's own (here a usage error found after parsing, also exit 2).
fn symlink_errors_name_the_tool() -> Result<(), Failed> {
    for (args, says) in [
        (&["--bogus"][..], "unexpected argument '--bogus'"),
        (&["--comm", "a*b"][..], "only a trailing '*'"),
    ] {
        let out = via_symlink(args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure(
            out.status.code() == Some(2)
                && stderr.starts_with("forksnoop: error: ")
                && stderr.contains(says)
                && stderr.lines().count() == 1,
            || format!("forksnoop {}: {}: {stderr}", args.join(" "), out.status),
        )?;
    }
    Ok(())
}

fn symlink_invocation() -> Result<(), Failed> {
    let out = via_symlink(&["--help"])?;
    let help = String::from_utf8_lossy(&out.stdout);
    ensure(
        out.status.success() && help.contains("Usage: tracer forksnoop"),
        || format!("symlink help: {help}"),
    )
}

/// `HH:MM:SS` on a line of its own.
fn is_time_line(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() == 8
        && b[2] == b':'
        && b[5] == b':'
        && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit())
}

/// With -T every interval tool opens its interval blocks with the same `HH:MM:SS` line
/// (docs/cli.md), from one shared function; argdist used `[HH:MM:SS]`, kthreads ignored -T.
fn interval_header_is_one_format() -> Result<(), Failed> {
    let cases: &[&[&str]] = &[
        &[
            "argdist",
            "-T",
            "-d",
            "1.3",
            "t:sched:sched_switch",
            "prev_pid",
            "0.5",
        ],
        &[
            "funccount",
            "-T",
            "-d",
            "1.3",
            "t:sched:sched_switch",
            "0.5",
        ],
        &[
            "funclatency",
            "-T",
            "-d",
            "1.3",
            "--start",
            "t:sched:sched_wakeup",
            "--start-key",
            "pid",
            "--end",
            "t:sched:sched_switch",
            "--end-key",
            "next_pid",
            "0.5",
        ],
        &["runqlat", "-T", "-d", "1.3", "0.5"],
        &["cpudist", "-T", "-d", "1.3", "0.5"],
        &["biotop", "-T", "-d", "1.3", "0.5"],
        &["offcputime", "-T", "-d", "1.3", "0.5"],
        &["profile", "-T", "-d", "1.3", "0.5"],
        &["softirq-top", "-T", "-d", "1.3", "0.5"],
        &["migrations", "-T", "-d", "1.3", "0.5"],
        &["hardirqs", "-T", "-d", "1.3", "0.5"],
        &["ktop", "-T", "-d", "1.3", "0.5"],
        &["wqtop", "-T", "-d", "1.3", "0.5"],
        &["reclaimtop", "-T", "-d", "1.3", "0.5"],
        &["kthreads", "-T"],
    ];
    for args in cases {
        let out = run(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure(out.status.success(), || {
            format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr))
        })?;
        ensure(stdout.lines().any(is_time_line), || {
            format!("{args:?}: no HH:MM:SS header line in:\n{stdout}")
        })?;
        ensure(
            !stdout
                .lines()
                .any(|l| l.starts_with('[') && is_time_line(l.trim_matches(['[', ']']))),
            || format!("{args:?}: a [HH:MM:SS] header:\n{stdout}"),
        )?;
    }
    Ok(())
}

/// README and docs/cli.md: every JSON object has `"schema": "tracer.<tool>.v2"` and a
/// `"type"`; an interval run (`0.3 2`) prints exactly 2 per-interval records, each with `time`
/// (HH:MM:SS) and `interval_ns` (nanoseconds); every tracing tool's last record is the end
/// record, with `attach` (a non-empty list of `{target, mechanism}`), `map_full` and
/// `read_errors`. Each tool with
/// --json (serve speaks HTTP instead), run briefly in its main modes.
fn json_objects_have_schema_and_type() -> Result<(), Failed> {
    const RUNS: &[&[&str]] = &[
        &["forksnoop", "--json", "-d", "0.5"],
        &["forksnoop", "--summary", "--json", "0.3", "2"],
        &["doctor", "--json"],
        &["softirq-top", "--json", "0.3", "2"],
        &["hardirqs", "--json", "-D", "--per-cpu", "0.3", "2"],
        &["softirqs", "--json", "0.3", "2"],
        &["profile", "--json", "-d", "0.5"],
        &["profile", "--offcpu", "--json", "-d", "0.5"],
        &["kstacks", "--json", "-d", "0.5"],
        &["offcputime", "--json", "-d", "0.5"],
        &["funccount", "--json", "t:sched:sched_switch", "0.3", "2"],
        &[
            "funccount",
            "-P",
            "--json",
            "t:sched:sched_switch",
            "0.3",
            "1",
        ],
        &["funclatency", "--json", "u:libc:write", "-d", "0.5"],
        &[
            "argdist",
            "--json",
            "--count",
            "t:sched:sched_switch",
            "prev_state",
            "-d",
            "0.5",
        ],
        &[
            "trace",
            "--json",
            "t:sched:sched_switch",
            "%d",
            "prev_pid",
            "-d",
            "0.3",
        ],
        &["tplist", "--json", "-v", "sched:sched_process_fork"],
        &["stackcount", "--json", "t:sched:sched_switch", "-d", "0.5"],
        &["ktop", "--json", "0.3", "2"],
        &["migrations", "--json", "0.3", "2"],
        &["migrations", "--json", "--stoppers", "-G", "-d", "0.5"],
        &["wqtop", "--json", "0.3", "2"],
        &["runqlat", "--json", "0.3", "2"],
        &["runqlat", "-P", "--json", "0.3", "2"],
        &["cpudist", "--json", "0.3", "2"],
        &["biotop", "--json", "0.3", "2"],
        &["biotop", "--jbd2", "--json", "0.3", "2"],
        &["reclaimtop", "--json", "0.3", "2"],
        &["kthreads", "--json"],
        // memleak on this test process (alive, and it links libc).
        &["memleak", "--json", "-p", "{test_pid}", "-d", "0.5"],
    ];
    let tools = run(&["list-tools"]);
    for tool in String::from_utf8_lossy(&tools.stdout).split_whitespace() {
        // serve speaks Prometheus; flamegraph writes an SVG: neither has --json. funcgraph
        // and functrace need a rung this host lacks: their records go through `json_contract`
        // in their own tests.
        let no_json = ["serve", "flamegraph", "funcgraph", "functrace"].contains(&tool);
        ensure(no_json || RUNS.iter().any(|r| r[0] == tool), || {
            format!("{tool} is not in the JSON table")
        })?;
    }
    let mut problems = Vec::new();
    let own_pid = std::process::id().to_string();
    for args in RUNS {
        let args: Vec<&str> = args
            .iter()
            .map(|a| {
                if *a == "{test_pid}" {
                    own_pid.as_str()
                } else {
                    a
                }
            })
            .collect();
        let args = args.as_slice();
        let shown = args.join(" ");
        let out = run(args);
        if !out.status.success() {
            problems.push(format!(
                "{shown}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            continue;
        }
        // The schema names the tool as an identifier: tracer.softirq_top.v2. BCC's softirqs
        // is softirq-top's front end and prints softirq-top's records.
        let tool = if args[0] == "softirqs" {
            "softirq-top"
        } else {
            args[0]
        };
        let schema = format!("tracer.{}.v2", tool.replace('-', "_"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        if stdout.trim().is_empty() {
            problems.push(format!("{shown}: no output"));
        }
        let mut records = Vec::new();
        for line in stdout.lines() {
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| fail(format!("{shown}: not JSON ({e}): {line}")))?;
            if value["schema"] != schema.as_str()
                || value["type"].as_str().is_none_or(str::is_empty)
            {
                problems.push(format!("{shown}: no schema {schema} or no type: {line}"));
                break;
            }
            records.push(value);
        }
        problems.extend(
            json_contract(args, &records)
                .into_iter()
                .map(|p| format!("{shown}: {p}")),
        );
    }
    ensure(problems.is_empty(), || problems.join("\n"))
}

/// What is wrong with one run's records against the common JSON fields (docs/cli.md).
pub fn json_contract(args: &[&str], records: &[serde_json::Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let per_interval: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r.get("interval_ns").is_some())
        .collect();
    for r in &per_interval {
        let time_ok = r["time"].as_str().is_some_and(is_time_line);
        // Nanoseconds, not seconds: a 0.3 s interval (or a run of a few seconds).
        let length_ok = r["interval_ns"]
            .as_u64()
            .is_some_and(|ns| (50_000_000..60_000_000_000).contains(&ns));
        if !time_ok || !length_ok {
            problems.push(format!(
                "per-interval record without HH:MM:SS time or interval_ns: {r}"
            ));
        }
    }
    if args.ends_with(&["0.3", "2"]) && per_interval.len() != 2 {
        problems.push(format!(
            "{} per-interval records for 2 intervals: {records:?}",
            per_interval.len()
        ));
    }
    // Listings and one-shot reports have no end record.
    if ["doctor", "kthreads", "tplist"].contains(&args[0]) {
        return problems;
    }
    let Some(end) = records.last().filter(|r| r["type"] == "end") else {
        problems.push("the last record is not the end record".to_string());
        return problems;
    };
    let attach_ok = end["attach"].as_array().is_some_and(|list| {
        !list.is_empty()
            && list
                .iter()
                .all(|a| a["target"].is_string() && a["mechanism"].is_string())
    });
    if !attach_ok || !end["map_full"].is_u64() || !end["read_errors"].is_u64() {
        problems.push(format!(
            "end record without attach [{{target, mechanism}}], map_full or read_errors: {end}"
        ));
    }
    problems
}

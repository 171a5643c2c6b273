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
    ]
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

/// README: every JSON object has `"schema": "tracer.<tool>.v1"` and a `"type"`. Each tool with
/// --json (serve speaks HTTP instead), run briefly in its main modes.
fn json_objects_have_schema_and_type() -> Result<(), Failed> {
    const RUNS: &[&[&str]] = &[
        &["forksnoop", "--json", "-d", "0.5"],
        &["forksnoop", "--summary", "--json", "0.3", "2"],
        &["doctor", "--json"],
        &["softirq-top", "--json", "0.3", "1"],
        &["hardirqs", "--json", "-D", "--per-cpu", "0.3", "1"],
        &["softirqs", "--json", "0.3", "1"],
        &["profile", "--json", "-d", "0.5"],
        &["profile", "--offcpu", "--json", "-d", "0.5"],
        &["kstacks", "--json", "-d", "0.5"],
        &["offcputime", "--json", "-d", "0.5"],
        &["funccount", "--json", "t:sched:sched_switch", "0.3", "1"],
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
        &["ktop", "--json", "0.3", "1"],
        &["migrations", "--json", "0.3", "1"],
        &["migrations", "--json", "--stoppers", "-G", "-d", "0.5"],
        &["wqtop", "--json", "0.3", "1"],
        &["runqlat", "--json", "0.3", "1"],
        &["runqlat", "-P", "--json", "0.3", "1"],
        &["cpudist", "--json", "0.3", "1"],
        &["biotop", "--json", "0.3", "1"],
        &["biotop", "--jbd2", "--json", "0.3", "1"],
        &["reclaimtop", "--json", "0.3", "1"],
        &["kthreads", "--json"],
        // memleak on this test process (alive, and it links libc).
        &["memleak", "--json", "-p", "{test_pid}", "-d", "0.5"],
    ];
    let tools = run(&["list-tools"]);
    for tool in String::from_utf8_lossy(&tools.stdout).split_whitespace() {
        // serve speaks Prometheus; flamegraph writes an SVG: neither has --json.
        let no_json = ["serve", "flamegraph"].contains(&tool);
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
        // The schema names the tool as an identifier: tracer.softirq_top.v1. BCC's softirqs
        // is softirq-top's front end and prints softirq-top's records.
        let tool = if args[0] == "softirqs" {
            "softirq-top"
        } else {
            args[0]
        };
        let schema = format!("tracer.{}.v1", tool.replace('-', "_"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        if stdout.trim().is_empty() {
            problems.push(format!("{shown}: no output"));
        }
        for line in stdout.lines() {
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| fail(format!("{shown}: not JSON ({e}): {line}")))?;
            if value["schema"] != schema.as_str()
                || value["type"].as_str().is_none_or(str::is_empty)
            {
                problems.push(format!("{shown}: no schema {schema} or no type: {line}"));
                break;
            }
        }
    }
    ensure(problems.is_empty(), || problems.join("\n"))
}

//! The command line itself: help lists every tool, busybox-style symlinks work. Bad input is
//! in bad_input.rs.

use std::process::Command;

use libtest_mimic::{Failed, Trial};

use crate::common::{Need, TRACER, ensure, run, trial};

pub fn tests() -> Vec<Trial> {
    vec![
        trial("cli::help_lists_every_tool", &[], help_lists_every_tool),
        trial("cli::symlink_invocation", &[], symlink_invocation),
        trial(
            "cli::interval_header_is_one_format",
            &[Need::Root],
            interval_header_is_one_format,
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

fn symlink_invocation() -> Result<(), Failed> {
    let dir = std::env::temp_dir().join(format!("tracer-symlink-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Failed::from(e.to_string()))?;
    let link = dir.join("forksnoop");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(TRACER, &link).map_err(|e| Failed::from(e.to_string()))?;
    let out = Command::new(&link)
        .arg("--help")
        .output()
        .map_err(|e| Failed::from(e.to_string()))?;
    let _ = std::fs::remove_dir_all(&dir);
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
        &["offcputime", "-T", "-d", "1.3", "0.5"],
        &["profile", "-T", "-d", "1.3", "0.5"],
        &["softirq-top", "-T", "-d", "1.3", "0.5"],
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

//! Bad input: one clear line on stderr, a non-zero exit, never a panic or a hang.

use std::process::{Command, Output};

use libtest_mimic::{Failed, Trial};

use crate::common::{Need, TRACER, ensure, run, trial};

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "cli::bad_input_is_one_clear_line",
            &[],
            bad_input_is_one_clear_line,
        ),
        trial(
            "cli::non_root_is_told_what_to_do",
            &[Need::Root, Need::Command("setpriv")],
            non_root_is_told_what_to_do,
        ),
        trial("cli::help_lists_every_tool", &[], help_lists_every_tool),
        trial("cli::symlink_invocation", &[], symlink_invocation),
    ]
}

/// Checks an error: exit code, exactly one non-empty stderr line containing `needle`, no panic.
pub fn expect_error(out: &Output, needle: &str, what: &str) -> Result<(), Failed> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure(!out.status.success(), || format!("{what}: exited 0"))?;
    ensure(!stderr.contains("panicked"), || {
        format!("{what}: panic: {stderr}")
    })?;
    ensure(stderr.contains(needle), || {
        format!("{what}: stderr lacks '{needle}': {stderr}")
    })?;
    let first = lines.first().copied().unwrap_or("");
    ensure(first.contains("error"), || {
        format!("{what}: first line is not the error: {stderr}")
    })?;
    Ok(())
}

fn bad_input_is_one_clear_line() -> Result<(), Failed> {
    let cases: &[(&[&str], &str)] = &[
        (&["nosuchtool"], "unrecognized subcommand"),
        (&["forksnoop", "--summary", "0"], "out of range"),
        (
            &["forksnoop", "--summary", "abc"],
            "not a number of seconds",
        ),
        (
            &["forksnoop", "--summary", "1", "0"],
            "not a positive count",
        ),
        (
            &["forksnoop", "-p", "999999999"],
            "no process with PID 999999999",
        ),
        (&["forksnoop", "-p", "notapid"], "invalid value"),
        (&["forksnoop", "1"], "apply to --summary"),
        (&["forksnoop", "--comm", "a*b"], "only a trailing '*'"),
        (
            &["forksnoop", "--comm", "averyveryverylongname"],
            "longer than",
        ),
        (
            &["forksnoop", "--threads", "--no-threads"],
            "cannot be used with",
        ),
        (&["forksnoop", "--attach", "kprobe"], "not offered"),
        (&["forksnoop", "--attach", "bogus"], "invalid value"),
        (&["forksnoop", "-d", "-5"], "error"),
    ];
    for (args, needle) in cases {
        let out = run(args);
        expect_error(&out, needle, &args.join(" "))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines = stderr.lines().filter(|l| !l.trim().is_empty()).count();
        ensure(lines == 1, || {
            format!("{}: {lines} lines: {stderr}", args.join(" "))
        })?;
    }
    Ok(())
}

fn non_root_is_told_what_to_do() -> Result<(), Failed> {
    // Drop to nobody with no capabilities at all.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .args([TRACER, "forksnoop", "-d", "1"])
        .output()
        .map_err(|e| Failed::from(e.to_string()))?;
    expect_error(
        &out,
        "needs root or CAP_BPF + CAP_PERFMON",
        "unprivileged forksnoop",
    )?;
    let lines = String::from_utf8_lossy(&out.stderr).lines().count();
    ensure(lines == 1, || format!("{lines} lines"))
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

//! The command line itself: help lists every tool, busybox-style symlinks work. Bad input is
//! in bad_input.rs.

use std::process::Command;

use libtest_mimic::{Failed, Trial};

use crate::common::{TRACER, ensure, run, trial};

pub fn tests() -> Vec<Trial> {
    vec![
        trial("cli::help_lists_every_tool", &[], help_lists_every_tool),
        trial("cli::symlink_invocation", &[], symlink_invocation),
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

//! Paths and process helpers shared by the xtask commands.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (parent of xtask/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

pub fn release_bin(name: &str) -> PathBuf {
    target_dir().join("release").join(name)
}

/// Runs a command, failing with its name if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Runs a command, echoing its stdout while keeping a copy (to read test summaries).
pub fn run_tee(cmd: &mut Command) -> Result<(bool, String)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let mut captured = String::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        captured.push_str(&line);
        captured.push('\n');
    }
    Ok((child.wait()?.success(), captured))
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(repo_root());
    // `cargo xtask` runs us with xtask's own CARGO_PKG_* and CARGO_MANIFEST_* set. Build
    // scripts that declare rerun-if-env-changed on those (ring's does) would rerun, and
    // rebuild everything above them, whenever a build alternates with a plain `cargo build`.
    for (name, _) in std::env::vars_os() {
        if let Some(name) = name.to_str()
            && (name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_MANIFEST_")
                || matches!(
                    name,
                    "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
                ))
        {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Release build of the tracer binaries, one symlink per tool (busybox style), man pages.
pub fn build_release() -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "tracer", "--bins"]))?;
    let tracer = release_bin("tracer");
    let out = Command::new(&tracer).arg("list-tools").output()?;
    for tool in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let link = release_bin(tool);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("tracer", &link)
            .with_context(|| format!("cannot create {}", link.display()))?;
    }
    run(Command::new(&tracer)
        .arg("man")
        .arg("--out-dir")
        .arg(target_dir().join("release/man")))
}

/// Replaces xtask with `tracer ARGS...`.
pub fn exec_tracer(args: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let err = Command::new(release_bin("tracer")).args(args).exec();
    bail!("cannot run tracer: {err}")
}

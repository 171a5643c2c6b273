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

/// What outlives a clone, kept once per machine: the tools setup builds (bpf-linker against
/// rustc's LLVM, Go's pprof, inferno for the benchmark) and the Debian kernels the VM stage
/// boots. A fresh clone then spends its time on its own build and tests, not on rebuilding
/// the same bpf-linker or downloading the same kernels. `TRACER_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/tracer`, else `~/.cache/tracer`; delete it to start over.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TRACER_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("tracer")
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

/// What `run_tee` saw: whether the command succeeded, its stdout, and each test's wall time
/// when it ran libtest tests one at a time.
pub struct Teed {
    pub ok: bool,
    pub text: String,
    pub times: Vec<(String, f64)>,
}

/// Runs a command, echoing its stdout while keeping a copy (to read test summaries) and timing
/// the tests it reports (`report::TestTimer`).
pub fn run_tee(cmd: &mut Command) -> Result<Teed> {
    let start = std::time::Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let mut text = String::new();
    let mut timer = crate::report::TestTimer::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        timer.line(start.elapsed().as_secs_f64(), &line);
        text.push_str(&line);
        text.push('\n');
    }
    Ok(Teed {
        ok: child.wait()?.success(),
        text,
        times: timer.times,
    })
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

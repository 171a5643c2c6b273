//! The test build: every test binary of ours and the tracer binaries the integration tests
//! run, in one cargo run (one build graph keeps both cores busy), and the same cargo arguments
//! wherever a stage needs them again (another package set would unify features differently
//! and rebuild).
//!
//! They are built for the host's glibc, not for the static musl target `cargo xtask dist`
//! ships (which would spare the suite one build of every dependency): tried on 2026-12-07, the
//! tests then probe libc.so functions (`u:libc:write`, `p:c:write`, malloc for memleak) in a
//! tracer-workload and a test process that, static, have no libc.so: 9 of the first 40 host
//! tests failed.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::util::cargo;

/// What the test build made.
pub(crate) struct Binaries {
    /// The tracer the integration tests run (`CARGO_BIN_EXE_tracer`).
    pub(crate) tracer: PathBuf,
    pub(crate) integration: PathBuf,
    /// The unit test executables (libraries and binaries built with `--test`), each with its
    /// package's folder to run in.
    pub(crate) unit: Vec<(PathBuf, PathBuf)>,
}

/// `cargo test` arguments that select the test build; every cargo call that should reuse it
/// passes the same ones (another package set unifies features differently and rebuilds).
fn test_build_args() -> Vec<&'static str> {
    vec![
        "test",
        "--release",
        "-p",
        "tracer-common",
        "-p",
        "tracer",
        "--bins",
        "--lib",
        "--test",
        "integration",
    ]
}

/// A cargo command for the musl target: ring (rustls' crypto for serve's TLS) compiles a
/// little C and assembly; without a musl cross gcc (musl-tools) the host's compiler does,
/// since that code needs only compiler headers.
pub(crate) fn musl_cargo() -> Command {
    let mut cmd = cargo();
    if which("x86_64-linux-musl-gcc").is_none()
        && std::env::var_os("CC_x86_64_unknown_linux_musl").is_none()
    {
        cmd.env(
            "CC_x86_64_unknown_linux_musl",
            if which("musl-gcc").is_some() {
                "musl-gcc"
            } else {
                "cc"
            },
        );
    }
    cmd
}

/// Builds the test binaries and returns their paths, read from cargo's JSON messages.
pub(crate) fn tests() -> Result<Binaries> {
    let out = cargo()
        .args(test_build_args())
        .args(["--no-run", "--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !out.status.success() {
        bail!("building the tests failed");
    }
    let (mut tracer, mut integration, mut unit) = (None, None, Vec::new());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(exe) = msg["executable"].as_str().map(PathBuf::from) else {
            continue;
        };
        let name = msg["target"]["name"].as_str().unwrap_or_default();
        let kinds = msg["target"]["kind"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let kind = |k: &str| kinds.iter().any(|x| x == k);
        let test = msg["profile"]["test"] == true;
        if name == "integration" && kind("test") {
            integration = Some(exe);
        } else if test {
            let dir = msg["manifest_path"]
                .as_str()
                .and_then(|m| std::path::Path::new(m).parent())
                .map_or_else(crate::util::repo_root, PathBuf::from);
            unit.push((exe, dir));
        } else if name == "tracer" && kind("bin") {
            tracer = Some(exe);
        }
    }
    Ok(Binaries {
        tracer: tracer.ok_or_else(|| anyhow!("cargo did not report the tracer binary"))?,
        integration: integration
            .ok_or_else(|| anyhow!("cargo did not report the integration test binary"))?,
        unit,
    })
}

/// The path of `program` on PATH, if it is there.
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

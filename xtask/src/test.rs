//! The whole test suite, as the README and CI run it: setup, lints, unit tests, the static
//! binary, the integration tests against this kernel, then the kernel-dependent integration
//! tests in qemu on other kernels (`--full`: every test in every kernel, with the soak test
//! on this kernel alongside). Ends with a stage table, the slowest tests, the time against
//! the budget and one line "N passed, N failed, N skipped" summed over every stage
//! (report.rs; also written as target/test-summary.json).

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    build,
    report::{Stages, Tally},
    setup,
    util::{cargo, run, run_tee},
    vm,
};

#[derive(Args, Clone, Debug, Default)]
pub struct TestArgs {
    /// Every integration test in every qemu kernel, and the 10-minute soak on this kernel
    /// alongside (budget 75 minutes): run it before resolving an issue that changes
    /// kernel-side code, attach paths or a tool's load. Without it each guest runs the
    /// kernel-dependent tests only (budget 40 minutes).
    #[arg(long)]
    pub full: bool,
    /// Skip the qemu stage (kprobe/fentry paths on other kernels).
    #[arg(long)]
    pub no_vm: bool,
    /// With --full: skip the soak stage (every live tool for TRACER_SOAK_SECS, default
    /// 600 s, under load).
    #[arg(long)]
    pub no_soak: bool,
    /// Skip cargo fmt/clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Only integration tests whose name contains this (here and in every guest).
    #[arg(long)]
    pub filter: Option<String>,
    /// How many qemu guests run at once (each keeps one host core busy; 1 = one after the
    /// other).
    #[arg(long, default_value_t = 2)]
    pub guests: usize,
}

/// Wall-clock budgets on this project's 2-core machine, from a fresh clone (issue 29).
const BUDGET: Duration = Duration::from_secs(40 * 60);
const FULL_BUDGET: Duration = Duration::from_secs(75 * 60);

pub fn test(args: TestArgs) -> Result<()> {
    let mut stages = Stages::new();
    let mut tally = Tally::default();
    setup::setup()?;
    stages.end("setup", &tally);
    if !args.no_lint {
        println!("== lint");
        run(cargo().args(["fmt", "--all", "--", "--check"]))?;
        run(cargo().args([
            "clippy",
            "--release",
            "-p",
            "tracer",
            "-p",
            "tracer-common",
            "-p",
            "testbed",
            "-p",
            "xtask",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        stages.end("lint", &tally);
    }
    let mut ok = true;

    // Every test binary in one cargo run: one build graph keeps both cores busy.
    println!("== build");
    let binaries = build::tests()?;
    stages.end("build", &tally);

    println!("== unit tests");
    for (exe, dir) in &binaries.unit {
        let unit = run_tee(Command::new(exe).current_dir(dir))?;
        tally.add_libtest("unit", &unit.text);
        ok &= unit.ok;
    }
    // xtask's own, in the debug build `cargo xtask` already made of its dependencies.
    let unit = run_tee(cargo().args(["test", "-p", "xtask"]))?;
    tally.add_libtest("unit", &unit.text);
    ok &= unit.ok;
    stages.end("unit", &tally);

    // The static binary the dist tests run from an empty root, here and in the VM kernels.
    println!("== dist");
    crate::dist::dist()?;
    stages.end("dist", &tally);

    println!("== integration tests (this kernel: {})", kernel_release());
    let mut cmd = Command::new(&binaries.integration);
    cmd.current_dir(crate::util::repo_root().join("tracer"))
        .args(["--test-threads", "1"]);
    if let Some(filter) = &args.filter {
        cmd.arg(filter);
    }
    let soak =
        args.full && !args.no_soak && args.filter.as_deref().is_none_or(|f| SOAK_TEST.contains(f));
    // The soak is its own stage (--full) or not run at all: on the host it would only report
    // itself ignored.
    cmd.args(["--skip", SOAK_TEST]);
    let host = run_tee(&mut cmd)?;
    tally.add_libtest("host", &host.text);
    tally.times.extend(
        host.times
            .into_iter()
            .map(|(test, secs)| ("host".to_string(), test, secs)),
    );
    ok &= host.ok;
    stages.end("host", &tally);

    // The soak test runs on this kernel while the VM stage runs in qemu: it checks flat
    // memory and bounded maps, not speed, and the VM tests that need native speed use their
    // TCG variants there, so neither disturbs the other.
    let soak = if soak {
        println!("== soak (this kernel, alongside the qemu stage; output after it)");
        Some(Soak::start(&binaries.integration)?)
    } else {
        None
    };

    if !args.no_vm {
        println!("== integration tests in qemu");
        let guests = vm::vm_test(&vm::VmArgs {
            filter: args.filter.clone(),
            every_test: args.full,
            guests: args.guests,
            ..Default::default()
        })
        .unwrap_or_else(|e| {
            println!("vm-test failed: {e:#}");
            Tally::broken("qemu", format!("{e:#}"))
        });
        ok &= guests.failed == 0;
        tally.absorb(guests);
        stages.end("qemu", &tally);
    }

    if let Some(soak) = soak {
        println!("== soak (this kernel)");
        match soak.finish() {
            Ok((soak_ok, out)) => {
                tally.add_libtest("soak", &out);
                ok &= soak_ok;
            }
            Err(e) => {
                println!("soak failed: {e:#}");
                tally.absorb(Tally::broken("soak", format!("{e:#}")));
                ok = false;
            }
        }
        // What the soak ran past the qemu stage.
        stages.end("soak", &tally);
    }

    let budget = if args.full { FULL_BUDGET } else { BUDGET };
    print!("{}", stages.report(&tally, budget)?);
    for failure in &tally.failures {
        println!("FAILED {failure}");
    }
    println!(
        "{} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.skipped
    );
    if !ok || tally.failed > 0 {
        bail!("test suite failed");
    }
    Ok(())
}

/// The soak test (tracer/tests/integration/soak.rs); it skips itself unless TRACER_SOAK=1.
pub(crate) const SOAK_TEST: &str = "soak::all_live_tools";

/// The soak test binary running in the background, its output kept for after the VM stage.
struct Soak {
    child: Child,
    output: JoinHandle<String>,
}

impl Soak {
    fn start(integration: &std::path::Path) -> Result<Self> {
        let mut child = Command::new(integration)
            .args(["--test-threads", "1", "--exact", SOAK_TEST])
            .env("TRACER_SOAK", "1")
            .current_dir(crate::util::repo_root().join("tracer"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot run {}", integration.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let output = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .map(|l| l + "\n")
                .collect()
        });
        Ok(Self { child, output })
    }

    /// Waits for it, prints what it said, and returns (success, output).
    fn finish(mut self) -> Result<(bool, String)> {
        let status = self.child.wait()?;
        let out = self
            .output
            .join()
            .map_err(|_| anyhow::anyhow!("soak output reader panicked"))?;
        print!("{out}");
        Ok((status.success(), out))
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

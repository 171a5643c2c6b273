//! The whole test suite, as the README and CI run it: setup, lints, unit tests, the
//! integration tests against this kernel, then the same tests in qemu on other kernels while
//! the soak test runs on this kernel alongside. Ends with one line
//! "N passed, N failed, N skipped" summed over every stage.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    thread::JoinHandle,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    setup,
    util::{cargo, run, run_tee},
    vm,
};

#[derive(Args, Clone, Debug, Default)]
pub struct TestArgs {
    /// Skip the qemu stage (kprobe/fentry paths on other kernels).
    #[arg(long)]
    pub no_vm: bool,
    /// Skip the soak stage (every live tool for TRACER_SOAK_SECS, default 600 s, under load).
    #[arg(long)]
    pub no_soak: bool,
    /// Skip cargo fmt/clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Only integration tests whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// Every integration test in every qemu kernel (about an hour more), not the
    /// kernel-dependent ones in each and the rest dealt out among them.
    #[arg(long)]
    pub every_test: bool,
}

#[derive(Default)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    /// "STAGE: TEST" for each failed test, for the closing summary (a stage's own output
    /// may be long past by then).
    pub failures: Vec<String>,
}

/// How much of a failed test's message its summary line keeps.
const MESSAGE_CHARS: usize = 400;

impl Tally {
    /// Adds up libtest's "test result: ok. 3 passed; 0 failed; 1 ignored; ..." lines, and
    /// notes the names in the "failures:" list before each, labelled with `stage` and followed
    /// by the first line of the test's "---- NAME ----" message (CI shows only the tail of a
    /// run's output, so the summary line must say why).
    pub fn add_libtest(&mut self, stage: &str, output: &str) {
        let mut listed: Vec<&str> = Vec::new();
        let mut messages: HashMap<&str, String> = HashMap::new();
        let mut reading: Option<&str> = None;
        for line in output.lines().map(|l| l.trim_end_matches('\r')) {
            if let Some(name) = line
                .strip_prefix("---- ")
                .and_then(|l| l.strip_suffix(" ----"))
            {
                reading = Some(name.strip_suffix(" stdout").unwrap_or(name));
                continue;
            }
            if let Some(name) = reading.filter(|_| !line.trim().is_empty()) {
                messages
                    .entry(name)
                    .or_insert_with(|| line.trim().chars().take(MESSAGE_CHARS).collect());
            }
            if line == "failures:" {
                listed.clear();
                reading = None;
            } else if let Some(name) = line.strip_prefix("    ") {
                if !name.contains(' ') && !name.is_empty() {
                    listed.push(name);
                }
            } else if line.starts_with("test result:") {
                self.failures
                    .extend(listed.drain(..).map(|name| match messages.get(name) {
                        Some(why) => format!("{stage}: {name} — {why}"),
                        None => format!("{stage}: {name}"),
                    }));
            } else if !line.is_empty() {
                listed.clear();
            }
        }
        for line in output
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| l.starts_with("test result:"))
        {
            let count = |word: &str| -> u64 {
                line.split(';')
                    .find_map(|part| {
                        let part = part
                            .trim()
                            .trim_start_matches("test result: ok.")
                            .trim_start_matches("test result: FAILED.");
                        part.trim()
                            .strip_suffix(word)
                            .and_then(|n| n.trim().parse().ok())
                    })
                    .unwrap_or(0)
            };
            self.passed += count("passed");
            self.failed += count("failed");
            self.skipped += count("ignored");
        }
    }
}

pub fn test(args: TestArgs) -> Result<()> {
    let mut clock = StageClock::new();
    setup::setup()?;
    clock.end("setup");
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
    }
    clock.end("lint");
    let mut tally = Tally::default();
    let mut ok = true;

    println!("== unit tests");
    let (unit_ok, out) = run_tee(cargo().args([
        "test",
        "--release",
        "-p",
        "tracer-common",
        "-p",
        "tracer",
        "-p",
        "xtask",
        "--bins",
        "--lib",
    ]))?;
    tally.add_libtest("unit", &out);
    ok &= unit_ok;

    // The static binary the dist tests run from an empty root, here and in every VM kernel.
    clock.end("unit");
    println!("== dist");
    crate::dist::dist()?;
    clock.end("dist");

    println!("== integration tests (this kernel: {})", kernel_release());
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "-p",
        "tracer",
        "--test",
        "integration",
        "--",
        "--test-threads",
        "1",
    ]);
    if let Some(filter) = &args.filter {
        cmd.arg(filter);
    }
    let soak = !args.no_soak && args.filter.as_deref().is_none_or(|f| SOAK_TEST.contains(f));
    if soak {
        // Counted once, in its own stage below.
        cmd.args(["--skip", SOAK_TEST]);
    }
    let (int_ok, out) = run_tee(&mut cmd)?;
    tally.add_libtest("host", &out);
    ok &= int_ok;
    clock.end("host");

    // The soak test runs on this kernel while the VM stage runs in qemu: it checks flat
    // memory and bounded maps, not speed, and the VM tests that need native speed skip
    // themselves there, so neither disturbs the other and the suite grows by little.
    let soak = if soak {
        println!("== soak (this kernel, alongside the qemu stage; output after it)");
        Some(Soak::start()?)
    } else {
        None
    };

    if !args.no_vm {
        println!("== integration tests in qemu");
        match vm::vm_test(&vm::VmArgs {
            filter: args.filter.clone(),
            every_test: args.every_test,
            ..Default::default()
        }) {
            Ok(vm_tally) => {
                tally.passed += vm_tally.passed;
                tally.failed += vm_tally.failed;
                tally.skipped += vm_tally.skipped;
                tally.failures.extend(vm_tally.failures);
                ok &= vm_tally.failed == 0;
            }
            Err(e) => {
                println!("vm-test failed: {e:#}");
                tally.failed += 1;
                tally.failures.push(format!("qemu: {e:#}"));
                ok = false;
            }
        }
    }

    if !args.no_vm {
        clock.end("qemu");
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
                tally.failed += 1;
                tally.failures.push(format!("soak: {e:#}"));
                ok = false;
            }
        }
        clock.end("soak");
    }

    println!("{}", clock.summary());
    for failure in &tally.failures {
        println!("FAILED {failure}");
    }
    println!(
        "{} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.skipped
    );
    if !ok {
        bail!("test suite failed");
    }
    Ok(())
}

/// Each stage's wall time, printed with the summary: CI shows only the end of the output.
struct StageClock {
    start: std::time::Instant,
    last: std::time::Instant,
    times: Vec<String>,
}

impl StageClock {
    fn new() -> Self {
        let now = std::time::Instant::now();
        Self {
            start: now,
            last: now,
            times: Vec::new(),
        }
    }

    fn end(&mut self, stage: &str) {
        let now = std::time::Instant::now();
        let took = now - self.last;
        self.times
            .push(format!("{stage} {:.0}s", took.as_secs_f64()));
        self.last = now;
    }

    fn summary(&self) -> String {
        format!(
            "stage times: {} (total {:.0}s)",
            self.times.join(", "),
            self.start.elapsed().as_secs_f64()
        )
    }
}

/// The soak test (tracer/tests/integration/soak.rs); it skips itself unless TRACER_SOAK=1.
pub(crate) const SOAK_TEST: &str = "soak::all_live_tools";

/// The soak test binary running in the background, its output kept for after the VM stage.
struct Soak {
    child: Child,
    output: JoinHandle<String>,
}

impl Soak {
    fn start() -> Result<Self> {
        let binaries = vm::build_test_binaries()?;
        let mut child = Command::new(&binaries.integration)
            .args(["--test-threads", "1", "--exact", SOAK_TEST])
            .env("TRACER_SOAK", "1")
            .current_dir(crate::util::repo_root().join("tracer"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot run {}", binaries.integration.display()))?;
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

//! The whole test suite, as the README and CI run it: setup, lints, unit tests, the
//! integration tests against this kernel, then the same tests in qemu on other kernels.
//! Ends with one line "N passed, N failed, N skipped" summed over every stage.

use anyhow::{Result, bail};
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
    /// Skip cargo fmt/clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Only integration tests whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
}

#[derive(Default)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl Tally {
    /// Adds up libtest's "test result: ok. 3 passed; 0 failed; 1 ignored; ..." lines.
    pub fn add_libtest(&mut self, output: &str) {
        for line in output.lines().filter(|l| l.starts_with("test result:")) {
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
    setup::setup()?;
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
    tally.add_libtest(&out);
    ok &= unit_ok;

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
    let (int_ok, out) = run_tee(&mut cmd)?;
    tally.add_libtest(&out);
    ok &= int_ok;

    if !args.no_vm {
        println!("== integration tests in qemu");
        match vm::vm_test(&vm::VmArgs {
            filter: args.filter.clone(),
            ..Default::default()
        }) {
            Ok(vm_tally) => {
                tally.passed += vm_tally.passed;
                tally.failed += vm_tally.failed;
                tally.skipped += vm_tally.skipped;
                ok &= vm_tally.failed == 0;
            }
            Err(e) => {
                println!("vm-test failed: {e:#}");
                tally.failed += 1;
                ok = false;
            }
        }
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

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

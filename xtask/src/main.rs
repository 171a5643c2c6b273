//! xtask: everything around the code — bootstrap a fresh machine, build, run a tool, run the
//! whole test suite (host kernel and qemu kernels), and benchmarks against BCC's peers.
//!
//! `cargo xtask setup`            install what is missing (rust-src, bpf-linker, Debian packages)
//! `cargo xtask run -- TOOL ...`  setup + release build + run a tool as root
//! `cargo xtask test`             setup + fmt/clippy + unit tests + integration tests + VM tests
//! `cargo xtask vm-test`          the integration tests inside qemu on other kernels
//! `cargo xtask dist`             the static binary and its tarball (target/dist/)
//! `cargo xtask bench [NAME...]`  benchmarks, side by side with libbpf-tools and bpftrace

mod bench;
mod build;
mod dist;
mod report;
mod setup;
mod test;
mod util;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: rust-src, bpf-linker (against rustc's own LLVM), apt packages.
    Setup,
    /// Release build of tracer (with its eBPF objects) and the tool symlinks.
    Build,
    /// Setup, build, then run `tracer ARGS...` (e.g. `cargo xtask run -- softirq-top`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The whole test suite: lint, unit tests, integration tests on this kernel, then in qemu.
    Test(test::TestArgs),
    /// The integration tests inside qemu on Debian kernels (kprobe/fentry paths).
    VmTest(vm::VmArgs),
    /// The release artifact: a static (musl) tracer with symlinks, man pages and completions,
    /// as target/dist/tracer-VERSION-x86_64-linux-musl.tar.gz plus its SHA-256.
    Dist,
    /// Benchmarks (not tests): overhead and cost against libbpf-tools and bpftrace.
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(bench::startup::MEASURE) {
        bench::startup::measure_child(&argv[2..]);
    }
    match Cli::parse().command {
        Cmd::Setup => setup::setup(),
        Cmd::Build => {
            setup::setup()?;
            util::build_release()
        }
        Cmd::Run { args } => {
            setup::setup()?;
            util::build_release()?;
            util::exec_tracer(&args)
        }
        Cmd::Dist => {
            setup::setup()?;
            dist::dist().map(drop)
        }
        Cmd::Test(args) => test::test(args),
        Cmd::VmTest(args) => {
            setup::setup()?;
            let tally = vm::vm_test(&args)?;
            println!(
                "{} passed, {} failed, {} skipped",
                tally.passed, tally.failed, tally.skipped
            );
            if tally.failed > 0 {
                anyhow::bail!("vm tests failed");
            }
            Ok(())
        }
        Cmd::Bench(args) => {
            setup::setup()?;
            util::build_release()?;
            bench::bench(&args)
        }
    }
}

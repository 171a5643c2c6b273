//! Benchmarks: each compares tracer with the peers (libbpf-tools, bpftrace) in one run and
//! prints a table. Never run by the tests; targets are recorded in the README.

mod bpf_stats;
mod common;
mod flamegraph;
mod forksnoop;
mod funcgraph;
mod lens;
mod probes;
mod profile;
mod sched;
mod serve;
mod softirq;
pub mod startup;

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Clone, Debug, Default)]
pub struct BenchArgs {
    /// Benchmarks to run (default: all): forksnoop, softirq, profile, probes, usdt, sched, serve, startup, lens, flamegraph, funcgraph.
    pub names: Vec<String>,
}

type BenchFn = fn() -> Result<()>;

const BENCHES: &[(&str, BenchFn)] = &[
    ("forksnoop", forksnoop::run),
    ("softirq", softirq::run),
    ("profile", profile::run),
    ("probes", probes::run),
    ("usdt", probes::usdt_loop),
    ("sched", sched::run),
    ("serve", serve::run),
    ("startup", startup::run),
    ("lens", lens::run),
    ("flamegraph", flamegraph::run),
    ("funcgraph", funcgraph::run),
];

pub fn bench(args: &BenchArgs) -> Result<()> {
    for name in &args.names {
        if !BENCHES.iter().any(|(n, _)| n == name) {
            let known: Vec<&str> = BENCHES.iter().map(|(n, _)| *n).collect();
            bail!("unknown benchmark '{name}' (known: {})", known.join(", "));
        }
    }
    for (name, run) in BENCHES {
        if args.names.is_empty() || args.names.iter().any(|n| n == name) {
            println!("== bench {name}");
            run()?;
        }
    }
    Ok(())
}

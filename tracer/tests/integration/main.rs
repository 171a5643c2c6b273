//! tracer's integration tests: real programs loaded into the running kernel, real workloads,
//! results compared with ground truth. A test that cannot run on this kernel reports itself
//! as ignored with the reason (libtest-mimic), never as passed.
//!
//! Run through `cargo xtask test` (which also runs them in qemu on other kernels), or
//! `cargo test --release -p tracer --test integration -- --test-threads 1` as root.

mod bad_input;
mod bcc;
mod biotop;
mod cgroup_filter;
mod cli;
mod common;
mod dist;
mod doctor;
mod flamegraph;
mod forksnoop;
mod funcgraph;
mod functrace;
mod hardirqs;
mod hotcold;
mod memory;
mod migrations;
mod overload;
mod pipes;
mod probe_tools;
mod probes;
mod profile;
mod reclaimtop;
mod sched;
mod serve;
mod serve_collectors;
mod serve_http;
mod serve_pprof;
mod signals;
mod soak;
mod softirq_top;
mod unwind;
mod usdt;
mod wqtop;

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let mut trials = Vec::new();
    trials.extend(cli::tests());
    trials.extend(bad_input::tests());
    trials.extend(bcc::tests());
    trials.extend(cgroup_filter::tests());
    trials.extend(doctor::tests());
    trials.extend(usdt::tests());
    trials.extend(dist::tests());
    trials.extend(flamegraph::tests());
    trials.extend(forksnoop::tests());
    trials.extend(funcgraph::tests());
    trials.extend(functrace::tests());
    trials.extend(softirq_top::tests());
    trials.extend(hardirqs::tests());
    trials.extend(profile::tests());
    trials.extend(hotcold::tests());
    trials.extend(memory::tests());
    trials.extend(probes::tests());
    trials.extend(probe_tools::tests());
    trials.extend(sched::tests());
    trials.extend(migrations::tests());
    trials.extend(biotop::tests());
    trials.extend(reclaimtop::tests());
    trials.extend(overload::tests());
    trials.extend(pipes::tests());
    trials.extend(serve::tests());
    trials.extend(serve_collectors::tests());
    trials.extend(serve_http::tests());
    trials.extend(serve_pprof::tests());
    trials.extend(signals::tests());
    trials.extend(soak::tests());
    trials.extend(wqtop::tests());
    trials.extend(unwind::tests());
    libtest_mimic::run(&args, trials).exit();
}

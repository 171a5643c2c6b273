//! cpudist: how long tasks run each time they get a CPU (on-CPU slices), or how long they stay
//! off it (`-O`), as log2 histograms, from `sched_switch` alone.

use anyhow::Result;
use clap::Args;
use tracer_common::sched::{CPUDIST_OFF_CPU, CPUDIST_ON_CPU, SchedConfig};

use super::runqlat::{self, HistView, KeyArgs, SchedTool};
use crate::{attach::Mechanism, btf::KernelBtf, session::IntervalArgs, tools::CommonArgs};

const TOOL: &str = "cpudist";

/// Summarize on-CPU time per time slice (or off-CPU time with -O) as a histogram.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    cpudist                  on-CPU slice lengths until Ctrl-C\n  \
    cpudist -O 1 5           off-CPU times, every second, 5 times\n  \
    cpudist -mP              milliseconds, one histogram per process\n  \
    cpudist -p 185 -L        threads of PID 185, one histogram each\n  \
    cpudist --kthreads       kernel threads, one histogram per group\n  \
    cpudist -I               include the idle tasks (how long CPUs stay idle)")]
pub struct CpudistArgs {
    /// Off-CPU time (switch-out → switch-in) instead of on-CPU slices.
    #[arg(short = 'O', long = "offcpu")]
    pub offcpu: bool,
    /// Include the per-CPU idle tasks (pid 0).
    #[arg(short = 'I', long = "include-idle", conflicts_with_all = ["kthreads", "pid"])]
    pub include_idle: bool,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub interval: IntervalArgs,
    #[command(flatten)]
    pub cgroup: crate::cgroup::CgroupArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: CpudistArgs) -> Result<()> {
    args.cgroup.install(&crate::btf::KernelBtf::new())?;
    let view = HistView {
        tool: TOOL,
        what: if args.offcpu {
            "off-CPU time"
        } else {
            "on-CPU time"
        },
        keys: args.keys,
        interval: args.interval,
        common: args.common,
    };
    let config = SchedConfig {
        cpudist_mode: if args.offcpu {
            CPUDIST_OFF_CPU
        } else {
            CPUDIST_ON_CPU
        },
        include_idle: args.include_idle.into(),
        ..view.config()?
    };
    let btf = KernelBtf::new();
    let mut ebpf = runqlat::load(&btf, config, SchedTool::Cpudist)?;
    let force = view
        .common
        .attach_for(TOOL, &[Mechanism::TpBtf, Mechanism::RawTp])?;
    let switch = runqlat::attach_switch(&mut ebpf, &btf, "cpudist", force)?;
    if view.common.verbose {
        errln!("{TOOL}: {}", switch.summary());
    }
    view.report(&mut ebpf, &switch).await
}

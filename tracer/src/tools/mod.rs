//! One module per tool: its command-line arguments, how it loads and attaches, and its output.
//! Tools are registered in `main.rs` (`Tool` enum and `TOOL_NAMES`).

pub mod argdist;
pub mod cpudist;
pub mod doctor;
pub mod forksnoop;
pub mod funccount;
pub mod funclatency;
pub mod kthreads;
pub mod ktop;
pub mod offcputime;
pub mod profile;
pub mod runqlat;
pub mod serve;
pub mod softirq_top;
pub mod stackcount;
pub mod tplist;
pub mod trace;

use clap::Args;

use crate::{attach::Mechanism, output::OutputArgs, session::DurationArgs};

/// Options every tracing tool takes.
#[derive(Args, Clone, Debug, Default)]
pub struct CommonArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub duration: DurationArgs,
    /// Attach only with this mechanism instead of climbing the ladder (tp_btf → raw_tp →
    /// tracepoint; fentry → kprobe; uprobe-multi → uprobe for u:/ur: probes).
    #[arg(long, value_enum, value_name = "MECHANISM")]
    pub attach: Option<Mechanism>,
    /// Say how each probe was attached and why other mechanisms were not used.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

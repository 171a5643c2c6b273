//! One module per tool: its command-line arguments, how it loads and attaches, and its output.

pub mod doctor;
pub mod forksnoop;

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
    /// tracepoint; fentry → kprobe).
    #[arg(long, value_enum, value_name = "MECHANISM")]
    pub attach: Option<Mechanism>,
    /// Say how each probe was attached and why other mechanisms were not used.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

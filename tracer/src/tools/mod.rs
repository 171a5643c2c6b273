//! One module per tool: its command-line arguments, how it loads and attaches, and its output.
//! Tools are registered in `main.rs` (`Tool` enum and `TOOL_NAMES`).

pub mod argdist;
pub mod biotop;
pub mod cpudist;
pub mod doctor;
pub mod flamegraph;
pub mod forksnoop;
pub mod funccount;
pub mod funcgraph;
pub mod funclatency;
pub mod functrace;
pub mod hardirqs;
pub mod hotcold;
pub mod kthreads;
pub mod ktop;
pub mod memleak;
pub mod migrations;
pub mod offcputime;
pub mod profile;
pub mod reclaimtop;
pub mod runqlat;
pub mod serve;
pub mod softirq_top;
pub mod stackcount;
pub mod tplist;
pub mod trace;
pub mod wqtop;

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::{attach::Mechanism, output::OutputArgs, session, session::DurationArgs};

/// Options every tracing tool takes.
#[derive(Args, Clone, Debug, Default)]
pub struct CommonArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub duration: DurationArgs,
    /// Attach only with this mechanism instead of climbing the ladder (tp_btf → raw_tp →
    /// tracepoint; fentry → kprobe; uprobe_multi → uprobe for u:/ur: probes); a tool takes
    /// only the ones it has.
    #[arg(long, value_enum, value_name = "MECHANISM")]
    pub attach: Option<Mechanism>,
    /// Say how each probe was attached and why other mechanisms were not used.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

impl CommonArgs {
    /// The `--attach` mechanism for a tool whose probes offer only `accepted`: a value it
    /// cannot use is refused in one line naming the ones it can, before anything attaches.
    pub fn attach_for(&self, tool: &str, accepted: &[Mechanism]) -> Result<Option<Mechanism>> {
        match self.attach {
            Some(m) if !accepted.contains(&m) => {
                let names: Vec<&str> = accepted.iter().map(|m| m.name()).collect();
                usage_bail!(
                    "--attach {m}: {tool} cannot attach with {m} (choose one of {})",
                    names.join(", ")
                )
            }
            forced => Ok(forced),
        }
    }
}

/// `-p PID` / `-t TID` of the tools that filter in the kernel by task.
#[derive(Args, Clone, Debug, Default)]
pub struct TaskArgs {
    /// Only this process (thread group id).
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Only this thread.
    #[arg(short = 't', long = "tid", value_name = "TID")]
    pub tid: Option<u32>,
}

impl TaskArgs {
    /// Fails with one line when the process or thread does not exist, before anything loads.
    pub fn check(&self) -> Result<()> {
        if let Some(pid) = self.pid {
            session::check_pid(pid)?;
        }
        if let Some(tid) = self.tid {
            session::check_tid(tid)?;
        }
        Ok(())
    }

    /// "PID 5", "TID 7" for titles.
    pub fn describe(&self) -> Vec<String> {
        let mut what = Vec::new();
        if let Some(pid) = self.pid {
            what.push(format!("PID {pid}"));
        }
        if let Some(tid) = self.tid {
            what.push(format!("TID {tid}"));
        }
        what
    }
}

/// `-K` / `-U`: which halves of a stack to collect.
#[derive(Args, Clone, Debug, Default)]
pub struct StackKindArgs {
    /// Kernel stacks only.
    #[arg(short = 'K', long = "kernel-stacks-only", conflicts_with = "user_only")]
    pub kernel_only: bool,
    /// User stacks only.
    #[arg(short = 'U', long = "user-stacks-only")]
    pub user_only: bool,
}

impl StackKindArgs {
    pub fn kernel_stacks(&self) -> u8 {
        (!self.user_only).into()
    }

    pub fn user_stacks(&self) -> u8 {
        (!self.kernel_only).into()
    }
}

/// Stack map size and the flame-graph outputs of the stack-sampling tools.
#[derive(Args, Clone, Debug)]
pub struct StackOutputArgs {
    /// Entries of the stack map: more means fewer lost stacks (about 1 KiB of kernel memory each).
    #[arg(long, value_name = "N", default_value_t = tracer_common::stacks::STACKS_ENTRIES)]
    pub stack_storage_size: u32,
    /// Print FlameGraph folded lines ("comm;frame;...;leaf value") instead of stacks.
    #[arg(short = 'f', long)]
    pub folded: bool,
    /// In folded lines, a "-" frame between the user and the kernel frames (BCC's -d).
    #[arg(long)]
    pub delimited: bool,
    /// Also write an SVG flame graph to FILE when done.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Also write the run's stacks as a gzipped pprof profile to FILE when done (for go tool
    /// pprof, Pyroscope, Parca, Grafana).
    #[arg(long, value_name = "FILE")]
    pub pprof: Option<PathBuf>,
}

impl StackOutputArgs {
    pub fn check(&self) -> Result<()> {
        if self.stack_storage_size == 0 || self.stack_storage_size > 1 << 20 {
            usage_bail!("--stack-storage-size must be 1 to 1048576");
        }
        crate::stacks::set_folded_delimiter(self.delimited);
        Ok(())
    }
}

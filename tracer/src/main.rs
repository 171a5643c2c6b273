//! tracer: BCC-style eBPF tracing tools in one binary. `tracer <tool> ...`, or a tool's name
//! as a symlink to this binary (`forksnoop ...`), busybox style.

mod attach;
mod btf;
mod filters;
mod loader;
mod output;
mod privileges;
mod session;
mod tools;
mod tracefs;

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "tracer",
    version,
    about = "BCC-style eBPF tracing tools: live, in-kernel aggregation, one static binary",
    after_help = "Each tool is also available as a command of its own name (forksnoop ...) \
                  through the symlinks `cargo xtask setup` creates.\n\
                  Run 'tracer doctor' to see what this kernel allows."
)]
struct Cli {
    #[command(subcommand)]
    tool: Tool,
}

#[derive(Subcommand, Debug)]
enum Tool {
    /// Trace every fork (sched_process_fork): parent, child, thread/process/kernel thread.
    Forksnoop(tools::forksnoop::ForksnoopArgs),
    /// Show what this kernel allows (BTF, tracepoints, kprobes, fentry, uprobes, ...).
    Doctor(tools::doctor::DoctorArgs),
    /// Write man pages for tracer and every tool into a directory.
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
    },
    /// Print a shell completion script.
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
}

/// Tool names reachable through argv[0].
const TOOL_NAMES: &[&str] = &["forksnoop", "doctor"];

/// `forksnoop -p 1` run through a symlink becomes `tracer forksnoop -p 1`.
fn argv() -> Vec<OsString> {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let invoked = args
        .first()
        .and_then(|a| PathBuf::from(a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    if TOOL_NAMES.contains(&invoked.as_str()) {
        args[0] = "tracer".into();
        args.insert(1, invoked.into());
    }
    args
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(argv());
    let tool = match &cli.tool {
        Tool::Forksnoop(_) => "forksnoop",
        Tool::Doctor(_) => "doctor",
        Tool::Man { .. } => "man",
        Tool::Completions { .. } => "completions",
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: what failed and what to do ({:#} joins the context chain).
            eprintln!("{tool}: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.tool {
        Tool::Doctor(args) => tools::doctor::run(args),
        Tool::Forksnoop(args) => runtime()?.block_on(tools::forksnoop::run(args)),
        Tool::Man { out_dir } => write_man_pages(&out_dir),
        Tool::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "tracer", &mut std::io::stdout());
            Ok(())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // One thread is plenty: the work is reading maps and ring buffers, not computing.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn write_man_pages(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = Cli::command();
    let write = |name: String, cmd: clap::Command| -> Result<()> {
        let path = dir.join(format!("{name}.8"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd).section("8").render(&mut buf)?;
        std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))
    };
    write("tracer".into(), cmd.clone())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name().to_string();
        write(format!("tracer-{name}"), sub.clone().name(format!("tracer-{name}").leak() as &str))?;
    }
    Ok(())
}

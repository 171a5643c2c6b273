//! tracer: BCC-style eBPF tracing tools in one binary. `tracer <tool> ...`, or a tool's name
//! as a symlink to this binary (`forksnoop ...`), busybox style.

// Print through output.rs's `outln!`/`errln!`/`Out`: std's print macros panic on a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

// First, so that every module below can use their macros (`errln!`, `usage_bail!`, ...).
#[macro_use]
mod output;
#[macro_use]
mod usage;

mod attach;
mod bcc;
mod btf;
mod call_tree;
mod cgroup;
mod cli_vocabulary;
mod filters;
mod flame_svg;
mod frame_origins;
mod function_graph;
mod function_tracer;
mod hist;
mod kernel_calls;
mod kprobe_multi;
mod kthread_roles;
mod loader;
mod metrics;
mod pidns;
mod pprof;
mod privileges;
mod probe_attach;
mod probe_spec;
mod proc_maps;
mod procfs;
mod session;
mod stack_files;
mod stack_map;
mod stacks;
mod tools;
mod tracefs;
mod unwind;
mod uprobe_multi;
mod usdt;

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "tracer",
    version,
    about = "BCC-style eBPF tracing tools: live, in-kernel aggregation, one static binary",
    after_help = "Each tool is also available as a command of its own name (forksnoop ...) \
                  through the symlinks `cargo xtask build` creates.\n\
                  Invoked by a BCC tool's name (profile, offcputime, funccount, funclatency, \
                  stackcount, runqlat, cpudist, hardirqs, softirqs, tplist, trace, argdist), or as `tracer bcc TOOL \
                  ARGS`, a tool takes BCC's command line with BCC's meanings \
                  (`tracer bcc --print ...` shows the tracer command it becomes).\n\
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
    /// Live per-CPU × softirq-vector time and counts, ksoftirqd vs inline, NET_RX drill-down, hot stacks.
    SoftirqTop(tools::softirq_top::SoftirqTopArgs),
    /// Time and count of hardware interrupt handlers per IRQ line (and CPU); -D histograms.
    Hardirqs(tools::hardirqs::HardirqsArgs),
    /// Sample on-CPU stacks (kernel and user) at a frequency, counted in the kernel; flame graphs.
    Profile(tools::profile::ProfileArgs),
    /// Hot kernel stacks of kernel threads (ksoftirqd, kworker, kswapd0, ...), grouped per thread.
    Kstacks(tools::profile::KstacksArgs),
    /// Off-CPU (blocked) time by stack and task, from sched_switch.
    Offcputime(tools::offcputime::OffcputimeArgs),
    /// Outstanding libc allocations (malloc/calloc/realloc not freed) of a process by stack.
    Memleak(tools::memleak::MemleakArgs),
    /// Count calls to uprobes, kernel functions or tracepoints, per interval.
    Funccount(tools::funccount::FunccountArgs),
    /// The call tree under a kernel function with each call's duration (ftrace's function_graph); --stats profiles.
    Funcgraph(tools::funcgraph::FuncgraphArgs),
    /// One line per call of the kernel functions matching a glob, with the caller (ftrace's function tracer).
    Functrace(tools::functrace::FunctraceArgs),
    /// Entry-to-return latency of a function as a log2 histogram.
    Funclatency(tools::funclatency::FunclatencyArgs),
    /// Histogram or frequency count of a probe argument or return value.
    Argdist(tools::argdist::ArgdistArgs),
    /// Print one line per probe hit, with a format and an optional filter.
    Trace(tools::trace::TraceArgs),
    /// List tracepoints (and their fields), kernel functions, and a binary's probe-able symbols.
    Tplist(tools::tplist::TplistArgs),
    /// Count the stacks that lead to a probe.
    Stackcount(tools::stackcount::StackcountArgs),
    /// Top-like view of threads by on-CPU time measured from sched_switch; kernel-thread roles.
    Ktop(tools::ktop::KtopArgs),
    /// Task migrations between CPUs per interval, and what the migration/N stopper threads ran.
    Migrations(tools::migrations::MigrationsArgs),
    /// Live workqueue work per function: runs, time in the worker, queue latency, who queued it.
    Wqtop(tools::wqtop::WqtopArgs),
    /// Block IO by issuing task and device (IOs, bytes, latency); --jbd2: ext4 journal commits and their causes.
    Biotop(tools::biotop::BiotopArgs),
    /// Run-queue latency (wakeup to run) as a log2 histogram.
    Runqlat(tools::runqlat::RunqlatArgs),
    /// On-CPU (or off-CPU) time-slice lengths as a log2 histogram.
    Cpudist(tools::cpudist::CpudistArgs),
    /// Memory reclaim, live: kswapd per node, scanned vs reclaimed, direct/memcg stalls per process and cgroup.
    Reclaimtop(tools::reclaimtop::ReclaimtopArgs),
    /// List kernel threads under kthreadd with role, CPU binding, state and CPU time.
    Kthreads(tools::kthreads::KthreadsArgs),
    /// Expose in-kernel aggregates as Prometheus/OpenMetrics metrics on /metrics.
    Serve(tools::serve::ServeArgs),
    /// Render folded stacks, perf script output or bpftrace stack maps as an SVG; --diff.
    Flamegraph(tools::flamegraph::FlamegraphArgs),
    /// Write man pages for tracer and every tool into a directory.
    Man {
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the tool names (for the busybox-style symlinks).
    #[command(hide = true)]
    ListTools,
}

/// Tool names reachable through argv[0].
const TOOL_NAMES: &[&str] = &[
    "forksnoop",
    "doctor",
    "softirq-top",
    "hardirqs",
    "profile",
    "kstacks",
    "offcputime",
    "memleak",
    "funccount",
    "funclatency",
    "funcgraph",
    "functrace",
    "argdist",
    "trace",
    "tplist",
    "stackcount",
    "ktop",
    "migrations",
    "wqtop",
    "runqlat",
    "cpudist",
    "biotop",
    "kthreads",
    "reclaimtop",
    "serve",
    "flamegraph",
];

/// `forksnoop -p 1` run through a symlink becomes `tracer forksnoop -p 1`.
fn argv() -> Vec<OsString> {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let invoked = args
        .first()
        .and_then(|a| {
            PathBuf::from(a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    if bcc::BCC_TOOLS.contains(&invoked.as_str()) {
        // A BCC tool's name: BCC's command line (bcc.rs), as `tracer bcc NAME ...`.
        args[0] = "tracer".into();
        args.insert(1, "bcc".into());
        args.insert(2, invoked.into());
    } else if TOOL_NAMES.contains(&invoked.as_str()) {
        args[0] = "tracer".into();
        args.insert(1, invoked.into());
    } else if args
        .get(1)
        .is_some_and(|a| bcc::BCC_ONLY.iter().any(|n| a.as_os_str() == *n))
    {
        // `tracer softirqs`: a BCC-only name has only BCC's grammar.
        args.insert(1, "bcc".into());
    }
    args
}

/// `tracer bcc [--print] TOOL ARGS...`: BCC's command line for TOOL rewritten into tracer's
/// (see bcc.rs); None when argv is not a BCC invocation. `--print` shows the rewrite.
fn bcc_argv(argv: &[OsString]) -> Option<Result<(Vec<OsString>, bool)>> {
    if argv.get(1).map(|a| a.as_os_str()) != Some("bcc".as_ref()) {
        return None;
    }
    let print = argv.get(2).map(|a| a.as_os_str()) == Some("--print".as_ref());
    let rest = &argv[if print { 3 } else { 2 }..];
    let Some(tool) = rest.first().map(|t| t.to_string_lossy().into_owned()) else {
        return Some(Err(usage_err!(
            "tracer bcc TOOL ARGS...: name a BCC tool ({})",
            bcc::BCC_TOOLS.join(", ")
        )));
    };
    Some(
        bcc::translate(&tool, &rest[1..])
            .map(|words| (words.into_iter().map(OsString::from).collect(), print)),
    )
}

/// For `tracer bcc [--print] TOOL`: TOOL's name, so its errors start with it.
fn bcc_tool_name(argv: &[OsString]) -> Option<&'static str> {
    if argv.get(1).map(|a| a.as_os_str()) != Some("bcc".as_ref()) {
        return None;
    }
    argv.iter()
        .skip(2)
        .find(|a| a.as_os_str() != "--print")
        .and_then(|a| bcc::BCC_TOOLS.iter().find(|&&t| a.as_os_str() == t))
        .copied()
}

/// The name errors start with: the tool's (`forksnoop: error: ...`) whether it was run as
/// `tracer forksnoop` or through its symlink, else `tracer`.
fn error_prefix(argv: &[OsString]) -> &'static str {
    argv.get(1)
        .and_then(|arg| TOOL_NAMES.iter().find(|&&tool| arg.as_os_str() == tool))
        .copied()
        .unwrap_or("tracer")
}

fn main() -> ExitCode {
    let mut argv = argv();
    let bcc_prefix = bcc_tool_name(&argv);
    let prefix = bcc_prefix.unwrap_or_else(|| error_prefix(&argv));
    output::set_tool_name(prefix);
    match bcc_argv(&argv) {
        None => {}
        Some(Ok((translated, print))) => {
            if print {
                let words: Vec<String> = translated
                    .iter()
                    .map(|w| w.to_string_lossy().into_owned())
                    .collect();
                outln!("{}", words.join(" "));
                return ExitCode::SUCCESS;
            }
            argv = translated;
        }
        Some(Err(err)) => {
            errln!("{prefix}: error: {err:#}");
            return ExitCode::from(2);
        }
    }
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => err.exit(), // --help, --version (closed stdout is fine)
        Err(err) => {
            errln!("{prefix}: {} (see --help)", usage_error_line(&err));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: what failed and what to do ({:#} joins the context chain).
            errln!("{prefix}: error: {err:#}");
            if usage::is_usage_error(&err) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// One line, as for every other error: clap's first paragraph (the problem, and for missing
/// arguments the indented list of what is missing), joined.
fn usage_error_line(err: &clap::Error) -> String {
    if err.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return "error: no tool given".to_string();
    }
    let text = err.render().to_string();
    let line = text
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    if line.is_empty() {
        return "error: invalid arguments".to_string();
    }
    // clap's "tip: a similar argument exists" stands in a later paragraph: keep it on the line.
    let tips = suggestions(err);
    if tips.is_empty() {
        line
    } else {
        format!("{line}; did you mean {}?", tips.join(" or "))
    }
}

/// The names clap found close to a mistyped argument, subcommand (tool) or value, quoted.
fn suggestions(err: &clap::Error) -> Vec<String> {
    use clap::error::{ContextKind, ContextValue};
    [
        ContextKind::SuggestedArg,
        ContextKind::SuggestedSubcommand,
        ContextKind::SuggestedValue,
    ]
    .into_iter()
    .filter_map(|kind| err.get(kind))
    .flat_map(|value| match value {
        ContextValue::String(one) => vec![one.clone()],
        ContextValue::Strings(many) => many.clone(),
        _ => Vec::new(),
    })
    .map(|name| format!("'{name}'"))
    .collect()
}

fn run(cli: Cli) -> Result<()> {
    match cli.tool {
        Tool::Doctor(args) => tools::doctor::run(args),
        Tool::Forksnoop(args) => runtime()?.block_on(tools::forksnoop::run(args)),
        Tool::SoftirqTop(args) => runtime()?.block_on(tools::softirq_top::run(args)),
        Tool::Hardirqs(args) => runtime()?.block_on(tools::hardirqs::run(args)),
        Tool::Profile(args) => runtime()?.block_on(tools::profile::run(args)),
        Tool::Offcputime(args) => runtime()?.block_on(tools::offcputime::run(args)),
        Tool::Memleak(args) => runtime()?.block_on(tools::memleak::run(args)),
        Tool::Funccount(args) => runtime()?.block_on(tools::funccount::run(args)),
        Tool::Funclatency(args) => runtime()?.block_on(tools::funclatency::run(args)),
        Tool::Funcgraph(args) => runtime()?.block_on(tools::funcgraph::run(args)),
        Tool::Functrace(args) => runtime()?.block_on(tools::functrace::run(args)),
        Tool::Argdist(args) => runtime()?.block_on(tools::argdist::run(args)),
        Tool::Trace(args) => runtime()?.block_on(tools::trace::run(args)),
        Tool::Tplist(args) => runtime()?.block_on(tools::tplist::run(args)),
        Tool::Stackcount(args) => runtime()?.block_on(tools::stackcount::run(args)),
        Tool::Ktop(args) => runtime()?.block_on(tools::ktop::run(args)),
        Tool::Migrations(args) => runtime()?.block_on(tools::migrations::run(args)),
        Tool::Wqtop(args) => runtime()?.block_on(tools::wqtop::run(args)),
        Tool::Runqlat(args) => runtime()?.block_on(tools::runqlat::run(args)),
        Tool::Cpudist(args) => runtime()?.block_on(tools::cpudist::run(args)),
        Tool::Biotop(args) => runtime()?.block_on(tools::biotop::run(args)),
        Tool::Kthreads(args) => runtime()?.block_on(tools::kthreads::run(args)),
        Tool::Reclaimtop(args) => runtime()?.block_on(tools::reclaimtop::run(args)),
        Tool::Serve(args) => runtime()?.block_on(tools::serve::run(args)),
        Tool::Flamegraph(args) => tools::flamegraph::run(args),
        Tool::Kstacks(args) => runtime()?.block_on(tools::profile::run_kstacks(args)),
        Tool::Man { out_dir } => write_man_pages(&out_dir),
        Tool::ListTools => {
            let names: Vec<&str> = TOOL_NAMES.iter().chain(bcc::BCC_ONLY).copied().collect();
            outln!("{}", names.join("\n"));
            Ok(())
        }
        Tool::Completions { shell } => {
            // Generated into memory: clap_complete panics when its writer fails (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tracer", &mut script);
            output::write_stdout_bytes(&script);
            Ok(())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // One thread is plenty: the work is reading maps and ring buffers, not computing.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let _guard = runtime.enter();
    session::install_signal_handlers().context("cannot install signal handlers")?;
    drop(_guard);
    Ok(runtime)
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
        write(
            format!("tracer-{name}"),
            sub.clone().name(format!("tracer-{name}").leak() as &str),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Real and hostile command-line tokens: tool names, every kind of flag, numbers at and
    /// past the edges, globs, probe specs, separators.
    fn token() -> impl Strategy<Value = String> {
        let words: Vec<&'static str> = TOOL_NAMES
            .iter()
            .copied()
            .chain([
                "-p",
                "-t",
                "-C",
                "-d",
                "-F",
                "-T",
                "-v",
                "-s",
                "-P",
                "-L",
                "-m",
                "-u",
                "-n",
                "-K",
                "-U",
                "-f",
                "-H",
                "--json",
                "--summary",
                "--comm",
                "--attach",
                "--threads",
                "--no-threads",
                "--kthreads",
                "--top",
                "--folded",
                "--svg",
                "--vec",
                "--stacks",
                "--stack-storage-size",
                "--group",
                "--sort",
                "--start",
                "--end",
                "--zero",
                "--help",
                "--version",
                "--help=x",
                "-pp",
                "--",
                "0",
                "1",
                "-1",
                "0.5",
                "1e9",
                "NaN",
                "inf",
                "-inf",
                "99999999999999999999",
                "",
                " ",
                "*",
                "kworker/*",
                "a*b",
                "é",
                "\u{0}",
                "tp-btf",
                "raw-tp",
                "kprobe",
                "fentry",
                "u:/usr/sbin/nginx:ngx_http_*",
                "t:sched:sched_switch",
                "k:vfs_read",
                "k:",
                "u::",
                "ur:libc:malloc",
                "prev_pid",
                "%d %s",
                "/dev/null",
                "man",
                "completions",
                "list-tools",
                "bash",
            ])
            .collect();
        prop_oneof![
            4 => prop::sample::select(words).prop_map(String::from),
            1 => "\\PC{0,12}",
            1 => "-{1,2}[a-z-]{1,12}(=\\PC{0,6})?",
        ]
    }

    /// A typo gets clap's suggestion on the one error line: flags and tool names.
    #[test]
    fn usage_errors_suggest_the_near_name() {
        for (argv, expected) in [
            (
                &["tracer", "biotop", "--jdb2"][..],
                "did you mean '--jbd2'?",
            ),
            (&["tracer", "wqtop", "--jsn"][..], "did you mean '--json'?"),
            (&["tracer", "wqtp"][..], "did you mean 'wqtop'?"),
        ] {
            let Err(err) = Cli::try_parse_from(argv) else {
                panic!("{argv:?} parsed");
            };
            let line = usage_error_line(&err);
            assert!(line.contains(expected), "{argv:?}: {line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(6000))]

        /// Whatever the command line, parsing and the value parsers return instead of
        /// panicking, and a usage error shown to the user is exactly one non-empty line.
        #[test]
        fn cli_parser_never_panics(
            tool in prop::sample::select(TOOL_NAMES),
            rest in prop::collection::vec(token(), 0..8),
            with_tool in any::<bool>(),
        ) {
            let mut argv = vec!["tracer".to_string()];
            if with_tool {
                argv.push(tool.to_string());
            }
            argv.extend(rest.iter().cloned());
            if let Err(err) = Cli::try_parse_from(&argv)
                && err.use_stderr()
            {
                let line = usage_error_line(&err);
                prop_assert!(!line.is_empty() && !line.contains('\n'), "{argv:?}: {line:?}");
            }
            for token in &rest {
                let _ = session::parse_seconds(token);
                let _ = filters::comm_filter(Some(token));
            }
        }
    }
}

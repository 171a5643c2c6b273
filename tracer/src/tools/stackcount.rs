//! stackcount: how often each stack leads to a probe, counted in the kernel (stack ids from
//! `bpf_get_stackid`), symbolized and printed through the shared `stacks` module: top stacks,
//! FlameGraph folded lines, an SVG, or JSON.

use std::{collections::HashMap, path::PathBuf};

use anyhow::{Result, anyhow, bail};
use aya::maps::{MapData, PerCpuHashMap};
use clap::Args;
use serde_json::json;
use tracer_common::probes::{MODE_STACK, PER_COMM, PER_PID, ProbesConfig, StackKey};

use crate::{
    output::{Out, comm_str, with_schema},
    probe_attach::{self, Request},
    probe_spec::{self, Kind},
    session,
    stacks::{self, RawStack, StackMap, Symbols, Unit},
    tools::CommonArgs,
};

const TOOL: &str = "stackcount";

/// Count the stacks that lead to a probe.
#[derive(Args, Clone, Debug)]
#[command(
    after_help = "By default uprobes collect user stacks, kernel functions and tracepoints kernel\n\
stacks; -U and -K choose (both: -U -K).\n\
Examples:\n  \
    stackcount u:/usr/sbin/nginx:ngx_http_process_request    who calls it in nginx\n  \
    stackcount -K -U t:sched:sched_switch -d 5 --folded       kernel+user, folded\n  \
    stackcount --svg fork.svg t:sched:sched_process_fork      flame graph of fork callers"
)]
pub struct StackcountArgs {
    /// Probes (globs allowed; all counted together), then optional INTERVAL and COUNT.
    #[arg(value_name = "PROBE... [INTERVAL [COUNT]]", required = true, num_args = 1..)]
    pub items: Vec<String>,
    /// Collect kernel stacks.
    #[arg(short = 'K', long = "kernel-stacks")]
    pub kernel: bool,
    /// Collect user stacks.
    #[arg(short = 'U', long = "user-stacks")]
    pub user: bool,
    /// Separate stacks per process (PID and COMM).
    #[arg(short = 'P', long = "per-pid")]
    pub per_pid: bool,
    /// Only this process.
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Print FlameGraph folded lines ("comm;frame;...;leaf count").
    #[arg(short = 'f', long)]
    pub folded: bool,
    /// Also write an SVG flame graph here.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Print only the N most frequent stacks.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Also probe tracer's own process (left out by default, so that a probe on libc does not
    /// see tracer's own calls).
    #[arg(long)]
    pub include_self: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: StackcountArgs) -> Result<()> {
    let (specs, interval) = probe_attach::split_positionals(&args.items)?;
    if let Some(pid) = args.pid {
        session::check_pid(pid)?;
    }
    if interval.interval.is_some() {
        bail!("stackcount prints once at the end: use -d SECS instead of INTERVAL");
    }
    let svg = args
        .svg
        .as_deref()
        .map(stacks::SvgFile::create)
        .transpose()?;
    let probes = probe_spec::resolve_all(&specs, args.pid)?;
    let all_user = probes.iter().all(|p| p.kind.is_user());
    let (kernel, user) = match (args.kernel, args.user) {
        (false, false) => (!all_user, all_user),
        chosen => chosen,
    };
    let config = ProbesConfig {
        mode: MODE_STACK,
        include_self: args.include_self.into(),
        kernel_stack: kernel.into(),
        user_stack: user.into(),
        // User frames are symbolized through their process, so user stacks are keyed by
        // process (without -P the pids are merged away after symbolization). Kernel-only stacks
        // are keyed by comm, which heads folded stacks: that stays bounded however many
        // processes come and go.
        per_pid: if args.per_pid || user {
            PER_PID
        } else {
            PER_COMM
        },
        tgid: args.pid.unwrap_or(0),
        ..ProbesConfig::DEFAULT
    };
    let mut loaded = probe_attach::attach_all(&Request {
        probes: &probes,
        config,
        pid: args.pid,
        force: args.common.attach,
        entry_and_return: false,
        needs_record: false,
    })?;
    if args.common.verbose {
        loaded.print_summary(TOOL);
    }
    let mut maps = Vec::new();
    for instance in &mut loaded.instances {
        maps.push(StackMap::take(&mut instance.ebpf, "STACKS")?);
    }
    eprintln!(
        "Tracing {} probes for {} ({}; {} stacks)... Hit Ctrl-C to end.",
        probes.len(),
        specs.join(" "),
        loaded.mechanism(),
        match (kernel, user) {
            (true, true) => "kernel and user",
            (true, false) => "kernel",
            _ => "user",
        }
    );
    session::stop_requested(args.common.duration.duration).await?;

    // Read every instance's counts with the stack map that holds its ids.
    let mut raws: Vec<RawStack> = Vec::new();
    let mut probe_of: Vec<u32> = Vec::new();
    for (instance, map) in loaded.instances.iter().zip(&maps) {
        let counts: PerCpuHashMap<&MapData, StackKey, u64> = PerCpuHashMap::try_from(
            instance
                .ebpf
                .map("STACK_COUNTS")
                .ok_or_else(|| anyhow!("STACK_COUNTS map missing (build bug)"))?,
        )?;
        for (key, values) in counts.iter().flatten() {
            raws.push(RawStack {
                comm: comm_str(&key.comm),
                pid: key.tgid,
                tid: 0,
                kernel: map.frames(key.kernel_stack),
                user: map.frames(key.user_stack),
                value: values.iter().sum(),
            });
            probe_of.push(key.probe_id);
        }
    }
    let mut symbols = Symbols::new().strip_tracing_frames();
    let mut resolved = symbols.resolve_all(&raws);
    let names: HashMap<u32, String> = probe_of
        .iter()
        .map(|id| {
            (
                *id,
                probes
                    .get(*id as usize)
                    .map(|p| p.name.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    if !args.per_pid {
        for stack in &mut resolved {
            stack.pid = 0;
        }
    }
    let stacks = stacks::merge(resolved);
    let total: u64 = stacks.iter().map(|s| s.value).sum();
    let mut out = Out::new();
    let shown = &stacks[..stacks.len().min(args.top)];
    if args.common.output.json {
        for stack in shown {
            let mut value = stacks::stack_json(stack, total);
            value["type"] = json!("stack");
            value["count"] = json!(stack.value);
            out.json(&with_schema(TOOL, value));
        }
        let probe_names: Vec<&String> = names.values().collect();
        out.json(&with_schema(
            TOOL,
            json!({"type": "end", "total": total, "stacks": stacks.len(), "probes": probe_names,
                   "stats": loaded.stats(), "attach": loaded.mechanisms}),
        ));
    } else if args.folded {
        for line in stacks::folded(&stacks, Unit::Samples) {
            out.line(&line);
        }
    } else {
        stacks::print_top(&mut out, shown, total, Unit::Samples);
        if stacks.len() > shown.len() {
            out.line(&format!(
                "... {} more stacks (--top to show more)",
                stacks.len() - shown.len()
            ));
        }
        out.line(&format!("{total} hits in {} stacks", stacks.len()));
    }
    out.flush();
    if let Some(svg) = svg {
        let title = format!("stackcount {}", specs.join(" "));
        svg.write(&stacks::folded(&stacks, Unit::Samples), &title, "hits")?;
    }
    symbols.report_unknown(TOOL);
    loaded.stack_loss().report(TOOL);
    if probes.iter().any(|p| p.kind == Kind::Uprobe) && !user {
        eprintln!("{TOOL}: kernel stacks of uprobes end in the trap handler; -U shows the caller");
    }
    Ok(())
}

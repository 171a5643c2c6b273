//! stackcount: how often each stack leads to a probe, counted in the kernel (stack ids from
//! `bpf_get_stackid`), symbolized and printed through the shared `stacks` module: top stacks,
//! FlameGraph folded lines, an SVG, or JSON.

use std::{collections::HashMap, path::PathBuf};

use anyhow::{Result, anyhow};
use aya::maps::{MapData, PerCpuHashMap};
use clap::Args;
use serde_json::json;
use tracer_common::probes::{
    MODE_STACK, PER_COMM, PER_PID, ProbesConfig, StackKey, ValueSpec, WEIGHT_ONE, WEIGHT_POW2,
    WEIGHT_VALUE,
};

use crate::{
    output::{Out, comm_str, interval_record, with_schema},
    probe_attach::{self, Request},
    probe_spec::{self, Kind},
    session,
    stack_files::StackFiles,
    stacks::{self, RawStack, StackMap, Symbols, Unit},
    tools::CommonArgs,
};

const TOOL: &str = "stackcount";

/// Count the stacks that lead to a probe.
#[derive(Args, Clone, Debug)]
#[command(
    after_help = "By default uprobes collect user stacks, kernel functions and tracepoints kernel\n\
stacks; -K (kernel only), -U (user only) and --both-stacks choose.\n\
Examples:\n  \
    stackcount u:/usr/sbin/nginx:ngx_http_process_request    who calls it in nginx\n  \
    stackcount --both-stacks t:sched:sched_switch -d 5 --folded  kernel+user, folded\n  \
    stackcount --svg fork.svg t:sched:sched_process_fork      flame graph of fork callers\n  \
    stackcount --weight '1<<order' --svg pages.svg t:kmem:mm_page_alloc   pages allocated, by stack\n  \
    stackcount --weight arg0 -U u:libc:malloc                  bytes asked of malloc, by stack"
)]
pub struct StackcountArgs {
    /// Probes (globs allowed; all counted together), then optional INTERVAL and COUNT.
    #[arg(value_name = "PROBE... [INTERVAL [COUNT]]", required = true, num_args = 1..)]
    pub items: Vec<String>,
    /// Kernel stacks only (both halves: --both-stacks).
    #[arg(
        short = 'K',
        long = "kernel-stacks-only",
        alias = "kernel-stacks",
        conflicts_with_all = ["user", "both_stacks"]
    )]
    pub kernel: bool,
    /// User stacks only (both halves: --both-stacks).
    #[arg(
        short = 'U',
        long = "user-stacks-only",
        alias = "user-stacks",
        conflicts_with = "both_stacks"
    )]
    pub user: bool,
    /// Kernel and user stacks.
    #[arg(long)]
    pub both_stacks: bool,
    /// Separate stacks per process (PID and COMM).
    #[arg(short = 'P', long = "per-pid")]
    pub per_pid: bool,
    /// Only this process.
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Print FlameGraph folded lines ("comm;frame;...;leaf count").
    #[arg(short = 'f', long)]
    pub folded: bool,
    /// In folded lines, a "-" frame between the user and the kernel frames (BCC's -d).
    #[arg(long)]
    pub delimited: bool,
    /// Also write an SVG flame graph here.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Also write the run's stacks as a gzipped pprof profile here (for go tool pprof,
    /// Pyroscope, Parca, Grafana).
    #[arg(long, value_name = "FILE")]
    pub pprof: Option<PathBuf>,
    /// Print only the N most frequent stacks.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Entries of the stack store and of the stack counts: distinct stacks beyond it are
    /// counted under [lost: stack map full] (about 1 KiB of kernel memory each).
    #[arg(long, value_name = "N", default_value_t = tracer_common::stacks::STACKS_ENTRIES)]
    pub stack_storage_size: u32,
    /// Count each hit as this value instead of 1: a tracepoint field (`bytes_alloc`), `argN`
    /// or `$retval`; `1<<FIELD` counts 2^FIELD (kmem:mm_page_alloc's `1<<order`: pages).
    /// Field offsets are read from the tracepoint's format when it is loaded.
    #[arg(long, value_name = "EXPR")]
    pub weight: Option<String>,
    /// Also probe tracer's own process (left out by default, so that a probe on libc does not
    /// see tracer's own calls).
    #[arg(long)]
    pub include_self: bool,
    #[command(flatten)]
    pub cgroup: crate::cgroup::CgroupArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: StackcountArgs) -> Result<()> {
    args.cgroup.install(&crate::btf::KernelBtf::new())?;
    let (specs, interval) = probe_attach::split_positionals(&args.items)?;
    if args.stack_storage_size == 0 || args.stack_storage_size > 1 << 20 {
        usage_bail!("--stack-storage-size must be 1 to 1048576");
    }
    stacks::set_folded_delimiter(args.delimited);
    if let Some(pid) = args.pid {
        session::check_pid(pid)?;
    }
    let files = StackFiles::open(args.svg.as_deref(), args.pprof.as_deref())?;
    let probes = probe_spec::resolve_all(&specs, args.pid)?;
    let all_user = probes.iter().all(|p| p.kind.is_user());
    let (kernel, user) = match (args.kernel, args.user, args.both_stacks) {
        (false, false, false) => (!all_user, all_user),
        (kernel, user, both) => (kernel || both, user || both),
    };
    let weight = weight_of(args.weight.as_deref(), &probes)?;
    let config = ProbesConfig {
        mode: MODE_STACK,
        weight: weight.as_ref().map_or(WEIGHT_ONE, |w| w.kind),
        values: {
            let mut values = ProbesConfig::DEFAULT.values;
            values[0] = weight.as_ref().map_or(ValueSpec::NONE, |w| w.expr.spec);
            values
        },
        include_self: args.include_self.into(),
        kernel_stack: kernel.into(),
        user_stack: user.into(),
        // User frames are symbolized through their process, so user stacks are counted per
        // process. Kernel-only stacks are keyed by comm (unless -P), which heads folded
        // stacks: that stays bounded however many processes come and go.
        per_pid: if args.per_pid || user {
            PER_PID
        } else {
            PER_COMM
        },
        tgid: args.pid.unwrap_or(0),
        stack_entries: args.stack_storage_size,
        ..ProbesConfig::DEFAULT
    };
    let mut loaded = probe_attach::attach_all(&Request {
        probes: &probes,
        config,
        pid: args.pid,
        force: args.common.attach,
        entry_and_return: false,
        needs_record: weight.as_ref().is_some_and(|w| w.expr.needs_record),
    })?;
    if args.common.verbose {
        loaded.print_summary(TOOL);
    }
    let mut maps = Vec::new();
    for instance in &mut loaded.instances {
        maps.push(StackMap::take(&mut instance.ebpf, "STACKS")?);
    }
    errln!(
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
    let unit = weight
        .as_ref()
        .map_or("hits".to_string(), |w| w.expr.text.clone());
    let view = View {
        args: &args,
        probes: &probes,
        has_pid: args.per_pid || user,
        unit: &unit,
    };
    let stop = session::stop_requested(args.common.duration.duration);
    tokio::pin!(stop);
    let mut ticker = super::runqlat::ticker(interval.interval);
    let mut symbols = Symbols::new()
        .strip_tracing_frames()
        .recording_origins(files.pprof());
    // A -p target's mappings now: its user stacks still resolve if it exits before a report.
    symbols.keep_targets();
    let mut out = Out::new();
    let mut all_folded: HashMap<String, u64> = HashMap::new();
    let mut printed = 0u64;
    let mut since = std::time::Instant::now();
    loop {
        let stopped = tokio::select! {
            reason = &mut stop => { reason?; true }
            _ = super::runqlat::tick(&mut ticker) => false,
        };
        let interval_ns = since.elapsed().as_nanos() as u64;
        since = std::time::Instant::now();
        // In interval mode each report holds that interval's hits: the counts are cleared
        // after being read, as BCC's -i does (stack ids stay: they are shared by intervals).
        let stacks = view.read(
            &mut loaded,
            &maps,
            &mut symbols,
            interval.interval.is_some(),
        )?;
        if interval.interval.is_some() && !args.common.output.json {
            out.interval_header(args.common.output.timestamp);
        }
        let last = stopped
            || interval.interval.is_none()
            || interval.count.is_some_and(|c| printed + 1 >= c);
        view.print(&stacks, &loaded, &mut out, (last, interval_ns));
        out.flush();
        // Both files need the run's totals (a --pprof alone once wrote an empty profile).
        if files.wanted() {
            for stack in &stacks {
                *all_folded.entry(stacks::folded_frames(stack)).or_default() += stack.value;
            }
        }
        printed += 1;
        if stopped || out.closed() || interval.count.is_some_and(|c| printed >= c) {
            break;
        }
    }
    let title = format!("stackcount {}", specs.join(" "));
    let lines = stacks::folded_with(all_folded, &[], Unit::Samples);
    // The pprof sample type names what was counted; leaked: the kind wants a 'static name
    // and is written once, at the end of the run.
    let kind_name: &'static str = match &weight {
        Some(_) => unit.clone().leak(),
        None => "hits",
    };
    files.write(
        &lines,
        &title,
        &unit,
        crate::pprof::PprofKind::Count(kind_name),
        symbols.origins(),
    )?;
    symbols.report_unknown(TOOL);
    loaded.stack_loss().report(TOOL);
    if probes.iter().any(|p| p.kind == Kind::Uprobe) && !user {
        errln!("{TOOL}: kernel stacks of uprobes end in the trap handler; -U shows the caller");
    }
    Ok(())
}

/// What a report needs to read and print the counts.
struct View<'a> {
    args: &'a StackcountArgs,
    probes: &'a [probe_spec::Probe],
    /// Keys hold a process only when it was asked for or user stacks need one; never a thread.
    has_pid: bool,
    /// What the counts count: "hits", or the `--weight` expression.
    unit: &'a str,
}

/// `--weight EXPR`: the value read at each hit and how it becomes the count's increment.
struct Weight {
    kind: u8,
    expr: probe_attach::Expr,
}

fn weight_of(text: Option<&str>, probes: &[probe_spec::Probe]) -> Result<Option<Weight>> {
    let Some(text) = text else { return Ok(None) };
    let (kind, value) = match text.trim().strip_prefix("1<<") {
        Some(exponent) => (WEIGHT_POW2, exponent.trim()),
        None => (WEIGHT_VALUE, text.trim()),
    };
    let mut expr = probe_attach::parse_expr(value, probes, &[], false)?;
    expr.text = text.trim().to_string();
    Ok(Some(Weight { kind, expr }))
}

impl View<'_> {
    /// Every instance's counts, read with the stack map that holds its ids, symbolized and
    /// merged; with `clear`, the counts read are deleted.
    fn read(
        &self,
        loaded: &mut probe_attach::Loaded,
        maps: &[StackMap],
        symbols: &mut Symbols,
        clear: bool,
    ) -> Result<Vec<stacks::Stack>> {
        let mut raws: Vec<RawStack> = Vec::new();
        for (instance, map) in loaded.instances.iter_mut().zip(maps) {
            let mut counts: PerCpuHashMap<&mut MapData, StackKey, u64> = PerCpuHashMap::try_from(
                instance
                    .ebpf
                    .map_mut("STACK_COUNTS")
                    .ok_or_else(|| anyhow!("STACK_COUNTS map missing (build bug)"))?,
            )?;
            let mut read = Vec::new();
            for (key, values) in counts.iter().flatten() {
                raws.push(RawStack {
                    comm: comm_str(&key.comm),
                    pid: key.tgid,
                    tid: 0,
                    kernel: map.frames(key.kernel_stack),
                    user: map.frames(key.user_stack),
                    value: values.iter().sum(),
                });
                read.push(key);
            }
            if clear {
                for key in read {
                    let _ = counts.remove(&key);
                }
            }
        }
        let resolved = symbols.resolve_all(&raws);
        Ok(stacks::merge(resolved))
    }

    fn print(
        &self,
        stacks: &[stacks::Stack],
        loaded: &probe_attach::Loaded,
        out: &mut Out,
        (last, interval_ns): (bool, u64),
    ) {
        let args = self.args;
        let total: u64 = stacks.iter().map(|s| s.value).sum();
        let shown = &stacks[..stacks.len().min(args.top)];
        if args.common.output.json {
            for stack in shown {
                let mut value = stacks::stack_json(stack, total);
                if let Some(fields) = value.as_object_mut() {
                    fields.remove("tid");
                }
                value["pid"] = if self.has_pid {
                    json!(stack.pid)
                } else {
                    json!(null)
                };
                value["type"] = json!("stack");
                value["count"] = json!(stack.value);
                out.json(&with_schema(TOOL, value));
            }
            let probe_names: Vec<&String> = self.probes.iter().map(|p| &p.name).collect();
            let mut record = json!({"total": total, "stacks": stacks.len(), "probes": probe_names});
            if self.unit != "hits" {
                record["weight"] = json!(self.unit);
            }
            out.json(&interval_record(TOOL, "interval", interval_ns, record));
            if last {
                let weight = (self.unit != "hits").then_some(self.unit);
                out.json(&loaded.end_record(TOOL, json!({ "weight": weight })));
            }
        } else if args.folded {
            for line in stacks::folded(stacks, Unit::Samples) {
                out.line(&line);
            }
        } else {
            stacks::print_top_as(out, shown, total, Unit::Samples, |stack| {
                if self.has_pid {
                    format!("{} [pid {}]", stack.comm, stack.pid)
                } else {
                    stack.comm.clone()
                }
            });
            if stacks.len() > shown.len() {
                out.line(&format!(
                    "... {} more stacks (--top to show more)",
                    stacks.len() - shown.len()
                ));
            }
            let what = match self.unit {
                "hits" => "hits".to_string(),
                weight => format!("(sum of {weight})"),
            };
            out.line(&format!("{total} {what} in {} stacks", stacks.len()));
        }
    }
}

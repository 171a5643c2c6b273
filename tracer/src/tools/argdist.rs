//! argdist: the distribution of one value at a probe — a function argument, the return value,
//! or a tracepoint field by name — as a count per distinct value (`-C`) or a log2 histogram
//! (`-H`), aggregated in the kernel.

use std::collections::HashMap;

use anyhow::Result;
use clap::Args;
use serde_json::json;
use tracer_common::probes::{HistKey, MODE_VALUE, ProbesConfig, ValueKey};

use crate::{
    loader,
    output::{Out, interval_record},
    probe_attach::{self, Expr, Hist, ProbeStats, Request},
    probe_spec::{self, Point, Probe},
    session,
    tools::CommonArgs,
    tracefs::{self, Symbolic},
};

const TOOL: &str = "argdist";

/// Histogram or frequency count of a probe's argument, return value or tracepoint field.
#[derive(Args, Clone, Debug)]
#[command(
    after_help = "EXPR: arg0..arg5 (entry probes), $retval (ur:/kr:), $pid, $tid, $cpu, a name declared in\n\
the probe's signature ('u:libc:write(int fd)' then fd), or a tracepoint field by name\n\
(tplist -v t:CATEGORY:EVENT lists them). -C shows the kernel's own name next to values of\n\
fields it prints by name (prev_state: S, D, I...).\n\
Examples:\n  \
    argdist --count t:sched:sched_switch prev_state   how tasks leave the CPU\n  \
    argdist -H u:libc:malloc arg0                     malloc sizes (log2)\n  \
    argdist --count ur:libc:write '$retval' -p 1234   write() results of one process\n  \
    argdist -H t:syscalls:sys_exit_read ret 1 10      read sizes every second\n  \
    argdist --count t:sched:sched_switch prev_state --filter 'prev_prio < 120'"
)]
pub struct ArgdistArgs {
    /// PROBE EXPR, then optional INTERVAL and COUNT.
    #[arg(value_name = "PROBE EXPR [INTERVAL [COUNT]]", required = true, num_args = 2..)]
    pub items: Vec<String>,
    /// Log2 histogram of the value.
    #[arg(short = 'H', long = "histogram", conflicts_with = "count")]
    pub histogram: bool,
    /// Count each distinct value (the default).
    #[arg(long = "count")]
    pub count: bool,
    /// Only when EXPR OP NUMBER holds (e.g. 'arg2 > 100'); evaluated in the kernel.
    #[arg(long, value_name = "FILTER")]
    pub filter: Option<String>,
    /// Only this process.
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Separately per process.
    #[arg(short = 'P', long = "per-pid")]
    pub per_pid: bool,
    /// Print only the N most frequent values (-C).
    #[arg(short = 'n', long = "top", value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// With an interval: print totals since the start, not each interval's own values.
    #[arg(long)]
    pub cumulative: bool,
    /// Also probe tracer's own process (left out by default, so that a probe on libc does not
    /// see tracer's own calls).
    #[arg(long)]
    pub include_self: bool,
    #[command(flatten)]
    pub cgroup: crate::cgroup::CgroupArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: ArgdistArgs) -> Result<()> {
    args.cgroup.install(&crate::btf::KernelBtf::new())?;
    let (probe_text, expr_text, rest) = match args.items.as_slice() {
        [probe, expr, rest @ ..] => (probe, expr, rest),
        _ => usage_bail!(
            "give a PROBE and an EXPR (e.g. argdist --count t:sched:sched_switch prev_state)"
        ),
    };
    let mut positionals = vec![probe_text.clone()];
    positionals.extend(rest.iter().cloned());
    let (_, interval) = probe_attach::split_positionals(&positionals)?;
    if let Some(pid) = args.pid {
        session::check_pid(pid)?;
    }
    let (probe_only, params) = probe_attach::split_signature(probe_text)?;
    let spec = probe_spec::parse(&probe_only)?;
    let probes = probe_spec::resolve(&spec, args.pid)?;
    let expr = probe_attach::parse_expr(expr_text, &probes, &params, false)?;
    let mut config = ProbesConfig {
        mode: MODE_VALUE,
        include_self: args.include_self.into(),
        hist_values: args.histogram.into(),
        per_pid: args.per_pid.into(),
        per_probe: 1,
        tgid: args.pid.unwrap_or(0),
        ..ProbesConfig::DEFAULT
    };
    config.values[0] = expr.spec;
    let mut needs_record = expr.needs_record;
    if let Some(filter) = &args.filter {
        let (filter, record) = probe_attach::parse_filter(filter, &probes, &params)?;
        config.filter = filter;
        needs_record |= record;
    }
    let loaded = probe_attach::attach_all(&Request {
        probes: &probes,
        config,
        pid: args.pid,
        force: args.common.attach,
        entry_and_return: false,
        needs_record,
    })?;
    if args.common.verbose {
        loaded.print_summary(TOOL);
    }
    errln!(
        "Tracing {} of {} probes for \"{probe_text}\" ({})... Hit Ctrl-C to end.",
        expr.text,
        probes.len(),
        loaded.mechanism()
    );
    let names = symbolic_names(&probes, &expr);
    let mut out = Out::new();
    let mut reported = ProbeStats::default();
    let mut prev_counts: HashMap<ValueKey, u64> = HashMap::new();
    let mut prev_hists: HashMap<HistKey, Hist> = HashMap::new();
    let periodic = interval.interval.is_some();
    let drain = periodic && !args.cumulative;
    probe_attach::every_interval(
        &interval,
        args.common.duration.duration,
        |_, interval_ns| {
            if args.histogram {
                // Interval mode drains the map: an interval's min and max are its own.
                let now = loaded.hists(drain)?;
                print_hists(
                    &args,
                    &probes,
                    &expr,
                    &now,
                    &prev_hists,
                    (periodic, interval_ns),
                    &mut out,
                );
                if !periodic {
                    prev_hists = now;
                }
            } else {
                // Interval mode drains the map: values seen once (pids, pointers, sizes) would
                // otherwise fill it within minutes.
                let now = loaded.value_counts(drain)?;
                print_counts(
                    &args,
                    &probes,
                    &expr,
                    &names,
                    &now,
                    &prev_counts,
                    (periodic, interval_ns),
                    &mut out,
                );
                if !periodic {
                    prev_counts = now;
                }
            }
            loaded.report_problems(TOOL, &mut reported);
            out.flush();
            Ok(!out.closed())
        },
    )
    .await?;
    if args.common.output.json {
        out.json(&loaded.end_record(TOOL, json!({})));
    } else {
        errln!("Detaching...");
    }
    Ok(())
}

/// The value as the user expects to read it: signed types and negative errnos as negatives.
fn shown(value: u64, expr: &Expr) -> i128 {
    if expr.signed || (expr.spec.size == 0 && value > i64::MAX as u64) {
        // Narrow signed fields were sign-extended in the kernel.
        value as i64 as i128
    } else {
        value as i128
    }
}

/// For each probe (by id), how its kernel prints the field EXPR names, if by name: task
/// states, softirq vectors... from the running kernel's format file.
fn symbolic_names(probes: &[Probe], expr: &Expr) -> Vec<Option<Symbolic>> {
    probes
        .iter()
        .map(|probe| match &probe.point {
            Point::Tracepoint { category, event } if expr.needs_record => {
                tracefs::symbolic_fields(category, event)
                    .ok()?
                    .remove(&expr.text)
            }
            _ => None,
        })
        .collect()
}

fn symbol(names: &[Option<Symbolic>], key: &ValueKey) -> Option<String> {
    names.get(key.probe_id as usize)?.as_ref()?.name(key.value)
}

fn probe_name(probes: &[Probe], id: u32) -> String {
    probes
        .get(id as usize)
        .map(|p| p.name.clone())
        .unwrap_or_default()
}

#[expect(
    clippy::too_many_arguments,
    reason = "one printing pass over everything a count table shows"
)]
fn print_counts(
    args: &ArgdistArgs,
    probes: &[Probe],
    expr: &Expr,
    names: &[Option<Symbolic>],
    now: &HashMap<ValueKey, u64>,
    before: &HashMap<ValueKey, u64>,
    (periodic, interval_ns): (bool, u64),
    out: &mut Out,
) {
    let mut rows = loader::increases(now, before);
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.value.cmp(&b.0.value)));
    let total: u64 = rows.iter().map(|r| r.1).sum();
    let shown_rows = &rows[..rows.len().min(args.top)];
    if args.common.output.json {
        let values: Vec<_> = shown_rows
            .iter()
            .map(|(k, n)| {
                json!({"value": shown(k.value, expr), "symbol": symbol(names, k), "count": n,
                       "probe": probe_name(probes, k.probe_id), "pid": args.per_pid.then_some(k.tgid)})
            })
            .collect();
        out.json(&interval_record(
            TOOL,
            "counts",
            interval_ns,
            json!({"expr": expr.text, "total": total, "distinct": rows.len(), "values": values}),
        ));
        return;
    }
    out.interval_header(periodic || args.common.output.timestamp);
    let many = probes.len() > 1;
    out.line(&format!(
        "{:>10}  {}{}{}",
        "COUNT",
        if args.per_pid {
            format!("{:>7}  ", "PID")
        } else {
            String::new()
        },
        if many {
            format!("{:<32} ", "PROBE")
        } else {
            String::new()
        },
        expr.text
    ));
    for (k, n) in shown_rows {
        out.line(&format!(
            "{n:>10}  {}{}{}",
            if args.per_pid {
                format!("{:>7}  ", k.tgid)
            } else {
                String::new()
            },
            if many {
                format!("{:<32} ", probe_name(probes, k.probe_id))
            } else {
                String::new()
            },
            match symbol(names, k) {
                Some(name) => format!("{} ({name})", shown(k.value, expr)),
                None => shown(k.value, expr).to_string(),
            }
        ));
    }
    if rows.len() > shown_rows.len() {
        out.line(&format!(
            "... {} more values (-n to show more)",
            rows.len() - shown_rows.len()
        ));
    }
    out.line("");
}

fn print_hists(
    args: &ArgdistArgs,
    probes: &[Probe],
    expr: &Expr,
    now: &HashMap<HistKey, Hist>,
    before: &HashMap<HistKey, Hist>,
    (periodic, interval_ns): (bool, u64),
    out: &mut Out,
) {
    let mut histograms = Vec::new();
    let mut keys: Vec<&HistKey> = now.keys().collect();
    keys.sort_by_key(|k| (k.probe_id, k.tgid));
    out.interval_header((periodic || args.common.output.timestamp) && !args.common.output.json);
    for key in keys {
        let hist = now[key].since(before.get(key));
        if hist.count == 0 {
            continue;
        }
        let name = probe_name(probes, key.probe_id);
        if args.common.output.json {
            histograms.push(
                json!({"probe": name, "pid": args.per_pid.then_some(key.tgid),
                   "count": hist.count, "sum": hist.sum, "min": hist.min, "max": hist.max,
                   "hist": hist.log2.to_json(&expr.text)}),
            );
            continue;
        }
        let pid = if args.per_pid {
            format!(" pid {}", key.tgid)
        } else {
            String::new()
        };
        out.line(&format!("{name}{pid}"));
        for line in hist.log2.render(&expr.text).lines() {
            out.line(line);
        }
        out.line(&format!(
            "count {}, avg {}, min {}, max {}\n",
            hist.count,
            hist.avg().unwrap_or(0),
            hist.min,
            hist.max
        ));
    }
    if args.common.output.json {
        // One record an interval, with every histogram of it (none in a quiet interval).
        out.json(&interval_record(
            TOOL,
            "histograms",
            interval_ns,
            json!({"expr": expr.text, "histograms": histograms}),
        ));
    }
}

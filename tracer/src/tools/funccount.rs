//! funccount: calls per probe (uprobes, kernel functions, tracepoints), counted in the kernel,
//! optionally per process, printed at the end or every interval.

use anyhow::Result;
use clap::Args;
use serde_json::json;
use tracer_common::probes::{MODE_COUNT, PidCountKey, ProbesConfig};

use crate::{
    loader,
    output::{Out, comm_str, interval_record},
    pidns::NsPid,
    probe_attach::{self, Loaded, ProbeStats, Request},
    probe_spec::{self, Probe},
    session,
    tools::CommonArgs,
};

const TOOL: &str = "funccount";

/// Count calls to functions, uprobes and tracepoints, in the kernel.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Probes:\n  \
    u:PATH_OR_LIB:SYMBOL[+OFF]  ur:...  k:FUNC  kr:FUNC  t:CATEGORY:EVENT   (globs: * ? [..])\n\
Examples:\n  \
    funccount u:/usr/sbin/nginx:ngx_http_process_request   calls until Ctrl-C\n  \
    funccount 'u:/usr/sbin/nginx:ngx_http_*' 1 5           every second, 5 times\n  \
    funccount -p 1234 u:libc:write                           one process's write() calls\n  \
    funccount -P t:sched:sched_process_fork                  forks per process\n  \
    funccount 'k:tcp_*'                                      kernel functions (fentry/kprobe)\n  \
    funccount t:sched:sched_process_exec --filter 'filename == \"/usr/bin/make\"'")]
pub struct FunccountArgs {
    /// Probes, then optional INTERVAL seconds and COUNT of intervals.
    #[arg(value_name = "PROBE... [INTERVAL [COUNT]]", required = true, num_args = 1..)]
    pub items: Vec<String>,
    /// Only calls made by this process (uprobes are attached for it alone, libraries are
    /// looked up in its maps).
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Only calls where EXPR OP NUMBER, or EXPR == "TEXT" / != "TEXT" (a trailing * compares
    /// the start), holds: e.g. 'arg2 > 100', 'filename == "/usr/bin/make"'; evaluated in the
    /// kernel.
    #[arg(long, value_name = "FILTER")]
    pub filter: Option<String>,
    /// Count per process (PID and COMM) too.
    #[arg(short = 'P', long = "per-pid")]
    pub per_pid: bool,
    /// Print only the N busiest rows.
    #[arg(short = 'n', long, value_name = "N")]
    pub top: Option<usize>,
    /// Also print probes that were not hit.
    #[arg(long)]
    pub zero: bool,
    /// Also probe tracer's own process (left out by default, so that a probe on libc does not
    /// see tracer's own calls).
    #[arg(long)]
    pub include_self: bool,
    #[command(flatten)]
    pub cgroup: crate::cgroup::CgroupArgs,
    #[command(flatten)]
    pub pidns: crate::pidns::PidnsArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: FunccountArgs) -> Result<()> {
    args.cgroup.install(&crate::btf::KernelBtf::new())?;
    let (specs, interval) = probe_attach::split_positionals(&args.items)?;
    if let Some(pid) = args.pid {
        session::check_pid(pid)?;
    }
    if args.top == Some(0) {
        usage_bail!("--top needs a positive number");
    }
    let probes = probe_spec::resolve_all(&specs, args.pid)?;
    let mut config = ProbesConfig {
        mode: MODE_COUNT,
        include_self: args.include_self.into(),
        per_pid: args.per_pid.into(),
        tgid: args.pid.unwrap_or(0),
        ..ProbesConfig::DEFAULT
    };
    let mut needs_record = false;
    if let Some(filter) = &args.filter {
        let (filter, record) = probe_attach::parse_filter(filter, &probes, &[])?;
        config.filter = filter;
        needs_record = record;
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
    let what = if specs.len() == 1 {
        format!("\"{}\"", specs[0])
    } else {
        format!("{} patterns", specs.len())
    };
    errln!(
        "Tracing {} probes for {what} ({})... Hit Ctrl-C to end.",
        probes.len(),
        loaded.mechanism()
    );

    let mut out = Out::new();
    let mut previous: Vec<u64> = vec![0; probes.len()];
    let mut previous_pids = std::collections::HashMap::new();
    let mut reported = ProbeStats::default();
    probe_attach::every_interval(
        &interval,
        args.common.duration.duration,
        |_last, interval_ns| {
            let now = loaded.counts(probes.len())?;
            let deltas: Vec<u64> = now.iter().zip(&previous).map(|(a, b)| a - b).collect();
            if args.per_pid {
                // Interval mode drains the per-process map, so processes that have exited do not
                // pile up in it; the final report of a run without interval needs the totals.
                let drain = interval.interval.is_some();
                let pids = loaded.pid_counts(drain)?;
                print_per_pid(
                    &args,
                    &probes,
                    &pids,
                    &previous_pids,
                    (interval.interval.is_some(), interval_ns),
                    &mut out,
                );
                if !drain {
                    previous_pids = pids;
                }
            } else {
                print_counts(
                    &args,
                    &probes,
                    &deltas,
                    (interval.interval.is_some(), interval_ns),
                    &mut out,
                );
            }
            previous = now;
            loaded.report_problems(TOOL, &mut reported);
            out.flush();
            Ok(!out.closed())
        },
    )
    .await?;
    finish(&args, &loaded, &mut out);
    Ok(())
}

fn finish(args: &FunccountArgs, loaded: &Loaded, out: &mut Out) {
    if args.common.output.json {
        out.json(&loaded.end_record(TOOL, json!({})));
    } else {
        // On stderr, so piped output holds only the table.
        errln!("Detaching...");
    }
    out.flush();
}

fn print_counts(
    args: &FunccountArgs,
    probes: &[Probe],
    deltas: &[u64],
    (periodic, interval_ns): (bool, u64),
    out: &mut Out,
) {
    let mut rows: Vec<(usize, u64)> = deltas
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0 || args.zero)
        .map(|(i, n)| (i, *n))
        .collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: u64 = deltas.iter().sum();
    let shown = args.top.unwrap_or(usize::MAX).min(rows.len());
    if args.common.output.json {
        let list: Vec<_> = rows[..shown]
            .iter()
            .map(|(i, n)| json!({"probe": probes[*i].spec(), "name": probes[*i].name, "count": n}))
            .collect();
        out.json(&interval_record(
            TOOL,
            "counts",
            interval_ns,
            json!({"total": total, "rows_total": rows.len(), "probes": list}),
        ));
        return;
    }
    if periodic || args.common.output.timestamp {
        out.line("");
    }
    out.interval_header(periodic || args.common.output.timestamp);
    let width = rows[..shown]
        .iter()
        .map(|(i, _)| probes[*i].name.len())
        .max()
        .unwrap_or(4)
        .clamp(4, 60);
    out.line(&format!("{:<width$} {:>10}", "FUNC", "COUNT"));
    for (i, n) in &rows[..shown] {
        out.line(&format!("{:<width$} {:>10}", probes[*i].name, n));
    }
    if rows.len() > shown {
        out.line(&format!(
            "... {} more (--top to show more)",
            rows.len() - shown
        ));
    }
}

fn print_per_pid(
    args: &FunccountArgs,
    probes: &[Probe],
    now: &std::collections::HashMap<PidCountKey, u64>,
    before: &std::collections::HashMap<PidCountKey, u64>,
    (periodic, interval_ns): (bool, u64),
    out: &mut Out,
) {
    let mut rows = loader::increases(now, before);
    rows.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then(a.0.tgid.cmp(&b.0.tgid))
            .then(a.0.probe_id.cmp(&b.0.probe_id))
    });
    let shown = args.top.unwrap_or(usize::MAX).min(rows.len());
    let name = |k: &PidCountKey| {
        probes
            .get(k.probe_id as usize)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    };
    if args.common.output.json {
        let list: Vec<_> = rows[..shown]
            .iter()
            .map(|(k, n)| {
                let mut row = json!({"pid": k.tgid, "comm": comm_str(&k.comm), "name": name(k),
                       "probe": probes.get(k.probe_id as usize).map(Probe::spec), "count": n});
                if args.pidns.pidns {
                    row["nspid"] = NsPid::of(k.tgid).json(k.tgid);
                }
                row
            })
            .collect();
        let total: u64 = rows.iter().map(|r| r.1).sum();
        out.json(&interval_record(
            TOOL,
            "counts_per_pid",
            interval_ns,
            json!({"total": total, "rows_total": rows.len(), "rows": list}),
        ));
        return;
    }
    if periodic || args.common.output.timestamp {
        out.line("");
    }
    out.interval_header(periodic || args.common.output.timestamp);
    let width = rows[..shown]
        .iter()
        .map(|(k, _)| name(k).len())
        .max()
        .unwrap_or(4)
        .clamp(4, 60);
    let nspid_header = if args.pidns.pidns {
        format!(" {:>7}", "NSPID")
    } else {
        String::new()
    };
    out.line(&format!(
        "{:>7}{nspid_header} {:<16} {:<width$} {:>10}",
        "PID", "COMM", "FUNC", "COUNT"
    ));
    for (k, n) in &rows[..shown] {
        let nspid = if args.pidns.pidns {
            format!(" {:>7}", NsPid::of(k.tgid).text())
        } else {
            String::new()
        };
        out.line(&format!(
            "{:>7}{nspid} {:<16} {:<width$} {:>10}",
            k.tgid,
            comm_str(&k.comm),
            name(k),
            n
        ));
    }
    if rows.len() > shown {
        out.line(&format!(
            "... {} more (--top to show more)",
            rows.len() - shown
        ));
    }
}

//! funclatency: time from a function's entry to its return (uprobe + uretprobe, or fentry +
//! fexit / kprobe + kretprobe), or between two tracepoints (`--start` / `--end`), as log2
//! histograms aggregated in the kernel, with count, average, min and max.

use std::collections::HashMap;

use anyhow::Result;
use clap::Args;
use serde_json::json;
use tracer_common::probes::{
    HistKey, MODE_LATENCY, ProbesConfig, STR_NONE, VAL_CPU, VAL_FIELD, VAL_PID, ValueSpec,
};

use crate::{
    output::{Out, interval_record},
    probe_attach::{self, Hist, Loaded, ProbeStats, Request},
    probe_spec::{self, Kind, Probe},
    session,
    tools::CommonArgs,
    tracefs,
};

const TOOL: &str = "funclatency";

/// Time functions (entry to return) or tracepoint pairs, as log2 histograms.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    funclatency u:/usr/sbin/nginx:ngx_http_process_request      ns histogram until Ctrl-C\n  \
    funclatency -u --function 'u:/usr/sbin/nginx:ngx_http_*_handler' 5  one µs histogram per handler, every 5 s\n  \
    funclatency -m k:do_sys_openat2                              kernel function (fentry/fexit or kprobes)\n  \
    funclatency -p 1234 -P u:libc:malloc                         one process, per PID\n  \
    funclatency --start t:sched:sched_wakeup --start-key pid \\\n              \
    --end t:sched:sched_switch --end-key next_pid            wakeup-to-run latency")]
pub struct FunclatencyArgs {
    /// The function(s) to time (u:, k:; globs allowed), then optional INTERVAL and COUNT.
    #[arg(value_name = "PROBE [INTERVAL [COUNT]]", num_args = 0..)]
    pub items: Vec<String>,
    /// Only calls whose entry satisfies EXPR OP NUMBER, or EXPR == "TEXT" / != "TEXT" (a
    /// trailing * compares the start): e.g. 'arg2 > 4096', 'arg0 == "/etc/passwd"';
    /// evaluated in the kernel at the function's entry.
    #[arg(long, value_name = "FILTER")]
    pub filter: Option<String>,
    /// Microseconds instead of nanoseconds.
    #[arg(short = 'u', long = "microseconds", conflicts_with = "milliseconds")]
    pub microseconds: bool,
    /// Milliseconds instead of nanoseconds.
    #[arg(short = 'm', long = "milliseconds")]
    pub milliseconds: bool,
    /// One histogram per function (with a glob).
    #[arg(long = "function")]
    pub per_function: bool,
    /// One histogram per process.
    #[arg(short = 'P', long = "per-pid")]
    pub per_pid: bool,
    /// Only this process.
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Start of the interval: a tracepoint (use with --end instead of PROBE).
    #[arg(long, value_name = "t:CATEGORY:EVENT", requires = "end")]
    pub start: Option<String>,
    /// End of the interval: a tracepoint.
    #[arg(long, value_name = "t:CATEGORY:EVENT", requires = "start")]
    pub end: Option<String>,
    /// What pairs a start with its end: the current thread (tid), process (pid) or CPU.
    #[arg(long, value_name = "tid|pid|cpu", default_value = "tid")]
    pub key: String,
    /// Pair by this field of the --start record instead (with --end-key).
    #[arg(long, value_name = "FIELD", requires = "end_key")]
    pub start_key: Option<String>,
    /// Pair by this field of the --end record.
    #[arg(long, value_name = "FIELD", requires = "start_key")]
    pub end_key: Option<String>,
    /// Also probe tracer's own process (left out by default, so that a probe on libc does not
    /// see tracer's own calls).
    #[arg(long)]
    pub include_self: bool,
    #[command(flatten)]
    pub cgroup: crate::cgroup::CgroupArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: FunclatencyArgs) -> Result<()> {
    args.cgroup.install(&crate::btf::KernelBtf::new())?;
    if let Some(pid) = args.pid {
        session::check_pid(pid)?;
    }
    let (unit, div) = match (args.microseconds, args.milliseconds) {
        (true, _) => ("usecs", 1_000),
        (_, true) => ("msecs", 1_000_000),
        _ => ("nsecs", 1),
    };
    let mut config = ProbesConfig {
        mode: MODE_LATENCY,
        include_self: args.include_self.into(),
        per_pid: args.per_pid.into(),
        per_probe: args.per_function.into(),
        tgid: args.pid.unwrap_or(0),
        unit_div: div,
        ..ProbesConfig::DEFAULT
    };

    let (probes, loaded, interval, what) = if let (Some(start), Some(end)) =
        (&args.start, &args.end)
    {
        if !args.items.iter().all(|s| !s.contains(':')) {
            usage_bail!("give either PROBE or --start/--end, not both");
        }
        if args.filter.is_some() {
            usage_bail!(
                "--filter is on a function's entry arguments: give a PROBE, not --start/--end"
            );
        }
        let (_, interval) = split_numbers(&args.items)?;
        if start.starts_with("usdt:") || end.starts_with("usdt:") {
            if args.start_key.is_some() || args.end_key.is_some() {
                usage_bail!("--start-key/--end-key name tracepoint fields; USDT pairs use --key");
            }
            let usdt_sites = |text: &str, option: &str| -> Result<Vec<Probe>> {
                let spec = probe_spec::parse(text)?;
                if !matches!(spec, probe_spec::ProbeSpec::Usdt { .. }) {
                    usage_bail!(
                        "{option}: time two USDT probes (usdt:BINARY:PROVIDER:NAME) or two \
                         tracepoints, not one of each"
                    );
                }
                probe_spec::resolve(&spec, args.pid)
            };
            let start = usdt_sites(start, "--start")?;
            let end = usdt_sites(end, "--end")?;
            config.start_key = current_key(&args.key)?;
            config.end_key = config.start_key;
            config.per_probe = 0;
            let loaded = probe_attach::attach_usdt_pair(&start, &end, config, args.pid)?;
            let what = format!("{} -> {}", start[0].name, end[0].name);
            let probe = Probe {
                name: what.clone(),
                ..start[0].clone()
            };
            (vec![probe], loaded, interval, what)
        } else {
            let start = one_tracepoint(start, "--start")?;
            let end = one_tracepoint(end, "--end")?;
            let current = match args.key.as_str() {
                "tid" => ValueSpec::TID,
                "pid" => ValueSpec {
                    kind: VAL_PID,
                    ..ValueSpec::NONE
                },
                "cpu" => ValueSpec {
                    kind: VAL_CPU,
                    ..ValueSpec::NONE
                },
                other => usage_bail!(
                    "--key takes tid, pid or cpu, not '{other}' (record fields: --start-key/--end-key)"
                ),
            };
            let field_key = |probe: &Probe, name: &Option<String>| -> Result<Option<ValueSpec>> {
                let Some(name) = name else { return Ok(None) };
                let (category, event) = probe.name.split_once(':').unwrap_or_default();
                let field = tracefs::fields(category, event)?
                    .into_iter()
                    .find(|f| &f.name == name)
                    .ok_or_else(|| {
                        usage_err!(
                            "tracepoint {} has no field '{name}' ('tplist -v {}' lists them)",
                            probe.name,
                            probe.name
                        )
                    })?;
                if field.size > 8 || field.declaration.contains('[') {
                    usage_bail!("field '{name}' of {} is not a number", probe.name);
                }
                Ok(Some(ValueSpec {
                    kind: VAL_FIELD,
                    size: field.size as u8,
                    signed: field.signed.into(),
                    offset: field.offset as u16,
                    string: STR_NONE,
                    ..ValueSpec::NONE
                }))
            };
            let start_field = field_key(&start, &args.start_key)?;
            let end_field = field_key(&end, &args.end_key)?;
            config.start_key = start_field.unwrap_or(current);
            config.end_key = end_field.unwrap_or(current);
            config.per_probe = 0;
            let loaded = probe_attach::attach_pair(
                &start,
                &end,
                config,
                (start_field.is_some(), end_field.is_some()),
                args.common.attach,
            )?;
            let what = format!("{} -> {}", start.name, end.name);
            let probe = Probe {
                kind: Kind::Tracepoint,
                name: what.clone(),
                point: start.point.clone(),
                usdt: None,
            };
            (vec![probe], loaded, interval, what)
        }
    } else {
        let (specs, interval) = probe_attach::split_positionals(&args.items)?;
        if specs.len() != 1 {
            usage_bail!(
                "funclatency times one probe (a glob is fine): got {}",
                specs.len()
            );
        }
        let spec = probe_spec::parse(&specs[0])?;
        if matches!(spec, probe_spec::ProbeSpec::Usdt { .. }) {
            usage_bail!(
                "a USDT probe is one point, not a function with a return: time two of them \
                 with --start usdt:... --end usdt:..."
            );
        }
        match spec.kind() {
            Kind::Uprobe | Kind::Kprobe => {}
            Kind::Uretprobe | Kind::Kretprobe => {
                usage_bail!("funclatency attaches entry and return itself: give u:/k:, not ur:/kr:")
            }
            Kind::Tracepoint => {
                usage_bail!(
                    "a tracepoint has no return: time two of them with --start t:... --end t:..."
                )
            }
        }
        let probes = probe_spec::resolve(&spec, args.pid)?;
        if let Some(filter) = &args.filter {
            config.filter = probe_attach::parse_filter(filter, &probes, &[])?.0;
        }
        let loaded = probe_attach::attach_all(&Request {
            probes: &probes,
            config,
            pid: args.pid,
            force: args.common.attach,
            entry_and_return: true,
            needs_record: false,
        })?;
        (probes, loaded, interval, format!("\"{}\"", specs[0]))
    };
    if args.common.verbose {
        loaded.print_summary(TOOL);
    }
    errln!(
        "Tracing {} functions for {what} ({})... Hit Ctrl-C to end.",
        probes.len(),
        loaded.mechanism()
    );

    let mut out = Out::new();
    let mut previous: HashMap<HistKey, Hist> = HashMap::new();
    let mut reported = ProbeStats::default();
    let periodic = interval.interval.is_some();
    probe_attach::every_interval(
        &interval,
        args.common.duration.duration,
        |_last, interval_ns| {
            // Each interval drains the map, so its count, min and max are its own.
            let now = loaded.hists(periodic)?;
            let view = View {
                unit,
                div,
                periodic,
                interval_ns,
            };
            print(&args, &probes, &now, &previous, view, &mut out);
            if !periodic {
                previous = now;
            }
            loaded.report_problems(TOOL, &mut reported);
            out.flush();
            Ok(!out.closed())
        },
    )
    .await?;
    finish(&args, &loaded, &mut out);
    Ok(())
}

fn split_numbers(items: &[String]) -> Result<(Vec<String>, session::IntervalArgs)> {
    if items.is_empty() {
        return Ok((Vec::new(), session::IntervalArgs::default()));
    }
    let mut with_probe = vec!["t:x:y".to_string()];
    with_probe.extend(items.iter().cloned());
    probe_attach::split_positionals(&with_probe)
}

/// `--key` as the pairing value of both ends.
fn current_key(key: &str) -> Result<ValueSpec> {
    Ok(match key {
        "tid" => ValueSpec::TID,
        "pid" => ValueSpec {
            kind: VAL_PID,
            ..ValueSpec::NONE
        },
        "cpu" => ValueSpec {
            kind: VAL_CPU,
            ..ValueSpec::NONE
        },
        other => usage_bail!("--key takes tid, pid or cpu, not '{other}'"),
    })
}

fn one_tracepoint(text: &str, option: &str) -> Result<Probe> {
    let spec = probe_spec::parse(text)?;
    if spec.kind() != Kind::Tracepoint || spec.is_glob() {
        usage_bail!("{option} takes one tracepoint (t:CATEGORY:EVENT), not '{text}'");
    }
    let mut probes = probe_spec::resolve(&spec, None)?;
    Ok(probes.remove(0))
}

fn finish(args: &FunclatencyArgs, loaded: &Loaded, out: &mut Out) {
    let stats = loaded.stats();
    if args.common.output.json {
        out.json(&loaded.end_record(TOOL, json!({})));
    } else {
        if stats.unpaired > 0 && args.common.verbose {
            errln!(
                "{TOOL}: {} returns without a recorded entry (calls in flight at attach)",
                stats.unpaired
            );
        }
        errln!("Detaching...");
    }
    out.flush();
}

/// A nanosecond figure in the chosen unit, with decimals when it is not whole.
fn in_unit(ns: u64, div: u32) -> String {
    if div == 1 {
        ns.to_string()
    } else {
        format!("{:.3}", ns as f64 / div as f64)
    }
}

/// How one interval is shown: the unit and its divisor, whether intervals repeat, and this
/// interval's length.
#[derive(Clone, Copy)]
struct View<'a> {
    unit: &'a str,
    div: u32,
    periodic: bool,
    interval_ns: u64,
}

/// One interval's report: text histograms, or one JSON record with every histogram (empty
/// intervals too, as in text, where they say "(no completed calls)").
fn print(
    args: &FunclatencyArgs,
    probes: &[Probe],
    now: &HashMap<HistKey, Hist>,
    before: &HashMap<HistKey, Hist>,
    view: View,
    out: &mut Out,
) {
    let View {
        unit,
        div,
        periodic,
        interval_ns,
    } = view;
    let mut histograms = Vec::new();
    let mut keys: Vec<&HistKey> = now.keys().collect();
    keys.sort_by_key(|k| (k.probe_id, k.tgid));
    let json = args.common.output.json;
    if !json && (periodic || args.common.output.timestamp) {
        out.line("");
    }
    out.interval_header(!json && (periodic || args.common.output.timestamp));
    let mut any = false;
    for key in keys {
        let hist = now[key].since(before.get(key));
        if hist.count == 0 {
            continue;
        }
        any = true;
        let function = (args.per_function || args.start.is_some())
            .then(|| probes.get(key.probe_id as usize).map(|p| p.name.clone()))
            .flatten();
        let pid = args.per_pid.then_some(key.tgid);
        if json {
            histograms.push(json!({"function": function, "pid": pid,
                   "comm": pid.map(comm_of), "count": hist.count,
                   "sum_ns": hist.sum, "min_ns": hist.min, "max_ns": hist.max,
                   "avg_ns": hist.avg(), "hist": hist.log2.to_json(unit)}));
            continue;
        }
        if let Some(f) = &function {
            out.line(&format!("\nFunction = {f}"));
        }
        if let Some(pid) = pid {
            out.line(&format!("\npid = {pid} [{}]", comm_of(pid)));
        }
        out.line("");
        for line in hist.log2.render(unit).lines() {
            out.line(line);
        }
        out.line(&format!(
            "\ncount {}, avg {} {unit}, min {} {unit}, max {} {unit}, total {} {unit}",
            hist.count,
            in_unit(hist.avg().unwrap_or(0), div),
            in_unit(hist.min, div),
            in_unit(hist.max, div),
            in_unit(hist.sum, div),
        ));
    }
    if json {
        out.json(&interval_record(
            TOOL,
            "histograms",
            interval_ns,
            json!({"unit": unit, "histograms": histograms}),
        ));
    } else if !any {
        out.line("(no completed calls)");
    }
}

fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

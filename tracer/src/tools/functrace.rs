//! functrace: one line per call of the kernel functions matching one or more globs, with the
//! caller — ftrace's function tracer (`set_ftrace_filter '*sleep'`) as a tool, perf-tools'
//! `functrace` without the shell. Two rungs, probed: an entry program on one kprobe_multi link
//! over every matching function (its id in the cookie; the caller read from the return
//! address at the entry's stack pointer), or, without kprobe_multi, the kernel's function
//! tracer in a tracefs instance of our own (`function_tracer`). `-p` follows the processes the
//! target forks (ftrace's function-fork).

use std::{collections::HashMap, time::Duration};

use anyhow::{Result, anyhow};
use clap::Args;
use serde_json::json;
use tracer_common::functrace::{FunctraceConfig, MAX_FUNCTIONS, TraceRecord};

use crate::{
    attach::Mechanism,
    btf::KernelBtf,
    cgroup::CgroupArgs,
    filters,
    function_tracer::{self, FunctionTracer},
    kernel_calls::{self, KernelText},
    kprobe_multi,
    loader::{self, StatsReader, objects},
    output::{Clock, Out, attach_json, hms, with_schema},
    probe_spec, session,
    tools::CommonArgs,
    uprobe_multi::{self, MultiKind},
};

const TOOL: &str = "functrace";

/// One line per call of the kernel functions matching PATTERN (ftrace's function tracer).
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    functrace '*sleep'                    every call of a kernel function ending in sleep\n  \
    functrace -p 42 'vfs_*'               PID 42 and the processes it forks\n  \
    functrace do_nanosleep hrtimer_nanosleep -d 5 --json\n  \
    functrace 'tcp_*' --comm nginx -T     with the time of day, only nginx's threads")]
pub struct FunctraceArgs {
    /// Kernel functions to trace: names or shell globs (`*`, `?`, `[...]`), as ftrace's
    /// set_ftrace_filter takes them.
    #[arg(value_name = "PATTERN", required = true)]
    pub patterns: Vec<String>,
    /// Only this process, and the processes it forks from now on (ftrace's function-fork).
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Only threads with this comm: exact, or a prefix ending in '*'.
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    #[command(flatten)]
    pub cgroup: CgroupArgs,
    /// At most this many functions may match (a glob as wide as '*' is refused).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_functions: u32,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Where the calls come from.
enum Source {
    Kprobe(Box<Session>),
    Tracefs(FunctionTracer),
}

pub async fn run(args: FunctraceArgs) -> Result<()> {
    if args.max_functions == 0 || args.max_functions > MAX_FUNCTIONS {
        usage_bail!("--max-functions must be 1 to {MAX_FUNCTIONS}");
    }
    let forced = args
        .common
        .attach_for(TOOL, &[Mechanism::KprobeMulti, Mechanism::Function])?;
    if let Some(pid) = args.pid {
        session::check_pid(pid)?;
    }
    let text = KernelText::open()?;
    let mechanism = kprobe_multi::or_tracefs(
        TOOL,
        forced,
        Mechanism::Function,
        "function tracer",
        function_tracer::available(),
    )?;
    let traceable = probe_spec::traceable_function_names().ok_or_else(|| {
        anyhow!(
            "cannot read available_filter_functions (ftrace's function tracer): functrace \
             needs CONFIG_FUNCTION_TRACER and root"
        )
    })?;
    // Each pattern must name something: a typo is an error, not a silent empty trace.
    let mut functions: Vec<(String, u64)> = Vec::new();
    for pattern in &args.patterns {
        let found =
            text.matching(|name| probe_spec::glob_match(pattern, name) && traceable.contains(name));
        if found.is_empty() {
            usage_bail!(
                "no traceable kernel function matches '{pattern}' (see available_filter_functions)"
            );
        }
        functions.extend(found);
    }
    functions.sort();
    functions.dedup();
    let denied = functions.len();
    if mechanism == Mechanism::KprobeMulti {
        functions.retain(|(name, _)| !kernel_calls::denied(name));
    }
    let denied = denied - functions.len();
    if functions.is_empty() {
        usage_bail!(
            "every function matching {} is on functrace's deny list (tracing code and what BPF \
             programs run through)",
            args.patterns.join(" ")
        );
    }
    if functions.len() > args.max_functions as usize {
        usage_bail!(
            "{} functions match {}: more than --max-functions {} (narrow the pattern or raise \
             the limit)",
            functions.len(),
            args.patterns.join(" "),
            args.max_functions
        );
    }
    let mut names: Vec<String> = Vec::new();
    let mut ids: HashMap<String, u32> = HashMap::new();
    for (name, _) in &functions {
        if !ids.contains_key(name) {
            ids.insert(name.clone(), names.len() as u32);
            names.push(name.clone());
        }
    }
    let (mut source, attached) = match mechanism {
        Mechanism::KprobeMulti => {
            let session = Session::start(&args, &functions, &ids)?;
            if args.common.verbose {
                errln!(
                    "{TOOL}: {} functions ({} addresses) on one kprobe_multi link{}",
                    names.len(),
                    functions.len(),
                    if denied > 0 {
                        format!(", {denied} left out by the deny list")
                    } else {
                        String::new()
                    }
                );
            }
            (
                Source::Kprobe(Box::new(session)),
                format!("{} functions", names.len()),
            )
        }
        _ => {
            if args.comm.is_some() || args.cgroup.cgroup.is_some() {
                usage_bail!(
                    "--comm and --cgroup filter in the kernel: they need the kprobe_multi rung \
                     (Linux 5.18+ with CONFIG_FPROBE), which this kernel lacks"
                );
            }
            let tids = match args.pid {
                Some(pid) => crate::procfs::threads_of(pid),
                None => Vec::new(),
            };
            let tracer = FunctionTracer::start(&function_tracer::Setup {
                patterns: &args.patterns,
                tids,
            })?;
            if args.common.verbose {
                errln!(
                    "{TOOL}: tracefs function tracer in an instance ({} functions in \
                     set_ftrace_filter): {}",
                    tracer.functions,
                    if forced.is_some() {
                        "--attach function"
                    } else {
                        "kprobe_multi unavailable"
                    }
                );
            }
            let attached = format!("{} functions", tracer.functions);
            (Source::Tracefs(tracer), attached)
        }
    };
    errln!(
        "Tracing {} function{} matching {}... Hit Ctrl-C to end.",
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        args.patterns.join(" ")
    );
    let mut out = Out::new();
    let json = args.common.output.json;
    if !json {
        let time = if args.common.output.timestamp {
            format!("{:<9}", "TIME")
        } else {
            String::new()
        };
        out.line(&format!(
            "{time}{:>7} {:>7} {:>3} {:<16} {:<32} CALLER",
            "PID", "TID", "CPU", "COMM", "FUNCTION"
        ));
    }
    let clock = Clock::new();
    let mut printer = Printer {
        args: &args,
        clock,
        text: &text,
        calls: 0,
        tgids: HashMap::new(),
    };
    let stop = session::stop_requested(args.common.duration.duration);
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        let last = tokio::select! {
            reason = &mut stop => { reason?; true }
            _ = tick.tick() => false,
        };
        match &mut source {
            Source::Kprobe(session) => session.read(|r| {
                let function = names.get(r.func as usize).map_or("?", String::as_str);
                printer.kprobe(&r, function, &mut out);
            })?,
            Source::Tracefs(tracer) => {
                let calls = if last {
                    tracer.finish()?
                } else {
                    tracer.read()?
                };
                for call in calls {
                    printer.tracefs(&call, &mut out);
                }
            }
        }
        out.flush();
        if last || out.closed() {
            break;
        }
    }
    let (lost, map_full, read_errors) = match &source {
        Source::Kprobe(session) => {
            let end = session.stats.read();
            (end.lost, end.map_full, end.read_errors)
        }
        Source::Tracefs(tracer) => (tracer.lost, 0, 0),
    };
    if lost > 0 {
        errln!(
            "{TOOL}: {lost} calls lost: {}",
            if mechanism == Mechanism::KprobeMulti {
                "the ring buffer was full"
            } else {
                "tracefs's buffer overran"
            }
        );
    }
    if json {
        out.json(&with_schema(
            TOOL,
            json!({"type": "end", "calls": printer.calls, "functions": names.len(),
                "attach": [attach_json(&attached, mechanism)], "lost": lost,
                "map_full": map_full, "read_errors": read_errors}),
        ));
    }
    out.flush();
    drop(source);
    Ok(())
}

/// Prints calls from either rung the same way.
struct Printer<'a> {
    args: &'a FunctraceArgs,
    clock: Clock,
    text: &'a KernelText,
    calls: u64,
    tgids: HashMap<u32, u32>,
}

impl Printer<'_> {
    fn kprobe(&mut self, r: &TraceRecord, function: &str, out: &mut Out) {
        let caller = match self.text.name_at(r.caller) {
            Some(name) => name.to_string(),
            None => format!("{:#x}", r.caller),
        };
        let comm = crate::output::comm_str(&r.comm);
        self.line(r.ts_ns, r.tgid, r.tid, r.cpu, &comm, function, &caller, out);
    }

    fn tracefs(&mut self, call: &function_tracer::Call, out: &mut Out) {
        let tid = call.tid;
        let tgid = match call.tgid {
            Some(tgid) if tgid != 0 => tgid,
            _ => *self
                .tgids
                .entry(tid)
                .or_insert_with(|| crate::procfs::tgid_of(tid).unwrap_or(tid)),
        };
        let comm = if call.comm == "<...>" {
            std::fs::read_to_string(format!("/proc/{tid}/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_else(|_| call.comm.clone())
        } else {
            call.comm.clone()
        };
        self.line(
            call.ts_ns,
            tgid,
            tid,
            call.cpu,
            &comm,
            &call.function,
            &call.caller,
            out,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn line(
        &mut self,
        ts_ns: u64,
        pid: u32,
        tid: u32,
        cpu: u32,
        comm: &str,
        function: &str,
        caller: &str,
        out: &mut Out,
    ) {
        self.calls += 1;
        if self.args.common.output.json {
            out.json(&with_schema(
                TOOL,
                json!({"type": "call", "ts": self.clock.unix_secs(ts_ns), "pid": pid,
                    "tid": tid, "cpu": cpu, "comm": comm, "function": function,
                    "caller": caller}),
            ));
        } else {
            let time = if self.args.common.output.timestamp {
                format!("{} ", hms(self.clock.unix_ns(ts_ns)))
            } else {
                String::new()
            };
            out.line(&format!(
                "{time}{pid:>7} {tid:>7} {cpu:>3} {comm:<16} {function:<32} <- {caller}"
            ));
        }
    }
}

/// The BPF rung: the loaded object, its link, and the ring the calls arrive through.
struct Session {
    // The link before the object: dropped first, it detaches before the maps go.
    _link: kprobe_multi::Link,
    _program: uprobe_multi::Program,
    calls: aya::maps::RingBuf<aya::maps::MapData>,
    stats: StatsReader,
    _ebpf: aya::Ebpf,
}

impl Session {
    fn start(
        args: &FunctraceArgs,
        functions: &[(String, u64)],
        ids: &HashMap<String, u32>,
    ) -> Result<Self> {
        let btf = KernelBtf::new();
        args.cgroup.install(&btf)?;
        let config = FunctraceConfig {
            follow: args.pid.is_some().into(),
            _pad: [0; 7],
            comm: filters::comm_filter(args.comm.as_deref())?,
        };
        let offsets = if args.pid.is_some() {
            btf.task_offsets()?
        } else {
            Default::default()
        };
        let mut ebpf = loader::load(objects::FUNCTRACE, |l| {
            l.override_global("CONFIG", &config, true);
            l.override_global("TASK_OFFSETS", &offsets, false);
        })?;
        if let Some(pid) = args.pid {
            let mut traced: aya::maps::HashMap<_, u32, u8> = aya::maps::HashMap::try_from(
                ebpf.map_mut("TRACED")
                    .ok_or_else(|| anyhow!("TRACED map missing (build bug)"))?,
            )?;
            traced.insert(pid, 1, 0)?;
            let fork: &mut aya::programs::RawTracePoint = ebpf
                .program_mut("functrace_fork")
                .ok_or_else(|| anyhow!("functrace_fork missing (build bug)"))?
                .try_into()?;
            fork.load()?;
            fork.attach("sched_process_fork").map_err(|e| {
                anyhow!("cannot follow forks (raw tracepoint sched_process_fork): {e}")
            })?;
        }
        let addresses: Vec<u64> = functions.iter().map(|(_, a)| *a).collect();
        let cookies: Vec<u64> = functions
            .iter()
            .map(|(name, _)| u64::from(ids[name]))
            .collect();
        let program = uprobe_multi::Program::load_as(
            objects::FUNCTRACE,
            "functrace_entry",
            &ebpf,
            MultiKind::Kprobe,
        )
        .map_err(|e| anyhow!("cannot load functrace_entry: {e}"))?;
        let link = kprobe_multi::Link::attach(
            &program,
            &kprobe_multi::Target {
                functions: &[],
                addresses: &addresses,
                cookies: &cookies,
                on_return: false,
            },
        )
        .map_err(|e| {
            anyhow!(
                "cannot attach to {} functions with kprobe_multi: {e}",
                addresses.len()
            )
        })?;
        let stats = StatsReader::take(&mut ebpf)?;
        let calls = loader::take(&mut ebpf, "CALLS")?;
        Ok(Self {
            _link: link,
            _program: program,
            calls,
            stats,
            _ebpf: ebpf,
        })
    }

    fn read(&mut self, mut each: impl FnMut(TraceRecord)) -> Result<()> {
        while let Some(item) = self.calls.next() {
            each(loader::ring_record(&item)?);
        }
        Ok(())
    }
}

//! funcgraph: ftrace's function_graph view of one kernel function, as a tool. The user names
//! the root; its callees are found in the kernel's own code (`kernel_calls`) down to
//! `--max-depth`, and one entry and one return program on kprobe_multi links time every call
//! of a thread while it is inside the root. Each call that returns is sent to user space,
//! callees first; a tree is printed when its root returns (only if it took `--min-duration`),
//! as ftrace prints it, as JSON, or as Chrome trace events for Perfetto. `--stats` is the
//! function profiler: hits, time, average, s² and self time per function, summed in the
//! kernel.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::RawTracePoint,
};
use clap::Args;
use serde_json::{Value, json};
use tokio::io::unix::AsyncFd;
use tracer_common::{
    funcgraph::{
        CALL_INCOMPLETE, CallRecord, FuncStats, FuncgraphConfig, MAX_DEPTH, MAX_FUNCTIONS, ROOT_ID,
        STAT_ORPHAN_RETURNS, STAT_UNCLOSED_FRAMES,
    },
    task::TaskOffsets,
};

use crate::{
    btf::KernelBtf,
    cgroup::CgroupArgs,
    filters,
    kernel_calls::{self, Function, KernelText},
    kprobe_multi,
    loader::{self, StatsReader, objects},
    output::{Clock, Out, comm_str, with_schema},
    probe_spec,
    session::{self, IntervalArgs},
    tools::CommonArgs,
    uprobe_multi::{self, MultiKind},
};

const TOOL: &str = "funcgraph";

/// ftrace's duration markers: the first whose threshold a call reaches.
const MARKERS: &[(u64, char)] = &[
    (1_000_000_000, '$'),
    (100_000_000, '@'),
    (10_000_000, '*'),
    (1_000_000, '#'),
    (100_000, '!'),
    (10_000, '+'),
];

/// The call tree under one kernel function, each time it runs (ftrace's function_graph).
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    funcgraph kernel_clone                      every fork's call tree, 8 levels deep\n  \
    funcgraph kernel_clone --max-depth 3 -p 42  PID 42 and the processes it forks\n  \
    funcgraph try_to_wake_up --min-duration 20us  only wakeups that took 20 µs or more\n  \
    funcgraph do_sys_openat2 --perfetto open.json -d 5   a timeline for ui.perfetto.dev\n  \
    funcgraph vfs_read --stats 1 5              function profile of vfs_read's callees")]
pub struct FuncgraphArgs {
    /// The kernel function whose calls to trace (the root of each tree).
    #[arg(value_name = "FUNCTION")]
    pub function: String,
    /// Levels shown, the root being level 1 (ftrace's max_graph_depth).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub max_depth: u32,
    /// Only trees whose root call took at least this long (e.g. 200us, 1ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_min_duration)]
    pub min_duration: Option<u64>,
    /// Only this process, and the processes it forks from now on (ftrace's function-fork).
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Only threads with this comm: exact, or a prefix ending in '*'.
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    #[command(flatten)]
    pub cgroup: CgroupArgs,
    /// Show each call's return value (as ftrace's funcgraph-retval).
    #[arg(long)]
    pub retval: bool,
    /// Also the calls made by interrupts (hard and soft) that arrive inside a tree, which are
    /// left out by default (ftrace's funcgraph-irqs).
    #[arg(long)]
    pub irqs: bool,
    /// Function profiler: hits, total, average, s² and self time per function instead of trees.
    #[arg(long)]
    pub stats: bool,
    /// Also write the trees shown as Chrome trace-event JSON to FILE (Perfetto, chrome://tracing).
    #[arg(long, value_name = "FILE")]
    pub perfetto: Option<PathBuf>,
    /// At most this many functions attached (root and callees, nearest levels first).
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_functions: u32,
    #[command(flatten)]
    pub interval: IntervalArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

fn parse_min_duration(text: &str) -> Result<u64, String> {
    session::parse_ns(text)
        .ok_or_else(|| format!("'{text}' is not a duration with a unit (e.g. 200us, 1ms, 2s)"))
}

/// The functions of a run: index = cookie.
struct Graph {
    functions: Vec<Function>,
    /// The limit cut the deepest level.
    cut: bool,
}

impl Graph {
    fn name(&self, id: u32) -> &str {
        self.functions
            .get(id as usize)
            .map_or("?", |f| f.name.as_str())
    }
}

pub async fn run(args: FuncgraphArgs) -> Result<()> {
    if args.max_depth == 0 || args.max_depth as usize > MAX_DEPTH {
        usage_bail!("--max-depth must be 1 to {MAX_DEPTH}");
    }
    if args.max_functions == 0 || args.max_functions > MAX_FUNCTIONS {
        usage_bail!("--max-functions must be 1 to {MAX_FUNCTIONS}");
    }
    if args.interval.interval.is_some() && !args.stats {
        usage_bail!("INTERVAL and COUNT apply to --stats (e.g. 'funcgraph vfs_read --stats 1 5')");
    }
    if args.stats && (args.perfetto.is_some() || args.min_duration.is_some()) {
        usage_bail!("--stats prints per-function sums: --perfetto and --min-duration need trees");
    }
    args.common
        .attach_for(TOOL, &[crate::attach::Mechanism::KprobeMulti])?;
    if let Some(pid) = args.pid {
        session::check_pid(pid)?;
    }
    let comm = filters::comm_filter(args.comm.as_deref())?;
    let graph = discover(&args)?;
    let btf = KernelBtf::new();
    args.cgroup.install(&btf)?;
    let config = FuncgraphConfig {
        follow: args.pid.is_some().into(),
        emit_calls: (!args.stats).into(),
        sum_stats: args.stats.into(),
        _reserved: 0,
        max_depth: args.max_depth - 1,
        task_stack: if args.irqs {
            0
        } else {
            btf.member_offset("task_struct", "stack")?
        },
        _pad: 0,
        comm,
    };
    let offsets: TaskOffsets = if args.pid.is_some() {
        btf.task_offsets()?
    } else {
        TaskOffsets::default()
    };
    let mut ebpf = loader::load(objects::FUNCGRAPH, |l| {
        l.override_global("CONFIG", &config, true);
        l.override_global("TASK_OFFSETS", &offsets, false);
        if args.stats {
            l.map_max_entries("CALLS", 4096);
        }
    })?;
    if let Some(pid) = args.pid {
        // Borrowed, not taken: the multi-link programs are loaded against the object's maps.
        let mut traced: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(
            ebpf.map_mut("TRACED")
                .ok_or_else(|| anyhow!("TRACED map missing (build bug)"))?,
        )?;
        traced.insert(pid, 1, 0)?;
        let fork: &mut RawTracePoint = ebpf
            .program_mut("funcgraph_fork")
            .ok_or_else(|| anyhow!("funcgraph_fork missing (build bug)"))?
            .try_into()?;
        fork.load()?;
        fork.attach("sched_process_fork")
            .context("cannot follow forks (raw tracepoint sched_process_fork)")?;
    }
    let attached = attach(&ebpf, &graph)?;
    if args.common.verbose {
        let levels = graph.functions.iter().map(|f| f.level).max().unwrap_or(0);
        errln!(
            "{TOOL}: {} functions ({} and its callees {levels} call{} deep{}) on two kprobe_multi \
             links (entry, return)",
            graph.functions.len(),
            args.function,
            if levels == 1 { "" } else { "s" },
            if graph.cut {
                format!(", cut at --max-functions {}", args.max_functions)
            } else {
                String::new()
            }
        );
    }
    let stats = StatsReader::take(&mut ebpf)?;
    let mut out = Out::new();
    let summary = if args.stats {
        let sums: PerCpuArray<MapData, FuncStats> = loader::take(&mut ebpf, "FUNC_STATS")?;
        errln!(
            "Profiling {} and {} callees... Hit Ctrl-C to end.",
            args.function,
            graph.functions.len() - 1
        );
        profile(&args, &graph, &sums, &mut out).await?
    } else {
        let ring: RingBuf<MapData> = loader::take(&mut ebpf, "CALLS")?;
        errln!(
            "Tracing {} and {} callees... Hit Ctrl-C to end.",
            args.function,
            graph.functions.len() - 1
        );
        trees(&args, &graph, ring, &mut out).await?
    };
    let end = stats.read();
    let recursion_misses: u64 = attached.iter().filter_map(|p| p.recursion_misses()).sum();
    let orphans = stats.slot(STAT_ORPHAN_RETURNS);
    let unclosed = stats.slot(STAT_UNCLOSED_FRAMES);
    if end.lost > 0 {
        errln!("{TOOL}: {} calls lost: the ring buffer was full", end.lost);
    }
    if recursion_misses + orphans + unclosed > 0 {
        errln!(
            "{TOOL}: {recursion_misses} probe hits skipped by the kernel's recursion protection \
             ({orphans} returns without their entry, {unclosed} calls without their return)"
        );
    }
    if args.common.output.json {
        out.json(&with_schema(
            TOOL,
            json!({"type": "end", "trees": summary.trees, "trees_shown": summary.shown,
                   "unfinished": summary.unfinished, "functions": graph.functions.len(),
                   "lost": end.lost, "map_full": end.map_full,
                   "read_errors": end.read_errors, "recursion_misses": recursion_misses,
                   "orphan_returns": orphans, "unclosed_calls": unclosed,
                   "callees": graph.functions.iter().filter(|f| f.level == 1)
                       .map(|f| f.name.as_str()).collect::<Vec<_>>(),
                   "attach": [crate::output::attach_json(
                       &format!("{} functions", graph.functions.len()), "kprobe_multi")]}),
        ));
    }
    out.flush();
    drop(attached);
    Ok(())
}

/// The root and the callees to attach: one line for each reason it cannot be traced.
fn discover(args: &FuncgraphArgs) -> Result<Graph> {
    let name = args.function.as_str();
    let text = KernelText::open()?;
    let roots = text.addresses(name);
    if roots.is_empty() {
        usage_bail!("unknown kernel function '{name}' (not in /proc/kallsyms)");
    }
    if kernel_calls::denied(name) {
        usage_bail!(
            "'{name}' is on funcgraph's deny list (tracing code and what BPF programs run through)"
        );
    }
    kprobe_multi::supported().map_err(|why| {
        anyhow!(
            "funcgraph needs kprobe_multi links (Linux 5.18+ with CONFIG_FPROBE and \
             CONFIG_FUNCTION_TRACER): {why}"
        )
    })?;
    let traceable = probe_spec::traceable_function_names().ok_or_else(|| {
        anyhow!(
            "cannot read available_filter_functions (ftrace's function tracer): funcgraph needs \
             CONFIG_FUNCTION_TRACER and root"
        )
    })?;
    if !traceable.contains(name) {
        usage_bail!(
            "'{name}' cannot be traced: not in available_filter_functions (notrace, inlined or \
             an entry stub)"
        );
    }
    let mut functions: Vec<Function> = Vec::new();
    let mut cut = false;
    let mut seen = HashSet::new();
    for root in roots {
        let (found, was_cut) = text.reachable(
            root,
            args.max_depth - 1,
            args.max_functions as usize,
            &|n| traceable.contains(n),
        )?;
        cut |= was_cut;
        for f in found {
            if seen.insert(f.address) {
                functions.push(f);
            }
        }
    }
    // Every root copy takes cookie ROOT_ID: its entries come first.
    functions.sort_by_key(|f| f.level != 0);
    functions.truncate(args.max_functions as usize);
    Ok(Graph { functions, cut })
}

/// The entry and return programs on one kprobe_multi link each. Dropping them detaches.
struct Attached {
    programs: Vec<uprobe_multi::Program>,
    _links: Vec<kprobe_multi::Link>,
}

impl Attached {
    fn iter(&self) -> impl Iterator<Item = &uprobe_multi::Program> {
        self.programs.iter()
    }
}

fn attach(ebpf: &Ebpf, graph: &Graph) -> Result<Attached> {
    let addresses: Vec<u64> = graph.functions.iter().map(|f| f.address).collect();
    let cookies: Vec<u64> = graph
        .functions
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if f.level == 0 {
                u64::from(ROOT_ID)
            } else {
                i as u64
            }
        })
        .collect();
    let mut programs = Vec::new();
    let mut links = Vec::new();
    for (program, on_return) in [("funcgraph_entry", false), ("funcgraph_return", true)] {
        let prog =
            uprobe_multi::Program::load_as(objects::FUNCGRAPH, program, ebpf, MultiKind::Kprobe)
                .map_err(|e| anyhow!("cannot load {program}: {e}"))?;
        let link = kprobe_multi::Link::attach(
            &prog,
            &kprobe_multi::Target {
                functions: &[],
                addresses: &addresses,
                cookies: &cookies,
                on_return,
            },
        )
        .map_err(|e| {
            anyhow!(
                "cannot attach to {} functions with kprobe_multi: {e}",
                addresses.len()
            )
        })?;
        programs.push(prog);
        links.push(link);
    }
    Ok(Attached {
        programs,
        _links: links,
    })
}

/// A call and the calls it made, in order.
struct Node {
    record: CallRecord,
    children: Vec<Node>,
}

/// Rebuilds trees from calls arriving callees first: per thread, the finished calls of each
/// depth wait for their caller.
#[derive(Default)]
struct Builder {
    pending: HashMap<u32, Vec<Vec<Node>>>,
}

impl Builder {
    /// The finished tree when `record` is a root's return.
    fn add(&mut self, record: CallRecord) -> Option<Node> {
        let depth = record.depth as usize;
        let levels = self.pending.entry(record.tid).or_default();
        if levels.len() < depth + 2 {
            levels.resize_with(depth + 2, Vec::new);
        }
        let children = std::mem::take(&mut levels[depth + 1]);
        let node = Node { record, children };
        if depth == 0 {
            self.pending.remove(&record.tid);
            return Some(node);
        }
        levels[depth].push(node);
        None
    }
}

#[derive(Default)]
struct Summary {
    trees: u64,
    shown: u64,
    unfinished: u64,
}

async fn trees(
    args: &FuncgraphArgs,
    graph: &Graph,
    ring: RingBuf<MapData>,
    out: &mut Out,
) -> Result<Summary> {
    let clock = Clock::new();
    let mut builder = Builder::default();
    let mut summary = Summary::default();
    let mut timeline = args.perfetto.as_ref().map(|_| Vec::new());
    // SAFETY: the RingBuf owns its fd and keeps it open for as long as the AsyncFd lives.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow!("cannot poll the ring buffer: {e}"))?;
    let stop = session::stop_requested(args.common.duration.duration);
    tokio::pin!(stop);
    let mut drain = tokio::time::interval(Duration::from_millis(100));
    let mut handle = |record: CallRecord, out: &mut Out| {
        let Some(tree) = builder.add(record) else {
            return;
        };
        summary.trees += 1;
        if tree.record.duration_ns < args.min_duration.unwrap_or(0) {
            return;
        }
        summary.shown += 1;
        if args.common.output.json {
            out.json(&with_schema(
                TOOL,
                tree_json(&tree, graph, &clock, args.retval),
            ));
        } else {
            print_tree(&tree, graph, &clock, args, out);
        }
        if let Some(events) = timeline.as_mut() {
            trace_events(&tree, graph, events);
        }
    };
    loop {
        tokio::select! {
            reason = &mut stop => { reason?; break; }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let inner = guard.get_inner_mut();
                while let Some(item) = inner.next() {
                    handle(read_record(&item)?, out);
                }
                guard.clear_ready();
            }
            _ = drain.tick() => {
                let inner = ring.get_mut();
                while let Some(item) = inner.next() {
                    handle(read_record(&item)?, out);
                }
            }
        }
        out.flush();
        if out.closed() {
            break;
        }
    }
    let inner = ring.get_mut();
    while let Some(item) = inner.next() {
        handle(read_record(&item)?, out);
    }
    summary.unfinished = builder.pending.len() as u64;
    if let (Some(path), Some(events)) = (&args.perfetto, timeline) {
        write_perfetto(path, events)?;
    }
    Ok(summary)
}

fn read_record(item: &[u8]) -> Result<CallRecord> {
    if item.len() < size_of::<CallRecord>() {
        return Err(anyhow!("short call record ({} bytes)", item.len()));
    }
    // SAFETY: the kernel wrote a CallRecord (repr(C), plain integers); read unaligned.
    Ok(unsafe { item.as_ptr().cast::<CallRecord>().read_unaligned() })
}

fn marker(duration_ns: u64) -> char {
    MARKERS
        .iter()
        .find(|(at, _)| duration_ns >= *at)
        .map_or(' ', |(_, m)| *m)
}

/// ftrace's duration column: `+ 12.345 us` (blank when the line has no duration).
fn duration_column(duration_ns: Option<u64>) -> String {
    match duration_ns {
        Some(ns) => format!("{} {:>9.3} us", marker(ns), ns as f64 / 1e3),
        None => " ".repeat(14),
    }
}

fn print_tree(tree: &Node, graph: &Graph, clock: &Clock, args: &FuncgraphArgs, out: &mut Out) {
    let r = &tree.record;
    let mut title = format!(
        "{}() in {} PID {} TID {} on CPU {} at {}: {:.3} us",
        graph.name(r.func),
        comm_str(&r.comm),
        r.tgid,
        r.tid,
        r.cpu,
        crate::output::hms(clock.unix_ns(r.start_ns)),
        r.duration_ns as f64 / 1e3
    );
    if r.flags & CALL_INCOMPLETE != 0 {
        title.push_str(" (calls lost to recursion protection)");
    }
    out.line(&title);
    out.line(" CPU  DURATION          FUNCTION CALLS");
    print_node(tree, graph, 0, args.retval, out);
    out.line("");
}

fn print_node(node: &Node, graph: &Graph, level: usize, retval: bool, out: &mut Out) {
    let r = &node.record;
    let indent = "  ".repeat(level);
    let name = graph.name(r.func);
    let ret = if retval {
        format!(" /* = {:#x} */", r.retval)
    } else {
        String::new()
    };
    if node.children.is_empty() {
        out.line(&format!(
            "{:>3}) {} |  {indent}{name}();{ret}",
            r.cpu,
            duration_column(Some(r.duration_ns))
        ));
        return;
    }
    out.line(&format!(
        "{:>3}) {} |  {indent}{name}() {{",
        r.cpu,
        duration_column(None)
    ));
    for child in &node.children {
        print_node(child, graph, level + 1, retval, out);
    }
    out.line(&format!(
        "{:>3}) {} |  {indent}}} /* {name} */{ret}",
        r.cpu,
        duration_column(Some(r.duration_ns))
    ));
}

fn node_json(node: &Node, graph: &Graph, clock: &Clock, retval: bool) -> Value {
    let r = &node.record;
    let mut value = json!({
        "function": graph.name(r.func),
        "start_ns": clock.unix_ns(r.start_ns) as i64,
        "duration_ns": r.duration_ns,
        "calls": node.children.iter().map(|c| node_json(c, graph, clock, retval)).collect::<Vec<_>>(),
    });
    if retval {
        value["retval"] = json!(r.retval);
    }
    value
}

fn tree_json(tree: &Node, graph: &Graph, clock: &Clock, retval: bool) -> Value {
    let r = &tree.record;
    json!({
        "type": "tree",
        "pid": r.tgid,
        "tid": r.tid,
        "comm": comm_str(&r.comm),
        "cpu": r.cpu,
        "incomplete": r.flags & CALL_INCOMPLETE != 0,
        "root": node_json(tree, graph, clock, retval),
    })
}

/// Chrome trace-event "X" slices (microseconds), one track per thread.
fn trace_events(node: &Node, graph: &Graph, events: &mut Vec<Value>) {
    let r = &node.record;
    events.push(json!({
        "name": graph.name(r.func),
        "cat": TOOL,
        "ph": "X",
        "ts": r.start_ns as f64 / 1e3,
        "dur": r.duration_ns as f64 / 1e3,
        "pid": r.tgid,
        "tid": r.tid,
        "args": {"cpu": r.cpu},
    }));
    if r.depth == 0 {
        events.push(
            json!({"name": "thread_name", "ph": "M", "pid": r.tgid, "tid": r.tid,
                           "args": {"name": comm_str(&r.comm)}}),
        );
    }
    for child in &node.children {
        trace_events(child, graph, events);
    }
}

fn write_perfetto(path: &std::path::Path, mut events: Vec<Value>) -> Result<()> {
    // One thread_name per thread.
    let mut named = HashSet::new();
    events.retain(|e| e["ph"] != "M" || named.insert(e["tid"].as_u64()));
    let document = json!({"traceEvents": events, "displayTimeUnit": "ns"});
    std::fs::write(path, serde_json::to_vec(&document)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    errln!(
        "{TOOL}: wrote {} (open it in ui.perfetto.dev)",
        path.display()
    );
    Ok(())
}

/// One function's sums over CPUs.
#[derive(Clone, Copy, Default)]
struct Sums {
    hits: u64,
    total_ns: u64,
    self_ns: u64,
    squares: u128,
}

impl Sums {
    /// Sample variance of the call durations, in µs² (ftrace's s^2).
    fn variance_us2(&self) -> f64 {
        if self.hits < 2 {
            return 0.0;
        }
        let n = self.hits as f64;
        let sum = self.total_ns as f64;
        let var_ns2 = (self.squares as f64 - sum * sum / n) / (n - 1.0);
        var_ns2.max(0.0) / 1e6
    }
}

fn read_sums(map: &PerCpuArray<MapData, FuncStats>, count: usize) -> Result<Vec<Sums>> {
    (0..count as u32)
        .map(|i| {
            let per_cpu = map.get(&i, 0)?;
            Ok(per_cpu.iter().fold(Sums::default(), |mut s, c| {
                s.hits += c.hits;
                s.total_ns += c.total_ns;
                s.self_ns += c.self_ns;
                s.squares += (u128::from(c.sq_hi) << 64) | u128::from(c.sq_lo);
                s
            }))
        })
        .collect()
}

async fn profile(
    args: &FuncgraphArgs,
    graph: &Graph,
    map: &PerCpuArray<MapData, FuncStats>,
    out: &mut Out,
) -> Result<Summary> {
    let stop = session::stop_requested(args.common.duration.duration);
    tokio::pin!(stop);
    let period = args.interval.interval;
    let mut printed = 0u64;
    let mut before = vec![Sums::default(); graph.functions.len()];
    let mut since = std::time::Instant::now();
    loop {
        let wait = async {
            match period {
                Some(p) => tokio::time::sleep(p).await,
                None => std::future::pending().await,
            }
        };
        let last = tokio::select! {
            reason = &mut stop => { reason?; true }
            _ = wait => false,
        };
        let now = read_sums(map, graph.functions.len())?;
        let delta: Vec<Sums> = now
            .iter()
            .zip(&before)
            .map(|(n, b)| Sums {
                hits: n.hits - b.hits,
                total_ns: n.total_ns - b.total_ns,
                self_ns: n.self_ns - b.self_ns,
                squares: n.squares - b.squares,
            })
            .collect();
        let interval_ns = since.elapsed().as_nanos() as u64;
        since = std::time::Instant::now();
        print_profile(args, graph, &delta, interval_ns, out);
        before = now;
        printed += 1;
        out.flush();
        if last || args.interval.count.is_some_and(|c| printed >= c) || out.closed() {
            break;
        }
    }
    Ok(Summary::default())
}

fn print_profile(
    args: &FuncgraphArgs,
    graph: &Graph,
    sums: &[Sums],
    interval_ns: u64,
    out: &mut Out,
) {
    // Root copies share cookie 0: their sums are in slot 0.
    let mut rows: Vec<(&str, &Sums)> = sums
        .iter()
        .enumerate()
        .filter(|(_, s)| s.hits > 0)
        .map(|(i, s)| (graph.name(i as u32), s))
        .collect();
    rows.sort_by(|a, b| b.1.total_ns.cmp(&a.1.total_ns).then(a.0.cmp(b.0)));
    if args.common.output.json {
        let functions: Vec<Value> = rows
            .iter()
            .map(|(name, s)| {
                json!({"function": name, "hits": s.hits, "total_ns": s.total_ns,
                       "avg_ns": s.total_ns / s.hits, "self_ns": s.self_ns,
                       "variance_us2": s.variance_us2()})
            })
            .collect();
        out.json(&crate::output::interval_record(
            TOOL,
            "profile",
            interval_ns,
            json!({"root": args.function, "functions": functions}),
        ));
        return;
    }
    if args.common.output.timestamp {
        out.line(&crate::output::hms_now());
    }
    out.line(&format!(
        "  {:<36} {:>10} {:>16} {:>14} {:>16} {:>16}",
        "Function", "Hit", "Time", "Avg", "s^2", "Self"
    ));
    for (name, s) in rows {
        out.line(&format!(
            "  {:<36} {:>10} {:>13.3} us {:>11.3} us {:>13.3} us {:>13.3} us",
            name,
            s.hits,
            s.total_ns as f64 / 1e3,
            s.total_ns as f64 / s.hits as f64 / 1e3,
            s.variance_us2(),
            s.self_ns as f64 / 1e3
        ));
    }
    out.line("");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tid: u32, func: u32, depth: u16, start: u64, duration: u64) -> CallRecord {
        CallRecord {
            start_ns: start,
            duration_ns: duration,
            retval: 0,
            tid,
            tgid: tid,
            func,
            depth,
            cpu: 0,
            flags: 0,
            _pad: 0,
            comm: [0; 16],
        }
    }

    #[test]
    fn trees_rebuild_from_calls_that_arrive_callees_first() {
        let mut b = Builder::default();
        // root(0) { a(1) { b(2); } c(3); } on thread 7, interleaved with thread 8's root.
        assert!(b.add(record(7, 2, 2, 20, 5)).is_none());
        assert!(b.add(record(7, 1, 1, 10, 20)).is_none());
        assert!(b.add(record(8, 0, 0, 15, 3)).is_some());
        assert!(b.add(record(7, 3, 1, 40, 5)).is_none());
        let tree = b.add(record(7, 0, 0, 0, 50)).expect("root closes the tree");
        let funcs: Vec<u32> = tree.children.iter().map(|c| c.record.func).collect();
        assert_eq!(funcs, [1, 3]);
        assert_eq!(tree.children[0].children[0].record.func, 2);
        assert!(b.pending.is_empty());
    }

    #[test]
    fn markers_follow_ftrace() {
        assert_eq!(marker(9_999), ' ');
        assert_eq!(marker(10_000), '+');
        assert_eq!(marker(150_000), '!');
        assert_eq!(marker(2_000_000), '#');
        assert_eq!(marker(20_000_000), '*');
        assert_eq!(marker(200_000_000), '@');
        assert_eq!(marker(2_000_000_000), '$');
    }

    #[test]
    fn variance_is_the_sample_variance_in_us2() {
        // Durations 1, 2, 3 µs: mean 2, sample variance 1 µs².
        let d = [1_000u64, 2_000, 3_000];
        let s = Sums {
            hits: 3,
            total_ns: d.iter().sum(),
            self_ns: 0,
            squares: d.iter().map(|x| u128::from(x * x)).sum(),
        };
        assert!((s.variance_us2() - 1.0).abs() < 1e-9);
    }
}

//! serve: the in-kernel aggregates as Prometheus metrics on `/metrics` (text format 0.0.4, or
//! OpenMetrics when the scraper asks for it). Built-in collectors reuse the tools' objects and
//! readers: softirq time and entries per CPU × vector and run-time histograms (softirq-top),
//! forks per parent comm (forksnoop), run-queue latency (runqlat), kernel threads' on-CPU time
//! (ktop); opt-in, the kernel threads' causes: memory reclaim (reclaimtop), block IO per device
//! (biotop), jbd2 commits (biotop --jbd2), workqueue work per function (wqtop); probes from the
//! config file count hits or time calls (funccount, funclatency). The
//! kernel keeps running totals and nothing is ever reset, so every counter is cumulative since
//! start, as Prometheus expects. The exporter's own health comes along: programs attached, the
//! attach rung of every probe, lost events, map-full counts, scrape durations. Besides,
//! `/debug/pprof/profile?seconds=N` answers with an on-CPU pprof profile (`cpu_profile`).

mod config;
mod cpu_profile;
mod http;
mod web_config;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, IterableMap as _, MapData, PerCpuArray, PerCpuHashMap},
};
use clap::Args;
use tokio::sync::mpsc;
use tracer_common::{
    biotop::{BiotopConfig, CommitStats, IoKey, IoStats},
    forksnoop::{ForkConfig, ParentCounts, ParentKey},
    hist::Log2Hist,
    probes::{MODE_COUNT, MODE_LATENCY, ProbesConfig},
    reclaimtop::{
        KIND_DIRECT, KIND_MEMCG, MAX_NODES, NodeStats, OomKill, ReclaimConfig, ReclaimTotals,
        ShrinkerStats, StallKey, StallStats, WakerStats,
    },
    sched::{HistKey, SchedConfig},
    softirq_top::{NR_CTX, NR_SOFTIRQS, SoftirqConfig, VEC_NAMES},
    task::PF_KTHREAD,
    wqtop::{FuncKey, FuncStats, QueuerKey, QueuerStats, WorkerKey, WorkerStats},
};

use self::config::{Config, ProbeConfig, ProbeKind};
use super::{biotop, forksnoop, ktop, reclaimtop, runqlat, softirq_top, wqtop};
use crate::{
    attach::Attachment,
    btf::KernelBtf,
    hist::Log2,
    loader::{self, Stats, StatsReader},
    metrics::{Buckets, Format, Kind, Scrape},
    output::{Clock, comm_str},
    probe_attach::{self, Hist, Loaded, Request},
    session,
    stacks::Symbols,
    tracefs,
};

const TOOL: &str = "serve";

/// Serve in-kernel aggregates as Prometheus/OpenMetrics metrics on /metrics.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    serve                                  softirq, forks, run queue, kthreads on 127.0.0.1:9435\n  \
    serve --config tracer.toml             plus the probes the file declares\n  \
    serve --listen 0.0.0.0:9435            every interface (only when asked for)\n  \
    serve --config tracer.toml --check     check the file and this kernel, and exit\n\
    \n\
    Config file (TOML):\n  \
    [collectors]\n  \
    softirq = true\n  \
    forks = true\n  \
    runqueue = true\n  \
    kthreads = true\n  \
    reclaim = true          # off by default, as block, jbd2, workqueue\n  \
    comm_limit = 500\n  \
    device_limit = 64       # block devices, journals; function_limit: work functions\n  \
    buckets = \"1us..10s\"\n  \
    [[probe]]\n  \
    name = \"nginx_requests\"\n  \
    probe = \"u:/usr/sbin/nginx:ngx_http_process_request\"\n  \
    kind = \"counter\"        # or \"latency\" (with optional buckets = \"1us..10s\")")]
pub struct ServeArgs {
    /// Address to listen on: HOST:PORT, or :PORT for every interface.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9435", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// TLS and basic auth, in Prometheus exporter-toolkit's YAML (as node_exporter's
    /// --web.config.file); re-read when it changes. Default: plain HTTP.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
    /// Collectors and probes to serve (TOML; see below). Default: every built-in collector.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve even if a probe or collector cannot attach (reported in tracer_probe_attached).
    #[arg(long)]
    pub keep_going: bool,
    /// Check the config file, the probes it names and that this kernel can attach them (as
    /// the start would), and exit without serving.
    #[arg(long)]
    pub check: bool,
    /// Say how each probe was attached and why other mechanisms were not used.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => text.replace("localhost:", "127.0.0.1:"),
    };
    text.parse().map_err(|_| {
        format!("'{text}' is not an address to listen on (try 127.0.0.1:9435 or :9435)")
    })
}

pub async fn run(args: ServeArgs) -> Result<()> {
    // Everything the user wrote is checked before anything is loaded.
    let config = match &args.config {
        Some(path) => config::load(path)?,
        None => Config::default(),
    };
    if let Some(cgroup) = &config.collectors.cgroup {
        cgroup
            .install(&KernelBtf::new())
            .map_err(|e| anyhow!("{}: {e}", config.collectors.cgroup_place))?;
    }
    let web = args
        .web_config_file
        .as_deref()
        .map(web_config::Source::open)
        .transpose()?
        .map(std::sync::Arc::new);
    let scheme = match web.as_ref().and_then(|w| w.get().tls.clone()) {
        Some(_) => "https",
        None => "http",
    };
    if args.check {
        check_kernel_can_attach(&config)?;
        outln!(
            "{}: ok ({} probes; collectors: {})",
            args.config
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "default config".into()),
            config.probes.len(),
            enabled_collectors(&config).join(", ")
        );
        return Ok(());
    }
    // Bind before loading: a busy port should not cost a load and unload of every program.
    let listener = std::net::TcpListener::bind(args.listen).map_err(|e| {
        anyhow!(
            "cannot listen on {}: {e} (choose another --listen address)",
            args.listen
        )
    })?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let local = listener.local_addr()?;

    let mut exporter = Exporter::start(&config, &args)?;
    let (tx, mut rx) = mpsc::channel::<http::Exchange>(16);
    let described = web.as_ref().map(|w| format!(", {}", w.describe()));
    exporter.http = Some(http::spawn(listener, tx, web));
    errln!(
        "Serving metrics on {scheme}://{local}/metrics ({} programs attached{})... Hit Ctrl-C to end.",
        exporter.links,
        described.unwrap_or_default()
    );
    let stop = session::stop_requested(None);
    tokio::pin!(stop);
    // Housekeeping between scrapes: forget exited threads before their records fill the map.
    let mut housekeeping = tokio::time::interval(Duration::from_secs(10));
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            reason = &mut stop => { reason?; break; }
            Some((request, reply)) = rx.recv() => {
                let _ = reply.send(exporter.respond(&request));
            }
            _ = housekeeping.tick() => exporter.maintain(),
        }
    }
    errln!("Detaching...");
    drop(rx);
    drop(exporter);
    Ok(())
}

/// What the start would refuse for lack of a kernel feature, refused by `--check` too: the
/// sched collectors need BTF; k:/kr: probes need kprobes or fentry, tried as tplist -k tries them (the object is unloaded again).
fn check_kernel_can_attach(config: &Config) -> Result<()> {
    // The runqueue and kthreads collectors load the sched object, which reads task_struct at
    // offsets from kernel BTF: the start would fail without it, so --check fails too.
    let c = &config.collectors;
    for (on, name) in [(c.runqueue, "runqueue"), (c.kthreads, "kthreads")] {
        if on && let Err(e) = KernelBtf::new().task_offsets() {
            bail!(
                "collector {name} cannot start on this kernel: {e:#} (or set {name} = false under [collectors])"
            );
        }
    }
    let Some(probe) = config.probes.iter().find(|p| {
        p.probes.iter().any(|q| {
            matches!(
                q.kind,
                crate::probe_spec::Kind::Kprobe | crate::probe_spec::Kind::Kretprobe
            )
        })
    }) else {
        return Ok(());
    };
    if let Some(why) = crate::attach::kernel_functions_unavailable() {
        bail!(
            "probe '{}' ({}) cannot attach on this kernel: {why}",
            probe.name,
            probe.spec
        );
    }
    Ok(())
}

fn enabled_collectors(config: &Config) -> Vec<&'static str> {
    let c = &config.collectors;
    [
        (c.softirq, "softirq"),
        (c.forks, "forks"),
        (c.runqueue, "runqueue"),
        (c.kthreads, "kthreads"),
        (c.reclaim, "reclaim"),
        (c.block, "block"),
        (c.jbd2, "jbd2"),
        (c.workqueue, "workqueue"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect()
}

/// A source of metrics: owns its loaded object (dropping it detaches).
trait Collector {
    /// The `collector` label of its health metrics.
    fn name(&self) -> String;
    /// Adds its samples to the scrape; reads maps, never resets them.
    fn collect(&mut self, scrape: &mut Scrape) -> Result<()>;
    /// Kernel-side drop counters.
    fn stats(&self) -> Stats;
    /// Periodic upkeep between scrapes.
    fn maintain(&mut self) {}
}

/// How one probe (or one tracepoint of a collector) was attached: `rung` None when it failed
/// and `--keep-going` let the exporter start without it.
struct AttachRow {
    probe: String,
    rung: Option<String>,
}

struct Exporter {
    collectors: Vec<Box<dyn Collector>>,
    attached: Vec<AttachRow>,
    /// Links to the kernel (tracepoints, uprobes, ...) held open.
    links: usize,
    scrapes: u64,
    scrape_errors: HashMap<String, u64>,
    /// The HTTP layer's connection counts, once it serves.
    http: Option<std::sync::Arc<http::HttpStats>>,
}

impl Exporter {
    fn start(config: &Config, args: &ServeArgs) -> Result<Self> {
        let mut exporter = Self {
            collectors: Vec::new(),
            attached: Vec::new(),
            links: 0,
            scrapes: 0,
            scrape_errors: HashMap::new(),
            http: None,
        };
        let btf = KernelBtf::new();
        let c = &config.collectors;
        type Start<'a> = Box<dyn FnOnce() -> Result<(Box<dyn Collector>, Vec<Attachment>)> + 'a>;
        let mut builtins: Vec<(&str, Start<'_>)> = Vec::new();
        if c.softirq {
            builtins.push(("softirq", Box::new(|| Softirq::start(&btf, c.buckets))));
        }
        if c.forks {
            builtins.push(("forks", Box::new(|| Forks::start(c.comm_limit))));
        }
        if c.runqueue {
            builtins.push(("runqueue", Box::new(|| Runqueue::start(&btf, c.buckets))));
        }
        if c.kthreads {
            builtins.push(("kthreads", Box::new(|| Kthreads::start(&btf, c.comm_limit))));
        }
        let reclaim_buckets = c.reclaim_buckets.unwrap_or(c.buckets);
        let block_buckets = c.block_buckets.unwrap_or(c.buckets).microseconds();
        for (on, name, start) in [
            (
                c.reclaim,
                "reclaim",
                Box::new(|| Reclaim::start(&btf, reclaim_buckets)) as Start<'_>,
            ),
            (
                c.block,
                "block",
                Box::new(|| Block::start(&btf, c.device_limit, block_buckets)),
            ),
            (
                c.jbd2,
                "jbd2",
                Box::new(|| Jbd2::start(&btf, c.device_limit)),
            ),
            (
                c.workqueue,
                "workqueue",
                Box::new(|| Workqueue::start(&btf, c.function_limit)),
            ),
        ] {
            if !on {
                continue;
            }
            // A kernel without the collector's tracepoints: the others serve, one line says why.
            if let Some(why) = missing_tracepoint(name) {
                errln!("{TOOL}: collector {name} off: {why}");
                exporter.attached.push(AttachRow {
                    probe: name.to_string(),
                    rung: None,
                });
                continue;
            }
            builtins.push((name, start));
        }
        for (name, start) in builtins {
            match start() {
                Ok((collector, attachments)) => {
                    exporter.links += attachments.len();
                    for a in attachments {
                        if args.verbose {
                            errln!("{TOOL}: {name}: {}", a.summary());
                        }
                        exporter.attached.push(AttachRow {
                            probe: format!("{name}/{}", a.target),
                            rung: Some(a.mechanism.to_string()),
                        });
                    }
                    exporter.collectors.push(collector);
                }
                Err(e) => exporter.failed(name, name, &e, args.keep_going)?,
            }
        }
        for probe in &config.probes {
            match ProbeMetric::start(probe) {
                Ok(metric) => {
                    if args.verbose {
                        metric
                            .loaded
                            .print_summary(&format!("{TOOL}: {}", probe.name));
                    }
                    exporter.links += metric.loaded.links();
                    exporter.attached.push(AttachRow {
                        probe: probe.name.clone(),
                        rung: Some(metric.loaded.mechanisms.join("+")),
                    });
                    exporter.collectors.push(Box::new(metric));
                }
                Err(e) => {
                    let what = format!("probe '{}' ({})", probe.name, probe.spec);
                    exporter.failed(&probe.name, &what, &e, args.keep_going)?;
                }
            }
        }
        Ok(exporter)
    }

    /// A collector or probe that could not start: fatal, or noted with `--keep-going`.
    fn failed(
        &mut self,
        label: &str,
        what: &str,
        err: &anyhow::Error,
        keep_going: bool,
    ) -> Result<()> {
        if !keep_going {
            bail!(
                "{what}: {err:#} (--keep-going serves the rest and reports it in tracer_probe_attached)"
            );
        }
        errln!("{TOOL}: warning: {what} not attached: {err:#}");
        self.attached.push(AttachRow {
            probe: label.to_string(),
            rung: None,
        });
        Ok(())
    }

    fn respond(&mut self, request: &http::Request) -> http::Response {
        if request.method != "GET" && request.method != "HEAD" {
            return http::Response::text(405, "only GET and HEAD\n");
        }
        match request.path.as_str() {
            "/metrics" => {
                let format = Format::from_accept(&request.accept);
                http::Response {
                    status: 200,
                    content_type: format.content_type(),
                    body: self.render(format).into(),
                }
            }
            "/" => http::Response {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: "<html><head><title>tracer serve</title></head><body>\
                       <h1>tracer serve</h1><p>eBPF aggregates as Prometheus metrics: \
                       <a href=\"/metrics\">/metrics</a></p><p>On-CPU profile (pprof, \
                       kernel and user stacks): <a href=\"/debug/pprof/profile?seconds=30\">\
                       /debug/pprof/profile?seconds=30</a> (also pid=, kthreads=1, hz=)</p>\
                       </body></html>\n"
                    .into(),
            },
            "/-/healthy" => http::Response::text(200, "OK\n"),
            _ => http::Response::text(404, "not found: try /metrics\n"),
        }
    }

    fn render(&mut self, format: Format) -> String {
        let mut scrape = Scrape::new();
        let mut durations = Vec::new();
        for collector in &mut self.collectors {
            let started = Instant::now();
            if let Err(e) = collector.collect(&mut scrape) {
                let name = collector.name();
                errln!("{TOOL}: cannot read {name}: {e:#}");
                *self.scrape_errors.entry(name).or_default() += 1;
            }
            durations.push((collector.name(), started.elapsed()));
        }
        self.scrapes += 1;
        self.health(&mut scrape, &durations);
        scrape.render(format)
    }

    fn maintain(&mut self) {
        for collector in &mut self.collectors {
            collector.maintain();
        }
        // Every scrape allocates and frees its text, and the collectors' snapshots come and
        // go with the machine's threads: glibc keeps the pages freed between live blocks, and
        // over hours the exporter's RSS would creep up by them (the soak saw its floor rise
        // 10.1 → 12.5 MiB in 10 minutes with flat maps). Every 10 s this is cheap.
        loader::trim_heap();
    }

    fn health(&self, s: &mut Scrape, durations: &[(String, Duration)]) {
        s.gauge(
            "tracer_programs_attached",
            "BPF links (tracepoints, uprobes, ...) the exporter holds attached.",
            vec![],
            self.links as u64,
        );
        for row in &self.attached {
            s.gauge(
                "tracer_probe_attached",
                "1 when the probe is attached (rung: the mechanism used), 0 when it could not be (--keep-going).",
                vec![
                    ("probe", row.probe.clone()),
                    ("rung", row.rung.clone().unwrap_or_else(|| "none".into())),
                ],
                u64::from(row.rung.is_some()),
            );
        }
        type Field = (&'static str, &'static str, fn(&Stats) -> u64);
        let kinds: [Field; 3] = [
            (
                "tracer_lost_events_total",
                "Events the kernel side could not send (ring buffer full).",
                |s| s.lost,
            ),
            (
                "tracer_map_full_total",
                "Updates the kernel side could not count because a map was full.",
                |s| s.map_full,
            ),
            (
                "tracer_read_errors_total",
                "Kernel memory reads that failed in the BPF programs.",
                |s| s.read_errors,
            ),
        ];
        let stats: Vec<(String, Stats)> = self
            .collectors
            .iter()
            .map(|c| (c.name(), c.stats()))
            .collect();
        for (name, help, field) in kinds {
            for (collector, st) in &stats {
                s.counter(
                    name,
                    help,
                    vec![("collector", collector.clone())],
                    field(st),
                );
            }
        }
        for (collector, took) in durations {
            s.gauge(
                "tracer_scrape_duration_seconds",
                "Time this scrape spent reading each collector's maps.",
                vec![("collector", collector.clone())],
                took.as_secs_f64(),
            );
        }
        s.declare(
            "tracer_scrape_errors_total",
            Kind::Counter,
            "Scrapes in which a collector's maps could not be read.",
        );
        let mut errors: Vec<_> = self.scrape_errors.iter().collect();
        errors.sort();
        for (collector, n) in errors {
            s.counter(
                "tracer_scrape_errors_total",
                "Scrapes in which a collector's maps could not be read.",
                vec![("collector", collector.clone())],
                *n,
            );
        }
        s.counter(
            "tracer_scrapes_total",
            "Scrapes of /metrics served.",
            vec![],
            self.scrapes,
        );
        if let Some(http) = &self.http {
            http.report(s);
        }
        process_metrics(s);
    }
}

/// The standard `process_*` metrics of the exporter itself.
fn process_metrics(s: &mut Scrape) {
    // SAFETY: getrusage fills the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        s.counter(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            vec![],
            secs(usage.ru_utime) + secs(usage.ru_stime),
        );
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    if let Some(rss) = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
    {
        s.gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            vec![],
            rss * page,
        );
    }
}

/// Maps comm label values into at most `limit` distinct values; once the limit is reached,
/// new comms are counted under "other" (so every admitted series stays monotonic).
struct CommLabels {
    admitted: HashSet<String>,
    limit: usize,
}

impl CommLabels {
    fn new(limit: usize) -> Self {
        Self {
            admitted: HashSet::new(),
            limit,
        }
    }

    /// The label of one value: itself once admitted (while there is room), else "other".
    fn admit(&mut self, name: String) -> String {
        if self.admitted.contains(&name) {
            name
        } else if self.admitted.len() < self.limit {
            self.admitted.insert(name.clone());
            name
        } else {
            "other".to_string()
        }
    }

    /// Sums `values` per label, admitting new comms while there is room.
    fn fold(&mut self, values: impl IntoIterator<Item = (String, u64)>) -> BTreeMap<String, u64> {
        let mut sorted: Vec<(String, u64)> = values.into_iter().collect();
        // The biggest newcomers get the remaining room.
        sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut out = BTreeMap::new();
        for (comm, value) in sorted {
            *out.entry(self.admit(comm)).or_default() += value;
        }
        out
    }
}

// ---- softirq (softirq-top's object) ----------------------------------------------------------

struct Softirq {
    _ebpf: Ebpf,
    maps: softirq_top::Maps,
    online: Vec<u32>,
    stats: StatsReader,
    buckets: Buckets,
}

impl Softirq {
    fn start(btf: &KernelBtf, buckets: Buckets) -> Result<(Box<dyn Collector>, Vec<Attachment>)> {
        let online = aya::util::online_cpus()
            .map_err(|(_, e)| anyhow!("cannot read the online CPUs: {e}"))?;
        let feeds = softirq_top::Feeds::probe(btf);
        let config = SoftirqConfig {
            tp_vec_offset: feeds.tp_vec_offset,
            runtime_hist: 1,
            hist_ns: 1,
            ..SoftirqConfig::DEFAULT
        };
        let mut ebpf = softirq_top::load_object(&config, None, false)?;
        let (state, _) = softirq_top::init_cpu_state(&mut ebpf)?;
        let attachments = softirq_top::attach_core(&mut ebpf, btf, None)?;
        let maps = softirq_top::Maps {
            state,
            runtime: Some(loader::take(&mut ebpf, "RUNTIME_HIST")?),
            latency: None,
            napi: None,
            net_rx_action: None,
        };
        let stats = StatsReader::take(&mut ebpf)?;
        let collector = Self {
            _ebpf: ebpf,
            maps,
            online,
            stats,
            buckets,
        };
        Ok((Box::new(collector), attachments))
    }
}

impl Collector for Softirq {
    fn name(&self) -> String {
        "softirq".into()
    }

    fn collect(&mut self, s: &mut Scrape) -> Result<()> {
        let snap = softirq_top::Reader {
            maps: &self.maps,
            selected: &self.online,
        }
        .read()?;
        let mut vec_time = [0u64; NR_SOFTIRQS];
        for &cpu in &self.online {
            let Some(state) = snap.cpus.get(cpu as usize) else {
                continue;
            };
            for (v, name) in VEC_NAMES.iter().enumerate() {
                let c = &state.vecs[v];
                let entries: u64 = c.count[..NR_CTX].iter().sum();
                let ns: u64 = c.time_ns[..NR_CTX].iter().sum();
                vec_time[v] += ns;
                let labels = vec![("cpu", cpu.to_string()), ("vector", name.to_string())];
                s.counter(
                    "tracer_softirq_entries_total",
                    "Softirqs served, per CPU and vector.",
                    labels.clone(),
                    entries,
                );
                s.counter(
                    "tracer_softirq_seconds_total",
                    "Time spent serving softirqs, per CPU and vector.",
                    labels,
                    ns as f64 / 1e9,
                );
            }
            s.counter(
                "tracer_ksoftirqd_seconds_total",
                "On-CPU time of each CPU's ksoftirqd thread.",
                vec![("cpu", cpu.to_string())],
                state.ksoftirqd_ns as f64 / 1e9,
            );
        }
        for (v, name) in VEC_NAMES.iter().enumerate() {
            let slots = snap.runtime.get(v).cloned().unwrap_or_else(Log2::new);
            s.histogram(
                "tracer_softirq_runtime_seconds",
                "Run time of each softirq (entry to exit), per vector.",
                vec![("vector", name.to_string())],
                slots,
                Some(vec_time[v]),
                self.buckets,
            );
        }
        Ok(())
    }

    fn stats(&self) -> Stats {
        self.stats.read()
    }
}

// ---- forks (forksnoop's object, counting per parent comm) -------------------------------------

struct Forks {
    _ebpf: Ebpf,
    counts: PerCpuHashMap<MapData, ParentKey, ParentCounts>,
    stats: StatsReader,
    comms: CommLabels,
}

impl Forks {
    fn start(comm_limit: usize) -> Result<(Box<dyn Collector>, Vec<Attachment>)> {
        let config = ForkConfig {
            emit_events: 0,
            count_parents: 1,
            parents_by_comm: 1,
            ..ForkConfig::DEFAULT
        };
        let (mut ebpf, attachment) = forksnoop::load_and_attach(config, None)?;
        let counts = loader::take(&mut ebpf, "PARENT_COUNTS")?;
        let stats = StatsReader::take(&mut ebpf)?;
        let collector = Self {
            _ebpf: ebpf,
            counts,
            stats,
            comms: CommLabels::new(comm_limit),
        };
        Ok((Box::new(collector), vec![attachment]))
    }
}

impl Collector for Forks {
    fn name(&self) -> String {
        "forks".into()
    }

    fn collect(&mut self, s: &mut Scrape) -> Result<()> {
        let totals = forksnoop::snapshot(&self.counts);
        let per_comm = self.comms.fold(
            totals
                .into_iter()
                .map(|(key, c)| (comm_str(&key.comm), c.processes + c.threads)),
        );
        s.declare("tracer_forks_total", Kind::Counter, FORKS_HELP);
        for (comm, n) in per_comm {
            s.counter(
                "tracer_forks_total",
                FORKS_HELP,
                vec![("parent_comm", comm)],
                n,
            );
        }
        Ok(())
    }

    fn stats(&self) -> Stats {
        self.stats.read()
    }
}

const FORKS_HELP: &str = "Forks (new processes and threads), per parent command name.";

// ---- run-queue latency (runqlat's view of the sched object) -----------------------------------

struct Runqueue {
    _ebpf: Ebpf,
    hists: PerCpuHashMap<MapData, HistKey, Log2Hist>,
    stats: StatsReader,
    buckets: Buckets,
}

impl Runqueue {
    fn start(btf: &KernelBtf, buckets: Buckets) -> Result<(Box<dyn Collector>, Vec<Attachment>)> {
        let config = SchedConfig {
            unit_div: 1,
            ..SchedConfig::DEFAULT
        };
        let mut ebpf = runqlat::load(btf, config, runqlat::SchedTool::Runqlat)?;
        let mut attachments = runqlat::attach_wakeups(&mut ebpf, btf, None)?;
        attachments.push(runqlat::attach_switch(&mut ebpf, btf, "runqlat", None)?);
        let hists = loader::take(&mut ebpf, "HISTS")?;
        let stats = StatsReader::take(&mut ebpf)?;
        let collector = Self {
            _ebpf: ebpf,
            hists,
            stats,
            buckets,
        };
        Ok((Box::new(collector), attachments))
    }
}

impl Collector for Runqueue {
    fn name(&self) -> String {
        "runqueue".into()
    }

    fn collect(&mut self, s: &mut Scrape) -> Result<()> {
        let mut all = Log2::new();
        for hist in runqlat::snapshot(&self.hists).values() {
            all.merge(hist);
        }
        s.histogram(
            "tracer_runqueue_latency_seconds",
            "Time runnable tasks waited on a run queue (wakeup or preemption to running).",
            vec![],
            all,
            None,
            self.buckets,
        );
        Ok(())
    }

    fn stats(&self) -> Stats {
        self.stats.read()
    }
}

// ---- kernel threads' on-CPU time (ktop's view of the sched object) -----------------------------

struct Kthreads {
    _ebpf: Ebpf,
    view: ktop::View,
    before: Option<ktop::Snapshot>,
    /// On-CPU ns of kernel threads that exited, per comm (their records are removed).
    exited: HashMap<String, u64>,
    comms: CommLabels,
}

impl Kthreads {
    fn start(btf: &KernelBtf, comm_limit: usize) -> Result<(Box<dyn Collector>, Vec<Attachment>)> {
        let mut ebpf = runqlat::load(btf, SchedConfig::DEFAULT, runqlat::SchedTool::Ktop)?;
        let mut attachments = runqlat::attach_wakeups(&mut ebpf, btf, None)?;
        attachments.push(runqlat::attach_switch(&mut ebpf, btf, "ktop", None)?);
        let view = ktop::View::new(&mut ebpf, false)?;
        let collector = Self {
            _ebpf: ebpf,
            view,
            before: None,
            exited: HashMap::new(),
            comms: CommLabels::new(comm_limit),
        };
        Ok((Box::new(collector), attachments))
    }

    /// On-CPU ns per comm of every kernel thread seen, exited ones included; forgets the
    /// records of threads that exited since the previous call.
    fn totals(&mut self) -> HashMap<String, u64> {
        let mut now = self.view.snapshot();
        if let Some(before) = &self.before {
            for (key, stats) in self.view.forget_dead(&mut now, before) {
                if key.pid != 0 && stats.task_flags & PF_KTHREAD != 0 {
                    *self.exited.entry(comm_str(&stats.comm)).or_default() += stats.oncpu_ns;
                }
            }
        }
        let mut totals = self.exited.clone();
        for (key, stats) in &now.threads {
            if key.pid != 0 && stats.task_flags & PF_KTHREAD != 0 {
                *totals.entry(comm_str(&stats.comm)).or_default() += stats.oncpu_ns;
            }
        }
        self.before = Some(now);
        totals
    }
}

impl Collector for Kthreads {
    fn name(&self) -> String {
        "kthreads".into()
    }

    fn collect(&mut self, s: &mut Scrape) -> Result<()> {
        let totals = self.totals();
        for (comm, ns) in self.comms.fold(totals) {
            s.counter(
                "tracer_kthread_cpu_seconds_total",
                "On-CPU time of kernel threads, per command name (from sched_switch).",
                vec![("comm", comm)],
                ns as f64 / 1e9,
            );
        }
        Ok(())
    }

    fn stats(&self) -> Stats {
        self.view.stats()
    }

    fn maintain(&mut self) {
        let _ = self.totals();
    }
}

// ---- the kernel-thread collectors: reclaim, block, jbd2, workqueue ----------------------------

/// The tracepoints a collector cannot do without; `Some(why)` names the first one this kernel
/// lacks (the collector is left out and the others serve).
fn missing_tracepoint(collector: &str) -> Option<String> {
    let events: Vec<(&str, &str)> = match collector {
        "reclaim" => reclaimtop::EVENTS.iter().map(|&(c, e, _)| (c, e)).collect(),
        "block" => vec![("block", "block_rq_issue"), ("block", "block_rq_complete")],
        "jbd2" => vec![("jbd2", "jbd2_run_stats")],
        "workqueue" => vec![
            ("workqueue", "workqueue_queue_work"),
            ("workqueue", "workqueue_execute_start"),
            ("workqueue", "workqueue_execute_end"),
        ],
        _ => return None,
    };
    // Without tracefs the start itself says what is wrong.
    let root = tracefs::root().ok()?;
    let (category, event) = events
        .into_iter()
        .find(|(c, e)| !root.join("events").join(c).join(e).is_dir())?;
    let hint = match category {
        "jbd2" => {
            " (jbd2 is not loaded: mount an ext4 file system or modprobe jbd2 before serve starts)"
        }
        _ => "",
    };
    Some(format!(
        "this kernel has no tracepoint {category}:{event}{hint}"
    ))
}

/// Kernel function names from addresses (work functions), cached.
#[derive(Default)]
struct KernelNames {
    symbols: Option<Symbols>,
    names: HashMap<u64, String>,
}

impl KernelNames {
    fn name(&mut self, address: u64) -> String {
        let symbols = self.symbols.get_or_insert_with(Symbols::new);
        crate::stacks::kernel_function_name(symbols, &mut self.names, address)
    }
}

const RECLAIM_MODES: [&str; 3] = ["kswapd", "direct", "memcg"];

/// reclaimtop's object without filters: the running page totals, kswapd per node, and the
/// per-process stall records and histograms drained into per-kind totals here (the kernel
/// keys them by process; a long-running exporter would fill the maps otherwise).
struct Reclaim {
    _ebpf: Ebpf,
    totals: PerCpuArray<MapData, ReclaimTotals>,
    nodes: Array<MapData, NodeStats>,
    stalls: PerCpuHashMap<MapData, StallKey, StallStats>,
    hists: PerCpuHashMap<MapData, StallKey, Log2Hist>,
    shrinkers: PerCpuHashMap<MapData, u64, ShrinkerStats>,
    wakers: PerCpuHashMap<MapData, u32, WakerStats>,
    ooms: BpfHashMap<MapData, u32, OomKill>,
    stats: StatsReader,
    buckets: Buckets,
    /// Per kind (direct, memcg): stall slots, summed stall ns.
    stall_hist: [Log2; 2],
    stall_ns: [u64; 2],
    oom_kills: u64,
}

impl Reclaim {
    fn start(btf: &KernelBtf, buckets: Buckets) -> Result<(Box<dyn Collector>, Vec<Attachment>)> {
        let base = ReclaimConfig {
            histograms: 1,
            unit_div: 1,
            ..ReclaimConfig::DEFAULT
        };
        let (mut ebpf, attachments) = reclaimtop::load_and_attach(btf, base, None)?;
        let collector = Self {
            totals: loader::take(&mut ebpf, "TOTALS")?,
            nodes: loader::take(&mut ebpf, "NODES")?,
            stalls: loader::take(&mut ebpf, "STALLS")?,
            hists: loader::take(&mut ebpf, "HISTS")?,
            shrinkers: loader::take(&mut ebpf, "SHRINKERS")?,
            wakers: loader::take(&mut ebpf, "WAKERS")?,
            ooms: loader::take(&mut ebpf, "OOMS")?,
            stats: StatsReader::take(&mut ebpf)?,
            _ebpf: ebpf,
            buckets,
            stall_hist: [Log2::new(), Log2::new()],
            stall_ns: [0; 2],
            oom_kills: 0,
        };
        Ok((Box::new(collector), attachments))
    }

    /// Folds the per-process records into the per-kind totals and empties the maps serve
    /// does not show.
    fn drain(&mut self) -> Result<()> {
        let kind = |k: u32| usize::from(k == KIND_MEMCG);
        for (key, per_cpu) in loader::drain_per_cpu::<StallKey, Log2Hist>(self.hists.map())? {
            self.stall_hist[kind(key.kind)].merge(&Log2::from_per_cpu(per_cpu.iter()));
        }
        for (key, per_cpu) in loader::drain_per_cpu::<StallKey, StallStats>(self.stalls.map())? {
            self.stall_ns[kind(key.kind)] += per_cpu.iter().map(|s| s.total_ns).sum::<u64>();
        }
        loader::drain_per_cpu::<u64, ShrinkerStats>(self.shrinkers.map())?;
        loader::drain_per_cpu::<u32, WakerStats>(self.wakers.map())?;
        let victims: Vec<u32> = self.ooms.keys().flatten().collect();
        for victim in victims {
            if self.ooms.remove(&victim).is_ok() {
                self.oom_kills += 1;
            }
        }
        Ok(())
    }
}

impl Collector for Reclaim {
    fn name(&self) -> String {
        "reclaim".into()
    }

    fn collect(&mut self, s: &mut Scrape) -> Result<()> {
        self.drain()?;
        let t = reclaimtop::read_totals(&self.totals);
        let pages = [
            (t.kswapd_scanned, t.kswapd_reclaimed),
            (t.direct_scanned, t.direct_reclaimed),
            (t.memcg_scanned, t.memcg_reclaimed),
        ];
        for (mode, (scanned, reclaimed)) in RECLAIM_MODES.iter().zip(pages) {
            let labels = vec![("mode", mode.to_string())];
            s.counter(
                "tracer_reclaim_pages_scanned_total",
                "Pages scanned on the inactive LRU lists, by who reclaimed (mm_vmscan_lru_shrink_inactive).",
                labels.clone(),
                scanned,
            );
            s.counter(
                "tracer_reclaim_pages_reclaimed_total",
                "Pages reclaimed from the inactive LRU lists, by who reclaimed; over scanned: reclaim efficiency.",
                labels,
                reclaimed,
            );
        }
        for kind in [KIND_DIRECT, KIND_MEMCG] {
            let k = usize::from(kind == KIND_MEMCG);
            s.histogram(
                "tracer_reclaim_stall_seconds",
                "Time tasks stalled in direct or memcg reclaim (reclaim begin to end), by mode.",
                vec![("mode", reclaimtop::kind_name(kind).to_string())],
                self.stall_hist[k].clone(),
                Some(self.stall_ns[k]),
                self.buckets,
            );
        }
        let now = Clock::now_monotonic_ns();
        for nid in 0..MAX_NODES {
            let Ok(node) = self.nodes.get(&nid, 0) else {
                continue;
            };
            if node.pid == 0 && node.wakeups == 0 {
                continue;
            }
            let open = if node.woke_at_ns != 0 {
                now.saturating_sub(node.woke_at_ns)
            } else {
                0
            };
            let labels = vec![("node", nid.to_string())];
            s.counter(
                "tracer_kswapd_wakeups_total",
                "kswapd wakeups, per NUMA node.",
                labels.clone(),
                node.wakeups,
            );
            s.counter(
                "tracer_kswapd_awake_seconds_total",
                "Time kswapd was awake (wake to sleep), per NUMA node.",
                labels,
                (node.awake_ns + open) as f64 / 1e9,
            );
        }
        s.counter(
            "tracer_oom_kills_total",
            "Processes the OOM killer chose (oom:mark_victim).",
            vec![],
            self.oom_kills,
        );
        Ok(())
    }

    fn stats(&self) -> Stats {
        self.stats.read()
    }

    fn maintain(&mut self) {
        let _ = self.drain();
    }
}

/// Direction label values, by `RW_*`.
const BLOCK_OPS: [&str; 4] = ["read", "write", "discard", "other"];

/// biotop's block object without filters, latency from issue to completion with the
/// per-device histogram on; its per-task rows drained into per-device totals here.
struct Block {
    _ebpf: Ebpf,
    io: aya::maps::MapData,
    latency: aya::maps::MapData,
    stats: StatsReader,
    buckets: Buckets,
    devices: biotop::Devices,
    labels: CommLabels,
    /// (device label, RW_*) → (requests, bytes).
    io_totals: BTreeMap<(String, u32), (u64, u64)>,
    /// device label → (µs slots, summed latency ns).
    hists: BTreeMap<String, (Log2, u64)>,
}

impl Block {
    fn start(
        btf: &KernelBtf,
        device_limit: usize,
        buckets: Buckets,
    ) -> Result<(Box<dyn Collector>, Vec<Attachment>)> {
        let config = BiotopConfig {
            hist: 1,
            ..BiotopConfig::DEFAULT
        };
        let (mut ebpf, attachments) = biotop::load_block(btf, config, None)?;
        let per_cpu = |ebpf: &mut Ebpf, name: &str| -> Result<MapData> {
            match biotop::take_map(ebpf, name)? {
                aya::maps::Map::PerCpuHashMap(data) => Ok(data),
                _ => bail!("{name} is not a per-CPU hash map (build bug)"),
            }
        };
        let collector = Self {
            io: per_cpu(&mut ebpf, "IO")?,
            latency: per_cpu(&mut ebpf, "LATENCY")?,
            stats: StatsReader::take(&mut ebpf)?,
            _ebpf: ebpf,
            buckets,
            devices: biotop::Devices::default(),
            labels: CommLabels::new(device_limit),
            io_totals: BTreeMap::new(),
            hists: BTreeMap::new(),
        };
        Ok((Box::new(collector), attachments))
    }

    fn drain(&mut self) -> Result<()> {
        let rows = biotop::fold_io(loader::drain_per_cpu::<IoKey, IoStats>(&self.io)?);
        let hists = loader::drain_per_cpu::<u32, Log2Hist>(&self.latency)?;
        for ((dev, _tgid, rw, _comm), row) in rows {
            let label = self.labels.admit(self.devices.name(dev));
            let total = self.io_totals.entry((label.clone(), rw)).or_default();
            total.0 += row.ios;
            total.1 += row.bytes;
            self.hists
                .entry(label)
                .or_insert_with(|| (Log2::new(), 0))
                .1 += row.latency_ns;
        }
        for (dev, per_cpu) in hists {
            let label = self.labels.admit(self.devices.name(dev));
            self.hists
                .entry(label)
                .or_insert_with(|| (Log2::new(), 0))
                .0
                .merge(&Log2::from_per_cpu(per_cpu.iter()));
        }
        Ok(())
    }
}

impl Collector for Block {
    fn name(&self) -> String {
        "block".into()
    }

    fn collect(&mut self, s: &mut Scrape) -> Result<()> {
        self.drain()?;
        s.declare(
            "tracer_block_io_requests_total",
            Kind::Counter,
            BLOCK_REQUESTS_HELP,
        );
        s.declare(
            "tracer_block_io_bytes_total",
            Kind::Counter,
            BLOCK_BYTES_HELP,
        );
        for ((device, rw), (ios, bytes)) in &self.io_totals {
            let labels = vec![
                ("device", device.clone()),
                ("op", BLOCK_OPS[(*rw as usize).min(3)].to_string()),
            ];
            s.counter(
                "tracer_block_io_requests_total",
                BLOCK_REQUESTS_HELP,
                labels.clone(),
                *ios,
            );
            s.counter(
                "tracer_block_io_bytes_total",
                BLOCK_BYTES_HELP,
                labels,
                *bytes,
            );
        }
        s.declare(
            "tracer_block_io_latency_seconds",
            Kind::Histogram,
            BLOCK_LATENCY_HELP,
        );
        for (device, (slots, sum_ns)) in &self.hists {
            s.histogram(
                "tracer_block_io_latency_seconds",
                BLOCK_LATENCY_HELP,
                vec![("device", device.clone())],
                slots.clone(),
                // The slots are µs: the sum goes in the same unit.
                Some(sum_ns / 1000),
                self.buckets,
            );
        }
        Ok(())
    }

    fn stats(&self) -> Stats {
        self.stats.read()
    }

    fn maintain(&mut self) {
        let _ = self.drain();
    }
}

const BLOCK_REQUESTS_HELP: &str =
    "Block requests completed, per device and direction (block_rq_complete).";
const BLOCK_BYTES_HELP: &str = "Bytes of completed block requests, per device and direction.";
const BLOCK_LATENCY_HELP: &str =
    "Block request latency, issue to completion, per device (µs resolution).";

/// biotop's jbd2 object, commits only (jbd2_run_stats): per journal, the commit count and
/// the phase times jbd2 reports in jiffies, drained into totals here.
struct Jbd2 {
    _ebpf: Ebpf,
    commits: aya::maps::MapData,
    stats: StatsReader,
    hz: u64,
    devices: biotop::Devices,
    labels: CommLabels,
    /// journal label → totals.
    totals: BTreeMap<String, CommitStats>,
}

impl Jbd2 {
    fn start(
        btf: &KernelBtf,
        device_limit: usize,
    ) -> Result<(Box<dyn Collector>, Vec<Attachment>)> {
        let hz = biotop::kernel_hz();
        if hz == 0 {
            bail!(
                "cannot tell this kernel's HZ (jbd2 reports jiffies): no /boot/config-$(uname -r) and no /proc/timer_list"
            );
        }
        let (mut ebpf, attachments) = biotop::load_jbd2(btf, BiotopConfig::DEFAULT, None, false)?;
        let commits = match biotop::take_map(&mut ebpf, "COMMITS")? {
            aya::maps::Map::PerCpuHashMap(data) => data,
            _ => bail!("COMMITS is not a per-CPU hash map (build bug)"),
        };
        let collector = Self {
            commits,
            stats: StatsReader::take(&mut ebpf)?,
            _ebpf: ebpf,
            hz,
            devices: biotop::Devices::default(),
            labels: CommLabels::new(device_limit),
            totals: BTreeMap::new(),
        };
        Ok((Box::new(collector), attachments))
    }

    fn drain(&mut self) -> Result<()> {
        let drained = loader::drain_per_cpu::<u32, CommitStats>(&self.commits)?;
        for (dev, c) in biotop::fold_commits(drained) {
            let device = self.devices.name(dev);
            let journal = biotop::journal_name(&device).unwrap_or(device);
            let label = self.labels.admit(journal);
            let t = self.totals.entry(label).or_default();
            t.commits += c.commits;
            t.running += c.running;
            t.locked += c.locked;
            t.flushing += c.flushing;
            t.logging += c.logging;
            t.handles += c.handles;
            t.blocks += c.blocks;
            t.blocks_logged += c.blocks_logged;
        }
        Ok(())
    }
}

impl Collector for Jbd2 {
    fn name(&self) -> String {
        "jbd2".into()
    }

    fn collect(&mut self, s: &mut Scrape) -> Result<()> {
        self.drain()?;
        let secs = |jiffies: u64| jiffies as f64 / self.hz as f64;
        s.declare(
            "tracer_jbd2_commit_seconds",
            Kind::Summary,
            JBD2_COMMIT_HELP,
        );
        for (journal, t) in &self.totals {
            let labels = vec![("journal", journal.clone())];
            s.summary(
                "tracer_jbd2_commit_seconds",
                JBD2_COMMIT_HELP,
                labels.clone(),
                secs(t.locked + t.flushing + t.logging),
                t.commits,
            );
            for (phase, jiffies) in [
                ("running", t.running),
                ("locked", t.locked),
                ("flushing", t.flushing),
                ("logging", t.logging),
            ] {
                s.counter(
                    "tracer_jbd2_phase_seconds_total",
                    "Time jbd2 transactions spent in each phase (jbd2_run_stats, jiffy resolution).",
                    vec![("journal", journal.clone()), ("phase", phase.to_string())],
                    secs(jiffies),
                );
            }
            s.counter(
                "tracer_jbd2_handles_total",
                "Journal handles in the committed transactions.",
                labels.clone(),
                t.handles,
            );
            s.counter(
                "tracer_jbd2_blocks_logged_total",
                "Journal blocks written by the commits.",
                labels,
                t.blocks_logged,
            );
        }
        Ok(())
    }

    fn stats(&self) -> Stats {
        self.stats.read()
    }

    fn maintain(&mut self) {
        let _ = self.drain();
    }
}

const JBD2_COMMIT_HELP: &str =
    "jbd2 transaction commits (locked + flushing + logging time, jiffy resolution), per journal.";

/// wqtop's object without filters: per-function running totals in the kernel (never reset,
/// read as they are); the per-queuer and per-worker records serve does not show are emptied.
struct Workqueue {
    _ebpf: Ebpf,
    funcs: PerCpuHashMap<MapData, FuncKey, FuncStats>,
    queuers: PerCpuHashMap<MapData, QueuerKey, QueuerStats>,
    workers: PerCpuHashMap<MapData, WorkerKey, WorkerStats>,
    stats: StatsReader,
    names: KernelNames,
    labels: CommLabels,
}

impl Workqueue {
    fn start(
        btf: &KernelBtf,
        function_limit: usize,
    ) -> Result<(Box<dyn Collector>, Vec<Attachment>)> {
        let config = wqtop::offsets(btf)?;
        let (mut ebpf, attachments) = wqtop::load_and_attach(btf, config, None)?;
        let collector = Self {
            funcs: loader::take(&mut ebpf, "FUNCS")?,
            queuers: loader::take(&mut ebpf, "QUEUERS")?,
            workers: loader::take(&mut ebpf, "WORKERS")?,
            stats: StatsReader::take(&mut ebpf)?,
            _ebpf: ebpf,
            names: KernelNames::default(),
            labels: CommLabels::new(function_limit),
        };
        Ok((Box::new(collector), attachments))
    }
}

impl Collector for Workqueue {
    fn name(&self) -> String {
        "workqueue".into()
    }

    fn collect(&mut self, s: &mut Scrape) -> Result<()> {
        // Summed per function name over workqueues and CPUs.
        let mut per_function: HashMap<String, FuncStats> = HashMap::new();
        for entry in self.funcs.iter() {
            let (key, per_cpu) = entry?;
            let t = per_function
                .entry(self.names.name(key.function))
                .or_default();
            for v in per_cpu.iter() {
                t.runs += v.runs;
                t.ended += v.ended;
                t.run_ns += v.run_ns;
                t.waited += v.waited;
                t.latency_ns += v.latency_ns;
            }
        }
        // The busiest functions get the room left; the rest are summed under "other".
        let mut sorted: Vec<(String, FuncStats)> = per_function.into_iter().collect();
        sorted.sort_by(|a, b| b.1.run_ns.cmp(&a.1.run_ns).then(a.0.cmp(&b.0)));
        let mut labelled: BTreeMap<String, FuncStats> = BTreeMap::new();
        for (function, v) in sorted {
            let t = labelled.entry(self.labels.admit(function)).or_default();
            t.runs += v.runs;
            t.ended += v.ended;
            t.run_ns += v.run_ns;
            t.waited += v.waited;
            t.latency_ns += v.latency_ns;
        }
        s.declare("tracer_workqueue_runs_total", Kind::Counter, WQ_RUNS_HELP);
        s.declare(
            "tracer_workqueue_work_seconds_total",
            Kind::Counter,
            WQ_SECONDS_HELP,
        );
        s.declare(
            "tracer_workqueue_queue_wait_seconds_total",
            Kind::Counter,
            WQ_WAIT_HELP,
        );
        for (function, t) in labelled {
            let labels = vec![("function", function)];
            s.counter(
                "tracer_workqueue_runs_total",
                WQ_RUNS_HELP,
                labels.clone(),
                t.runs,
            );
            s.counter(
                "tracer_workqueue_work_seconds_total",
                WQ_SECONDS_HELP,
                labels.clone(),
                t.run_ns as f64 / 1e9,
            );
            s.counter(
                "tracer_workqueue_queue_wait_seconds_total",
                WQ_WAIT_HELP,
                labels,
                t.latency_ns as f64 / 1e9,
            );
        }
        Ok(())
    }

    fn stats(&self) -> Stats {
        self.stats.read()
    }

    fn maintain(&mut self) {
        let _ = loader::drain_per_cpu::<QueuerKey, QueuerStats>(self.queuers.map());
        let _ = loader::drain_per_cpu::<WorkerKey, WorkerStats>(self.workers.map());
    }
}

const WQ_RUNS_HELP: &str = "Work items run (workqueue_execute_start), per work function.";
const WQ_SECONDS_HELP: &str =
    "Time work items ran in the worker (execute_start to execute_end), per work function.";
const WQ_WAIT_HELP: &str =
    "Time work items waited from queue_work to execute_start, per work function.";

// ---- probes from the config file (funccount / funclatency) -------------------------------------

struct ProbeMetric {
    config: ProbeConfig,
    loaded: Loaded,
}

impl ProbeMetric {
    fn start(config: &ProbeConfig) -> Result<Self> {
        let latency = config.kind == ProbeKind::Latency;
        let loaded = probe_attach::attach_all(&Request {
            probes: &config.probes,
            config: ProbesConfig {
                mode: if latency { MODE_LATENCY } else { MODE_COUNT },
                per_probe: 0,
                unit_div: 1,
                ..ProbesConfig::DEFAULT
            },
            pid: None,
            force: None,
            entry_and_return: latency,
            needs_record: false,
        })?;
        Ok(Self {
            config: config.clone(),
            loaded,
        })
    }
}

impl Collector for ProbeMetric {
    fn name(&self) -> String {
        format!("probe:{}", self.config.name)
    }

    fn collect(&mut self, s: &mut Scrape) -> Result<()> {
        let labels = vec![("probe", self.config.name.clone())];
        match self.config.kind {
            ProbeKind::Counter => {
                let hits: u64 = self.loaded.counts(self.config.probes.len())?.iter().sum();
                s.counter(
                    "tracer_probe_hits_total",
                    "Hits of each configured counter probe.",
                    labels,
                    hits,
                );
            }
            ProbeKind::Latency => {
                let mut total = Hist::default();
                for hist in self.loaded.hists(false)?.values() {
                    total.merge(hist);
                }
                let slots = if total.log2.slots.is_empty() {
                    Log2::new()
                } else {
                    total.log2
                };
                s.histogram(
                    "tracer_probe_latency_seconds",
                    "Entry-to-return time of each configured latency probe.",
                    labels,
                    slots,
                    Some(total.sum),
                    self.config.buckets,
                );
            }
        }
        Ok(())
    }

    fn stats(&self) -> Stats {
        self.loaded.stats().common
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen(":9435").unwrap(),
            "0.0.0.0:9435".parse().unwrap()
        );
        assert_eq!(
            parse_listen("localhost:1").unwrap(),
            "127.0.0.1:1".parse().unwrap()
        );
        assert!(parse_listen("[::1]:9435").is_ok());
        assert!(parse_listen("nowhere").is_err());
    }

    #[test]
    fn comm_labels_stay_bounded_and_monotonic() {
        let mut labels = CommLabels::new(2);
        let first = labels.fold([("a".into(), 5), ("b".into(), 1)]);
        assert_eq!(first.len(), 2);
        let second = labels.fold([("a".into(), 6), ("b".into(), 1), ("c".into(), 9)]);
        assert_eq!(second.get("c"), None);
        assert_eq!(second.get("other"), Some(&9));
        assert_eq!(second.get("a"), Some(&6));
        // Devices and work functions go through the same cap.
        assert_eq!(labels.admit("a".into()), "a");
        assert_eq!(labels.admit("loop9".into()), "other");
    }
}

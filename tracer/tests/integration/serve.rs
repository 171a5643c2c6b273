//! `tracer serve` against ground truth: config errors refused before anything loads, the
//! exposition checked by Debian's `promtool`, exact counters for known workloads (forks of a
//! uniquely named workload, curl requests to nginx counted by a uprobe), and a real Prometheus
//! scraping the exporter every second and answering queries over its HTTP API.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::common::{
    Need, Running, WORKLOAD, assert_nothing_loaded, ensure, fail, kernel_has_uprobe_multi, run,
    start, trial,
};
use testbed::nginx::{Nginx, curl, free_local_port, wait_access_log};

const NGX_REQUEST: &str = "u:/usr/sbin/nginx:ngx_http_process_request";
/// Name prefixes of every program `serve` loads (softirq, forksnoop, sched, probes objects).
const OUR_PROGRAMS: &[&str] = &[
    "softirq_",
    "sched_switch_",
    "forksnoop_",
    "runqlat_",
    "ktop_",
    "sched_w",
    "probes_",
];

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "serve::config_errors_are_one_line",
            &[Need::Root],
            config_errors,
        ),
        trial(
            "serve::metrics_pass_promtool_and_count_exactly",
            &[Need::Root, Need::Tracefs, Need::Command("promtool")],
            promtool_and_exact_forks,
        ),
        trial(
            "serve::keep_going_reports_unattached_probe",
            &[Need::Root],
            keep_going,
        ),
        trial(
            "serve::prometheus_scrapes_exact_increases",
            &[
                Need::Root,
                Need::Tracefs,
                Need::Command("prometheus"),
                Need::Command("curl"),
                Need::Command("nginx"),
            ],
            prometheus_end_to_end,
        ),
    ]
}

fn nothing_loaded() -> Result<(), Failed> {
    OUR_PROGRAMS
        .iter()
        .try_for_each(|p| assert_nothing_loaded(p))
}

/// A scratch directory, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(what: &str) -> Result<Self, Failed> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tracer-serve-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("cannot create dir: {e}")))?;
        Ok(Self(dir))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn write(&self, name: &str, text: &str) -> Result<String, Failed> {
        let path = self.0.join(name);
        std::fs::write(&path, text).map_err(|e| fail(format!("cannot write {name}: {e}")))?;
        Ok(path.display().to_string())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// GET `path` from `addr` over HTTP/1.1 (Connection: close): (status, body).
pub(crate) fn http_get(
    addr: &str,
    path: &str,
    accept: Option<&str>,
) -> Result<(u16, String), Failed> {
    http_request(addr, "GET", path, accept)
}

fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    accept: Option<&str>,
) -> Result<(u16, String), Failed> {
    let mut stream =
        TcpStream::connect(addr).map_err(|e| fail(format!("cannot connect to {addr}: {e}")))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| fail(e.to_string()))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    // One write (a request in several segments can wait on delayed ACKs).
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| fail(format!("reading {path} from {addr}: {e}")))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail(format!("no HTTP head in {response:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fail(format!("bad status line: {head}")))?;
    Ok((status, body.to_string()))
}

/// The value of the sample `name{labels}` (labels exactly as rendered) in an exposition.
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `tracer serve ARGS --listen 127.0.0.1:<free port>`, attached; returns it and the address.
pub(crate) fn serve(args: &[&str]) -> Result<(Running, String), Failed> {
    let addr = format!("127.0.0.1:{}", free_local_port()?);
    let mut all = vec!["serve", "--listen", &addr];
    all.extend_from_slice(args);
    let running = start(&all)?;
    Ok((running, addr))
}

/// A copy of tracer-workload under a name nothing else runs, so its comm identifies exactly
/// the forks this test makes (other tests may run tracer-workload at the same time).
pub(crate) fn unique_workload(dir: &TempDir) -> Result<(PathBuf, String), Failed> {
    let comm = format!("srvfk{}", std::process::id() % 1_000_000);
    let path = dir.0.join(&comm);
    std::fs::copy(WORKLOAD, &path).map_err(|e| fail(format!("cannot copy workload: {e}")))?;
    Ok((path, comm))
}

pub(crate) fn run_workload(path: &Path, args: &[&str]) -> Result<(), Failed> {
    let status = Command::new(path)
        .args(args)
        .status()
        .map_err(|e| fail(format!("cannot run workload: {e}")))?;
    ensure(status.success(), || format!("workload failed: {status}"))
}

fn config_errors() -> Result<(), Failed> {
    let dir = TempDir::new("errors")?;
    let probe = |name: &str, spec: &str, kind: &str| {
        format!("[[probe]]\nname = \"{name}\"\nprobe = \"{spec}\"\nkind = \"{kind}\"\n")
    };
    let workload_fn = format!("u:{WORKLOAD}:tracer_workload_hot_function");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown probe",
            probe(
                "x",
                &format!("u:{WORKLOAD}:no_such_function_xyz"),
                "counter",
            ),
            "cfg.toml:3: probe 'x': ",
        ),
        (
            "bad probe syntax",
            probe("x", "q:what", "counter"),
            "cfg.toml:3: probe 'x': ",
        ),
        (
            "bad bucket spec",
            probe("x", &workload_fn, "latency") + "buckets = \"10s..1us\"\n",
            "cfg.toml:5: bad bucket spec '10s..1us'",
        ),
        (
            "duplicate metric name",
            probe("x", &workload_fn, "counter") + &probe("x", &workload_fn, "latency"),
            "cfg.toml:6: duplicate metric name 'x' (first defined on line 2)",
        ),
        (
            "bad metric name",
            probe("nginx-requests", &workload_fn, "counter"),
            "bad probe name 'nginx-requests'",
        ),
        (
            "unknown kind",
            probe("x", &workload_fn, "gauge"),
            "cfg.toml:4: unknown variant `gauge`",
        ),
        (
            "unknown collector",
            "[collectors]\nsoftirqs = true\n".into(),
            "cfg.toml:2: unknown field `softirqs`",
        ),
        (
            "latency of a tracepoint",
            probe("x", "t:sched:sched_switch", "latency"),
            "a tracepoint has no return",
        ),
        ("TOML syntax", "[[probe]\n".into(), "cfg.toml:1:"),
    ];
    for (what, text, want) in &cases {
        let path = dir.write("cfg.toml", text)?;
        for args in [
            vec!["serve", "--config", &path, "--listen", "127.0.0.1:0"],
            vec!["serve", "--config", &path, "--check"],
        ] {
            let out = run(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            ensure(out.status.code() == Some(1), || {
                format!("{what}: exit {:?}, stderr {stderr}", out.status.code())
            })?;
            ensure(stderr.lines().count() == 1 && stderr.contains(want), || {
                format!("{what}: wanted one line with '{want}', got: {stderr}")
            })?;
        }
    }
    // A missing file, a busy port, a bad address: one line each.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| fail(e.to_string()))?;
    let busy_addr = busy
        .local_addr()
        .map_err(|e| fail(e.to_string()))?
        .to_string();
    for (args, code, want) in [
        (
            vec!["serve", "--config", "/nonexistent/tracer.toml"],
            1,
            "cannot read config /nonexistent/tracer.toml",
        ),
        (vec!["serve", "--listen", &busy_addr], 1, "cannot listen on"),
        (vec!["serve", "--listen", "nowhere"], 2, "'nowhere'"),
    ] {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure(
            out.status.code() == Some(code) && stderr.lines().count() == 1 && stderr.contains(want),
            || format!("{args:?}: exit {:?}, stderr {stderr}", out.status.code()),
        )?;
    }
    drop(busy);
    // Loopback unless told otherwise.
    let help = String::from_utf8_lossy(&run(&["serve", "--help"]).stdout).to_string();
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    ensure(flat.contains("[default: 127.0.0.1:9435]"), || help.clone())?;
    nothing_loaded()
}

fn promtool_and_exact_forks() -> Result<(), Failed> {
    const FORKS: u64 = 37;
    let dir = TempDir::new("promtool")?;
    let config = dir.write(
        "tracer.toml",
        &format!(
            "[[probe]]\nname = \"hot_calls\"\nprobe = \"u:{WORKLOAD}:tracer_workload_hot_function\"\nkind = \"counter\"\n\n\
             [[probe]]\nname = \"hot\"\nprobe = \"u:{WORKLOAD}:tracer_workload_hot_function\"\nkind = \"latency\"\nbuckets = \"1ms..10s\"\n"
        ),
    )?;
    let (workload, comm) = unique_workload(&dir)?;
    let (tool, addr) = serve(&["--config", &config])?;
    run_workload(&workload, &["fork", &FORKS.to_string()])?;
    // Three calls of the hot function in the original binary (the uprobes are on its inode).
    for _ in 0..3 {
        run_workload(Path::new(WORKLOAD), &["hot", "0.02"])?;
    }
    let (status, text) = http_get(&addr, "/metrics", None)?;
    ensure(status == 200, || format!("/metrics: HTTP {status}"))?;
    let forks = sample(
        &text,
        &format!("tracer_forks_total{{parent_comm=\"{comm}\"}}"),
    );
    ensure(forks == Some(FORKS as f64), || {
        format!("tracer_forks_total for {comm}: {forks:?}, made {FORKS}")
    })?;
    let hits = sample(&text, "tracer_probe_hits_total{probe=\"hot_calls\"}");
    ensure(hits == Some(3.0), || format!("hot_calls: {hits:?}, made 3"))?;
    let count = sample(&text, "tracer_probe_latency_seconds_count{probe=\"hot\"}");
    let sum = sample(&text, "tracer_probe_latency_seconds_sum{probe=\"hot\"}").unwrap_or(0.0);
    // Each call spins until a deadline taken just before it, so it lasts a little under 20 ms
    // (more so under emulation): none ends in the first bucket (up to 1.05 ms), all in +Inf.
    ensure(count == Some(3.0) && (0.03..5.0).contains(&sum), || {
        format!("hot latency: count {count:?}, sum {sum}, made 3 calls of about 20 ms")
    })?;
    let le = |bound: &str| {
        sample(
            &text,
            &format!("tracer_probe_latency_seconds_bucket{{probe=\"hot\",le=\"{bound}\"}}"),
        )
    };
    ensure(
        le("0.001048575") == Some(0.0) && le("+Inf") == Some(3.0),
        || format!("hot buckets: {:?} {:?}", le("0.001048575"), le("+Inf")),
    )?;
    for series in [
        "tracer_programs_attached",
        &format!(
            "tracer_probe_attached{{probe=\"hot\",rung=\"{}\"}}",
            uprobe_rungs()
        ),
        "tracer_probe_attached{probe=\"forks/sched:sched_process_fork\",rung=\"tp_btf\"}",
        "tracer_softirq_entries_total{cpu=\"0\",vector=\"TIMER\"}",
        "tracer_runqueue_latency_seconds_count",
        "tracer_map_full_total{collector=\"forks\"}",
        "tracer_lost_events_total{collector=\"softirq\"}",
        "tracer_scrape_duration_seconds{collector=\"kthreads\"}",
    ] {
        ensure(sample(&text, series).is_some(), || {
            format!("no {series} in:\n{text}")
        })?;
    }
    ensure(
        text.lines()
            .any(|l| l.starts_with("tracer_kthread_cpu_seconds_total{comm=")),
        || "no kernel thread on-CPU time".into(),
    )?;
    let path = dir.write("metrics.txt", &text)?;
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).map_err(|e| fail(e.to_string()))?)
        .output()
        .map_err(|e| fail(format!("cannot run promtool: {e}")))?;
    ensure(check.status.success(), || {
        format!(
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        )
    })?;

    // OpenMetrics when asked; the index, 404 and 405.
    let (status, om) = http_get(&addr, "/metrics", Some("application/openmetrics-text"))?;
    ensure(
        status == 200
            && om.ends_with("# EOF\n")
            && om.contains("# TYPE tracer_forks counter\n")
            && om.contains("# TYPE tracer_probe_latency_seconds histogram\n"),
        || format!("OpenMetrics exposition: {om}"),
    )?;
    let (status, index) = http_get(&addr, "/", None)?;
    ensure(status == 200 && index.contains("/metrics"), || {
        index.clone()
    })?;
    ensure(http_get(&addr, "/nope", None)?.0 == 404, || "404".into())?;
    ensure(
        http_request(&addr, "POST", "/metrics", None)?.0 == 405,
        || "405".into(),
    )?;

    let done = tool.stop(libc::SIGTERM)?.ok()?;
    ensure(done.stderr.iter().any(|l| l.contains("Detaching")), || {
        done.stderr.join(" | ")
    })?;
    nothing_loaded()
}

fn keep_going() -> Result<(), Failed> {
    let dir = TempDir::new("keepgoing")?;
    // No kprobes and no fentry here: a kernel-function probe resolves (it is in kallsyms) but
    // cannot attach. Where the kernel has them (the VM stage) it attaches instead.
    let config = dir.write(
        "tracer.toml",
        "[collectors]\nsoftirq = false\nrunqueue = false\nkthreads = false\n\n\
         [[probe]]\nname = \"reads\"\nprobe = \"k:vfs_read\"\nkind = \"counter\"\n",
    )?;
    let no_kernel_probes = Need::Kprobes.missing().is_some() && Need::Fentry.missing().is_some();
    if no_kernel_probes {
        // Refused without --keep-going: one line, nothing left loaded.
        let out = run(&["serve", "--config", &config, "--listen", "127.0.0.1:0"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure(
            out.status.code() == Some(1)
                && stderr.lines().count() == 1
                && stderr.contains("probe 'reads' (k:vfs_read)")
                && stderr.contains("--keep-going"),
            || format!("exit {:?}: {stderr}", out.status.code()),
        )?;
        nothing_loaded()?;
    }
    let (tool, addr) = serve(&["--config", &config, "--keep-going"])?;
    let (_, text) = http_get(&addr, "/metrics", None)?;
    let attached = text
        .lines()
        .find(|l| l.starts_with("tracer_probe_attached{probe=\"reads\""))
        .unwrap_or("")
        .to_string();
    if no_kernel_probes {
        ensure(
            attached == "tracer_probe_attached{probe=\"reads\",rung=\"none\"} 0",
            || format!("{attached}\n{text}"),
        )?;
        ensure(
            tool.stderr_lines
                .iter()
                .any(|l| l.contains("warning: probe 'reads'")),
            || tool.stderr_lines.join(" | "),
        )?;
    } else {
        ensure(attached.ends_with(" 1"), || format!("{attached}\n{text}"))?;
    }
    ensure(
        text.contains("tracer_probe_attached{probe=\"forks/sched:sched_process_fork\""),
        || text.clone(),
    )?;
    tool.stop(libc::SIGINT)?.ok()?;
    nothing_loaded()
}

/// Debian's Prometheus on loopback, scraping `target` every second; stopped on drop.
pub(crate) struct Prometheus {
    child: Child,
    addr: String,
    _dir: TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Result<Self, Failed> {
        Self::start_jobs(&format!(
            "  - job_name: tracer\n    static_configs:\n      - targets: ['{target}']\n"
        ))
    }

    /// Prometheus with `jobs` (YAML items of scrape_configs, indented two spaces).
    pub(crate) fn start_jobs(jobs: &str) -> Result<Self, Failed> {
        let dir = TempDir::new("prometheus")?;
        let config = dir.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}"
            ),
        )?;
        let addr = format!("127.0.0.1:{}", free_local_port()?);
        let child = Command::new("prometheus")
            .arg(format!("--config.file={config}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| fail(format!("cannot start prometheus: {e}")))?;
        let mut prometheus = Self {
            child,
            addr,
            _dir: dir,
        };
        // Generous: under qemu's emulation (the VM stage) Prometheus starts 10-20x slower.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok((200, _)) = http_get(&prometheus.addr, "/-/ready", None) {
                return Ok(prometheus);
            }
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                return Err(fail(format!("prometheus exited: {status}")));
            }
            if Instant::now() >= deadline {
                return Err(fail("prometheus not ready within 90 s"));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// An instant query: the result vector's (labels, value) pairs.
    pub(crate) fn query(&self, promql: &str) -> Result<Vec<(Value, f64)>, Failed> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = http_get(&self.addr, &format!("/api/v1/query?query={encoded}"), None)?;
        let json: Value = serde_json::from_str(&body).map_err(|e| {
            fail(format!(
                "query {promql}: HTTP {status}, not JSON ({e}): {body}"
            ))
        })?;
        ensure(json["status"] == "success", || {
            format!("query {promql}: {body}")
        })?;
        Ok(json["data"]["result"]
            .as_array()
            .map(|results| {
                results
                    .iter()
                    .filter_map(|r| {
                        let v = r["value"][1].as_str()?.parse().ok()?;
                        Some((r["metric"].clone(), v))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Polls `promql` until it has one value satisfying `done` (up to `timeout`); the last value.
    pub(crate) fn wait_for(
        &self,
        promql: &str,
        timeout: Duration,
        done: impl Fn(f64) -> bool,
    ) -> Result<Option<f64>, Failed> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.query(promql)?.first().map(|r| r.1);
            if value.is_some_and(&done) || Instant::now() >= deadline {
                return Ok(value);
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        testbed::terminate(&mut self.child, Duration::from_secs(10));
    }
}

/// The `rung` label of a uprobe + uretprobe latency metric: one uprobe_multi link per direction
/// where the kernel has them, per-offset perf-event uprobes before.
fn uprobe_rungs() -> &'static str {
    if kernel_has_uprobe_multi() {
        "uprobe_multi+uretprobe_multi"
    } else {
        "uprobe+uretprobe"
    }
}

fn prometheus_end_to_end() -> Result<(), Failed> {
    const FORKS: u64 = 50;
    const REQUESTS: usize = 30;
    let dir = TempDir::new("e2e")?;
    let config = dir.write(
        "tracer.toml",
        &format!(
            "[[probe]]\nname = \"nginx_requests\"\nprobe = \"{NGX_REQUEST}\"\nkind = \"counter\"\n\n\
             [[probe]]\nname = \"nginx_request\"\nprobe = \"{NGX_REQUEST}\"\nkind = \"latency\"\n"
        ),
    )?;
    let (workload, comm) = unique_workload(&dir)?;
    let nginx = Nginx::start_local_logged()?;
    let (tool, addr) = serve(&["--config", &config])?;
    let prometheus = Prometheus::start(&addr)?;
    let scrape_ok = Duration::from_secs(40);
    let up = prometheus.wait_for("up{job=\"tracer\"}", scrape_ok, |v| v == 1.0)?;
    ensure(up == Some(1.0), || format!("tracer target not up: {up:?}"))?;
    // Before the workload: the probe counters exist and are zero.
    let before = prometheus.wait_for(
        "tracer_probe_hits_total{probe=\"nginx_requests\"}",
        scrape_ok,
        |_| true,
    )?;
    ensure(before == Some(0.0), || format!("hits before: {before:?}"))?;

    run_workload(&workload, &["fork", &FORKS.to_string()])?;
    let url = format!("http://127.0.0.1:{}/", nginx.port);
    curl(&url, REQUESTS, &[], "200")?;
    wait_access_log(&nginx, REQUESTS)?;

    let n = REQUESTS as f64;
    let forks_query = format!("tracer_forks_total{{parent_comm=\"{comm}\"}}");
    for (promql, want) in [
        (forks_query.as_str(), FORKS as f64),
        ("tracer_probe_hits_total{probe=\"nginx_requests\"}", n),
        (
            "tracer_probe_latency_seconds_count{probe=\"nginx_request\"}",
            n,
        ),
        (
            "tracer_probe_latency_seconds_bucket{probe=\"nginx_request\",le=\"+Inf\"}",
            n,
        ),
    ] {
        let got = prometheus.wait_for(promql, scrape_ok, |v| v >= want)?;
        ensure(got == Some(want), || {
            format!("{promql} = {got:?}, expected {want}")
        })?;
    }
    // A scrape later, still exact (nothing counted twice, nothing reset).
    thread::sleep(Duration::from_millis(2500));
    let hits = prometheus.query("tracer_probe_hits_total{probe=\"nginx_requests\"} - 0")?;
    ensure(hits.first().map(|r| r.1) == Some(n), || format!("{hits:?}"))?;
    for promql in [
        "histogram_quantile(0.5, sum by (le) (tracer_probe_latency_seconds_bucket{probe=\"nginx_request\"}))",
        "histogram_quantile(0.99, sum by (le) (tracer_runqueue_latency_seconds_bucket))",
        "histogram_quantile(0.5, sum by (le) (tracer_softirq_runtime_seconds_bucket{vector=\"TIMER\"}))",
    ] {
        let q = prometheus.query(promql)?;
        let value = q.first().map(|r| r.1);
        ensure(value.is_some_and(|v| v.is_finite() && v > 0.0), || {
            format!("{promql} = {q:?}")
        })?;
    }
    let attached = prometheus.query("tracer_probe_attached{probe=\"nginx_request\"}")?;
    ensure(
        attached
            .first()
            .is_some_and(|(labels, v)| *v == 1.0 && labels["rung"] == uprobe_rungs()),
        || format!("{attached:?}"),
    )?;
    drop(prometheus);
    let done = tool.stop(libc::SIGTERM)?.ok()?;
    ensure(done.code == Some(0), || done.stderr.join(" | "))?;
    drop(nginx);
    nothing_loaded()
}

//! `tracer serve` with every default collector on (softirq, forks, run queue, kthreads), over
//! plain HTTP and over TLS (`--web.config.file`; certificates made here by openssl, the client
//! is rustls in this process). For each: scrape latency and the exporter's CPU time per scrape
//! with a new connection per scrape (a cold scraper; over TLS a full handshake each), on one
//! kept-alive connection (as Prometheus scrapes), and on a kept-alive connection while a client
//! holds 1 000 idle connections open; RSS over the 10 000 kept-alive scrapes. `GET /-/healthy`
//! on plain HTTP gives the floor: the tail any request gets from the machine's other work. No
//! peer: ebpf_exporter is not in Debian.

use std::{
    io::{BufRead as _, BufReader, Read, Write},
    net::TcpStream,
    os::fd::AsRawFd as _,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    client::Resumption,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};

use super::common::{Attached, median, process_cpu_seconds, release_bin};

const FRESH_SCRAPES: usize = 500;
const KEPT_SCRAPES: usize = 10_000;
const IDLE_SCRAPES: usize = 5_000;
/// `GET /-/healthy` on a kept-alive connection, the same HTTP path without building an
/// exposition: its tail is what the machine's other work adds to any request.
const FLOOR_REQUESTS: usize = 5_000;
/// Connections that send nothing, held open by one client while the scrapes run: four times
/// the exporter's 256-connection cap, so it sheds the oldest idle ones all along.
const IDLE_CONNECTIONS: usize = 1_000;
/// How often the holder reopens the connections the exporter closed: at once would make it a
/// connect flood measuring the bench's own CPU, never would let the set drain.
const REOPEN_EVERY: Duration = Duration::from_secs(1);
/// Issue 16's target for the scrape latency.
const TARGET_P99_MS: f64 = 5.0;

pub fn run() -> Result<()> {
    let dir = std::env::temp_dir().join("tracer-bench-serve");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    make_certificates(&dir)?;
    let web_config = dir.join("web.yml");
    std::fs::write(
        &web_config,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ),
    )?;
    let tls = Transport::Tls(Arc::new(tls_client(&dir.join("ca.pem"))?));

    // Other work on the machine shows in the tail latencies: said next to them.
    let load_before = load_average();
    let plain = exporter(Transport::Plain, None)?;
    let tls = exporter(tls, Some(&web_config))?;

    let series = plain
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    println!(
        "exposition: {} bytes, {series} samples (text format, default collectors, {} CPUs, \
         load average {load_before} before, {} after)",
        plain.body.len(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    println!(
        "{:<46} {:>7} {:>7} {:>7} {:>10} {:>6}",
        "scrape latency (ms)", "median", "p99", "max", "CPU/scrape", "failed"
    );
    for run in [&plain, &tls] {
        for case in &run.cases {
            println!(
                "{:<46} {:>7.3} {:>7.3} {:>7.3} {:>10.3} {:>6}",
                format!("{}, {}", run.transport, case.name),
                median(case.latencies_ms.clone()),
                percentile(&case.latencies_ms, 99.0),
                case.latencies_ms.iter().copied().fold(0.0, f64::max),
                case.cpu_ms_per_scrape,
                case.failed
            );
        }
    }
    for run in [&plain, &tls] {
        let [start, middle, end] = run.rss_kib.map(|k| k as f64 / 1024.0);
        println!(
            "{} exporter RSS: {start:.1} MB before the kept-alive scrapes, {middle:.1} MB after \
             {}, {end:.1} MB after {KEPT_SCRAPES}; {:.1} MB after the idle-connection scrapes \
             (idle baseline {:.1} ms CPU/s)",
            run.transport,
            KEPT_SCRAPES / 2,
            run.rss_after_idle_kib as f64 / 1024.0,
            run.idle_cpu_per_s * 1e3
        );
        let h = &run.holder;
        println!(
            "{} with {IDLE_CONNECTIONS} idle connections: the exporter shed {} (+{} head \
             timeouts) during the {IDLE_SCRAPES} scrapes, {} connections open at the last one; \
             the holder reopened {} in {} rounds (exporter CPU {:.1} ms/s without scrapes)",
            run.transport,
            h.shed,
            h.head_timeouts,
            h.open_at_end,
            h.opened,
            h.rounds,
            h.churn_cpu_per_s * 1e3
        );
    }
    let (worst, worst_case) = [&plain, &tls]
        .iter()
        .flat_map(|run| {
            run.cases
                .iter()
                .filter(|c| c.in_target)
                .map(|c| (percentile(&c.latencies_ms, 99.0), c.name))
        })
        .fold((0.0, ""), |a, b| if b.0 > a.0 { b } else { a });
    println!(
        "target p99 <= {TARGET_P99_MS} ms on kept-alive connections: {} (worst p99 {worst:.3} ms, {worst_case})",
        if worst <= TARGET_P99_MS {
            "met"
        } else {
            "MISSED"
        }
    );
    let failed: usize = [&plain, &tls]
        .iter()
        .flat_map(|r| &r.cases)
        .map(|c| c.failed)
        .sum();
    if failed > 0 {
        bail!("{failed} scrapes failed (see the table)");
    }
    Ok(())
}

/// Everything measured on one exporter.
struct ExporterRun {
    transport: &'static str,
    body: String,
    cases: Vec<Case>,
    /// VmRSS before, halfway through and after the kept-alive scrapes.
    rss_kib: [u64; 3],
    rss_after_idle_kib: u64,
    idle_cpu_per_s: f64,
    holder: HolderReport,
}

struct Case {
    name: &'static str,
    /// A kept-alive scrape of /metrics, as Prometheus does: what the p99 target is about.
    in_target: bool,
    latencies_ms: Vec<f64>,
    cpu_ms_per_scrape: f64,
    failed: usize,
}

struct HolderReport {
    shed: u64,
    head_timeouts: u64,
    open_at_end: u64,
    opened: u64,
    rounds: u64,
    churn_cpu_per_s: f64,
}

fn exporter(transport: Transport, web_config: Option<&Path>) -> Result<ExporterRun> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(release_bin("tracer"));
    cmd.args(["serve", "--listen", &addr]);
    if let Some(path) = web_config {
        cmd.arg("--web.config.file").arg(path);
    }
    let tool = Attached::spawn_to(&mut cmd, None, |line| line.contains("Hit Ctrl-C to end."))?;
    let pid = tool.pid();
    // The first scrape creates the label sets; CPU over quiet seconds is the baseline.
    let body = String::from_utf8_lossy(&transport.scrape_once(&addr)?).into_owned();
    let idle_cpu_per_s = cpu_rate(pid, Duration::from_secs(2));

    let mut cases = Vec::new();
    let fresh_name = match transport {
        Transport::Plain => "new connection per scrape",
        Transport::Tls(_) => "new connection per scrape (full handshake)",
    };
    let fresh = scrapes(
        &transport,
        &addr,
        pid,
        FRESH_SCRAPES,
        false,
        "/metrics",
        idle_cpu_per_s,
    )?;
    cases.push(fresh.into_case(fresh_name, false));

    if matches!(transport, Transport::Plain) {
        let floor = scrapes(
            &transport,
            &addr,
            pid,
            FLOOR_REQUESTS,
            true,
            "/-/healthy",
            idle_cpu_per_s,
        )?;
        cases.push(floor.into_case("kept-alive, GET /-/healthy (the floor)", false));
    }
    let kept = scrapes(
        &transport,
        &addr,
        pid,
        KEPT_SCRAPES,
        true,
        "/metrics",
        idle_cpu_per_s,
    )?;
    let rss_kib = kept.rss_kib;
    cases.push(kept.into_case("one kept-alive connection", true));

    let holder = IdleHolder::start(&addr)?;
    // Let the first rounds' accepts and sheds settle, then what the churn costs without scrapes.
    thread::sleep(Duration::from_millis(500));
    let churn_cpu_per_s = cpu_rate(pid, Duration::from_secs(2));
    let idle = scrapes(
        &transport,
        &addr,
        pid,
        IDLE_SCRAPES,
        true,
        "/metrics",
        churn_cpu_per_s,
    )?;
    let counts = holder.stop()?;
    let rss_after_idle_kib = rss_kib_of(pid);
    let (first, last) = (
        String::from_utf8_lossy(&idle.first_body).into_owned(),
        String::from_utf8_lossy(&idle.last_body).into_owned(),
    );
    let rejected = |body: &str, reason: &str| {
        sample(
            body,
            &format!("tracer_http_rejected_total{{reason=\"{reason}\"}}"),
        )
    };
    let holder = HolderReport {
        shed: rejected(&last, "shed_oldest_idle")? - rejected(&first, "shed_oldest_idle")?,
        head_timeouts: rejected(&last, "head_timeout")? - rejected(&first, "head_timeout")?,
        open_at_end: sample(&last, "tracer_http_connections")?,
        opened: counts.opened,
        rounds: counts.rounds,
        churn_cpu_per_s,
    };
    cases.push(idle.into_case("kept-alive, 1000 idle connections open", true));
    tool.stop()?;
    Ok(ExporterRun {
        transport: match transport {
            Transport::Plain => "plain",
            Transport::Tls(_) => "TLS",
        },
        body,
        cases,
        rss_kib,
        rss_after_idle_kib,
        idle_cpu_per_s,
        holder,
    })
}

/// CPU seconds per second `pid` uses over `window`.
fn cpu_rate(pid: u32, window: Duration) -> f64 {
    let start = process_cpu_seconds(pid);
    thread::sleep(window);
    (process_cpu_seconds(pid) - start) / window.as_secs_f64()
}

struct Scrapes {
    latencies_ms: Vec<f64>,
    failed: usize,
    cpu_ms_per_scrape: f64,
    rss_kib: [u64; 3],
    first_body: Vec<u8>,
    last_body: Vec<u8>,
}

impl Scrapes {
    fn into_case(self, name: &'static str, in_target: bool) -> Case {
        Case {
            name,
            in_target,
            latencies_ms: self.latencies_ms,
            cpu_ms_per_scrape: self.cpu_ms_per_scrape,
            failed: self.failed,
        }
    }
}

/// `count` scrapes back to back, on one kept-alive connection or a new one each. A failed
/// scrape is counted (and the connection reopened), not timed; the exporter's CPU over the
/// run, less `baseline_cpu_per_s` for the wall time, is shared out per scrape.
fn scrapes(
    transport: &Transport,
    addr: &str,
    pid: u32,
    count: usize,
    kept_alive: bool,
    path: &str,
    baseline_cpu_per_s: f64,
) -> Result<Scrapes> {
    let mut out = Scrapes {
        latencies_ms: Vec::with_capacity(count),
        failed: 0,
        cpu_ms_per_scrape: 0.0,
        rss_kib: [rss_kib_of(pid), 0, 0],
        first_body: Vec::new(),
        last_body: Vec::new(),
    };
    let cpu_start = process_cpu_seconds(pid);
    let started = Instant::now();
    let mut connection = None;
    for i in 0..count {
        if i == count / 2 {
            out.rss_kib[1] = rss_kib_of(pid);
        }
        let t = Instant::now();
        let result = (|| {
            let stream = match connection.take() {
                Some(stream) => stream,
                None => BufReader::new(transport.connect(addr)?),
            };
            let mut stream = stream;
            let body = scrape(&mut stream, addr, path, !kept_alive)?;
            if kept_alive {
                connection = Some(stream);
            }
            Ok::<_, anyhow::Error>(body)
        })();
        match result {
            Ok(body) => {
                out.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3);
                if out.first_body.is_empty() {
                    out.first_body = body;
                } else if i + 1 == count {
                    out.last_body = body;
                }
            }
            Err(e) => {
                if out.failed == 0 {
                    eprintln!("scrape {i} failed: {e:#}");
                }
                out.failed += 1;
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(pid) - cpu_start - baseline_cpu_per_s * wall;
    out.cpu_ms_per_scrape = cpu / count as f64 * 1e3;
    out.rss_kib[2] = rss_kib_of(pid);
    if out.last_body.is_empty() {
        out.last_body = out.first_body.clone();
    }
    Ok(out)
}

/// Plain TCP, or TLS through rustls with the bench's CA as the only root.
enum Transport {
    Plain,
    Tls(Arc<ClientConfig>),
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

impl Transport {
    fn connect(&self, addr: &str) -> Result<Box<dyn Stream>> {
        let tcp = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(match self {
            Transport::Plain => Box::new(tcp),
            Transport::Tls(config) => {
                let name = ServerName::try_from("127.0.0.1")?;
                let tls = ClientConnection::new(config.clone(), name)?;
                Box::new(StreamOwned::new(tls, tcp))
            }
        })
    }

    fn scrape_once(&self, addr: &str) -> Result<Vec<u8>> {
        scrape(
            &mut BufReader::new(self.connect(addr)?),
            addr,
            "/metrics",
            true,
        )
    }
}

/// One `GET path`; reads exactly Content-Length bytes of body, so the connection can carry
/// the next request.
fn scrape(
    stream: &mut BufReader<Box<dyn Stream>>,
    addr: &str,
    path: &str,
    close: bool,
) -> Result<Vec<u8>> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    // One write: a request split over several segments waits for delayed ACKs (Nagle).
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{connection}\r\n");
    stream.get_mut().write_all(request.as_bytes())?;
    stream.get_mut().flush()?;
    let mut status = String::new();
    if stream.read_line(&mut status)? == 0 {
        bail!("connection closed before the response");
    }
    if !status.starts_with("HTTP/1.1 200") {
        bail!("bad scrape response: {}", status.trim_end());
    }
    let mut length = None;
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line)? == 0 {
            bail!("connection closed in the response head");
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok();
        }
    }
    let length: usize = length.context("no Content-Length")?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    Ok(body)
}

/// The value of the sample line named `name` (with its labels) in an exposition.
fn sample(body: &str, name: &str) -> Result<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("no {name} in the exposition"))
}

/// One thread that keeps `IDLE_CONNECTIONS` connections open that never send a byte, and
/// reopens every `REOPEN_EVERY` those the exporter closed (shed or timed out).
struct IdleHolder {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Result<HolderCounts>>,
}

struct HolderCounts {
    opened: u64,
    rounds: u64,
}

impl IdleHolder {
    /// Returns once the first `IDLE_CONNECTIONS` are connected.
    fn start(addr: &str) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let (addr, stop) = (addr.to_string(), stop.clone());
            thread::spawn(move || hold(&addr, &stop, &ready_tx))
        };
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            stop.store(true, Ordering::Relaxed);
            return match thread.join() {
                Ok(Err(e)) => Err(e),
                _ => bail!("{IDLE_CONNECTIONS} idle connections not open within 30 s"),
            };
        }
        Ok(Self { stop, thread })
    }

    fn stop(self) -> Result<HolderCounts> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(counts) => counts,
            Err(_) => bail!("the idle-connection thread panicked"),
        }
    }
}

fn hold(addr: &str, stop: &AtomicBool, ready: &mpsc::Sender<()>) -> Result<HolderCounts> {
    let mut connections: Vec<Option<TcpStream>> = (0..IDLE_CONNECTIONS).map(|_| None).collect();
    let mut counts = HolderCounts {
        opened: 0,
        rounds: 0,
    };
    let mut next_round = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next_round {
            for slot in connections.iter_mut().filter(|c| c.is_none()) {
                *slot = Some(TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?);
                counts.opened += 1;
            }
            counts.rounds += 1;
            if counts.rounds == 1 {
                let _ = ready.send(());
            }
            next_round += REOPEN_EVERY;
        }
        let (mut fds, index): (Vec<libc::pollfd>, Vec<usize>) = connections
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let fd = c.as_ref()?.as_raw_fd();
                let events = libc::POLLIN | libc::POLLRDHUP;
                Some((
                    libc::pollfd {
                        fd,
                        events,
                        revents: 0,
                    },
                    i,
                ))
            })
            .unzip();
        let wait = next_round
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        // SAFETY: `fds` is a valid array of pollfd for the call's duration.
        let ready_fds = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                wait.as_millis() as i32,
            )
        };
        if ready_fds <= 0 {
            continue;
        }
        for (fd, &i) in fds.iter().zip(&index) {
            // The exporter never speaks first (over TLS either): readable means it closed.
            if fd.revents != 0 {
                connections[i] = None;
            }
        }
    }
    Ok(counts)
}

/// A rustls client that trusts only `ca` and never resumes a session (each new connection is
/// a full handshake, as for a scraper without a session cache).
fn tls_client(ca: &Path) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("{}", ca.display()))? {
        roots.add(cert?)?;
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// openssl's CA (ca.pem) and a server certificate for 127.0.0.1 it signed (server.pem/.key).
fn make_certificates(dir: &Path) -> Result<()> {
    let openssl = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .context("cannot run openssl (cargo xtask setup installs it)")?;
        if !out.status.success() {
            bail!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    let key = [
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
    ];
    openssl(
        &[
            &["req", "-x509", "-days", "2"],
            &key[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=tracer bench CA",
            ],
        ]
        .concat(),
    )?;
    openssl(
        &[
            &["req"],
            &key[..],
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    )?;
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n")?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "server.pem",
        "-extfile",
        "server.ext",
    ])
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

fn rss_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The 1-minute load average.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

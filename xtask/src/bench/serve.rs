//! `tracer serve` with every default collector on (softirq, forks, run queue, kthreads): scrape
//! latency (one fresh connection per scrape, as a cold scraper sees it, and scrapes on one
//! kept-alive connection, as Prometheus does), the exporter's CPU time per scrape, its RSS at
//! start and after the scrapes, and the exposition's size. No peer: ebpf_exporter is not in
//! Debian.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::common::{Attached, median, process_cpu_seconds, release_bin};

const SCRAPES: usize = 500;

pub fn run() -> Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let tracer = release_bin("tracer");
    let tool = Attached::spawn_to(
        Command::new(&tracer).args(["serve", "--listen", &addr]),
        None,
        |line| line.contains("Hit Ctrl-C to end."),
    )?;
    let pid = tool.pid();
    let rss_start = rss_kib(pid);
    // The first scrape creates the label sets; idle CPU over a quiet second is the baseline.
    let body = scrape_fresh(&addr)?;
    let idle_cpu_start = process_cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(1));
    let idle_cpu = process_cpu_seconds(pid) - idle_cpu_start;

    let cpu_start = process_cpu_seconds(pid);
    let started = Instant::now();
    let mut fresh = Vec::with_capacity(SCRAPES);
    for _ in 0..SCRAPES {
        let t = Instant::now();
        scrape_fresh(&addr)?;
        fresh.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let stream = TcpStream::connect(&addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut stream = BufReader::new(stream);
    let mut kept = Vec::with_capacity(SCRAPES);
    for _ in 0..SCRAPES {
        let t = Instant::now();
        scrape_kept_alive(&mut stream, &addr)?;
        kept.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(pid) - cpu_start - idle_cpu * wall;
    let rss_end = rss_kib(pid);
    drop(stream);
    tool.stop()?;

    let series = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    println!(
        "exposition: {} bytes, {series} samples (text format, default collectors, {} CPUs)",
        body.len(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "scrape latency (ms)", "median", "p99", "max"
    );
    for (name, values) in [
        ("new connection per scrape", fresh),
        ("one kept-alive connection", kept),
    ] {
        let p99 = percentile(&values, 99.0);
        let max = values.iter().cloned().fold(0.0, f64::max);
        println!(
            "{name:<34} {:>9.3} {p99:>9.3} {max:>9.3}",
            median(values.clone())
        );
    }
    println!(
        "exporter CPU per scrape: {:.3} ms ({} scrapes, {:.2} s CPU, idle baseline {:.3} s/s)",
        cpu / (2 * SCRAPES) as f64 * 1e3,
        2 * SCRAPES,
        cpu,
        idle_cpu
    );
    println!(
        "exporter RSS: {:.1} MB after start, {:.1} MB after {} scrapes",
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        2 * SCRAPES
    );
    Ok(())
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

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn scrape_fresh(addr: &str) -> Result<String> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => bail!("bad scrape response: {:.200}", response),
    }
}

/// One request on a kept-alive connection; reads exactly Content-Length bytes of body.
fn scrape_kept_alive(stream: &mut BufReader<TcpStream>, addr: &str) -> Result<usize> {
    // One write: a request split over several segments waits for delayed ACKs (Nagle).
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.get_mut().write_all(request.as_bytes())?;
    let mut length = None;
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line)? == 0 {
            bail!("connection closed");
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.strip_prefix("Content-Length: ") {
            length = v.trim().parse().ok();
        }
    }
    let length: usize = length.context("no Content-Length")?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    Ok(length)
}

//! serve's HTTP layer under attack and behind TLS: idle and slowloris connections cannot keep a
//! real scrape from its 200, Debian's Prometheus scrapes over TLS with basic auth (certificates
//! made here by openssl) and counts forks exactly, and the request parser survives garbage,
//! oversized heads, pipelining, HTTP/1.0 and half-closed sockets.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Shutdown, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use libtest_mimic::{Failed, Trial};

use crate::{
    common::{Need, Running, ensure, fail, scaled, trial},
    serve::{Prometheus, TempDir, http_get, run_workload, sample, serve, unique_workload},
};

/// serve's own limits (tracer/src/tools/serve/http.rs).
const MAX_CONNECTIONS: usize = 256;
const HEAD_DEADLINE: Duration = Duration::from_secs(10);

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "serve_http::scrapes_survive_idle_and_slowloris_floods",
            &[Need::Root],
            floods,
        ),
        trial(
            "serve_http::prometheus_scrapes_over_tls_with_basic_auth",
            &[
                Need::Root,
                Need::Tracefs,
                Need::Command("prometheus"),
                Need::Command("openssl"),
                Need::Command("curl"),
            ],
            prometheus_tls,
        ),
        trial(
            "serve_http::request_parser_edges_keep_it_answering",
            &[Need::Root],
            parser_edges,
        ),
    ]
}

/// Room for the test's own sockets (the default soft limit of 1024 descriptors is too few).
fn raise_fd_limit(want: u64) -> Result<(), Failed> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit fill/read the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if limit.rlim_cur >= want {
        return Ok(());
    }
    limit.rlim_cur = want.min(limit.rlim_max.max(want));
    limit.rlim_max = limit.rlim_max.max(limit.rlim_cur);
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    ensure(rc == 0, || {
        format!(
            "cannot raise RLIMIT_NOFILE to {want}: {}",
            std::io::Error::last_os_error()
        )
    })
}

fn rss_bytes(pid: u32) -> Result<u64, Failed> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .map_err(|e| fail(format!("statm of {pid}: {e}")))?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| fail(format!("bad statm: {statm}")))?;
    Ok(pages * 4096)
}

/// True once the peer closed `stream` (EOF or reset), without blocking.
fn closed_by_peer(mut stream: &TcpStream) -> bool {
    let _ = stream.set_nonblocking(true);
    let mut byte = [0u8; 1];
    let closed = match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    let _ = stream.set_nonblocking(false);
    closed
}

fn scrape(addr: &str) -> Result<(Duration, String), Failed> {
    let started = Instant::now();
    let (status, text) = http_get(addr, "/metrics", None)?;
    ensure(status == 200, || format!("/metrics: HTTP {status}"))?;
    Ok((started.elapsed(), text))
}

fn floods() -> Result<(), Failed> {
    const IDLE: usize = 1000;
    const SLOW: usize = 100;
    raise_fd_limit(4096)?;
    let (tool, addr) = serve(&[])?;
    let (_, baseline) = scrape(&addr)?;
    let rss_before = rss_bytes(tool.pid())?;

    let connect =
        || TcpStream::connect(&addr).map_err(|e| fail(format!("cannot connect to {addr}: {e}")));
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(connect()?);
    }
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        slow.push(connect()?);
    }
    // One byte of a request head per second on every slow connection, for longer than the
    // deadline; scrapes in between must each answer quickly.
    let head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut second = 0;
    while started.elapsed() < HEAD_DEADLINE + scaled(Duration::from_secs(3)) {
        for s in &mut slow {
            let _ = s.write_all(&head[second % head.len()..][..1]);
        }
        second += 1;
        let (took, _) = scrape(&addr)?;
        worst = worst.max(took);
        thread::sleep(Duration::from_secs(1).saturating_sub(took));
    }
    ensure(worst <= scaled(Duration::from_secs(1)), || {
        format!("a scrape took {worst:?} under {IDLE} idle + {SLOW} slowloris connections")
    })?;
    // Every flooding connection is gone by now: shed for newer ones, or past its deadline.
    let deadline = Instant::now() + scaled(Duration::from_secs(5));
    let open = loop {
        let open = idle
            .iter()
            .chain(slow.iter())
            .filter(|s| !closed_by_peer(s))
            .count();
        if open == 0 || Instant::now() >= deadline {
            break open;
        }
        thread::sleep(Duration::from_millis(200));
    };
    ensure(open == 0, || {
        format!("{open} flooding connections still open after the head deadline")
    })?;
    let (_, text) = scrape(&addr)?;
    let rejected = |reason: &str| {
        sample(
            &text,
            &format!("tracer_http_rejected_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(-1.0)
    };
    let (shed, late) = (rejected("shed_oldest_idle"), rejected("head_timeout"));
    let flood = (IDLE + SLOW) as f64;
    ensure(
        shed >= flood - MAX_CONNECTIONS as f64 && shed + late >= flood,
        || format!("shed {shed} + head_timeout {late}, expected {flood} closed"),
    )?;
    let connections = sample(&text, "tracer_http_connections");
    ensure(connections.is_some_and(|c| c <= 2.0), || {
        format!("tracer_http_connections = {connections:?} after the flood")
    })?;
    ensure(
        sample(&baseline, "tracer_http_connections").is_some(),
        || "no tracer_http_connections before the flood".into(),
    )?;
    let rss_after = rss_bytes(tool.pid())?;
    ensure(rss_after < rss_before + (64 << 20), || {
        format!("RSS grew from {rss_before} to {rss_after} bytes")
    })?;
    tool.stop(libc::SIGINT)?.ok()?;
    Ok(())
}

/// openssl's CA, server (127.0.0.1) and client certificates in `dir`.
fn make_certificates(dir: &TempDir) -> Result<(), Failed> {
    let d = dir.path();
    let openssl = |args: &[&str]| -> Result<(), Failed> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| fail(format!("cannot run openssl: {e}")))?;
        ensure(out.status.success(), || {
            format!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-nodes", "-days", "2"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=tracer test CA",
    ]);
    openssl(&ca)?;
    for (name, ext) in [
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        let mut req = vec!["req", "-nodes"];
        req.extend(ec);
        let (key, csr, pem, subj) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("/CN={name}"),
        );
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(&req)?;
        std::fs::write(d.join(format!("{name}.ext")), format!("{ext}\n"))
            .map_err(|e| fail(e.to_string()))?;
        let extfile = format!("{name}.ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &pem,
            "-extfile",
            &extfile,
        ])?;
    }
    Ok(())
}

/// curl's HTTP status for `url` with `args` (000 when no HTTP answer came).
fn curl_status(url: &str, args: &[&str]) -> Result<String, Failed> {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
        ])
        .args(args)
        .arg(url)
        .output()
        .map_err(|e| fail(format!("cannot run curl: {e}")))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn prometheus_tls() -> Result<(), Failed> {
    const FORKS: u64 = 40;
    let dir = TempDir::new("tls")?;
    make_certificates(&dir)?;
    let d = dir.path().display().to_string();
    // Cost 4: bcrypt's minimum, so the first check is quick under emulation too.
    let hash = bcrypt::hash("s3cret", 4).map_err(|e| fail(e.to_string()))?;
    let web = dir.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: {d}/server.pem\n  key_file: {d}/server.key\n  min_version: TLS12\n\
             basic_auth_users:\n  prometheus: '{hash}'\n"
        ),
    )?;
    let (workload, comm) = unique_workload(&dir)?;
    let (tool, addr) = serve(&["--web.config.file", &web])?;
    let url = format!("https://{addr}/metrics");
    let ca = format!("{d}/ca.pem");
    ensure(
        curl_status(&url, &["--cacert", &ca, "-u", "prometheus:s3cret"])? == "200",
        || "curl with the right password: not 200".into(),
    )?;
    ensure(
        curl_status(&url, &["--cacert", &ca, "-u", "prometheus:wrong"])? == "401",
        || "curl with a wrong password: not 401".into(),
    )?;
    ensure(curl_status(&url, &["--cacert", &ca])? == "401", || {
        "curl without a password: not 401".into()
    })?;
    // Plain HTTP to the TLS port gets no HTTP answer at all.
    ensure(http_get(&addr, "/metrics", None).is_err(), || {
        "plain HTTP to the TLS port was answered".into()
    })?;

    let job = |name: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n\
             \x20   basic_auth:\n      username: prometheus\n      password: {password}\n\
             \x20   static_configs:\n      - targets: ['{addr}']\n"
        )
    };
    let prometheus = Prometheus::start_jobs(&(job("tracer", "s3cret") + &job("wrong", "not-it")))?;
    let scrape_ok = scaled(Duration::from_secs(40));
    let up = prometheus.wait_for("up{job=\"tracer\"}", scrape_ok, |v| v == 1.0)?;
    ensure(up == Some(1.0), || format!("tracer target not up: {up:?}"))?;
    let wrong = prometheus.wait_for("up{job=\"wrong\"}", scrape_ok, |_| true)?;
    ensure(wrong == Some(0.0), || {
        format!("target with a wrong password: up = {wrong:?}")
    })?;
    let forks = format!("tracer_forks_total{{job=\"tracer\",parent_comm=\"{comm}\"}}");
    let before = prometheus.query(&forks)?.first().map_or(0.0, |r| r.1);
    run_workload(&workload, &["fork", &FORKS.to_string()])?;
    let want = before + FORKS as f64;
    let got = prometheus.wait_for(&forks, scrape_ok, |v| v >= want)?;
    ensure(got == Some(want), || {
        format!("{forks} = {got:?}, expected {want}")
    })?;
    drop(prometheus);
    tool.stop(libc::SIGINT)?.ok()?;

    // Client certificates required: a client without one cannot even complete the handshake.
    let web = dir.write(
        "web-mtls.yml",
        &format!(
            "tls_server_config:\n  cert_file: {d}/server.pem\n  key_file: {d}/server.key\n\
             \x20 client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {d}/ca.pem\n"
        ),
    )?;
    let (tool, addr) = serve(&["--web.config.file", &web])?;
    let url = format!("https://{addr}/metrics");
    let without = curl_status(&url, &["--cacert", &ca])?;
    ensure(without == "000", || {
        format!("a client without a certificate got HTTP {without}")
    })?;
    let cert = format!("{d}/client.pem");
    let key = format!("{d}/client.key");
    let with = curl_status(&url, &["--cacert", &ca, "--cert", &cert, "--key", &key])?;
    ensure(with == "200", || {
        format!("a client with a certificate got HTTP {with}")
    })?;
    let (status, text) = http_get_via_curl(&url, &ca, &cert, &key)?;
    ensure(
        status && text.contains("tracer_http_rejected_total{reason=\"tls_handshake\"} "),
        || "no tls_handshake rejection counted".into(),
    )?;
    let refused = sample(
        &text,
        "tracer_http_rejected_total{reason=\"tls_handshake\"}",
    );
    ensure(refused.is_some_and(|n| n >= 1.0), || {
        format!("tls_handshake rejections: {refused:?}")
    })?;
    tool.stop(libc::SIGINT)?.ok()?;
    Ok(())
}

fn http_get_via_curl(url: &str, ca: &str, cert: &str, key: &str) -> Result<(bool, String), Failed> {
    let out = Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "20",
            "--cacert",
            ca,
            "--cert",
            cert,
            "--key",
            key,
            url,
        ])
        .output()
        .map_err(|e| fail(format!("cannot run curl: {e}")))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// Writes `request` on a fresh connection (optionally half-closing it) and reads until the
/// server closes or `wait` passes: everything it answered.
fn exchange(
    addr: &str,
    request: &[u8],
    half_close: bool,
    wait: Duration,
) -> Result<String, Failed> {
    let mut stream =
        TcpStream::connect(addr).map_err(|e| fail(format!("cannot connect to {addr}: {e}")))?;
    stream
        .set_read_timeout(Some(wait))
        .map_err(|e| fail(e.to_string()))?;
    let _ = stream.write_all(request);
    if half_close {
        let _ = stream.shutdown(Shutdown::Write);
    }
    let mut answer = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn still_serving(tool: &mut Running, addr: &str, after: &str) -> Result<(), Failed> {
    let (status, _) =
        http_get(addr, "/-/healthy", None).map_err(|e| fail(format!("after {after}: {e:?}")))?;
    ensure(status == 200, || {
        format!("after {after}: /-/healthy HTTP {status}")
    })?;
    ensure(
        tool.wait_stderr("panicked", Duration::ZERO).is_err(),
        || format!("serve panicked after {after}"),
    )
}

fn parser_edges() -> Result<(), Failed> {
    let (mut tool, addr) = serve(&[])?;
    let wait = scaled(Duration::from_secs(3));
    let status_of = |answer: &str| answer.split_whitespace().nth(1).unwrap_or("").to_string();

    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    for (what, request) in [
        ("binary garbage", garbage.clone()),
        (
            "a request line without a version",
            b"GET /metrics\r\n\r\n".to_vec(),
        ),
        ("a bad method", b"G\x01T /metrics HTTP/1.1\r\n\r\n".to_vec()),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
        (
            "a header without a colon",
            b"GET / HTTP/1.1\r\nbroken\r\n\r\n".to_vec(),
        ),
    ] {
        let answer = exchange(&addr, &request, false, wait)?;
        let status = status_of(&answer);
        ensure(answer.is_empty() || status.starts_with('4'), || {
            format!("{what}: answered {answer:?}")
        })?;
        still_serving(&mut tool, &addr, what)?;
    }

    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let answer = exchange(&addr, huge.as_bytes(), false, wait)?;
    ensure(answer.is_empty() || status_of(&answer) == "431", || {
        format!("a 64 KiB header: {}", answer.lines().next().unwrap_or(""))
    })?;
    still_serving(&mut tool, &addr, "a 64 KiB header")?;

    // Three pipelined requests in one write: three answers, in order.
    let pipelined = "GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n\
                     GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n\
                     GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = exchange(&addr, pipelined.as_bytes(), false, wait)?;
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answer[i + 9..i + 12])
        .collect();
    ensure(statuses == ["200", "404", "200"], || {
        format!("pipelined: statuses {statuses:?}")
    })?;
    ensure(answer.contains("tracer_scrapes_total "), || {
        "pipelined: no metrics in the third answer".into()
    })?;

    // HTTP/1.0 without keep-alive: one answer, then the server closes.
    let answer = exchange(&addr, b"GET /metrics HTTP/1.0\r\n\r\n", false, wait)?;
    ensure(status_of(&answer) == "200", || {
        format!("HTTP/1.0: {}", answer.lines().next().unwrap_or(""))
    })?;
    // Half-closed after the request: still answered.
    let answer = exchange(
        &addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        true,
        wait,
    )?;
    ensure(status_of(&answer) == "200", || {
        format!("half-closed: {}", answer.lines().next().unwrap_or(""))
    })?;
    // HEAD: the head of the 200, no body; a POST body: 405 with Allow.
    let answer = exchange(
        &addr,
        b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        false,
        wait,
    )?;
    ensure(
        status_of(&answer) == "200" && answer.ends_with("\r\n\r\n"),
        || format!("HEAD: {answer:?}"),
    )?;
    let answer = exchange(
        &addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        false,
        wait,
    )?;
    ensure(
        status_of(&answer) == "405" && answer.to_ascii_lowercase().contains("allow: get, head"),
        || format!("POST: {answer:?}"),
    )?;
    // Closed before the head was complete: nothing breaks.
    let _ = exchange(&addr, b"GET /metr", true, Duration::from_millis(200))?;
    still_serving(&mut tool, &addr, "every edge case")?;
    let (_, text) = scrape(&addr)?;
    let bad = sample(&text, "tracer_http_rejected_total{reason=\"bad_request\"}");
    ensure(bad.is_some_and(|n| n >= 1.0), || {
        format!("bad_request rejections: {bad:?}")
    })?;
    tool.stop(libc::SIGINT)?.ok()?;
    Ok(())
}

//! Soak: every live tool at once, each in its interval mode (read, print and clear every few
//! seconds, as someone watching it live would run it), for TRACER_SOAK_SECS seconds (default
//! 600) under a steady load of forks, context switches, writes and a hot function. Sampled
//! every few seconds: each tool's RSS and the entry count of each of its BPF hash maps.
//! It runs only in the soak stage of `cargo xtask test` (TRACER_SOAK=1).
//!
//! Verdicts:
//! - RSS is flat: the median of the last third of the samples is at most the median of the
//!   first third + max(2 MiB, 10 %). A per-interval leak of even a few KiB grows well past
//!   that over hundreds of intervals; allocator noise and warm caches do not.
//! - Maps stop growing after warm-up: the median entry count of the last third is at most the
//!   median of the middle third + max(64, 25 %). (Medians, not maxima: maps that are drained
//!   or evicted every interval hover at a level set by the load's churn, and a peak is not
//!   growth, and a drained map's level depends on when in the interval it is sampled; a map
//!   growing linearly has a last-third median 5/3 of the middle one's.) A map whose keys are never
//!   removed (per-interval clearing forgotten, entries of exited tasks kept) grows about as
//!   much in the last third as in the middle third under this steady load and fails; a map
//!   sized by the live key space (cleared per interval, LRU, entries deleted on switch/exit)
//!   plateaus. Every count must also stay within the map's max_entries, and a map sitting at
//!   max_entries (full, so losing updates) fails too. LRU maps (bounded caches that evict)
//!   and one-entry maps are not judged. Growth already measured and not fixed yet is listed
//!   in `KNOWN` and shown as KNOWN instead of failing.
//! - Each tool is still running at every sample and exits cleanly (0) on SIGINT at the end.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use libtest_mimic::{Completion, Failed, Trial};

use crate::common::{Need, TRACER, WORKLOAD, bpf_objects_of, fail};

pub fn tests() -> Vec<Trial> {
    vec![Trial::ignorable_test("soak::all_live_tools", || {
        if std::env::var_os("TRACER_SOAK").is_none() {
            return Ok(Completion::ignored_with(
                "runs in the soak stage of cargo xtask test (TRACER_SOAK=1)",
            ));
        }
        if let Some(reason) = Need::Root.missing() {
            return Ok(Completion::ignored_with(reason));
        }
        all_live_tools().map(|()| Completion::Completed)
    })]
}

/// Interval of every tool, seconds.
const INTERVAL: &str = "2";

/// The live tools (see signals.rs for the list every tool is checked against), each with
/// arguments for its interval mode. `{writer}` is the PID of the workload that calls write(2),
/// `{workload}` the tracer-workload binary. A tool that says it is not implemented yet is
/// left out of the run (reported in the summary).
const TOOLS: &[(&str, &[&str])] = &[
    ("forksnoop", &[]),
    ("forksnoop", &["--summary", INTERVAL]),
    ("softirq-top", &[INTERVAL]),
    ("profile", &["-F", "49", INTERVAL]),
    ("kstacks", &["-F", "49", INTERVAL]),
    ("offcputime", &[INTERVAL]),
    ("funccount", &["-P", "t:sched:sched_process_fork", INTERVAL]),
    (
        "funclatency",
        &["-u", "-p", "{writer}", "u:libc:write", INTERVAL],
    ),
    (
        "argdist",
        &["-C", "t:sched:sched_switch", "prev_pid", INTERVAL],
    ),
    ("trace", &["u:{workload}:tracer_workload_hot_function"]),
    // No interval mode: counts until the end; kernel stacks are keyed by comm, so its maps
    // level off like the others.
    ("stackcount", &["t:sched:sched_process_fork"]),
    ("ktop", &[INTERVAL]),
    ("runqlat", &[INTERVAL]),
    ("cpudist", &[INTERVAL]),
    // Scraped at every sample (see `scrape`).
    ("serve", &["--listen", "127.0.0.1:0"]),
];

/// Growth the soak has measured and that is not fixed yet: (tool, "RSS" or map name, why).
/// Shown as KNOWN in the summary instead of failing the stage; each is a finding to fix, after
/// which its row goes. Numbers from a 600 s soak with the load below (~400 new tasks/s). The
/// common cause of the map rows: interval modes print deltas of cumulative maps and never
/// remove the keys of tasks that have exited (ktop does, and plateaus).
const KNOWN: &[(&str, &str, &str)] = &[
    (
        "profile",
        "COUNTS",
        "keys of exited threads are evicted (150 s: never more than a round's worth of dead \
         keys), but a live long-lived process keeps adding (kernel stack, user stack) pairs, \
         the user leaf IP varying with where hot code was hit: 1195 → 1683 in a 150 s soak \
         (one load process 24 → 56 keys in 20 s); needs eviction of long-unchanged keys of \
         live tasks with an exact read-and-delete (BPF_MAP_LOOKUP_AND_DELETE_ELEM)",
    ),
    (
        "profile",
        "STACKS",
        "as COUNTS: stacks of live tasks' keys: 1101 → 1502 in a 150 s soak",
    ),
    (
        "profile",
        "RSS",
        "as COUNTS (symbols of live processes' new stacks); exited processes' symbols are \
         dropped: 17.1 → 20.0 MiB in a 150 s soak (was 22 → 76 MiB over 600 s)",
    ),
    (
        "offcputime",
        "OFFCPU",
        "as profile COUNTS: keys of exited threads are evicted, live tasks keep adding \
         stacks: 2964 → 3400 in a 150 s soak (another run: 3134 → 3263, passing)",
    ),
    (
        "offcputime",
        "STACKS",
        "as OFFCPU: the stacks of live tasks' keys still grow: 1158 → 1442, 1171 → 1749 \
         in 150 s soaks",
    ),
    (
        "kstacks",
        "COUNTS",
        "kernel threads live on and keep meeting new kernel stacks (kworkers running other \
         work): 120 → 174 over 600 s, bounded by distinct kernel stacks but not flat",
    ),
    ("kstacks", "STACKS", "as COUNTS: 112 → 163 over 600 s"),
    (
        "serve",
        "THREADS",
        "not growth but churn: exited threads are evicted at every scrape, so the level follows \
         how many threads the load made since the last one (600 s runs: 3710 → 2925, \
         2136 → 3297); a criterion that knows the live thread count would judge it",
    ),
];

/// The steady load, one long-lived process per kind of activity: many short-lived tasks
/// (~500 a second, what makes per-task keys pile up) but little CPU (about a fifth of one),
/// since the soak shares the machine with the qemu stage.
const LOAD: &[&[&str]] = &[
    &["fork", "20", "threads", "5", "sleep", "0.05"],
    &["pingpong", "200", "sleep", "0.05"],
    &["write", "2000", "open", "200", "sleep", "0.05"],
    &["hot", "0.01", "sleep", "0.2"],
];

struct Sample {
    rss_kib: u64,
    /// map id → entries.
    maps: BTreeMap<u32, u64>,
}

struct Tool {
    name: String,
    args: Vec<String>,
    child: Child,
    stdout_lines: Arc<AtomicU64>,
    stderr: Arc<Mutex<Vec<String>>>,
    samples: Vec<Sample>,
    /// map id → (name, max_entries), for hash-like maps.
    maps: BTreeMap<u32, (String, u32)>,
    dead: Option<String>,
    /// HOST:PORT of a metrics endpoint (serve), scraped at every sample.
    metrics: Option<String>,
    scrape_failures: Vec<String>,
}

fn all_live_tools() -> Result<(), Failed> {
    let secs: u64 = std::env::var("TRACER_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let period = Duration::from_secs((secs / 60).clamp(2, 10));
    let mut load: Vec<Child> = LOAD
        .iter()
        .map(|body| {
            Command::new(WORKLOAD)
                .args(["repeat", &(secs + 60).to_string()])
                .args(*body)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| fail(format!("cannot start the load: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let writer = load[2].id().to_string();
    let result = soak(secs, period, &writer);
    for child in &mut load {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

fn soak(secs: u64, period: Duration, writer: &str) -> Result<(), Failed> {
    let mut tools = Vec::new();
    let mut left_out = Vec::new();
    for (name, args) in TOOLS {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                a.replace("{writer}", writer)
                    .replace("{workload}", WORKLOAD)
            })
            .collect();
        match spawn(name, &args)? {
            Some(tool) => tools.push(tool),
            None => left_out.push(*name),
        }
    }
    let began = Instant::now();
    let end = began + Duration::from_secs(secs);
    let mut failures = Vec::new();
    loop {
        for tool in &mut tools {
            if tool.dead.is_some() {
                continue;
            }
            if let Ok(Some(status)) = tool.child.try_wait() {
                let said = tool
                    .stderr
                    .lock()
                    .map(|s| s.join(" | "))
                    .unwrap_or_default();
                tool.dead = Some(format!(
                    "exited ({status}) after {:?}: {said}",
                    began.elapsed()
                ));
                continue;
            }
            if let Some(addr) = &tool.metrics
                && let Err(e) = scrape(addr)
            {
                tool.scrape_failures.push(e);
            }
            let pid = tool.child.id();
            let maps = tool
                .maps
                .iter()
                .filter_map(|(&id, _)| map_entries(id).map(|n| (id, n)))
                .collect();
            tool.samples.push(Sample {
                rss_kib: rss_kib(pid).unwrap_or(0),
                maps,
            });
        }
        if Instant::now() >= end {
            break;
        }
        thread::sleep(period.min(end.saturating_duration_since(Instant::now())));
    }
    // Stop them all; each must exit cleanly.
    for tool in &mut tools {
        if tool.dead.is_none() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(tool.child.id() as i32, libc::SIGINT) };
        }
    }
    let stop_deadline = Instant::now() + Duration::from_secs(60);
    for tool in &mut tools {
        if tool.dead.is_some() {
            continue;
        }
        let status = loop {
            match tool.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < stop_deadline => {
                    thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = tool.child.kill();
                    let _ = tool.child.wait();
                    break None;
                }
            }
        };
        match status {
            Some(s) if s.success() => {}
            Some(s) => tool.dead = Some(format!("exit {s} on SIGINT")),
            None => tool.dead = Some("did not exit within 60 s of SIGINT".into()),
        }
    }

    println!(
        "\nsoak: {} tools for {secs} s, sampled every {period:?} (RSS MiB: first-third median → \
         last-third median; maps: entries middle-third median → last-third median / max_entries)",
        tools.len()
    );
    println!(
        "{:<13} {:<34} {:>7} {:>15}  maps",
        "tool", "args", "lines", "RSS MiB"
    );
    let mut known_seen = Vec::new();
    for tool in &tools {
        let verdicts = judge(tool);
        let (rss_first, rss_last) = rss_medians(tool);
        let map_text: Vec<String> = tool
            .maps
            .iter()
            .map(|(id, (name, max))| {
                let (mid, last) = map_levels(tool, *id);
                format!("{name} {mid}→{last}/{max}")
            })
            .collect();
        println!(
            "{:<13} {:<34} {:>7} {:>6.1} → {:>6.1}  {}{}",
            tool.name,
            truncate(&tool.args.join(" "), 34),
            tool.stdout_lines.load(Ordering::Relaxed),
            rss_first as f64 / 1024.0,
            rss_last as f64 / 1024.0,
            map_text.join(", "),
            verdicts
                .iter()
                .map(|v| format!("  {}: {}", if v.known { "KNOWN" } else { "FAIL" }, v.text))
                .collect::<String>()
        );
        for v in verdicts {
            let line = format!("{} {}: {}", tool.name, tool.args.join(" "), v.text);
            if v.known {
                known_seen.push(line);
            } else {
                failures.push(line);
            }
        }
    }
    if !known_seen.is_empty() {
        println!("known growth (soak.rs KNOWN, not failing the run):");
        for (tool, what, why) in KNOWN {
            println!("  {tool} {what}: {why}");
        }
    }
    for name in left_out {
        println!("{name:<13} left out: not implemented yet");
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(fail(failures.join("\n")))
    }
}

fn truncate(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        text.to_string()
    } else {
        text.chars().take(n - 1).chain(['…']).collect()
    }
}

/// Starts one tool (stdout counted and dropped, stderr kept) and waits until it is attached;
/// `None` if it is not implemented yet.
fn spawn(name: &str, args: &[String]) -> Result<Option<Tool>, Failed> {
    let mut child = Command::new(TRACER)
        .arg(name)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start tracer {name}: {e}")))?;
    let stdout_lines = Arc::new(AtomicU64::new(0));
    let mut stdout = child.stdout.take().expect("piped");
    let counter = stdout_lines.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            let lines = buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            counter.fetch_add(lines, Ordering::Relaxed);
        }
    });
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let err_pipe = child.stderr.take().expect("piped");
    let kept = stderr.clone();
    thread::spawn(move || {
        for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            if let Ok(mut kept) = kept.lock()
                && kept.len() < 50
            {
                kept.push(line);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.contains("Hit Ctrl-C to end.") => {
                // serve: "Serving metrics on http://127.0.0.1:PORT/metrics ..."
                break line
                    .split("http://")
                    .nth(1)
                    .and_then(|rest| rest.split('/').next())
                    .map(String::from);
            }
            Ok(line) if line.contains("is not implemented yet") => {
                let _ = child.wait();
                return Ok(None);
            }
            Ok(_) => {}
            Err(_) if Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) => {}
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let said = stderr.lock().map(|s| s.join(" | ")).unwrap_or_default();
                return Err(fail(format!(
                    "tracer {name} {} did not attach: {said}",
                    args.join(" ")
                )));
            }
        }
    };
    let maps = bpf_objects_of(child.id())
        .maps
        .into_iter()
        .filter_map(|id| hash_map_info(id).map(|info| (id, info)))
        .collect();
    Ok(Some(Tool {
        name: name.to_string(),
        args: args.to_vec(),
        child,
        stdout_lines,
        stderr,
        samples: Vec::new(),
        maps,
        dead: None,
        metrics,
        scrape_failures: Vec::new(),
    }))
}

/// A tool left behind by a failing soak would stay attached.
impl Drop for Tool {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What failed, and whether it is a known finding (see `KNOWN`).
struct Verdict {
    text: String,
    known: bool,
}

fn judge(tool: &Tool) -> Vec<Verdict> {
    let known = |what: &str| KNOWN.iter().any(|(t, w, _)| *t == tool.name && *w == what);
    let mut verdicts = Vec::new();
    if let Some(dead) = &tool.dead {
        verdicts.push(Verdict {
            text: dead.clone(),
            known: false,
        });
        return verdicts;
    }
    if tool.samples.len() < 6 {
        verdicts.push(Verdict {
            text: format!("only {} samples", tool.samples.len()),
            known: false,
        });
        return verdicts;
    }
    if !tool.scrape_failures.is_empty() {
        verdicts.push(Verdict {
            text: format!(
                "{} of {} scrapes failed, first: {}",
                tool.scrape_failures.len(),
                tool.samples.len(),
                tool.scrape_failures[0]
            ),
            known: false,
        });
    }
    let (first, last) = rss_medians(tool);
    let allowed = first + (first / 10).max(2048);
    if last > allowed {
        verdicts.push(Verdict {
            text: format!(
                "RSS grew: median {first} KiB in the first third, {last} KiB in the last (allowed {allowed})"
            ),
            known: known("RSS"),
        });
    }
    for (id, (name, max)) in &tool.maps {
        if let Some(text) = judge_map(tool, *id, name, *max) {
            verdicts.push(Verdict {
                text,
                known: known(name),
            });
        }
    }
    verdicts
}

fn judge_map(tool: &Tool, id: u32, name: &str, max: u32) -> Option<String> {
    let (mid, last) = map_levels(tool, id);
    let max = u64::from(max);
    let all_max = tool
        .samples
        .iter()
        .filter_map(|s| s.maps.get(&id))
        .max()
        .copied()
        .unwrap_or(0);
    if all_max > max {
        Some(format!("map {name}: {all_max} entries > max_entries {max}"))
    } else if last >= max {
        Some(format!("map {name} full ({last} of {max} entries)"))
    } else if last > mid + (mid / 4).max(64) {
        Some(format!(
            "map {name} still growing: a median of {mid} entries in the middle third, {last} in the last"
        ))
    } else {
        None
    }
}

fn thirds<T>(items: &[T]) -> (&[T], &[T], &[T]) {
    let third = items.len() / 3;
    (
        &items[..third],
        &items[third..items.len() - third],
        &items[items.len() - third..],
    )
}

fn rss_medians(tool: &Tool) -> (u64, u64) {
    let median = |samples: &[Sample]| {
        let mut v: Vec<u64> = samples.iter().map(|s| s.rss_kib).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    let (first, _, last) = thirds(&tool.samples);
    (median(first), median(last))
}

/// (median entry count in the middle third, median entry count in the last third).
fn map_levels(tool: &Tool, id: u32) -> (u64, u64) {
    let median = |samples: &[Sample]| {
        let mut counts: Vec<u64> = samples
            .iter()
            .filter_map(|s| s.maps.get(&id))
            .copied()
            .collect();
        counts.sort_unstable();
        counts.get(counts.len() / 2).copied().unwrap_or(0)
    };
    let (_, mid, last) = thirds(&tool.samples);
    (median(mid), median(last))
}

/// GET /metrics from a serve endpoint; an error unless it answers 200 with samples.
fn scrape(addr: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut body = String::new();
    stream
        .read_to_string(&mut body)
        .map_err(|e| format!("read: {e}"))?;
    if body.starts_with("HTTP/1.1 200") && body.contains("tracer_") {
        Ok(())
    } else {
        Err(body.lines().next().unwrap_or("empty answer").to_string())
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// bpf(2) commands and map types used below.
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const HASH_LIKE: &[u32] = &[
    1, // BPF_MAP_TYPE_HASH
    5, // BPF_MAP_TYPE_PERCPU_HASH
    7, // BPF_MAP_TYPE_STACK_TRACE
];

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> i64 {
    // SAFETY: bpf(2) reads and writes within `attr`, which we own; pointers in it point to
    // buffers that outlive the call.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as u32,
        )
    }
}

/// An fd for map `id`, closed on drop.
struct MapFd(i32);

impl MapFd {
    fn open(id: u32) -> Option<Self> {
        let mut attr = [0u64; 16];
        attr[0] = u64::from(id);
        let fd = bpf(BPF_MAP_GET_FD_BY_ID, &mut attr);
        (fd >= 0).then_some(Self(fd as i32))
    }
}

impl Drop for MapFd {
    fn drop(&mut self) {
        // SAFETY: closing our own fd.
        unsafe { libc::close(self.0) };
    }
}

/// struct bpf_map_info (the leading fields; the kernel fills at most `info_len` bytes).
#[repr(C)]
#[derive(Default)]
struct MapInfo {
    kind: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    name: [u8; 16],
}

fn map_info(fd: &MapFd) -> Option<MapInfo> {
    let mut info = MapInfo::default();
    let mut attr = [0u64; 16];
    // { u32 bpf_fd; u32 info_len; u64 info; }
    attr[0] = (fd.0 as u32 as u64) | ((std::mem::size_of::<MapInfo>() as u64) << 32);
    attr[1] = &mut info as *mut MapInfo as u64;
    (bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) == 0).then_some(info)
}

/// (name, max_entries) of map `id` if it is a map that can grow: hash and stack maps.
/// Arrays are always full and ring buffers have no entries; LRU maps evict their oldest keys
/// by design, so they are bounded caches; a map of at most one entry holds one aggregate (or
/// is a feature the run does not use, shrunk to one entry).
fn hash_map_info(id: u32) -> Option<(String, u32)> {
    let fd = MapFd::open(id)?;
    let info = map_info(&fd)?;
    if !HASH_LIKE.contains(&info.kind) || info.max_entries <= 1 {
        return None;
    }
    let name = String::from_utf8_lossy(&info.name)
        .trim_end_matches('\0')
        .to_string();
    Some((name, info.max_entries))
}

/// Number of keys in map `id`, walked with BPF_MAP_GET_NEXT_KEY (bounded: a walk that keeps
/// restarting because keys vanish under it stops at 2 × max_entries).
fn map_entries(id: u32) -> Option<u64> {
    let fd = MapFd::open(id)?;
    let info = map_info(&fd)?;
    let size = info.key_size as usize;
    let mut key = vec![0u8; size];
    let mut next = vec![0u8; size];
    // A key deleted under the walk makes the kernel restart it from the first key: count
    // distinct keys, and give up after 2 × max_entries steps.
    let mut seen = std::collections::HashSet::new();
    let mut steps = 0u64;
    let mut first = true;
    while steps < 2 * u64::from(info.max_entries) {
        steps += 1;
        let mut attr = [0u64; 16];
        // { u32 map_fd; u64 key (aligned at 8); u64 next_key; }
        attr[0] = fd.0 as u32 as u64;
        attr[1] = if first { 0 } else { key.as_ptr() as u64 };
        attr[2] = next.as_mut_ptr() as u64;
        if bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) != 0 {
            break;
        }
        first = false;
        seen.insert(next.clone());
        std::mem::swap(&mut key, &mut next);
    }
    Some(seen.len() as u64)
}

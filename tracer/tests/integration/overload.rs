//! Overload: far more events than a reader can take, and more distinct keys than a map holds.
//! Event tools must never stall the kernel side (a full ring buffer drops, it does not wait),
//! every dropped event must be counted in the kernel and reported, aggregate tools must stay
//! exact, and a full map must be reported, not silent.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::common::{
    DEADLINE, Need, TRACER, Workload, emulated, ensure, fail, scaled, start, start_with_env, trial,
};

const ROOT: &[Need] = &[Need::Root];

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "overload::fork_storm_stalled_reader_counts_every_loss",
            ROOT,
            fork_storm_stalled_reader,
        ),
        trial(
            "overload::fork_storm_aggregates_exact",
            ROOT,
            fork_storm_aggregates_exact,
        ),
        trial("overload::map_full_is_reported", ROOT, map_full_is_reported),
    ]
}

/// The sizes of a storm: natively, tens of thousands of forks against the tools' real map
/// sizes; under qemu's TCG emulation (where a fork costs milliseconds, so 30 000 take minutes)
/// a few hundred against maps shrunk with TRACER_MAP_MAX_ENTRIES, so the same overflow happens
/// on the same code path.
struct Storm {
    forks: u64,
    /// TRACER_MAP_MAX_ENTRIES for tracer ("" = the tools' own sizes).
    map_sizes: &'static str,
}

impl Storm {
    fn env(&self) -> Vec<(&'static str, &'static str)> {
        if self.map_sizes.is_empty() {
            Vec::new()
        } else {
            vec![("TRACER_MAP_MAX_ENTRIES", self.map_sizes)]
        }
    }
}

/// More forks than forksnoop's ring buffer holds, while nobody reads its stdout: the tool
/// blocks writing to the full pipe, the ring fills, the kernel side drops. Afterwards: events
/// printed + losses counted == forks made, exactly.
fn fork_storm_stalled_reader() -> Result<(), Failed> {
    // The 1 MiB ring holds about 14 000 events, and the tool's 64 KiB output buffer and the
    // pipe some hundreds more. Under TCG: a one-page ring (about 50 events) and a one-page
    // pipe, so a thousand forks overflow it by hundreds.
    let storm = if emulated().is_some() {
        Storm {
            forks: 1_000,
            map_sizes: "EVENTS=4096",
        }
    } else {
        Storm {
            forks: 30_000,
            map_sizes: "",
        }
    };
    let n = storm.forks;
    let workload = Workload::spawn(&["fork", &n.to_string()])?;
    let mut child = Command::new(TRACER)
        .args(["forksnoop", "--json", "-p", &workload.pid.to_string()])
        .envs(storm.env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start tracer: {e}")))?;
    let stdout = child.stdout.take().expect("piped");
    if emulated().is_some() {
        use std::os::fd::AsRawFd as _;
        // SAFETY: resizing a pipe we own; the smallest size is one page.
        let _ = unsafe { libc::fcntl(stdout.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    }
    let (err_tx, err_rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("piped");
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_tx.send(line);
        }
    });
    let mut stderr_lines = Vec::new();
    let attached = Instant::now() + scaled(Duration::from_secs(20));
    while !stderr_lines
        .iter()
        .any(|l: &String| l.contains("Hit Ctrl-C"))
    {
        match err_rx.recv_timeout(attached.saturating_duration_since(Instant::now())) {
            Ok(line) => stderr_lines.push(line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "forksnoop did not attach: {}",
                    stderr_lines.join(" | ")
                )));
            }
        }
    }
    // The storm, with stdout unread all along: the kernel side must not wait for us.
    let began = Instant::now();
    workload.go_and_wait_within(DEADLINE)?;
    let took = began.elapsed();
    // Now read everything, then stop it.
    let reader = thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| fail(e.to_string()))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail("forksnoop did not exit after SIGINT"));
        }
        thread::sleep(Duration::from_millis(20));
    };
    let lines = reader.join().map_err(|_| fail("reader panicked"))?;
    while let Ok(line) = err_rx.recv_timeout(Duration::from_millis(200)) {
        stderr_lines.push(line);
    }
    ensure(status.success(), || {
        format!("forksnoop: {status}: {}", stderr_lines.join(" | "))
    })?;
    let records: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).map_err(|e| fail(format!("not JSON ({e}): {l}"))))
        .collect::<Result<_, _>>()?;
    let seen = records.iter().filter(|r| r["type"] == "fork").count() as u64;
    let end = records
        .iter()
        .find(|r| r["type"] == "end")
        .ok_or_else(|| fail("no end record"))?;
    let lost = end["lost"].as_u64().unwrap_or(0);
    ensure(seen + lost == n, || {
        format!("seen {seen} + lost {lost} != {n} forks made (storm took {took:?}): {end}")
    })?;
    println!("    ({n} forks in {took:.1?}: {seen} printed, {lost} lost)");
    ensure(lost > 0, || {
        format!("nothing lost with a stalled reader: the storm did not overflow the ring ({end})")
    })?;
    ensure(
        stderr_lines
            .iter()
            .any(|l| l.contains("lost") && l.contains("events")),
        || {
            format!(
                "losses not reported on stderr: {}",
                stderr_lines.join(" | ")
            )
        },
    )
}

/// The same storm counted by in-kernel aggregation (forksnoop --summary and funccount at
/// once, their output small): no event stream to overflow, so both are exact.
fn fork_storm_aggregates_exact() -> Result<(), Failed> {
    // Exact at any rate: under TCG a smaller storm counts the same way.
    let n: u64 = if emulated().is_some() { 600 } else { 20_000 };
    let workload = Workload::spawn(&["fork", &n.to_string()])?;
    let workload_pid = workload.pid;
    let pid = workload_pid.to_string();
    let summary = start(&["forksnoop", "--summary", "--json", "-p", &pid])?;
    let count = start(&[
        "funccount",
        "--json",
        "-p",
        &pid,
        "t:sched:sched_process_fork",
    ])?;
    workload.go_and_wait_within(DEADLINE)?;
    let summary = summary.stop(libc::SIGINT)?.ok()?.json()?;
    let count = count.stop(libc::SIGINT)?.ok()?.json()?;
    let forks: u64 = summary
        .iter()
        .filter(|r| r["type"] == "summary")
        .flat_map(|r| r["parents"].as_array().cloned().unwrap_or_default())
        .filter(|p| p["pid"] == workload_pid)
        .map(|p| p["forks"].as_u64().unwrap_or(0))
        .sum();
    ensure(forks == n, || {
        format!("forksnoop --summary counted {forks} of {n} forks: {summary:?}")
    })?;
    let counted: u64 = count
        .iter()
        .filter(|r| r["type"] == "counts")
        .flat_map(|r| r["probes"].as_array().cloned().unwrap_or_default())
        .map(|p| p["count"].as_u64().unwrap_or(0))
        .sum();
    ensure(counted == n, || {
        format!("funccount counted {counted} of {n} forks: {count:?}")
    })
}

/// funccount -P keeps one entry per process in a 10 240-entry map; 11 000 short-lived
/// processes overflow it (under TCG: 400 processes and the map shrunk to 128 entries). Every
/// exit must land in a row or in the map-full count, and the overflow must be reported on
/// stderr and in the end record.
fn map_full_is_reported() -> Result<(), Failed> {
    let (storm, map_entries) = if emulated().is_some() {
        (
            Storm {
                forks: 400,
                map_sizes: "PID_COUNTS=128",
            },
            128,
        )
    } else {
        (
            Storm {
                forks: 11_000,
                map_sizes: "",
            },
            10_240,
        )
    };
    let n = storm.forks;
    let workload = Workload::spawn(&["fork", &n.to_string()])?;
    let tool = start_with_env(
        &["funccount", "-P", "--json", "t:sched:sched_process_exit"],
        &storm.env(),
    )?;
    workload.go_and_wait_within(DEADLINE)?;
    let done = tool.stop(libc::SIGINT)?.ok()?;
    let records = done.json()?;
    let per_pid = records
        .iter()
        .rfind(|r| r["type"] == "counts_per_pid")
        .ok_or_else(|| fail("no counts_per_pid record"))?;
    let rows = per_pid["rows"].as_array().cloned().unwrap_or_default();
    ensure(rows.len() <= map_entries, || {
        format!("{} rows from a {map_entries}-entry map", rows.len())
    })?;
    // Other tests' tracer-workload processes may exit meanwhile: at least n, not exactly.
    let ours: u64 = rows
        .iter()
        .filter(|r| r["comm"] == "tracer-workload")
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum();
    let end = records
        .iter()
        .find(|r| r["type"] == "end")
        .ok_or_else(|| fail("no end record"))?;
    let map_full = end["stats"]["map_full"].as_u64().unwrap_or(0);
    ensure(map_full > 0, || {
        format!("{n} processes in a {map_entries}-entry map, map_full 0: {end}")
    })?;
    ensure(ours + map_full >= n, || {
        format!("{ours} counted in rows + {map_full} map-full < {n} exits: updates vanished")
    })?;
    ensure(
        done.stderr.iter().any(|l| l.contains("a map was full")),
        || {
            format!(
                "map full not reported on stderr: {}",
                done.stderr.join(" | ")
            )
        },
    )
}

//! forksnoop against ground truth: a workload forks and spawns threads in known numbers.

use std::time::Duration;

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::common::{
    Need, Workload, assert_nothing_loaded, emulated, ensure, fail, scaled, start, trial,
};

const ROOT: &[Need] = &[Need::Root];

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "forksnoop::every_fork_exactly_once",
            ROOT,
            every_fork_exactly_once,
        ),
        trial(
            "forksnoop::threads_vs_processes",
            ROOT,
            threads_vs_processes,
        ),
        trial("forksnoop::comm_filter", ROOT, comm_filter),
        trial(
            "forksnoop::summary_counts_exact",
            ROOT,
            summary_counts_exact,
        ),
        trial("forksnoop::summary_intervals", ROOT, summary_intervals),
        trial(
            "forksnoop::each_attach_mechanism",
            ROOT,
            each_attach_mechanism,
        ),
        trial("forksnoop::text_output", ROOT, text_output),
        trial(
            "forksnoop::kthread_flag_matches_proc",
            ROOT,
            kthread_flag_matches_proc,
        ),
        trial(
            "forksnoop::signals_leave_nothing_loaded",
            ROOT,
            signals_leave_nothing_loaded,
        ),
    ]
}

/// Runs `forksnoop ARGS -p <workload>` around a workload and returns the JSON records.
fn traced(workload_args: &[&str], tracer_args: &[&str]) -> Result<(u32, Vec<Value>), Failed> {
    let workload = Workload::spawn(workload_args)?;
    let pid = workload.pid.to_string();
    let mut args = vec!["forksnoop", "--json", "-p", &pid];
    args.extend_from_slice(tracer_args);
    let tool = start(&args)?;
    let workload_pid = workload.pid;
    workload.go_and_wait()?;
    std::thread::sleep(Duration::from_millis(300));
    let done = tool.stop(libc::SIGINT)?.ok()?;
    Ok((workload_pid, done.json()?))
}

fn forks(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["type"] == "fork").collect()
}

fn end(records: &[Value]) -> Result<&Value, Failed> {
    records
        .iter()
        .find(|r| r["type"] == "end")
        .ok_or_else(|| fail("no end record"))
}

fn every_fork_exactly_once() -> Result<(), Failed> {
    const N: usize = 500;
    let (pid, records) = traced(&["fork", &N.to_string()], &[])?;
    let forks = forks(&records);
    ensure(forks.len() == N, || {
        format!("saw {} forks, made {N}", forks.len())
    })?;
    let mut children = std::collections::HashSet::new();
    for f in &forks {
        ensure(f["schema"] == "tracer.forksnoop.v2", || {
            format!("schema: {f}")
        })?;
        ensure(f["parent"]["pid"] == pid, || format!("parent pid: {f}"))?;
        ensure(f["parent"]["comm"] == "tracer-workload", || {
            format!("parent comm: {f}")
        })?;
        ensure(f["kind"] == "process" && f["thread"] == false, || {
            format!("kind: {f}")
        })?;
        ensure(f["child"]["pid"] == f["child"]["tid"], || {
            format!("child pid/tid: {f}")
        })?;
        children.insert(f["child"]["pid"].as_u64().unwrap_or(0));
    }
    ensure(children.len() == N, || {
        format!("{} distinct children of {N}", children.len())
    })?;
    let end = end(&records)?;
    ensure(end["lost"] == 0, || format!("lost events: {end}"))?;
    Ok(())
}

fn threads_vs_processes() -> Result<(), Failed> {
    let work = ["fork", "100", "threads", "50"];
    let (_, all) = traced(&work, &[])?;
    let all = forks(&all);
    let threads = all.iter().filter(|f| f["kind"] == "thread").count();
    let processes = all.iter().filter(|f| f["kind"] == "process").count();
    ensure(threads == 50 && processes == 100, || {
        format!("threads {threads}, processes {processes}")
    })?;
    for f in all.iter().filter(|f| f["kind"] == "thread") {
        ensure(f["child"]["pid"] == f["parent"]["pid"], || {
            format!("thread in another group: {f}")
        })?;
    }
    let (_, only_threads) = traced(&work, &["--threads"])?;
    let n = forks(&only_threads).len();
    ensure(n == 50, || format!("--threads saw {n}, expected 50"))?;
    let (_, no_threads) = traced(&work, &["--no-threads"])?;
    let n = forks(&no_threads).len();
    ensure(n == 100, || format!("--no-threads saw {n}, expected 100"))
}

fn comm_filter() -> Result<(), Failed> {
    // No -p: the comm filter alone must pick out exactly the workload's forks.
    let workload = Workload::spawn(&["fork", "200"])?;
    let tool = start(&["forksnoop", "--json", "--comm", "tracer-work*"])?;
    workload.go_and_wait()?;
    std::thread::sleep(Duration::from_millis(300));
    let records = tool.stop(libc::SIGTERM)?.ok()?.json()?;
    let forks = forks(&records);
    ensure(forks.len() == 200, || {
        format!("saw {} forks, made 200", forks.len())
    })?;
    ensure(
        forks
            .iter()
            .all(|f| f["parent"]["comm"] == "tracer-workload"),
        || "other comm leaked".into(),
    )?;
    let workload = Workload::spawn(&["fork", "20"])?;
    let tool = start(&["forksnoop", "--json", "--comm", "no-such-comm"])?;
    workload.go_and_wait()?;
    std::thread::sleep(Duration::from_millis(200));
    let records = tool.stop(libc::SIGINT)?.ok()?.json()?;
    ensure(self::forks(&records).is_empty(), || {
        "exact comm filter let forks through".into()
    })
}

fn summary_counts_exact() -> Result<(), Failed> {
    let (pid, records) = traced(&["fork", "300", "threads", "40"], &["--summary"])?;
    let summary = records
        .iter()
        .find(|r| r["type"] == "summary")
        .ok_or_else(|| fail("no summary"))?;
    let parents = summary["parents"]
        .as_array()
        .ok_or_else(|| fail("no parents"))?;
    ensure(parents.len() == 1, || format!("parents: {summary}"))?;
    let p = &parents[0];
    ensure(p["pid"] == pid && p["comm"] == "tracer-workload", || {
        format!("parent: {p}")
    })?;
    ensure(
        p["forks"] == 340 && p["processes"] == 300 && p["threads"] == 40,
        || format!("counts: {p}"),
    )?;
    ensure(forks(&records).is_empty(), || {
        "summary mode printed events".into()
    })
}

/// Each interval drains the per-parent map (lookup-and-delete per key; on kernels before 5.14
/// the batch command or a lookup then a delete), so the intervals add up to the forks made
/// and a fork is never counted in two intervals.
fn summary_intervals() -> Result<(), Failed> {
    // Two bursts a sleep longer than an interval apart, so they land in different intervals;
    // then the tool stops by itself after COUNT. Under TCG, where forks take milliseconds
    // and timers fire late, fewer forks and 2 s intervals keep both bursts inside the run.
    let (first, second, gap, interval, count) = if emulated().is_some() {
        (40, 20, "2.5", "2", 4)
    } else {
        (100, 50, "1.2", "1", 3)
    };
    // The parent lives on past the tool's COUNT intervals (killed after): a `-p` run ends
    // when its target exits.
    let mut workload = Workload::spawn(&[
        "fork",
        &first.to_string(),
        "sleep",
        gap,
        "fork",
        &second.to_string(),
        "sleep",
        "60",
    ])?;
    let pid = workload.pid;
    let tool = start(&[
        "forksnoop",
        "--json",
        "--summary",
        "-p",
        &pid.to_string(),
        interval,
        &count.to_string(),
    ])?;
    workload.go();
    let done = tool.wait(scaled(Duration::from_secs(20)))?.ok()?;
    drop(workload);
    let records = done.json()?;
    let summaries: Vec<&Value> = records.iter().filter(|r| r["type"] == "summary").collect();
    ensure(summaries.len() == count, || {
        format!("{} summaries for count {count}", summaries.len())
    })?;
    let totals: Vec<u64> = summaries
        .iter()
        .map(|s| s["total"].as_u64().unwrap_or(0))
        .collect();
    let total: u64 = totals.iter().sum();
    ensure(total == first + second, || {
        format!(
            "intervals add up to {total} ({totals:?}), made {}",
            first + second
        )
    })?;
    ensure(totals.iter().filter(|t| **t > 0).count() >= 2, || {
        format!("both bursts in one interval ({totals:?}): the drain between them went untested")
    })
}

fn each_attach_mechanism() -> Result<(), Failed> {
    for mechanism in ["tp-btf", "raw-tp", "tracepoint"] {
        let (pid, records) = traced(&["fork", "100"], &["--attach", mechanism])?;
        let forks = forks(&records);
        ensure(forks.len() == 100, || {
            format!("{mechanism}: saw {} of 100", forks.len())
        })?;
        ensure(forks.iter().all(|f| f["parent"]["pid"] == pid), || {
            format!("{mechanism}: parent")
        })?;
        let end = end(&records)?;
        let expected = mechanism.replace('-', "_");
        ensure(end["attach"][0]["mechanism"] == expected.as_str(), || {
            format!("{mechanism}: attached via {}", end["attach"])
        })?;
        if mechanism == "tracepoint" {
            // The classic record has no task pointer: thread group unknown, said so.
            ensure(
                forks
                    .iter()
                    .all(|f| f["kind"] == "task" && f["child"]["pid"].is_null()),
                || "tracepoint rung claimed to know the thread group".into(),
            )?;
        }
    }
    Ok(())
}

fn text_output() -> Result<(), Failed> {
    let workload = Workload::spawn(&["fork", "5"])?;
    let pid = workload.pid.to_string();
    let tool = start(&["forksnoop", "-T", "-p", &pid])?;
    workload.go_and_wait()?;
    std::thread::sleep(Duration::from_millis(200));
    let done = tool.stop(libc::SIGINT)?.ok()?;
    let header = done.stdout.first().ok_or_else(|| fail("no output"))?;
    ensure(
        header.starts_with("TIME") && header.contains("PCOMM"),
        || format!("header: {header}"),
    )?;
    let rows: Vec<&String> = done.stdout.iter().skip(1).collect();
    ensure(rows.len() == 5, || format!("rows: {rows:?}"))?;
    ensure(
        rows.iter()
            .all(|r| r.contains("tracer-workload") && r.contains(&pid) && r.contains("process")),
        || format!("rows: {rows:?}"),
    )
}

/// Every event flagged as a kernel thread must be one by /proc (when the child is still
/// alive), and kthreadd's children are kernel threads. Kernel threads cannot be created on
/// demand portably, so this checks what the system produces while a workqueue-heavy load runs.
fn kthread_flag_matches_proc() -> Result<(), Failed> {
    let tool = start(&["forksnoop", "--json", "--kthreads"])?;
    // Unbound workqueues grow workers under load; a sync plus drop_caches usually triggers some.
    let _ = std::process::Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
    std::thread::sleep(Duration::from_millis(500));
    let records = tool.stop(libc::SIGINT)?.ok()?.json()?;
    for f in forks(&records) {
        ensure(f["kthread"] == true, || {
            format!("--kthreads let a user task through: {f}")
        })?;
        let child = f["child"]["tid"].as_u64().unwrap_or(0);
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) {
            let flags: u64 = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(7))
                .and_then(|f| f.parse().ok())
                .unwrap_or(0);
            ensure(flags & 0x0020_0000 != 0, || {
                format!("{child} is not PF_KTHREAD in /proc: {f}")
            })?;
        }
    }
    Ok(())
}

fn signals_leave_nothing_loaded() -> Result<(), Failed> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGKILL] {
        let tool = start(&["forksnoop", "--json"])?;
        let done = tool.stop(signal)?;
        if signal != libc::SIGKILL {
            ensure(done.code == Some(0), || {
                format!("exit code {:?} after signal {signal}", done.code)
            })?;
        }
        assert_nothing_loaded("forksnoop_")?;
    }
    Ok(())
}

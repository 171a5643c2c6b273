//! serve's kernel-thread collectors (reclaim, block, jbd2, workqueue) against ground truth, by
//! scraping /metrics before and after a known workload: an O_DSYNC writer on a loop-mounted
//! ext4 (block requests and bytes per device against /sys/block/loopX/stat, jbd2 commits
//! against /proc/fs/jbd2/loopX-8/info), a reader of twice its memory cgroup's limit (memcg
//! reclaim against memory.stat, kswapd/direct against /proc/vmstat), and reads of
//! /proc/sys/vm/stat_refresh (runs of refresh_vm_stats against a tracefs hist count).

use std::time::Duration;

use libtest_mimic::{Failed, Trial};

use crate::{
    biotop::{LoopExt4, writes},
    common::{Need, Workload, assert_nothing_loaded, ensure, fail, scaled, trial},
    reclaimtop::{self, ColdFiles, MemCgroup, PAGE},
    serve::{TempDir, http_get, serve},
    wqtop::{FUNCTION, KernelCount, online_cpus, reads},
};

const ROOT: &[Need] = &[Need::Root, Need::Tracefs];

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "serve::block_and_jbd2_match_sysfs_and_proc",
            &[
                Need::Root,
                Need::Tracefs,
                Need::Command("mkfs.ext4"),
                Need::Command("losetup"),
            ],
            block_and_jbd2,
        ),
        trial(
            "serve::reclaim_matches_memory_stat_and_vmstat",
            ROOT,
            reclaim,
        ),
        trial("serve::workqueue_runs_match_tracefs", ROOT, workqueue),
        trial(
            "serve::collector_without_tracepoint_is_left_out",
            ROOT,
            missing_tracepoint,
        ),
    ]
}

/// A config turning off the default collectors and on the ones named.
fn only(dir: &TempDir, collectors: &str) -> Result<String, Failed> {
    dir.write(
        "tracer.toml",
        &format!(
            "[collectors]\nsoftirq = false\nforks = false\nrunqueue = false\nkthreads = false\n{collectors}"
        ),
    )
}

/// The sum of the samples of `name` whose labels contain every one of `labels`
/// (`device="loop3"`), 0 when there are none.
fn total(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (set, value) = rest.strip_prefix('{')?.rsplit_once("} ")?;
            labels
                .iter()
                .all(|want| set.split(',').any(|have| have == *want))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn scrape(addr: &str) -> Result<String, Failed> {
    let (status, text) = http_get(addr, "/metrics", None)?;
    ensure(status == 200, || format!("/metrics: HTTP {status}"))?;
    Ok(text)
}

/// /sys/block/DEV/stat: (reads + writes completed, sectors read + written).
fn block_stat(device: &str) -> Result<(u64, u64), Failed> {
    let path = format!("/sys/block/{device}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| fail(format!("{path}: {e}")))?;
    let f: Vec<u64> = text
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    ensure(f.len() >= 7, || format!("{path}: '{text}'"))?;
    Ok((f[0] + f[4], f[2] + f[6]))
}

fn block_and_jbd2() -> Result<(), Failed> {
    // Mounted first: jbd2's tracepoints exist once the jbd2 module is loaded.
    let fs = LoopExt4::new("serve")?;
    fs.settle()?;
    let dir = TempDir::new("block")?;
    let config = only(&dir, "block = true\njbd2 = true\ndevice_limit = 100\n")?;
    let (tool, addr) = serve(&["--config", &config])?;
    let device = format!("device=\"{}\"", fs.device);
    let journal = format!("journal=\"{}\"", fs.journal());
    let (ios_before, sectors_before) = block_stat(&fs.device)?;
    let commits_before = fs.transactions()?;
    let before = scrape(&addr)?;
    fs.dsync_writer(writes())?;
    fs.settle()?;
    let (ios_after, sectors_after) = block_stat(&fs.device)?;
    let commits_after = fs.transactions()?;
    let after = scrape(&addr)?;
    let delta =
        |name: &str, labels: &[&str]| total(&after, name, labels) - total(&before, name, labels);

    let bytes = delta("tracer_block_io_bytes_total", &[&device]);
    let want_bytes = ((sectors_after - sectors_before) * 512) as f64;
    ensure(bytes == want_bytes && bytes > 0.0, || {
        format!(
            "tracer_block_io_bytes_total{{{device}}} grew {bytes}, /sys/block/{}/stat {want_bytes}:\n{after}",
            fs.device
        )
    })?;
    // /sys/block's reads and writes leave out flushes (op="other").
    let requests = delta("tracer_block_io_requests_total", &[&device, "op=\"read\""])
        + delta("tracer_block_io_requests_total", &[&device, "op=\"write\""]);
    let want_requests = (ios_after - ios_before) as f64;
    ensure(requests == want_requests, || {
        format!(
            "read+write requests on {} grew {requests}, /sys/block stat {want_requests}:\n{after}",
            fs.device
        )
    })?;
    // Every completed request is in the device's latency histogram.
    let all = delta("tracer_block_io_requests_total", &[&device]);
    let count = delta("tracer_block_io_latency_seconds_count", &[&device]);
    let inf = delta(
        "tracer_block_io_latency_seconds_bucket",
        &[&device, "le=\"+Inf\""],
    );
    ensure(count == all && inf == all, || {
        format!(
            "latency histogram of {} holds {count} (+Inf {inf}) of {all} requests",
            fs.device
        )
    })?;
    ensure(
        delta("tracer_block_io_latency_seconds_sum", &[&device]) > 0.0,
        || "no block latency summed".into(),
    )?;

    let commits = delta("tracer_jbd2_commit_seconds_count", &[&journal]);
    let want_commits = (commits_after - commits_before) as f64;
    ensure(commits == want_commits && commits > 0.0, || {
        format!(
            "tracer_jbd2_commit_seconds_count{{{journal}}} grew {commits}, /proc/fs/jbd2/{}/info {want_commits}:\n{after}",
            fs.journal()
        )
    })?;
    ensure(
        delta("tracer_jbd2_blocks_logged_total", &[&journal]) > 0.0,
        || format!("no jbd2 blocks logged:\n{after}"),
    )?;
    ensure(
        after.contains("# TYPE tracer_jbd2_commit_seconds summary\n")
            && after.contains("# TYPE tracer_block_io_latency_seconds histogram\n"),
        || format!("family types:\n{after}"),
    )?;
    tool.stop(libc::SIGTERM)?.ok()?;
    assert_nothing_loaded("biotop_")
}

fn reclaim() -> Result<(), Failed> {
    let limit: u64 = if crate::common::emulated().is_some() {
        16 << 20
    } else {
        32 << 20
    };
    let Some(cgroup) = MemCgroup::create(limit)? else {
        return Err(fail("no memory cgroup controller (v1 or v2) to test with"));
    };
    let files = ColdFiles::new(2 * limit)?;
    let dir = TempDir::new("reclaim")?;
    let config = only(&dir, "reclaim = true\nreclaim_buckets = \"1us..1s\"\n")?;
    let (tool, addr) = serve(&["--config", &config])?;
    let before = scrape(&addr)?;
    let vm_before = reclaimtop::vmstat();
    let stat_before = cgroup.stat();
    let mut reader = reclaimtop::reader_in(&cgroup, &files)?;
    let read = reclaimtop::wait_read(reader.id(), files.bytes(), scaled(Duration::from_secs(30)));
    let stat_after = cgroup.stat();
    let vm_after = reclaimtop::vmstat();
    let after = scrape(&addr);
    let _ = reader.kill();
    let _ = reader.wait();
    read?;
    let after = after?;
    let delta = |name: &str, labels: &[&str]| {
        (total(&after, name, labels) - total(&before, name, labels)) as u64
    };
    let memcg = "mode=\"memcg\"";
    let reclaimed = delta("tracer_reclaim_pages_reclaimed_total", &[memcg]);
    let scanned = delta("tracer_reclaim_pages_scanned_total", &[memcg]);
    ensure(scanned >= reclaimed, || {
        format!("memcg scanned {scanned} < reclaimed {reclaimed}")
    })?;
    // The memcg totals are the machine's: they hold the cgroup's reclaim (and any other).
    let own = if cgroup.v2 {
        reclaimtop::delta(&stat_after, &stat_before, "pgsteal")
    } else {
        let cached = stat_after.get("cache").copied().unwrap_or(0) / PAGE;
        files.pages().saturating_sub(cached)
    };
    ensure(reclaimed + 32 >= own && own > 0, || {
        format!("memcg reclaimed {reclaimed} pages; the cgroup's own reclaim was {own}:\n{after}")
    })?;
    let stalls = delta("tracer_reclaim_stall_seconds_count", &[memcg]);
    let inf = delta(
        "tracer_reclaim_stall_seconds_bucket",
        &[memcg, "le=\"+Inf\""],
    );
    let stall_sum = total(&after, "tracer_reclaim_stall_seconds_sum", &[memcg])
        - total(&before, "tracer_reclaim_stall_seconds_sum", &[memcg]);
    ensure(stalls > 0 && inf == stalls && stall_sum > 0.0, || {
        format!("memcg stalls: count {stalls}, +Inf {inf}, sum {stall_sum}:\n{after}")
    })?;
    // kswapd and direct reclaim against /proc/vmstat over a window enclosing the scrapes.
    for (mode, steal, scan) in [
        ("kswapd", "pgsteal_kswapd", "pgscan_kswapd"),
        ("direct", "pgsteal_direct", "pgscan_direct"),
    ] {
        let label = format!("mode=\"{mode}\"");
        let got = (
            delta("tracer_reclaim_pages_scanned_total", &[&label]),
            delta("tracer_reclaim_pages_reclaimed_total", &[&label]),
        );
        let want = (
            reclaimtop::delta(&vm_after, &vm_before, scan),
            reclaimtop::delta(&vm_after, &vm_before, steal),
        );
        ensure(
            reclaimtop::close(got.0, want.0, 5.0, 64) && reclaimtop::close(got.1, want.1, 5.0, 64),
            || format!("{mode}: serve scanned/reclaimed {got:?}, /proc/vmstat {want:?}"),
        )?;
    }
    tool.stop(libc::SIGTERM)?.ok()?;
    Ok(())
}

fn workqueue() -> Result<(), Failed> {
    let n = reads();
    let expected = n * online_cpus()?;
    let dir = TempDir::new("wq")?;
    let config = only(&dir, "workqueue = true\n")?;
    let (tool, addr) = serve(&["--config", &config])?;
    let function = format!("function=\"{FUNCTION}\"");
    let count = KernelCount::start()?;
    let before = scrape(&addr)?;
    let workload = Workload::spawn(&["stat-refresh", &n.to_string()])?;
    workload.go_and_wait_within(scaled(Duration::from_secs(30)))?;
    // schedule_on_each_cpu waited for every run, so each has ended.
    let after = scrape(&addr)?;
    let kernel = count.runs(FUNCTION)?;
    drop(count);
    let runs = total(&after, "tracer_workqueue_runs_total", &[&function])
        - total(&before, "tracer_workqueue_runs_total", &[&function]);
    ensure(kernel == expected, || {
        format!("tracefs counted {kernel} runs of {FUNCTION}, the workload made {expected}")
    })?;
    ensure(runs == expected as f64, || {
        format!(
            "tracer_workqueue_runs_total{{{function}}} grew {runs}, the workload made {expected}:\n{after}"
        )
    })?;
    let seconds = total(&after, "tracer_workqueue_work_seconds_total", &[&function])
        - total(&before, "tracer_workqueue_work_seconds_total", &[&function]);
    ensure(seconds > 0.0 && seconds < 30.0, || {
        format!("{FUNCTION} ran {seconds} s in total")
    })?;
    // The label set stays bounded: the function_limit default (200) plus "other".
    let functions = after
        .lines()
        .filter(|l| l.starts_with("tracer_workqueue_runs_total{"))
        .count();
    ensure((1..=201).contains(&functions), || {
        format!("{functions} function series")
    })?;
    tool.stop(libc::SIGTERM)?.ok()?;
    assert_nothing_loaded("wq_")
}

/// A collector whose tracepoint this kernel lacks is left out with one line, the others
/// serve. jbd2's tracepoints exist only while jbd2 is loaded; where it is built in (this
/// host) the check is that the collector starts and reports its attach rung instead.
fn missing_tracepoint() -> Result<(), Failed> {
    let dir = TempDir::new("missing")?;
    let config = dir.write(
        "tracer.toml",
        "[collectors]\nsoftirq = false\nrunqueue = false\nkthreads = false\njbd2 = true\n",
    )?;
    let has_jbd2 = std::path::Path::new("/sys/kernel/tracing/events/jbd2/jbd2_run_stats").is_dir()
        || std::path::Path::new("/sys/kernel/debug/tracing/events/jbd2/jbd2_run_stats").is_dir();
    let (tool, addr) = serve(&["--config", &config])?;
    let text = scrape(&addr)?;
    if has_jbd2 {
        ensure(
            text.contains(
                "tracer_probe_attached{probe=\"jbd2/jbd2:jbd2_run_stats\",rung=\"tracepoint\"} 1",
            ),
            || format!("jbd2 collector not attached:\n{text}"),
        )?;
    } else {
        ensure(
            text.contains("tracer_probe_attached{probe=\"jbd2\",rung=\"none\"} 0"),
            || format!("jbd2 collector not reported as off:\n{text}"),
        )?;
        let lines: Vec<&String> = tool
            .stderr_lines
            .iter()
            .filter(|l| l.contains("collector jbd2 off"))
            .collect();
        ensure(
            lines.len() == 1 && lines[0].contains("jbd2:jbd2_run_stats"),
            || tool.stderr_lines.join(" | "),
        )?;
    }
    ensure(
        text.contains("tracer_probe_attached{probe=\"forks/sched:sched_process_fork\""),
        || format!("forks collector missing:\n{text}"),
    )?;
    tool.stop(libc::SIGTERM)?.ok()?;
    Ok(())
}

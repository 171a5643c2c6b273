//! hardirqs against ground truth: per-CPU handler counts of the IRQ line a disk-read workload
//! keeps busy equal /sys/kernel/irq/N/per_cpu_count deltas over the same window (within 2 %),
//! names equal the line's actions, `-D` histograms hold every counted run, and bad input is
//! one line.

use std::{
    collections::BTreeMap,
    os::unix::fs::OpenOptionsExt as _,
    time::{Duration, Instant},
};

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::common::{
    Need, TRACER, assert_nothing_loaded, emulated, ensure, expect_one_line_errors, fail, start,
    trial,
};

const ROOT: &[Need] = &[Need::Root];

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "hardirqs::counts_match_sys_kernel_irq",
            ROOT,
            counts_match_sys_kernel_irq,
        ),
        trial("hardirqs::bad_input", &[], bad_input),
        trial(
            "hardirqs::softirq_top_line_matches_sys_kernel_irq",
            ROOT,
            softirq_top_line_matches_sys_kernel_irq,
        ),
    ]
}

/// IRQ line → (its actions, per-CPU counts), from /sys/kernel/irq (CONFIG_SPARSE_IRQ, as
/// every distribution kernel has it).
pub fn irq_counts() -> BTreeMap<u32, (String, Vec<u64>)> {
    let mut lines = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/sys/kernel/irq") else {
        return lines;
    };
    for entry in dir.flatten() {
        let Ok(irq) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let read = |f: &str| std::fs::read_to_string(entry.path().join(f)).unwrap_or_default();
        let counts = read("per_cpu_count")
            .trim()
            .split(',')
            .filter_map(|c| c.parse().ok())
            .collect();
        lines.insert(irq, (read("actions").trim().to_string(), counts));
    }
    lines
}

/// Reads `path` uncached for `how_long` (O_DIRECT, or dropping the page cache before every
/// read where O_DIRECT is refused, as on 9p): each read is a device request and an IRQ.
pub fn read_uncached(path: &str, how_long: Duration) -> Result<u64, Failed> {
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    let (file, is_direct) = match direct {
        Ok(f) => (f, true),
        Err(_) => (
            std::fs::File::open(path).map_err(|e| fail(format!("open {path}: {e}")))?,
            false,
        ),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0).max(1 << 20);
    let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("layout");
    // SAFETY: a non-zero size; freed below.
    let buf = unsafe { std::alloc::alloc(layout) };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let end = Instant::now() + how_long;
    let mut reads = 0u64;
    let mut offset = 0u64;
    while Instant::now() < end {
        if !is_direct {
            // SAFETY: plain syscall on an open fd.
            unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
        // SAFETY: buf holds 4096 bytes.
        let n = unsafe { libc::pread(fd, buf.cast(), 4096, offset as libc::off_t) };
        if n > 0 {
            reads += 1;
        }
        offset = (offset + 1_048_576 + 4096) % (len - 4096);
        offset -= offset % 4096;
    }
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    Ok(reads)
}

/// (IRQ, CPU) → handler runs.
type PerCpuCounts = BTreeMap<(u32, u32), u64>;

/// The tool's final JSON interval and its per-(IRQ, CPU) counts.
fn tool_counts(records: &[Value]) -> Result<(Value, PerCpuCounts), Failed> {
    let interval = records
        .iter()
        .rfind(|r| r["type"] == "interval")
        .cloned()
        .ok_or_else(|| fail("no interval record"))?;
    let mut counts = BTreeMap::new();
    for row in interval["irqs"].as_array().into_iter().flatten() {
        let (Some(irq), Some(cpu), Some(count)) = (
            row["irq"].as_u64(),
            row["cpu"].as_u64(),
            row["count"].as_u64(),
        ) else {
            return Err(fail(format!("row without irq/cpu/count: {row}")));
        };
        counts.insert((irq as u32, cpu as u32), count);
    }
    Ok((interval, counts))
}

/// The busiest IRQ line of a window and its per-CPU runs by /sys/kernel/irq.
pub struct Busiest {
    pub irq: u32,
    pub name: String,
    pub truth: Vec<u64>,
}

/// The busiest line with one handler between two `irq_counts` (a shared line counts each
/// handler's runs, which per_cpu_count does not): the workload's device, whichever it is on
/// this machine. `reads` (the workload's) only explains a failure.
pub fn busiest(
    before: &BTreeMap<u32, (String, Vec<u64>)>,
    after: &BTreeMap<u32, (String, Vec<u64>)>,
    reads: u64,
) -> Result<Busiest, Failed> {
    let delta = |irq: &u32| -> Vec<u64> {
        let (_, a) = &after[irq];
        let b = before.get(irq).map(|(_, c)| c.clone()).unwrap_or_default();
        a.iter()
            .enumerate()
            .map(|(i, n)| n.saturating_sub(*b.get(i).unwrap_or(&0)))
            .collect()
    };
    let (irq, name) = after
        .iter()
        .filter(|(_, (actions, _))| !actions.is_empty() && !actions.contains(','))
        .max_by_key(|(irq, _)| delta(irq).iter().sum::<u64>())
        .map(|(irq, (actions, _))| (*irq, actions.clone()))
        .ok_or_else(|| fail("no IRQ line with a handler in /sys/kernel/irq"))?;
    let truth = delta(&irq);
    let total: u64 = truth.iter().sum();
    ensure(total >= 50, || {
        format!(
            "{reads} uncached reads raised only {total} IRQs on the busiest line {irq} ({name})"
        )
    })?;
    Ok(Busiest { irq, name, truth })
}

/// A few ms at each end of a window are outside one of the two views: 2 % and 3 runs.
pub fn within_2pct(got: u64, want: u64) -> bool {
    got.abs_diff(want) as f64 <= want as f64 * 0.02 + 3.0
}

/// Runs `tracer ARGS` (JSON) around 2 s (4 s under TCG) of uncached reads; its records and
/// the IRQ line those reads kept busiest, with its counts from /sys/kernel/irq.
fn around_reads(args: &[&str]) -> Result<(Vec<serde_json::Value>, Busiest), Failed> {
    let tool = start(args)?;
    let before = irq_counts();
    let window = if emulated().is_some() {
        Duration::from_secs(4)
    } else {
        Duration::from_secs(2)
    };
    let reads = read_uncached(TRACER, window)?;
    let after = irq_counts();
    let records = tool.stop(libc::SIGINT)?.ok()?.json()?;
    Ok((records, busiest(&before, &after, reads)?))
}

fn counts_match_sys_kernel_irq() -> Result<(), Failed> {
    let (records, Busiest { irq, name, truth }) =
        around_reads(&["hardirqs", "--json", "--per-cpu", "-D"])?;
    let (interval, ours) = tool_counts(&records)?;
    for (cpu, want) in truth.iter().enumerate() {
        let got = ours.get(&(irq, cpu as u32)).copied().unwrap_or(0);
        ensure(within_2pct(got, *want), || {
            format!(
                "IRQ {irq} ({name}) CPU {cpu}: hardirqs counted {got}, per_cpu_count says {want}"
            )
        })?;
    }
    for row in interval["irqs"].as_array().into_iter().flatten() {
        if row["irq"].as_u64() == Some(irq as u64) {
            ensure(row["name"] == name.as_str(), || {
                format!("IRQ {irq}: name {} != actions {name}", row["name"])
            })?;
            ensure(row["hist"]["count"] == row["count"], || {
                format!(
                    "IRQ {irq}: histogram holds {} runs of {}",
                    row["hist"]["count"], row["count"]
                )
            })?;
            ensure(
                row["time_ns"].as_u64().unwrap_or(0) >= row["max_ns"].as_u64().unwrap_or(0),
                || format!("IRQ {irq}: max above total: {row}"),
            )?;
        }
    }
    assert_nothing_loaded("hardirqs_")
}

fn bad_input() -> Result<(), Failed> {
    expect_one_line_errors(&[
        (vec!["hardirqs", "-C", "99"], "CPU 99 is not online"),
        (vec!["hardirqs", "0"], "out of range"),
        (
            vec!["hardirqs", "--attach", "kprobe"],
            "choose one of tp_btf, raw_tp",
        ),
    ])
}

/// softirq-top's hard-IRQ line (hardirqs' program): over one interval spanning the run, the
/// busiest line is among the top handlers with its /sys/kernel/irq count (within 2 %), and
/// every CPU that served it shows hard-IRQ time; `--no-hardirqs` drops the line.
fn softirq_top_line_matches_sys_kernel_irq() -> Result<(), Failed> {
    // One interval longer than the run: SIGINT prints it, covering attach to stop.
    let (records, Busiest { irq, name, truth }) =
        around_reads(&["softirq-top", "--json", "-b", "86400"])?;
    let interval = records
        .iter()
        .rfind(|r| r["type"] == "interval")
        .ok_or_else(|| fail("no interval record"))?;
    let hard = &interval["hardirqs"];
    let top = hard["top"]
        .as_array()
        .ok_or_else(|| fail(format!("no hardirqs.top in {interval}")))?;
    let row = top
        .iter()
        .find(|r| r["irq"].as_u64() == Some(irq as u64))
        .ok_or_else(|| {
            fail(format!(
                "IRQ {irq} ({name}) not among the top handlers: {hard}"
            ))
        })?;
    ensure(row["name"] == name.as_str(), || {
        format!("IRQ {irq}: name {} != actions {name}", row["name"])
    })?;
    let want: u64 = truth.iter().sum();
    let got = row["count"].as_u64().unwrap_or(0);
    ensure(within_2pct(got, want), || {
        format!("IRQ {irq} ({name}): softirq-top counted {got}, per_cpu_count says {want}")
    })?;
    for (cpu, runs) in truth.iter().enumerate() {
        if *runs < 20 {
            continue;
        }
        let time = hard["per_cpu"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["cpu"].as_u64() == Some(cpu as u64))
            .and_then(|c| c["time_us"].as_u64())
            .unwrap_or(0);
        ensure(time > 0, || {
            format!("CPU {cpu} ran IRQ {irq} {runs} times but shows no hard-IRQ time: {hard}")
        })?;
    }
    ensure(hard["time_us"].as_u64().unwrap_or(0) > 0, || {
        format!("no hard-IRQ time: {hard}")
    })?;

    let off = crate::common::run(&["softirq-top", "--no-hardirqs", "--json", "0.3", "1"]);
    ensure(off.status.success(), || {
        format!("--no-hardirqs: {}", String::from_utf8_lossy(&off.stderr))
    })?;
    for line in String::from_utf8_lossy(&off.stdout).lines() {
        let value: Value = serde_json::from_str(line).map_err(|e| fail(format!("{e}: {line}")))?;
        ensure(value.get("hardirqs").is_none(), || {
            format!("--no-hardirqs still printed a hard-IRQ line: {line}")
        })?;
    }
    assert_nothing_loaded("hardirqs_")
}

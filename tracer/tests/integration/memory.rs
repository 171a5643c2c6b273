//! Memory flame graphs: page-fault stacks (`stackcount t:exceptions:page_fault_user`) of a
//! program touching N known fresh pages, page-allocation stacks weighted by pages (`stackcount
//! --weight '1<<order' t:kmem:mm_page_alloc`) of a program writing 64 MiB, and memleak's outstanding allocations of a program that
//! mallocs K known sizes and frees half — both against the exact counts the workload made.

use std::time::Duration;

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::common::{Need, Workload, emulated, ensure, fail, start, trial};

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "memflame::page_faults_under_the_touching_function",
            &[Need::Root],
            page_faults,
        ),
        trial(
            "memflame::page_allocations_weighted_by_pages",
            &[Need::Root],
            page_allocations_weighted,
        ),
        trial(
            "memflame::memleak_outstanding_half_by_stack",
            &[Need::Root],
            memleak_outstanding_half,
        ),
    ]
}

fn user_frames(record: &Value) -> Vec<String> {
    record["user"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect()
}

fn page_faults() -> Result<(), Failed> {
    if !std::path::Path::new("/sys/kernel/tracing/events/exceptions/page_fault_user").exists() {
        return Err(fail(
            "no exceptions:page_fault_user tracepoint (x86 has it since 3.17)",
        ));
    }
    const PAGES: u64 = 3000;
    // It lingers after the faults, so that its user stacks symbolize while it exists.
    let mut workload = Workload::spawn(&["faults", &PAGES.to_string(), "sleep", "60"])?;
    let pid = workload.pid.to_string();
    let tool = start(&[
        "stackcount",
        "-U",
        "-p",
        &pid,
        "--json",
        "-n",
        "1000",
        "t:exceptions:page_fault_user",
    ])?;
    workload.go();
    // 3000 page writes take milliseconds natively, well under a second under TCG.
    std::thread::sleep(if emulated().is_some() {
        Duration::from_secs(6)
    } else {
        Duration::from_millis(1500)
    });
    let done = tool.stop(libc::SIGINT)?.ok()?;
    drop(workload);
    let records = done.json()?;
    let stacks: Vec<&Value> = records.iter().filter(|r| r["type"] == "stack").collect();
    let under = |name: &str| -> u64 {
        stacks
            .iter()
            .filter(|s| user_frames(s).first().is_some_and(|f| f.contains(name)))
            .filter_map(|s| s["count"].as_u64())
            .sum()
    };
    let faults = under("tracer_workload_fault_pages");
    let total: u64 = stacks.iter().filter_map(|s| s["count"].as_u64()).sum();
    eprintln!("{faults} faults in tracer_workload_fault_pages, {total} in all");
    // One fault per fresh page; a few more may hit the function's own code or stack pages.
    ensure((PAGES..=PAGES + 8).contains(&faults), || {
        format!("{faults} faults under tracer_workload_fault_pages, expected {PAGES}: {stacks:?}")
    })
}

/// `stackcount --weight '1<<order' t:kmem:mm_page_alloc` around `huge-pages 64`: every 4 KiB
/// page of 64 MiB written once, asked for as transparent huge pages. Where the kernel gives
/// them, 32 order-9 allocations; where not, 16384 order-0 ones: 16384 pages either way, so the
/// weighted total under the touching function is the ground truth whatever THP did, and an
/// unweighted stackcount alongside shows how many allocations it took.
fn page_allocations_weighted() -> Result<(), Failed> {
    if !std::path::Path::new("/sys/kernel/tracing/events/kmem/mm_page_alloc").exists() {
        return Err(fail("no kmem:mm_page_alloc tracepoint"));
    }
    const MIB: u64 = 64;
    const PAGES: u64 = MIB * 256;
    let mut workload = Workload::spawn(&["huge-pages", &MIB.to_string(), "sleep", "60"])?;
    let pid = workload.pid.to_string();
    let counting = |weight: Option<&str>| {
        let mut argv = vec!["stackcount", "-U", "-p", &pid, "--json", "-n", "1000"];
        if let Some(weight) = weight {
            argv.extend(["--weight", weight]);
        }
        argv.push("t:kmem:mm_page_alloc");
        start(&argv)
    };
    let weighted = counting(Some("1<<order"))?;
    let plain = counting(None)?;
    workload.go();
    // 64 MiB of page writes take well under a second natively, a few seconds under TCG.
    std::thread::sleep(if emulated().is_some() {
        Duration::from_secs(10)
    } else {
        Duration::from_millis(2000)
    });
    let weighted = weighted.stop(libc::SIGINT)?.ok()?;
    let plain = plain.stop(libc::SIGINT)?.ok()?;
    drop(workload);
    let under = |records: &[Value]| -> (u64, u64) {
        let stacks: Vec<&Value> = records.iter().filter(|r| r["type"] == "stack").collect();
        let count = |s: &&Value| s["count"].as_u64();
        let mine = stacks
            .iter()
            .filter(|s| {
                user_frames(s)
                    .first()
                    .is_some_and(|f| f.contains("tracer_workload_huge_pages"))
            })
            .filter_map(count)
            .sum();
        (mine, stacks.iter().filter_map(count).sum())
    };
    let weighted_records = weighted.json()?;
    let (pages, all_pages) = under(&weighted_records);
    let (allocations, _) = under(&plain.json()?);
    eprintln!(
        "{pages} pages in {allocations} allocations under tracer_workload_huge_pages \
         ({all_pages} pages in all)"
    );
    let end = weighted_records.iter().rev().find(|r| r["type"] == "end");
    ensure(end.is_some_and(|e| e["weight"] == "1<<order"), || {
        format!("the end record does not name the weight: {end:?}")
    })?;
    // Beyond the data pages: one page-table page per 2 MiB (a PTE table, or the one the
    // kernel deposits beside each huge page), and a few upper-level tables.
    let margin = PAGES / 512 + 8;
    ensure((PAGES..=PAGES + margin).contains(&pages), || {
        format!(
            "{pages} pages under tracer_workload_huge_pages, expected {PAGES}..={}",
            PAGES + margin
        )
    })?;
    ensure(allocations <= pages, || {
        format!("{allocations} allocations but only {pages} pages: the weight is below 1")
    })
}

fn memleak_outstanding_half() -> Result<(), Failed> {
    const K: usize = 400;
    let linger = if emulated().is_some() { "20" } else { "5" };
    let mut workload = Workload::spawn(&["mallocs", &K.to_string(), "sleep", linger])?;
    let pid = workload.pid.to_string();
    let tool = start(&[
        "memleak", "-v", "-p", &pid, "--json", "-n", "1000", "-o", "200",
    ])?;
    workload.go();
    // The K mallocs take milliseconds; the report at the stop counts blocks older than 200 ms.
    std::thread::sleep(if emulated().is_some() {
        Duration::from_secs(6)
    } else {
        Duration::from_millis(1500)
    });
    let done = tool.stop(libc::SIGINT)?.ok()?;
    drop(workload);
    // -v: the "TARGET via MECHANISM" line of every tool, one per probe.
    let attached: Vec<&String> = done
        .stderr
        .iter()
        .filter(|l| l.starts_with("memleak: ") && l.contains(" via u"))
        .collect();
    ensure(
        attached.len() == 7
            && attached
                .iter()
                .any(|l| l.contains("malloc() in ") && l.ends_with("via uprobe"))
            && attached
                .iter()
                .any(|l| l.contains("return of malloc() in ") && l.ends_with("via uretprobe")),
        || format!("memleak -v attach lines: {:?}", done.stderr),
    )?;
    let records = done.json()?;
    let report = records
        .iter()
        .rev()
        .find(|r| r["type"] == "outstanding")
        .ok_or_else(|| fail(format!("no outstanding record: {records:?}")))?;
    let stacks = report["stacks"].as_array().cloned().unwrap_or_default();
    let held = |name: &str| -> (u64, u64) {
        stacks
            .iter()
            .filter(|s| user_frames(s).iter().any(|f| f.contains(name)))
            .fold((0, 0), |(b, a), s| {
                (
                    b + s["bytes"].as_u64().unwrap_or(0),
                    a + s["allocations"].as_u64().unwrap_or(0),
                )
            })
    };
    let expected_bytes: u64 = (0..K).step_by(2).map(|i| 1000 + 16 * i as u64).sum();
    let (kept_bytes, kept_allocations) = held("tracer_workload_malloc_kept");
    let (freed_bytes, _) = held("tracer_workload_malloc_freed");
    eprintln!(
        "kept: {kept_bytes} bytes in {kept_allocations} allocations (expected {expected_bytes} in {}); freed: {freed_bytes}",
        K / 2
    );
    ensure(
        kept_bytes == expected_bytes && kept_allocations == (K / 2) as u64,
        || {
            format!(
                "outstanding under tracer_workload_malloc_kept: {kept_bytes} bytes in \
                 {kept_allocations}, expected {expected_bytes} in {}: {stacks:?}",
                K / 2
            )
        },
    )?;
    ensure(freed_bytes == 0, || {
        format!("freed blocks still outstanding: {freed_bytes} bytes: {stacks:?}")
    })
}

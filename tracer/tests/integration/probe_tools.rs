//! The probe tools' output read as a user reads it, against ground truth: per-interval
//! statistics of funclatency and argdist (workloads of known, different magnitudes), who
//! stackcount says ran (nginx's worker pid, no pid where the key has none, no kernel threads
//! among user stacks), the kernel's own names for task states and softirq vectors (from the
//! format file), tplist's field layout, and `serve --check` refusing what the start refuses.

use std::{collections::HashSet, time::Duration};

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::common::{Need, Workload, assert_nothing_loaded, ensure, fail, run, start, trial};
use testbed::nginx::{Nginx, curl, wait_access_log};

const NGX_REQUEST: &str = "u:/usr/sbin/nginx:ngx_http_process_request";
const PF_KTHREAD: u64 = 0x0020_0000;

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "probe_tools::argdist_interval_min_max_are_per_interval",
            &[Need::Root, Need::Tracefs],
            argdist_interval_min_max,
        ),
        trial(
            "probe_tools::funclatency_interval_min_max_are_per_interval",
            &[Need::Root, Need::Tracefs],
            funclatency_interval_min_max,
        ),
        trial(
            "probe_tools::stackcount_pid_is_the_nginx_worker",
            &[Need::Root, Need::Command("curl"), Need::Command("nginx")],
            stackcount_nginx_pid,
        ),
        trial(
            "probe_tools::stackcount_kernel_stacks_have_no_pid",
            &[Need::Root, Need::Tracefs],
            stackcount_kernel_no_pid,
        ),
        trial(
            "probe_tools::stackcount_user_stacks_leave_out_kernel_threads",
            &[Need::Root, Need::Tracefs],
            stackcount_kernel_threads,
        ),
        trial(
            "probe_tools::argdist_names_values_from_print_fmt",
            &[Need::Root, Need::Tracefs],
            argdist_symbolic,
        ),
        trial(
            "probe_tools::tplist_t_form_with_offsets_and_sizes",
            &[Need::Tracefs],
            tplist_t_form,
        ),
        trial(
            "probe_tools::serve_check_runs_the_start_capability_checks",
            &[Need::Root],
            serve_check_kernel_probes,
        ),
    ]
}

fn format_file(event: &str) -> Result<String, Failed> {
    let path = format!("/sys/kernel/tracing/events/{event}/format");
    std::fs::read_to_string(&path).map_err(|e| fail(format!("{path}: {e}")))
}

/// (low, high) of the first and last non-empty buckets of a JSON histogram.
fn used_buckets(hist: &Value) -> Option<((u64, u64), (u64, u64))> {
    let used: Vec<(u64, u64)> = hist["buckets"]
        .as_array()?
        .iter()
        .filter(|b| b["count"].as_u64().unwrap_or(0) > 0)
        .filter_map(|b| Some((b["low"].as_u64()?, b["high"].as_u64()?)))
        .collect();
    Some((*used.first()?, *used.last()?))
}

/// Every interval's min and max (divided by `div` into the histogram's unit) must fall in that
/// interval's own lowest and highest bucket; returns each interval's (min, max).
fn check_intervals(
    records: &[Value],
    min_field: &str,
    max_field: &str,
    div: u64,
) -> Result<Vec<(u64, u64)>, Failed> {
    let hists = crate::common::histograms(records);
    let mut seen = Vec::new();
    for h in &hists {
        let (min, max) = (
            h[min_field].as_u64().unwrap_or(u64::MAX),
            h[max_field].as_u64().unwrap_or(0),
        );
        let ((low, low_high), (high_low, high)) =
            used_buckets(&h["hist"]).ok_or_else(|| fail(format!("empty histogram: {h}")))?;
        ensure(
            (low..=low_high).contains(&(min / div)) && (high_low..=high).contains(&(max / div)),
            || {
                format!(
                    "interval min {min} / max {max} lie outside its own buckets \
                     {low}..{high} (x{div}): {h}"
                )
            },
        )?;
        seen.push((min, max));
    }
    Ok(seen)
}

/// Phase one reads 64 KiB at a time, phase two 16 bytes: once an interval holds only phase
/// two, its max is 16 — a max carried over from earlier intervals would be 65536.
fn argdist_interval_min_max() -> Result<(), Failed> {
    let mut steps: Vec<&str> = Vec::new();
    for _ in 0..5 {
        steps.extend(["read", "5", "65536", "sleep", "0.3"]);
    }
    steps.extend(["repeat", "3", "read", "5", "16", "sleep", "0.05"]);
    let mut workload = Workload::spawn(&steps)?;
    let pid = workload.pid.to_string();
    // The filter drops the workload's own read of "go\n" from stdin.
    let tool = start(&[
        "argdist",
        "-H",
        "--json",
        "-p",
        &pid,
        "--filter",
        "ret > 8",
        "t:syscalls:sys_exit_read",
        "ret",
        "1",
        "5",
    ])?;
    workload.go();
    let done = tool.wait(Duration::from_secs(20))?.ok()?;
    let records = done.json()?;
    let seen = check_intervals(&records, "min", "max", 1)?;
    ensure(
        seen.iter()
            .all(|&(min, max)| [16, 65536].contains(&min) && [16, 65536].contains(&max)),
        || format!("reads returned only 16 or 65536 bytes, yet: {seen:?}"),
    )?;
    ensure(
        seen.iter().any(|&(_, max)| max == 65536)
            && seen.iter().any(|&(min, max)| min == 16 && max == 16),
        || format!("expected an interval of 64 KiB reads and one of 16-byte reads only: {seen:?}"),
    )?;
    drop(workload);
    assert_nothing_loaded("probes_")
}

/// 300 ms sleeps, then 2 ms sleeps: the later intervals' max is a few ms, not 300.
fn funclatency_interval_min_max() -> Result<(), Failed> {
    let mut steps: Vec<&str> = Vec::new();
    for _ in 0..5 {
        steps.extend(["sleep", "0.3"]);
    }
    steps.extend(["repeat", "3", "sleep", "0.002"]);
    let mut workload = Workload::spawn(&steps)?;
    let pid = workload.pid.to_string();
    let tool = start(&[
        "funclatency",
        "-u",
        "--json",
        "-p",
        &pid,
        "--start",
        "t:syscalls:sys_enter_clock_nanosleep",
        "--end",
        "t:syscalls:sys_exit_clock_nanosleep",
        "1",
        "5",
    ])?;
    workload.go();
    let done = tool.wait(Duration::from_secs(20))?.ok()?;
    let records = done.json()?;
    let seen = check_intervals(&records, "min_ns", "max_ns", 1000)?;
    const MS: u64 = 1_000_000;
    ensure(
        seen.iter().any(|&(_, max)| max >= 300 * MS)
            && seen
                .iter()
                .any(|&(min, max)| min >= 2 * MS && max < 100 * MS),
        || {
            format!(
                "expected an interval with 300 ms sleeps and one with 2 ms sleeps only: {seen:?}"
            )
        },
    )?;
    drop(workload);
    assert_nothing_loaded("probes_")
}

/// User stacks are counted per process: the pid printed is nginx's worker (the process that
/// handles requests), in text and JSON; stackcount's keys hold no thread, so no tid.
fn stackcount_nginx_pid() -> Result<(), Failed> {
    const N: usize = 6;
    let nginx = Nginx::start_local_logged()?;
    let worker = nginx.worker()?;
    let url = format!("http://127.0.0.1:{}/", nginx.port);
    for (round, json) in [true, false].into_iter().enumerate() {
        let mut args = vec!["stackcount"];
        if json {
            args.push("--json");
        }
        args.push(NGX_REQUEST);
        let tool = start(&args)?;
        curl(&url, N, &[], "200")?;
        // The access log keeps every round's requests.
        wait_access_log(&nginx, N * (round + 1))?;
        let done = tool.stop(libc::SIGINT)?.ok()?;
        if json {
            let records = done.json()?;
            let stacks: Vec<&Value> = records.iter().filter(|r| r["type"] == "stack").collect();
            ensure(
                !stacks.is_empty()
                    && stacks
                        .iter()
                        .all(|s| s["pid"] == worker && s.get("tid").is_none()),
                || format!("stacks should name worker pid {worker} and no tid: {stacks:?}"),
            )?;
        } else {
            let headers: Vec<&String> = done
                .stdout
                .iter()
                .filter(|l| l.contains(" samples "))
                .collect();
            let want = format!("nginx [pid {worker}]");
            ensure(
                !headers.is_empty() && headers.iter().all(|h| h.ends_with(&want)),
                || format!("headers should end with '{want}': {headers:?}"),
            )?;
        }
    }
    assert_nothing_loaded("probes_")
}

/// Kernel stacks without -P are keyed by comm: no pid to print (`pid 0` would read as the idle
/// task), JSON "pid": null.
fn stackcount_kernel_no_pid() -> Result<(), Failed> {
    for json in [true, false] {
        let workload = Workload::spawn(&["fork", "5"])?;
        let mut args = vec!["stackcount", "-K"];
        if json {
            args.push("--json");
        }
        args.push("t:sched:sched_process_fork");
        let tool = start(&args)?;
        workload.go_and_wait()?;
        let done = tool.stop(libc::SIGINT)?.ok()?;
        if json {
            let records = done.json()?;
            let stacks: Vec<&Value> = records.iter().filter(|r| r["type"] == "stack").collect();
            ensure(
                stacks.iter().any(|s| s["comm"] == "tracer-workload")
                    && stacks
                        .iter()
                        .all(|s| s["pid"].is_null() && s.get("tid").is_none()),
                || format!("expected pid null, no tid, a tracer-workload stack: {stacks:?}"),
            )?;
        } else {
            let headers: Vec<&String> = done
                .stdout
                .iter()
                .filter(|l| l.contains(" samples "))
                .collect();
            ensure(
                headers.iter().any(|h| h.ends_with("%  tracer-workload"))
                    && headers.iter().all(|h| !h.contains("[pid")),
                || format!("headers should name the comm only: {headers:?}"),
            )?;
        }
    }
    assert_nothing_loaded("probes_")
}

/// Kernel threads alive now, by PF_KTHREAD in /proc/PID/stat (field 9).
fn kernel_threads() -> HashSet<u64> {
    let mut pids = HashSet::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The comm (field 2) may hold spaces: count fields after its closing parenthesis.
        let flags = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse::<u64>().ok());
        if flags.is_some_and(|f| f & PF_KTHREAD != 0) {
            pids.insert(pid);
        }
    }
    pids
}

/// Kernel threads switch all the time and have no user stack: with --both-stacks their stacks show
/// kernel frames and no user part, with -U alone they are left out — never
/// `[lost: stack not readable]`.
fn stackcount_kernel_threads() -> Result<(), Failed> {
    let before = kernel_threads();
    for (flags, kernel_too) in [(vec!["--both-stacks"], true), (vec!["-U"], false)] {
        let mut args = vec!["stackcount", "--json", "-d", "2", "--top", "100000"];
        args.extend(&flags);
        args.push("t:sched:sched_switch");
        let out = run(&args);
        ensure(out.status.success(), || {
            String::from_utf8_lossy(&out.stderr).to_string()
        })?;
        let stacks: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["type"] == "stack")
            .collect();
        let of_kthreads: Vec<&Value> = stacks
            .iter()
            .filter(|s| s["pid"].as_u64().is_some_and(|p| before.contains(&p)))
            .collect();
        ensure(
            of_kthreads
                .iter()
                .all(|s| s["user"].as_array().is_some_and(|u| u.is_empty())),
            || format!("{flags:?}: kernel threads' stacks with user frames: {of_kthreads:?}"),
        )?;
        if kernel_too {
            ensure(!of_kthreads.is_empty(), || {
                format!(
                    "{flags:?}: no kernel thread switched in 2 s? {} stacks",
                    stacks.len()
                )
            })?;
        } else {
            ensure(of_kthreads.is_empty(), || {
                format!("{flags:?}: kernel threads counted without user stacks: {of_kthreads:?}")
            })?;
        }
    }
    assert_nothing_loaded("probes_")
}

/// `{ 0x00000001, "S" }` entries of a format file's print fmt, as (value, name).
fn print_fmt_table(format: &str) -> Vec<(u64, String)> {
    let Some(line) = format.lines().find(|l| l.starts_with("print fmt:")) else {
        return Vec::new();
    };
    line.split('{')
        .skip(1)
        .filter_map(|entry| {
            let (value, rest) = entry.split_once(',')?;
            let name = rest.split('"').nth(1)?;
            let value = value.trim();
            let value = match value.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok()?,
                None => value.parse().ok()?,
            };
            Some((value, name.to_string()))
        })
        .collect()
}

/// A sleeping workload leaves the CPU in the state the format file names for bit 0x1 ("S" on
/// 6.18); softirq vectors are named as the format file's table names them.
fn argdist_symbolic() -> Result<(), Failed> {
    let states = print_fmt_table(&format_file("sched/sched_switch")?);
    let sleeping = states
        .iter()
        .find(|(v, _)| *v == 1)
        .map(|(_, n)| n.clone())
        .ok_or_else(|| {
            fail(format!(
                "no state 0x1 in sched_switch's print fmt: {states:?}"
            ))
        })?;
    for json in [true, false] {
        let workload = Workload::spawn(&["sleep", "0.01", "sleep", "0.01", "sleep", "0.01"])?;
        let pid = workload.pid.to_string();
        let mut args = vec!["argdist", "--count", "-p", &pid];
        if json {
            args.push("--json");
        }
        args.extend(["t:sched:sched_switch", "prev_state"]);
        let tool = start(&args)?;
        workload.go_and_wait()?;
        let done = tool.stop(libc::SIGINT)?.ok()?;
        if json {
            let records = done.json()?;
            let rows: Vec<Value> = records
                .iter()
                .filter(|r| r["type"] == "counts")
                .flat_map(|r| r["values"].as_array().cloned().unwrap_or_default())
                .collect();
            ensure(
                rows.iter()
                    .any(|r| r["value"] == 1 && r["symbol"] == sleeping.as_str()),
                || format!("no value 1 named '{sleeping}': {rows:?}"),
            )?;
        } else {
            let want = format!("  1 ({sleeping})");
            ensure(done.stdout.iter().any(|l| l.ends_with(&want)), || {
                format!("no row ending '{want}': {:?}", done.stdout)
            })?;
        }
    }
    // Softirq vectors: every counted vector carries the format file's own name for it.
    let vectors = print_fmt_table(&format_file("irq/softirq_entry")?);
    let out = run(&[
        "argdist",
        "--count",
        "--json",
        "-d",
        "1",
        "t:irq:softirq_entry",
        "vec",
    ]);
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["type"] == "counts")
        .flat_map(|r| r["values"].as_array().cloned().unwrap_or_default())
        .collect();
    ensure(!rows.is_empty(), || "no softirq in 1 s".into())?;
    for row in &rows {
        let value = row["value"].as_u64().unwrap_or(u64::MAX);
        let want = vectors
            .iter()
            .find(|(v, _)| *v == value)
            .map(|(_, n)| n.as_str());
        ensure(want.is_some() && row["symbol"].as_str() == want, || {
            format!(
                "vector {value} named {} (format file: {want:?})",
                row["symbol"]
            )
        })?;
    }
    assert_nothing_loaded("probes_")
}

/// `tplist -v t:sched:sched_switch` (what argdist's --help suggests) lists every field with
/// the format file's offset and size; `t:` globs work too.
fn tplist_t_form() -> Result<(), Failed> {
    let out = run(&["tplist", "-v", "t:sched:sched_switch"]);
    let text = String::from_utf8_lossy(&out.stdout);
    ensure(out.status.success(), || {
        String::from_utf8_lossy(&out.stderr).to_string()
    })?;
    let format = format_file("sched/sched_switch")?;
    let mut fields = 0;
    for line in format.lines().map(str::trim) {
        // "field:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;"
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let parts: Vec<&str> = rest.split(';').map(str::trim).collect();
        if parts[0].contains("common_") {
            continue;
        }
        fields += 1;
        let (decl, offset, size) = (parts[0], parts[1], parts[2]);
        ensure(
            text.lines().any(|l| {
                l.contains(&format!("{decl};"))
                    && l.split_whitespace().any(|w| w == offset)
                    && l.split_whitespace().any(|w| w == size)
            }),
            || format!("no line with '{decl};', '{offset}', '{size}' in:\n{text}"),
        )?;
    }
    ensure(fields >= 7, || {
        format!("only {fields} fields in the format file")
    })?;
    let out = run(&["tplist", "t:sched:sched_sw*"]);
    let text = String::from_utf8_lossy(&out.stdout);
    ensure(
        out.status.success() && text.lines().any(|l| l == "sched:sched_switch"),
        || text.to_string(),
    )?;
    Ok(())
}

/// A config with a k: probe: `--check` succeeds exactly where the start can attach it (kprobes
/// or fentry here), and otherwise fails in one line naming what is missing, as the start does.
fn serve_check_kernel_probes() -> Result<(), Failed> {
    let dir = std::env::temp_dir().join(format!("tracer-serve-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
    let path = dir.join("kprobe.toml");
    std::fs::write(
        &path,
        "[[probe]]\nname = \"opens\"\nprobe = \"k:do_sys_openat2\"\nkind = \"counter\"\n",
    )
    .map_err(|e| fail(e.to_string()))?;
    let path = path.display().to_string();
    let out = run(&["serve", "--config", &path, "--check"]);
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let attachable = Need::Kprobes.missing().is_none() || Need::Fentry.missing().is_none();
    if attachable {
        ensure(out.status.success(), || {
            format!("kernel functions attach here, yet --check failed: {stderr}")
        })?;
    } else {
        ensure(
            out.status.code() == Some(1)
                && stderr.lines().count() == 1
                && stderr.contains("kprobes")
                && stderr.contains("CONFIG_KPROBES")
                && stderr.contains("'opens'"),
            || format!("exit {:?}, stderr: {stderr}", out.status.code()),
        )?;
    }
    assert_nothing_loaded("probes_")
}

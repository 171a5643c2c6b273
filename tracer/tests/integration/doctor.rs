//! doctor's claims against this kernel, and against what the ladder then does.

use std::path::Path;

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use std::time::Duration;

use crate::common::{
    Need, Workload, ensure, fail, kernel_has_kprobe_multi, kernel_has_uprobe_multi, run, start,
    trial,
};

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "doctor::reports_this_kernel",
            &[Need::Root],
            reports_this_kernel,
        ),
        trial(
            "doctor::claims_match_the_ladder",
            &[Need::Root],
            claims_match_the_ladder,
        ),
        trial(
            "doctor::fallback_rows_match_the_tools",
            &[Need::Root],
            fallback_rows_match_the_tools,
        ),
    ]
}

fn checks() -> Result<Vec<Value>, Failed> {
    let out = run(&["doctor", "--json"]);
    ensure(out.status.success(), || {
        format!("doctor failed: {}", String::from_utf8_lossy(&out.stderr))
    })?;
    let json: Value = serde_json::from_slice(&out.stdout).map_err(|e| fail(e.to_string()))?;
    ensure(json["schema"] == "tracer.doctor.v2", || {
        format!("schema: {}", json["schema"])
    })?;
    // README: every JSON object has a "schema" and a "type".
    ensure(json["type"] == "report", || {
        format!("type: {}", json["type"])
    })?;
    Ok(json["checks"].as_array().cloned().unwrap_or_default())
}

fn available(checks: &[Value], feature: &str) -> Result<(bool, String), Failed> {
    let c = checks
        .iter()
        .find(|c| c["feature"] == feature)
        .ok_or_else(|| fail(format!("no {feature} row")))?;
    Ok((
        c["available"] == true,
        c["detail"].as_str().unwrap_or("").to_string(),
    ))
}

fn reports_this_kernel() -> Result<(), Failed> {
    let checks = checks()?;
    for feature in [
        "btf",
        "tracepoint",
        "tp_btf",
        "raw_tp",
        "uprobe",
        "uretprobe",
        "perf_event",
        "ringbuf",
    ] {
        let (ok, detail) = available(&checks, feature)?;
        ensure(ok, || {
            format!("{feature} should be available here: {detail}")
        })?;
    }
    // uprobe_multi links came with Linux 6.6.
    let (ok, detail) = available(&checks, "uprobe_multi")?;
    ensure(ok == kernel_has_uprobe_multi(), || {
        format!("uprobe_multi: doctor says {ok} ({detail}) on this kernel")
    })?;
    // kprobe_multi: the link code (5.18) and fprobe (CONFIG_FPROBE) in the symbol table; the
    // probe tools attach k: globs past 64 functions exactly where this row says yes (the
    // probes::kprobe_multi_* tests check that side).
    let (ok, detail) = available(&checks, "kprobe_multi")?;
    ensure(ok == kernel_has_kprobe_multi(), || {
        format!(
            "kprobe_multi: doctor says {ok} ({detail}), kallsyms says {}",
            !ok
        )
    })?;
    // kprobes: the kernel's own word is the PMU type file.
    let kprobes = Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    for feature in ["kprobe", "kretprobe"] {
        let (ok, detail) = available(&checks, feature)?;
        ensure(ok == kprobes, || {
            format!("{feature}: doctor says {ok}, PMU file says {kprobes}")
        })?;
        if !ok {
            ensure(detail.contains("CONFIG_KPROBES"), || {
                format!("{feature} reason: {detail}")
            })?;
        }
    }
    for feature in ["fentry", "fexit"] {
        let (ok, detail) = available(&checks, feature)?;
        ensure(ok || !detail.is_empty(), || {
            format!("{feature} unavailable without a reason")
        })?;
    }
    Ok(())
}

fn claims_match_the_ladder() -> Result<(), Failed> {
    let checks = checks()?;
    let expected = ["tp_btf", "raw_tp", "tracepoint"]
        .into_iter()
        .find(|f| available(&checks, f).is_ok_and(|(ok, _)| ok))
        .ok_or_else(|| fail("no tracepoint mechanism available"))?;
    let workload = Workload::spawn(&["fork", "1"])?;
    let tool = start(&["forksnoop", "-v", "-p", &workload.pid.to_string()])?;
    workload.go_and_wait()?;
    let done = tool.stop(libc::SIGINT)?.ok()?;
    let line = done
        .stderr
        .iter()
        .find(|l| l.contains(" via "))
        .ok_or_else(|| fail("no -v attach line"))?;
    ensure(line.contains(&format!("via {expected}")), || {
        format!("doctor picks {expected}, forksnoop said: {line}")
    })
}

/// The capability rows the probe tools and drains fall back on (cookies, perf links, hash
/// lookup-and-delete, batch ops, ring buffer, bpf_get_func_ret) against what the tools do: a
/// libc uprobe says "no BPF cookies" in `-v` exactly when doctor says cookies or perf links are
/// missing, and funccount -P's interval drains (whichever map operation the kernel has) count
/// every call once.
fn fallback_rows_match_the_tools() -> Result<(), Failed> {
    const N: u64 = 300;
    let checks = checks()?;
    let row = |feature: &str| available(&checks, feature);
    // Every tool needs the ring buffer; a kernel that has fexit but not bpf_get_func_ret is
    // older than 5.17, and one without fexit cannot have it.
    let (ringbuf, detail) = row("ringbuf")?;
    ensure(ringbuf, || format!("ringbuf: {detail}"))?;
    let (fexit, _) = row("fexit")?;
    let (func_ret, detail) = row("func_ret")?;
    ensure(fexit || !func_ret, || {
        format!("func_ret without fexit: {detail}")
    })?;
    if !func_ret {
        ensure(detail.contains("kretprobe"), || {
            format!("func_ret: {detail}")
        })?;
    }
    let (cookie, _) = row("bpf_cookie")?;
    let (perf_link, _) = row("perf_link")?;
    let (lookup_delete, _) = row("lookup_delete")?;
    let (batch, batch_detail) = row("map_batch")?;
    // uprobe_multi (6.6) carries cookies itself; lookup-and-delete (5.14) is newer than batch
    // ops (5.6).
    if kernel_has_uprobe_multi() {
        ensure(cookie && perf_link, || {
            "uprobe_multi without cookies".to_string()
        })?;
    }
    ensure(!lookup_delete || batch, || {
        format!("map_batch: {batch_detail}")
    })?;
    if std::env::var_os("TRACER_VM").is_none() {
        // This host's kernel (6.18) has all of them.
        ensure(cookie && perf_link && lookup_delete && batch, || {
            format!(
                "cookie {cookie}, perf_link {perf_link}, lookup_delete {lookup_delete}, batch {batch}"
            )
        })?;
    }

    let workload = Workload::spawn(&["write", &N.to_string()])?;
    let pid = workload.pid.to_string();
    let tool = start(&[
        "funccount",
        "-v",
        "--json",
        "-P",
        "-p",
        &pid,
        "u:libc:write",
        "1",
    ])?;
    workload.go_and_wait()?;
    std::thread::sleep(Duration::from_millis(1500));
    let done = tool.stop(libc::SIGINT)?.ok()?;
    let said_no_cookies = done.stderr.iter().any(|l| l.contains("no BPF cookies"));
    ensure(said_no_cookies != (cookie && perf_link), || {
        format!(
            "doctor: cookie {cookie}, perf_link {perf_link}; funccount -v: {}",
            done.stderr.join(" | ")
        )
    })?;
    let records = done.json()?;
    let counted: u64 = records
        .iter()
        .filter(|r| r["type"] == "counts_per_pid")
        .filter_map(|r| r["total"].as_u64())
        .sum();
    ensure(counted == N, || {
        format!("funccount -P intervals counted {counted} write() calls, workload made {N}")
    })
}

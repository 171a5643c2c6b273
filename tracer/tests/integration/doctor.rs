//! doctor's claims against this kernel, and against what the ladder then does.

use std::path::Path;

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::common::{Need, Workload, ensure, fail, kernel_has_uprobe_multi, run, start, trial};

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
    ]
}

fn checks() -> Result<Vec<Value>, Failed> {
    let out = run(&["doctor", "--json"]);
    ensure(out.status.success(), || {
        format!("doctor failed: {}", String::from_utf8_lossy(&out.stderr))
    })?;
    let json: Value = serde_json::from_slice(&out.stdout).map_err(|e| fail(e.to_string()))?;
    ensure(json["schema"] == "tracer.doctor.v1", || {
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

//! doctor: what this kernel lets tracer do, each answer proven by a tiny real load and attach
//! through the same ladder code the tools use, so the doctor and the tools cannot disagree.

use std::process::Command;

use anyhow::Result;
use aya::{
    Ebpf,
    maps::{Array, MapType},
    programs::{
        PerfEvent, UProbe,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        uprobe::UProbeScope,
    },
};
use clap::Args;
use serde::Serialize;
use serde_json::json;
use tracer_common::probe::*;

use crate::{
    attach::{self, Mechanism, Rung, Target},
    btf::KernelBtf,
    loader::{self, objects},
    output::{Out, with_schema},
    probe_spec, uprobe_multi,
};

const TOOL: &str = "doctor";
/// A function every kernel has, for the kprobe and fentry checks.
const KFUNC: &str = "vfs_read";

/// Check what this kernel allows: BTF, tracepoints, tp_btf, raw_tp, kprobes, fentry, uprobes,
/// perf_event sampling, ring buffer, kprobe_multi, BPF cookies, perf links, bpf_get_func_ret,
/// hash map lookup-and-delete and batch operations, bpf_stats.
#[derive(Args, Clone, Debug)]
pub struct DoctorArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub feature: &'static str,
    pub available: bool,
    pub detail: String,
}

fn check(feature: &'static str, result: Result<String, String>) -> Check {
    match result {
        Ok(detail) => Check {
            feature,
            available: true,
            detail,
        },
        Err(detail) => Check {
            feature,
            available: false,
            detail,
        },
    }
}

/// The uprobe check's target: a function of this very binary.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tracer_doctor_uprobe_target(x: u64) -> u64 {
    std::hint::black_box(x + 1)
}

pub fn run(args: DoctorArgs) -> Result<()> {
    let checks = checks()?;
    let mut out = Out::new();
    if args.json {
        out.json(&with_schema(
            TOOL,
            json!({ "type": "report", "kernel": kernel_release(), "checks": checks }),
        ));
    } else {
        out.line(&format!("kernel {}", kernel_release()));
        out.line(&format!("{:<13} {:<4} DETAIL", "FEATURE", "OK"));
        for c in &checks {
            out.line(&format!(
                "{:<13} {:<4} {}",
                c.feature,
                if c.available { "yes" } else { "no" },
                c.detail
            ));
        }
        let pick = |options: &[&'static str]| -> &'static str {
            options
                .iter()
                .find(|f| checks.iter().any(|c| c.feature == **f && c.available))
                .copied()
                .unwrap_or("none")
        };
        out.line("");
        out.line(&format!(
            "ladder: tracepoints via {}; kernel functions via {}",
            pick(&["tp_btf", "raw_tp", "tracepoint"]),
            pick(&["fentry", "kprobe"])
        ));
    }
    Ok(())
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn checks() -> Result<Vec<Check>> {
    let btf = KernelBtf::new();
    let mut checks = vec![check(
        "btf",
        btf.task_offsets()
            .map(|o| {
                format!(
                    "{}: task_struct flags@{} pid@{} tgid@{} comm@{}",
                    crate::btf::VMLINUX_BTF,
                    o.flags,
                    o.pid,
                    o.tgid,
                    o.comm
                )
            })
            .map_err(|e| format!("{e:#}")),
    )];
    checks.push(check(
        "tracefs",
        crate::tracefs::root()
            .map(|p| p.display().to_string())
            .map_err(|e| e.to_string()),
    ));
    checks.push(check("lockdown", lockdown()));

    let mut ebpf = loader::load(objects::PROBE, |_| {})?;
    let fork_tp = Target::Tracepoint {
        category: "sched",
        event: "sched_process_fork",
    };
    let entry = Target::Function {
        name: KFUNC,
        on_return: false,
    };
    let exit = Target::Function {
        name: KFUNC,
        on_return: true,
    };
    let ladder_checks: [(&'static str, Mechanism, &str, Target<'_>, u32); 7] = [
        (
            "tracepoint",
            Mechanism::Tracepoint,
            "probe_tracepoint",
            fork_tp,
            PROBE_HIT_TRACEPOINT,
        ),
        (
            "tp_btf",
            Mechanism::TpBtf,
            "probe_tp_btf",
            fork_tp,
            PROBE_HIT_TP_BTF,
        ),
        (
            "raw_tp",
            Mechanism::RawTp,
            "probe_raw_tp",
            fork_tp,
            PROBE_HIT_RAW_TP,
        ),
        (
            "kprobe",
            Mechanism::Kprobe,
            "probe_kprobe",
            entry,
            PROBE_HIT_KPROBE,
        ),
        (
            "kretprobe",
            Mechanism::Kretprobe,
            "probe_kretprobe",
            exit,
            PROBE_HIT_KRETPROBE,
        ),
        (
            "fentry",
            Mechanism::Fentry,
            "probe_fentry",
            entry,
            PROBE_HIT_FENTRY,
        ),
        (
            "fexit",
            Mechanism::Fexit,
            "probe_fexit",
            exit,
            PROBE_HIT_FEXIT,
        ),
    ];
    let mut attached = Vec::new();
    for (feature, mechanism, program, target, slot) in ladder_checks {
        let rung = Rung { mechanism, program };
        match attach::attach(&mut ebpf, &btf, target, &[rung], None) {
            Ok(a) => attached.push((feature, a.target, slot)),
            Err(e) => checks.push(check(feature, Err(e.declined[0].reason.clone()))),
        }
    }
    // bpf_get_func_ret: a second fexit on the same function, one that reads the return value.
    let func_ret = attach::attach(
        &mut ebpf,
        &btf,
        exit,
        &[Rung {
            mechanism: Mechanism::Fexit,
            program: "probe_fexit_ret",
        }],
        None,
    )
    .map_err(|e| {
        format!(
            "{}: $retval and kr: values use kretprobe instead of fexit (needs Linux 5.17)",
            e.declined[0].reason
        )
    });
    let uprobes = attach_uprobes(&mut ebpf);
    let uprobe_multi = attach_uprobe_multi(&ebpf);
    let perf = attach_perf_event(&mut ebpf);

    // Make every attached probe fire: fork (tracepoints), read a file (vfs_read), call
    // our own uprobe target, and let the cpu-clock sampler tick.
    let _ = Command::new("/bin/true").status();
    let _ = std::fs::read("/proc/self/stat");
    tracer_doctor_uprobe_target(1);
    std::thread::sleep(std::time::Duration::from_millis(60));

    let hits: Array<_, u64> = Array::try_from(ebpf.map("HITS").expect("HITS map"))?;
    let fired = |slot: u32| hits.get(&slot, 0).unwrap_or(0) > 0;
    let verdict = |what: String, slot: u32| {
        if fired(slot) {
            Ok(format!("{what}: attached and fired"))
        } else {
            Ok(format!("{what}: attached (did not fire during the check)"))
        }
    };
    for (feature, target, slot) in attached {
        checks.push(check(feature, verdict(target, slot)));
    }
    match uprobes {
        Ok(()) => {
            checks.push(check(
                "uprobe",
                verdict("own binary".into(), PROBE_HIT_UPROBE),
            ));
            checks.push(check(
                "uretprobe",
                verdict("own binary".into(), PROBE_HIT_URETPROBE),
            ));
        }
        Err(e) => {
            checks.push(check("uprobe", Err(e.clone())));
            checks.push(check("uretprobe", Err(e)));
        }
    }
    checks.push(check(
        "uprobe_multi",
        uprobe_multi.and_then(|_link| {
            verdict(
                "own binary, one link (fast mass attach/detach)".into(),
                PROBE_HIT_UPROBE_MULTI,
            )
        }),
    ));
    checks.push(check(
        "perf_event",
        perf.and_then(|()| verdict("software cpu-clock sampling".into(), PROBE_HIT_PERF_EVENT)),
    ));
    checks.push(check(
        "func_ret",
        func_ret.and_then(|a| {
            verdict(
                format!("{} via bpf_get_func_ret", a.target),
                PROBE_HIT_FEXIT_RET,
            )
        }),
    ));
    checks.push(check("ringbuf", ringbuf()));
    checks.extend(attach_features());
    checks.push(check("kprobe_multi", crate::kprobe_multi::supported()));
    checks.push(check("bpf_stats", bpf_stats()));
    // Present in the order a reader thinks about them.
    let order = [
        "btf",
        "tracefs",
        "lockdown",
        "tracepoint",
        "tp_btf",
        "raw_tp",
        "kprobe",
        "kretprobe",
        "fentry",
        "fexit",
        "kprobe_multi",
        "uprobe",
        "uretprobe",
        "uprobe_multi",
        "bpf_cookie",
        "perf_link",
        "func_ret",
        "perf_event",
        "ringbuf",
        "lookup_delete",
        "map_batch",
        "bpf_stats",
    ];
    checks.sort_by_key(|c| {
        order
            .iter()
            .position(|o| *o == c.feature)
            .unwrap_or(usize::MAX)
    });
    Ok(checks)
}

fn lockdown() -> Result<String, String> {
    match std::fs::read_to_string("/sys/kernel/security/lockdown") {
        Ok(text) => {
            let active = text
                .split_whitespace()
                .find(|w| w.starts_with('['))
                .unwrap_or("[none]");
            if active == "[none]" {
                Ok("none".into())
            } else {
                Err(format!(
                    "{active}: kernel lockdown restricts BPF reads of kernel memory"
                ))
            }
        }
        Err(_) => Ok("not reported (no securityfs lockdown file)".into()),
    }
}

fn attach_uprobes(ebpf: &mut Ebpf) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    for (program, name) in [("probe_uprobe", "uprobe"), ("probe_uretprobe", "uretprobe")] {
        let p: &mut UProbe = ebpf
            .program_mut(program)
            .expect("probe program")
            .try_into()
            .map_err(|e| format!("{e}"))?;
        p.load()
            .map_err(|e| attach::describe(Mechanism::Tracepoint, &e))?;
        p.attach(
            "tracer_doctor_uprobe_target",
            &exe,
            UProbeScope::CallingProcess,
        )
        .map_err(|e| format!("{name}: {}", attach::describe(Mechanism::Tracepoint, &e)))?;
    }
    Ok(())
}

/// A uprobe_multi link on our own target function: one link for any number of offsets, what the
/// probe tools use for u:/ur: probes where the kernel has it (Linux 6.6+).
fn attach_uprobe_multi(ebpf: &Ebpf) -> Result<uprobe_multi::Link, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let spec = probe_spec::parse(&format!("u:{}:tracer_doctor_uprobe_target", exe.display()))
        .map_err(|e| e.to_string())?;
    let probes = probe_spec::resolve(&spec, None).map_err(|e| e.to_string())?;
    let Some(probe_spec::Point::User { path, offset, .. }) = probes.first().map(|p| &p.point)
    else {
        return Err("own uprobe target not found".into());
    };
    let program = uprobe_multi::Program::load(objects::PROBE, "probe_uprobe_multi", ebpf)
        .map_err(|e| e.to_string())?;
    uprobe_multi::Link::attach(
        &program,
        &uprobe_multi::Target {
            path,
            offsets: &[*offset],
            cookies: &[0],
            on_return: false,
            pid: Some(std::process::id()),
        },
    )
    .map_err(|e| e.to_string())
}

fn attach_perf_event(ebpf: &mut Ebpf) -> Result<(), String> {
    let p: &mut PerfEvent = ebpf
        .program_mut("probe_perf_event")
        .expect("probe program")
        .try_into()
        .map_err(|e| format!("{e}"))?;
    p.load()
        .map_err(|e| attach::describe(Mechanism::Tracepoint, &e))?;
    p.attach(
        PerfEventConfig::Software(SoftwareEvent::CpuClock),
        PerfEventScope::CallingProcess { cpu: None },
        SamplePolicy::Frequency(1000),
        true,
    )
    .map_err(|e| {
        format!(
            "perf_event_open: {}",
            attach::describe(Mechanism::Tracepoint, &e)
        )
    })?;
    // Burn a little CPU so the sampler has something to sample.
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_millis(30) {
        std::hint::black_box(start.elapsed());
    }
    Ok(())
}

/// BPF cookies, perf-event links and the hash map operations the interval modes use. Each is
/// proven by aya's own probe loads (a kprobe program calling `bpf_get_attach_cookie`; a perf
/// link created on a perf event) or by the operation on a scratch map (`loader::hash_map_ops`);
/// the probe tools and drains consult the same answers to pick their fallbacks.
fn attach_features() -> Vec<Check> {
    let features = aya::features();
    let ops = loader::hash_map_ops();
    vec![
        check(
            "bpf_cookie",
            if features.bpf_cookie() {
                Ok("bpf_get_attach_cookie loads: one object serves all u:/ur: probes".into())
            } else {
                Err(format!(
                    "no bpf_get_attach_cookie (Linux 5.15): u:/ur: probes load one object per \
                     probe (at most {} at once)",
                    crate::probe_attach::MAX_UPROBES_WITHOUT_COOKIES
                ))
            },
        ),
        check(
            "perf_link",
            if features.bpf_perf_link() {
                Ok("BPF_LINK_CREATE on a perf event".into())
            } else {
                Err(
                    "no perf-event BPF links (Linux 5.15): programs attach with \
                     PERF_EVENT_IOC_SET_BPF, and uprobes carry no cookie (one object per probe)"
                        .into(),
                )
            },
        ),
        check(
            "lookup_delete",
            if ops.lookup_and_delete {
                Ok("BPF_MAP_LOOKUP_AND_DELETE_ELEM on a per-CPU hash map".into())
            } else {
                Err(
                    "hash maps refuse BPF_MAP_LOOKUP_AND_DELETE_ELEM (Linux 5.14): interval \
                     drains (forksnoop --summary, funccount -P, argdist) use the batch command; \
                     profile/kstacks/offcputime eviction looks up, then deletes"
                        .into(),
                )
            },
        ),
        check(
            "map_batch",
            if ops.batch {
                Ok("BPF_MAP_LOOKUP_AND_DELETE_BATCH on a per-CPU hash map".into())
            } else {
                Err(
                    "no BPF_MAP_LOOKUP_AND_DELETE_BATCH (Linux 5.6): without lookup_delete, \
                     drains look up, then delete (an increment between the two is lost)"
                        .into(),
                )
            },
        ),
    ]
}

fn ringbuf() -> Result<String, String> {
    match aya::sys::is_map_supported(MapType::RingBuf) {
        Ok(true) => Ok("BPF_MAP_TYPE_RINGBUF created".into()),
        Ok(false) => Err(
            "BPF_MAP_TYPE_RINGBUF not supported (Linux 5.8): every tool sends its events \
             through one; tracer needs 5.10+"
                .into(),
        ),
        Err(e) => Err(e.to_string()),
    }
}

fn bpf_stats() -> Result<String, String> {
    match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(_fd) => Ok("BPF_ENABLE_STATS run_time_ns/run_cnt available".into()),
        Err(e) => Err(format!("BPF_ENABLE_STATS failed: {e}")),
    }
}

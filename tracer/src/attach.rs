//! The attach ladder, shared by every tool: for a kernel function try fentry/fexit, then
//! kprobe/kretprobe; for a tracepoint try tp_btf, then raw_tp, then the classic tracepoint.
//! (User functions have their own two rungs, uprobe_multi → uprobe, in `probe_attach`.)
//! Each rung is tried for real (load + attach); the first that works wins, and the reasons the
//! others failed are kept so tools and `doctor` can explain themselves.

use std::{error::Error as StdError, fmt, io, path::Path};

use aya::{
    Ebpf,
    programs::{
        BtfTracePoint, FEntry, FExit, KProbe, Program, ProgramError, RawTracePoint, TracePoint,
    },
};
use serde::Serialize;

use crate::btf::KernelBtf;

/// A way of attaching a BPF program to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
// `--attach` takes the kernel's own spelling (tp_btf, the word errors, -v and JSON print) and,
// as an old spelling, clap's hyphenated one (tp-btf).
pub enum Mechanism {
    Fentry,
    Fexit,
    Kprobe,
    Kretprobe,
    /// One kprobe_multi link for all the k: functions of a run (Linux ≥ 5.18, CONFIG_FPROBE).
    #[value(name = "kprobe_multi", alias = "kprobe-multi")]
    KprobeMulti,
    /// The same with BPF_F_KPROBE_MULTI_RETURN, for kr: probes.
    #[value(name = "kretprobe_multi", alias = "kretprobe-multi")]
    KretprobeMulti,
    #[value(name = "tp_btf", alias = "tp-btf")]
    TpBtf,
    #[value(name = "raw_tp", alias = "raw-tp")]
    RawTp,
    Tracepoint,
    /// One uprobe_multi link per binary for all its u: probes (Linux ≥ 6.6).
    #[value(name = "uprobe_multi", alias = "uprobe-multi")]
    UprobeMulti,
    /// The same with BPF_F_UPROBE_MULTI_RETURN, for ur: probes.
    #[value(name = "uretprobe_multi", alias = "uretprobe-multi")]
    UretprobeMulti,
    /// One perf-event uprobe per offset.
    Uprobe,
    Uretprobe,
    /// The kernel's function_graph tracer through tracefs (funcgraph's rung without BPF).
    #[value(name = "function_graph", alias = "function-graph")]
    FunctionGraph,
    /// The kernel's function tracer through a tracefs instance (functrace's rung without BPF).
    Function,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Self::Fentry => "fentry",
            Self::Fexit => "fexit",
            Self::Kprobe => "kprobe",
            Self::Kretprobe => "kretprobe",
            Self::KprobeMulti => "kprobe_multi",
            Self::KretprobeMulti => "kretprobe_multi",
            Self::TpBtf => "tp_btf",
            Self::RawTp => "raw_tp",
            Self::Tracepoint => "tracepoint",
            Self::UprobeMulti => "uprobe_multi",
            Self::UretprobeMulti => "uretprobe_multi",
            Self::Uprobe => "uprobe",
            Self::Uretprobe => "uretprobe",
            Self::FunctionGraph => "function_graph",
            Self::Function => "function",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What to attach to.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// `category:event`, e.g. `sched:sched_process_fork`.
    Tracepoint { category: &'a str, event: &'a str },
    /// A kernel function; `on_return` selects fexit/kretprobe.
    Function { name: &'a str, on_return: bool },
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tracepoint { category, event } => write!(f, "{category}:{event}"),
            Self::Function {
                name,
                on_return: false,
            } => write!(f, "{name}()"),
            Self::Function {
                name,
                on_return: true,
            } => write!(f, "return of {name}()"),
        }
    }
}

/// One rung: a mechanism and the name of the program in the tool's object that implements it.
#[derive(Clone, Copy, Debug)]
pub struct Rung<'a> {
    pub mechanism: Mechanism,
    pub program: &'a str,
}

/// A rung that was not used, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Declined {
    pub mechanism: Mechanism,
    pub reason: String,
}

/// The outcome of a successful climb.
#[derive(Clone, Debug, Serialize)]
pub struct Attachment {
    pub target: String,
    pub mechanism: Mechanism,
    pub program: String,
    pub declined: Vec<Declined>,
}

impl Attachment {
    /// Its entry in an end record's `attach` list.
    pub fn json(&self) -> serde_json::Value {
        crate::output::attach_json(&self.target, self.mechanism)
    }

    /// One line for `-v` and tool headers: "sched:sched_process_fork via tp_btf".
    pub fn summary(&self) -> String {
        let mut line = format!("{} via {}", self.target, self.mechanism);
        if !self.declined.is_empty() {
            let why: Vec<String> = self
                .declined
                .iter()
                .map(|d| format!("{}: {}", d.mechanism, d.reason))
                .collect();
            line.push_str(&format!(" (not {})", why.join("; ")));
        }
        line
    }
}

/// Every rung failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot attach to {target}: {}", .declined.iter().map(|d| format!("{}: {}", d.mechanism, d.reason)).collect::<Vec<_>>().join("; "))]
pub struct LadderError {
    pub target: String,
    pub declined: Vec<Declined>,
}

/// The tracepoint ladder of a tool whose programs follow the naming convention
/// `{prefix}_btf` (tp_btf), `{prefix}_raw` (raw_tp) and `{prefix}_tp` (classic tracepoint):
/// climbs the rungs of `mechanisms` in that order.
pub fn tracepoint_ladder(
    ebpf: &mut Ebpf,
    btf: &KernelBtf,
    category: &str,
    event: &str,
    prefix: &str,
    mechanisms: &[Mechanism],
    force: Option<Mechanism>,
) -> Result<Attachment, LadderError> {
    let names: Vec<(Mechanism, String)> = mechanisms
        .iter()
        .map(|&m| {
            let suffix = match m {
                Mechanism::TpBtf => "btf",
                Mechanism::RawTp => "raw",
                _ => "tp",
            };
            (m, format!("{prefix}_{suffix}"))
        })
        .collect();
    let rungs: Vec<Rung> = names
        .iter()
        .map(|(mechanism, program)| Rung {
            mechanism: *mechanism,
            program,
        })
        .collect();
    attach(
        ebpf,
        btf,
        Target::Tracepoint { category, event },
        &rungs,
        force,
    )
}

/// Climbs `rungs` in order (or only `force`, when the user pinned a mechanism).
pub fn attach(
    ebpf: &mut Ebpf,
    btf: &KernelBtf,
    target: Target<'_>,
    rungs: &[Rung<'_>],
    force: Option<Mechanism>,
) -> Result<Attachment, LadderError> {
    let mut declined = Vec::new();
    if let Some(forced) = force
        && !rungs.iter().any(|r| r.mechanism == forced)
    {
        let offered: Vec<&str> = rungs.iter().map(|r| r.mechanism.name()).collect();
        // A tool drops rungs this kernel cannot have (tp_btf without BTF): say that first.
        let reason = precheck(forced).unwrap_or_else(|| {
            format!(
                "not offered for this probe (choose one of {})",
                offered.join(", ")
            )
        });
        declined.push(Declined {
            mechanism: forced,
            reason,
        });
        return Err(LadderError {
            target: target.to_string(),
            declined,
        });
    }
    for rung in rungs {
        if force.is_some_and(|f| f != rung.mechanism) {
            continue;
        }
        match try_rung(ebpf, btf, target, rung) {
            Ok(()) => {
                return Ok(Attachment {
                    target: target.to_string(),
                    mechanism: rung.mechanism,
                    program: rung.program.to_string(),
                    declined,
                });
            }
            Err(reason) => declined.push(Declined {
                mechanism: rung.mechanism,
                reason,
            }),
        }
    }
    Err(LadderError {
        target: target.to_string(),
        declined,
    })
}

fn try_rung(
    ebpf: &mut Ebpf,
    btf: &KernelBtf,
    target: Target<'_>,
    rung: &Rung<'_>,
) -> Result<(), String> {
    if let Some(reason) = precheck(rung.mechanism) {
        return Err(reason);
    }
    let program = ebpf.program_mut(rung.program).ok_or_else(|| {
        format!(
            "program {} missing from the object (build bug)",
            rung.program
        )
    })?;
    let result = load_and_attach(program, btf, target, rung.mechanism);
    if result.is_err() {
        // Free a program that loaded but could not attach before the next rung loads its own.
        let _ = unload(program);
    }
    result
}

/// Cheap checks that give a better reason than the syscall would.
pub fn precheck(mechanism: Mechanism) -> Option<String> {
    match mechanism {
        Mechanism::Kprobe | Mechanism::Kretprobe
            if !Path::new("/sys/bus/event_source/devices/kprobe/type").exists() =>
        {
            Some("kprobes not built into this kernel (CONFIG_KPROBES unset)".into())
        }
        Mechanism::TpBtf | Mechanism::Fentry | Mechanism::Fexit
            if !Path::new(crate::btf::VMLINUX_BTF).exists() =>
        {
            Some(
                "no kernel BTF (/sys/kernel/btf/vmlinux missing; needs CONFIG_DEBUG_INFO_BTF)"
                    .into(),
            )
        }
        _ => None,
    }
}

fn load_and_attach(
    program: &mut Program,
    btf: &KernelBtf,
    target: Target<'_>,
    mechanism: Mechanism,
) -> Result<(), String> {
    let btf_err = |e: anyhow::Error| format!("{e:#}");
    let err = |e: ProgramError| describe(mechanism, &e);
    match (mechanism, target) {
        (Mechanism::TpBtf, Target::Tracepoint { event, .. }) => {
            let p: &mut BtfTracePoint = program.try_into().map_err(err)?;
            p.load_with_btf_id(btf.tp_btf_id(event).map_err(btf_err)?)
                .map_err(err)?;
            p.attach().map_err(err)?;
        }
        (Mechanism::RawTp, Target::Tracepoint { event, .. }) => {
            let p: &mut RawTracePoint = program.try_into().map_err(err)?;
            p.load().map_err(err)?;
            p.attach(event).map_err(err)?;
        }
        (Mechanism::Tracepoint, Target::Tracepoint { category, event }) => {
            crate::tracefs::root().map_err(|e| e.to_string())?;
            let p: &mut TracePoint = program.try_into().map_err(err)?;
            p.load().map_err(err)?;
            p.attach(category, event).map_err(err)?;
        }
        (
            Mechanism::Fentry,
            Target::Function {
                name,
                on_return: false,
            },
        ) => {
            let p: &mut FEntry = program.try_into().map_err(err)?;
            p.load_with_btf_id(btf.function_id(name).map_err(btf_err)?)
                .map_err(err)?;
            p.attach().map_err(err)?;
        }
        (
            Mechanism::Fexit,
            Target::Function {
                name,
                on_return: true,
            },
        ) => {
            let p: &mut FExit = program.try_into().map_err(err)?;
            p.load_with_btf_id(btf.function_id(name).map_err(btf_err)?)
                .map_err(err)?;
            p.attach().map_err(err)?;
        }
        (
            Mechanism::Kprobe,
            Target::Function {
                name,
                on_return: false,
            },
        )
        | (
            Mechanism::Kretprobe,
            Target::Function {
                name,
                on_return: true,
            },
        ) => {
            let p: &mut KProbe = program.try_into().map_err(err)?;
            p.load().map_err(err)?;
            p.attach(name, 0).map_err(err)?;
        }
        (mechanism, target) => return Err(format!("{mechanism} cannot attach to {target}")),
    }
    Ok(())
}

/// Detaches (and unloads) every program of `ebpf`, keeping its maps readable: a tool's final
/// read after this sees totals no program is still adding to, so maps updated by one event
/// (a count in one map, a histogram in another) agree exactly at the end. Programs whose name
/// contains a word of `first` go first, in that order (an event's start before its end: under
/// TCG each detach takes long enough for events to start and miss their end otherwise).
pub fn detach_all(ebpf: &mut Ebpf, first: &[&str]) {
    let rank = |name: &str| {
        first
            .iter()
            .position(|w| name.contains(w))
            .unwrap_or(first.len())
    };
    let mut names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_string()).collect();
    names.sort_by_key(|n| rank(n));
    for name in names {
        if let Some(program) = ebpf.program_mut(&name) {
            let _ = unload(program);
        }
    }
}

fn unload(program: &mut Program) -> Result<(), ProgramError> {
    match program {
        Program::BtfTracePoint(p) => p.unload(),
        Program::RawTracePoint(p) => p.unload(),
        Program::TracePoint(p) => p.unload(),
        Program::FEntry(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        Program::UProbe(p) => p.unload(),
        Program::PerfEvent(p) => p.unload(),
        _ => Ok(()),
    }
}

/// The errno somewhere in an error's source chain.
pub fn errno(err: &(dyn StdError + 'static)) -> Option<i32> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return Some(code);
        }
        current = e.source();
    }
    None
}

/// A one-line reason for a failed load or attach (never a verifier dump).
pub fn describe(mechanism: Mechanism, err: &ProgramError) -> String {
    const ENOTSUPP: i32 = 524;
    if let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = err
    {
        let log = verifier_log.to_string();
        if std::env::var_os("TRACER_VERIFIER_LOG").is_some() {
            errln!("--- verifier log ({mechanism}) ---\n{log}");
        }
        // The verifier's own summary lines come last ("verification time", "stack depth",
        // "processed", in that order on 5.10-6.1); the reason is just before them.
        let last = log
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| {
                !l.is_empty()
                    && !l.starts_with("processed ")
                    && !l.starts_with("verification time")
                    && !l.starts_with("stack depth")
            })
            .unwrap_or("");
        return match (io_error.raw_os_error(), last.is_empty()) {
            (Some(libc::EPERM), true) if matches!(mechanism, Mechanism::Fentry | Mechanism::Fexit) => {
                "the kernel refused the BPF trampoline (EPERM with no verifier log: fentry/fexit blocked here)".into()
            }
            (Some(libc::EPERM), true) => "permission denied by the kernel (EPERM): run as root".into(),
            (Some(ENOTSUPP), _) => "not supported by this kernel (ENOTSUPP)".into(),
            (_, true) => format!("load failed: {io_error}"),
            (_, false) => format!("verifier rejected the program: {last}"),
        };
    }
    match errno(err) {
        Some(libc::ENOENT) if matches!(mechanism, Mechanism::Kprobe | Mechanism::Kretprobe) => {
            "no such kernel function (not in /proc/kallsyms, or inlined)".into()
        }
        Some(libc::ENOENT) => "no such probe point on this kernel (ENOENT)".into(),
        Some(ENOTSUPP) | Some(libc::EOPNOTSUPP) => "not supported by this kernel".into(),
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "permission denied by the kernel: run as root".into()
        }
        _ => {
            let mut text = err.to_string();
            let mut source = err.source();
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// Why k:/kr: probes cannot attach here, if they cannot: no kprobes, and fentry refused for
/// a function every kernel has (tried for real, as libbpf's fentry_can_attach does). tplist
/// says it, and `serve --check` refuses a config with k:/kr: probes for it, as the start would.
pub fn kernel_functions_unavailable() -> Option<String> {
    let kprobe = precheck(Mechanism::Kprobe)?;
    let fentry = precheck(Mechanism::Fentry).or_else(|| {
        let config = tracer_common::probes::ProbesConfig::DEFAULT;
        let mut ebpf = match crate::loader::load(crate::loader::objects::PROBES, |l| {
            l.override_global("CONFIG", &config, true);
        }) {
            Ok(ebpf) => ebpf,
            Err(e) => return Some(format!("{e:#}")),
        };
        let btf = crate::btf::KernelBtf::new();
        attach(
            &mut ebpf,
            &btf,
            Target::Function {
                name: "do_sys_openat2",
                on_return: false,
            },
            &[Rung {
                mechanism: Mechanism::Fentry,
                program: "probes_fentry",
            }],
            None,
        )
        .err()
        .map(|e| {
            e.declined
                .iter()
                .map(|d| d.reason.clone())
                .collect::<Vec<_>>()
                .join("; ")
        })
    })?;
    Some(format!("kprobe: {kprobe}; fentry: {fentry}"))
}

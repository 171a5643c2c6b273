//! Loading the generic `probes` object and attaching it to resolved probes (see
//! `probe_spec`), for funccount, funclatency, argdist, trace and stackcount; and reading its maps
//! back, summed over CPUs and over loaded objects.
//!
//! All uprobes share one loaded object: each attach point carries its probe id as the BPF
//! cookie, and each binary gets one uprobe_multi link for all its offsets where the kernel has
//! them (see `uprobe_multi`; else one perf-event uprobe per offset). A kernel without BPF
//! cookies (before 5.15) gets one object per user probe instead, as kernel functions do.
//! Kernel functions and tracepoints have no cookie in aya's attach paths (and fentry /
//! tp_btf programs are loaded for one target each), so each gets an object of its own with
//! `CONFIG.probe_id` set — up to `MAX_KERNEL_PROBES` kernel functions; past that (or with
//! `--attach kprobe_multi`) all of them share one object and one kprobe_multi link per side
//! (see `kprobe_multi`), told apart by cookie as uprobes are. Counts per probe are exact
//! either way. Maps a mode does not use are
//! shrunk to one entry before load.

use std::{collections::HashMap, hash::Hash, num::NonZeroU32, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use tracer_common::probes::*;

use crate::{
    attach::{self, Attachment, Declined, Mechanism, Rung, Target},
    btf::KernelBtf,
    hist::Log2,
    kprobe_multi,
    loader::{self, Stats, StatsReader, objects},
    probe_spec::{Kind, MAX_KERNEL_PROBES, Point, Probe},
    uprobe_multi,
};

/// What to attach and how.
pub struct Request<'a> {
    pub probes: &'a [Probe],
    pub config: ProbesConfig,
    /// Scope uprobes to this process (the kernel filters too, through `config.tgid`).
    pub pid: Option<u32>,
    /// `--attach`: only this mechanism (uprobe/uprobe_multi rungs for user probes; the others
    /// for kernel functions and tracepoints).
    pub force: Option<Mechanism>,
    /// funclatency: attach entry and return of each function.
    pub entry_and_return: bool,
    /// Values name tracepoint record fields: only the classic tracepoint has the record.
    pub needs_record: bool,
}

/// One loaded copy of the object and the probe ids it serves.
pub struct Instance {
    pub ebpf: Ebpf,
    pub ids: Vec<u32>,
    stats: StatsReader,
    /// Uprobe links by program, taken out at teardown to be closed in parallel.
    uprobe_links: Vec<(&'static str, Vec<UProbeLinkId>)>,
    /// uprobe_multi links, closed in parallel with the others at teardown. Each holds its
    /// program (a second copy of a uprobe program, see `uprobe_multi`) in the kernel.
    multi_links: Vec<uprobe_multi::Link>,
    /// kprobe_multi links (one per side), closed like `multi_links`.
    kprobe_multi_links: Vec<kprobe_multi::Link>,
    /// USDT probes with a semaphore: perf events tracer opened itself (see `usdt`).
    semaphore_probes: Vec<crate::usdt::SemaphoreProbe>,
}

/// Everything attached for one run. Dropping it detaches and unloads.
pub struct Loaded {
    pub instances: Vec<Instance>,
    /// How each kernel-side attachment went (for `-v`).
    pub attachments: Vec<Attachment>,
    /// Mechanisms used, e.g. ["uprobe"] or ["tp_btf"], deduplicated, for the status line.
    pub mechanisms: Vec<String>,
}

/// Extra counters of the probes object.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct ProbeStats {
    #[serde(flatten)]
    pub common: Stats,
    pub throttled: u64,
    pub unpaired: u64,
}

/// `usdt_slots`: one more than the highest probe id whose USDT arguments the object reads.
fn load(config: &ProbesConfig, usdt_slots: u32) -> Result<Ebpf> {
    let config = &ProbesConfig {
        exclude_tgid: if config.include_self != 0 {
            0
        } else {
            std::process::id()
        },
        ..*config
    };
    let mode = config.mode;
    let per_pid = config.per_pid != 0;
    // Stack mode reads the task's flags to skip kernel threads' (absent) user stacks.
    let task_offsets = if mode == MODE_STACK && config.user_stack != 0 {
        Some(
            crate::btf::KernelBtf::new()
                .task_offsets()
                .context("user stacks skip kernel threads by task flags read via kernel BTF")?,
        )
    } else {
        None
    };
    loader::load(objects::PROBES, |l: &mut EbpfLoader<'_>| {
        l.override_global("CONFIG", config, true);
        if let Some(offsets) = &task_offsets {
            l.override_global("TASK_OFFSETS", offsets, false);
        }
        let shrink = |l: &mut EbpfLoader<'_>, name: &'static str, keep: bool| {
            if !keep {
                l.map_max_entries(name, 1);
            }
        };
        shrink(l, "PID_COUNTS", mode == MODE_COUNT && per_pid);
        shrink(l, "START", mode == MODE_LATENCY);
        shrink(
            l,
            "HISTS",
            mode == MODE_LATENCY || (mode == MODE_VALUE && config.hist_values != 0),
        );
        shrink(
            l,
            "VALUE_COUNTS",
            mode == MODE_VALUE && config.hist_values == 0,
        );
        shrink(l, "STACKS", mode == MODE_STACK);
        // Indexed by probe id (one slot when no value is a USDT argument).
        l.map_max_entries(
            "USDT_ARGS",
            if reads_usdt_args(config) {
                usdt_slots
            } else {
                1
            },
        );
        shrink(l, "STACK_COUNTS", mode == MODE_STACK);
        if mode == MODE_STACK {
            // One count per distinct stack (pair): as many as the store holds.
            l.map_max_entries("STACKS", config.stack_entries);
            l.map_max_entries(
                "STACK_COUNTS",
                config.stack_entries.max(STACK_COUNTS_ENTRIES),
            );
        }
        if mode != MODE_TRACE {
            l.map_max_entries("EVENTS", 4096);
        }
    })
}

/// Whether any value the object reads is a USDT argument (else `USDT_ARGS` stays one entry).
fn reads_usdt_args(config: &ProbesConfig) -> bool {
    config
        .values
        .iter()
        .chain([&config.filter.value, &config.start_key, &config.end_key])
        .any(|v| v.kind == VAL_USDT_ARG)
}

/// `USDT_ARGS` slots for `users`: indexed by probe id.
fn usdt_slots(users: &[(u32, &Probe)]) -> u32 {
    users
        .iter()
        .filter(|(_, p)| p.usdt.is_some())
        .map(|(id, _)| id + 1)
        .max()
        .unwrap_or(1)
}

/// Fills `USDT_ARGS` with the argument operands of the USDT probes among `users`.
fn fill_usdt_args(ebpf: &mut Ebpf, config: &ProbesConfig, users: &[(u32, &Probe)]) -> Result<()> {
    if !reads_usdt_args(config) {
        return Ok(());
    }
    let mut map: aya::maps::Array<_, UsdtArgs> = aya::maps::Array::try_from(
        ebpf.map_mut("USDT_ARGS")
            .ok_or_else(|| anyhow!("USDT_ARGS map missing (build bug)"))?,
    )?;
    for (id, probe) in users {
        if let Some(site) = &probe.usdt {
            map.set(*id, site.map_value(), 0)
                .with_context(|| format!("cannot store the arguments of {}", probe.name))?;
        }
    }
    Ok(())
}

/// Loads and attaches everything in `req`. Errors are one line naming the probe that failed.
pub fn attach_all(req: &Request<'_>) -> Result<Loaded> {
    if req.probes.len() > MAX_PROBES as usize {
        usage_bail!(
            "too many probes ({}; at most {MAX_PROBES})",
            req.probes.len()
        );
    }
    let mut loaded = Loaded {
        instances: Vec::new(),
        attachments: Vec::new(),
        mechanisms: Vec::new(),
    };
    let users: Vec<(u32, &Probe)> = req
        .probes
        .iter()
        .enumerate()
        .filter(|(_, p)| p.kind.is_user())
        .map(|(i, p)| (i as u32, p))
        .collect();
    if !users.is_empty() {
        attach_uprobes(req, &users, &mut loaded)?;
    }
    let functions: Vec<(u32, &str)> = req
        .probes
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match &p.point {
            Point::Kernel { function } => Some((i as u32, function.as_str())),
            _ => None,
        })
        .collect();
    let multi = use_kprobe_multi(req, functions.len())?;
    if multi {
        attach_kprobe_multi(req, &functions, &mut loaded)?;
    }
    let btf = KernelBtf::new();
    for (id, probe) in req.probes.iter().enumerate() {
        if probe.kind.is_user() || (multi && matches!(probe.point, Point::Kernel { .. })) {
            continue;
        }
        let config = ProbesConfig {
            probe_id: id as u32,
            use_cookie: 0,
            ..req.config
        };
        let mut ebpf = load(&config, 1)?;
        match &probe.point {
            Point::Kernel { function } => {
                let entry = !probe.kind.is_return() || req.entry_and_return;
                let ret = probe.kind.is_return() || req.entry_and_return;
                if entry {
                    let a = attach::attach(
                        &mut ebpf,
                        &btf,
                        Target::Function {
                            name: function,
                            on_return: false,
                        },
                        &[
                            Rung {
                                mechanism: Mechanism::Fentry,
                                program: "probes_fentry",
                            },
                            Rung {
                                mechanism: Mechanism::Kprobe,
                                program: "probes_kprobe",
                            },
                        ],
                        req.force,
                    )?;
                    loaded.note(a);
                }
                if ret {
                    let force = req.force.map(|m| match m {
                        Mechanism::Fentry => Mechanism::Fexit,
                        Mechanism::Kprobe => Mechanism::Kretprobe,
                        other => other,
                    });
                    let a = attach::attach(
                        &mut ebpf,
                        &btf,
                        Target::Function {
                            name: function,
                            on_return: true,
                        },
                        &[
                            Rung {
                                mechanism: Mechanism::Fexit,
                                program: "probes_fexit",
                            },
                            Rung {
                                mechanism: Mechanism::Kretprobe,
                                program: "probes_kretprobe",
                            },
                        ],
                        force,
                    )?;
                    loaded.note(a);
                }
            }
            Point::Tracepoint { category, event } => {
                let a = attach::attach(
                    &mut ebpf,
                    &btf,
                    Target::Tracepoint { category, event },
                    &tracepoint_rungs(false, req.needs_record),
                    req.force,
                )?;
                loaded.note(a);
            }
            Point::User { .. } => unreachable!("uprobes were attached above"),
        }
        loaded.push(ebpf, vec![id as u32])?;
    }
    Ok(loaded)
}

/// Whether the kernel functions of `req` go on kprobe_multi links: when asked with `--attach`,
/// or when there are more than one object each can serve and the kernel has the link type
/// (probe_spec refused such globs where it has not; several smaller globs together still
/// get one object per function there, as before).
fn use_kprobe_multi(req: &Request<'_>, functions: usize) -> Result<bool> {
    if functions == 0 {
        return Ok(false);
    }
    match req.force {
        Some(Mechanism::KprobeMulti | Mechanism::KretprobeMulti) => Ok(true),
        Some(
            m @ (Mechanism::Kprobe | Mechanism::Kretprobe | Mechanism::Fentry | Mechanism::Fexit),
        ) if functions > MAX_KERNEL_PROBES => {
            usage_bail!(
                "--attach {m} takes at most {MAX_KERNEL_PROBES} kernel functions (one object \
                 each), not {functions}: use --attach kprobe_multi or narrow the pattern"
            )
        }
        _ => Ok(functions > MAX_KERNEL_PROBES && kprobe_multi::supported().is_ok()),
    }
}

/// Kernel functions on kprobe_multi links: one object with `use_cookie` for all of them, and
/// one link per side (entry; return with BPF_F_KPROBE_MULTI_RETURN) whose cookies are the
/// probe ids. There is no rung below it: past `MAX_KERNEL_PROBES` nothing else can attach.
fn attach_kprobe_multi(
    req: &Request<'_>,
    functions: &[(u32, &str)],
    loaded: &mut Loaded,
) -> Result<()> {
    let config = ProbesConfig {
        use_cookie: 1,
        ..req.config
    };
    let ebpf = load(&config, 1)?;
    let mut links = Vec::new();
    for (program, ret, mechanism) in [
        ("probes_kprobe", false, Mechanism::KprobeMulti),
        ("probes_kretprobe", true, Mechanism::KretprobeMulti),
    ] {
        let side: Vec<(u32, &str)> = functions
            .iter()
            .filter(|(id, _)| {
                req.entry_and_return || req.probes[*id as usize].kind.is_return() == ret
            })
            .copied()
            .collect();
        if side.is_empty() {
            continue;
        }
        let target = match side.as_slice() {
            [(_, function)] => format!("{function}(){}", if ret { " return" } else { "" }),
            _ => format!(
                "{} kernel functions{}",
                side.len(),
                if ret { " (return)" } else { "" }
            ),
        };
        let names: Vec<&str> = side.iter().map(|(_, f)| *f).collect();
        let cookies: Vec<u64> = side.iter().map(|(id, _)| u64::from(*id)).collect();
        let link = uprobe_multi::Program::load_as(
            objects::PROBES,
            program,
            &ebpf,
            uprobe_multi::MultiKind::Kprobe,
        )
        .and_then(|prog| {
            kprobe_multi::Link::attach(
                &prog,
                &kprobe_multi::Target {
                    functions: &names,
                    addresses: &[],
                    cookies: &cookies,
                    on_return: ret,
                },
            )
        })
        .map_err(|e| anyhow!("cannot attach to {target}: {mechanism}: {e}"))?;
        links.push(link);
        loaded.note(Attachment {
            target,
            mechanism,
            program: program.into(),
            declined: Vec::new(),
        });
    }
    loaded.push(ebpf, functions.iter().map(|(id, _)| *id).collect())?;
    if let Some(instance) = loaded.instances.last_mut() {
        instance.kprobe_multi_links = links;
    }
    Ok(())
}

/// tp_btf → raw_tp → classic tracepoint; only the classic one when record fields are read.
pub fn tracepoint_rungs(end: bool, needs_record: bool) -> Vec<Rung<'static>> {
    let (btf, raw, tp) = if end {
        ("probes_tp_btf_end", "probes_raw_tp_end", "probes_tp_end")
    } else {
        ("probes_tp_btf", "probes_raw_tp", "probes_tp")
    };
    let mut rungs = Vec::new();
    if !needs_record {
        rungs.push(Rung {
            mechanism: Mechanism::TpBtf,
            program: btf,
        });
        rungs.push(Rung {
            mechanism: Mechanism::RawTp,
            program: raw,
        });
    }
    rungs.push(Rung {
        mechanism: Mechanism::Tracepoint,
        program: tp,
    });
    rungs
}

/// A `--start`/`--end` tracepoint pair in one object, so both see the same `START` map.
pub fn attach_pair(
    start: &Probe,
    end: &Probe,
    config: ProbesConfig,
    needs_record: (bool, bool),
    force: Option<Mechanism>,
) -> Result<Loaded> {
    let mut loaded = Loaded {
        instances: Vec::new(),
        attachments: Vec::new(),
        mechanisms: Vec::new(),
    };
    let btf = KernelBtf::new();
    let config = ProbesConfig {
        probe_id: 0,
        use_cookie: 0,
        ..config
    };
    let mut ebpf = load(&config, 1)?;
    for (probe, is_end, record) in [(start, false, needs_record.0), (end, true, needs_record.1)] {
        let Point::Tracepoint { category, event } = &probe.point else {
            usage_bail!(
                "--start and --end take tracepoints (t:CATEGORY:EVENT), not {}",
                probe.spec()
            );
        };
        let a = attach::attach(
            &mut ebpf,
            &btf,
            Target::Tracepoint { category, event },
            &tracepoint_rungs(is_end, record),
            force,
        )?;
        loaded.note(a);
    }
    loaded.push(ebpf, vec![0])?;
    Ok(loaded)
}

/// funclatency between two USDT probes: one object, every `start` site running the entry
/// program and every `end` site the return one (a plain uprobe at the site: the programs
/// only differ in their role), all as probe id 0 so both ends share `START` keys. The
/// attach goes through tracer's own perf events (see `usdt::attach_with_semaphore`) so semaphores
/// are raised, and it needs no cookie (Linux 5.10 has none).
pub fn attach_usdt_pair(
    start: &[Probe],
    end: &[Probe],
    config: ProbesConfig,
    pid: Option<u32>,
) -> Result<Loaded> {
    let mut loaded = Loaded {
        instances: Vec::new(),
        attachments: Vec::new(),
        mechanisms: Vec::new(),
    };
    let config = ProbesConfig {
        probe_id: 0,
        use_cookie: 0,
        ..config
    };
    let mut ebpf = load(&config, 1)?;
    let mut semaphore_probes = Vec::new();
    for (program, sites) in [("probes_uprobe", start), ("probes_uretprobe", end)] {
        let prog: &mut UProbe = ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("program {program} missing (build bug)"))?
            .try_into()?;
        prog.load().map_err(|e| {
            anyhow!(
                "cannot load the {program} program: {}",
                attach::describe(Mechanism::Kprobe, &e)
            )
        })?;
        for probe in sites {
            let (Point::User { path, offset, .. }, Some(site)) = (&probe.point, &probe.usdt) else {
                usage_bail!("{} is not a USDT probe", probe.spec());
            };
            let attached = crate::usdt::attach_with_semaphore(
                prog.fd()?,
                path,
                *offset,
                site.semaphore_offset,
                pid,
                None,
            )
            .map_err(|e| anyhow!("cannot attach to {} in {}: {e}", probe.name, path.display()))?;
            semaphore_probes.push(attached);
            loaded.note(Attachment {
                target: format!("{} in {}", probe.name, path.display()),
                mechanism: Mechanism::Uprobe,
                program: program.into(),
                declined: Vec::new(),
            });
        }
    }
    loaded.push(ebpf, vec![0])?;
    if let Some(instance) = loaded.instances.last_mut() {
        instance.semaphore_probes = semaphore_probes;
    }
    Ok(loaded)
}

/// (probe id, symbol, file offset) of a user probe.
type UserPoint<'a> = (u32, &'a str, u64);

/// User probes climb two rungs per (binary, entry/return): one uprobe_multi link for all the
/// binary's offsets (Linux ≥ 6.6; detaching it costs one RCU grace period in total), else
/// aya's perf-event uprobes, one per offset. Each attach point carries its probe id as the BPF
/// cookie either way. `--attach uprobe` / `--attach uprobe-multi` pins one rung.
fn attach_uprobes(req: &Request<'_>, users: &[(u32, &Probe)], loaded: &mut Loaded) -> Result<()> {
    if !kernel_has_attach_cookies() {
        return attach_uprobes_without_cookies(req, users, loaded);
    }
    let config = ProbesConfig {
        use_cookie: 1,
        ..req.config
    };
    let mut ebpf = load(&config, usdt_slots(users))?;
    fill_usdt_args(&mut ebpf, &config, users)?;
    let scope = uprobe_scope(req.pid)?;
    let mut links = Vec::new();
    let mut multi_links = Vec::new();
    let mut semaphore_probes = Vec::new();
    for (program, ret) in [("probes_uprobe", false), ("probes_uretprobe", true)] {
        // Probes by binary, in the order given.
        let mut groups: Vec<(&Path, Vec<UserPoint<'_>>)> = Vec::new();
        for (id, probe) in users {
            if probe.kind.is_return() != ret && !req.entry_and_return {
                continue;
            }
            let Point::User {
                path,
                symbol,
                offset,
            } = &probe.point
            else {
                continue;
            };
            let point = (*id, symbol.as_str(), *offset);
            match groups.iter_mut().find(|(p, _)| p == path) {
                Some((_, points)) => points.push(point),
                None => groups.push((path, vec![point])),
            }
        }
        if groups.is_empty() {
            continue;
        }
        let (multi, single) = if ret {
            (Mechanism::UretprobeMulti, Mechanism::Uretprobe)
        } else {
            (Mechanism::UprobeMulti, Mechanism::Uprobe)
        };
        // Other forced mechanisms are for the kernel probes of the same request.
        let force = match req.force {
            Some(Mechanism::UprobeMulti | Mechanism::UretprobeMulti) => Some(multi),
            Some(Mechanism::Uprobe | Mechanism::Uretprobe) => Some(single),
            _ => None,
        };
        let mut multi_program: Option<Result<uprobe_multi::Program, String>> = None;
        let mut per_offset_loaded = false;
        let mut ids = Vec::new();
        for (path, mut points) in groups {
            // USDT probes with a semaphore need ref_ctr_offset: tracer's own perf events.
            let semaphore_of = |id: u32| {
                req.probes[id as usize]
                    .usdt
                    .as_ref()
                    .map_or(0, |site| site.semaphore_offset)
            };
            let guarded: Vec<UserPoint<'_>> = points
                .iter()
                .copied()
                .filter(|(id, _, _)| semaphore_of(*id) != 0)
                .collect();
            if !guarded.is_empty() {
                points.retain(|(id, _, _)| semaphore_of(*id) == 0);
                let prog = per_offset_program(&mut ebpf, program, &mut per_offset_loaded)?;
                for (id, symbol, offset) in &guarded {
                    let probe = crate::usdt::attach_with_semaphore(
                        prog.fd()?,
                        path,
                        *offset,
                        semaphore_of(*id),
                        req.pid,
                        Some(u64::from(*id)),
                    )
                    .map_err(|e| anyhow!("cannot attach to {symbol} in {}: {e}", path.display()))?;
                    semaphore_probes.push(probe);
                    loaded.note(Attachment {
                        target: format!("{symbol} in {} (with its semaphore)", path.display()),
                        mechanism: single,
                        program: program.into(),
                        declined: Vec::new(),
                    });
                }
                if points.is_empty() {
                    continue;
                }
            }
            let target = match points.as_slice() {
                [(_, symbol, _)] => format!("{symbol} in {}", path.display()),
                _ => format!("{} functions in {}", points.len(), path.display()),
            };
            let mut declined = Vec::new();
            if force != Some(single) {
                let prog = multi_program.get_or_insert_with(|| {
                    uprobe_multi::Program::load(objects::PROBES, program, &ebpf)
                        .map_err(|e| e.to_string())
                });
                let offsets: Vec<u64> = points.iter().map(|(_, _, offset)| *offset).collect();
                let cookies: Vec<u64> = points.iter().map(|(id, _, _)| u64::from(*id)).collect();
                let attached = prog.as_ref().map_err(Clone::clone).and_then(|prog| {
                    uprobe_multi::Link::attach(
                        prog,
                        &uprobe_multi::Target {
                            path,
                            offsets: &offsets,
                            cookies: &cookies,
                            on_return: ret,
                            pid: req.pid,
                        },
                    )
                    .map_err(|e| e.to_string())
                });
                match attached {
                    Ok(link) => {
                        multi_links.push(link);
                        loaded.note(Attachment {
                            target,
                            mechanism: multi,
                            program: program.into(),
                            declined,
                        });
                        continue;
                    }
                    Err(reason) if force == Some(multi) => {
                        bail!("cannot attach to {target}: {multi}: {reason}")
                    }
                    Err(reason) => declined.push(Declined {
                        mechanism: multi,
                        reason,
                    }),
                }
            }
            let prog = per_offset_program(&mut ebpf, program, &mut per_offset_loaded)?;
            for (id, symbol, offset) in points {
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(offset),
                    cookie: Some(u64::from(id)),
                };
                let link = prog.attach(point, path, scope).map_err(|e| {
                    anyhow!(
                        "cannot attach {} to {symbol} in {}: {}",
                        if ret { "a uretprobe" } else { "a uprobe" },
                        path.display(),
                        chain(&e)
                    )
                })?;
                ids.push(link);
            }
            loaded.note(Attachment {
                target,
                mechanism: single,
                program: program.into(),
                declined,
            });
        }
        if !ids.is_empty() {
            links.push((program, ids));
        }
        // The links hold the program; its fd is not needed any more.
        drop(multi_program);
    }
    loaded.push(ebpf, users.iter().map(|(id, _)| *id).collect())?;
    if let Some(instance) = loaded.instances.last_mut() {
        instance.uprobe_links = links;
        instance.multi_links = multi_links;
        instance.semaphore_probes = semaphore_probes;
    }
    Ok(())
}

/// Whether uprobe attach points can carry a BPF cookie: the `bpf_get_attach_cookie` helper
/// and perf-event BPF links (both Linux 5.15), which aya needs to attach a cookie. aya probes
/// both once per process with real loads.
pub fn kernel_has_attach_cookies() -> bool {
    let features = aya::features();
    features.bpf_cookie() && features.bpf_perf_link()
}

/// At most this many user functions on a kernel without BPF cookies: each needs an object of
/// its own (about 16 file descriptors and 100 KiB of maps), as kernel functions do.
pub const MAX_UPROBES_WITHOUT_COOKIES: usize = 256;

/// Why uprobe_multi is not tried where attach cookies are missing (for `-v`).
const NO_COOKIES: &str = "no BPF cookies in this kernel (bpf_get_attach_cookie and perf-event \
                          links need Linux 5.15; uprobe_multi 6.6): one object per probe";

/// User probes on a kernel without BPF cookies (Linux < 5.15): one object per probe with its
/// id in `CONFIG.probe_id`, like kernel functions, so the programs never call
/// `bpf_get_attach_cookie` (the verifier prunes the cookie branch on the frozen config). A
/// funclatency probe's entry and return live in the same object and share its `START` map, so
/// pairing stays exact.
fn attach_uprobes_without_cookies(
    req: &Request<'_>,
    users: &[(u32, &Probe)],
    loaded: &mut Loaded,
) -> Result<()> {
    if matches!(
        req.force,
        Some(Mechanism::UprobeMulti | Mechanism::UretprobeMulti)
    ) {
        bail!("--attach uprobe-multi: {NO_COOKIES}");
    }
    if users.len() > MAX_UPROBES_WITHOUT_COOKIES {
        bail!(
            "{} user functions to probe; without BPF cookies (Linux 5.15+) each needs its own \
             program and at most {MAX_UPROBES_WITHOUT_COOKIES} can be attached at once: narrow \
             the pattern",
            users.len()
        );
    }
    let scope = uprobe_scope(req.pid)?;
    raise_open_files_limit();
    for (id, probe) in users {
        let Point::User {
            path,
            symbol,
            offset,
        } = &probe.point
        else {
            continue;
        };
        let config = ProbesConfig {
            probe_id: *id,
            use_cookie: 0,
            ..req.config
        };
        let mut ebpf = load(&config, id + 1)?;
        fill_usdt_args(&mut ebpf, &config, &[(*id, *probe)])?;
        let semaphore = probe.usdt.as_ref().map_or(0, |site| site.semaphore_offset);
        let mut semaphore_probes = Vec::new();
        let mut links = Vec::new();
        for (program, ret) in [("probes_uprobe", false), ("probes_uretprobe", true)] {
            if probe.kind.is_return() != ret && !req.entry_and_return {
                continue;
            }
            let (multi, single) = if ret {
                (Mechanism::UretprobeMulti, Mechanism::Uretprobe)
            } else {
                (Mechanism::UprobeMulti, Mechanism::Uprobe)
            };
            let prog: &mut UProbe = ebpf
                .program_mut(program)
                .ok_or_else(|| anyhow!("program {program} missing (build bug)"))?
                .try_into()?;
            prog.load().map_err(|e| {
                anyhow!(
                    "cannot load the {program} program: {}",
                    attach::describe(Mechanism::Kprobe, &e)
                )
            })?;
            if semaphore != 0 {
                let attached = crate::usdt::attach_with_semaphore(
                    prog.fd()?,
                    path,
                    *offset,
                    semaphore,
                    req.pid,
                    None,
                )
                .map_err(|e| anyhow!("cannot attach to {symbol} in {}: {e}", path.display()))?;
                semaphore_probes.push(attached);
                loaded.note(Attachment {
                    target: format!("{symbol} in {} (with its semaphore)", path.display()),
                    mechanism: single,
                    program: program.into(),
                    declined: vec![Declined {
                        mechanism: multi,
                        reason: NO_COOKIES.into(),
                    }],
                });
                continue;
            }
            let link = prog
                .attach(UProbeAttachLocation::AbsoluteOffset(*offset), path, scope)
                .map_err(|e| {
                    anyhow!(
                        "cannot attach {} to {symbol} in {}: {}",
                        if ret { "a uretprobe" } else { "a uprobe" },
                        path.display(),
                        chain(&e)
                    )
                })?;
            links.push((program, vec![link]));
            loaded.note(Attachment {
                target: format!("{symbol} in {}", path.display()),
                mechanism: single,
                program: program.into(),
                declined: vec![Declined {
                    mechanism: multi,
                    reason: NO_COOKIES.into(),
                }],
            });
        }
        loaded.push(ebpf, vec![*id])?;
        if let Some(instance) = loaded.instances.last_mut() {
            instance.uprobe_links = links;
            instance.semaphore_probes = semaphore_probes;
        }
    }
    Ok(())
}

/// Lifts the soft limit on open files to the hard one: an object per probe holds a dozen map
/// fds, and 1024 (the usual soft limit) runs out at about 60 probes.
/// `-p PID` as the uprobe attach scope (one process, or all).
fn uprobe_scope(pid: Option<u32>) -> Result<UProbeScope> {
    Ok(match pid {
        Some(pid) => UProbeScope::OneProcess(
            NonZeroU32::new(pid).ok_or_else(|| usage_err!("PID 0 is not a process"))?,
        ),
        None => UProbeScope::AllProcesses,
    })
}

fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a stack struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// An error and its sources on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.replace('\n', " ")
}

/// Merged `ValueHist`: a log2 histogram with count, sum, min and max.
#[derive(Clone, Debug, Default)]
pub struct Hist {
    pub log2: Log2,
    pub count: u64,
    pub sum: u64,
    pub min: u64,
    pub max: u64,
}

impl Hist {
    pub fn merge(&mut self, other: &Hist) {
        if self.log2.slots.is_empty() {
            self.log2 = Log2::new();
            self.min = u64::MAX;
        }
        self.log2.merge(&other.log2);
        self.count += other.count;
        self.sum = self.sum.wrapping_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    fn from_per_cpu(values: &[ValueHist]) -> Self {
        let mut h = Hist {
            log2: Log2::new(),
            min: u64::MAX,
            ..Default::default()
        };
        for v in values.iter() {
            for (acc, x) in h.log2.slots.iter_mut().zip(v.slots.iter()) {
                *acc += x;
            }
            if v.count == 0 {
                continue;
            }
            h.count += v.count;
            h.sum = h.sum.wrapping_add(v.sum);
            h.min = h.min.min(v.min);
            h.max = h.max.max(v.max);
        }
        h
    }

    /// `self - earlier` for the cumulative view; min and max stay running values, so
    /// per-interval output drains the map instead (`Loaded::hists(true)`).
    pub fn since(&self, earlier: Option<&Hist>) -> Hist {
        match earlier {
            None => self.clone(),
            Some(e) => Hist {
                log2: self.log2.since(&e.log2),
                count: self.count - e.count.min(self.count),
                sum: self.sum.wrapping_sub(e.sum),
                min: self.min,
                max: self.max,
            },
        }
    }

    pub fn avg(&self) -> Option<u64> {
        (self.count > 0).then(|| self.sum / self.count)
    }
}

impl Loaded {
    fn note(&mut self, a: Attachment) {
        let name = a.mechanism.to_string();
        if !self.mechanisms.contains(&name) {
            self.mechanisms.push(name);
        }
        self.attachments.push(a);
    }

    fn push(&mut self, mut ebpf: Ebpf, ids: Vec<u32>) -> Result<()> {
        let stats = StatsReader::take(&mut ebpf)?;
        self.instances.push(Instance {
            ebpf,
            ids,
            stats,
            uprobe_links: Vec::new(),
            multi_links: Vec::new(),
            kprobe_multi_links: Vec::new(),
            semaphore_probes: Vec::new(),
        });
        Ok(())
    }

    /// Links to the kernel: uprobe attach points and kernel-side attachments.
    pub fn links(&self) -> usize {
        let uprobes: usize = self
            .instances
            .iter()
            .flat_map(|i| &i.uprobe_links)
            .map(|(_, ids)| ids.len())
            .sum();
        uprobes + self.attachments.len()
    }

    /// "uprobe" or "tp_btf, raw_tp": how things were attached.
    pub fn mechanism(&self) -> String {
        self.mechanisms.join(", ")
    }

    /// For `-v`: one line per kernel-side attachment.
    pub fn print_summary(&self, tool: &str) {
        for a in &self.attachments {
            errln!("{tool}: {}", a.summary());
        }
        if self.attachments.is_empty() {
            errln!("{tool}: attached via {}", self.mechanism());
        }
    }

    fn map<'a>(instance: &'a Instance, name: &str) -> Result<&'a Map> {
        instance
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("{name} map missing (build bug)"))
    }

    /// Calls per probe id, summed over CPUs.
    pub fn counts(&self, n: usize) -> Result<Vec<u64>> {
        let mut counts = vec![0; n];
        for instance in &self.instances {
            let map: PerCpuArray<&MapData, u64> =
                PerCpuArray::try_from(Self::map(instance, "COUNTS")?)?;
            for &id in &instance.ids {
                if let (Ok(values), Some(slot)) = (map.get(&id, 0), counts.get_mut(id as usize)) {
                    *slot += values.iter().sum::<u64>();
                }
            }
        }
        Ok(counts)
    }

    fn sum_hash<K: Pod + Eq + Hash, V: Pod, T: Default>(
        &self,
        name: &str,
        fold: impl Fn(&mut T, &PerCpuValues<V>),
    ) -> Result<HashMap<K, T>> {
        let mut all: HashMap<K, T> = HashMap::new();
        for instance in &self.instances {
            let map: PerCpuHashMap<&MapData, K, V> =
                PerCpuHashMap::try_from(Self::map(instance, name)?)?;
            for (key, values) in map.iter().flatten() {
                fold(all.entry(key).or_default(), &values);
            }
        }
        Ok(all)
    }

    /// Per-CPU u64 counters of hash map `name`, summed over CPUs (and loaded objects). With
    /// `drain` the keys are removed as they are read (see `loader::drain_per_cpu`): what
    /// comes back is what was counted since the last drain, and the map holds only the keys
    /// of one interval.
    fn counters<K: Pod + Eq + Hash>(&self, name: &str, drain: bool) -> Result<HashMap<K, u64>> {
        if !drain {
            return self.sum_hash(name, |acc: &mut u64, v: &PerCpuValues<u64>| {
                *acc += v.iter().sum::<u64>()
            });
        }
        let mut all: HashMap<K, u64> = HashMap::new();
        for instance in &self.instances {
            let Map::PerCpuHashMap(data) = Self::map(instance, name)? else {
                bail!("{name} is not a per-CPU hash map (build bug)");
            };
            for (key, values) in crate::loader::drain_per_cpu::<K, u64>(data)? {
                *all.entry(key).or_default() += values.iter().sum::<u64>();
            }
        }
        Ok(all)
    }

    /// Calls per (probe, process): cumulative, or since the last drain (interval mode).
    pub fn pid_counts(&self, drain: bool) -> Result<HashMap<PidCountKey, u64>> {
        self.counters("PID_COUNTS", drain)
    }

    /// Hits per (probe, value): cumulative, or since the last drain (interval mode).
    pub fn value_counts(&self, drain: bool) -> Result<HashMap<ValueKey, u64>> {
        self.counters("VALUE_COUNTS", drain)
    }

    /// Histograms per (probe, process): cumulative, or since the last drain (interval mode).
    /// Interval output must drain: min and max cannot be taken apart like counts can.
    pub fn hists(&self, drain: bool) -> Result<HashMap<HistKey, Hist>> {
        if !drain {
            return self.sum_hash("HISTS", |acc: &mut Hist, v: &PerCpuValues<ValueHist>| {
                acc.merge(&Hist::from_per_cpu(v))
            });
        }
        let mut all: HashMap<HistKey, Hist> = HashMap::new();
        for instance in &self.instances {
            let Map::PerCpuHashMap(data) = Self::map(instance, "HISTS")? else {
                bail!("HISTS is not a per-CPU hash map (build bug)");
            };
            for (key, values) in crate::loader::drain_per_cpu::<HistKey, ValueHist>(data)? {
                all.entry(key)
                    .or_default()
                    .merge(&Hist::from_per_cpu(&values));
            }
        }
        Ok(all)
    }

    /// The probe tools' end record (output.rs `end_record`): every probe attached and how,
    /// the counters, their `stats`, and `extra`'s fields.
    pub fn end_record(&self, tool: &str, extra: serde_json::Value) -> serde_json::Value {
        let stats = self.stats();
        let fields = crate::output::with_fields(serde_json::json!({ "stats": stats }), extra);
        crate::output::end_record(
            tool,
            self.attachments.iter().map(Attachment::json).collect(),
            stats.common.map_full,
            stats.common.read_errors,
            fields,
        )
    }

    pub fn stats(&self) -> ProbeStats {
        let mut total = ProbeStats::default();
        for instance in &self.instances {
            let s = instance.stats.read();
            total.common.events += s.events;
            total.common.lost += s.lost;
            total.common.map_full += s.map_full;
            total.common.read_errors += s.read_errors;
            if let Some(map) = instance.ebpf.map("PROBE_STATS")
                && let Ok(map) = PerCpuArray::<&MapData, u64>::try_from(map)
            {
                let slot = |i: u32| map.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
                total.throttled += slot(PSTAT_THROTTLED);
                total.unpaired += slot(PSTAT_UNPAIRED);
            }
        }
        total
    }

    /// Stacks that could not be stored (stackcount), summed over loaded objects.
    pub fn stack_loss(&self) -> crate::stacks::StackLoss {
        let mut total = crate::stacks::StackLoss {
            lost: 0,
            collisions: 0,
        };
        for instance in &self.instances {
            let loss = crate::stacks::StackLoss::read(&instance.stats);
            total.lost += loss.lost;
            total.collisions += loss.collisions;
        }
        total
    }

    /// Reports counters that mean something was not counted, once per change.
    pub fn report_problems(&self, tool: &str, last: &mut ProbeStats) {
        let now = self.stats();
        if now.common.lost > last.common.lost {
            errln!(
                "{tool}: {} events lost so far (ring buffer full)",
                now.common.lost
            );
        }
        if now.common.map_full > last.common.map_full {
            errln!(
                "{tool}: {} updates not counted so far: a map was full",
                now.common.map_full
            );
        }
        if now.common.read_errors > last.common.read_errors {
            errln!(
                "{tool}: {} values could not be read so far",
                now.common.read_errors
            );
        }
        if now.throttled > last.throttled {
            errln!(
                "{tool}: {} events suppressed so far by the rate limit",
                now.throttled
            );
        }
        *last = now;
    }
}

impl Drop for Loaded {
    /// Detaching a perf-event uprobe, kprobe or tracepoint waits for RCU grace periods in the
    /// kernel (about 90 ms each on a quiet 2-vCPU VM: 163 nginx uprobes took 15 s one by one);
    /// a uprobe_multi link waits once for all its offsets. Links are closed from several
    /// threads so that waits can overlap where the kernel allows it (on 6.18 most of the
    /// perf-event wait is serialized under event_mutex, so the gain there is small).
    fn drop(&mut self) {
        let mut links: Vec<Box<dyn Send>> = Vec::new();
        for instance in &mut self.instances {
            for link in std::mem::take(&mut instance.multi_links) {
                links.push(Box::new(link));
            }
            for link in std::mem::take(&mut instance.kprobe_multi_links) {
                links.push(Box::new(link));
            }
            for probe in std::mem::take(&mut instance.semaphore_probes) {
                links.push(Box::new(probe));
            }
            for (program, ids) in std::mem::take(&mut instance.uprobe_links) {
                let Some(prog) = instance.ebpf.program_mut(program) else {
                    continue;
                };
                let Ok(prog) = <&mut UProbe>::try_from(prog) else {
                    continue;
                };
                for link in ids.into_iter().filter_map(|id| prog.take_link(id).ok()) {
                    links.push(Box::new(link));
                }
            }
        }
        parallel_drop(links);
        parallel_drop(std::mem::take(&mut self.instances));
    }
}

fn parallel_drop<T: Send>(mut items: Vec<T>) {
    const THREADS: usize = 128;
    if items.len() <= 1 {
        return;
    }
    let chunk = items.len().div_ceil(THREADS);
    std::thread::scope(|scope| {
        while !items.is_empty() {
            let part: Vec<T> = items.drain(..chunk.min(items.len())).collect();
            // A thread that cannot start just drops its part here, sequentially.
            if let Err(e) = std::thread::Builder::new().spawn_scoped(scope, move || drop(part)) {
                drop(e);
            }
        }
    });
}

/// Splits BCC-style positionals `PROBE... [INTERVAL [COUNT]]`: probes always contain ':',
/// numbers never do.
pub fn split_positionals(items: &[String]) -> Result<(Vec<String>, crate::session::IntervalArgs)> {
    let probes: Vec<String> = items
        .iter()
        .take_while(|s| s.contains(':'))
        .cloned()
        .collect();
    let rest = &items[probes.len()..];
    if probes.is_empty() {
        match items.first() {
            Some(first) => usage_bail!(
                "'{first}' is not a probe: use u:BINARY:SYMBOL, k:FUNCTION or t:CATEGORY:EVENT"
            ),
            None => usage_bail!("no probe given (e.g. u:/usr/sbin/nginx:ngx_http_process_request)"),
        }
    }
    if rest.len() > 2 {
        usage_bail!(
            "too many arguments after the probes: expected [INTERVAL [COUNT]], got '{}'",
            rest.join(" ")
        );
    }
    if let Some(bad) = rest.iter().find(|s| s.contains(':')) {
        usage_bail!("probe '{bad}' must come before INTERVAL and COUNT");
    }
    let interval = rest
        .first()
        .map(|s| crate::session::parse_seconds(s).map_err(crate::usage::usage))
        .transpose()?;
    let count = rest
        .get(1)
        .map(|s| match s.parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(usage_err!("'{s}' is not a positive count")),
        })
        .transpose()?;
    Ok((probes, crate::session::IntervalArgs { interval, count }))
}

/// Runs `report` every interval (or once at the end without one) until stopped, the count
/// runs out, or the output closes. `report(last, interval_ns)` (whether it is the last
/// report, and the nanoseconds since the previous one or the start) returns false to stop.
pub async fn every_interval(
    interval: &crate::session::IntervalArgs,
    duration: Option<std::time::Duration>,
    mut report: impl FnMut(bool, u64) -> Result<bool>,
) -> Result<()> {
    let stop = crate::session::stop_requested(duration);
    tokio::pin!(stop);
    let mut ticker = interval.interval.map(|d| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut printed = 0u64;
    let mut since = std::time::Instant::now();
    loop {
        let stopped = tokio::select! {
            reason = &mut stop => { reason?; true }
            _ = async { match ticker.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending::<()>().await } } => false,
        };
        printed += 1;
        let last = stopped || interval.count.is_some_and(|c| printed >= c);
        let interval_ns = since.elapsed().as_nanos() as u64;
        since = std::time::Instant::now();
        if !report(last, interval_ns)? || last {
            return Ok(());
        }
    }
}

/// A value named on the command line (argdist's EXPR, trace's arguments, --filter's left side).
#[derive(Clone, Debug)]
pub struct Expr {
    pub text: String,
    pub spec: ValueSpec,
    /// Print as a signed number.
    pub signed: bool,
    /// Reads a classic tracepoint record field.
    pub needs_record: bool,
}

const EXPRS: &str = "arg0..arg5, a declared parameter name, $retval, $pid, $tid, $cpu, or a \
                     tracepoint field ('tplist -v' lists them)";

/// A parameter declared in a probe's signature (`k:do_sys_openat2(int dfd, char *filename)`):
/// its name stands for argument `index`, read as `size` bytes (0: the whole register) with the
/// declared sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub index: u8,
    pub size: u8,
    pub signed: bool,
}

/// Splits `PROBE(TYPE NAME, ...)` into the probe and its declared parameters (none without a
/// signature). The C types say how wide and signed each argument is (`int fd` is 4 bytes,
/// signed; a pointer or an unknown type is the whole register).
pub fn split_signature(text: &str) -> Result<(String, Vec<Param>)> {
    let text = text.trim();
    let Some(open) = text.find('(') else {
        return Ok((text.to_string(), Vec::new()));
    };
    let (probe, rest) = text.split_at(open);
    let Some(inner) = rest[1..].strip_suffix(')') else {
        usage_bail!(
            "probe '{text}': a signature is (TYPE NAME, ...) at the end, e.g. \
             k:do_sys_openat2(int dfd, const char *filename)"
        );
    };
    if probe.starts_with("t:") || probe.starts_with("tracepoint:") {
        if inner.trim().is_empty() {
            return Ok((probe.to_string(), Vec::new()));
        }
        usage_bail!("tracepoint '{probe}' takes no signature: its fields have names (tplist -v)");
    }
    let mut params = Vec::new();
    for decl in inner.split(',').map(str::trim) {
        if decl.is_empty() || decl == "void" {
            continue;
        }
        let name_at = decl
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        let (ty, name) = decl.split_at(name_at);
        let ty = ty.trim();
        if name.is_empty() || ty.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            usage_bail!(
                "parameter '{decl}' in '{text}' is not TYPE NAME (e.g. int fd, const char *path)"
            );
        }
        if params.len() >= 6 {
            usage_bail!("'{text}' declares more than six parameters: only arg0..arg5 are read");
        }
        let (size, signed) = match c_type(decl, name) {
            Some((8, signed)) => (0, signed),
            Some((width, signed)) => (width as u8, signed),
            None if ty.contains('*') => (0, false),
            None if ty.starts_with("struct ") || ty.starts_with("union ") => usage_bail!(
                "parameter '{decl}': a struct passed by value is not one register; declare a pointer or an integer"
            ),
            None => (0, false),
        };
        params.push(Param {
            name: name.to_string(),
            index: params.len() as u8,
            size,
            signed,
        });
    }
    Ok((probe.to_string(), params))
}

/// Parses `arg0..arg5`, `$retval`, `$pid`, `$tid`, `$cpu`, a parameter declared in the probe's
/// signature or a tracepoint field name for the given probes. With `string`, the value is a
/// string to read (a pointer, or a char array or `__data_loc` field).
pub fn parse_expr(text: &str, probes: &[Probe], params: &[Param], string: bool) -> Result<Expr> {
    let text = text.trim();
    let all_return = probes.iter().all(|p| p.kind.is_return());
    let any_return = probes.iter().any(|p| p.kind.is_return());
    let all_tracepoints = probes.iter().all(|p| p.kind == Kind::Tracepoint);
    let str_kind = if string { STR_PTR } else { STR_NONE };
    let simple = |kind: u8, signed: bool| Expr {
        text: text.to_string(),
        spec: ValueSpec {
            kind,
            string: str_kind,
            ..ValueSpec::NONE
        },
        signed,
        needs_record: false,
    };
    if let Some(param) = params.iter().find(|p| p.name == text) {
        if any_return {
            usage_bail!(
                "parameter '{text}' is not available at a return probe (ur:/kr:): arguments are read at entry (u:/k:)"
            );
        }
        let mut e = simple(VAL_ARG, param.signed);
        e.spec.index = param.index;
        if !string {
            e.spec.size = param.size;
            e.spec.signed = param.signed.into();
        }
        return Ok(e);
    }
    let usdt: Vec<&crate::usdt::Site> = probes.iter().filter_map(|p| p.usdt.as_ref()).collect();
    if !usdt.is_empty()
        && let Some(n) = text.strip_prefix("arg")
    {
        if usdt.len() != probes.len() {
            usage_bail!(
                "{text}: USDT probes and other probes read arguments differently: trace them \
                 in separate runs"
            );
        }
        return crate::usdt::arg_expr(text, n, probes, string);
    }
    if let Some(n) = text.strip_prefix("arg") {
        let index: u8 = n
            .parse()
            .ok()
            .filter(|i| *i <= 5)
            .ok_or_else(|| usage_err!("'{text}' is not an argument: use arg0..arg5"))?;
        if any_return {
            usage_bail!(
                "{text} is not available at a return probe (ur:/kr:): arguments are read at entry (u:/k:)"
            );
        }
        let mut e = simple(VAL_ARG, false);
        e.spec.index = index;
        return Ok(e);
    }
    match text {
        "$retval" | "retval" => {
            if !all_return {
                usage_bail!("$retval needs a return probe (ur:BINARY:SYMBOL or kr:FUNCTION)");
            }
            return Ok(simple(VAL_RET, true));
        }
        "$pid" => return Ok(simple(VAL_PID, false)),
        "$tid" => return Ok(simple(VAL_TID, false)),
        "$cpu" => return Ok(simple(VAL_CPU, false)),
        _ => {}
    }
    if !all_tracepoints {
        usage_bail!("'{text}' is not a value here: use {EXPRS}");
    }
    let mut found: Option<crate::tracefs::Field> = None;
    for probe in probes {
        let Point::Tracepoint { category, event } = &probe.point else {
            continue;
        };
        let field = crate::tracefs::fields(category, event)?.into_iter().find(|f| f.name == text).ok_or_else(|| {
            usage_err!("tracepoint {category}:{event} has no field '{text}' ('tplist -v {category}:{event}' lists them)")
        })?;
        if let Some(seen) = &found
            && (seen.offset != field.offset || seen.size != field.size)
        {
            usage_bail!(
                "field '{text}' sits at different offsets in the matched tracepoints: name one tracepoint"
            );
        }
        found = Some(field);
    }
    let field = found.ok_or_else(|| usage_err!("no tracepoint to read '{text}' from"))?;
    let decl = field.declaration.as_str();
    let mut signed = field.signed;
    let (size, string) = if !string {
        if field.size > 8 || decl.contains('[') {
            usage_bail!("field '{text}' ({decl}) is not a number");
        }
        // Syscall tracepoints store every argument in 8 bytes and say "signed:0" even for
        // `int dfd`: the C type decides how much of the slot is the value, and its sign.
        match c_type(decl, text) {
            Some((width, c_signed)) if width <= field.size => {
                signed = c_signed;
                (width as u8, STR_NONE)
            }
            _ => (field.size as u8, STR_NONE),
        }
    } else if decl.contains("__data_loc") {
        (4, STR_DATA_LOC)
    } else if decl.contains('[') {
        (field.size.min(255) as u8, STR_INLINE)
    } else if decl.contains('*') {
        (8, STR_PTR)
    } else {
        usage_bail!("field '{text}' ({decl}) is not a string: use %d, %u or %x");
    };
    Ok(Expr {
        text: text.to_string(),
        spec: ValueSpec {
            kind: VAL_FIELD,
            index: 0,
            size,
            signed: signed.into(),
            offset: u16::try_from(field.offset)
                .map_err(|_| anyhow!("field '{text}' is beyond 64 KiB"))?,
            string,
            _reserved: 0,
        },
        signed,
        needs_record: true,
    })
}

/// Width in bytes and signedness of a field's C type, from its declaration without the name
/// (`int dfd` -> (4, true)); None for types not known here (the format's size is used).
fn c_type(declaration: &str, name: &str) -> Option<(u32, bool)> {
    let ty = declaration.trim().strip_suffix(name)?.trim();
    let ty = ty.strip_prefix("const ").unwrap_or(ty).trim();
    if ty.contains('*') {
        return Some((8, false));
    }
    Some(match ty {
        "char" | "signed char" | "s8" | "__s8" => (1, true),
        "unsigned char" | "u8" | "__u8" | "bool" => (1, false),
        "short" | "s16" | "__s16" => (2, true),
        "unsigned short" | "u16" | "__u16" | "umode_t" => (2, false),
        "int" | "s32" | "__s32" | "pid_t" | "uid_t" | "gid_t" => (4, true),
        "unsigned int" | "unsigned" | "u32" | "__u32" | "dev_t" | "gfp_t" => (4, false),
        "long" | "long long" | "s64" | "__s64" | "ssize_t" | "loff_t" | "off_t" => (8, true),
        "unsigned long" | "unsigned long long" | "u64" | "__u64" | "size_t" => (8, false),
        _ => return None,
    })
}

/// `EXPR OP NUMBER` (e.g. `arg2 > 100`, `prev_state == 1`) or `EXPR == "TEXT"` / `!=` on a
/// string (a `char *` argument, a USDT argument, a tracepoint's string field; `"prefix*"`
/// matches the start), evaluated in the kernel.
pub fn parse_filter(text: &str, probes: &[Probe], params: &[Param]) -> Result<(Filter, bool)> {
    let text = text.trim().trim_start_matches('(').trim_end_matches(')');
    let ops = [
        ("==", OP_EQ),
        ("!=", OP_NE),
        ("<=", OP_LE),
        (">=", OP_GE),
        ("<", OP_LT),
        (">", OP_GT),
    ];
    let (lhs, op, rhs) = ops
        .iter()
        .find_map(|(sym, op)| text.split_once(sym).map(|(l, r)| (l.trim(), *op, r.trim())))
        .ok_or_else(|| {
            usage_err!(
                "filter '{text}' is not EXPR OP NUMBER (OP: == != < <= > >=) or EXPR == \"TEXT\", \
                 e.g. 'arg2 > 100', 'arg1 == \"main\"'"
            )
        })?;
    if let Some(quoted) = rhs.strip_prefix('"') {
        return string_filter(text, lhs, op, quoted, probes, params);
    }
    let expr = parse_expr(lhs, probes, params, false)?;
    let constant = parse_constant(rhs)
        .ok_or_else(|| usage_err!("'{rhs}' in filter '{text}' is not a number"))?;
    let mut value = expr.spec;
    // Comparisons against negative constants are signed.
    if constant < 0 || expr.signed {
        value.signed = 1;
    }
    Ok((
        Filter {
            value,
            op,
            constant: constant as u64,
            ..Filter::NONE
        },
        expr.needs_record,
    ))
}

/// `EXPR == "TEXT"` (`!=`; a trailing `*` compares only the start): the string is read from
/// the probed task into `FILTER_STR_LEN` bytes and compared in the kernel, so hits that do not
/// match cost no event and no map update.
fn string_filter(
    text: &str,
    lhs: &str,
    op: u8,
    quoted: &str,
    probes: &[Probe],
    params: &[Param],
) -> Result<(Filter, bool)> {
    let pattern = quoted
        .strip_suffix('"')
        .ok_or_else(|| usage_err!("filter '{text}': the string has no closing quote"))?;
    let (pattern, prefix) = match pattern.strip_suffix('*') {
        Some(start) => (start, true),
        None => (pattern, false),
    };
    if pattern.contains(['"', '*', '?', '[', '\\']) {
        usage_bail!(
            "filter '{text}': a string is compared exactly, or by its start with one trailing * \
             (no other wildcards, quotes or escapes)"
        );
    }
    let max = FILTER_STR_LEN - 2;
    if pattern.len() > max {
        usage_bail!(
            "filter '{text}': the string is {} bytes; the kernel compares at most {max}",
            pattern.len()
        );
    }
    let op = match (op, prefix) {
        (OP_EQ, false) => OP_STR_EQ,
        (OP_NE, false) => OP_STR_NE,
        (OP_EQ, true) => OP_STR_PREFIX,
        (OP_NE, true) => OP_STR_NOT_PREFIX,
        _ => usage_bail!("filter '{text}': strings compare with == or != only"),
    };
    let expr = parse_expr(lhs, probes, params, true)?;
    let mut filter = Filter {
        value: expr.spec,
        op,
        constant: pattern.len() as u64,
        ..Filter::NONE
    };
    filter.text[..pattern.len()].copy_from_slice(pattern.as_bytes());
    Ok((filter, expr.needs_record))
}

fn parse_constant(text: &str) -> Option<i64> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let value = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok()? as i64,
        None => digits.parse::<u64>().ok()? as i64,
    };
    Some(if neg { value.wrapping_neg() } else { value })
}

/// The uprobe program attached once per offset (the perf-event and semaphore paths), loaded
/// the first time a group needs it.
fn per_offset_program<'a>(
    ebpf: &'a mut Ebpf,
    program: &str,
    loaded: &mut bool,
) -> Result<&'a mut UProbe> {
    let prog: &mut UProbe = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("program {program} missing (build bug)"))?
        .try_into()?;
    if !*loaded {
        // Uprobes are kprobe-type programs: describe() condenses a verifier log.
        prog.load().map_err(|e| {
            anyhow!(
                "cannot load the {program} program: {}",
                attach::describe(Mechanism::Kprobe, &e)
            )
        })?;
        *loaded = true;
    }
    Ok(prog)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(name: &str, index: u8, size: u8, signed: bool) -> Param {
        Param {
            name: name.into(),
            index,
            size,
            signed,
        }
    }

    #[test]
    fn signatures_name_arguments_with_their_width() {
        let (probe, params) =
            split_signature("k:do_sys_openat2(int dfd, const char *filename, void *how)").unwrap();
        assert_eq!(probe, "k:do_sys_openat2");
        assert_eq!(
            params,
            vec![
                param("dfd", 0, 4, true),
                param("filename", 1, 0, false),
                param("how", 2, 0, false)
            ]
        );
        let (_, params) = split_signature("u:c:write(unsigned int fd, size_t count)").unwrap();
        assert_eq!(
            params,
            vec![param("fd", 0, 4, false), param("count", 1, 0, false)]
        );
        assert_eq!(
            split_signature("u:c:fork()").unwrap(),
            ("u:c:fork".into(), vec![])
        );
        assert_eq!(
            split_signature("t:sched:sched_switch()").unwrap(),
            ("t:sched:sched_switch".into(), vec![])
        );
        for bad in [
            "k:f(int)",
            "k:f(int fd",
            "t:sched:sched_switch(int x)",
            "k:f(struct timespec ts)",
            "k:f(int a, int b, int c, int d, int e, int f, int g)",
        ] {
            let err = split_signature(bad).unwrap_err().to_string();
            assert_eq!(err.lines().count(), 1, "{bad}: {err}");
        }
    }
}

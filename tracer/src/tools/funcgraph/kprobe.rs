//! funcgraph's BPF rung: the root's callees, found in the kernel's text, on one kprobe_multi
//! link per side (entry, return), each function's id in the cookie; calls arrive through the
//! `CALLS` ring buffer, the profiler's sums through `FUNC_STATS`.

use std::collections::HashSet;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::RawTracePoint,
};
use tracer_common::{
    funcgraph::{
        CallRecord, FuncStats, FuncgraphConfig, STAT_ORPHAN_RETURNS, STAT_UNCLOSED_FRAMES,
    },
    task::TaskOffsets,
};

use super::{FuncgraphArgs, TOOL};
use crate::{
    btf::KernelBtf,
    call_tree::{Names, Sums},
    filters,
    kernel_calls::{Function, KernelText},
    kprobe_multi,
    loader::{self, StatsReader, objects},
    uprobe_multi::{self, MultiKind},
};

/// The functions to attach: the root's copies (static functions may share its name) and
/// the callees reachable through direct calls, `--max-depth` − 1 levels down.
pub struct Graph {
    pub functions: Vec<Function>,
    /// `--max-functions` cut the deepest level.
    pub cut: bool,
}

pub fn discover(
    args: &FuncgraphArgs,
    text: &KernelText,
    roots: &[u64],
    traceable: &HashSet<String>,
) -> Result<Graph> {
    let mut functions: Vec<Function> = Vec::new();
    let mut cut = false;
    let mut seen = HashSet::new();
    for &root in roots {
        let (found, was_cut) = text.reachable(
            root,
            args.max_depth - 1,
            args.max_functions as usize,
            &|n| traceable.contains(n),
        )?;
        cut |= was_cut;
        for f in found {
            if seen.insert(f.address) {
                functions.push(f);
            }
        }
    }
    // The root's copies first: they take the root's id, 0.
    functions.sort_by_key(|f| f.level != 0);
    functions.truncate(args.max_functions as usize);
    Ok(Graph { functions, cut })
}

/// The loaded object, its two links and what is read from it.
pub struct Session {
    // Links before the object: dropped first, they detach before the maps go.
    links: Vec<kprobe_multi::Link>,
    programs: Vec<uprobe_multi::Program>,
    calls: Option<RingBuf<MapData>>,
    sums: Option<PerCpuArray<MapData, FuncStats>>,
    stats: StatsReader,
    _ebpf: Ebpf,
}

impl Session {
    pub fn start(args: &FuncgraphArgs, graph: &Graph, names: &mut Names) -> Result<Self> {
        let btf = KernelBtf::new();
        args.cgroup.install(&btf)?;
        let config = FuncgraphConfig {
            follow: args.pid.is_some().into(),
            emit_calls: (!args.stats).into(),
            sum_stats: args.stats.into(),
            _reserved: 0,
            max_depth: args.max_depth - 1,
            task_stack: if args.irqs {
                0
            } else {
                btf.member_offset("task_struct", "stack")?
            },
            _pad: 0,
            comm: filters::comm_filter(args.comm.as_deref())?,
        };
        let offsets: TaskOffsets = if args.pid.is_some() {
            btf.task_offsets()?
        } else {
            TaskOffsets::default()
        };
        let mut ebpf = loader::load(objects::FUNCGRAPH, |l| {
            l.override_global("CONFIG", &config, true);
            l.override_global("TASK_OFFSETS", &offsets, false);
            if args.stats {
                l.map_max_entries("CALLS", 4096);
            }
        })?;
        if let Some(pid) = args.pid {
            // Borrowed, not taken: the multi-link programs are loaded against the object's maps.
            let mut traced: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(
                ebpf.map_mut("TRACED")
                    .ok_or_else(|| anyhow!("TRACED map missing (build bug)"))?,
            )?;
            traced.insert(pid, 1, 0)?;
            let fork: &mut RawTracePoint = ebpf
                .program_mut("funcgraph_fork")
                .ok_or_else(|| anyhow!("funcgraph_fork missing (build bug)"))?
                .try_into()?;
            fork.load()?;
            fork.attach("sched_process_fork")
                .context("cannot follow forks (raw tracepoint sched_process_fork)")?;
        }
        let addresses: Vec<u64> = graph.functions.iter().map(|f| f.address).collect();
        // Same-named copies share an id (and a name in the output).
        let cookies: Vec<u64> = graph
            .functions
            .iter()
            .map(|f| u64::from(names.intern(&f.name)))
            .collect();
        let mut programs = Vec::new();
        let mut links = Vec::new();
        for (program, on_return) in [("funcgraph_entry", false), ("funcgraph_return", true)] {
            let prog = uprobe_multi::Program::load_as(
                objects::FUNCGRAPH,
                program,
                &ebpf,
                MultiKind::Kprobe,
            )
            .map_err(|e| anyhow!("cannot load {program}: {e}"))?;
            let link = kprobe_multi::Link::attach(
                &prog,
                &kprobe_multi::Target {
                    functions: &[],
                    addresses: &addresses,
                    cookies: &cookies,
                    on_return,
                },
            )
            .map_err(|e| {
                anyhow!(
                    "cannot attach to {} functions with kprobe_multi: {e}",
                    addresses.len()
                )
            })?;
            programs.push(prog);
            links.push(link);
        }
        let stats = StatsReader::take(&mut ebpf)?;
        let (calls, sums) = if args.stats {
            (None, Some(loader::take(&mut ebpf, "FUNC_STATS")?))
        } else {
            (Some(loader::take(&mut ebpf, "CALLS")?), None)
        };
        Ok(Self {
            links,
            programs,
            calls,
            sums,
            stats,
            _ebpf: ebpf,
        })
    }

    /// The calls that returned since the last call.
    pub fn read(&mut self, mut each: impl FnMut(CallRecord)) -> Result<()> {
        let Some(ring) = self.calls.as_mut() else {
            return Ok(());
        };
        while let Some(item) = ring.next() {
            each(loader::ring_record(&item)?);
        }
        Ok(())
    }

    /// The profiler's sums since the start, by function id.
    pub fn sums(&self, count: usize) -> Result<Vec<Sums>> {
        let Some(map) = &self.sums else {
            return Ok(Vec::new());
        };
        (0..count as u32)
            .map(|i| {
                let per_cpu = map.get(&i, 0)?;
                Ok(per_cpu.iter().fold(Sums::default(), |mut s, c| {
                    s.hits += c.hits;
                    s.total_ns += c.total_ns;
                    s.self_ns += c.self_ns;
                    s.squares += (u128::from(c.sq_hi) << 64) | u128::from(c.sq_lo);
                    s
                }))
            })
            .collect()
    }

    /// Lines about what was lost, and the end record's fields for it.
    pub fn losses(&self) -> serde_json::Value {
        let end = self.stats.read();
        let recursion_misses: u64 = self
            .programs
            .iter()
            .filter_map(|p| p.recursion_misses())
            .sum();
        let orphans = self.stats.slot(STAT_ORPHAN_RETURNS);
        let unclosed = self.stats.slot(STAT_UNCLOSED_FRAMES);
        if end.lost > 0 {
            errln!("{TOOL}: {} calls lost: the ring buffer was full", end.lost);
        }
        if orphans + unclosed > 0 {
            errln!(
                "{TOOL}: calls lost to the kernel's recursion protection inside traced trees: \
                 {orphans} returns without their entry, {unclosed} calls without their return"
            );
        }
        serde_json::json!({"lost": end.lost, "map_full": end.map_full,
            "read_errors": end.read_errors, "recursion_misses": recursion_misses,
            "orphan_returns": orphans, "unclosed_calls": unclosed})
    }

    pub fn detach(mut self) {
        self.links.clear();
    }
}

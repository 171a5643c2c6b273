//! hardirqs' kernel side: irq_handler_entry stamps this CPU's slot, irq_handler_exit adds the
//! handler's run to the IRQ line's per-CPU totals (and its histogram with `-D`). Two per-CPU
//! lookups per interrupt, no atomics, no strings: the line's name comes from /proc/interrupts
//! in userspace, so the kernel side never reads `irqaction.name`.
//!
//! Each program has a tp_btf and a raw_tp twin (same code; the loader's ladder picks one).
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use tracer_common::{
    hardirqs::{CpuIrq, HardirqsConfig, IRQ_ENTRIES, IrqStats},
    hist::Log2Hist,
    stats::{STAT_EVENTS, STAT_MAP_FULL},
};
use tracer_ebpf::stats::bump;

tracer_ebpf::license!();
tracer_ebpf::stats_map!();

tracer_ebpf::loader_config!(HARDIRQS_CONFIG: HardirqsConfig = HardirqsConfig::DEFAULT);

#[map]
static CPU_IRQ: PerCpuArray<CpuIrq> = PerCpuArray::with_max_entries(1, 0);

/// IRQ number → totals on this CPU.
#[map]
static IRQS: PerCpuHashMap<u32, IrqStats> = PerCpuHashMap::with_max_entries(IRQ_ENTRIES, 0);

/// IRQ number → handler-time histogram on this CPU (`-D`; one entry otherwise, set at load).
#[map]
static HISTS: PerCpuHashMap<u32, Log2Hist> = PerCpuHashMap::with_max_entries(1, 0);

/// A zeroed histogram to insert from: 512 bytes do not fit on the BPF stack.
#[map]
static ZERO: PerCpuArray<Log2Hist> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn on_entry(irq: u32) -> i32 {
    if let Some(slot) = CPU_IRQ.get_ptr_mut(0) {
        // SAFETY: per-CPU value from a successful lookup, touched only on this CPU.
        let slot = unsafe { &mut *slot };
        slot.irq = irq;
        slot.start_ns = now();
        slot.active = 1;
    }
    0
}

#[inline(always)]
fn on_exit(irq: u32) -> i32 {
    let Some(slot) = CPU_IRQ.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: as in on_entry.
    let slot = unsafe { &mut *slot };
    // An exit without its entry (attached mid-handler) or for another line is not timed.
    if slot.active == 0 || slot.irq != irq {
        return 0;
    }
    slot.active = 0;
    let delta = now().saturating_sub(slot.start_ns);
    bump(&STATS, STAT_EVENTS);
    let stats = match IRQS.get_ptr_mut(&irq) {
        Some(s) => s,
        None => {
            let _ = IRQS.insert(&irq, &IrqStats::default(), 1);
            match IRQS.get_ptr_mut(&irq) {
                Some(s) => s,
                None => {
                    bump(&STATS, STAT_MAP_FULL);
                    return 0;
                }
            }
        }
    };
    // SAFETY: per-CPU value from a successful lookup.
    let stats = unsafe { &mut *stats };
    stats.count += 1;
    stats.time_ns += delta;
    if delta > stats.max_ns {
        stats.max_ns = delta;
    }
    let config = config();
    if config.dist != 0 {
        hist_add(config, irq, delta);
    }
    0
}

#[inline(always)]
fn hist_add(config: &HardirqsConfig, irq: u32, delta_ns: u64) {
    tracer_ebpf::hist::add(&HISTS, &ZERO, &STATS, &irq, delta_ns, config.unit_div);
}

// irq_handler_entry(int irq, struct irqaction *action)
#[btf_tracepoint(function = "irq_handler_entry")]
pub fn hardirqs_entry_btf(ctx: BtfTracePointContext) -> i32 {
    on_entry(ctx.arg::<u64>(0) as u32)
}

#[raw_tracepoint(tracepoint = "irq_handler_entry")]
pub fn hardirqs_entry_raw(ctx: RawTracePointContext) -> i32 {
    on_entry(ctx.arg::<u64>(0) as u32)
}

// irq_handler_exit(int irq, struct irqaction *action, int ret)
#[btf_tracepoint(function = "irq_handler_exit")]
pub fn hardirqs_exit_btf(ctx: BtfTracePointContext) -> i32 {
    on_exit(ctx.arg::<u64>(0) as u32)
}

#[raw_tracepoint(tracepoint = "irq_handler_exit")]
pub fn hardirqs_exit_raw(ctx: RawTracePointContext) -> i32 {
    on_exit(ctx.arg::<u64>(0) as u32)
}

//! `tracer doctor`'s probes: one trivial program per program type. Each counts its hits so the
//! doctor can tell "attached" from "attached and actually fires".
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{
        btf_tracepoint, fentry, fexit, kprobe, kretprobe, map, perf_event, raw_tracepoint,
        tracepoint, uprobe, uretprobe,
    },
    maps::Array,
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, PerfEventContext, ProbeContext,
        RawTracePointContext, RetProbeContext, TracePointContext,
    },
};
use tracer_common::probe::*;

tracer_ebpf::license!();

#[map]
static HITS: Array<u64> = Array::with_max_entries(PROBE_HIT_SLOTS, 0);

#[inline(always)]
fn hit(slot: u32) -> u32 {
    if let Some(counter) = HITS.get_ptr_mut(slot) {
        // SAFETY: pointer from a successful lookup; a lost increment under a race is harmless.
        unsafe { *counter += 1 };
    }
    0
}

#[tracepoint]
pub fn probe_tracepoint(_ctx: TracePointContext) -> u32 {
    hit(PROBE_HIT_TRACEPOINT)
}

#[btf_tracepoint]
pub fn probe_tp_btf(_ctx: BtfTracePointContext) -> i32 {
    hit(PROBE_HIT_TP_BTF) as i32
}

#[raw_tracepoint]
pub fn probe_raw_tp(_ctx: RawTracePointContext) -> i32 {
    hit(PROBE_HIT_RAW_TP) as i32
}

#[kprobe]
pub fn probe_kprobe(_ctx: ProbeContext) -> u32 {
    hit(PROBE_HIT_KPROBE)
}

#[kretprobe]
pub fn probe_kretprobe(_ctx: RetProbeContext) -> u32 {
    hit(PROBE_HIT_KRETPROBE)
}

#[fentry]
pub fn probe_fentry(_ctx: FEntryContext) -> i32 {
    hit(PROBE_HIT_FENTRY) as i32
}

#[fexit]
pub fn probe_fexit(_ctx: FExitContext) -> i32 {
    hit(PROBE_HIT_FEXIT) as i32
}

/// An fexit that reads the return value with `bpf_get_func_ret` (Linux 5.17+): loads only where
/// the helper exists.
#[fexit]
pub fn probe_fexit_ret(ctx: FExitContext) -> i32 {
    if ctx.ret::<u64>().is_err() {
        return 0;
    }
    hit(PROBE_HIT_FEXIT_RET) as i32
}

#[uprobe]
pub fn probe_uprobe(_ctx: ProbeContext) -> u32 {
    hit(PROBE_HIT_UPROBE)
}

#[uretprobe]
pub fn probe_uretprobe(_ctx: RetProbeContext) -> u32 {
    hit(PROBE_HIT_URETPROBE)
}

/// Loaded only through `uprobe_multi` (raw BPF_PROG_LOAD with the uprobe_multi attach type).
#[uprobe]
pub fn probe_uprobe_multi(_ctx: ProbeContext) -> u32 {
    hit(PROBE_HIT_UPROBE_MULTI)
}

#[perf_event]
pub fn probe_perf_event(_ctx: PerfEventContext) -> u32 {
    hit(PROBE_HIT_PERF_EVENT)
}

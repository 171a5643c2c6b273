//! softirq-top's kernel side. Every hot program does one per-CPU array lookup (`CPU_STATE`,
//! inlined by the verifier) and no atomics: softirq_entry marks the vector and, for the
//! softirqs chosen to be timed (all of them below a rate, see `CpuState`), stamps the start;
//! softirq_exit adds count (and time) to the running totals; sched_switch charges the time since
//! the previous switch to ksoftirqd when ksoftirqd was the task switched out. Optional parts
//! (histograms, raise latency, NAPI polls, net_rx_action, stack samples) are their own programs
//! or are switched off through `CONFIG` (a read-only global the verifier prunes on).
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::{
        btf_tracepoint, fentry, fexit, kprobe, kretprobe, map, perf_event, raw_tracepoint,
        tracepoint,
    },
    maps::{PerCpuArray, PerCpuHashMap},
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, PerfEventContext, ProbeContext,
        RawTracePointContext, RetProbeContext, TracePointContext,
    },
};
use tracer_common::{
    hist::{LOG2_SLOTS, log2_slot},
    softirq_top::{
        ADAPT_WINDOW_NS, CTX_IDLE, CTX_KSOFTIRQD, CTX_SLOTS, CTX_TASK, CpuState, IFNAMSIZ,
        NAPI_ENTRIES, NR_SOFTIRQS, NapiKey, NapiStats, NetRxAction, STACK_COUNTS_ENTRIES,
        STACK_TRACES_ENTRIES, STACK_VEC_KSOFTIRQD, SoftirqConfig, StackKey, VEC_SLOTS, VecHist,
        time_shift_for,
    },
    stats::{STAT_MAP_FULL, STAT_READ_ERRORS},
};
use tracer_ebpf::{stacks::stack_id, stats::bump};

tracer_ebpf::license!();
tracer_ebpf::stats_map!();

tracer_ebpf::loader_config!(CONFIG: SoftirqConfig = SoftirqConfig::DEFAULT);

#[map]
static CPU_STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

#[map]
static RUNTIME_HIST: PerCpuArray<VecHist> = PerCpuArray::with_max_entries(NR_SOFTIRQS as u32, 0);

#[map]
static LATENCY_HIST: PerCpuArray<VecHist> = PerCpuArray::with_max_entries(NR_SOFTIRQS as u32, 0);

#[map]
static NAPI: PerCpuHashMap<NapiKey, NapiStats> = PerCpuHashMap::with_max_entries(NAPI_ENTRIES, 0);

#[map]
static NET_RX_ACTION: PerCpuArray<NetRxAction> = PerCpuArray::with_max_entries(1, 0);

#[map]
static STACK_COUNTS: PerCpuHashMap<StackKey, u64> =
    PerCpuHashMap::with_max_entries(STACK_COUNTS_ENTRIES, 0);

tracer_ebpf::stack_store!(STACK_TRACES_ENTRIES);

#[inline(always)]
fn state() -> Option<&'static mut CpuState> {
    // SAFETY: a per-CPU value from a successful lookup, touched only on this CPU (softirqs do
    // not nest on one CPU, and these programs cannot preempt each other there).
    CPU_STATE.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn hist_value(ns: u64) -> u64 {
    if config().hist_ns != 0 { ns } else { ns / 1000 }
}

#[inline(always)]
fn record(map: &PerCpuArray<VecHist>, index: u32, value: u64, weight: u64) {
    let slot = log2_slot(value) as usize;
    if let Some(hist) = map.get_ptr_mut(index)
        && slot < LOG2_SLOTS
    {
        // SAFETY: per-CPU value from a successful lookup; slot bounds-checked.
        unsafe { (*hist).slots[slot] += weight };
    }
}

// ---- softirq_entry --------------------------------------------------------------------------

#[btf_tracepoint(function = "softirq_entry")]
pub fn softirq_entry_btf(ctx: BtfTracePointContext) -> i32 {
    let vec: u64 = ctx.arg(0);
    on_entry(vec as u32)
}

#[raw_tracepoint(tracepoint = "softirq_entry")]
pub fn softirq_entry_raw(ctx: RawTracePointContext) -> i32 {
    let vec: u64 = ctx.arg(0);
    on_entry(vec as u32)
}

#[tracepoint(category = "irq", name = "softirq_entry")]
pub fn softirq_entry_tp(ctx: TracePointContext) -> i32 {
    match tp_vec(&ctx) {
        Some(vec) => on_entry(vec),
        None => 0,
    }
}

#[inline(always)]
fn tp_vec(ctx: &TracePointContext) -> Option<u32> {
    // SAFETY: the offset comes from the tracepoint's format file.
    let vec = unsafe { ctx.read_at::<u32>(config().tp_vec_offset as usize) };
    if vec.is_err() {
        bump(&STATS, STAT_READ_ERRORS);
    }
    vec.ok()
}

/// Whether this softirq is timed: always while the CPU's `time_shift` is 0, else with
/// probability 1/2^shift (xorshift32: a few ALU operations, no helper call).
#[inline(always)]
fn draw(state: &mut CpuState) -> bool {
    let shift = state.time_shift;
    if shift == 0 {
        return true;
    }
    let mut x = state.rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    state.rng = x;
    x & ((1u32 << (shift & 31)) - 1) == 0
}

#[inline(always)]
fn on_entry(vec: u32) -> i32 {
    let Some(state) = state() else { return 0 };
    state.vec = vec + 1;
    let latency = config().latency_hist != 0;
    let timed = draw(state);
    // --latency needs the clock at every entry (it measures raise → entry).
    let ts = if timed || latency { now() } else { 0 };
    if timed {
        state.entry_ns = ts;
        state.entry_shift = state.time_shift;
    } else {
        state.entry_ns = 0;
    }
    if latency {
        let raised = &mut state.raised_ns[vec as usize & (VEC_SLOTS - 1)];
        if *raised != 0 && ts > *raised {
            record(&LATENCY_HIST, vec, hist_value(ts - *raised), 1);
        }
        *raised = 0;
    }
    0
}

// ---- softirq_exit ---------------------------------------------------------------------------

#[btf_tracepoint(function = "softirq_exit")]
pub fn softirq_exit_btf(ctx: BtfTracePointContext) -> i32 {
    let vec: u64 = ctx.arg(0);
    on_exit(vec as u32)
}

#[raw_tracepoint(tracepoint = "softirq_exit")]
pub fn softirq_exit_raw(ctx: RawTracePointContext) -> i32 {
    let vec: u64 = ctx.arg(0);
    on_exit(vec as u32)
}

#[tracepoint(category = "irq", name = "softirq_exit")]
pub fn softirq_exit_tp(ctx: TracePointContext) -> i32 {
    match tp_vec(&ctx) {
        Some(vec) => on_exit(vec),
        None => 0,
    }
}

#[inline(always)]
fn on_exit(vec: u32) -> i32 {
    let Some(state) = state() else { return 0 };
    let served = state.vec;
    let start = state.entry_ns;
    state.vec = 0;
    state.entry_ns = 0;
    // An exit without its entry (we attached in the middle of a softirq) is not counted.
    if served != vec + 1 {
        return 0;
    }
    // Same task as at entry: softirqs do not migrate or sleep.
    let pid = bpf_get_current_pid_tgid() as u32;
    let ctx = if pid == 0 {
        CTX_IDLE
    } else if pid == state.ksoftirqd_pid {
        CTX_KSOFTIRQD
    } else {
        CTX_TASK
    };
    state.vecs[vec as usize & (VEC_SLOTS - 1)].count[ctx & (CTX_SLOTS - 1)] += 1;
    state.window_count += 1;
    if start == 0 {
        state.untimed += 1;
        return 0;
    }
    let ts = now();
    let shift = state.entry_shift & 31;
    let delta = ts.saturating_sub(start);
    state.vecs[vec as usize & (VEC_SLOTS - 1)].time_ns[ctx & (CTX_SLOTS - 1)] += delta << shift;
    if config().runtime_hist != 0 {
        record(&RUNTIME_HIST, vec, hist_value(delta), 1 << shift);
    }
    let budget = config().timed_per_sec;
    if budget != 0 {
        adapt(state, ts, budget as u64);
    }
    0
}

/// Once per `ADAPT_WINDOW_NS`: the smallest `time_shift` that keeps this CPU's timed
/// softirqs within `budget` a second at the rate of the window just ended.
#[inline(always)]
fn adapt(state: &mut CpuState, ts: u64, budget: u64) {
    let elapsed = ts.saturating_sub(state.window_start_ns);
    if elapsed < ADAPT_WINDOW_NS {
        return;
    }
    let shift = time_shift_for(state.window_count, elapsed, budget);
    state.time_shift = shift;
    state.window_start_ns = ts;
    state.window_count = 0;
}

// ---- softirq_raise (--latency) --------------------------------------------------------------

#[btf_tracepoint(function = "softirq_raise")]
pub fn softirq_raise_btf(ctx: BtfTracePointContext) -> i32 {
    let vec: u64 = ctx.arg(0);
    on_raise(vec as u32)
}

#[raw_tracepoint(tracepoint = "softirq_raise")]
pub fn softirq_raise_raw(ctx: RawTracePointContext) -> i32 {
    let vec: u64 = ctx.arg(0);
    on_raise(vec as u32)
}

#[tracepoint(category = "irq", name = "softirq_raise")]
pub fn softirq_raise_tp(ctx: TracePointContext) -> i32 {
    match tp_vec(&ctx) {
        Some(vec) => on_raise(vec),
        None => 0,
    }
}

#[inline(always)]
fn on_raise(vec: u32) -> i32 {
    let Some(state) = state() else { return 0 };
    // A softirq is raised on the CPU that will run it; the first raise of a pending vector is
    // the one that waits longest.
    let raised = &mut state.raised_ns[vec as usize & (VEC_SLOTS - 1)];
    if *raised == 0 {
        *raised = now();
    }
    0
}

// ---- sched_switch: ksoftirqd's own CPU time ---------------------------------------------------

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(_ctx: BtfTracePointContext) -> i32 {
    on_switch()
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw(_ctx: RawTracePointContext) -> i32 {
    on_switch()
}

#[tracepoint(category = "sched", name = "sched_switch")]
pub fn sched_switch_tp(_ctx: TracePointContext) -> i32 {
    on_switch()
}

#[inline(always)]
fn on_switch() -> i32 {
    let Some(state) = state() else { return 0 };
    let ts = now();
    let last = state.last_switch_ns;
    state.last_switch_ns = ts;
    // sched_switch fires before the switch: current is `prev`, which has run on this CPU since
    // the previous switch. No need to read `next` at all.
    let pid = bpf_get_current_pid_tgid() as u32;
    if last != 0 && pid != 0 && pid == state.ksoftirqd_pid {
        state.ksoftirqd_ns += ts.saturating_sub(last);
        state.ksoftirqd_runs += 1;
    }
    0
}

// ---- napi:napi_poll (--net) -----------------------------------------------------------------

#[btf_tracepoint(function = "napi_poll")]
pub fn napi_poll_btf(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct napi_struct *napi, int work, int budget)
    let napi: *const u8 = ctx.arg(0);
    let work: i32 = ctx.arg(1);
    let budget: i32 = ctx.arg(2);
    on_napi_struct(napi, work, budget)
}

#[raw_tracepoint(tracepoint = "napi_poll")]
pub fn napi_poll_raw(ctx: RawTracePointContext) -> i32 {
    let napi: *const u8 = ctx.arg(0);
    let work: i32 = ctx.arg(1);
    let budget: i32 = ctx.arg(2);
    on_napi_struct(napi, work, budget)
}

#[tracepoint(category = "napi", name = "napi_poll")]
pub fn napi_poll_tp(ctx: TracePointContext) -> i32 {
    let config = config();
    // SAFETY: offsets from the tracepoint's format file.
    let fields = unsafe {
        (
            ctx.read_at::<u32>(config.tp_napi_dev_name_offset as usize),
            ctx.read_at::<i32>(config.tp_napi_work_offset as usize),
            ctx.read_at::<i32>(config.tp_napi_budget_offset as usize),
        )
    };
    let (Ok(loc), Ok(work), Ok(budget)) = fields else {
        bump(&STATS, STAT_READ_ERRORS);
        return 0;
    };
    // __data_loc: low 16 bits are the string's offset from the start of the record.
    let name = (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize);
    let mut key = NapiKey { dev: [0; IFNAMSIZ] };
    // SAFETY: the helper checks the address; the string is NUL-terminated in the record.
    if unsafe { bpf_probe_read_kernel_str_bytes(name, &mut key.dev) }.is_err() {
        bump(&STATS, STAT_READ_ERRORS);
        return 0;
    }
    count_napi(&key, work, budget)
}

#[inline(always)]
fn on_napi_struct(napi: *const u8, work: i32, budget: i32) -> i32 {
    let config = config();
    let mut key = NapiKey { dev: [0; IFNAMSIZ] };
    // SAFETY: bpf_probe_read_kernel checks the address.
    let Ok(dev) = (unsafe {
        bpf_probe_read_kernel(napi.wrapping_add(config.napi_dev_offset as usize) as *const u64)
    }) else {
        bump(&STATS, STAT_READ_ERRORS);
        return 0;
    };
    if dev == 0 {
        // What the tracepoint itself prints for a NAPI without a device (the per-CPU backlog).
        key.dev[..11].copy_from_slice(b"(no_device)");
    } else {
        let name = (dev as *const u8).wrapping_add(config.netdev_name_offset as usize);
        // SAFETY: as above.
        if unsafe { bpf_probe_read_kernel_str_bytes(name, &mut key.dev) }.is_err() {
            bump(&STATS, STAT_READ_ERRORS);
            return 0;
        }
    }
    count_napi(&key, work, budget)
}

#[inline(always)]
fn count_napi(key: &NapiKey, work: i32, budget: i32) -> i32 {
    let work = work.max(0) as u64;
    let budget = budget.max(0) as u64;
    let exhausted = u64::from(budget > 0 && work >= budget);
    if let Some(stats) = NAPI.get_ptr_mut(key) {
        // SAFETY: per-CPU value from a successful lookup.
        unsafe {
            (*stats).polls += 1;
            (*stats).work += work;
            (*stats).budget += budget;
            (*stats).exhausted += exhausted;
        }
        return 0;
    }
    let first = NapiStats {
        polls: 1,
        work,
        budget,
        exhausted,
    };
    if NAPI.insert(key, &first, 0).is_err() {
        bump(&STATS, STAT_MAP_FULL);
    }
    0
}

// ---- net_rx_action() duration (--net, where fentry or kprobes exist) ------------------------

#[fentry(function = "net_rx_action")]
pub fn net_rx_action_fentry(_ctx: FEntryContext) -> i32 {
    net_rx_action_enter()
}

#[fexit(function = "net_rx_action")]
pub fn net_rx_action_fexit(_ctx: FExitContext) -> i32 {
    net_rx_action_return()
}

#[kprobe]
pub fn net_rx_action_kprobe(_ctx: ProbeContext) -> u32 {
    net_rx_action_enter() as u32
}

#[kretprobe]
pub fn net_rx_action_kretprobe(_ctx: RetProbeContext) -> u32 {
    net_rx_action_return() as u32
}

#[inline(always)]
fn net_rx_action_enter() -> i32 {
    if let Some(state) = state() {
        state.net_rx_action_ns = now();
    }
    0
}

#[inline(always)]
fn net_rx_action_return() -> i32 {
    let Some(state) = state() else { return 0 };
    let start = state.net_rx_action_ns;
    state.net_rx_action_ns = 0;
    if start == 0 {
        return 0;
    }
    let delta = now().saturating_sub(start);
    let slot = log2_slot(hist_value(delta)) as usize;
    if let Some(total) = NET_RX_ACTION.get_ptr_mut(0) {
        // SAFETY: per-CPU value from a successful lookup; slot bounds-checked.
        unsafe {
            (*total).count += 1;
            (*total).time_ns += delta;
            if slot < LOG2_SLOTS {
                (*total).hist.slots[slot] += 1;
            }
        }
    }
    0
}

// ---- --stacks: cpu-clock samples taken while serving a softirq --------------------------------

#[perf_event]
pub fn softirq_stacks(ctx: PerfEventContext) -> u32 {
    let Some(state) = state() else { return 0 };
    let config = config();
    let vec = if state.vec != 0 {
        state.vec - 1
    } else if config.stacks_ksoftirqd != 0
        && state.ksoftirqd_pid != 0
        && bpf_get_current_pid_tgid() as u32 == state.ksoftirqd_pid
    {
        STACK_VEC_KSOFTIRQD
    } else {
        return 0;
    };
    if vec < NR_SOFTIRQS as u32 && config.stacks_vec_mask & (1 << vec) == 0 {
        return 0;
    }
    let key = StackKey {
        stack_id: stack_id(&ctx, &STACKS, 0, &STATS),
        vec,
    };
    if let Some(count) = STACK_COUNTS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value from a successful lookup.
        unsafe { *count += 1 };
    } else if STACK_COUNTS.insert(&key, &1, 0).is_err() {
        bump(&STATS, STAT_MAP_FULL);
    }
    0
}

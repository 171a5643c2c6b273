//! funcgraph's kernel side: one entry and one return program, attached through kprobe_multi
//! links to the root function and its callees, each function's id in the BPF cookie. A thread
//! enters the graph at the root (after the task filters) and leaves it when the root returns;
//! meanwhile its open calls are kept in `THREADS` and each call that returns is sent to
//! `CALLS` (callees before their caller) and/or summed per function in `FUNC_STATS`.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::bpf_get_attach_cookie,
    },
    macros::{kprobe, kretprobe, map},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{
    funcgraph::{
        CALL_INCOMPLETE, CALLS_RING_BYTES, CallRecord, FuncStats, FuncgraphConfig, MAX_DEPTH,
        MAX_FUNCTIONS, ROOT_ID, STAT_ORPHAN_RETURNS, STAT_UNCLOSED_FRAMES, THREADS_ENTRIES,
        TRACED_ENTRIES, ThreadFrames,
    },
    stats::{STAT_EVENTS, STAT_LOST, STAT_MAP_FULL},
};
use tracer_ebpf::{stats::bump, task::current_in_cgroup};

tracer_ebpf::license!();
tracer_ebpf::stats_map!();

tracer_ebpf::loader_config!(CONFIG: FuncgraphConfig = FuncgraphConfig::DEFAULT);

#[map]
static THREADS: HashMap<u32, ThreadFrames> = HashMap::with_max_entries(THREADS_ENTRIES, 0);

/// A zeroed `ThreadFrames` to insert from (too big for the BPF stack).
#[map]
static SCRATCH: PerCpuArray<ThreadFrames> = PerCpuArray::with_max_entries(1, 0);

tracer_ebpf::follow_forks!(funcgraph_fork, TRACED_ENTRIES);

#[map]
static CALLS: RingBuf = RingBuf::with_byte_size(CALLS_RING_BYTES, 0);

#[map]
static FUNC_STATS: PerCpuArray<FuncStats> = PerCpuArray::with_max_entries(MAX_FUNCTIONS, 0);

#[inline(always)]
fn cookie<C: EbpfContext>(ctx: &C) -> u32 {
    // SAFETY: this program's own context pointer.
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) as u32 }
}

#[kprobe]
pub fn funcgraph_entry(ctx: ProbeContext) -> u32 {
    let func = cookie(&ctx);
    // Most hits are callees run by threads outside any tree: one lookup turns them away
    // before the stack check reads the task.
    if func != ROOT_ID && !inside_tree() {
        return 0;
    }
    // SAFETY: a kprobe's context is the probed task's pt_regs.
    if traced_here(unsafe { (*ctx.regs).rsp }) {
        on_entry(func);
    }
    0
}

#[kretprobe]
pub fn funcgraph_return(ctx: RetProbeContext) -> u32 {
    if !inside_tree() {
        return 0;
    }
    // SAFETY: as above.
    if traced_here(unsafe { (*ctx.regs).rsp }) {
        on_return(cookie(&ctx), ctx.ret::<u64>());
    }
    0
}

/// Whether the current thread is inside a root call.
#[inline(always)]
fn inside_tree() -> bool {
    THREADS
        .get_ptr(&(bpf_get_current_pid_tgid() as u32))
        .is_some()
}

/// Whether this hit is the traced thread's own call: not made by the fork program, and `sp`
/// on the task's kernel stack, not in a hard or soft interrupt run
/// on the CPU's interrupt stack (whose calls are not the task's).
#[inline(always)]
fn traced_here(sp: u64) -> bool {
    if config().follow != 0 && in_fork_hook() {
        return false;
    }
    let offset = config().task_stack;
    if offset == 0 {
        return true;
    }
    // SAFETY: helper without arguments; the task is only read through probe_read.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: bpf_probe_read_kernel checks the address.
    let Ok(stack) =
        (unsafe { bpf_probe_read_kernel(task.wrapping_add(offset as usize) as *const u64) })
    else {
        return true;
    };
    // Kernel stacks are 16 KiB (32 KiB with KASAN); interrupt stacks are elsewhere.
    sp.wrapping_sub(stack) < 64 * 1024
}

#[inline(always)]
fn admitted(pid_tgid: u64) -> bool {
    let config = config();
    if config.follow != 0 && !followed((pid_tgid >> 32) as u32) {
        return false;
    }
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    if !config.comm.matches(&comm) {
        return false;
    }
    current_in_cgroup()
}

#[inline(always)]
fn on_entry(func: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let state = match THREADS.get_ptr_mut(&tid) {
        Some(state) => state,
        None => {
            // Outside the graph: only the root lets a thread in.
            if func != ROOT_ID || !admitted(pid_tgid) {
                return;
            }
            let Some(zero) = SCRATCH.get_ptr(0) else {
                return;
            };
            // SAFETY: a per-CPU array slot, never written: all zeroes.
            if THREADS.insert(&tid, unsafe { &*zero }, 0).is_err() {
                bump(&STATS, STAT_MAP_FULL);
                return;
            }
            match THREADS.get_ptr_mut(&tid) {
                Some(state) => state,
                None => return,
            }
        }
    };
    // SAFETY: a hash map value of this thread's, written only by this thread.
    let state = unsafe { &mut *state };
    let depth = state.depth;
    if depth < MAX_DEPTH as u32 {
        let frame = &mut state.frames[depth as usize & (MAX_DEPTH - 1)];
        frame.func = func;
        frame.flags = 0;
        frame.start_ns = unsafe { bpf_ktime_get_ns() };
        frame.children_ns = 0;
    }
    state.depth += 1;
}

#[inline(always)]
fn on_return(func: u32, retval: u64) {
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let Some(state) = THREADS.get_ptr_mut(&tid) else {
        return;
    };
    // SAFETY: as in on_entry.
    let state = unsafe { &mut *state };
    if state.depth == 0 {
        return;
    }
    let mut depth = state.depth - 1;
    if depth >= MAX_DEPTH as u32 {
        // Past the frames kept: followed, not recorded.
        state.depth = depth;
        return;
    }
    // Indices masked to the array (MAX_DEPTH is a power of two) so the verifier sees them
    // in bounds.
    const MASK: usize = MAX_DEPTH - 1;
    if state.frames[depth as usize & MASK].func != func {
        // Either this return's entry was skipped (the kernel's recursion protection), or the
        // returns of the frames above it were: find it below, else ignore the return.
        let mut found = u32::MAX;
        let mut k = 0u32;
        while k < MAX_DEPTH as u32 {
            if k < depth && state.frames[k as usize & MASK].func == func {
                found = k;
            }
            k += 1;
        }
        if found == u32::MAX {
            bump(&STATS, STAT_ORPHAN_RETURNS);
            return;
        }
        add(STAT_UNCLOSED_FRAMES, u64::from(depth - found));
        depth = found;
        state.frames[depth as usize & MASK].flags |= CALL_INCOMPLETE;
    }
    let frame = state.frames[depth as usize & MASK];
    let duration = now.saturating_sub(frame.start_ns);
    if depth > 0 {
        let parent = &mut state.frames[(depth as usize - 1) & MASK];
        parent.children_ns += duration;
        parent.flags |= frame.flags;
    }
    state.depth = depth;
    let config = config();
    if config.sum_stats != 0 {
        sum(func, duration, duration.saturating_sub(frame.children_ns));
    }
    if config.emit_calls != 0 && depth <= config.max_depth {
        emit(&frame, depth, duration, retval, pid_tgid);
    }
    if depth == 0 {
        let _ = THREADS.remove(&tid);
    }
}

/// Adds `n` to STATS slot `slot`.
#[inline(always)]
fn add(slot: u32, n: u64) {
    if let Some(counter) = STATS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot, touched only on this CPU.
        unsafe { *counter += n };
    }
}

#[inline(always)]
fn sum(func: u32, duration: u64, self_ns: u64) {
    let Some(stats) = FUNC_STATS.get_ptr_mut(func) else {
        return;
    };
    // SAFETY: a per-CPU slot, touched only on this CPU.
    let stats = unsafe { &mut *stats };
    stats.hits += 1;
    stats.total_ns += duration;
    stats.self_ns += self_ns;
    // ns² of calls over ~4.3 s overflow 64 bits: square the clamped value, carry into high.
    let clamped = if duration > u32::MAX as u64 {
        u32::MAX as u64
    } else {
        duration
    };
    let square = clamped * clamped;
    let low = stats.sq_lo.wrapping_add(square);
    if low < stats.sq_lo {
        stats.sq_hi += 1;
    }
    stats.sq_lo = low;
}

#[inline(always)]
fn emit(
    frame: &tracer_common::funcgraph::Frame,
    depth: u32,
    duration: u64,
    retval: u64,
    pid_tgid: u64,
) {
    let Some(mut entry) = CALLS.reserve::<CallRecord>(0) else {
        bump(&STATS, STAT_LOST);
        return;
    };
    entry.write(CallRecord {
        start_ns: frame.start_ns,
        duration_ns: duration,
        retval,
        tid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        func: frame.func,
        depth: depth as u16,
        cpu: unsafe { bpf_get_smp_processor_id() } as u16,
        flags: frame.flags,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    entry.submit(0);
    bump(&STATS, STAT_EVENTS);
}

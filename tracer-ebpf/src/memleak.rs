//! memleak's kernel side: uprobes on libc's malloc, calloc and realloc note the requested size
//! per thread, their uretprobe stores (address → size, time, user stack) in `ALLOCS`, and free
//! (and realloc of a non-NULL pointer) deletes the entry. What is left in `ALLOCS` is what is
//! outstanding; userspace reads it and sums by stack. Two hash operations per call, no events.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, uprobe, uretprobe},
    maps::HashMap,
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{
    memleak::{ALLOCS_ENTRIES, AllocInfo, MemleakConfig, SIZES_ENTRIES},
    stacks::{BPF_F_USER_STACK, STACKS_ENTRIES},
    stats::{STAT_EVENTS, STAT_MAP_FULL},
};
use tracer_ebpf::{stacks::stack_id, stats::bump};

tracer_ebpf::license!();
tracer_ebpf::stats_map!();

tracer_ebpf::loader_config!(CONFIG: MemleakConfig = MemleakConfig::DEFAULT);

tracer_ebpf::stack_store!(STACKS_ENTRIES);

/// Requested size by thread, from an allocator's entry to its return.
#[map]
static SIZES: HashMap<u32, u64> = HashMap::with_max_entries(SIZES_ENTRIES, 0);

/// Outstanding allocations by address.
#[map]
static ALLOCS: HashMap<u64, AllocInfo> = HashMap::with_max_entries(ALLOCS_ENTRIES, 0);

/// The current thread, if it belongs to the traced process.
#[inline(always)]
fn traced_tid() -> Option<u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = config().tgid;
    if tgid != 0 && (pid_tgid >> 32) as u32 != tgid {
        return None;
    }
    Some(pid_tgid as u32)
}

#[inline(always)]
fn enter(size: u64) {
    let Some(tid) = traced_tid() else { return };
    let config = config();
    if size < config.min_size || size > config.max_size {
        return;
    }
    if SIZES.insert(&tid, &size, 0).is_err() {
        bump(&STATS, STAT_MAP_FULL);
    }
}

#[inline(always)]
fn release(address: u64) {
    if address != 0 && traced_tid().is_some() {
        let _ = ALLOCS.remove(&address);
    }
}

#[uprobe]
pub fn memleak_malloc(ctx: ProbeContext) -> u32 {
    enter(ctx.arg::<u64>(0).unwrap_or(0));
    0
}

#[uprobe]
pub fn memleak_calloc(ctx: ProbeContext) -> u32 {
    let nmemb = ctx.arg::<u64>(0).unwrap_or(0);
    let size = ctx.arg::<u64>(1).unwrap_or(0);
    // An overflowing product makes calloc fail (NULL, not stored): wrapping is harmless, and
    // a 128-bit saturating multiply is not BPF.
    enter(nmemb.wrapping_mul(size));
    0
}

#[uprobe]
pub fn memleak_realloc(ctx: ProbeContext) -> u32 {
    // realloc(p, n) frees p (when it returns another block, or NULL for n == 0) and allocates
    // n: p's entry goes now, the new block is stored at the return.
    release(ctx.arg::<u64>(0).unwrap_or(0));
    enter(ctx.arg::<u64>(1).unwrap_or(0));
    0
}

#[uretprobe]
pub fn memleak_alloc_return(ctx: RetProbeContext) -> u32 {
    let Some(tid) = traced_tid() else { return 0 };
    // SAFETY: the value is copied out before the entry is deleted.
    let Some(size) = (unsafe { SIZES.get(&tid) }).copied() else {
        return 0;
    };
    let _ = SIZES.remove(&tid);
    let address = ctx.ret::<u64>();
    if address == 0 || size == 0 {
        return 0;
    }
    let info = AllocInfo {
        size,
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ustack: stack_id(&ctx, &STACKS, BPF_F_USER_STACK, &STATS),
        tid,
    };
    if ALLOCS.insert(&address, &info, 0).is_err() {
        bump(&STATS, STAT_MAP_FULL);
    } else {
        bump(&STATS, STAT_EVENTS);
    }
    0
}

#[uprobe]
pub fn memleak_free(ctx: ProbeContext) -> u32 {
    release(ctx.arg::<u64>(0).unwrap_or(0));
    0
}

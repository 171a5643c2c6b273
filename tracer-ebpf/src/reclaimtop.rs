//! reclaimtop's kernel side: memory reclaim from the `vmscan:` tracepoints and oom:mark_victim.
//!
//! - kswapd_wake/sleep: per-node wakeups and awake time in `NODES[nid]`, written only by that
//!   node's kswapd (one thread), so plain stores suffice. wakeup_kswapd (in the allocating
//!   task) counts who woke it, per process and CPU in `WAKERS`.
//! - lru_shrink_inactive: pages scanned/reclaimed into the per-CPU `TOTALS` (kswapd vs other,
//!   by PF_KSWAPD), into kswapd's node, and into the stalling process's record.
//! - direct/memcg reclaim begin → end: per-thread stamp, then per-CPU (process, kind) records
//!   and optional log2 histograms; shrink_slab start → end the same per scan function.
//! - mark_victim: one record per OOM kill with the task whose allocation triggered it.
//!
//! Every event has a tp_btf, raw_tp and classic-tracepoint twin; the loader's ladder picks one.
//! The classic rung reads fields at offsets from the event's format file (they differ by kernel).
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
        bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use tracer_common::{
    hist::Log2Hist,
    reclaimtop::{
        KIND_DIRECT, KIND_MEMCG, MAX_NODES, NodeStats, OOM_ENTRIES, OomKill, PF_KSWAPD,
        ReclaimConfig, ReclaimTotals, START_ENTRIES, ShrinkStart, ShrinkerStats, StallKey,
        StallStart, StallStats, WakerStats,
    },
    stats::{STAT_EVENTS, STAT_MAP_FULL, STAT_READ_ERRORS},
};
use tracer_ebpf::{
    stats::bump,
    task::{Task, current_in_cgroup},
};

tracer_ebpf::license!();
tracer_ebpf::stats_map!();

tracer_ebpf::loader_config!(RECLAIM_CONFIG: ReclaimConfig = ReclaimConfig::DEFAULT);

#[map]
static TOTALS: PerCpuArray<ReclaimTotals> = PerCpuArray::with_max_entries(1, 0);

#[map]
static NODES: Array<NodeStats> = Array::with_max_entries(MAX_NODES, 0);

/// Thread → the reclaim it is in. LRU: a thread killed inside reclaim must not leak an entry.
#[map]
static STALL_START: LruHashMap<u32, StallStart> = LruHashMap::with_max_entries(START_ENTRIES, 0);

/// (process, kind) → stalls; sized by the loader.
#[map]
static STALLS: PerCpuHashMap<StallKey, StallStats> = PerCpuHashMap::with_max_entries(1, 0);

/// (process, kind) → stall-time histogram (`-D`); one entry unless enabled.
#[map]
static HISTS: PerCpuHashMap<StallKey, Log2Hist> = PerCpuHashMap::with_max_entries(1, 0);

/// A zeroed histogram to insert from: 512 bytes do not fit on the BPF stack.
#[map]
static ZERO: PerCpuArray<Log2Hist> = PerCpuArray::with_max_entries(1, 0);

#[map]
static SHRINK_START: LruHashMap<u32, ShrinkStart> = LruHashMap::with_max_entries(START_ENTRIES, 0);

/// Scan function address → calls; sized by the loader.
#[map]
static SHRINKERS: PerCpuHashMap<u64, ShrinkerStats> = PerCpuHashMap::with_max_entries(1, 0);

/// tgid → times its allocations woke kswapd; sized by the loader.
#[map]
static WAKERS: PerCpuHashMap<u32, WakerStats> = PerCpuHashMap::with_max_entries(1, 0);

#[map]
static OOMS: HashMap<u32, OomKill> = HashMap::with_max_entries(OOM_ENTRIES, 0);

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn current_is_kswapd() -> bool {
    // SAFETY: helper without arguments; the pointer is only read through probe_read.
    let task = Task::from_ptr(unsafe { bpf_get_current_task() } as *const u8);
    task.flags().is_some_and(|f| f & PF_KSWAPD != 0)
}

/// The user's `-p`/`--comm` filters, for what is charged to a task.
#[inline(always)]
fn wanted(config: &ReclaimConfig, tgid: u32) -> bool {
    if config.tgid != 0 && config.tgid != tgid {
        return false;
    }
    // What is charged to a task is charged to current (the allocating task).
    if !current_in_cgroup() {
        return false;
    }
    config
        .comm
        .matches(&bpf_get_current_comm().unwrap_or([0; 16]))
}

// ---- kswapd ---------------------------------------------------------------------------------

#[inline(always)]
fn on_kswapd_wake(nid: u32) -> i32 {
    let Some(node) = NODES.get_ptr_mut(nid) else {
        bump(&STATS, STAT_MAP_FULL);
        return 0;
    };
    // SAFETY: only this node's kswapd writes its slot.
    unsafe {
        (*node).wakeups += 1;
        (*node).woke_at_ns = now();
        (*node).pid = bpf_get_current_pid_tgid() as u32;
    }
    0
}

#[inline(always)]
fn on_kswapd_sleep(nid: u32) -> i32 {
    let Some(node) = NODES.get_ptr_mut(nid) else {
        bump(&STATS, STAT_MAP_FULL);
        return 0;
    };
    // SAFETY: as above.
    unsafe {
        let woke = (*node).woke_at_ns;
        // A sleep without a wakeup seen (awake when we attached): the open period is unknown.
        if woke != 0 {
            (*node).awake_ns += now().saturating_sub(woke);
            (*node).woke_at_ns = 0;
        }
    }
    0
}

#[btf_tracepoint(function = "mm_vmscan_kswapd_wake")]
pub fn kswapd_wake_btf(ctx: BtfTracePointContext) -> i32 {
    on_kswapd_wake(ctx.arg::<u64>(0) as u32)
}

#[raw_tracepoint(tracepoint = "mm_vmscan_kswapd_wake")]
pub fn kswapd_wake_raw(ctx: RawTracePointContext) -> i32 {
    on_kswapd_wake(ctx.arg::<u64>(0) as u32)
}

#[tracepoint(category = "vmscan", name = "mm_vmscan_kswapd_wake")]
pub fn kswapd_wake_tp(ctx: TracePointContext) -> i32 {
    // SAFETY: the offset comes from this tracepoint's format file.
    match unsafe { ctx.read_at::<u32>(config().tp_wake_nid as usize) } {
        Ok(nid) => on_kswapd_wake(nid),
        Err(_) => read_error(),
    }
}

#[btf_tracepoint(function = "mm_vmscan_kswapd_sleep")]
pub fn kswapd_sleep_btf(ctx: BtfTracePointContext) -> i32 {
    on_kswapd_sleep(ctx.arg::<u64>(0) as u32)
}

#[raw_tracepoint(tracepoint = "mm_vmscan_kswapd_sleep")]
pub fn kswapd_sleep_raw(ctx: RawTracePointContext) -> i32 {
    on_kswapd_sleep(ctx.arg::<u64>(0) as u32)
}

#[tracepoint(category = "vmscan", name = "mm_vmscan_kswapd_sleep")]
pub fn kswapd_sleep_tp(ctx: TracePointContext) -> i32 {
    // SAFETY: as above.
    match unsafe { ctx.read_at::<u32>(config().tp_sleep_nid as usize) } {
        Ok(nid) => on_kswapd_sleep(nid),
        Err(_) => read_error(),
    }
}

#[inline(always)]
fn on_wakeup_kswapd() -> i32 {
    let config = config();
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !wanted(config, tgid) {
        return 0;
    }
    if let Some(rec) = WAKERS.get_ptr_mut(&tgid) {
        // SAFETY: per-CPU value, only touched on this CPU.
        unsafe { (*rec).wakeups += 1 };
        return 0;
    }
    let fresh = WakerStats {
        wakeups: 1,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if WAKERS.insert(&tgid, &fresh, 0).is_err() {
        bump(&STATS, STAT_MAP_FULL);
    }
    0
}

#[btf_tracepoint(function = "mm_vmscan_wakeup_kswapd")]
pub fn wakeup_kswapd_btf(_ctx: BtfTracePointContext) -> i32 {
    on_wakeup_kswapd()
}

#[raw_tracepoint(tracepoint = "mm_vmscan_wakeup_kswapd")]
pub fn wakeup_kswapd_raw(_ctx: RawTracePointContext) -> i32 {
    on_wakeup_kswapd()
}

#[tracepoint(category = "vmscan", name = "mm_vmscan_wakeup_kswapd")]
pub fn wakeup_kswapd_tp(_ctx: TracePointContext) -> i32 {
    on_wakeup_kswapd()
}

#[inline(always)]
fn read_error() -> i32 {
    bump(&STATS, STAT_READ_ERRORS);
    0
}

// ---- pages scanned / reclaimed --------------------------------------------------------------

#[inline(always)]
fn on_shrink_inactive(nid: u32, scanned: u64, reclaimed: u64) -> i32 {
    let Some(totals) = TOTALS.get_ptr_mut(0) else {
        return 0;
    };
    if current_is_kswapd() {
        // SAFETY: per-CPU value, only touched on this CPU.
        unsafe {
            (*totals).kswapd_scanned += scanned;
            (*totals).kswapd_reclaimed += reclaimed;
        }
        if let Some(node) = NODES.get_ptr_mut(nid) {
            // SAFETY: kswapd reclaims only its own node: one writer per slot.
            unsafe {
                (*node).scanned += scanned;
                (*node).reclaimed += reclaimed;
            }
        }
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: plain data read from a map value.
    let start = STALL_START.get_ptr(pid_tgid as u32).map(|s| unsafe { *s });
    let memcg = start.is_some_and(|s| s.kind == KIND_MEMCG);
    // SAFETY: per-CPU value, only touched on this CPU.
    unsafe {
        if memcg {
            (*totals).memcg_scanned += scanned;
            (*totals).memcg_reclaimed += reclaimed;
        } else {
            (*totals).direct_scanned += scanned;
            (*totals).direct_reclaimed += reclaimed;
        }
    }
    let Some(start) = start.filter(|s| s.wanted != 0) else {
        return 0;
    };
    let key = StallKey {
        tgid: (pid_tgid >> 32) as u32,
        kind: start.kind,
    };
    if let Some(rec) = stall_record(&key) {
        // SAFETY: per-CPU value, only touched on this CPU.
        unsafe {
            (*rec).lru_scanned += scanned;
            (*rec).lru_reclaimed += reclaimed;
        }
    }
    0
}

#[btf_tracepoint(function = "mm_vmscan_lru_shrink_inactive")]
pub fn shrink_inactive_btf(ctx: BtfTracePointContext) -> i32 {
    on_shrink_inactive(ctx.arg::<u64>(0) as u32, ctx.arg(1), ctx.arg(2))
}

#[raw_tracepoint(tracepoint = "mm_vmscan_lru_shrink_inactive")]
pub fn shrink_inactive_raw(ctx: RawTracePointContext) -> i32 {
    on_shrink_inactive(ctx.arg::<u64>(0) as u32, ctx.arg(1), ctx.arg(2))
}

#[tracepoint(category = "vmscan", name = "mm_vmscan_lru_shrink_inactive")]
pub fn shrink_inactive_tp(ctx: TracePointContext) -> i32 {
    let config = config();
    // SAFETY: offsets from this tracepoint's format file.
    let fields = unsafe {
        (
            ctx.read_at::<u32>(config.tp_lru_nid as usize),
            ctx.read_at::<u64>(config.tp_lru_scanned as usize),
            ctx.read_at::<u64>(config.tp_lru_reclaimed as usize),
        )
    };
    match fields {
        (Ok(nid), Ok(scanned), Ok(reclaimed)) => on_shrink_inactive(nid, scanned, reclaimed),
        _ => read_error(),
    }
}

// ---- direct and memcg reclaim stalls --------------------------------------------------------

/// This CPU's record for `key`, created with the current comm.
#[inline(always)]
fn stall_record(key: &StallKey) -> Option<*mut StallStats> {
    if let Some(rec) = STALLS.get_ptr_mut(key) {
        return Some(rec);
    }
    let fresh = StallStats {
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        ..StallStats::default()
    };
    if STALLS.insert(key, &fresh, 0).is_err() {
        bump(&STATS, STAT_MAP_FULL);
        return None;
    }
    STALLS.get_ptr_mut(key)
}

#[inline(always)]
fn on_reclaim_begin(kind: u32) -> i32 {
    let config = config();
    let pid_tgid = bpf_get_current_pid_tgid();
    // Stamped either way: the totals split memcg from direct reclaim for every task.
    let start = StallStart {
        ts: now(),
        kind,
        wanted: wanted(config, (pid_tgid >> 32) as u32).into(),
    };
    if STALL_START.insert(&(pid_tgid as u32), &start, 0).is_err() {
        bump(&STATS, STAT_MAP_FULL);
    }
    0
}

#[inline(always)]
fn on_reclaim_end(kind: u32, reclaimed: u64) -> i32 {
    let config = config();
    let ts = now();
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = pid_tgid as u32;
    // SAFETY: plain data read from a map value.
    let Some(start) = STALL_START.get_ptr(pid).map(|s| unsafe { *s }) else {
        return 0;
    };
    let _ = STALL_START.remove(&pid);
    if start.kind != kind || start.wanted == 0 {
        return 0;
    }
    let stall = ts.saturating_sub(start.ts);
    let key = StallKey {
        tgid: (pid_tgid >> 32) as u32,
        kind,
    };
    bump(&STATS, STAT_EVENTS);
    if let Some(rec) = stall_record(&key) {
        // SAFETY: per-CPU value, only touched on this CPU.
        unsafe {
            (*rec).count += 1;
            (*rec).total_ns += stall;
            if stall > (*rec).max_ns {
                (*rec).max_ns = stall;
            }
            (*rec).reclaimed += reclaimed;
            // exec() changes the comm; keep the newest.
            if let Ok(comm) = bpf_get_current_comm() {
                (*rec).comm = comm;
            }
        }
    }
    if config.histograms != 0 {
        hist_add(config, &key, stall);
    }
    0
}

#[inline(always)]
fn hist_add(config: &ReclaimConfig, key: &StallKey, stall_ns: u64) {
    tracer_ebpf::hist::add(&HISTS, &ZERO, &STATS, key, stall_ns, config.unit_div);
}

#[btf_tracepoint(function = "mm_vmscan_direct_reclaim_begin")]
pub fn direct_begin_btf(_ctx: BtfTracePointContext) -> i32 {
    on_reclaim_begin(KIND_DIRECT)
}

#[raw_tracepoint(tracepoint = "mm_vmscan_direct_reclaim_begin")]
pub fn direct_begin_raw(_ctx: RawTracePointContext) -> i32 {
    on_reclaim_begin(KIND_DIRECT)
}

#[tracepoint(category = "vmscan", name = "mm_vmscan_direct_reclaim_begin")]
pub fn direct_begin_tp(_ctx: TracePointContext) -> i32 {
    on_reclaim_begin(KIND_DIRECT)
}

#[btf_tracepoint(function = "mm_vmscan_direct_reclaim_end")]
pub fn direct_end_btf(ctx: BtfTracePointContext) -> i32 {
    on_reclaim_end(KIND_DIRECT, ctx.arg(0))
}

#[raw_tracepoint(tracepoint = "mm_vmscan_direct_reclaim_end")]
pub fn direct_end_raw(ctx: RawTracePointContext) -> i32 {
    on_reclaim_end(KIND_DIRECT, ctx.arg(0))
}

#[tracepoint(category = "vmscan", name = "mm_vmscan_direct_reclaim_end")]
pub fn direct_end_tp(ctx: TracePointContext) -> i32 {
    // SAFETY: offset from this tracepoint's format file.
    match unsafe { ctx.read_at::<u64>(config().tp_end_reclaimed as usize) } {
        Ok(reclaimed) => on_reclaim_end(KIND_DIRECT, reclaimed),
        Err(_) => read_error(),
    }
}

#[btf_tracepoint(function = "mm_vmscan_memcg_reclaim_begin")]
pub fn memcg_begin_btf(_ctx: BtfTracePointContext) -> i32 {
    on_reclaim_begin(KIND_MEMCG)
}

#[raw_tracepoint(tracepoint = "mm_vmscan_memcg_reclaim_begin")]
pub fn memcg_begin_raw(_ctx: RawTracePointContext) -> i32 {
    on_reclaim_begin(KIND_MEMCG)
}

#[tracepoint(category = "vmscan", name = "mm_vmscan_memcg_reclaim_begin")]
pub fn memcg_begin_tp(_ctx: TracePointContext) -> i32 {
    on_reclaim_begin(KIND_MEMCG)
}

#[btf_tracepoint(function = "mm_vmscan_memcg_reclaim_end")]
pub fn memcg_end_btf(ctx: BtfTracePointContext) -> i32 {
    on_reclaim_end(KIND_MEMCG, ctx.arg(0))
}

#[raw_tracepoint(tracepoint = "mm_vmscan_memcg_reclaim_end")]
pub fn memcg_end_raw(ctx: RawTracePointContext) -> i32 {
    on_reclaim_end(KIND_MEMCG, ctx.arg(0))
}

#[tracepoint(category = "vmscan", name = "mm_vmscan_memcg_reclaim_end")]
pub fn memcg_end_tp(ctx: TracePointContext) -> i32 {
    // SAFETY: offset from this tracepoint's format file.
    match unsafe { ctx.read_at::<u64>(config().tp_memcg_end_reclaimed as usize) } {
        Ok(reclaimed) => on_reclaim_end(KIND_MEMCG, reclaimed),
        Err(_) => read_error(),
    }
}

// ---- shrinkers ------------------------------------------------------------------------------

#[inline(always)]
fn on_slab_start(function: u64) -> i32 {
    let pid = bpf_get_current_pid_tgid() as u32;
    let start = ShrinkStart {
        ts: now(),
        function,
    };
    if SHRINK_START.insert(&pid, &start, 0).is_err() {
        bump(&STATS, STAT_MAP_FULL);
    }
    0
}

/// `shr->scan_objects`, for the tp_btf and raw_tp rungs (their argument is the shrinker).
#[inline(always)]
fn scan_function(shrinker: *const u8) -> i32 {
    let offset = config().shrinker_scan_objects as usize;
    // SAFETY: bpf_probe_read_kernel validates the address.
    match unsafe { bpf_probe_read_kernel(shrinker.wrapping_add(offset) as *const u64) } {
        Ok(function) => on_slab_start(function),
        Err(_) => read_error(),
    }
}

#[inline(always)]
fn on_slab_end(freed: i64) -> i32 {
    let ts = now();
    let pid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: plain data read from a map value.
    let Some(start) = SHRINK_START.get_ptr(pid).map(|s| unsafe { *s }) else {
        return 0;
    };
    let _ = SHRINK_START.remove(&pid);
    let took = ts.saturating_sub(start.ts);
    let rec = match SHRINKERS.get_ptr_mut(&start.function) {
        Some(r) => r,
        None => {
            let _ = SHRINKERS.insert(&start.function, &ShrinkerStats::default(), 0);
            match SHRINKERS.get_ptr_mut(&start.function) {
                Some(r) => r,
                None => {
                    bump(&STATS, STAT_MAP_FULL);
                    return 0;
                }
            }
        }
    };
    // SAFETY: per-CPU value, only touched on this CPU.
    unsafe {
        (*rec).calls += 1;
        (*rec).total_ns += took;
        if took > (*rec).max_ns {
            (*rec).max_ns = took;
        }
        if freed > 0 {
            (*rec).freed += freed as u64;
        }
    }
    0
}

#[btf_tracepoint(function = "mm_shrink_slab_start")]
pub fn slab_start_btf(ctx: BtfTracePointContext) -> i32 {
    scan_function(ctx.arg(0))
}

#[raw_tracepoint(tracepoint = "mm_shrink_slab_start")]
pub fn slab_start_raw(ctx: RawTracePointContext) -> i32 {
    scan_function(ctx.arg(0))
}

#[tracepoint(category = "vmscan", name = "mm_shrink_slab_start")]
pub fn slab_start_tp(ctx: TracePointContext) -> i32 {
    // SAFETY: offset from this tracepoint's format file.
    match unsafe { ctx.read_at::<u64>(config().tp_slab_shrink as usize) } {
        Ok(function) => on_slab_start(function),
        Err(_) => read_error(),
    }
}

// TP_PROTO(struct shrinker *shr, int nid, int shrinker_retval, long unused, long new, long total)
#[btf_tracepoint(function = "mm_shrink_slab_end")]
pub fn slab_end_btf(ctx: BtfTracePointContext) -> i32 {
    on_slab_end(ctx.arg::<u64>(2) as i32 as i64)
}

#[raw_tracepoint(tracepoint = "mm_shrink_slab_end")]
pub fn slab_end_raw(ctx: RawTracePointContext) -> i32 {
    on_slab_end(ctx.arg::<u64>(2) as i32 as i64)
}

#[tracepoint(category = "vmscan", name = "mm_shrink_slab_end")]
pub fn slab_end_tp(ctx: TracePointContext) -> i32 {
    // SAFETY: offset from this tracepoint's format file.
    match unsafe { ctx.read_at::<i32>(config().tp_slab_retval as usize) } {
        Ok(freed) => on_slab_end(freed as i64),
        Err(_) => read_error(),
    }
}

// ---- OOM kills ------------------------------------------------------------------------------

/// oom:mark_victim's prototype changed (int pid → task_struct *, uid), so only the classic
/// tracepoint, whose format file names the fields on every kernel.
#[tracepoint(category = "oom", name = "mark_victim")]
pub fn mark_victim_tp(ctx: TracePointContext) -> i32 {
    let config = config();
    // SAFETY: offset from this tracepoint's format file.
    let Ok(victim) = (unsafe { ctx.read_at::<u32>(config.tp_victim_pid as usize) }) else {
        return read_error();
    };
    let mut victim_comm = [0u8; 16];
    if config.tp_victim_comm != 0 {
        // __data_loc: the low 16 bits are the string's offset in the record.
        // SAFETY: offsets from the record itself, inside the record.
        if let Ok(loc) = unsafe { ctx.read_at::<u32>(config.tp_victim_comm as usize) } {
            let at = (loc & 0xffff) as usize;
            if let Ok(comm) = unsafe { ctx.read_at::<[u8; 16]>(at) } {
                victim_comm = comm;
            }
        }
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let kill = OomKill {
        ts: now(),
        trigger_tgid: (pid_tgid >> 32) as u32,
        trigger_pid: pid_tgid as u32,
        victim_comm,
        trigger_comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if OOMS.insert(&victim, &kill, 0).is_err() {
        bump(&STATS, STAT_MAP_FULL);
    }
    0
}

//! wqtop's kernel side. workqueue_queue_work stamps the work item (`QUEUED`, by its
//! `work_struct *`) with the time and workqueue name, and counts its queuer — the task, or the
//! softirq/hardirq/NMI context read from this CPU's preempt count — in `QUEUERS`.
//! workqueue_execute_start counts the run per (function, workqueue) in `FUNCS` (queue latency
//! from the stamp) and notes the worker's open run in `RUNNING` (by tid: a work function may
//! free its own work_struct, so execute_end's pointer is not a key); workqueue_execute_end
//! closes it into `FUNCS` and `WORKERS`. Totals are per-CPU hash maps: no atomics. Stamps
//! and open runs are cleared in place (time 0), not deleted: the same work_structs and
//! workers come back, and an LRU element allocation plus a delete per event cost more than
//! the rest of the program.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use tracer_common::{
    TASK_COMM_LEN,
    hist::{LOG2_SLOTS, Log2Hist, log2_slot},
    stats::{STAT_MAP_FULL, STAT_READ_ERRORS},
    wqtop::{
        CTX_HARDIRQ, CTX_NMI, CTX_SOFTIRQ, CTX_TASK, CTX_UNKNOWN, FUNCS_ENTRIES, FuncKey,
        FuncStats, HIST_LATENCY, HIST_RUN, HISTS_ENTRIES, PREEMPT_HARDIRQ_MASK, PREEMPT_NMI_MASK,
        PREEMPT_SOFTIRQ_OFFSET, QUEUED_ENTRIES, QUEUERS_ENTRIES, Queued, QueuerKey, QueuerStats,
        RUNNING_ENTRIES, Running, WORKERS_ENTRIES, WQ_NAME_LEN, WorkerKey, WorkerStats, WqConfig,
        WqHistKey,
    },
};
use tracer_ebpf::{stats::bump, task::current_in_cgroup};

tracer_ebpf::license!();
tracer_ebpf::stats_map!();

tracer_ebpf::loader_config!(WQ_CONFIG: WqConfig = WqConfig::DEFAULT);

#[map]
static QUEUED: LruHashMap<u64, Queued> = LruHashMap::with_max_entries(QUEUED_ENTRIES, 0);

#[map]
static RUNNING: LruHashMap<u32, Running> = LruHashMap::with_max_entries(RUNNING_ENTRIES, 0);

#[map]
static FUNCS: PerCpuHashMap<FuncKey, FuncStats> = PerCpuHashMap::with_max_entries(FUNCS_ENTRIES, 0);

#[map]
static QUEUERS: PerCpuHashMap<QueuerKey, QueuerStats> =
    PerCpuHashMap::with_max_entries(QUEUERS_ENTRIES, 0);

#[map]
static WORKERS: PerCpuHashMap<WorkerKey, WorkerStats> =
    PerCpuHashMap::with_max_entries(WORKERS_ENTRIES, 0);

#[map]
static HISTS: PerCpuHashMap<WqHistKey, Log2Hist> =
    PerCpuHashMap::with_max_entries(HISTS_ENTRIES, 0);

/// A zeroed histogram to insert from.
#[map]
static ZERO: PerCpuArray<Log2Hist> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the address of its preempt count once found (0: not yet; 1: not found).
#[map]
static PREEMPT_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel validates the address.
    unsafe { bpf_probe_read_kernel((base as *const u8).wrapping_add(offset as usize) as *const T) }
        .ok()
}

// ---- the queuer's context -------------------------------------------------------------------

/// This CPU's preempt count address: `runqueues` of this CPU is reachable from current
/// (current → se.cfs_rq → rq), and the preempt count is a fixed distance from it in the
/// per-CPU area. Found once per CPU, checked against `rq->cpu`.
#[inline(always)]
fn preempt_count_address() -> Option<u64> {
    let config = config();
    let slot = PREEMPT_COUNT.get_ptr_mut(0)?;
    // SAFETY: per-CPU value from a successful lookup, only touched on this CPU.
    let known = unsafe { *slot };
    if known > 1 {
        return Some(known);
    }
    if known == 1 {
        return None;
    }
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task() };
    let found = read::<u64>(task, config.task_se_offset + config.se_cfs_rq_offset)
        .and_then(|cfs_rq| read::<u64>(cfs_rq, config.cfs_rq_rq_offset))
        .filter(|&rq| {
            // SAFETY: helper without arguments.
            let cpu = unsafe { bpf_get_smp_processor_id() };
            read::<u32>(rq, config.rq_cpu_offset) == Some(cpu)
        })
        .map(|rq| rq.wrapping_add(config.preempt_from_rq as u64));
    // SAFETY: as above.
    unsafe { *slot = found.unwrap_or(1) };
    found
}

#[inline(always)]
fn context() -> u32 {
    if config().preempt_known == 0 {
        return CTX_UNKNOWN;
    }
    let Some(count) = preempt_count_address().and_then(|a| read::<u32>(a, 0)) else {
        return CTX_UNKNOWN;
    };
    if count & PREEMPT_NMI_MASK != 0 {
        CTX_NMI
    } else if count & PREEMPT_HARDIRQ_MASK != 0 {
        CTX_HARDIRQ
    } else if count & PREEMPT_SOFTIRQ_OFFSET != 0 {
        CTX_SOFTIRQ
    } else {
        CTX_TASK
    }
}

// ---- workqueue_queue_work: TP_PROTO(int req_cpu, struct pool_workqueue *pwq,
//      struct work_struct *work) -----------------------------------------------------------

#[btf_tracepoint(function = "workqueue_queue_work")]
pub fn wq_queue_btf(ctx: BtfTracePointContext) -> i32 {
    let pwq: u64 = ctx.arg(1);
    let work: u64 = ctx.arg(2);
    queue_from_pwq(pwq, work)
}

#[raw_tracepoint(tracepoint = "workqueue_queue_work")]
pub fn wq_queue_raw(ctx: RawTracePointContext) -> i32 {
    let pwq: u64 = ctx.arg(1);
    let work: u64 = ctx.arg(2);
    queue_from_pwq(pwq, work)
}

#[inline(always)]
fn queue_from_pwq(pwq: u64, work: u64) -> i32 {
    let config = config();
    let Some(function) = read::<u64>(work, config.work_func_offset) else {
        bump(&STATS, STAT_READ_ERRORS);
        return 0;
    };
    let mut wq = [0u8; WQ_NAME_LEN];
    if let Some(wq_ptr) = read::<u64>(pwq, config.pwq_wq_offset) {
        let name = (wq_ptr as *const u8).wrapping_add(config.wq_name_offset as usize);
        // SAFETY: the helper checks the address.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(name, &mut wq) };
    }
    on_queue(work, function, &wq)
}

#[tracepoint(category = "workqueue", name = "workqueue_queue_work")]
pub fn wq_queue_tp(ctx: TracePointContext) -> i32 {
    let config = config();
    // SAFETY: offsets from this tracepoint's format file.
    let fields = unsafe {
        (
            ctx.read_at::<u64>(config.tp_queue_work_offset as usize),
            ctx.read_at::<u64>(config.tp_queue_function_offset as usize),
        )
    };
    let (Ok(work), Ok(function)) = fields else {
        bump(&STATS, STAT_READ_ERRORS);
        return 0;
    };
    let mut wq = [0u8; WQ_NAME_LEN];
    let name = if config.tp_queue_wq_is_string != 0 {
        // __data_loc: the low 16 bits are the string's offset from the start of the record.
        // SAFETY: as above.
        unsafe { ctx.read_at::<u32>(config.tp_queue_wq_offset as usize) }
            .ok()
            .map(|loc| (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize))
    } else {
        // SAFETY: as above.
        unsafe { ctx.read_at::<u64>(config.tp_queue_wq_offset as usize) }
            .ok()
            .map(|wq_ptr| (wq_ptr as *const u8).wrapping_add(config.wq_name_offset as usize))
    };
    if let Some(name) = name {
        // SAFETY: the helper checks the address.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(name, &mut wq) };
    }
    on_queue(work, function, &wq)
}

#[inline(always)]
fn on_queue(work: u64, function: u64, wq: &[u8; WQ_NAME_LEN]) -> i32 {
    let config = config();
    let context = context();
    let pid_tgid = bpf_get_current_pid_tgid();
    let in_task = context == CTX_TASK || context == CTX_UNKNOWN;
    let (tgid, pid) = if in_task {
        ((pid_tgid >> 32) as u32, pid_tgid as u32)
    } else {
        (0, 0)
    };
    let comm = if in_task {
        bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN])
    } else {
        [0; TASK_COMM_LEN]
    };
    if config.queuer_filter != 0 {
        // The filters name a task: work queued from interrupt context never matches.
        if !in_task
            || (config.tgid != 0 && tgid != config.tgid)
            || !config.comm.matches(&comm)
            || !current_in_cgroup()
        {
            return 0;
        }
    }
    // Most work items are queued again and again from the same work_struct: stamping the
    // entry in place spares the LRU map's element allocation (and execute_start's delete),
    // which were half of this tool's kernel time.
    let ts = now();
    if let Some(queued) = QUEUED.get_ptr_mut(&work) {
        // SAFETY: a value from a successful lookup. A work item is pending once at a time;
        // an execute_start of its previous queueing racing on another CPU may take this
        // stamp as its own, as it could with insert and delete.
        unsafe {
            (*queued).queued_ns = ts;
            (*queued).wq = *wq;
        }
    } else if QUEUED
        .insert(
            &work,
            &Queued {
                queued_ns: ts,
                wq: *wq,
            },
            0,
        )
        .is_err()
    {
        bump(&STATS, STAT_MAP_FULL);
    }
    let key = QueuerKey {
        function,
        tgid,
        pid,
        context,
        _reserved: 0,
        // SAFETY: helper without arguments.
        cgroup: if in_task && config.with_cgroup != 0 {
            unsafe { bpf_get_current_cgroup_id() }
        } else {
            0
        },
    };
    if let Some(stats) = QUEUERS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value from a successful lookup.
        unsafe { (*stats).queued += 1 };
    } else if QUEUERS
        .insert(&key, &QueuerStats { queued: 1, comm }, 0)
        .is_err()
    {
        bump(&STATS, STAT_MAP_FULL);
    }
    0
}

// ---- workqueue_execute_start: TP_PROTO(struct work_struct *work) ------------------------------

#[btf_tracepoint(function = "workqueue_execute_start")]
pub fn wq_start_btf(ctx: BtfTracePointContext) -> i32 {
    let work: u64 = ctx.arg(0);
    start_from_work(work)
}

#[raw_tracepoint(tracepoint = "workqueue_execute_start")]
pub fn wq_start_raw(ctx: RawTracePointContext) -> i32 {
    let work: u64 = ctx.arg(0);
    start_from_work(work)
}

#[inline(always)]
fn start_from_work(work: u64) -> i32 {
    match read::<u64>(work, config().work_func_offset) {
        Some(function) => on_start(work, function),
        None => {
            bump(&STATS, STAT_READ_ERRORS);
            0
        }
    }
}

#[tracepoint(category = "workqueue", name = "workqueue_execute_start")]
pub fn wq_start_tp(ctx: TracePointContext) -> i32 {
    let config = config();
    // SAFETY: offsets from this tracepoint's format file.
    let fields = unsafe {
        (
            ctx.read_at::<u64>(config.tp_start_work_offset as usize),
            ctx.read_at::<u64>(config.tp_start_function_offset as usize),
        )
    };
    match fields {
        (Ok(work), Ok(function)) => on_start(work, function),
        _ => {
            bump(&STATS, STAT_READ_ERRORS);
            0
        }
    }
}

#[inline(always)]
fn on_start(work: u64, function: u64) -> i32 {
    let config = config();
    let ts = now();
    // The stamp is consumed by zeroing it in place (see on_queue); the entry stays for the
    // next queueing of the same work_struct, and the LRU evicts those never queued again.
    let queued = QUEUED.get_ptr_mut(&work).and_then(|entry| {
        // SAFETY: a value from a successful lookup, copied out before it is cleared.
        unsafe {
            let value = *entry;
            (*entry).queued_ns = 0;
            (value.queued_ns != 0).then_some(value)
        }
    });
    if queued.is_none() && config.queuer_filter != 0 {
        // Not queued by the task the filters name (or queued before we attached).
        return 0;
    }
    let wq = queued.map(|q| q.wq).unwrap_or([0; WQ_NAME_LEN]);
    let latency = queued.map(|q| ts.saturating_sub(q.queued_ns));
    let tid = bpf_get_current_pid_tgid() as u32;
    // A worker's entry is reused for its every run (start_ns 0: none open).
    if let Some(running) = RUNNING.get_ptr_mut(&tid) {
        // SAFETY: a value from a successful lookup; only this worker's programs touch it.
        unsafe {
            (*running).start_ns = ts;
            (*running).function = function;
            (*running).wq = wq;
        }
    } else if RUNNING
        .insert(
            &tid,
            &Running {
                start_ns: ts,
                function,
                wq,
            },
            0,
        )
        .is_err()
    {
        bump(&STATS, STAT_MAP_FULL);
    }
    let key = FuncKey { function, wq };
    let (waited, latency_ns) = match latency {
        Some(ns) => (1, ns),
        None => (0, 0),
    };
    if let Some(stats) = FUNCS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value from a successful lookup.
        unsafe {
            (*stats).runs += 1;
            (*stats).waited += waited;
            (*stats).latency_ns += latency_ns;
            if latency_ns > (*stats).max_latency_ns {
                (*stats).max_latency_ns = latency_ns;
            }
        }
    } else {
        let first = FuncStats {
            runs: 1,
            waited,
            latency_ns,
            max_latency_ns: latency_ns,
            ..FuncStats::default()
        };
        if FUNCS.insert(&key, &first, 0).is_err() {
            bump(&STATS, STAT_MAP_FULL);
        }
    }
    if config.hists != 0
        && let Some(ns) = latency
    {
        record(function, HIST_LATENCY, ns);
    }
    0
}

// ---- workqueue_execute_end --------------------------------------------------------------------

#[btf_tracepoint(function = "workqueue_execute_end")]
pub fn wq_end_btf(_ctx: BtfTracePointContext) -> i32 {
    on_end()
}

#[raw_tracepoint(tracepoint = "workqueue_execute_end")]
pub fn wq_end_raw(_ctx: RawTracePointContext) -> i32 {
    on_end()
}

#[tracepoint(category = "workqueue", name = "workqueue_execute_end")]
pub fn wq_end_tp(_ctx: TracePointContext) -> i32 {
    on_end()
}

#[inline(always)]
fn on_end() -> i32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(entry) = RUNNING.get_ptr_mut(&tid) else {
        return 0;
    };
    // SAFETY: a value from a successful lookup, copied out before the run is closed.
    let running = unsafe {
        let value = *entry;
        (*entry).start_ns = 0;
        value
    };
    if running.start_ns == 0 {
        return 0;
    }
    let ns = now().saturating_sub(running.start_ns);
    let key = FuncKey {
        function: running.function,
        wq: running.wq,
    };
    if let Some(stats) = FUNCS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value from a successful lookup.
        unsafe {
            (*stats).ended += 1;
            (*stats).run_ns += ns;
            if ns > (*stats).max_run_ns {
                (*stats).max_run_ns = ns;
            }
        }
    } else {
        // execute_start ran on another CPU (an unbound worker migrated while it ran).
        let first = FuncStats {
            ended: 1,
            run_ns: ns,
            max_run_ns: ns,
            ..FuncStats::default()
        };
        if FUNCS.insert(&key, &first, 0).is_err() {
            bump(&STATS, STAT_MAP_FULL);
        }
    }
    let worker = WorkerKey {
        function: running.function,
        tid,
        _reserved: 0,
    };
    if let Some(stats) = WORKERS.get_ptr_mut(&worker) {
        // SAFETY: per-CPU value from a successful lookup.
        unsafe {
            (*stats).runs += 1;
            (*stats).run_ns += ns;
        }
    } else if WORKERS
        .insert(
            &worker,
            &WorkerStats {
                runs: 1,
                run_ns: ns,
            },
            0,
        )
        .is_err()
    {
        bump(&STATS, STAT_MAP_FULL);
    }
    if config().hists != 0 {
        record(running.function, HIST_RUN, ns);
    }
    0
}

#[inline(always)]
fn record(function: u64, kind: u32, ns: u64) {
    let key = WqHistKey {
        function,
        kind,
        _reserved: 0,
    };
    // Microseconds, the unit wqtop prints.
    let slot = log2_slot(ns / 1000) as usize;
    if slot >= LOG2_SLOTS {
        return;
    }
    if let Some(hist) = HISTS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value from a successful lookup; slot bounds-checked.
        unsafe { (*hist).slots[slot] += 1 };
        return;
    }
    // A new function: insert an empty histogram from ZERO (512 bytes do not fit on the BPF
    // stack), then count into it.
    let Some(zero) = ZERO.get(0) else { return };
    let _ = HISTS.insert(&key, zero, 0);
    if let Some(hist) = HISTS.get_ptr_mut(&key) {
        // SAFETY: as above.
        unsafe { (*hist).slots[slot] += 1 };
    } else {
        bump(&STATS, STAT_MAP_FULL);
    }
}

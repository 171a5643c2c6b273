//! biotop's kernel side. A request is keyed by (device, sector) from the `block:` records, so
//! the same programs work on every kernel without reading `struct request`:
//! block_io_start (6.5+, in the submitter's context) or else block_rq_insert charges it to the
//! task running then; block_rq_issue stamps the issue (and charges a request nobody charged:
//! one issued directly, without insert, by its submitter); block_rq_complete adds it to its
//! owner's row and the device's histogram. The jbd2 view counts commits with their phase times
//! (jbd2_run_stats) and who opens journal handles (jbd2_handle_start) and fsyncs
//! (ext4_sync_file_enter).
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::bpf_probe_read_kernel,
    },
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuHashMap},
    programs::TracePointContext,
};
use tracer_common::{
    biotop::{
        BiotopConfig, CommitStats, DEV_ENTRIES, IO_ENTRIES, IoKey, IoStats, PENDING_ENTRIES,
        Pending, RequestKey, RqFields, RqHead, TASK_ENTRIES, TaskKey, rw_of,
    },
    hist::{LOG2_SLOTS, Log2Hist, log2_slot},
    stats::{STAT_EVENTS, STAT_MAP_FULL, STAT_READ_ERRORS},
};
use tracer_ebpf::{stats::bump, task::current_in_cgroup};

tracer_ebpf::license!();
tracer_ebpf::stats_map!();

tracer_ebpf::loader_config!(BIOTOP_CONFIG: BiotopConfig = BiotopConfig::DEFAULT);

#[map]
static PENDING: LruHashMap<RequestKey, Pending> = LruHashMap::with_max_entries(PENDING_ENTRIES, 0);

#[map]
static IO: PerCpuHashMap<IoKey, IoStats> = PerCpuHashMap::with_max_entries(IO_ENTRIES, 0);

#[map]
static LATENCY: PerCpuHashMap<u32, Log2Hist> = PerCpuHashMap::with_max_entries(DEV_ENTRIES, 0);

#[map]
static COMMITS: PerCpuHashMap<u32, CommitStats> = PerCpuHashMap::with_max_entries(DEV_ENTRIES, 0);

#[map]
static HANDLES: PerCpuHashMap<TaskKey, u64> = PerCpuHashMap::with_max_entries(TASK_ENTRIES, 0);

#[map]
static FSYNCS: PerCpuHashMap<TaskKey, u64> = PerCpuHashMap::with_max_entries(TASK_ENTRIES, 0);

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// A field of the record, read into a zeroed local. `TracePointContext::read_at` reads into
/// uninitialised memory, so the value of a failed read is undefined and LLVM may load it (or
/// a stale register) on paths where it is then discarded: 5.10's verifier refuses the read of
/// uninitialised stack, 6.12's the stale register. Callers count a failure once
/// (`read_failed`) and give up.
#[inline(always)]
fn read<T: Copy + Default>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    let mut value = T::default();
    // SAFETY: the helper checks the source address and writes at most size_of::<T>() bytes
    // into `value`; the offset comes from the tracepoint's format file.
    let ret = unsafe {
        bpf_probe_read_kernel(
            (&mut value as *mut T).cast::<c_void>(),
            size_of::<T>() as u32,
            ctx.as_ptr()
                .cast::<u8>()
                .wrapping_add(offset as usize)
                .cast::<c_void>(),
        )
    };
    if ret == 0 { Some(value) } else { None }
}

#[inline(always)]
fn read_failed() -> i32 {
    bump(&STATS, STAT_READ_ERRORS);
    0
}

/// The record's fixed head, read with plain loads (the verifier checks constant-offset reads
/// of a tracepoint's record; a helper call per field cost about as much as the rest of the
/// program), when the loader found the usual layout.
#[inline(always)]
fn head(ctx: &TracePointContext) -> Option<&RqHead> {
    if config().rq_head == 0 {
        return None;
    }
    // SAFETY: the record starts with RqHead's layout (checked by the loader against the format
    // file); the reads are at constant offsets into the tracepoint's record.
    Some(unsafe { &*ctx.as_ptr().cast::<RqHead>() })
}

/// The request's key (None: a field could not be read).
#[inline(always)]
fn request(ctx: &TracePointContext, fields: &RqFields) -> Option<RequestKey> {
    if let Some(head) = head(ctx) {
        return Some(RequestKey {
            dev: head.dev,
            _pad: 0,
            sector: head.sector,
        });
    }
    let dev: u32 = read(ctx, fields.dev)?;
    let sector: u64 = read(ctx, fields.sector)?;
    Some(RequestKey {
        dev,
        _pad: 0,
        sector,
    })
}

/// Whether the request is on the device we watch (all, without --device).
#[inline(always)]
fn watched(key: &RequestKey) -> bool {
    let want = config().dev;
    want == 0 || key.dev == want
}

#[inline(always)]
fn current() -> (u32, u32, [u8; 16]) {
    let id = bpf_get_current_pid_tgid();
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    ((id >> 32) as u32, id as u32, comm)
}

/// Charges the request to the running task (queue time = now).
#[inline(always)]
fn charge(key: &RequestKey, ts: u64, issued: bool) {
    // `--cgroup`: a request queued by a task outside it is never pending, so never counted
    // (as `-p` drops it at completion); the queuer is current here.
    if !current_in_cgroup() {
        return;
    }
    let (tgid, pid, comm) = current();
    let pending = Pending {
        queue_ns: ts,
        issue_ns: if issued { ts } else { 0 },
        tgid,
        pid,
        comm,
    };
    if PENDING.insert(key, &pending, 0).is_err() {
        bump(&STATS, STAT_MAP_FULL);
    }
}

#[tracepoint(category = "block", name = "block_io_start")]
pub fn biotop_io_start(ctx: TracePointContext) -> i32 {
    let Some(key) = request(&ctx, &config().io_start) else {
        return read_failed();
    };
    if watched(&key) {
        charge(&key, now(), false);
    }
    0
}

#[tracepoint(category = "block", name = "block_rq_insert")]
pub fn biotop_rq_insert(ctx: TracePointContext) -> i32 {
    let Some(key) = request(&ctx, &config().insert) else {
        return read_failed();
    };
    // A requeued request is inserted again: it keeps its owner and first queue time.
    // SAFETY: read-only lookup.
    if watched(&key) && unsafe { PENDING.get(&key) }.is_none() {
        charge(&key, now(), false);
    }
    0
}

#[tracepoint(category = "block", name = "block_rq_issue")]
pub fn biotop_rq_issue(ctx: TracePointContext) -> i32 {
    let Some(key) = request(&ctx, &config().issue) else {
        return read_failed();
    };
    if !watched(&key) {
        return 0;
    }
    let ts = now();
    match PENDING.get_ptr_mut(&key) {
        // SAFETY: a value from a successful lookup; a racing completion of the same
        // (device, sector) can only make the latency of that one request wrong.
        Some(pending) => unsafe { (*pending).issue_ns = ts },
        None => charge(&key, ts, true),
    }
    0
}

#[tracepoint(category = "block", name = "block_rq_complete")]
pub fn biotop_rq_complete(ctx: TracePointContext) -> i32 {
    let fields = &config().complete;
    let nr_sector = match head(&ctx) {
        Some(head) => Some(head.nr_sector),
        None => read::<u32>(&ctx, fields.nr_sector),
    };
    let (Some(key), Some(nr_sector), Some(rwbs)) = (
        request(&ctx, fields),
        nr_sector,
        read::<[u8; 8]>(&ctx, fields.rwbs),
    ) else {
        return read_failed();
    };
    if !watched(&key) {
        return 0;
    }
    // SAFETY: the value is copied out before the entry is deleted.
    let Some(pending) = (unsafe { PENDING.get(&key) }).copied() else {
        return 0;
    };
    let _ = PENDING.remove(&key);
    let config = config();
    if config.tgid != 0 && pending.tgid != config.tgid {
        return 0;
    }
    let start = if config.queued != 0 || pending.issue_ns == 0 {
        pending.queue_ns
    } else {
        pending.issue_ns
    };
    let latency = now().saturating_sub(start);
    bump(&STATS, STAT_EVENTS);
    let io = IoKey {
        dev: key.dev,
        tgid: pending.tgid,
        pid: pending.pid,
        rw: rw_of(&rwbs),
        comm: pending.comm,
    };
    let bytes = (nr_sector as u64) << 9;
    if let Some(stats) = IO.get_ptr_mut(&io) {
        // SAFETY: per-CPU value from a successful lookup, touched only on this CPU.
        unsafe {
            (*stats).ios += 1;
            (*stats).bytes += bytes;
            (*stats).latency_ns += latency;
            if latency > (*stats).max_ns {
                (*stats).max_ns = latency;
            }
        }
    } else {
        let first = IoStats {
            ios: 1,
            bytes,
            latency_ns: latency,
            max_ns: latency,
        };
        if IO.insert(&io, &first, 0).is_err() {
            bump(&STATS, STAT_MAP_FULL);
        }
    }
    if config.hist != 0 {
        let slot = log2_slot(latency / 1000) as usize;
        if LATENCY.get_ptr_mut(&key.dev).is_none()
            && LATENCY.insert(&key.dev, &Log2Hist::ZERO, 0).is_err()
        {
            bump(&STATS, STAT_MAP_FULL);
        }
        if let Some(hist) = LATENCY.get_ptr_mut(&key.dev)
            && slot < LOG2_SLOTS
        {
            // SAFETY: per-CPU value from a successful lookup; slot bounds-checked.
            unsafe { (*hist).slots[slot] += 1 };
        }
    }
    0
}

// ---- the jbd2 view --------------------------------------------------------------------------

#[tracepoint(category = "jbd2", name = "jbd2_run_stats")]
pub fn biotop_run_stats(ctx: TracePointContext) -> i32 {
    let f = &config().run_stats;
    let (
        Some(dev),
        Some(running),
        Some(locked),
        Some(flushing),
        Some(logging),
        Some(handles),
        Some(blocks),
        Some(blocks_logged),
    ) = (
        read::<u32>(&ctx, f.dev),
        read::<u64>(&ctx, f.running),
        read::<u64>(&ctx, f.locked),
        read::<u64>(&ctx, f.flushing),
        read::<u64>(&ctx, f.logging),
        read::<u32>(&ctx, f.handle_count),
        read::<u32>(&ctx, f.blocks),
        read::<u32>(&ctx, f.blocks_logged),
    )
    else {
        return read_failed();
    };
    let want = config().dev;
    if want != 0 && dev != want {
        return 0;
    }
    let (handles, blocks, blocks_logged) = (handles as u64, blocks as u64, blocks_logged as u64);
    bump(&STATS, STAT_EVENTS);
    let commit = locked + flushing + logging;
    if COMMITS.get_ptr_mut(&dev).is_none()
        && COMMITS.insert(&dev, &CommitStats::default(), 0).is_err()
    {
        bump(&STATS, STAT_MAP_FULL);
        return 0;
    }
    if let Some(stats) = COMMITS.get_ptr_mut(&dev) {
        // SAFETY: per-CPU value from a successful lookup, touched only on this CPU.
        unsafe {
            (*stats).commits += 1;
            (*stats).running += running;
            (*stats).locked += locked;
            (*stats).flushing += flushing;
            (*stats).logging += logging;
            (*stats).handles += handles;
            (*stats).blocks += blocks;
            (*stats).blocks_logged += blocks_logged;
            if commit > (*stats).max_commit {
                (*stats).max_commit = commit;
            }
        }
    }
    0
}

#[inline(always)]
fn count_task(ctx: &TracePointContext, map: &PerCpuHashMap<TaskKey, u64>, dev_offset: u32) {
    let Some(dev) = read::<u32>(ctx, dev_offset) else {
        read_failed();
        return;
    };
    let config = config();
    if config.dev != 0 && dev != config.dev {
        return;
    }
    let (tgid, pid, comm) = current();
    if config.tgid != 0 && tgid != config.tgid {
        return;
    }
    if !current_in_cgroup() {
        return;
    }
    let key = TaskKey {
        dev,
        tgid,
        pid,
        _pad: 0,
        comm,
    };
    match map.get_ptr_mut(&key) {
        // SAFETY: per-CPU value from a successful lookup, touched only on this CPU.
        Some(count) => unsafe { *count += 1 },
        None => {
            if map.insert(&key, &1, 0).is_err() {
                bump(&STATS, STAT_MAP_FULL);
            }
        }
    }
}

#[tracepoint(category = "jbd2", name = "jbd2_handle_start")]
pub fn biotop_handle_start(ctx: TracePointContext) -> i32 {
    count_task(&ctx, &HANDLES, config().handle_dev);
    0
}

#[tracepoint(category = "ext4", name = "ext4_sync_file_enter")]
pub fn biotop_sync_file(ctx: TracePointContext) -> i32 {
    count_task(&ctx, &FSYNCS, config().sync_dev);
    0
}

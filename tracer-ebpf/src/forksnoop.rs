//! forksnoop's kernel side: `sched_process_fork` through tp_btf, raw_tp or the classic
//! tracepoint (the loader picks the first that attaches), filtered in the kernel, sent as
//! events and/or counted per parent.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
    },
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{PerCpuHashMap, RingBuf},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use tracer_common::{
    forksnoop::{
        FORK_KTHREAD, FORK_TGID_UNKNOWN, FORK_THREAD, ForkConfig, ForkEvent, KIND_PROCESSES,
        KIND_THREADS, PARENT_COUNTS_ENTRIES, ParentCounts, ParentKey,
    },
    stats::{STAT_EVENTS, STAT_LOST, STAT_MAP_FULL, STAT_READ_ERRORS},
    task::{KTHREADD_PID, PF_KTHREAD},
};
use tracer_ebpf::{
    ringbuf::submit_flags,
    stats::bump,
    task::{Task, current_in_cgroup},
};

tracer_ebpf::license!();
tracer_ebpf::stats_map!();

tracer_ebpf::loader_config!(CONFIG: ForkConfig = ForkConfig::DEFAULT);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

const EVENTS_BYTES: u32 = 1024 * 1024;

#[map]
static PARENT_COUNTS: PerCpuHashMap<ParentKey, ParentCounts> =
    PerCpuHashMap::with_max_entries(PARENT_COUNTS_ENTRIES, 0);

/// What we know about the child, depending on the attach mechanism.
struct Child {
    pid: u32,
    tgid: u32,
    flags: u32,
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn forksnoop_tp_btf(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *parent, struct task_struct *child)
    let child: *const u8 = ctx.arg(1);
    on_fork_task(Task::from_btf_arg(child))
}

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn forksnoop_raw_tp(ctx: RawTracePointContext) -> i32 {
    let child: *const u8 = ctx.arg(1);
    on_fork_task(Task::from_ptr(child))
}

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn forksnoop_tp(ctx: TracePointContext) -> i32 {
    // The classic record carries pids and comms only: no task pointer, so no thread group
    // and no task flags. A child of kthreadd is still known to be a kernel thread.
    let offset = config().tp_child_pid_offset as usize;
    // SAFETY: the offset comes from this tracepoint's format file and is inside the record.
    let Ok(pid) = (unsafe { ctx.read_at::<u32>(offset) }) else {
        bump(&STATS, STAT_READ_ERRORS);
        return 0;
    };
    on_fork(Child {
        pid,
        tgid: 0,
        flags: FORK_TGID_UNKNOWN,
    })
}

#[inline(always)]
fn on_fork_task(child: Task) -> i32 {
    let (Some(pid), Some(tgid), Some(task_flags)) = (child.pid(), child.tgid(), child.flags())
    else {
        bump(&STATS, STAT_READ_ERRORS);
        return 0;
    };
    let mut flags = 0;
    if pid != tgid {
        flags |= FORK_THREAD;
    }
    if task_flags & PF_KTHREAD != 0 {
        flags |= FORK_KTHREAD;
    }
    on_fork(Child { pid, tgid, flags })
}

#[inline(always)]
fn on_fork(child: Child) -> i32 {
    let config = config();
    // sched_process_fork fires in the forking task, so "current" is the parent.
    let pid_tgid = bpf_get_current_pid_tgid();
    let parent_tgid = (pid_tgid >> 32) as u32;
    let parent_pid = pid_tgid as u32;
    if config.parent_tgid != 0 && config.parent_tgid != parent_tgid {
        return 0;
    }
    // The parent is current: its cgroup is the forking one (the child starts in it too).
    if !current_in_cgroup() {
        return 0;
    }
    let mut flags = child.flags;
    if parent_tgid == KTHREADD_PID {
        flags |= FORK_KTHREAD;
    }
    if config.kthreads_only != 0 && flags & FORK_KTHREAD == 0 {
        return 0;
    }
    let is_thread = flags & FORK_THREAD != 0;
    if flags & FORK_TGID_UNKNOWN == 0 {
        if config.kind == KIND_THREADS && !is_thread {
            return 0;
        }
        if config.kind == KIND_PROCESSES && is_thread {
            return 0;
        }
    }
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    if !config.comm.matches(&comm) {
        return 0;
    }
    bump(&STATS, STAT_EVENTS);

    if config.count_parents != 0 {
        let tgid = if config.parents_by_comm != 0 {
            0
        } else {
            parent_tgid
        };
        count_parent(tgid, comm, is_thread);
    }
    if config.emit_events != 0 {
        match EVENTS.reserve::<ForkEvent>(0) {
            Some(mut entry) => {
                entry.write(ForkEvent {
                    // SAFETY: plain helper calls without arguments.
                    ts_ns: unsafe { bpf_ktime_get_ns() },
                    parent_tgid,
                    parent_pid,
                    child_tgid: child.tgid,
                    child_pid: child.pid,
                    flags,
                    cpu: unsafe { bpf_get_smp_processor_id() },
                    parent_comm: comm,
                });
                entry.submit(submit_flags(&EVENTS, EVENTS_BYTES as u64 / 4));
            }
            None => bump(&STATS, STAT_LOST),
        }
    }
    0
}

#[inline(always)]
fn count_parent(tgid: u32, comm: [u8; 16], is_thread: bool) {
    let key = ParentKey {
        tgid,
        _reserved: 0,
        comm,
    };
    if let Some(counts) = PARENT_COUNTS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value from a successful lookup, touched only on this CPU.
        unsafe {
            if is_thread {
                (*counts).threads += 1;
            } else {
                (*counts).processes += 1;
            }
        }
        return;
    }
    let first = if is_thread {
        ParentCounts {
            processes: 0,
            threads: 1,
        }
    } else {
        ParentCounts {
            processes: 1,
            threads: 0,
        }
    };
    if PARENT_COUNTS.insert(&key, &first, 0).is_err() {
        bump(&STATS, STAT_MAP_FULL);
    }
}

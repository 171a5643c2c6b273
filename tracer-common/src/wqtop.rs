//! wqtop: workqueue work per function and workqueue — the loader's configuration, the map keys
//! and the per-function, per-queuer and per-worker records.

use crate::{TASK_COMM_LEN, comm::CommFilter};

/// Bytes kept of a workqueue's name (`WQ_NAME_LEN` is 24 before 6.10, 32 since).
pub const WQ_NAME_LEN: usize = 32;

/// The queuer was a task (process or kernel thread) in its own context.
pub const CTX_TASK: u32 = 0;
/// Queued while serving a softirq (the timer softirq for most delayed work).
pub const CTX_SOFTIRQ: u32 = 1;
/// Queued from a hard interrupt handler (device IRQs, hrtimer callbacks).
pub const CTX_HARDIRQ: u32 = 2;
/// Queued from an NMI.
pub const CTX_NMI: u32 = 3;
/// This kernel's preempt count could not be located: the task is the interrupted one.
pub const CTX_UNKNOWN: u32 = 4;

// The kernel's preempt count layout (include/linux/preempt.h, the same since 5.10):
// PREEMPT 0-7, SOFTIRQ 8-15 (bit 8 set while serving a softirq), HARDIRQ 16-19, NMI 20-23.
pub const PREEMPT_SOFTIRQ_OFFSET: u32 = 1 << 8;
pub const PREEMPT_HARDIRQ_MASK: u32 = 0xf << 16;
pub const PREEMPT_NMI_MASK: u32 = 0xf << 20;

/// Which of the two histograms of a function (`-D`).
pub const HIST_LATENCY: u32 = 0;
pub const HIST_RUN: u32 = 1;

/// Filters and offsets the loader sets before load (global `WQ_CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WqConfig {
    /// Only work queued by this process (0: any queuer).
    pub tgid: u32,
    /// Non-zero when `tgid` or `comm` filters the queuer: runs are counted only for work whose
    /// queueing was seen and passed the filter.
    pub queuer_filter: u32,
    pub comm: CommFilter,
    /// Record log2 histograms of queue latency and run time (`-D`).
    pub hists: u32,
    /// `work_struct::func`, `pool_workqueue::wq`, `workqueue_struct::name` (BTF).
    pub work_func_offset: u32,
    pub pwq_wq_offset: u32,
    pub wq_name_offset: u32,
    /// Classic tracepoint records (tracefs formats): workqueue_queue_work's `work`,
    /// `function`, `workqueue`; whether `workqueue` is a `__data_loc char[]` (newer kernels)
    /// or the `workqueue_struct *` (older ones); workqueue_execute_start's `work`, `function`.
    pub tp_queue_work_offset: u32,
    pub tp_queue_function_offset: u32,
    pub tp_queue_wq_offset: u32,
    pub tp_queue_wq_is_string: u32,
    pub tp_start_work_offset: u32,
    pub tp_start_function_offset: u32,
    /// Locating this CPU's preempt count (BTF): current → `task_struct::se` →
    /// `sched_entity::cfs_rq` → `cfs_rq::rq` is this CPU's `runqueues`; `rq::cpu` checks it;
    /// the preempt count is `preempt_from_rq` bytes from it (both are per-CPU variables of
    /// `.data..percpu`). `preempt_known` is 0 when BTF lacks any of these.
    pub task_se_offset: u32,
    pub se_cfs_rq_offset: u32,
    pub cfs_rq_rq_offset: u32,
    pub rq_cpu_offset: u32,
    pub preempt_from_rq: i64,
    pub preempt_known: u32,
    /// Non-zero: record each queuer's cgroup id (`-G`).
    pub with_cgroup: u32,
}

crate::user_pod!(WqConfig);

impl WqConfig {
    pub const DEFAULT: Self = Self {
        tgid: 0,
        queuer_filter: 0,
        comm: CommFilter::ANY,
        hists: 0,
        work_func_offset: 0,
        pwq_wq_offset: 0,
        wq_name_offset: 0,
        tp_queue_work_offset: 0,
        tp_queue_function_offset: 0,
        tp_queue_wq_offset: 0,
        tp_queue_wq_is_string: 0,
        tp_start_work_offset: 0,
        tp_start_function_offset: 0,
        task_se_offset: 0,
        se_cfs_rq_offset: 0,
        cfs_rq_rq_offset: 0,
        rq_cpu_offset: 0,
        preempt_from_rq: 0,
        preempt_known: 0,
        with_cgroup: 0,
    };
}

/// A queued work item (`QUEUED`, keyed by the `work_struct *`), from queue to execute_start.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queued {
    pub queued_ns: u64,
    pub wq: [u8; WQ_NAME_LEN],
}

crate::user_pod!(Queued);

/// The work a worker thread is running (`RUNNING`, keyed by the worker's tid).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Running {
    pub start_ns: u64,
    pub function: u64,
    pub wq: [u8; WQ_NAME_LEN],
}

crate::user_pod!(Running);

/// Key of `FUNCS`: a work function on one workqueue (an all-zero name: queued before attach).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FuncKey {
    pub function: u64,
    pub wq: [u8; WQ_NAME_LEN],
}

crate::user_pod!(FuncKey);

/// Running totals of one `FuncKey` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuncStats {
    /// workqueue_execute_start events.
    pub runs: u64,
    /// Runs that ended (execute_end seen) and their summed start → end time.
    pub ended: u64,
    pub run_ns: u64,
    pub max_run_ns: u64,
    /// Runs whose queueing was seen, and their summed queue → start latency.
    pub waited: u64,
    pub latency_ns: u64,
    pub max_latency_ns: u64,
}

crate::user_pod!(FuncStats);

/// Key of `QUEUERS`: who queued a function (pid and tgid 0 outside task context).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QueuerKey {
    pub function: u64,
    pub tgid: u32,
    pub pid: u32,
    /// One of `CTX_*`.
    pub context: u32,
    pub _reserved: u32,
    /// The queuing task's cgroup v2 id when it queued (`WqConfig::with_cgroup`, task context
    /// only; else 0): `-G` names the cgroup of a task that exited before the report.
    pub cgroup: u64,
}

crate::user_pod!(QueuerKey);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuerStats {
    pub queued: u64,
    pub comm: [u8; TASK_COMM_LEN],
}

crate::user_pod!(QueuerStats);

/// Key of `WORKERS`: a function run by one worker thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WorkerKey {
    pub function: u64,
    pub tid: u32,
    pub _reserved: u32,
}

crate::user_pod!(WorkerKey);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub runs: u64,
    pub run_ns: u64,
}

crate::user_pod!(WorkerStats);

/// Key of `HISTS` (`-D`): one function's latency or run-time histogram (`HIST_*`), in µs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WqHistKey {
    pub function: u64,
    pub kind: u32,
    pub _reserved: u32,
}

crate::user_pod!(WqHistKey);

pub const QUEUED_ENTRIES: u32 = 16384;
pub const RUNNING_ENTRIES: u32 = 4096;
pub const FUNCS_ENTRIES: u32 = 4096;
pub const QUEUERS_ENTRIES: u32 = 8192;
pub const WORKERS_ENTRIES: u32 = 8192;
pub const HISTS_ENTRIES: u32 = 2048;

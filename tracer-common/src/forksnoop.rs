//! forksnoop: one event per `sched_process_fork`, and per-parent fork counts.

use crate::{TASK_COMM_LEN, comm::CommFilter};

/// The child shares the parent's thread group (clone with CLONE_THREAD).
pub const FORK_THREAD: u32 = 1 << 0;
/// The child is a kernel thread (PF_KTHREAD, or forked by kthreadd).
pub const FORK_KTHREAD: u32 = 1 << 1;
/// The attach mechanism could not see the child's thread group (classic tracepoint rung):
/// `child_tgid` is 0 and FORK_THREAD is meaningless.
pub const FORK_TGID_UNKNOWN: u32 = 1 << 2;

/// Keep processes and threads.
pub const KIND_ALL: u8 = 0;
/// Keep only new threads.
pub const KIND_THREADS: u8 = 1;
/// Keep only new processes.
pub const KIND_PROCESSES: u8 = 2;

/// Filters and switches the loader sets before load (global `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkConfig {
    /// Only forks made by this thread group (0: any).
    pub parent_tgid: u32,
    /// Offset of `child_pid` in the classic tracepoint record (from its format file).
    pub tp_child_pid_offset: u32,
    /// One of `KIND_*`.
    pub kind: u8,
    /// Keep only kernel-thread children.
    pub kthreads_only: u8,
    /// Send one ring-buffer event per fork.
    pub emit_events: u8,
    /// Count forks per parent in `PARENT_COUNTS`.
    pub count_parents: u8,
    /// Key `PARENT_COUNTS` by comm alone (tgid 0): bounded by the number of distinct commands,
    /// for a long-running exporter that must not fill the map with every parent that forked.
    pub parents_by_comm: u8,
    pub _reserved: [u8; 3],
    /// Filter on the parent's comm (the child's comm is the same until it execs).
    pub comm: CommFilter,
}

crate::user_pod!(ForkConfig);

impl ForkConfig {
    pub const DEFAULT: Self = Self {
        parent_tgid: 0,
        tp_child_pid_offset: 0,
        kind: KIND_ALL,
        kthreads_only: 0,
        emit_events: 1,
        count_parents: 0,
        parents_by_comm: 0,
        _reserved: [0; 3],
        comm: CommFilter::ANY,
    };
}

/// One fork, as sent through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns).
    pub ts_ns: u64,
    pub parent_tgid: u32,
    pub parent_pid: u32,
    pub child_tgid: u32,
    pub child_pid: u32,
    /// `FORK_*` bits.
    pub flags: u32,
    pub cpu: u32,
    pub parent_comm: [u8; TASK_COMM_LEN],
}

crate::user_pod!(ForkEvent);

/// Key of `PARENT_COUNTS`: who forked.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParentKey {
    pub tgid: u32,
    pub _reserved: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

crate::user_pod!(ParentKey);

/// Value of `PARENT_COUNTS` (per CPU; the loader sums).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParentCounts {
    pub processes: u64,
    pub threads: u64,
}

crate::user_pod!(ParentCounts);

/// Entries of `PARENT_COUNTS`; a fork from a new parent when full is counted in STAT_MAP_FULL.
pub const PARENT_COUNTS_ENTRIES: u32 = 10240;

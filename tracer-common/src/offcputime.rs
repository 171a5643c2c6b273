//! offcputime: time tasks spend blocked (switched out), summed in the kernel per task and
//! (kernel stack, user stack) at the moment they left the CPU.

use crate::comm::CommFilter;

/// Filters the loader sets before load (global `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffcpuConfig {
    /// Only this thread group (0: any).
    pub tgid: u32,
    /// Only this thread (0: any).
    pub tid: u32,
    /// Ignore blocks shorter than this (ns).
    pub min_ns: u64,
    /// Ignore blocks longer than this (ns; u64::MAX: no limit).
    pub max_ns: u64,
    pub kernel_stacks: u8,
    pub user_stacks: u8,
    /// Keep only kernel threads.
    pub kthreads_only: u8,
    /// Keep only user tasks.
    pub user_only: u8,
    pub _reserved: [u8; 4],
    pub comm: CommFilter,
}

crate::user_pod!(OffcpuConfig);

impl OffcpuConfig {
    pub const DEFAULT: Self = Self {
        tgid: 0,
        tid: 0,
        min_ns: 1000,
        max_ns: u64::MAX,
        kernel_stacks: 1,
        user_stacks: 1,
        kthreads_only: 0,
        user_only: 0,
        _reserved: [0; 4],
        comm: CommFilter::ANY,
    };
}

/// The blocked task is a kernel thread.
pub const OFFCPU_KTHREAD: u32 = 1 << 0;

/// Key of `OFFCPU`: who was blocked, and where (flags: `OFFCPU_*`).
pub type OffcpuKey = crate::stacks::TaskStackKey;

/// Value of `OFFCPU` (per CPU: the CPU the task came back on; the loader sums).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffcpuValue {
    /// Total blocked nanoseconds.
    pub total_ns: u64,
    /// Number of blocks.
    pub count: u64,
}

crate::user_pod!(OffcpuValue);

/// What a task left behind when it was switched out (value of `START`, keyed by tid).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SwitchOut {
    pub ts_ns: u64,
    pub key: OffcpuKey,
}

crate::user_pod!(SwitchOut);

/// Entries of `OFFCPU` and `START` (an LRU map: tasks blocked at once, with headroom).
pub const OFFCPU_ENTRIES: u32 = 16384;
pub const START_ENTRIES: u32 = 32768;

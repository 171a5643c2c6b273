//! profile / kstacks: on-CPU samples from a perf event, counted in the kernel per task and
//! (kernel stack, user stack) pair.

use crate::comm::CommFilter;

/// Keep samples whatever the CPU was doing.
pub const IDLE_ANY: u8 = 0;
/// Keep only samples of the idle tasks (pid 0, swapper/N).
pub const IDLE_ONLY: u8 = 1;
/// Drop samples of the idle tasks.
pub const IDLE_EXCLUDE: u8 = 2;

/// The sampled task is a kernel thread (PF_KTHREAD and not an idle task).
pub const SAMPLE_KTHREAD: u32 = 1 << 0;
/// The sample was taken while the CPU was serving a softirq.
pub const SAMPLE_SOFTIRQ: u32 = 1 << 1;

/// Filters and switches the loader sets before load (global `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileConfig {
    /// Only this thread group (0: any).
    pub tgid: u32,
    /// Only this thread (0: any).
    pub tid: u32,
    /// Collect kernel stacks.
    pub kernel_stacks: u8,
    /// Collect user stacks.
    pub user_stacks: u8,
    /// Keep only kernel threads.
    pub kthreads_only: u8,
    /// Keep only samples taken while serving a softirq.
    pub softirq_only: u8,
    /// One of `IDLE_*`.
    pub idle: u8,
    /// Copy user stacks for unwinding in userspace (`--call-graph dwarf`) instead of walking
    /// their frame pointers in the kernel.
    pub copy_user_stacks: u8,
    pub _reserved: [u8; 2],
    pub comm: CommFilter,
}

crate::user_pod!(ProfileConfig);

impl ProfileConfig {
    pub const DEFAULT: Self = Self {
        tgid: 0,
        tid: 0,
        kernel_stacks: 1,
        user_stacks: 1,
        kthreads_only: 0,
        softirq_only: 0,
        idle: IDLE_ANY,
        copy_user_stacks: 0,
        _reserved: [0; 2],
        comm: CommFilter::ANY,
    };
}

/// Key of `COUNTS`: who was on the CPU, and where (flags: `SAMPLE_*`).
pub type SampleKey = crate::stacks::TaskStackKey;

/// Entries of `COUNTS`; a new key when full is counted in STAT_MAP_FULL.
pub const COUNTS_ENTRIES: u32 = 16384;

//! funcgraph: the call tree under one kernel function, from entry and return probes on the
//! root and its callees (kprobe_multi links, each function's id in the BPF cookie).

use crate::{TASK_COMM_LEN, comm::CommFilter};

/// The cookie (function id) of the root function; callees are 1..N.
pub const ROOT_ID: u32 = 0;
/// Frames kept per thread: `--max-depth` is at most this.
pub const MAX_DEPTH: usize = 16;
/// Threads inside the root at once.
pub const THREADS_ENTRIES: u32 = 4096;
/// Functions one run can attach (root and callees): the size of `FUNC_STATS`.
pub const MAX_FUNCTIONS: u32 = 8192;
/// Processes followed with `-p` (the target and the children it forks).
pub const TRACED_ENTRIES: u32 = 4096;
/// Bytes of the `CALLS` ring buffer.
pub const CALLS_RING_BYTES: u32 = 8 * 1024 * 1024;

/// `CallRecord::flags`: calls below this one were lost (a return without its entry, or an
/// entry without its return: probes skipped by the kernel's recursion protection).
pub const CALL_INCOMPLETE: u32 = 1 << 0;

/// STATS slots of this tool past the shared ones: returns whose entry was never seen, and
/// frames closed because their return was never seen.
pub const STAT_ORPHAN_RETURNS: u32 = crate::stats::STAT_SLOTS - 2;
pub const STAT_UNCLOSED_FRAMES: u32 = crate::stats::STAT_SLOTS - 1;

/// Filters and switches the loader sets before load (global `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuncgraphConfig {
    /// Only threads of the processes in `TRACED` (the `-p` target and its descendants).
    pub follow: u8,
    /// Send one record per returning call to `CALLS` (off with `--stats`).
    pub emit_calls: u8,
    /// Sum hits and times per function in `FUNC_STATS`.
    pub sum_stats: u8,
    pub _reserved: u8,
    /// Calls deeper than this (root = depth 0) are followed but not recorded.
    pub max_depth: u32,
    /// `task_struct::stack`: calls made on another stack (hard and soft interrupts on the
    /// CPU's interrupt stack) are left out, as ftrace's funcgraph-irqs off does. 0: kept.
    pub task_stack: u32,
    pub _pad: u32,
    pub comm: CommFilter,
}

crate::user_pod!(FuncgraphConfig);

impl FuncgraphConfig {
    pub const DEFAULT: Self = Self {
        follow: 0,
        emit_calls: 1,
        sum_stats: 0,
        _reserved: 0,
        max_depth: 8,
        task_stack: 0,
        _pad: 0,
        comm: CommFilter::ANY,
    };
}

/// One open call of a thread inside the root.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Frame {
    pub func: u32,
    pub flags: u32,
    pub start_ns: u64,
    /// Time spent in recorded callees (for exclusive time).
    pub children_ns: u64,
}

/// A thread's open calls, root first (`THREADS`, keyed by thread id).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThreadFrames {
    /// Open calls, including those past `MAX_DEPTH` (counted, not kept).
    pub depth: u32,
    pub _pad: u32,
    pub frames: [Frame; MAX_DEPTH],
}

crate::user_pod!(ThreadFrames);

/// One call that returned, sent when it returns: callees arrive before their caller, so a
/// tree is complete when its root's record (depth 0) arrives.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CallRecord {
    pub start_ns: u64,
    pub duration_ns: u64,
    pub retval: u64,
    pub tid: u32,
    pub tgid: u32,
    pub func: u32,
    pub depth: u16,
    pub cpu: u16,
    pub flags: u32,
    pub _pad: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

crate::user_pod!(CallRecord);

/// Per function and CPU (`FUNC_STATS`, indexed by function id): the function profiler.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuncStats {
    pub hits: u64,
    pub total_ns: u64,
    /// Total minus the time in recorded callees.
    pub self_ns: u64,
    /// Sum of squared durations in ns², as 128 bits (low, high).
    pub sq_lo: u64,
    pub sq_hi: u64,
}

crate::user_pod!(FuncStats);

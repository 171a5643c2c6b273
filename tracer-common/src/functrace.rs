//! functrace: one line per call of the kernel functions matching a glob (ftrace's function
//! tracer), from an entry program on one kprobe_multi link, each function's id in the cookie.

use crate::{TASK_COMM_LEN, comm::CommFilter};

/// Processes followed with `-p` (the target and the children it forks).
pub const TRACED_ENTRIES: u32 = 4096;
/// Bytes of the `CALLS` ring buffer.
pub const CALLS_RING_BYTES: u32 = 8 * 1024 * 1024;
/// Functions one run can attach.
pub const MAX_FUNCTIONS: u32 = 8192;

/// Filters the loader sets before load (global `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunctraceConfig {
    /// Only threads of the processes in `TRACED` (the `-p` target and its descendants).
    pub follow: u8,
    pub _pad: [u8; 7],
    pub comm: CommFilter,
}

crate::user_pod!(FunctraceConfig);

impl FunctraceConfig {
    pub const DEFAULT: Self = Self {
        follow: 0,
        _pad: [0; 7],
        comm: CommFilter::ANY,
    };
}

/// One call, sent at its entry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TraceRecord {
    /// CLOCK_MONOTONIC, ns.
    pub ts_ns: u64,
    /// The return address: inside the caller.
    pub caller: u64,
    pub tid: u32,
    pub tgid: u32,
    /// The function's id (the cookie).
    pub func: u32,
    pub cpu: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

crate::user_pod!(TraceRecord);

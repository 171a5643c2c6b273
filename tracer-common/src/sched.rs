//! Scheduler views (runqlat, cpudist, ktop): the one `sched` object's configuration, histogram
//! keys and per-thread accounting records.

use crate::TASK_COMM_LEN;

/// Histograms keyed by nothing: one histogram for everything.
pub const KEY_NONE: u8 = 0;
/// Histograms keyed by process (thread group id).
pub const KEY_PROCESS: u8 = 1;
/// Histograms keyed by thread (pid + comm); `--kthreads` groups these in userspace.
pub const KEY_THREAD: u8 = 2;

/// cpudist measures on-CPU slices (switch-in → switch-out).
pub const CPUDIST_ON_CPU: u8 = 0;
/// cpudist measures off-CPU time (switch-out → switch-in).
pub const CPUDIST_OFF_CPU: u8 = 1;

/// Filters and switches the loader sets before load (global `SCHED_CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedConfig {
    /// Only this thread group (0: any).
    pub tgid: u32,
    /// Byte offset of `task_struct::__state` (`state` before 5.14), from BTF.
    pub state_offset: u32,
    /// Byte offset of `work_struct::func`, from BTF (ktop's workqueue program).
    pub work_func_offset: u32,
    /// Offset of `function` in the classic workqueue_execute_start record, from tracefs.
    pub tp_function_offset: u32,
    /// Histogram values are nanoseconds divided by this (1000: usecs, 1000000: msecs).
    pub unit_div: u64,
    /// One of `KEY_*`.
    pub key_mode: u8,
    /// Only kernel threads (PF_KTHREAD, idle tasks excluded).
    pub kthreads_only: u8,
    /// cpudist: one of `CPUDIST_*`.
    pub cpudist_mode: u8,
    /// cpudist: count the idle tasks (pid 0) too.
    pub include_idle: u8,
    pub _reserved: [u8; 4],
}

crate::user_pod!(SchedConfig);

impl SchedConfig {
    pub const DEFAULT: Self = Self {
        tgid: 0,
        state_offset: 0,
        work_func_offset: 0,
        tp_function_offset: 0,
        unit_div: 1000,
        key_mode: KEY_NONE,
        kthreads_only: 0,
        cpudist_mode: CPUDIST_ON_CPU,
        include_idle: 0,
        _reserved: [0; 4],
    };
}

/// Key of the `HISTS` map (runqlat, cpudist).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HistKey {
    /// tgid (KEY_PROCESS), pid (KEY_THREAD) or 0.
    pub id: u32,
    pub _reserved: u32,
    /// The thread's comm (KEY_THREAD and KEY_PROCESS; zero otherwise).
    pub comm: [u8; TASK_COMM_LEN],
}

crate::user_pod!(HistKey);

/// Entries of `HISTS` when histograms are keyed per process or thread.
pub const HISTS_KEYED_ENTRIES: u32 = 8192;
/// Entries of the wakeup/switch timestamp map (`START`).
pub const START_ENTRIES: u32 = 16384;

/// Key of ktop's `THREADS` map: one record per thread and CPU, so every record is only ever
/// updated by the CPU it names (no atomics needed) and per-CPU sums are exact. The idle task
/// of CPU N is `{pid: 0, cpu: N}`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ThreadKey {
    pub pid: u32,
    pub cpu: u32,
}

crate::user_pod!(ThreadKey);

/// Value of ktop's `THREADS` map: running totals since attach (userspace takes deltas).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadStats {
    /// On-CPU time of closed slices (switch-in → switch-out), ns.
    pub oncpu_ns: u64,
    /// Time spent runnable on the run queue before running, ns.
    pub runq_ns: u64,
    /// Number of run-queue waits measured.
    pub runq_count: u64,
    /// Switches out while blocking (prev_state != TASK_RUNNING and not preempted).
    pub voluntary: u64,
    /// Switches out while still runnable (preempted or yielded).
    pub involuntary: u64,
    /// bpf_ktime_get_ns of the last switch involving this record.
    pub last_ns: u64,
    pub tgid: u32,
    /// `task_struct::flags` (PF_KTHREAD...).
    pub task_flags: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

crate::user_pod!(ThreadStats);

/// ktop's `CPU_STATE` (per-CPU array, one slot): who runs on this CPU since when, so
/// userspace can add the still-open slice to the running thread at each snapshot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuState {
    /// bpf_ktime_get_ns of the last sched_switch on this CPU (0: none seen yet).
    pub since_ns: u64,
    /// The task switched in then.
    pub pid: u32,
    pub _reserved: u32,
    /// Number of sched_switch events on this CPU.
    pub switches: u64,
}

crate::user_pod!(CpuState);

/// Entries of ktop's `THREADS` map (thread × CPU records).
pub const THREADS_ENTRIES: u32 = 16384;

/// Value of ktop's `WORK` map (key: kworker pid): the last work function it ran.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkStats {
    /// Kernel address of `work_struct::func`.
    pub function: u64,
    /// Work items executed (running total).
    pub count: u64,
}

crate::user_pod!(WorkStats);

/// Entries of ktop's `WORK` map.
pub const WORK_ENTRIES: u32 = 4096;

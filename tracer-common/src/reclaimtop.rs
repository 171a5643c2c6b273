//! reclaimtop: memory reclaim from the `vmscan:` tracepoints (and `oom:mark_victim`) — the
//! loader's configuration and the records the kernel side keeps for each report.

use crate::{TASK_COMM_LEN, comm::CommFilter};

/// `task_struct::flags`: the task is a kswapd thread (reclaim it does counts as kswapd's).
pub const PF_KSWAPD: u32 = 0x0002_0000;

/// A stall in direct reclaim (the page allocator reclaiming for the allocating task).
pub const KIND_DIRECT: u32 = 0;
/// A stall in memory-cgroup reclaim (a charge over the cgroup's limit reclaiming from it).
pub const KIND_MEMCG: u32 = 1;

/// Nodes tracked in `NODES` (node ids at or above it are counted in `STAT_MAP_FULL`).
pub const MAX_NODES: u32 = 64;
/// Entries of the per-thread start maps (`STALL_START`, `SHRINK_START`).
pub const START_ENTRIES: u32 = 16384;
/// Entries of `STALLS` (process × kind) between two drains.
pub const STALLS_ENTRIES: u32 = 8192;
/// Entries of `SHRINKERS` (shrinker functions) between two drains.
pub const SHRINKERS_ENTRIES: u32 = 1024;
/// OOM kills kept between two drains.
pub const OOM_ENTRIES: u32 = 256;

/// Filters and field offsets the loader sets before load (global `RECLAIM_CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReclaimConfig {
    /// Only this thread group in the per-process records (0: any).
    pub tgid: u32,
    /// Keep a log2 stall histogram per process (`-D`).
    pub histograms: u32,
    /// Histogram values are nanoseconds divided by this (1000: usecs, 1000000: msecs).
    pub unit_div: u64,
    /// Only these comms in the per-process records.
    pub comm: CommFilter,
    /// `shrinker::scan_objects`, from BTF (tp_btf/raw_tp read it through the shrinker pointer).
    pub shrinker_scan_objects: u32,
    /// Offsets of the classic tracepoints' fields, from their format files (the tracepoint rung).
    pub tp_wake_nid: u32,
    pub tp_sleep_nid: u32,
    pub tp_lru_nid: u32,
    pub tp_lru_scanned: u32,
    pub tp_lru_reclaimed: u32,
    /// `nr_reclaimed` of mm_vmscan_direct_reclaim_end and mm_vmscan_memcg_reclaim_end.
    pub tp_end_reclaimed: u32,
    pub tp_memcg_end_reclaimed: u32,
    /// `shrink` (the scan function) of mm_shrink_slab_start, `retval` (freed) of its end.
    pub tp_slab_shrink: u32,
    pub tp_slab_retval: u32,
    /// `pid` of oom:mark_victim; `comm` (a `__data_loc` string, 0 where absent: before 5.16).
    pub tp_victim_pid: u32,
    pub tp_victim_comm: u32,
}

crate::user_pod!(ReclaimConfig);

impl ReclaimConfig {
    pub const DEFAULT: Self = Self {
        tgid: 0,
        histograms: 0,
        unit_div: 1000,
        comm: CommFilter::ANY,
        shrinker_scan_objects: 0,
        tp_wake_nid: 0,
        tp_sleep_nid: 0,
        tp_lru_nid: 0,
        tp_lru_scanned: 0,
        tp_lru_reclaimed: 0,
        tp_end_reclaimed: 0,
        tp_memcg_end_reclaimed: 0,
        tp_slab_shrink: 0,
        tp_slab_retval: 0,
        tp_victim_pid: 0,
        tp_victim_comm: 0,
    };
}

/// `TOTALS` (per-CPU array, one slot): pages scanned and reclaimed from the inactive LRU lists
/// (mm_vmscan_lru_shrink_inactive), split by who reclaimed as /proc/vmstat splits them
/// (pgscan_kswapd, pgscan_direct; memcg reclaim is only in the cgroup's memory.stat).
/// Running totals.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReclaimTotals {
    pub kswapd_scanned: u64,
    pub kswapd_reclaimed: u64,
    /// Any other task outside memcg reclaim: direct reclaim, khugepaged.
    pub direct_scanned: u64,
    pub direct_reclaimed: u64,
    /// Inside memcg reclaim (a cgroup over its limit; memory.reclaim).
    pub memcg_scanned: u64,
    pub memcg_reclaimed: u64,
}

crate::user_pod!(ReclaimTotals);

/// `NODES[nid]`: that node's kswapd. Only the node's kswapd thread writes its slot, so no
/// atomics. Running totals.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub wakeups: u64,
    /// Closed wake → sleep periods, ns.
    pub awake_ns: u64,
    /// bpf_ktime_get_ns of the wakeup when awake now, else 0.
    pub woke_at_ns: u64,
    pub scanned: u64,
    pub reclaimed: u64,
    /// The kswapd thread's pid (seen at its wakeup).
    pub pid: u32,
    pub _reserved: u32,
}

crate::user_pod!(NodeStats);

/// `STALL_START[pid]`: a thread inside direct or memcg reclaim since `ts`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StallStart {
    pub ts: u64,
    /// `KIND_*`.
    pub kind: u32,
    /// Whether the task passes the `-p`/`--comm` filters (others are only counted in totals).
    pub wanted: u32,
}

crate::user_pod!(StallStart);

/// Key of `STALLS` and `HISTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StallKey {
    pub tgid: u32,
    /// `KIND_*`.
    pub kind: u32,
}

crate::user_pod!(StallKey);

/// Value of `STALLS` (per-CPU hash, drained every report).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StallStats {
    /// Stalls that ended (begin → end).
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// Sum of the end events' nr_reclaimed.
    pub reclaimed: u64,
    /// Pages scanned and reclaimed from the inactive lists during the stalls.
    pub lru_scanned: u64,
    pub lru_reclaimed: u64,
    /// The comm of the last thread that stalled.
    pub comm: [u8; TASK_COMM_LEN],
}

crate::user_pod!(StallStats);

/// Value of `WAKERS` (per-CPU hash keyed by tgid, drained every report): how often a process's
/// allocations woke a sleeping kswapd (mm_vmscan_wakeup_kswapd fires only for a real wakeup).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WakerStats {
    pub wakeups: u64,
    pub comm: [u8; TASK_COMM_LEN],
}

crate::user_pod!(WakerStats);

/// `SHRINK_START[pid]`: a thread inside a shrinker's scan since `ts`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShrinkStart {
    pub ts: u64,
    /// Kernel address of the shrinker's scan function.
    pub function: u64,
}

crate::user_pod!(ShrinkStart);

/// Value of `SHRINKERS` (per-CPU hash keyed by scan function address, drained every report).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShrinkerStats {
    pub calls: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// Objects freed (the scan's return value, summed).
    pub freed: u64,
}

crate::user_pod!(ShrinkerStats);

/// Value of `OOMS` (keyed by the victim's pid): an OOM kill and the task whose allocation
/// triggered it (the current task at oom:mark_victim).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomKill {
    pub ts: u64,
    pub trigger_tgid: u32,
    pub trigger_pid: u32,
    /// Zero when the kernel's record has no comm (then userspace asks /proc).
    pub victim_comm: [u8; TASK_COMM_LEN],
    pub trigger_comm: [u8; TASK_COMM_LEN],
}

crate::user_pod!(OomKill);

//! biotop: block IO charged to the task that issued it, per device, and the ext4 journal
//! (jbd2) view. Classic tracepoints only (`block:`, `jbd2:`, `ext4:`): their records carry the
//! device and sector the kernel side keys requests by, on every kernel, and their field
//! offsets are read from tracefs at load time (`rwbs` grew from 8 to 10 bytes in 6.x).

use crate::TASK_COMM_LEN;

/// Requests between issue and completion that can be tracked at once (an LRU map: a request
/// whose completion was never seen ages out instead of filling it).
pub const PENDING_ENTRIES: u32 = 16384;
/// (device, process, direction, comm) rows per report interval.
pub const IO_ENTRIES: u32 = 8192;
/// Devices with a latency histogram (`-D`), and journals.
pub const DEV_ENTRIES: u32 = 256;
/// (journal, task) rows of handle starts and fsyncs per report interval.
pub const TASK_ENTRIES: u32 = 8192;

/// Directions, from the first op letter of the tracepoint's `rwbs`.
pub const RW_READ: u32 = 0;
pub const RW_WRITE: u32 = 1;
pub const RW_DISCARD: u32 = 2;
/// Flushes and ops without data.
pub const RW_OTHER: u32 = 3;
pub const RW_NAMES: [&str; 4] = ["R", "W", "D", "-"];

/// Where one `block_rq`-class record keeps the fields the programs read (0 size: absent).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RqFields {
    pub dev: u32,
    pub sector: u32,
    pub nr_sector: u32,
    pub rwbs: u32,
}

/// `jbd2:jbd2_run_stats` field offsets (the phase times are `unsigned long` jiffies).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStatsFields {
    pub dev: u32,
    pub running: u32,
    pub locked: u32,
    pub flushing: u32,
    pub logging: u32,
    pub handle_count: u32,
    pub blocks: u32,
    pub blocks_logged: u32,
}

/// The read-only global the loader fills before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BiotopConfig {
    /// Only IO issued by this process (0: all).
    pub tgid: u32,
    /// Only this device, as the kernel's dev_t (major << 20 | minor; 0: all).
    pub dev: u32,
    /// Latency from the queue start (block_io_start or block_rq_insert) instead of issue.
    pub queued: u32,
    /// Record per-device latency histograms (`-D`).
    pub hist: u32,
    /// `block:block_io_start` (6.5+): the request is created, in the submitter's context.
    pub io_start: RqFields,
    /// `block:block_rq_insert`: the request enters a scheduler or dispatch queue.
    pub insert: RqFields,
    pub issue: RqFields,
    pub complete: RqFields,
    pub run_stats: RunStatsFields,
    /// `dev` of `jbd2:jbd2_handle_start` and of `ext4:ext4_sync_file_enter`.
    pub handle_dev: u32,
    pub sync_dev: u32,
    /// 1 when every block record the programs read has dev, sector and nr_sector at the
    /// offsets of [`RqHead`] (every kernel so far): plain loads then replace helper calls.
    pub rq_head: u32,
}

/// The start of every `block_rq`-class record on the kernels seen so far (5.10 to 6.18): the
/// 8-byte common header, then dev, sector and nr_sector. The loader checks it against the
/// format files before saying so in `BiotopConfig::rq_head`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RqHead {
    pub common: u64,
    pub dev: u32,
    pub _pad: u32,
    pub sector: u64,
    pub nr_sector: u32,
}

impl RqHead {
    pub const DEV: u32 = 8;
    pub const SECTOR: u32 = 16;
    pub const NR_SECTOR: u32 = 24;
}

impl BiotopConfig {
    pub const DEFAULT: Self = Self {
        tgid: 0,
        dev: 0,
        queued: 0,
        hist: 0,
        io_start: RqFields {
            dev: 0,
            sector: 0,
            nr_sector: 0,
            rwbs: 0,
        },
        insert: RqFields {
            dev: 0,
            sector: 0,
            nr_sector: 0,
            rwbs: 0,
        },
        issue: RqFields {
            dev: 0,
            sector: 0,
            nr_sector: 0,
            rwbs: 0,
        },
        complete: RqFields {
            dev: 0,
            sector: 0,
            nr_sector: 0,
            rwbs: 0,
        },
        run_stats: RunStatsFields {
            dev: 0,
            running: 0,
            locked: 0,
            flushing: 0,
            logging: 0,
            handle_count: 0,
            blocks: 0,
            blocks_logged: 0,
        },
        handle_dev: 0,
        sync_dev: 0,
        rq_head: 0,
    };
}

/// A request in flight, by where it is on its device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub dev: u32,
    pub _pad: u32,
    pub sector: u64,
}

/// Who a request in flight is charged to, and when it was queued and issued.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// block_io_start / block_rq_insert time (the issue time when neither was seen).
    pub queue_ns: u64,
    /// block_rq_issue time (0: not seen yet).
    pub issue_ns: u64,
    pub tgid: u32,
    pub pid: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

/// One row of the IO table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IoKey {
    pub dev: u32,
    pub tgid: u32,
    pub pid: u32,
    pub rw: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

/// What one row's completions added up to (per CPU; userspace sums, and takes the max).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStats {
    pub ios: u64,
    pub bytes: u64,
    pub latency_ns: u64,
    pub max_ns: u64,
}

/// Commits of one journal (per CPU), the phase times in jiffies as jbd2 keeps them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    pub commits: u64,
    pub running: u64,
    pub locked: u64,
    pub flushing: u64,
    pub logging: u64,
    pub handles: u64,
    pub blocks: u64,
    pub blocks_logged: u64,
    /// The longest locked+flushing+logging of one commit (jiffies).
    pub max_commit: u64,
}

/// A task's journal handle starts or fsyncs on one device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TaskKey {
    pub dev: u32,
    pub tgid: u32,
    pub pid: u32,
    pub _pad: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

crate::user_pod!(
    RqFields,
    RunStatsFields,
    BiotopConfig,
    RequestKey,
    Pending,
    IoKey,
    IoStats,
    CommitStats,
    TaskKey
);

/// The direction of a request from its `rwbs` text: "R", "RA", "WS", "FWS", "DS", "FF", "N".
/// A leading F is a preflush flag; R, W and D appear only as the op.
#[inline(always)]
pub fn rw_of(rwbs: &[u8; 8]) -> u32 {
    let mut i = 0;
    while i < 8 {
        match rwbs[i] {
            b'R' => return RW_READ,
            b'W' => return RW_WRITE,
            b'D' => return RW_DISCARD,
            0 => return RW_OTHER,
            _ => {}
        }
        i += 1;
    }
    RW_OTHER
}

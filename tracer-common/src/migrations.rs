//! migrations: task migrations from `sched:sched_migrate_task`, counted in the kernel per
//! (source CPU, destination CPU) pair and per migrated task; migrations carried out by a
//! CPU stopper thread (migration/N) are also counted under the stopper's kernel stack, which
//! names the stopper work that moved the task (migration_cpu_stop, active_load_balance_cpu_stop).

use crate::{TASK_COMM_LEN, comm::CommFilter};

/// Filters and offsets the loader sets before load (global `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrationsConfig {
    /// Only tasks of this thread group (0: any). At the classic tracepoint rung, whose record
    /// has no thread group, the task whose thread id is this.
    pub tgid: u32,
    /// Byte offset of the task's CPU (`task_struct::cpu`, or `thread_info.cpu` inside it), from
    /// BTF: `sched_migrate_task` fires before the task's CPU changes, so it is the source CPU.
    pub task_cpu_offset: u32,
    /// Offsets in the classic `sched_migrate_task` record, from its tracefs format.
    pub tp_pid_offset: u32,
    pub tp_orig_cpu_offset: u32,
    pub tp_dest_cpu_offset: u32,
    pub tp_comm_offset: u32,
    /// The record's comm is a `__data_loc char[]` (6.x) rather than `char[16]`.
    pub tp_comm_data_loc: u8,
    /// Count stopper-driven migrations under the stopper's kernel stack.
    pub stopper_stacks: u8,
    pub _reserved: [u8; 2],
    pub comm: CommFilter,
}

crate::user_pod!(MigrationsConfig);

impl MigrationsConfig {
    pub const DEFAULT: Self = Self {
        tgid: 0,
        task_cpu_offset: 0,
        tp_pid_offset: 0,
        tp_orig_cpu_offset: 0,
        tp_dest_cpu_offset: 0,
        tp_comm_offset: 0,
        tp_comm_data_loc: 0,
        stopper_stacks: 1,
        _reserved: [0; 2],
        comm: CommFilter::ANY,
    };
}

/// Key of `PAIRS`: one migration direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PairKey {
    pub from_cpu: u32,
    pub to_cpu: u32,
}

crate::user_pod!(PairKey);

/// Key of `TASKS`: the migrated task.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TaskKey {
    /// Thread group id (0 at the classic tracepoint rung, which does not carry it).
    pub tgid: u32,
    pub pid: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

crate::user_pod!(TaskKey);

/// Value of `TASKS` (per CPU: the CPU that ran the tracepoint).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskCounts {
    pub migrations: u64,
    /// Of which carried out by a migration/N stopper thread.
    pub by_stopper: u64,
}

crate::user_pod!(TaskCounts);

/// Entries of `PAIRS` (64 CPUs in every direction).
pub const PAIRS_ENTRIES: u32 = 4096;
/// Entries of `TASKS`.
pub const TASKS_ENTRIES: u32 = 8192;
/// Entries of `STOPPER_WORK` (distinct stopper stacks) and of its stack map.
pub const STOPPER_ENTRIES: u32 = 1024;

/// The comm prefix of the CPU stopper threads (`migration/%u`).
pub const STOPPER_COMM: &[u8; 10] = b"migration/";

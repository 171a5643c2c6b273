//! migrations' kernel side: `sched_migrate_task(p, dest_cpu)` through tp_btf, raw_tp or the
//! classic tracepoint (the loader's ladder picks one). Per event, after the `-p`/`--comm`
//! filters: one per-CPU hash update for the (source, destination) pair and one for the task;
//! only when the current task is a CPU stopper (migration/N), one `bpf_get_stackid` and one
//! more update, so the stopper work that moved the task is known exactly and costs nothing
//! for the migrations the scheduler does inline (wakeups, load balancing in softirq).
//! The source CPU is the task's CPU: the tracepoint fires before set_task_cpu changes it.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_get_current_comm,
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::PerCpuHashMap,
    programs::tracing::StackIdContext,
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use tracer_common::{
    TASK_COMM_LEN,
    migrations::{
        MigrationsConfig, PAIRS_ENTRIES, PairKey, STOPPER_COMM, STOPPER_ENTRIES, TASKS_ENTRIES,
        TaskCounts, TaskKey,
    },
    stats::{STAT_EVENTS, STAT_MAP_FULL, STAT_READ_ERRORS},
};
use tracer_ebpf::{stacks::stack_id, stats::bump, task::Task};

tracer_ebpf::license!();
tracer_ebpf::stats_map!();

tracer_ebpf::loader_config!(CONFIG: MigrationsConfig = MigrationsConfig::DEFAULT);

#[map]
static PAIRS: PerCpuHashMap<PairKey, u64> = PerCpuHashMap::with_max_entries(PAIRS_ENTRIES, 0);

#[map]
static TASKS: PerCpuHashMap<TaskKey, TaskCounts> =
    PerCpuHashMap::with_max_entries(TASKS_ENTRIES, 0);

/// Stopper kernel stack id → migrations it carried out.
#[map]
static STOPPER_WORK: PerCpuHashMap<i32, u64> = PerCpuHashMap::with_max_entries(STOPPER_ENTRIES, 0);

tracer_ebpf::stack_store!(STOPPER_ENTRIES);

/// One migration as the three rungs see it.
struct Migration {
    tgid: u32,
    pid: u32,
    comm: [u8; TASK_COMM_LEN],
    from_cpu: u32,
    to_cpu: u32,
}

#[inline(always)]
fn is_stopper(comm: &[u8; TASK_COMM_LEN]) -> bool {
    for (c, s) in comm.iter().zip(STOPPER_COMM.iter()) {
        if c != s {
            return false;
        }
    }
    true
}

#[inline(always)]
fn on_migrate<C: StackIdContext>(ctx: &C, m: Migration) -> i32 {
    let config = config();
    if config.tgid != 0 && config.tgid != m.tgid && !(m.tgid == 0 && config.tgid == m.pid) {
        return 0;
    }
    if !config.comm.matches(&m.comm) {
        return 0;
    }
    bump(&STATS, STAT_EVENTS);
    let pair = PairKey {
        from_cpu: m.from_cpu,
        to_cpu: m.to_cpu,
    };
    if let Some(count) = PAIRS.get_ptr_mut(&pair) {
        // SAFETY: per-CPU value from a successful lookup, touched only on this CPU.
        unsafe { *count += 1 };
    } else if PAIRS.insert(&pair, &1, 0).is_err() {
        bump(&STATS, STAT_MAP_FULL);
    }
    let current = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
    let by_stopper = is_stopper(&current);
    let key = TaskKey {
        tgid: m.tgid,
        pid: m.pid,
        comm: m.comm,
    };
    if let Some(counts) = TASKS.get_ptr_mut(&key) {
        // SAFETY: as above.
        unsafe {
            (*counts).migrations += 1;
            if by_stopper {
                (*counts).by_stopper += 1;
            }
        }
    } else {
        let fresh = TaskCounts {
            migrations: 1,
            by_stopper: by_stopper.into(),
        };
        if TASKS.insert(&key, &fresh, 0).is_err() {
            bump(&STATS, STAT_MAP_FULL);
        }
    }
    if by_stopper && config.stopper_stacks != 0 {
        let stack = stack_id(ctx, &STACKS, 0, &STATS);
        if let Some(count) = STOPPER_WORK.get_ptr_mut(&stack) {
            // SAFETY: as above.
            unsafe { *count += 1 };
        } else if STOPPER_WORK.insert(&stack, &1, 0).is_err() {
            bump(&STATS, STAT_MAP_FULL);
        }
    }
    0
}

#[inline(always)]
fn from_task<C: StackIdContext>(ctx: &C, task: Task, dest_cpu: u64) -> i32 {
    let (Some(pid), Some(tgid), Some(from_cpu)) =
        (task.pid(), task.tgid(), task.cpu(config().task_cpu_offset))
    else {
        bump(&STATS, STAT_READ_ERRORS);
        return 0;
    };
    // The migrated task is not current (the migrating CPU's task or stopper is): its own
    // cgroup, through the pointer. The classic tracepoint rung has no pointer; the loader
    // leaves that rung out under `--cgroup`.
    if !task.in_cgroup() {
        return 0;
    }
    // Not part of the test above: with the comm's Option in it, LLVM re-tests the helper's
    // result on a merged path, which verifiers before 6.8 cannot prove and reject (a
    // register read before it is set on a path that cannot happen). A task whose comm cannot
    // be read is counted with an empty one.
    let comm = task.comm().unwrap_or([0; TASK_COMM_LEN]);
    on_migrate(
        ctx,
        Migration {
            tgid,
            pid,
            comm,
            from_cpu,
            to_cpu: dest_cpu as u32,
        },
    )
}

// TP_PROTO(struct task_struct *p, int dest_cpu)

#[btf_tracepoint(function = "sched_migrate_task")]
pub fn migrations_btf(ctx: BtfTracePointContext) -> i32 {
    from_task(&ctx, Task::from_btf_arg(ctx.arg(0)), ctx.arg(1))
}

#[raw_tracepoint(tracepoint = "sched_migrate_task")]
pub fn migrations_raw(ctx: RawTracePointContext) -> i32 {
    from_task(&ctx, Task::from_ptr(ctx.arg(0)), ctx.arg(1))
}

#[tracepoint(category = "sched", name = "sched_migrate_task")]
pub fn migrations_tp(ctx: TracePointContext) -> i32 {
    let config = config();
    // SAFETY: the offsets come from this tracepoint's format file and are inside the record.
    let fields = unsafe {
        (
            ctx.read_at::<u32>(config.tp_pid_offset as usize),
            ctx.read_at::<u32>(config.tp_orig_cpu_offset as usize),
            ctx.read_at::<u32>(config.tp_dest_cpu_offset as usize),
        )
    };
    let (Ok(pid), Ok(from_cpu), Ok(to_cpu)) = fields else {
        bump(&STATS, STAT_READ_ERRORS);
        return 0;
    };
    // A `__data_loc` field holds (length << 16 | offset of the string in the record).
    let comm_offset = if config.tp_comm_data_loc != 0 {
        // SAFETY: as above.
        match unsafe { ctx.read_at::<u32>(config.tp_comm_offset as usize) } {
            Ok(loc) => (loc & 0xffff) as usize,
            Err(_) => 0,
        }
    } else {
        config.tp_comm_offset as usize
    };
    // SAFETY: as above; a bad offset yields Err.
    let comm = unsafe { ctx.read_at::<[u8; TASK_COMM_LEN]>(comm_offset) }.unwrap_or([0; 16]);
    on_migrate(
        &ctx,
        Migration {
            tgid: 0,
            pid,
            comm,
            from_cpu,
            to_cpu,
        },
    )
}

//! offcputime's kernel side: on sched_switch (tp_btf, else raw_tp) the task leaving the CPU
//! records when and where (its stacks) it blocked; when it comes back, the blocked time is added
//! to that stack's total. Everything is summed in the kernel; userspace only reads totals.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{LruHashMap, PerCpuHashMap},
    programs::{BtfTracePointContext, RawTracePointContext, tracing::StackIdContext},
};
use tracer_common::{
    offcputime::{
        OFFCPU_ENTRIES, OFFCPU_KTHREAD, OffcpuConfig, OffcpuKey, OffcpuValue, START_ENTRIES,
        SwitchOut,
    },
    stacks::{BPF_F_USER_STACK, STACK_NONE, STACKS_ENTRIES},
    stats::{STAT_EVENTS, STAT_MAP_FULL, STAT_READ_ERRORS},
    task::PF_KTHREAD,
};
use tracer_ebpf::{
    stacks::stack_id,
    stats::bump,
    task::{Task, current_in_cgroup},
};

tracer_ebpf::license!();
tracer_ebpf::stats_map!();

/// `task_struct::flags`: the task is in do_exit().
const PF_EXITING: u32 = 0x0000_0004;

tracer_ebpf::loader_config!(CONFIG: OffcpuConfig = OffcpuConfig::DEFAULT);

tracer_ebpf::stack_store!(STACKS_ENTRIES);

/// Tasks currently switched out that passed the filters, by tid. LRU: the entry of a task that
/// never runs again (it exited while switched out and its final switch was not seen, or it
/// sleeps for longer than the churn of START_ENTRIES other blocks takes) is recycled instead of
/// pinning a slot; such a block is then not counted, where a full map would drop new ones.
#[map]
static START: LruHashMap<u32, SwitchOut> = LruHashMap::with_max_entries(START_ENTRIES, 0);

#[map]
static OFFCPU: PerCpuHashMap<OffcpuKey, OffcpuValue> =
    PerCpuHashMap::with_max_entries(OFFCPU_ENTRIES, 0);

#[btf_tracepoint(function = "sched_switch")]
pub fn offcputime_switch_btf(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next, ...)
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    on_switch(&ctx, Task::from_btf_arg(prev), Task::from_btf_arg(next))
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn offcputime_switch_raw(ctx: RawTracePointContext) -> i32 {
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    on_switch(&ctx, Task::from_ptr(prev), Task::from_ptr(next))
}

#[inline(always)]
fn on_switch<C: StackIdContext + EbpfContext>(ctx: &C, prev: Task, next: Task) -> i32 {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    switch_out(ctx, prev, now);
    switch_in(next, now);
    0
}

/// `prev` is still "current" here, so the helpers read its comm and stacks.
#[inline(always)]
fn switch_out<C: StackIdContext>(ctx: &C, prev: Task, now: u64) {
    let config = config();
    let (Some(pid), Some(tgid), Some(task_flags)) = (prev.pid(), prev.tgid(), prev.flags()) else {
        bump(&STATS, STAT_READ_ERRORS);
        return;
    };
    // The idle task (pid 0) is "off CPU" whenever anything runs: not blocked time.
    if pid == 0 {
        return;
    }
    if config.tgid != 0 && config.tgid != tgid {
        return;
    }
    if config.tid != 0 && config.tid != pid {
        return;
    }
    let kthread = task_flags & PF_KTHREAD != 0;
    if config.kthreads_only != 0 && !kthread {
        return;
    }
    if config.user_only != 0 && kthread {
        return;
    }
    // The blocked task is filtered where it is still current (switching out): its cgroup is
    // the one bpf_get_current_cgroup_id sees, no task-pointer walk needed.
    if !current_in_cgroup() {
        return;
    }
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    if !config.comm.matches(&comm) {
        return;
    }
    let kstack = if config.kernel_stacks != 0 {
        stack_id(ctx, &STACKS, 0, &STATS)
    } else {
        STACK_NONE
    };
    // An exiting task (PF_EXITING) has dropped its mm: no user stack to read.
    let exiting = task_flags & PF_EXITING != 0;
    let ustack = if config.user_stacks != 0 && !kthread && !exiting {
        stack_id(ctx, &STACKS, BPF_F_USER_STACK, &STATS)
    } else {
        STACK_NONE
    };
    let flags = if kthread { OFFCPU_KTHREAD } else { 0 };
    let out = SwitchOut {
        ts_ns: now,
        key: OffcpuKey {
            tgid,
            pid,
            kstack,
            ustack,
            flags,
            _reserved: 0,
            comm,
        },
    };
    if START.insert(&pid, &out, 0).is_err() {
        bump(&STATS, STAT_MAP_FULL);
    }
}

#[inline(always)]
fn switch_in(next: Task, now: u64) {
    let Some(pid) = next.pid() else {
        bump(&STATS, STAT_READ_ERRORS);
        return;
    };
    // SAFETY: the value is copied out before the entry is deleted.
    let Some(out) = (unsafe { START.get(&pid) }).copied() else {
        return;
    };
    let _ = START.remove(&pid);
    let config = config();
    let delta = now.saturating_sub(out.ts_ns);
    if delta < config.min_ns || delta > config.max_ns {
        return;
    }
    bump(&STATS, STAT_EVENTS);
    if let Some(value) = OFFCPU.get_ptr_mut(&out.key) {
        // SAFETY: per-CPU value from a successful lookup, touched only on this CPU.
        unsafe {
            (*value).total_ns += delta;
            (*value).count += 1;
        }
    } else if OFFCPU
        .insert(
            &out.key,
            &OffcpuValue {
                total_ns: delta,
                count: 1,
            },
            0,
        )
        .is_err()
    {
        bump(&STATS, STAT_MAP_FULL);
    }
}

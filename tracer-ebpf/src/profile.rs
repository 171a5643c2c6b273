//! profile's kernel side: a perf-event program that runs on every sample (cpu-clock or
//! cycles), filters in the kernel, and counts the sample under (task, kernel stack, user stack).
//! With `--softirq`, two softirq tracepoint programs keep a per-CPU "serving a softirq" flag.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::{btf_tracepoint, map, perf_event, raw_tracepoint},
    maps::{PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePointContext, PerfEventContext, RawTracePointContext},
};
use tracer_common::{
    profile::{
        COUNTS_ENTRIES, IDLE_EXCLUDE, IDLE_ONLY, ProfileConfig, SAMPLE_KTHREAD, SAMPLE_SOFTIRQ,
        SampleKey,
    },
    stacks::{BPF_F_USER_STACK, STACK_NONE, STACKS_ENTRIES},
    stats::{STAT_EVENTS, STAT_MAP_FULL, STAT_USTACK_FALLBACK},
    task::PF_KTHREAD,
    ustack::USER_STACKS_RING_BYTES,
};
use tracer_ebpf::{
    stacks::stack_id,
    stats::bump,
    task::{Task, current_in_cgroup},
    ustack::{sample_user_regs, submit_user_stack},
};

tracer_ebpf::license!();
tracer_ebpf::stats_map!();

tracer_ebpf::loader_config!(CONFIG: ProfileConfig = ProfileConfig::DEFAULT);

tracer_ebpf::stack_store!(STACKS_ENTRIES);

#[map]
static COUNTS: PerCpuHashMap<SampleKey, u64> = PerCpuHashMap::with_max_entries(COUNTS_ENTRIES, 0);

/// Samples whose user stack is unwound in userspace (`copy_user_stacks`); the loader sizes it.
#[map]
static USER_STACKS: RingBuf = RingBuf::with_byte_size(USER_STACKS_RING_BYTES, 0);

/// Per CPU: 1 while a softirq handler runs (between softirq_entry and softirq_exit).
#[map]
static IN_SOFTIRQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[perf_event]
pub fn profile_sample(ctx: PerfEventContext) -> u32 {
    let config = config();
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let pid = pid_tgid as u32;
    if config.tgid != 0 && config.tgid != tgid {
        return 0;
    }
    if config.tid != 0 && config.tid != pid {
        return 0;
    }
    // The idle tasks are pid 0 on every CPU (and carry PF_KTHREAD too).
    let idle = pid == 0;
    if (config.idle == IDLE_EXCLUDE && idle) || (config.idle == IDLE_ONLY && !idle) {
        return 0;
    }
    // SAFETY: helper without arguments; the task is only read through probe_read.
    let task = Task::from_ptr(unsafe { bpf_get_current_task() } as *const u8);
    let kthread = !idle && task.flags().is_some_and(|f| f & PF_KTHREAD != 0);
    if config.kthreads_only != 0 && !kthread {
        return 0;
    }
    let softirq = IN_SOFTIRQ.get(0).is_some_and(|&s| s != 0);
    if config.softirq_only != 0 && !softirq {
        return 0;
    }
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    if !config.comm.matches(&comm) {
        return 0;
    }
    // The sample interrupts the task it is charged to: current.
    if !current_in_cgroup() {
        return 0;
    }
    bump(&STATS, STAT_EVENTS);

    let kstack = if config.kernel_stacks != 0 {
        stack_id(&ctx, &STACKS, 0, &STATS)
    } else {
        STACK_NONE
    };
    let mut flags = 0;
    if kthread {
        flags |= SAMPLE_KTHREAD;
    }
    if softirq {
        flags |= SAMPLE_SOFTIRQ;
    }
    let mut key = SampleKey {
        tgid,
        pid,
        kstack,
        ustack: STACK_NONE,
        flags,
        _reserved: 0,
        comm,
    };
    // Kernel threads and the idle tasks have no user stack.
    if config.user_stacks != 0 && !kthread && !idle {
        if config.copy_user_stacks != 0 {
            let regs = sample_user_regs(&ctx);
            if let Some(regs) = regs
                && submit_user_stack(&USER_STACKS, &key, 1, &regs)
            {
                return 0;
            }
            bump(&STATS, STAT_USTACK_FALLBACK);
        }
        key.ustack = stack_id(&ctx, &STACKS, BPF_F_USER_STACK, &STATS);
    }
    if let Some(count) = COUNTS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value from a successful lookup, touched only on this CPU.
        unsafe { *count += 1 };
    } else if COUNTS.insert(&key, &1, 0).is_err() {
        bump(&STATS, STAT_MAP_FULL);
    }
    0
}

#[inline(always)]
fn set_softirq(value: u32) -> i32 {
    if let Some(flag) = IN_SOFTIRQ.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only touched on this CPU.
        unsafe { *flag = value };
    }
    0
}

#[btf_tracepoint(function = "softirq_entry")]
pub fn profile_softirq_entry_btf(_ctx: BtfTracePointContext) -> i32 {
    set_softirq(1)
}

#[btf_tracepoint(function = "softirq_exit")]
pub fn profile_softirq_exit_btf(_ctx: BtfTracePointContext) -> i32 {
    set_softirq(0)
}

#[raw_tracepoint(tracepoint = "softirq_entry")]
pub fn profile_softirq_entry_raw(_ctx: RawTracePointContext) -> i32 {
    set_softirq(1)
}

#[raw_tracepoint(tracepoint = "softirq_exit")]
pub fn profile_softirq_exit_raw(_ctx: RawTracePointContext) -> i32 {
    set_softirq(0)
}

//! The scheduler views' kernel side, one object for runqlat, cpudist and ktop. Each tool loads
//! and attaches only its own programs (the others stay unloaded) and sizes the maps it does not
//! use down to one entry at load time.
//!
//! - runqlat: `sched_wakeup`/`sched_wakeup_new` stamp the task, `sched_switch` measures the wait
//!   when it is switched in; a preempted task (still TASK_RUNNING at switch-out) is re-stamped.
//! - cpudist: `sched_switch` alone: switch-in → switch-out (on-CPU) or the reverse (off-CPU).
//! - ktop: `sched_switch` closes the previous slice of each CPU into a per-(thread, CPU) record,
//!   plus the wakeup stamps for run-queue wait and `workqueue_execute_start` for kworkers.
//!
//! Every program has a tp_btf and a raw_tp twin (same code, the loader's ladder picks one).
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use tracer_common::{
    hist::Log2Hist,
    sched::{
        CPUDIST_OFF_CPU, CpuState, HistKey, KEY_PROCESS, KEY_THREAD, START_ENTRIES, SchedConfig,
        THREADS_ENTRIES, ThreadKey, ThreadStats, WORK_ENTRIES, WorkStats,
    },
    stats::{STAT_MAP_FULL, STAT_READ_ERRORS},
    task::PF_KTHREAD,
};
use tracer_ebpf::{stats::bump, task::Task};

tracer_ebpf::license!();
tracer_ebpf::stats_map!();

tracer_ebpf::loader_config!(SCHED_CONFIG: SchedConfig = SchedConfig::DEFAULT);

/// Task (or idle slot, see `start_key`) → bpf_ktime_get_ns of its wakeup / switch. LRU: a task
/// that exits before being switched in must not leak an entry.
#[map]
static START: LruHashMap<u32, u64> = LruHashMap::with_max_entries(START_ENTRIES, 0);

/// runqlat/cpudist histograms; one entry unless keyed per process or thread (set at load).
#[map]
static HISTS: PerCpuHashMap<HistKey, Log2Hist> = PerCpuHashMap::with_max_entries(1, 0);

/// A zeroed histogram to insert from: 512 bytes do not fit next to anything on the BPF stack.
#[map]
static ZERO: PerCpuArray<Log2Hist> = PerCpuArray::with_max_entries(1, 0);

/// ktop: running totals per (thread, CPU).
#[map]
static THREADS: HashMap<ThreadKey, ThreadStats> = HashMap::with_max_entries(THREADS_ENTRIES, 0);

/// ktop: the task running on this CPU and since when.
#[map]
static CPU_STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

/// ktop: kworker pid → last work function and count.
#[map]
static WORK: HashMap<u32, WorkStats> = HashMap::with_max_entries(WORK_ENTRIES, 0);

const TASK_RUNNING: u32 = 0;

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn cpu() -> u32 {
    // SAFETY: helper without arguments.
    unsafe { bpf_get_smp_processor_id() }
}

/// `START` key: the pid, or for the idle tasks (all pid 0) one slot per CPU.
#[inline(always)]
fn start_key(pid: u32) -> u32 {
    if pid == 0 { u32::MAX - cpu() } else { pid }
}

/// The user's filters (`-p`, `--kthreads`, `--cgroup`), applied when a task is stamped.
#[inline(always)]
fn wanted(config: &SchedConfig, task: Task, pid: u32) -> bool {
    if config.tgid != 0 && task.tgid() != Some(config.tgid) {
        return false;
    }
    // From the task pointer: the wakeup's target and sched_switch's next are not current.
    if !task.in_cgroup() {
        return false;
    }
    if config.kthreads_only != 0 {
        if pid == 0 {
            return false;
        }
        return task.flags().is_some_and(|f| f & PF_KTHREAD != 0);
    }
    true
}

#[inline(always)]
fn hist_key(config: &SchedConfig, task: Task, pid: u32) -> HistKey {
    let mut key = HistKey::default();
    if config.key_mode == KEY_PROCESS {
        // The comm names the process after it exits; userspace merges a process's threads.
        key.id = task.tgid().unwrap_or(pid);
        key.comm = task.comm().unwrap_or([0; 16]);
    } else if config.key_mode == KEY_THREAD {
        key.id = pid;
        key.comm = task.comm().unwrap_or([0; 16]);
    }
    key
}

#[inline(always)]
fn hist_add(config: &SchedConfig, key: &HistKey, delta_ns: u64) {
    tracer_ebpf::hist::add(&HISTS, &ZERO, &STATS, key, delta_ns, config.unit_div);
}

#[inline(always)]
fn stamp(key: u32, ts: u64) {
    if START.insert(key, ts, 0).is_err() {
        bump(&STATS, STAT_MAP_FULL);
    }
}

/// `START[key]`, removed.
#[inline(always)]
fn take_start(key: u32) -> Option<u64> {
    // SAFETY: plain u64 read from a map value.
    let ts = unsafe { *START.get_ptr(key)? };
    let _ = START.remove(key);
    Some(ts)
}

// ---- wakeups (runqlat and ktop) -------------------------------------------------------------

#[inline(always)]
fn on_wakeup(task: Task) -> i32 {
    let config = config();
    let Some(pid) = task.pid() else {
        bump(&STATS, STAT_READ_ERRORS);
        return 0;
    };
    if pid == 0 || !wanted(config, task, pid) {
        return 0;
    }
    stamp(pid, now());
    0
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup_btf(ctx: BtfTracePointContext) -> i32 {
    on_wakeup(Task::from_btf_arg(ctx.arg(0)))
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup_raw(ctx: RawTracePointContext) -> i32 {
    on_wakeup(Task::from_ptr(ctx.arg(0)))
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wnew_btf(ctx: BtfTracePointContext) -> i32 {
    on_wakeup(Task::from_btf_arg(ctx.arg(0)))
}

#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn sched_wnew_raw(ctx: RawTracePointContext) -> i32 {
    on_wakeup(Task::from_ptr(ctx.arg(0)))
}

// ---- sched_switch: TP_PROTO(bool preempt, task_struct *prev, task_struct *next, ...) -----------

/// The switch arguments common to every kernel since 4.x (prev_state became the 4th argument
/// only in 5.18, so the state is read from the task instead).
struct Switch {
    preempt: bool,
    prev: Task,
    next: Task,
}

#[inline(always)]
fn switch_btf(ctx: &BtfTracePointContext) -> Switch {
    Switch {
        preempt: ctx.arg::<u64>(0) & 0xff != 0,
        prev: Task::from_btf_arg(ctx.arg(1)),
        next: Task::from_btf_arg(ctx.arg(2)),
    }
}

#[inline(always)]
fn switch_raw(ctx: &RawTracePointContext) -> Switch {
    Switch {
        preempt: ctx.arg::<u64>(0) & 0xff != 0,
        prev: Task::from_ptr(ctx.arg(1)),
        next: Task::from_ptr(ctx.arg(2)),
    }
}

// runqlat

#[inline(always)]
fn runqlat_switch(s: Switch) -> i32 {
    let config = config();
    let ts = now();
    let (Some(prev_pid), Some(next_pid)) = (s.prev.pid(), s.next.pid()) else {
        bump(&STATS, STAT_READ_ERRORS);
        return 0;
    };
    if prev_pid != 0 {
        if s.prev.state(config.state_offset) == Some(TASK_RUNNING) {
            // Preempted (still runnable): it goes straight back on the run queue.
            if wanted(config, s.prev, prev_pid) {
                stamp(prev_pid, ts);
            }
        } else {
            // Blocking: a stamp left by a wakeup that raced with it going to sleep (the task
            // never left the CPU) must not be measured at its next switch-in.
            let _ = START.remove(prev_pid);
        }
    }
    if next_pid == 0 {
        return 0;
    }
    let Some(start) = take_start(next_pid) else {
        return 0;
    };
    let key = hist_key(config, s.next, next_pid);
    hist_add(config, &key, ts.saturating_sub(start));
    0
}

#[btf_tracepoint(function = "sched_switch")]
pub fn runqlat_switch_btf(ctx: BtfTracePointContext) -> i32 {
    runqlat_switch(switch_btf(&ctx))
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn runqlat_switch_raw(ctx: RawTracePointContext) -> i32 {
    runqlat_switch(switch_raw(&ctx))
}

// cpudist

#[inline(always)]
fn cpudist_wanted(config: &SchedConfig, task: Task, pid: u32) -> bool {
    (pid != 0 || config.include_idle != 0) && wanted(config, task, pid)
}

#[inline(always)]
fn cpudist_switch(s: Switch) -> i32 {
    let config = config();
    let ts = now();
    let (Some(prev_pid), Some(next_pid)) = (s.prev.pid(), s.next.pid()) else {
        bump(&STATS, STAT_READ_ERRORS);
        return 0;
    };
    // On-CPU: the slice ends for prev and starts for next. Off-CPU: the reverse.
    let (ending, ending_pid, starting, starting_pid) = if config.cpudist_mode == CPUDIST_OFF_CPU {
        (s.next, next_pid, s.prev, prev_pid)
    } else {
        (s.prev, prev_pid, s.next, next_pid)
    };
    // No delete: every start of a wanted task overwrites its stamp, and a delete per switch
    // would cost more than the rest of the program.
    // SAFETY: plain u64 read from a map value.
    if let Some(start) = START.get_ptr(start_key(ending_pid)).map(|p| unsafe { *p }) {
        let key = hist_key(config, ending, ending_pid);
        hist_add(config, &key, ts.saturating_sub(start));
    }
    if cpudist_wanted(config, starting, starting_pid) {
        stamp(start_key(starting_pid), ts);
    }
    0
}

#[btf_tracepoint(function = "sched_switch")]
pub fn cpudist_switch_btf(ctx: BtfTracePointContext) -> i32 {
    cpudist_switch(switch_btf(&ctx))
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn cpudist_switch_raw(ctx: RawTracePointContext) -> i32 {
    cpudist_switch(switch_raw(&ctx))
}

// ktop

/// The (thread, CPU) record, created on first sight with the task's identity.
#[inline(always)]
fn thread_record(key: &ThreadKey, task: Task) -> Option<*mut ThreadStats> {
    // `--cgroup`: a thread outside it gets no row (prev and next of a switch are both seen
    // here, so the task pointer's cgroup, not current's).
    if !task.in_cgroup() {
        return None;
    }
    if let Some(rec) = THREADS.get_ptr_mut(key) {
        return Some(rec);
    }
    let fresh = ThreadStats {
        tgid: task.tgid().unwrap_or(key.pid),
        task_flags: task.flags().unwrap_or(0),
        comm: task.comm().unwrap_or([0; 16]),
        ..ThreadStats::default()
    };
    if THREADS.insert(key, &fresh, 1).is_err() && THREADS.get_ptr_mut(key).is_none() {
        bump(&STATS, STAT_MAP_FULL);
        return None;
    }
    THREADS.get_ptr_mut(key)
}

#[inline(always)]
fn ktop_switch(s: Switch) -> i32 {
    let config = config();
    let ts = now();
    let cpu = cpu();
    let (Some(prev_pid), Some(next_pid)) = (s.prev.pid(), s.next.pid()) else {
        bump(&STATS, STAT_READ_ERRORS);
        return 0;
    };
    let Some(state) = CPU_STATE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU value from a successful lookup, only touched on this CPU.
    let since = unsafe { (*state).since_ns };
    let prev_state = s.prev.state(config.state_offset).unwrap_or(TASK_RUNNING);
    let runnable = prev_state == TASK_RUNNING;
    if let Some(rec) = thread_record(&ThreadKey { pid: prev_pid, cpu }, s.prev) {
        // SAFETY: this (thread, CPU) record is only ever written on this CPU.
        unsafe {
            if since != 0 {
                (*rec).oncpu_ns += ts.saturating_sub(since);
            }
            // As the kernel counts nvcsw/nivcsw: blocking is voluntary, anything else is not.
            if s.preempt || runnable {
                (*rec).involuntary += 1;
            } else {
                (*rec).voluntary += 1;
            }
            (*rec).last_ns = ts;
            // exec() changes the comm; keep the newest.
            if let Some(comm) = s.prev.comm() {
                (*rec).comm = comm;
            }
        }
    }
    if prev_pid != 0 {
        if runnable {
            stamp(prev_pid, ts);
        } else {
            // See runqlat_switch: a wakeup stamp of a task that never left the CPU.
            let _ = START.remove(prev_pid);
        }
    }
    if next_pid != 0
        && let Some(start) = take_start(next_pid)
        && let Some(rec) = thread_record(&ThreadKey { pid: next_pid, cpu }, s.next)
    {
        // SAFETY: as above.
        unsafe {
            (*rec).runq_ns += ts.saturating_sub(start);
            (*rec).runq_count += 1;
            (*rec).last_ns = ts;
        }
    }
    // SAFETY: as above.
    unsafe {
        (*state).since_ns = ts;
        (*state).pid = next_pid;
        (*state).switches += 1;
    }
    0
}

#[btf_tracepoint(function = "sched_switch")]
pub fn ktop_switch_btf(ctx: BtfTracePointContext) -> i32 {
    ktop_switch(switch_btf(&ctx))
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn ktop_switch_raw(ctx: RawTracePointContext) -> i32 {
    ktop_switch(switch_raw(&ctx))
}

// ---- workqueue_execute_start: TP_PROTO(struct work_struct *work) ------------------------------

#[inline(always)]
fn on_work(function: u64) -> i32 {
    let pid = bpf_get_current_pid_tgid() as u32;
    if let Some(rec) = WORK.get_ptr_mut(pid) {
        // SAFETY: only the kworker itself (one CPU at a time) updates its entry.
        unsafe {
            (*rec).function = function;
            (*rec).count += 1;
        }
        return 0;
    }
    if WORK
        .insert(pid, WorkStats { function, count: 1 }, 0)
        .is_err()
    {
        bump(&STATS, STAT_MAP_FULL);
    }
    0
}

#[inline(always)]
fn work_function(work: *const u8) -> i32 {
    let offset = config().work_func_offset as usize;
    // SAFETY: bpf_probe_read_kernel validates the address.
    match unsafe { bpf_probe_read_kernel(work.wrapping_add(offset) as *const u64) } {
        Ok(function) => on_work(function),
        Err(_) => {
            bump(&STATS, STAT_READ_ERRORS);
            0
        }
    }
}

#[btf_tracepoint(function = "workqueue_execute_start")]
pub fn ktop_work_btf(ctx: BtfTracePointContext) -> i32 {
    work_function(ctx.arg(0))
}

#[raw_tracepoint(tracepoint = "workqueue_execute_start")]
pub fn ktop_work_raw(ctx: RawTracePointContext) -> i32 {
    work_function(ctx.arg(0))
}

#[tracepoint(category = "workqueue", name = "workqueue_execute_start")]
pub fn ktop_work_tp(ctx: TracePointContext) -> i32 {
    let offset = config().tp_function_offset as usize;
    // SAFETY: the offset comes from this tracepoint's format file and is inside the record.
    match unsafe { ctx.read_at::<u64>(offset) } {
        Ok(function) => on_work(function),
        Err(_) => {
            bump(&STATS, STAT_READ_ERRORS);
            0
        }
    }
}

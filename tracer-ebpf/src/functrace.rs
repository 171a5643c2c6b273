//! functrace's kernel side: one entry program on a kprobe_multi link over every function that
//! matched, each function's id in the BPF cookie; each admitted call is sent to `CALLS` with
//! the return address its caller left on the stack.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel, generated::bpf_get_attach_cookie,
    },
    macros::{kprobe, map},
    maps::RingBuf,
    programs::ProbeContext,
};
use tracer_common::{
    functrace::{CALLS_RING_BYTES, FunctraceConfig, TRACED_ENTRIES, TraceRecord},
    stats::{STAT_EVENTS, STAT_LOST},
};
use tracer_ebpf::{stats::bump, task::current_in_cgroup};

tracer_ebpf::license!();
tracer_ebpf::stats_map!();

tracer_ebpf::loader_config!(CONFIG: FunctraceConfig = FunctraceConfig::DEFAULT);

tracer_ebpf::follow_forks!(functrace_fork, TRACED_ENTRIES);

#[map]
static CALLS: RingBuf = RingBuf::with_byte_size(CALLS_RING_BYTES, 0);

#[kprobe]
pub fn functrace_entry(ctx: ProbeContext) -> u32 {
    let config = config();
    let pid_tgid = bpf_get_current_pid_tgid();
    if config.follow != 0 {
        if !followed((pid_tgid >> 32) as u32) || in_fork_hook() {
            return 0;
        }
    }
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    if !config.comm.matches(&comm) || !current_in_cgroup() {
        return 0;
    }
    // SAFETY: the program's own context; at a function's entry the stack pointer points at
    // the return address its caller pushed (read through probe_read, which checks it).
    let caller = unsafe {
        let sp = (*ctx.regs).rsp;
        bpf_probe_read_kernel(sp as *const u64).unwrap_or(0)
    };
    let Some(mut entry) = CALLS.reserve::<TraceRecord>(0) else {
        bump(&STATS, STAT_LOST);
        return 0;
    };
    entry.write(TraceRecord {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        caller,
        tid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        // SAFETY: this program's own context pointer.
        func: unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32,
        cpu: unsafe { bpf_get_smp_processor_id() },
        comm,
    });
    entry.submit(0);
    bump(&STATS, STAT_EVENTS);
    0
}

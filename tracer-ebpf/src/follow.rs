//! `-p` with ftrace's `function-fork`: the processes a traced process forks are traced too.
//! Shared by the function tools (funcgraph, functrace), whose probes sit on kernel functions
//! that the fork program's own map update runs through.

/// Defines `TRACED` (the followed processes: user space inserts the target, `$program` every
/// child a followed process forks), `IN_FORK_HOOK` (set on a CPU while `$program` runs, so
/// the kernel functions its map update calls are not taken for the traced process's calls),
/// the raw `sched_process_fork` program `$program`, and `followed(tgid)` / `in_fork_hook()`.
/// Needs the object's `STATS` map (`stats_map!`).
#[macro_export]
macro_rules! follow_forks {
    ($program:ident, $entries:expr) => {
        #[aya_ebpf::macros::map]
        static TRACED: aya_ebpf::maps::HashMap<u32, u8> =
            aya_ebpf::maps::HashMap::with_max_entries($entries, 0);

        #[aya_ebpf::macros::map]
        static IN_FORK_HOOK: aya_ebpf::maps::PerCpuArray<u32> =
            aya_ebpf::maps::PerCpuArray::with_max_entries(1, 0);

        #[aya_ebpf::macros::raw_tracepoint(tracepoint = "sched_process_fork")]
        pub fn $program(ctx: aya_ebpf::programs::RawTracePointContext) -> i32 {
            let parent_tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
            if TRACED.get_ptr(&parent_tgid).is_none() {
                return 0;
            }
            let child: *const u8 = ctx.arg(1);
            let Some(busy) = IN_FORK_HOOK.get_ptr_mut(0) else {
                return 0;
            };
            // SAFETY: a per-CPU slot; nothing else on this CPU runs until this program returns.
            unsafe { *busy = 1 };
            if let Some(tgid) = $crate::task::Task::from_ptr(child).tgid()
                && TRACED.insert(&tgid, &1, 0).is_err()
            {
                $crate::stats::bump(&STATS, tracer_common::stats::STAT_MAP_FULL);
            }
            // SAFETY: as above.
            unsafe { *busy = 0 };
            0
        }

        /// Whether the fork program is running on this CPU.
        #[inline(always)]
        fn in_fork_hook() -> bool {
            IN_FORK_HOOK.get(0).is_some_and(|busy| *busy != 0)
        }

        /// Whether process `tgid` is followed.
        #[inline(always)]
        fn followed(tgid: u32) -> bool {
            TRACED.get_ptr(&tgid).is_some()
        }
    };
}

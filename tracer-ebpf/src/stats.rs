//! Bumping the per-CPU `STATS` slots (see `tracer_common::stats`).

use aya_ebpf::maps::PerCpuArray;

/// Declares the tool's `STATS` map with one slot per `tracer_common::stats` counter.
#[macro_export]
macro_rules! stats_map {
    () => {
        #[aya_ebpf::macros::map]
        static STATS: aya_ebpf::maps::PerCpuArray<u64> =
            aya_ebpf::maps::PerCpuArray::with_max_entries(tracer_common::stats::STAT_SLOTS, 0);
    };
}

/// Adds one to slot `slot`. Per-CPU, so no atomics are needed.
#[inline(always)]
pub fn bump(stats: &PerCpuArray<u64>, slot: u32) {
    if let Some(counter) = stats.get_ptr_mut(slot) {
        // SAFETY: the pointer comes from a successful map lookup and is only touched on this CPU.
        unsafe { *counter += 1 };
    }
}

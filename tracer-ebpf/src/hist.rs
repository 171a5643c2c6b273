//! Log2 histograms kept per key in a per-CPU hash map, the same way by every tool's kernel side.

use aya_ebpf::maps::{PerCpuArray, PerCpuHashMap};
use tracer_common::{
    hist::{Log2Hist, log2_slot},
    stats::STAT_MAP_FULL,
};

use crate::stats::bump;

/// Counts `value / unit_div` (a `unit_div` of 0 counts nanoseconds as they are) in `key`'s
/// histogram of `hists`. A missing histogram is inserted from `zero` (512 bytes do not fit on
/// the BPF stack); a full map is counted in `stats`' STAT_MAP_FULL slot.
#[inline(always)]
pub fn add<K>(
    hists: &PerCpuHashMap<K, Log2Hist>,
    zero: &PerCpuArray<Log2Hist>,
    stats: &PerCpuArray<u64>,
    key: &K,
    value: u64,
    unit_div: u64,
) {
    let div = if unit_div == 0 { 1 } else { unit_div };
    let slot = (log2_slot(value / div) & 63) as usize;
    let hist = match hists.get_ptr_mut(key) {
        Some(h) => h,
        None => {
            let Some(zero) = zero.get(0) else { return };
            // NOEXIST: another CPU may have inserted it since our lookup; then just use it.
            let _ = hists.insert(key, zero, 1);
            match hists.get_ptr_mut(key) {
                Some(h) => h,
                None => {
                    bump(stats, STAT_MAP_FULL);
                    return;
                }
            }
        }
    };
    // SAFETY: per-CPU value from a successful lookup; slot is masked into range.
    if let Some(count) = unsafe { (*hist).slots.get_mut(slot) } {
        *count += 1;
    }
}

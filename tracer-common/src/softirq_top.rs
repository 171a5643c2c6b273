//! softirq-top: per-CPU softirq counters kept in one per-CPU state value (one map lookup per
//! event), plus optional histograms, NAPI poll counts and sampled stacks.

use crate::hist::Log2Hist;

/// Softirq vectors, in the kernel's order (`enum { HI_SOFTIRQ = 0, ... NR_SOFTIRQS }`).
pub const NR_SOFTIRQS: usize = 10;

/// The kernel's names for the vectors (as in /proc/softirqs and the tracepoints' print fmt).
pub const VEC_NAMES: [&str; NR_SOFTIRQS] = [
    "HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER", "RCU",
];

/// NET_RX_SOFTIRQ.
pub const VEC_NET_RX: u32 = 3;

/// Who was running when a softirq started: a task (inline, on irq exit while the task ran or
/// when it re-enabled bottom halves), the idle task (inline, on irq exit from idle), or this
/// CPU's ksoftirqd thread (deferred).
pub const CTX_TASK: usize = 0;
pub const CTX_IDLE: usize = 1;
pub const CTX_KSOFTIRQD: usize = 2;
pub const NR_CTX: usize = 3;
pub const CTX_NAMES: [&str; NR_CTX] = ["task", "idle", "ksoftirqd"];

/// Storage sizes are powers of two so the kernel side indexes with a mask (`vec & 15`,
/// `ctx & 3`): always in bounds, nothing the compiler could reorder away from the verifier.
pub const VEC_SLOTS: usize = 16;
pub const CTX_SLOTS: usize = 4;

/// Counters of one vector on one CPU, split by context (`CTX_*`; slot 3 unused).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VecCounters {
    /// Softirqs served (entry and exit both seen).
    pub count: [u64; CTX_SLOTS],
    /// Nanoseconds between softirq_entry and softirq_exit: exact while every softirq is
    /// timed, else an unbiased estimate (see `CpuState`).
    pub time_ns: [u64; CTX_SLOTS],
}

/// The one value of the per-CPU `CPU_STATE` array. The kernel keeps running totals; userspace
/// reads the whole value once per interval and prints differences.
///
/// Timing: every softirq is counted, but only the *timed* ones read the clock (two
/// bpf_ktime_get_ns per softirq are the largest part of its cost, ~100 of ~250 ns on the machines
/// measured). A CPU times every softirq until it serves more than `SoftirqConfig::timed_per_sec`
/// a second; then each one is timed with probability 1/2^`time_shift` (chosen anew every
/// `ADAPT_WINDOW_NS`) and its duration is added `2^shift` times, so `time_ns` stays an unbiased
/// estimate of the total (Horvitz-Thompson) while the clock cost stays bounded under a flood.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuState {
    /// bpf_ktime_get_ns() at the timed softirq_entry being served (0: none, or not timed).
    pub entry_ns: u64,
    /// Vector being served + 1 (0: not in a softirq), read by the stack sampler.
    pub vec: u32,
    /// `time_shift` when the softirq being served was timed.
    pub entry_shift: u32,
    /// PID of this CPU's ksoftirqd thread, written by the loader before attaching.
    pub ksoftirqd_pid: u32,
    /// xorshift32 state deciding which softirqs are timed (seeded nonzero by the loader).
    pub rng: u32,
    /// Time 1 in 2^time_shift softirqs (0: every one).
    pub time_shift: u32,
    pub _reserved: u32,
    /// Start of the current rate window, and softirqs served since.
    pub window_start_ns: u64,
    pub window_count: u64,
    /// Softirqs counted in `vecs[..].count` but not timed (sampled out). The exception is
    /// what gets counted so that a snapshot taken between a softirq's count and its time (the
    /// loader reads while programs run on other CPUs) cannot make `--exact` look sampled.
    pub untimed: u64,
    /// Time of the last sched_switch on this CPU (0: none seen yet).
    pub last_switch_ns: u64,
    /// Total time ksoftirqd ran on this CPU (sched_switch accounting).
    pub ksoftirqd_ns: u64,
    /// Times ksoftirqd was switched out (its runs).
    pub ksoftirqd_runs: u64,
    /// net_rx_action() entry time (fentry/kprobe rung of --net only).
    pub net_rx_action_ns: u64,
    /// First softirq_raise not yet served, per vector (0: none), for --latency.
    pub raised_ns: [u64; VEC_SLOTS],
    /// Index = vector (slots 10..15 unused).
    pub vecs: [VecCounters; VEC_SLOTS],
}

/// How often a CPU re-chooses its `time_shift` (at its first timed softirq_exit after this).
pub const ADAPT_WINDOW_NS: u64 = 100_000_000;
/// The largest `time_shift` (1 in 65536).
pub const MAX_TIME_SHIFT: u32 = 16;
/// The smallest shift that keeps a CPU which served `served` softirqs in `elapsed_ns` within
/// `budget` timed softirqs a second (`served >> shift` ≤ what the budget allows in that time).
#[inline(always)]
pub fn time_shift_for(served: u64, elapsed_ns: u64, budget: u64) -> u32 {
    // Capped so the product cannot overflow (a CPU's first window starts at boot).
    let allowed = budget
        * if elapsed_ns < 10_000_000_000 {
            elapsed_ns
        } else {
            10_000_000_000
        }
        / 1_000_000_000;
    let mut served = served;
    let mut shift = 0;
    while shift < MAX_TIME_SHIFT && served > allowed {
        served >>= 1;
        shift += 1;
    }
    shift
}

/// Default `SoftirqConfig::timed_per_sec`: ~1 % of the softirqs of a NET_RX flood of ~1 Mpps
/// on one CPU, ~8 µs of clock reads per 10 ms; enough for time estimates within ~1-2 % per
/// busy vector and second.
pub const DEFAULT_TIMED_PER_SEC: u32 = 8192;

crate::user_pod!(VecCounters, CpuState);

impl CpuState {
    pub const ZERO: Self = Self {
        entry_ns: 0,
        vec: 0,
        entry_shift: 0,
        ksoftirqd_pid: 0,
        rng: 0,
        time_shift: 0,
        _reserved: 0,
        window_start_ns: 0,
        window_count: 0,
        untimed: 0,
        last_switch_ns: 0,
        ksoftirqd_ns: 0,
        ksoftirqd_runs: 0,
        net_rx_action_ns: 0,
        raised_ns: [0; VEC_SLOTS],
        vecs: [VecCounters {
            count: [0; CTX_SLOTS],
            time_ns: [0; CTX_SLOTS],
        }; VEC_SLOTS],
    };
}

/// Set before load (global `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftirqConfig {
    /// Offset of `vec` in the irq:softirq_* records (classic tracepoint rung).
    pub tp_vec_offset: u32,
    /// napi:napi_poll record offsets of `dev_name` (__data_loc), `work`, `budget`.
    pub tp_napi_dev_name_offset: u32,
    pub tp_napi_work_offset: u32,
    pub tp_napi_budget_offset: u32,
    /// BTF offsets of `napi_struct.dev` and `net_device.name` (tp_btf/raw_tp rungs of --net).
    pub napi_dev_offset: u32,
    pub netdev_name_offset: u32,
    /// Record run-time histograms (`-d`).
    pub runtime_hist: u8,
    /// Record raise→entry latency (`--latency`).
    pub latency_hist: u8,
    /// Histogram values in nanoseconds instead of microseconds.
    pub hist_ns: u8,
    /// With --stacks: also keep samples taken in ksoftirqd outside a vector.
    pub stacks_ksoftirqd: u8,
    /// With --stacks: bit per vector to keep (all bits: every vector).
    pub stacks_vec_mask: u32,
    /// Timed softirqs a second per CPU above which timing is sampled (see `CpuState`);
    /// 0: time every softirq (`--exact`).
    pub timed_per_sec: u32,
}

crate::user_pod!(SoftirqConfig);

impl SoftirqConfig {
    pub const DEFAULT: Self = Self {
        tp_vec_offset: 8,
        tp_napi_dev_name_offset: 0,
        tp_napi_work_offset: 0,
        tp_napi_budget_offset: 0,
        napi_dev_offset: 0,
        netdev_name_offset: 0,
        runtime_hist: 0,
        latency_hist: 0,
        hist_ns: 0,
        stacks_ksoftirqd: 1,
        stacks_vec_mask: u32::MAX,
        timed_per_sec: DEFAULT_TIMED_PER_SEC,
    };
}

/// Histograms per vector (`RUNTIME_HIST`, `LATENCY_HIST`, index = vector).
pub type VecHist = Log2Hist;

/// Length of a device name (IFNAMSIZ).
pub const IFNAMSIZ: usize = 16;

/// Key of `NAPI`: the device name as the napi_poll tracepoint shows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NapiKey {
    pub dev: [u8; IFNAMSIZ],
}

/// Value of `NAPI` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NapiStats {
    pub polls: u64,
    /// Packets processed (sum of `work`).
    pub work: u64,
    /// Sum of `budget`.
    pub budget: u64,
    /// Polls that used their whole budget (work >= budget): the device had more to give.
    pub exhausted: u64,
}

crate::user_pod!(NapiKey, NapiStats);

pub const NAPI_ENTRIES: u32 = 256;

/// net_rx_action() durations (--net, fentry/kprobe rungs), index 0 of `NET_RX_ACTION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetRxAction {
    pub count: u64,
    pub time_ns: u64,
    pub hist: Log2Hist,
}

crate::user_pod!(NetRxAction);

/// Key of `STACK_COUNTS`: a kernel stack seen while serving `vec`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackKey {
    /// bpf_get_stackid() result (negative: the stack could not be stored).
    pub stack_id: i32,
    /// Vector being served, or `STACK_VEC_KSOFTIRQD` (in ksoftirqd between vectors).
    pub vec: u32,
}

crate::user_pod!(StackKey);

pub const STACK_VEC_KSOFTIRQD: u32 = NR_SOFTIRQS as u32;
pub const STACK_COUNTS_ENTRIES: u32 = 16384;
pub const STACK_TRACES_ENTRIES: u32 = 16384;

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn below_the_budget_every_softirq_is_timed() {
        assert_eq!(time_shift_for(0, SECOND / 10, 8192), 0);
        assert_eq!(time_shift_for(819, SECOND / 10, 8192), 0);
    }

    #[test]
    fn above_the_budget_the_timed_rate_stays_within_it() {
        // A flood's 120 000 softirqs a second on one CPU, seen over 100 ms.
        for served in [821, 12_000, 120_000, 1_000_000] {
            let shift = time_shift_for(served, SECOND / 10, 8192);
            assert!(served >> shift <= 819, "{served}: shift {shift}");
            // The smallest such shift: one less would exceed the budget.
            assert!(
                shift == 0 || served >> (shift - 1) > 819,
                "{served}: shift {shift}"
            );
        }
    }

    #[test]
    fn first_window_since_boot_and_absurd_rates_are_bounded() {
        // window_start 0: elapsed is the uptime; the product must not overflow.
        assert_eq!(time_shift_for(5, u64::MAX, 8192), 0);
        assert_eq!(time_shift_for(u64::MAX, SECOND, 8192), MAX_TIME_SHIFT);
    }
}

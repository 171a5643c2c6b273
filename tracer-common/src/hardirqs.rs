//! hardirqs: time and count per hardware interrupt line, from irq:irq_handler_entry/exit.

/// Running totals for one IRQ line on one CPU (a per-CPU map value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqStats {
    /// Handler invocations (one per irqaction: a shared line counts each handler it runs).
    pub count: u64,
    /// Nanoseconds spent in the handlers.
    pub time_ns: u64,
    /// The longest single handler run, nanoseconds.
    pub max_ns: u64,
}

/// What this CPU is running: hard IRQ handlers do not nest (they run with interrupts off),
/// so one slot per CPU is enough.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuIrq {
    pub start_ns: u64,
    pub irq: u32,
    /// 1 between an entry and its exit.
    pub active: u32,
}

/// Set by the loader before load.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HardirqsConfig {
    /// 1: keep a log2 histogram of handler time per IRQ (`-D`).
    pub dist: u32,
    pub _pad: u32,
    /// Histogram unit in nanoseconds (1000 for microseconds, 1 with `-N`).
    pub unit_div: u64,
}

impl HardirqsConfig {
    pub const DEFAULT: Self = Self {
        dist: 0,
        _pad: 0,
        unit_div: 1000,
    };
}

/// Distinct IRQ lines tracked (a large server has a few thousand MSI-X vectors).
pub const IRQ_ENTRIES: u32 = 4096;

crate::user_pod!(IrqStats, CpuIrq, HardirqsConfig);

//! The `doctor` probes: tiny programs that prove a program type loads and attaches here.

/// Counter slot each probe program bumps when it fires (index into the probe's `HITS` array).
pub const PROBE_HIT_TRACEPOINT: u32 = 0;
pub const PROBE_HIT_TP_BTF: u32 = 1;
pub const PROBE_HIT_RAW_TP: u32 = 2;
pub const PROBE_HIT_KPROBE: u32 = 3;
pub const PROBE_HIT_KRETPROBE: u32 = 4;
pub const PROBE_HIT_FENTRY: u32 = 5;
pub const PROBE_HIT_FEXIT: u32 = 6;
pub const PROBE_HIT_UPROBE: u32 = 7;
pub const PROBE_HIT_URETPROBE: u32 = 8;
pub const PROBE_HIT_PERF_EVENT: u32 = 9;
pub const PROBE_HIT_UPROBE_MULTI: u32 = 10;
pub const PROBE_HIT_FEXIT_RET: u32 = 11;
pub const PROBE_HIT_SLOTS: u32 = 12;

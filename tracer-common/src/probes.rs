//! Probes on demand (funccount, funclatency, argdist, trace, stackcount): one generic kernel
//! object whose programs attach to uprobes, kernel functions and tracepoints named on the
//! command line. What a hit does (count, time, take a value, send an event, count a stack) is
//! chosen by `ProbesConfig::mode`; which probe was hit comes from the BPF cookie (uprobes, one
//! object for any number of them) or from `ProbesConfig::probe_id` (kernel functions and
//! tracepoints: one loaded object each, so counts per probe are exact either way).

use crate::TASK_COMM_LEN;

/// Probe ids index `COUNTS`; more probes than this in one run are refused by the loader.
pub const MAX_PROBES: u32 = 4096;

/// Count hits per probe (funccount).
pub const MODE_COUNT: u8 = 0;
/// Entry stores a timestamp, return adds the elapsed time to a histogram (funclatency).
pub const MODE_LATENCY: u8 = 1;
/// Take `values[0]` and histogram it (`hist_values`) or count each distinct value (argdist).
pub const MODE_VALUE: u8 = 2;
/// Send one event per hit with `values[..]` through the `EVENTS` ring buffer (trace).
pub const MODE_TRACE: u8 = 3;
/// Count (kernel stack, user stack) pairs per probe (stackcount).
pub const MODE_STACK: u8 = 4;

/// `ValueSpec::kind`: unused slot.
pub const VAL_NONE: u8 = 0;
/// Function argument `index` (pt_regs for u/k probes, BTF args for fentry/tp_btf/raw_tp).
pub const VAL_ARG: u8 = 1;
/// The return value (return probes only).
pub const VAL_RET: u8 = 2;
/// A classic tracepoint record field at `offset`, `size` bytes, `signed`.
pub const VAL_FIELD: u8 = 3;
/// The current thread id.
pub const VAL_TID: u8 = 4;
/// The current process id (thread group id).
pub const VAL_PID: u8 = 5;
/// The CPU the probe fired on.
pub const VAL_CPU: u8 = 6;
/// USDT argument `index` of the probe site that fired, decoded as its SDT note says
/// (`USDT_ARGS`, keyed by probe id); the loader turns `VAL_ARG` into this for USDT probes.
pub const VAL_USDT_ARG: u8 = 7;

/// `ValueSpec::string`: the value is a number.
pub const STR_NONE: u8 = 0;
/// The value is a pointer to a NUL-terminated string (user memory first, then kernel).
pub const STR_PTR: u8 = 1;
/// The field is a `__data_loc char[]`: low 16 bits are the string's offset in the record.
pub const STR_DATA_LOC: u8 = 2;
/// The field is an inline `char name[N]` array at `offset`.
pub const STR_INLINE: u8 = 3;

/// Where a value comes from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ValueSpec {
    /// One of `VAL_*`.
    pub kind: u8,
    /// Argument number for `VAL_ARG`.
    pub index: u8,
    /// Field size in bytes (1, 2, 4, 8) for `VAL_FIELD`.
    pub size: u8,
    /// Sign-extend a `VAL_FIELD` narrower than 8 bytes.
    pub signed: u8,
    /// Offset of a `VAL_FIELD` in the tracepoint record.
    pub offset: u16,
    /// One of `STR_*`.
    pub string: u8,
    pub _reserved: u8,
}

crate::user_pod!(ValueSpec);

impl ValueSpec {
    pub const NONE: Self = Self {
        kind: VAL_NONE,
        index: 0,
        size: 0,
        signed: 0,
        offset: 0,
        string: STR_NONE,
        _reserved: 0,
    };
    pub const TID: Self = Self {
        kind: VAL_TID,
        ..Self::NONE
    };
}

/// `Filter::op`: no filter.
pub const OP_NONE: u8 = 0;
pub const OP_EQ: u8 = 1;
pub const OP_NE: u8 = 2;
pub const OP_LT: u8 = 3;
pub const OP_LE: u8 = 4;
pub const OP_GT: u8 = 5;
pub const OP_GE: u8 = 6;
/// The string `value` points at (or holds) equals `Filter::text` (its first `constant` bytes).
pub const OP_STR_EQ: u8 = 7;
pub const OP_STR_NE: u8 = 8;
/// The string starts with `Filter::text` (`"prefix*"`).
pub const OP_STR_PREFIX: u8 = 9;
pub const OP_STR_NOT_PREFIX: u8 = 10;

/// Bytes of a filter's string read from the probed task (NUL included). A string that fills it
/// is cut, so patterns are at most `FILTER_STR_LEN - 2` bytes: a cut string never equals one.
pub const FILTER_STR_LEN: usize = 64;

/// `value OP constant`, evaluated in the kernel before anything else (signed comparison when
/// the value is signed); for the `OP_STR_*` ops `value OP "text"`, with `constant` the text's
/// length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    pub value: ValueSpec,
    /// One of `OP_*`.
    pub op: u8,
    pub _reserved: [u8; 7],
    pub constant: u64,
    pub text: [u8; FILTER_STR_LEN],
}

impl Filter {
    pub const NONE: Self = Self {
        value: ValueSpec::NONE,
        op: OP_NONE,
        _reserved: [0; 7],
        constant: 0,
        text: [0; FILTER_STR_LEN],
    };
}

impl Default for Filter {
    fn default() -> Self {
        Self::NONE
    }
}

crate::user_pod!(Filter);

/// Values a trace event carries.
pub const TRACE_VALUES: usize = 4;
/// Bytes of each string a trace event carries (NUL included; longer strings are cut).
pub const TRACE_STR_LEN: usize = 128;

/// `ProbesConfig::per_pid`: key by process (tgid and comm).
pub const PER_PID: u8 = 1;
/// `ProbesConfig::per_pid` (stacks only): key by comm, not by process.
pub const PER_COMM: u8 = 2;

/// Global `CONFIG` of the probes object, set by the loader before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbesConfig {
    /// One of `MODE_*`.
    pub mode: u8,
    /// Take the probe id from `bpf_get_attach_cookie` (uprobes) instead of `probe_id`.
    pub use_cookie: u8,
    /// Key counts and histograms by process too (`-P`): `PER_PID`; stackcount's stacks can
    /// also be keyed by comm alone (`PER_COMM`), which stays bounded however many processes
    /// come and go.
    pub per_pid: u8,
    /// Key histograms by probe (funclatency `-F`); otherwise every probe shares probe id 0.
    pub per_probe: u8,
    /// MODE_VALUE: log2 histogram (1) or a count per distinct value (0).
    pub hist_values: u8,
    /// MODE_STACK: record the kernel stack / the user stack.
    pub kernel_stack: u8,
    pub user_stack: u8,
    /// `--include-self`: do not set `exclude_tgid` (the loader's own choice, see below).
    pub include_self: u8,
    /// The probe id when there is no cookie.
    pub probe_id: u32,
    /// Only this process (thread group id); 0: any. Uprobes are also scoped at attach time.
    pub tgid: u32,
    /// Never this process: tracer's own, set by the loader unless `include_self`, so a probe
    /// on libc (malloc, write) does not count or trace tracer's own calls. 0: none.
    pub exclude_tgid: u32,
    /// Only this thread; 0: any (trace `-t`).
    pub tid: u32,
    /// MODE_TRACE: at most this many events per second (all CPUs); 0: no limit.
    pub rate_limit: u32,
    /// MODE_LATENCY / MODE_VALUE histograms: divide before bucketing (1, 1000 for µs, 10^6
    /// for ms). Sum, min and max stay undivided.
    pub unit_div: u32,
    /// MODE_VALUE takes `values[0]`; MODE_TRACE sends all of them.
    pub values: [ValueSpec; TRACE_VALUES],
    pub filter: Filter,
    /// MODE_LATENCY: what pairs an entry with its return: by default the thread (`VAL_TID`);
    /// for `--start/--end` tracepoints a field of each record, e.g. a pid.
    pub start_key: ValueSpec,
    pub end_key: ValueSpec,
    /// MODE_STACK: what a hit adds to its stack's count, one of `WEIGHT_*` (`stackcount
    /// --weight`): 1, `values[0]`, or 2 to the power `values[0]` (pages of an allocation order).
    pub weight: u8,
    pub _weight_reserved: [u8; 3],
    /// MODE_STACK: entries of the stack store and of the stack counts (`--stack-storage-size`;
    /// read by the loader, not by the programs).
    pub stack_entries: u32,
}

/// `ProbesConfig::weight`: every hit counts 1.
pub const WEIGHT_ONE: u8 = 0;
/// Every hit adds `values[0]` (a size, a byte count).
pub const WEIGHT_VALUE: u8 = 1;
/// Every hit adds `1 << values[0]` (kmem:mm_page_alloc's `order`: pages); values of 64 or
/// more are read errors.
pub const WEIGHT_POW2: u8 = 2;

crate::user_pod!(ProbesConfig);

impl ProbesConfig {
    pub const DEFAULT: Self = Self {
        mode: MODE_COUNT,
        use_cookie: 0,
        per_pid: 0,
        per_probe: 1,
        hist_values: 0,
        kernel_stack: 1,
        user_stack: 1,
        include_self: 0,
        probe_id: 0,
        tgid: 0,
        exclude_tgid: 0,
        tid: 0,
        rate_limit: 0,
        unit_div: 1,
        values: [ValueSpec::NONE; TRACE_VALUES],
        filter: Filter::NONE,
        start_key: ValueSpec::TID,
        end_key: ValueSpec::TID,
        weight: WEIGHT_ONE,
        _weight_reserved: [0; 3],
        stack_entries: STACKS_ENTRIES,
    };
}

/// Key of `PID_COUNTS` (funccount `-P`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PidCountKey {
    pub probe_id: u32,
    pub tgid: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

crate::user_pod!(PidCountKey);

/// Key of `START`: the pairing key of an entry (thread id, or a record field) and the probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StartKey {
    pub key: u64,
    pub probe_id: u32,
    pub _reserved: u32,
}

crate::user_pod!(StartKey);

/// Key of `HISTS`: per probe (or 0) and per process (or 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HistKey {
    pub probe_id: u32,
    pub tgid: u32,
}

crate::user_pod!(HistKey);

/// A log2 histogram with count, sum, min and max (per CPU; the loader merges).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueHist {
    pub slots: [u64; crate::hist::LOG2_SLOTS],
    pub count: u64,
    pub sum: u64,
    /// Meaningless while `count` is 0 (new entries start all-zero).
    pub min: u64,
    pub max: u64,
}

crate::user_pod!(ValueHist);

/// Key of `VALUE_COUNTS` (argdist `-C`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ValueKey {
    pub value: u64,
    pub probe_id: u32,
    pub tgid: u32,
}

crate::user_pod!(ValueKey);

/// One `trace` event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TraceEvent {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub pid_tgid: u64,
    pub probe_id: u32,
    pub cpu: u32,
    pub comm: [u8; TASK_COMM_LEN],
    pub values: [u64; TRACE_VALUES],
    /// Filled for values whose spec has a `STR_*` kind.
    pub strings: [[u8; TRACE_STR_LEN]; TRACE_VALUES],
}

crate::user_pod!(TraceEvent);

/// Key of `STACK_COUNTS` (stackcount): stack ids from `STACKS` (negative: none / error).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub probe_id: u32,
    pub tgid: u32,
    pub kernel_stack: i32,
    pub user_stack: i32,
    pub comm: [u8; TASK_COMM_LEN],
}

crate::user_pod!(StackKey);

/// `RATE` state for trace's rate limit: the current second and events sent in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    pub second: u64,
    pub sent: u64,
}

crate::user_pod!(RateState);

/// Slots of the `PROBE_STATS` per-CPU array beyond the shared `STATS`.
pub const PSTAT_THROTTLED: u32 = 0;
/// Returns without a matching entry (attached mid-call, or the entry map was full).
pub const PSTAT_UNPAIRED: u32 = 1;
pub const PSTAT_SLOTS: u32 = 4;

/// Sizes of the maps; tools shrink the ones their mode does not use.
pub const PID_COUNTS_ENTRIES: u32 = 10240;
pub const START_ENTRIES: u32 = 10240;
pub const HISTS_ENTRIES: u32 = 1024;
pub const VALUE_COUNTS_ENTRIES: u32 = 10240;
pub const STACK_COUNTS_ENTRIES: u32 = 10240;
pub const STACKS_ENTRIES: u32 = 16384;
pub const EVENTS_BYTES: u32 = 1 << 20;

/// `UsdtArg::kind`: a constant (`-4@$5`): `value`.
pub const USDT_CONST: u8 = 1;
/// A register (`8@%rdi`): the pt_regs slot at `reg_offset`.
pub const USDT_REG: u8 = 2;
/// Memory at a register plus a displacement (`8@-24(%rbp)`): user memory at
/// `regs[reg_offset] + value`.
pub const USDT_DEREF: u8 = 3;
/// At most this many arguments per USDT probe site (SystemTap's sdt.h allows 12).
pub const USDT_MAX_ARGS: usize = 12;

/// One decoded SDT argument operand.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsdtArg {
    /// One of `USDT_*`, 0 for an unused slot.
    pub kind: u8,
    /// Bytes of the value (1, 2, 4, 8).
    pub size: u8,
    /// Sign-extend from `size` bytes.
    pub signed: u8,
    pub _reserved: u8,
    /// Byte offset of the register in `struct pt_regs`.
    pub reg_offset: u16,
    pub _reserved2: u16,
    /// The constant, or the displacement.
    pub value: i64,
}

crate::user_pod!(UsdtArg);

/// Value of `USDT_ARGS`: the argument operands of one probe site.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsdtArgs {
    pub args: [UsdtArg; USDT_MAX_ARGS],
}

crate::user_pod!(UsdtArgs);

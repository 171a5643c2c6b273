//! Probes on demand: the kernel side of funccount, funclatency, argdist, trace and stackcount.
//!
//! One program per attach mechanism, all doing the same thing on a hit (`on_hit`), chosen by
//! `CONFIG.mode`. Uprobes carry their probe id in the BPF cookie, so one loaded object serves
//! any number of them; kernel functions and tracepoints have no cookie in aya's attach paths,
//! so the loader loads one object per probe and sets `CONFIG.probe_id`. Either way a count
//! belongs to exactly one probe.
//!
//! `CONFIG` lives in .rodata, so the verifier sees its values as constants and prunes the
//! branches a run does not use (e.g. reading argument 5 of a function that has 2).
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user_str_bytes, generated::bpf_get_attach_cookie,
    },
    macros::{
        btf_tracepoint, fentry, fexit, kprobe, kretprobe, map, raw_tracepoint, tracepoint, uprobe,
        uretprobe,
    },
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RawTracePointContext,
        RetProbeContext, TracePointContext, tracing::StackIdContext,
    },
};
use tracer_common::{
    hist::log2_slot,
    probes::*,
    stacks::{BPF_F_USER_STACK, STACK_NONE},
    stats::{STAT_EVENTS, STAT_LOST, STAT_MAP_FULL, STAT_READ_ERRORS},
    task::PF_KTHREAD,
};
use tracer_ebpf::{
    stacks::stack_id,
    stats::bump,
    task::{Task, current_in_cgroup},
};

tracer_ebpf::license!();
tracer_ebpf::stats_map!();

// Set by the loader before load; read through `config()` (see `loader_global`).
tracer_ebpf::loader_config!(CONFIG: ProbesConfig = ProbesConfig::DEFAULT);

#[map]
static COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_PROBES, 0);

#[map]
static PID_COUNTS: PerCpuHashMap<PidCountKey, u64> =
    PerCpuHashMap::with_max_entries(PID_COUNTS_ENTRIES, 0);

/// Entry timestamps: LRU so entries whose return never comes (a thread killed mid-call, a
/// longjmp) age out instead of filling the map.
#[map]
static START: LruHashMap<StartKey, u64> = LruHashMap::with_max_entries(START_ENTRIES, 0);

#[map]
static HISTS: PerCpuHashMap<HistKey, ValueHist> = PerCpuHashMap::with_max_entries(HISTS_ENTRIES, 0);

#[map]
static VALUE_COUNTS: PerCpuHashMap<ValueKey, u64> =
    PerCpuHashMap::with_max_entries(VALUE_COUNTS_ENTRIES, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

tracer_ebpf::stack_store!(STACKS_ENTRIES);

#[map]
static STACK_COUNTS: PerCpuHashMap<StackKey, u64> =
    PerCpuHashMap::with_max_entries(STACK_COUNTS_ENTRIES, 0);

#[map]
static RATE: Array<RateState> = Array::with_max_entries(1, 0);

/// One all-zero `ValueHist`, never written: the initial value for new `HISTS` entries
/// (544 bytes, too big to build on the 512-byte BPF stack).
#[map]
static ZERO_HIST: PerCpuArray<ValueHist> = PerCpuArray::with_max_entries(1, 0);

/// USDT probe sites' argument operands, indexed by probe id (filled by the loader before
/// attach, sized to the highest id). An array: the verifier inlines its lookup, where a hash
/// lookup is a helper call and a hash per hit (a fifth of a hit's program time).
#[map]
static USDT_ARGS: Array<UsdtArgs> = Array::with_max_entries(MAX_PROBES, 0);

#[map]
static PROBE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PSTAT_SLOTS, 0);

/// Entry (uprobe, kprobe, fentry, tracepoint, `--start`) or return (uretprobe, kretprobe,
/// fexit, `--end`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Entry,
    Return,
}

/// What a program type can tell about the hit. Argument numbers are matched to constants so
/// every context access has a fixed offset, as the verifier requires.
trait Source: EbpfContext + StackIdContext {
    fn arg(&self, _n: u8) -> Option<u64> {
        None
    }
    fn ret(&self) -> Option<u64> {
        None
    }
    /// The probe id from the attach cookie (0 where there is none).
    fn cookie(&self) -> u64 {
        0
    }
    /// Whether `VAL_FIELD` and record strings can be read (classic tracepoints).
    fn has_record(&self) -> bool {
        false
    }
}

/// Reads the u64 at `offset` bytes into the context with bpf_probe_read_kernel. Direct
/// context loads must use a constant offset per instruction, and LLVM merges the arms of an
/// argument-number match into one load at a computed offset, which the verifier refuses
/// ("dereference of modified ctx ptr"); a helper read has no such rule.
#[inline(always)]
fn ctx_u64<C: EbpfContext>(ctx: &C, offset: usize) -> Option<u64> {
    let at = (ctx.as_ptr() as *const u8).wrapping_add(offset) as *const u64;
    // SAFETY: reading kernel memory through the helper, which checks the access.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(at) }.ok()
}

/// Byte offset of argument `n` in `struct pt_regs` (the x86-64 calling convention, as
/// libbpf's PT_REGS_PARM1..6), from aya's generated bindings.
#[inline(always)]
fn regs_arg_offset(n: u8) -> Option<usize> {
    use aya_ebpf::bindings::pt_regs;
    use core::mem::offset_of;
    Some(match n {
        0 => offset_of!(pt_regs, rdi),
        1 => offset_of!(pt_regs, rsi),
        2 => offset_of!(pt_regs, rdx),
        3 => offset_of!(pt_regs, rcx),
        4 => offset_of!(pt_regs, r8),
        5 => offset_of!(pt_regs, r9),
        _ => return None,
    })
}

/// Argument `n` of a BTF-typed context (fentry, fexit, tp_btf) or a raw tracepoint: u64 slots.
#[inline(always)]
fn slot_arg<C: EbpfContext>(ctx: &C, n: u8) -> Option<u64> {
    if n > 5 {
        return None;
    }
    ctx_u64(ctx, n as usize * 8)
}

/// uprobes and kprobes (the same program type).
impl Source for ProbeContext {
    fn arg(&self, n: u8) -> Option<u64> {
        ctx_u64(self, regs_arg_offset(n)?)
    }
    fn cookie(&self) -> u64 {
        // SAFETY: this program's own context pointer.
        unsafe { bpf_get_attach_cookie(self.as_ptr()) }
    }
}
impl Source for RetProbeContext {
    fn ret(&self) -> Option<u64> {
        Some(RetProbeContext::ret::<u64>(self))
    }
    fn cookie(&self) -> u64 {
        // SAFETY: this program's own context pointer.
        unsafe { bpf_get_attach_cookie(self.as_ptr()) }
    }
}
impl Source for FEntryContext {
    fn arg(&self, n: u8) -> Option<u64> {
        slot_arg(self, n)
    }
}
impl Source for FExitContext {
    fn arg(&self, n: u8) -> Option<u64> {
        slot_arg(self, n)
    }
    fn ret(&self) -> Option<u64> {
        FExitContext::ret::<u64>(self).ok()
    }
}
impl Source for BtfTracePointContext {
    fn arg(&self, n: u8) -> Option<u64> {
        slot_arg(self, n)
    }
}
impl Source for RawTracePointContext {
    fn arg(&self, n: u8) -> Option<u64> {
        slot_arg(self, n)
    }
}
impl Source for TracePointContext {
    fn has_record(&self) -> bool {
        true
    }
}

// ---- programs ----------------------------------------------------------------------------

#[uprobe]
pub fn probes_uprobe(ctx: ProbeContext) -> u32 {
    on_hit(&ctx, Role::Entry, true);
    0
}

#[uretprobe]
pub fn probes_uretprobe(ctx: RetProbeContext) -> u32 {
    on_hit(&ctx, Role::Return, true);
    0
}

#[kprobe]
pub fn probes_kprobe(ctx: ProbeContext) -> u32 {
    on_hit(&ctx, Role::Entry, false);
    0
}

#[kretprobe]
pub fn probes_kretprobe(ctx: RetProbeContext) -> u32 {
    on_hit(&ctx, Role::Return, false);
    0
}

#[fentry]
pub fn probes_fentry(ctx: FEntryContext) -> i32 {
    on_hit(&ctx, Role::Entry, false);
    0
}

#[fexit]
pub fn probes_fexit(ctx: FExitContext) -> i32 {
    on_hit(&ctx, Role::Return, false);
    0
}

#[btf_tracepoint]
pub fn probes_tp_btf(ctx: BtfTracePointContext) -> i32 {
    on_hit(&ctx, Role::Entry, false);
    0
}

#[raw_tracepoint]
pub fn probes_raw_tp(ctx: RawTracePointContext) -> i32 {
    on_hit(&ctx, Role::Entry, false);
    0
}

#[tracepoint]
pub fn probes_tp(ctx: TracePointContext) -> u32 {
    on_hit(&ctx, Role::Entry, false);
    0
}

// The `--end` side of a tracepoint pair (funclatency --start ... --end ...).

#[btf_tracepoint]
pub fn probes_tp_btf_end(ctx: BtfTracePointContext) -> i32 {
    on_hit(&ctx, Role::Return, false);
    0
}

#[raw_tracepoint]
pub fn probes_raw_tp_end(ctx: RawTracePointContext) -> i32 {
    on_hit(&ctx, Role::Return, false);
    0
}

#[tracepoint]
pub fn probes_tp_end(ctx: TracePointContext) -> u32 {
    on_hit(&ctx, Role::Return, false);
    0
}

// ---- the common path ---------------------------------------------------------------------

#[inline(always)]
fn on_hit<C: Source>(ctx: &C, role: Role, user: bool) {
    let config = config();
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if (config.tgid != 0 && config.tgid != tgid)
        || (config.tid != 0 && config.tid != pid_tgid as u32)
        || (config.exclude_tgid != 0 && config.exclude_tgid == tgid)
    {
        return;
    }
    // Every probe of these tools runs in the task that hit it: current.
    if !current_in_cgroup() {
        return;
    }
    let probe_id = if config.use_cookie != 0 {
        ctx.cookie() as u32
    } else {
        config.probe_id
    };
    // A latency's filter is on the entry's arguments: its return is timed when the entry
    // passed (it left a start stamp), whatever the registers hold by then.
    let filter_here =
        config.filter.op != OP_NONE && !(config.mode == MODE_LATENCY && role == Role::Return);
    if filter_here && !passes(ctx, &config.filter, pid_tgid, probe_id, user) {
        return;
    }
    match config.mode {
        MODE_COUNT => count(probe_id, tgid, config.per_pid != 0),
        MODE_LATENCY => latency(ctx, config, role, probe_id, pid_tgid),
        MODE_VALUE => {
            let Some(value) = value(ctx, &config.values[0], pid_tgid, probe_id) else {
                bump(&STATS, STAT_READ_ERRORS);
                return;
            };
            let owner = if config.per_pid != 0 { tgid } else { 0 };
            let id = if config.per_probe != 0 { probe_id } else { 0 };
            if config.hist_values != 0 {
                add_to_hist(
                    HistKey {
                        probe_id: id,
                        tgid: owner,
                    },
                    value,
                    config.unit_div,
                );
            } else {
                increment(
                    &VALUE_COUNTS,
                    &ValueKey {
                        value,
                        probe_id: id,
                        tgid: owner,
                    },
                );
            }
        }
        MODE_TRACE => trace(ctx, config, probe_id, pid_tgid, user),
        MODE_STACK => {
            let weight = match config.weight {
                WEIGHT_VALUE => value(ctx, &config.values[0], pid_tgid, probe_id),
                WEIGHT_POW2 => value(ctx, &config.values[0], pid_tgid, probe_id)
                    .filter(|v| *v < 64)
                    .map(|v| 1u64 << v),
                _ => Some(1),
            };
            let Some(weight) = weight else {
                bump(&STATS, STAT_READ_ERRORS);
                return;
            };
            stack(ctx, config, probe_id, tgid, weight)
        }
        _ => return,
    }
    bump(&STATS, STAT_EVENTS);
}

#[inline(always)]
fn count(probe_id: u32, tgid: u32, per_pid: bool) {
    if let Some(counter) = COUNTS.get_ptr_mut(probe_id) {
        // SAFETY: per-CPU slot from a successful lookup, touched only on this CPU.
        unsafe { *counter += 1 };
    }
    if per_pid {
        let comm = bpf_get_current_comm().unwrap_or([0; 16]);
        increment(
            &PID_COUNTS,
            &PidCountKey {
                probe_id,
                tgid,
                comm,
            },
        );
    }
}

#[inline(always)]
fn increment<K>(map: &PerCpuHashMap<K, u64>, key: &K) {
    add(map, key, 1);
}

#[inline(always)]
fn add<K>(map: &PerCpuHashMap<K, u64>, key: &K, amount: u64) {
    if let Some(counter) = map.get_ptr_mut(key) {
        // SAFETY: per-CPU value from a successful lookup, touched only on this CPU.
        unsafe { *counter += amount };
    } else if map.insert(key, &amount, 0).is_err() {
        bump(&STATS, STAT_MAP_FULL);
    }
}

#[inline(always)]
fn latency<C: Source>(ctx: &C, config: &ProbesConfig, role: Role, probe_id: u32, pid_tgid: u64) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    match role {
        Role::Entry => {
            let Some(key) = value(ctx, &config.start_key, pid_tgid, probe_id) else {
                bump(&STATS, STAT_READ_ERRORS);
                return;
            };
            let key = StartKey {
                key,
                probe_id,
                _reserved: 0,
            };
            if START.insert(&key, &now, 0).is_err() {
                bump(&STATS, STAT_MAP_FULL);
            }
        }
        Role::Return => {
            let Some(key) = value(ctx, &config.end_key, pid_tgid, probe_id) else {
                bump(&STATS, STAT_READ_ERRORS);
                return;
            };
            let key = StartKey {
                key,
                probe_id,
                _reserved: 0,
            };
            // SAFETY: the value is copied out before the entry is removed.
            let Some(start) = (unsafe { START.get(&key) }).copied() else {
                // With a filter, most unpaired returns are calls the filter left out.
                if config.filter.op == OP_NONE {
                    bump(&PROBE_STATS, PSTAT_UNPAIRED);
                }
                return;
            };
            let _ = START.remove(&key);
            let delta = now.saturating_sub(start);
            let tgid = if config.per_pid != 0 {
                (pid_tgid >> 32) as u32
            } else {
                0
            };
            let id = if config.per_probe != 0 { probe_id } else { 0 };
            add_to_hist(HistKey { probe_id: id, tgid }, delta, config.unit_div);
        }
    }
}

#[inline(always)]
fn add_to_hist(key: HistKey, value: u64, unit_div: u32) {
    let ptr = match HISTS.get_ptr_mut(&key) {
        Some(ptr) => ptr,
        None => {
            let Some(zero) = ZERO_HIST.get(0) else { return };
            if HISTS.insert(&key, zero, 0).is_err() {
                bump(&STATS, STAT_MAP_FULL);
                return;
            }
            match HISTS.get_ptr_mut(&key) {
                Some(ptr) => ptr,
                None => return,
            }
        }
    };
    let scaled = if unit_div > 1 {
        value / unit_div as u64
    } else {
        value
    };
    let slot = (log2_slot(scaled) & 63) as usize;
    // SAFETY: per-CPU value from a successful lookup, touched only on this CPU; slot < 64.
    unsafe {
        let hist = &mut *ptr;
        if let Some(n) = hist.slots.get_mut(slot) {
            *n += 1;
        }
        if hist.count == 0 || value < hist.min {
            hist.min = value;
        }
        if value > hist.max {
            hist.max = value;
        }
        hist.count += 1;
        hist.sum = hist.sum.wrapping_add(value);
    }
}

/// Reads a value; `None` when it cannot be read here (a failed memory read, or an argument the
/// program type does not have).
#[inline(always)]
fn value<C: Source>(ctx: &C, spec: &ValueSpec, pid_tgid: u64, probe_id: u32) -> Option<u64> {
    match spec.kind {
        VAL_ARG => ctx.arg(spec.index).map(|v| narrow(v, spec)),
        VAL_USDT_ARG => usdt_arg(ctx, probe_id, spec.index),
        VAL_RET => ctx.ret().map(|v| narrow(v, spec)),
        VAL_FIELD if ctx.has_record() => field(ctx, spec),
        VAL_TID => Some(pid_tgid & 0xffff_ffff),
        VAL_PID => Some(pid_tgid >> 32),
        // SAFETY: helper without arguments.
        VAL_CPU => Some(unsafe { bpf_get_smp_processor_id() } as u64),
        _ => None,
    }
}

/// USDT argument `index` of probe site `probe_id`: a constant, a register, or user memory at
/// a register plus a displacement, narrowed to its size (sign-extended when signed). The
/// register is read through the helper at its pt_regs offset (see `ctx_u64`).
#[inline(always)]
fn usdt_arg<C: Source>(ctx: &C, probe_id: u32, index: u8) -> Option<u64> {
    let site = USDT_ARGS.get(probe_id)?;
    let arg = site.args.get(index as usize)?;
    let raw = match arg.kind {
        USDT_CONST => arg.value as u64,
        USDT_REG => ctx_u64(ctx, (arg.reg_offset & 0xf8) as usize)?,
        USDT_DEREF => {
            let base = ctx_u64(ctx, (arg.reg_offset & 0xf8) as usize)?;
            let at = base.wrapping_add(arg.value as u64) as *const u64;
            // SAFETY: user memory through the helper, which checks the access.
            unsafe { aya_ebpf::helpers::bpf_probe_read_user(at) }.ok()?
        }
        _ => return None,
    };
    let signed = arg.signed != 0;
    Some(match (arg.size, signed) {
        (1, true) => raw as i8 as i64 as u64,
        (1, false) => raw as u8 as u64,
        (2, true) => raw as i16 as i64 as u64,
        (2, false) => raw as u16 as u64,
        (4, true) => raw as i32 as i64 as u64,
        (4, false) => raw as u32 as u64,
        _ => raw,
    })
}

/// A register holding a declared `int` (or narrower) type: only its low bytes are the value
/// (the ABI leaves the rest undefined), sign-extended when the type is signed. Size 0 or 8:
/// the whole register.
#[inline(always)]
fn narrow(v: u64, spec: &ValueSpec) -> u64 {
    let signed = spec.signed != 0;
    match (spec.size, signed) {
        (1, true) => v as i8 as i64 as u64,
        (1, false) => v as u8 as u64,
        (2, true) => v as i16 as i64 as u64,
        (2, false) => v as u16 as u64,
        (4, true) => v as i32 as i64 as u64,
        (4, false) => v as u32 as u64,
        _ => v,
    }
}

#[inline(always)]
fn field<C: Source>(ctx: &C, spec: &ValueSpec) -> Option<u64> {
    let base = ctx.as_ptr() as *const u8;
    // SAFETY: the offset and size come from this tracepoint's format file; bpf_probe_read
    // checks the access anyway.
    unsafe {
        let at = base.wrapping_add(spec.offset as usize);
        let signed = spec.signed != 0;
        Some(match spec.size {
            1 => {
                let v = aya_ebpf::helpers::bpf_probe_read_kernel(at).ok()?;
                if signed {
                    v as i8 as i64 as u64
                } else {
                    v as u8 as u64
                }
            }
            2 => {
                let v: u16 = aya_ebpf::helpers::bpf_probe_read_kernel(at as *const u16).ok()?;
                if signed {
                    v as i16 as i64 as u64
                } else {
                    v as u64
                }
            }
            4 => {
                let v: u32 = aya_ebpf::helpers::bpf_probe_read_kernel(at as *const u32).ok()?;
                if signed {
                    v as i32 as i64 as u64
                } else {
                    v as u64
                }
            }
            _ => aya_ebpf::helpers::bpf_probe_read_kernel(at as *const u64).ok()?,
        })
    }
}

#[inline(always)]
fn passes<C: Source>(ctx: &C, filter: &Filter, pid_tgid: u64, probe_id: u32, user: bool) -> bool {
    let v = value(ctx, &filter.value, pid_tgid, probe_id);
    if filter.op >= OP_STR_EQ {
        return passes_string(ctx, filter, v, user);
    }
    let Some(v) = v else {
        return false;
    };
    let c = filter.constant;
    if filter.value.signed != 0 {
        let (v, c) = (v as i64, c as i64);
        match filter.op {
            OP_EQ => v == c,
            OP_NE => v != c,
            OP_LT => v < c,
            OP_LE => v <= c,
            OP_GT => v > c,
            OP_GE => v >= c,
            _ => true,
        }
    } else {
        match filter.op {
            OP_EQ => v == c,
            OP_NE => v != c,
            OP_LT => v < c,
            OP_LE => v <= c,
            OP_GT => v > c,
            OP_GE => v >= c,
            _ => true,
        }
    }
}

/// `value OP "text"`: the string is read into a stack buffer (FILTER_STR_LEN bytes) and
/// compared byte by byte up to the pattern's length; an unreadable string passes no filter.
#[inline(always)]
fn passes_string<C: Source>(ctx: &C, filter: &Filter, value: Option<u64>, user: bool) -> bool {
    let mut buf = [0u8; FILTER_STR_LEN];
    let Ok(len) = read_string(ctx, &filter.value, value, user, &mut buf) else {
        return false;
    };
    let want = filter.constant as usize;
    let mut same_start = true;
    for i in 0..FILTER_STR_LEN {
        if i >= want {
            break;
        }
        if buf[i] != filter.text[i] {
            same_start = false;
            break;
        }
    }
    match filter.op {
        OP_STR_EQ => same_start && len == want,
        OP_STR_NE => !(same_start && len == want),
        OP_STR_PREFIX => same_start,
        _ => !same_start,
    }
}

/// At most about `rate_limit` events per second over all CPUs: a shared counter reset when the
/// second changes. Core atomics are not available for the BPF target in stable Rust, so CPUs
/// racing on the counter can let a few more through (never fewer).
#[inline(always)]
fn rate_ok(limit: u32) -> bool {
    if limit == 0 {
        return true;
    }
    let Some(state) = RATE.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: helper without arguments.
    let second = unsafe { bpf_ktime_get_ns() } / 1_000_000_000;
    // SAFETY: pointer from a successful lookup into a one-entry array map.
    unsafe {
        if (*state).second != second {
            (*state).second = second;
            (*state).sent = 0;
        }
        let sent = (*state).sent;
        (*state).sent = sent + 1;
        sent < limit as u64
    }
}

#[inline(always)]
fn trace<C: Source>(ctx: &C, config: &ProbesConfig, probe_id: u32, pid_tgid: u64, user: bool) {
    if !rate_ok(config.rate_limit) {
        bump(&PROBE_STATS, PSTAT_THROTTLED);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<TraceEvent>(0) else {
        bump(&STATS, STAT_LOST);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at reserved ring-buffer memory big enough for a TraceEvent; every
    // field is written before submit (strings at least up to their NUL).
    unsafe {
        (*event).ts_ns = bpf_ktime_get_ns();
        (*event).pid_tgid = pid_tgid;
        (*event).probe_id = probe_id;
        (*event).cpu = bpf_get_smp_processor_id();
        (*event).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        for i in 0..TRACE_VALUES {
            let (Some(spec), Some(slot), Some(text)) = (
                config.values.get(i),
                (*event).values.get_mut(i),
                (*event).strings.get_mut(i),
            ) else {
                continue;
            };
            text[0] = 0;
            if spec.kind == VAL_NONE {
                *slot = 0;
                continue;
            }
            let v = value(ctx, spec, pid_tgid, probe_id);
            *slot = v.unwrap_or(0);
            if spec.string != STR_NONE && read_string(ctx, spec, v, user, text).is_err() {
                bump(&STATS, STAT_READ_ERRORS);
            }
        }
    }
    entry.submit(0);
}

/// The string of `spec` into `out` (cut to fit, NUL-terminated); its length without the NUL.
#[inline(always)]
fn read_string<C: Source, const N: usize>(
    ctx: &C,
    spec: &ValueSpec,
    value: Option<u64>,
    user: bool,
    out: &mut [u8; N],
) -> Result<usize, i32> {
    let record = ctx.as_ptr() as *const u8;
    // SAFETY: the helpers check every read; failures come back as errors.
    unsafe {
        match spec.string {
            STR_PTR => {
                let ptr = value.ok_or(-1)? as *const u8;
                if user {
                    bpf_probe_read_user_str_bytes(ptr, out).map(|s| s.len())
                } else if let Ok(s) = bpf_probe_read_kernel_str_bytes(ptr, out) {
                    Ok(s.len())
                } else {
                    // Kernel functions and syscall tracepoints get user pointers too.
                    bpf_probe_read_user_str_bytes(ptr, out).map(|s| s.len())
                }
            }
            STR_DATA_LOC if ctx.has_record() => {
                let loc = value.ok_or(-1)?;
                let ptr = record.wrapping_add((loc & 0xffff) as usize);
                bpf_probe_read_kernel_str_bytes(ptr, out).map(|s| s.len())
            }
            STR_INLINE if ctx.has_record() => {
                let ptr = record.wrapping_add(spec.offset as usize);
                bpf_probe_read_kernel_str_bytes(ptr, out).map(|s| s.len())
            }
            _ => Err(-1),
        }
    }
}

#[inline(always)]
fn current_is_kthread() -> bool {
    // SAFETY: helper without arguments; the task is only read through probe_read.
    let task = Task::from_ptr(unsafe { bpf_get_current_task() } as *const u8);
    task.flags().is_some_and(|f| f & PF_KTHREAD != 0)
}

#[inline(always)]
fn stack<C: Source>(ctx: &C, config: &ProbesConfig, probe_id: u32, tgid: u32, weight: u64) {
    let kernel_stack = if config.kernel_stack != 0 {
        stack_id(ctx, &STACKS, 0, &STATS)
    } else {
        STACK_NONE
    };
    // Kernel threads (and the idle tasks, tgid 0) have no user stack: asking would count a
    // `[lost: stack not readable]` stack for every hit. TASK_OFFSETS is set in stack mode.
    let user_stack = if config.user_stack != 0 && tgid != 0 && !current_is_kthread() {
        stack_id(ctx, &STACKS, BPF_F_USER_STACK, &STATS)
    } else {
        STACK_NONE
    };
    if kernel_stack == STACK_NONE && user_stack == STACK_NONE {
        // User stacks only, and this task has none: nothing to count.
        return;
    }
    let (tgid, comm) = match config.per_pid {
        0 => (0, [0; 16]),
        PER_COMM => (0, bpf_get_current_comm().unwrap_or([0; 16])),
        _ => (tgid, bpf_get_current_comm().unwrap_or([0; 16])),
    };
    add(
        &STACK_COUNTS,
        &StackKey {
            probe_id,
            tgid,
            kernel_stack,
            user_stack,
            comm,
        },
        weight,
    );
}

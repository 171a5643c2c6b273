//! Copying the current task's user stack for unwinding in userspace (`tracer_common::ustack`):
//! its user registers, from the sample when it interrupted user mode, else from the `pt_regs`
//! the kernel saved at the top of the task's kernel stack; then the stack from the stack
//! pointer up, into a ring-buffer record.

use aya_ebpf::{
    EbpfContext as _,
    bindings::pt_regs,
    cty::c_void,
    helpers::{bpf_get_current_task, bpf_probe_read_kernel, generated::bpf_probe_read_user},
    maps::RingBuf,
    programs::PerfEventContext,
};
use tracer_common::{
    stacks::TaskStackKey,
    ustack::{
        USER_CS, USER_DS, USER_STACK_BYTES, USER_STACK_CHUNK, USER32_CS, UserRegsOffsets,
        UserStackRecord,
    },
};

/// `BPF_RB_NO_WAKEUP`.
const BPF_RB_NO_WAKEUP: u64 = 1;

/// Where user registers are saved; the loader sets it from BTF (`UserRegsOffsets`).
#[unsafe(no_mangle)]
pub static USER_REGS: UserRegsOffsets = UserRegsOffsets::UNSET;

/// User-mode registers an unwind starts from.
pub struct UserRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// The user registers of a perf-event sample: the interrupted registers when the sample hit
/// user mode, else the ones saved on kernel entry.
#[inline(always)]
pub fn sample_user_regs(ctx: &PerfEventContext) -> Option<UserRegs> {
    // The context (bpf_perf_event_data) starts with the interrupted registers.
    let regs = ctx.as_ptr() as *const pt_regs;
    // SAFETY: the perf-event context's register block, readable as a whole.
    let (cs, ip, sp, bp) = unsafe { ((*regs).cs, (*regs).rip, (*regs).rsp, (*regs).rbp) };
    if cs & 3 == 3 {
        return Some(UserRegs { ip, sp, bp });
    }
    current_user_regs()
}

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one yields Err.
    unsafe { bpf_probe_read_kernel(addr as *const u64).ok() }
}

/// The user registers the current task entered the kernel with (None for kernel threads, or
/// when no candidate layout holds user segments; see `UserRegsOffsets`).
#[inline(always)]
pub fn current_user_regs() -> Option<UserRegs> {
    let o = crate::loader_global(&USER_REGS);
    if o.valid == 0 {
        return None;
    }
    // SAFETY: helper without arguments; the task is only read through probe_read.
    let task = unsafe { bpf_get_current_task() };
    let stack = read_u64(task + o.task_stack as u64)?;
    if stack == 0 {
        return None;
    }
    for size in [16384u64, 32768] {
        for pad in [0u64, 16] {
            let regs = stack + size - pad - o.regs_size as u64;
            let cs = read_u64(regs + o.cs as u64)? & 0xffff;
            let ss = read_u64(regs + o.ss as u64)? & 0xffff;
            if (cs == USER_CS || cs == USER32_CS) && ss == USER_DS {
                return Some(UserRegs {
                    ip: read_u64(regs + o.ip as u64)?,
                    sp: read_u64(regs + o.sp as u64)?,
                    bp: read_u64(regs + o.bp as u64)?,
                });
            }
        }
    }
    None
}

/// Sends `key` (its `ustack` to be filled in by userspace), `value` and a copy of the user
/// stack at `regs` to `ring`. False when the ring is full (the caller falls back to frame
/// pointers and counts the fallback).
#[inline(always)]
pub fn submit_user_stack(ring: &RingBuf, key: &TaskStackKey, value: u64, regs: &UserRegs) -> bool {
    let Some(mut entry) = ring.reserve::<UserStackRecord>(0) else {
        return false;
    };
    let record = entry.as_mut_ptr();
    let mut len = 0u32;
    // SAFETY: `record` is the reserved entry, exclusively ours until submitted; the user
    // stack is read with bpf_probe_read_user, which fails (leaving the rest unread) on an
    // address that is not mapped.
    unsafe {
        (*record).key = *key;
        (*record).value = value;
        (*record).ip = regs.ip;
        (*record).sp = regs.sp;
        (*record).bp = regs.bp;
        (*record)._reserved = 0;
        let stack = (*record).stack.as_mut_ptr();
        let mut i = 0usize;
        while i < USER_STACK_BYTES / USER_STACK_CHUNK {
            let off = i * USER_STACK_CHUNK;
            if bpf_probe_read_user(
                stack.add(off) as *mut c_void,
                USER_STACK_CHUNK as u32,
                (regs.sp + off as u64) as *const c_void,
            ) != 0
            {
                break;
            }
            len += USER_STACK_CHUNK as u32;
            i += 1;
        }
        (*record).len = len;
    }
    // No wakeup: tracer's unwinding thread polls the ring (a wakeup per sample would cost an
    // irq_work and a context switch).
    entry.submit(BPF_RB_NO_WAKEUP);
    true
}

//! `bpf_get_stackid` for every tool that keys aggregations by stack: failures are counted in
//! `STATS` (collision vs lost) and returned as the negative errno, so the sample still counts
//! under a `[lost: ...]` stack in userspace (see `tracer_common::stacks`).

use aya_ebpf::{
    maps::{PerCpuArray, StackTrace},
    programs::tracing::StackIdContext,
};
use tracer_common::{
    stacks::{BPF_F_USER_STACK, STACK_NONE},
    stats::{STAT_STACK_COLLISIONS, STAT_STACK_LOST},
};

use crate::stats::bump;

const EEXIST: i32 = 17;
const EFAULT: i32 = 14;

/// The id of the current kernel (`flags` 0) or user (`BPF_F_USER_STACK`) stack in `map`, or
/// the helper's negative errno (`STACK_NONE` for the kernel stack of a user-mode sample). No BPF_F_REUSE_STACKID: a colliding stack is reported as lost
/// rather than overwriting (and silently re-attributing) the older one.
#[inline(always)]
pub fn stack_id<C: StackIdContext>(
    ctx: &C,
    map: &StackTrace,
    flags: u64,
    stats: &PerCpuArray<u64>,
) -> i32 {
    match ctx.get_stackid(map, flags) {
        Ok(id) => id as i32,
        // A kernel stack that faults is a sample taken in user mode: there is none to store.
        Err(err) if err == -EFAULT && flags & BPF_F_USER_STACK == 0 => STACK_NONE,
        Err(err) => {
            bump(
                stats,
                if err == -EEXIST {
                    STAT_STACK_COLLISIONS
                } else {
                    STAT_STACK_LOST
                },
            );
            err
        }
    }
}

//! The stack store every tool that keys aggregations by stack uses: `bpf_get_stack` into a
//! per-CPU buffer, then the frames are stored in the tool's `STACKS` hash map under an id
//! derived from their hash, compared frame by frame with what the id holds. A different stack
//! on the same id moves on to the next id (a few probes), so two stacks never share an id and
//! no stack is refused because another hashed to its bucket — `bpf_get_stackid`'s stack maps
//! lose such stacks (EEXIST: 4.6 % of a SYN flood's softirq samples at the default size).
//! A stack that still cannot be stored (the map full, the walk failed) is counted in `STATS`
//! and returned as the negative errno, so the sample still counts under a `[lost: ...]` stack
//! in userspace (see `tracer_common::stacks`).

use aya_ebpf::{
    EbpfContext,
    cty::c_void,
    helpers::generated::bpf_get_stack,
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use tracer_common::{
    stacks::{BPF_F_USER_STACK, STACK_DEPTH, STACK_ID_MASK, STACK_NONE, StackFrames},
    stats::{STAT_STACK_COLLISIONS, STAT_STACK_LOST},
};

use crate::stats::bump;

const EEXIST: i32 = 17;
const EFAULT: i32 = 14;
const ENOMEM: i32 = 12;
/// `BPF_NOEXIST`: insert only if the id is free.
const NOEXIST: u64 = 1;
/// Ids tried per stack before it counts as a collision (only when the map is nearly full).
const PROBES: u32 = 4;

/// A tool's stack store: frames (leaf first, zero-padded) by id.
pub type StackStore = HashMap<u32, StackFrames>;

/// Declares the tool's `STACKS` store with `$entries` entries (the loader may resize it:
/// `--stack-storage-size`).
#[macro_export]
macro_rules! stack_store {
    ($entries:expr) => {
        #[aya_ebpf::macros::map]
        static STACKS: $crate::stacks::StackStore =
            $crate::stacks::StackStore::with_max_entries($entries, 0);
    };
}

/// Where `bpf_get_stack` writes, one per CPU (a stack is 1016 bytes: more than a program's
/// stack frame may hold).
#[map]
static STACK_SCRATCH: PerCpuArray<StackFrames> = PerCpuArray::with_max_entries(1, 0);

/// The id of the current kernel (`flags` 0) or user (`BPF_F_USER_STACK`) stack in `store`, or
/// a negative errno (`STACK_NONE` for the kernel stack of a sample taken in user mode).
#[inline(always)]
pub fn stack_id<C: EbpfContext>(
    ctx: &C,
    store: &StackStore,
    flags: u64,
    stats: &aya_ebpf::maps::PerCpuArray<u64>,
) -> i32 {
    let user = flags & BPF_F_USER_STACK != 0;
    let Some(buf) = STACK_SCRATCH.get_ptr_mut(0) else {
        bump(stats, STAT_STACK_LOST);
        return -ENOMEM;
    };
    let frames = buf as *mut u64;
    let size = (STACK_DEPTH as usize * 8) as u32;
    // SAFETY: `buf` is this CPU's scratch value, `size` bytes long.
    let bytes = unsafe { bpf_get_stack(ctx.as_ptr(), buf as *mut c_void, size, flags) };
    if bytes <= 0 {
        // No kernel frames: a sample taken in user mode has no kernel stack to store.
        if !user {
            return STACK_NONE;
        }
        bump(stats, STAT_STACK_LOST);
        return -EFAULT;
    }
    // bpf_get_stack zeroes the buffer past the frames it wrote, so the stored value is the
    // frames and zeros. The loop's bound is the frame count, which is dead after it: the
    // verifier merges its exits instead of checking the rest once per possible count.
    let n = (bytes as usize / 8).min(STACK_DEPTH as usize);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ flags;
    let mut i = 0usize;
    while i < n {
        // SAFETY: i < n <= STACK_DEPTH, inside the scratch value.
        hash = (hash ^ unsafe { *frames.add(i) }).wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash ^= hash >> 29;
    let mut probe = 0u32;
    while probe < PROBES {
        let id = ((hash as u32) ^ ((hash >> 32) as u32)).wrapping_add(probe) & STACK_ID_MASK;
        // SAFETY: map lookup; the value is only read.
        match unsafe { store.get(id) } {
            Some(held) => {
                if same(held as *const StackFrames as *const u64, frames) {
                    return id as i32;
                }
            }
            None => {
                // SAFETY: `buf` is a valid, initialised StackFrames. Passed by reference: a
                // 1016-byte copy would not fit the program's 512-byte stack.
                #[allow(clippy::needless_borrows_for_generic_args)]
                match store.insert(id, unsafe { &*buf }, NOEXIST) {
                    Ok(()) => return id as i32,
                    // Taken meanwhile (another CPU): maybe by this very stack.
                    Err(e) if e == -EEXIST as _ => {
                        if let Some(held) = unsafe { store.get(id) }
                            && same(held as *const StackFrames as *const u64, frames)
                        {
                            return id as i32;
                        }
                    }
                    Err(_) => {
                        bump(stats, STAT_STACK_LOST);
                        return -ENOMEM;
                    }
                }
            }
        }
        probe += 1;
    }
    bump(stats, STAT_STACK_COLLISIONS);
    -EEXIST
}

/// Whether the stored frames at `held` are the frames at `frames` (both zero-padded: an
/// instruction pointer is never 0, so the first zero both share ends both stacks).
#[inline(always)]
fn same(held: *const u64, frames: *const u64) -> bool {
    let mut i = 0usize;
    while i < STACK_DEPTH as usize {
        // SAFETY: both are StackFrames values; i < STACK_DEPTH.
        let (a, b) = unsafe { (*held.add(i), *frames.add(i)) };
        if a != b {
            return false;
        }
        if a == 0 {
            return true;
        }
        i += 1;
    }
    true
}

//! User stacks copied for unwinding in userspace (`--call-graph dwarf`, the default): instead
//! of walking frame pointers in the kernel (`bpf_get_stackid`), a program copies the sampled
//! task's user registers and the top `USER_STACK_BYTES` of its user stack into a ring buffer;
//! userspace unwinds the copy with the binaries' `.eh_frame`/`.debug_frame` tables
//! (tracer/src/unwind.rs) and counts the sample under the stack it found. Code built without
//! frame pointers (Debian's nginx and libc) gets complete stacks this way; frames without
//! unwind tables fall back to frame pointers. See docs/architecture.md "User stacks".

use crate::stacks::TaskStackKey;

/// Bytes of user stack copied per sample, from the stack pointer up (perf's default for
/// `--call-graph dwarf` is 8 KiB; nginx's and most servers' stacks fit in 16).
pub const USER_STACK_BYTES: usize = 16384;

/// The copy is made in chunks of this size; it stops at the first chunk that cannot be read
/// (the top of the stack mapping), so at most a chunk's worth of the stack's top (argv and
/// environment strings, above the outermost frame) is left out.
pub const USER_STACK_CHUNK: usize = 512;

/// Default size of a tool's `USER_STACKS` ring buffer (a power of two of pages): ~500 samples.
pub const USER_STACKS_RING_BYTES: u32 = 8 << 20;

/// What a tool's program sends for one sample whose user stack is to be unwound in userspace.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UserStackRecord {
    /// The aggregation key, `ustack` left `STACK_NONE` (userspace fills it in).
    pub key: TaskStackKey,
    /// What the sample adds to its key (profile: 1; offcputime: nanoseconds).
    pub value: u64,
    /// User registers at the sample: instruction pointer, stack pointer, frame pointer.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Bytes of `stack` copied (from `sp` up), a multiple of `USER_STACK_CHUNK`.
    pub len: u32,
    pub _reserved: u32,
    pub stack: [u8; USER_STACK_BYTES],
}

/// Bytes of a `UserStackRecord` before its stack.
pub const USER_STACK_HEADER: usize = core::mem::size_of::<UserStackRecord>() - USER_STACK_BYTES;

/// Where a task's user registers are saved while it runs in the kernel (the `pt_regs` at the
/// top of its kernel stack), for samples and events taken in kernel mode. Member offsets from
/// the running kernel's BTF (global `USER_REGS`); the stack size and the padding above the
/// registers are not in BTF, so the program tries the possible layouts (16 or 32 KiB stacks;
/// 0 or 16 bytes of padding, FRED kernels) and takes the one whose saved code and stack
/// segments are the user ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserRegsOffsets {
    /// `task_struct::stack` (the kernel stack's lowest address).
    pub task_stack: u32,
    /// `sizeof(struct pt_regs)`.
    pub regs_size: u32,
    pub ip: u32,
    pub sp: u32,
    pub bp: u32,
    pub cs: u32,
    pub ss: u32,
    /// 1 once the loader filled this in (0: only user-mode samples are copied).
    pub valid: u32,
}

crate::user_pod!(UserRegsOffsets);

impl UserRegsOffsets {
    pub const UNSET: Self = Self {
        task_stack: 0,
        regs_size: 0,
        ip: 0,
        sp: 0,
        bp: 0,
        cs: 0,
        ss: 0,
        valid: 0,
    };
}

/// x86_64's user code segments (64-bit, and 32-bit compat) and user stack segment selectors:
/// what `pt_regs::cs`/`ss` hold for a task that entered the kernel from user mode.
pub const USER_CS: u64 = 0x33;
pub const USER32_CS: u64 = 0x23;
pub const USER_DS: u64 = 0x2b;

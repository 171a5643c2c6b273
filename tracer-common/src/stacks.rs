//! Stack ids as the kernel programs store them in aggregation keys, shared by every tool that
//! collects stacks (profile, offcputime, stackcount, softirq-top --stacks).
//!
//! A key field holds either a stack id (>= 0: the tool's `STACKS` store, tracer-ebpf's stacks.rs), `STACK_NONE` when the tool did not ask
//! for that stack (e.g. `-K`, or the user stack of a kernel thread), or the helper's negative
//! errno when the stack could not be stored. Keeping the errno in the key means such samples are
//! still counted and shown (as `[lost: ...]`), never dropped.

/// The stack was not requested (or does not exist, like a kernel thread's user stack).
pub const STACK_NONE: i32 = i32::MIN;

/// Frames kept per stack: the kernel's PERF_MAX_STACK_DEPTH, the size of aya-ebpf's stack map
/// values.
pub const STACK_DEPTH: u32 = 127;

/// A stored stack: instruction pointers, leaf first, zero after the last.
pub type StackFrames = [u64; STACK_DEPTH as usize];

/// Stack ids are below this (`STACK_ID_MASK + 1`); ids from 2^30 up name stacks unwound in
/// userspace.
pub const STACK_ID_MASK: u32 = (1 << 30) - 1;

/// Default entries of a tool's `STACKS` map (the loader may resize it: `--stack-storage-size`).
pub const STACKS_ENTRIES: u32 = 16384;

/// `bpf_get_stackid` flag: the user-space stack instead of the kernel one.
pub const BPF_F_USER_STACK: u64 = 1 << 8;

/// Aggregation key of the per-task stack tools (profile, kstacks, offcputime): who, and where.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskStackKey {
    pub tgid: u32,
    pub pid: u32,
    /// Kernel stack id (`bpf_get_stackid`, `STACK_NONE`, or a negative errno).
    pub kstack: i32,
    /// User stack id, same encoding.
    pub ustack: i32,
    /// Tool-specific bits (`SAMPLE_*`, `OFFCPU_*`).
    pub flags: u32,
    pub _reserved: u32,
    pub comm: [u8; crate::TASK_COMM_LEN],
}

crate::user_pod!(TaskStackKey);

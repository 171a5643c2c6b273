//! Where the kernel keeps the `task_struct` members our programs read.
//!
//! Rust eBPF objects carry no CO-RE relocations (aya issue 349), so the loader resolves these
//! offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux) and writes them into the
//! programs' `TASK_OFFSETS` global before loading.

/// Byte offsets of `task_struct` members on the running kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    pub flags: u32,
    pub pid: u32,
    pub tgid: u32,
    pub real_parent: u32,
    pub comm: u32,
    /// Keeps the struct a multiple of 8 bytes, with no implicit padding.
    pub _reserved: u32,
}

crate::user_pod!(TaskOffsets);

/// `task_struct::flags` bit set on kernel threads (and on the per-CPU idle tasks).
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// kthreadd, the parent of every kernel thread.
pub const KTHREADD_PID: u32 = 2;

//! Types shared by tracer's kernel programs (`tracer-ebpf`) and its userspace loader (`tracer`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel side writes it into maps and ring
//! buffers, the userspace side reads the same bytes back. One module per tool, plus the pieces
//! several tools share (task offsets, comm filters, statistics slots).
#![no_std]

pub mod biotop;
pub mod comm;
pub mod forksnoop;
pub mod funcgraph;
pub mod functrace;
pub mod hardirqs;
pub mod hist;
pub mod memleak;
pub mod migrations;
pub mod offcputime;
pub mod probe;
pub mod probes;
pub mod profile;
pub mod reclaimtop;
pub mod sched;
pub mod softirq_top;
pub mod stacks;
pub mod stats;
pub mod task;
pub mod ustack;
pub mod wqtop;

/// Length of `task_struct::comm`, NUL included.
pub const TASK_COMM_LEN: usize = 16;

/// Marks shared types as plain old data for aya's map and global APIs (userspace only).
macro_rules! user_pod {
    ($($ty:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is #[repr(C)], Copy, holds only integers and byte arrays, and
            // has no padding the kernel could leave uninitialised that we would read as data.
            unsafe impl aya::Pod for $ty {}
        )*
    };
}
pub(crate) use user_pod;

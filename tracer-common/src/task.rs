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

/// `--cgroup` off: every task passes.
pub const CGROUP_ANY: u32 = 0;
/// `--cgroup-exact PATH`: only tasks whose cgroup v2 is PATH itself.
pub const CGROUP_EXACT: u32 = 1;
/// `--cgroup PATH`: tasks in PATH or any cgroup below it.
pub const CGROUP_SUBTREE: u32 = 2;

/// How many cgroups up from a task's own the kernel-side check looks for the target. Deeper
/// trees than this below the target do not match (systemd's deepest slices are ~6 levels).
pub const CGROUP_MAX_DEPTH: u32 = 32;

/// The `--cgroup` filter every task-filtering program reads (global `CGROUP_FILTER`), with the
/// member offsets of the path from a `task_struct` to its cgroup v2 id
/// (`task->cgroups->dfl_cgrp->kn->id`, parents through `kn->parent`), resolved from the
/// running kernel's BTF like `TaskOffsets`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupFilter {
    /// The target cgroup's id (its kernfs node id: the directory's inode number).
    pub id: u64,
    /// One of `CGROUP_*`.
    pub mode: u32,
    /// `task_struct::cgroups` (a `struct css_set *`).
    pub task_cgroups: u32,
    /// `css_set::dfl_cgrp` (the task's cgroup on the v2 hierarchy).
    pub css_set_dfl_cgrp: u32,
    /// `cgroup::kn` (its kernfs directory).
    pub cgroup_kn: u32,
    /// `kernfs_node::id` (u64; what bpf_get_current_cgroup_id returns).
    pub kernfs_id: u32,
    /// `kernfs_node::parent` (`__parent` from Linux 6.15).
    pub kernfs_parent: u32,
}

crate::user_pod!(CgroupFilter);

impl CgroupFilter {
    pub const ANY: Self = Self {
        id: 0,
        mode: CGROUP_ANY,
        task_cgroups: 0,
        css_set_dfl_cgrp: 0,
        cgroup_kn: 0,
        kernfs_id: 0,
        kernfs_parent: 0,
    };
}

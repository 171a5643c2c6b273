//! Reading `task_struct` members without CO-RE: offsets come from the `TASK_OFFSETS` global,
//! which the loader fills from the running kernel's BTF.

use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_task, bpf_probe_read_kernel};
use tracer_common::task::{CGROUP_ANY, CGROUP_EXACT, CGROUP_MAX_DEPTH, CgroupFilter, TaskOffsets};

#[unsafe(no_mangle)]
pub static TASK_OFFSETS: TaskOffsets = TaskOffsets {
    flags: 0,
    pid: 0,
    tgid: 0,
    real_parent: 0,
    comm: 0,
    _reserved: 0,
};

/// The user's `--cgroup` filter; the loader sets it in every object whose programs call
/// `current_in_cgroup` or `Task::in_cgroup` (tracer/src/cgroup.rs).
#[unsafe(no_mangle)]
pub static CGROUP_FILTER: CgroupFilter = CgroupFilter::ANY;

#[inline(always)]
fn cgroup_filter() -> &'static CgroupFilter {
    crate::loader_global(&CGROUP_FILTER)
}

/// Whether the current task passes `--cgroup`: the one check every program whose event runs in
/// the task it filters on makes.
///
/// Exact: bpf_get_current_cgroup_id (Linux 4.18, every tracing program type). With
/// descendants: the same walk up the kernfs parents as `Task::in_cgroup`, from
/// bpf_get_current_task. Not bpf_current_task_under_cgroup: it needs a
/// BPF_MAP_TYPE_CGROUP_ARRAY holding the directory's fd in every object, which aya-ebpf 0.2
/// has no map type for; and not bpf_get_current_ancestor_cgroup_id: it came to the cgroup
/// program types first (5.7) and we did not want to depend on when tp_btf/perf_event
/// programs got it. The walk is plain probe reads, which every kernel's verifier accepts,
/// and the task-pointer programs need it anyway.
#[inline(always)]
pub fn current_in_cgroup() -> bool {
    let filter = cgroup_filter();
    match filter.mode {
        CGROUP_ANY => true,
        // SAFETY: helper without arguments.
        CGROUP_EXACT => (unsafe { bpf_get_current_cgroup_id() }) == filter.id,
        // SAFETY: helper without arguments; the task is only read through probe_read.
        _ => Task::from_ptr(unsafe { bpf_get_current_task() } as *const u8).in_cgroup(),
    }
}

#[inline(always)]
fn offsets() -> &'static TaskOffsets {
    crate::loader_global(&TASK_OFFSETS)
}

/// A kernel `task_struct *`.
#[derive(Clone, Copy)]
pub struct Task {
    ptr: *const u8,
    /// The pointer is a typed BTF argument (tp_btf): the verifier lets the program load its
    /// scalar members directly, a plain load the JIT guards against faults, where every other
    /// source needs a bpf_probe_read_kernel call (~10-20 ns each, several per sched_switch).
    btf: bool,
}

impl Task {
    /// A pointer from anywhere (raw tracepoint argument, helper result): read with
    /// bpf_probe_read_kernel.
    #[inline(always)]
    pub fn from_ptr(ptr: *const u8) -> Self {
        Self { ptr, btf: false }
    }

    /// A `struct task_struct *` argument of a tp_btf program, whose scalar members are read
    /// with direct loads. The offsets come from frozen .rodata, so the verifier sees constants
    /// and checks each load against the kernel's BTF layout.
    #[inline(always)]
    pub fn from_btf_arg(ptr: *const u8) -> Self {
        Self { ptr, btf: true }
    }

    #[inline(always)]
    fn read<T>(self, offset: u32) -> Option<T> {
        // SAFETY: bpf_probe_read_kernel validates the address; a bad one yields Err.
        unsafe { bpf_probe_read_kernel(self.ptr.wrapping_add(offset as usize) as *const T).ok() }
    }

    /// A 4-byte scalar member: a direct load for BTF arguments, else `read`.
    #[inline(always)]
    fn read_u32(self, offset: u32) -> Option<u32> {
        if self.btf {
            // SAFETY: only for tp_btf task pointers, where the verifier checks the access
            // against BTF and the JIT turns a faulting load into a zero.
            Some(unsafe {
                core::ptr::read_volatile(self.ptr.wrapping_add(offset as usize) as *const u32)
            })
        } else {
            self.read(offset)
        }
    }

    #[inline(always)]
    pub fn pid(self) -> Option<u32> {
        self.read_u32(offsets().pid)
    }

    #[inline(always)]
    pub fn tgid(self) -> Option<u32> {
        self.read_u32(offsets().tgid)
    }

    #[inline(always)]
    pub fn flags(self) -> Option<u32> {
        self.read_u32(offsets().flags)
    }

    /// `task_struct::comm` (NUL-padded).
    #[inline(always)]
    pub fn comm(self) -> Option<[u8; tracer_common::TASK_COMM_LEN]> {
        self.read(offsets().comm)
    }

    /// `task_struct::__state` (0 = TASK_RUNNING); its offset is not in `TaskOffsets`, so the
    /// caller passes the one it resolved from BTF.
    #[inline(always)]
    pub fn state(self, state_offset: u32) -> Option<u32> {
        self.read_u32(state_offset)
    }

    /// The CPU the task is on (`task_struct::cpu`, or `thread_info.cpu` where that moved):
    /// the caller passes the offset it resolved from BTF.
    #[inline(always)]
    pub fn cpu(self, cpu_offset: u32) -> Option<u32> {
        self.read_u32(cpu_offset)
    }

    /// Whether this task passes `--cgroup`, from the task pointer itself (for programs where
    /// it is not `current`: sched_switch's next, sched_wakeup's target): its v2 cgroup is
    /// `task->cgroups->dfl_cgrp`, whose id is `cgrp->kn->id` (what bpf_get_current_cgroup_id
    /// returns); the ancestors are the kernfs parents. Offsets from BTF (`CGROUP_FILTER`).
    #[inline(always)]
    pub fn in_cgroup(self) -> bool {
        let filter = cgroup_filter();
        if filter.mode == CGROUP_ANY {
            return true;
        }
        let Some(css_set) = self.read::<*const u8>(filter.task_cgroups) else {
            return false;
        };
        let Some(cgroup) = read_ptr(css_set, filter.css_set_dfl_cgrp) else {
            return false;
        };
        let Some(mut kn) = read_ptr(cgroup, filter.cgroup_kn) else {
            return false;
        };
        let depth = if filter.mode == CGROUP_EXACT {
            1
        } else {
            CGROUP_MAX_DEPTH
        };
        for _ in 0..depth {
            // SAFETY: bpf_probe_read_kernel validates the address.
            let id = unsafe {
                bpf_probe_read_kernel(kn.wrapping_add(filter.kernfs_id as usize) as *const u64)
            };
            match id {
                Ok(id) if id == filter.id => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
            match read_ptr(kn, filter.kernfs_parent) {
                Some(parent) => kn = parent,
                None => return false,
            }
        }
        false
    }
}

/// A non-null pointer member of a kernel struct.
#[inline(always)]
fn read_ptr(base: *const u8, offset: u32) -> Option<*const u8> {
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one yields Err.
    let ptr =
        unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const *const u8) }
            .ok()?;
    (!ptr.is_null()).then_some(ptr)
}

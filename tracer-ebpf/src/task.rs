//! Reading `task_struct` members without CO-RE: offsets come from the `TASK_OFFSETS` global,
//! which the loader fills from the running kernel's BTF.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use tracer_common::task::TaskOffsets;

#[unsafe(no_mangle)]
pub static TASK_OFFSETS: TaskOffsets = TaskOffsets {
    flags: 0,
    pid: 0,
    tgid: 0,
    real_parent: 0,
    comm: 0,
    _reserved: 0,
};

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
}

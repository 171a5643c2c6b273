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
pub struct Task(*const u8);

impl Task {
    #[inline(always)]
    pub fn from_ptr(ptr: *const u8) -> Self {
        Self(ptr)
    }

    #[inline(always)]
    fn read<T>(self, offset: u32) -> Option<T> {
        // SAFETY: bpf_probe_read_kernel validates the address; a bad one yields Err.
        unsafe { bpf_probe_read_kernel(self.0.wrapping_add(offset as usize) as *const T).ok() }
    }

    #[inline(always)]
    pub fn pid(self) -> Option<u32> {
        self.read(offsets().pid)
    }

    #[inline(always)]
    pub fn tgid(self) -> Option<u32> {
        self.read(offsets().tgid)
    }

    #[inline(always)]
    pub fn flags(self) -> Option<u32> {
        self.read(offsets().flags)
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
        self.read(state_offset)
    }
}

//! memleak: libc allocations of one process still outstanding (allocated and not freed), kept
//! in the kernel by address with their size and allocating user stack.

/// Filters the loader sets before load (global `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemleakConfig {
    /// Only this process (uprobes are also scoped to it at attach time).
    pub tgid: u32,
    pub _reserved: u32,
    /// Ignore allocations smaller / larger than this many bytes.
    pub min_size: u64,
    pub max_size: u64,
}

crate::user_pod!(MemleakConfig);

impl MemleakConfig {
    pub const DEFAULT: Self = Self {
        tgid: 0,
        _reserved: 0,
        min_size: 0,
        max_size: u64::MAX,
    };
}

/// Outstanding allocations tracked at once; more are counted as `map_full` and not tracked.
pub const ALLOCS_ENTRIES: u32 = 1 << 18;
/// Threads between an allocator's entry and its return at once.
pub const SIZES_ENTRIES: u32 = 10240;

/// Value of `ALLOCS` (keyed by address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocInfo {
    pub size: u64,
    /// CLOCK_MONOTONIC ns of the allocation (for BCC's `-o OLDER`).
    pub ts_ns: u64,
    /// User stack id in `STACKS` (or a negative errno).
    pub ustack: i32,
    /// The allocating thread.
    pub tid: u32,
}

crate::user_pod!(AllocInfo);

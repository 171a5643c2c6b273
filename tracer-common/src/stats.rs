//! Slots of the per-CPU `STATS` array every tool's kernel side keeps, so that nothing is dropped
//! silently: the loader sums them over CPUs and reports them to the user.

/// Events the programs saw and accepted (after filters).
pub const STAT_EVENTS: u32 = 0;
/// Events that could not be sent because the ring buffer was full.
pub const STAT_LOST: u32 = 1;
/// Updates that failed because an aggregation map was full.
pub const STAT_MAP_FULL: u32 = 2;
/// Reads of kernel memory that failed (a probe_read error).
pub const STAT_READ_ERRORS: u32 = 3;
/// Stacks that `bpf_get_stackid` could not store: stack map full (ENOMEM) or the walk failed
/// (EFAULT). The sample is still counted, under a `[lost: ...]` stack.
pub const STAT_STACK_LOST: u32 = 4;
/// Stacks that hashed to a bucket holding a different stack (EEXIST). Counted like STAT_STACK_LOST;
/// a bigger stack map makes them rarer.
pub const STAT_STACK_COLLISIONS: u32 = 5;
/// Samples whose user stack was to be copied for unwinding (`--call-graph dwarf`) but could
/// not be (the ring buffer was full, or the user registers were not found): their user stack
/// was walked with frame pointers instead.
pub const STAT_USTACK_FALLBACK: u32 = 6;
/// Number of slots in `STATS`.
pub const STAT_SLOTS: u32 = 7;

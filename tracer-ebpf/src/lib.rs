//! Kernel-side helpers shared by every tool's programs: reading `task_struct` members at
//! offsets resolved from the running kernel's BTF, and the statistics counters.
//! Each tool is a binary (`src/<tool>.rs`) that becomes its own eBPF object.
#![no_std]

pub mod ringbuf;
pub mod stacks;
pub mod stats;
pub mod task;

/// Declares the program license (GPL: the helpers our tools need are GPL-only).
#[macro_export]
macro_rules! license {
    () => {
        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 4] = *b"GPL\0";
    };
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program where this is reachable.
    loop {}
}

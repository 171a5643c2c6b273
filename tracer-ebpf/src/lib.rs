//! Kernel-side helpers shared by every tool's programs: reading `task_struct` members at
//! offsets resolved from the running kernel's BTF, and the statistics counters.
//! Each tool is a binary (`src/<tool>.rs`) that becomes its own eBPF object.
#![no_std]

pub mod follow;
pub mod hist;
pub mod ringbuf;
pub mod stacks;
pub mod stats;
pub mod task;
pub mod ustack;

/// A global the loader sets before load (`EbpfLoader::override_global` on a `#[no_mangle]`
/// static in .rodata), to be read field by field. `aya_ebpf::Global::load` reads the whole
/// struct with volatile loads, one per field on every run (and a copy on the 512-byte stack);
/// through this reference a program loads only the fields it uses, and the verifier, which
/// knows the frozen .rodata values, prunes the branches they rule out.
#[inline(always)]
pub fn loader_global<T>(global: &'static T) -> &'static T {
    // black_box hides the initializer from the optimizer: the loader rewrites it.
    // SAFETY: a valid pointer to a static.
    unsafe { &*core::hint::black_box(global as *const T) }
}

/// Declares `static $name: $ty = $init`, a loader-set global (the loader overrides it by
/// that symbol name), and `fn config() -> &'static $ty` reading it through `loader_global`.
#[macro_export]
macro_rules! loader_config {
    ($name:ident: $ty:ty = $init:expr) => {
        #[unsafe(no_mangle)]
        static $name: $ty = $init;

        #[inline(always)]
        fn config() -> &'static $ty {
            $crate::loader_global(&$name)
        }
    };
}

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

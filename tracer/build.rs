//! Builds the kernel-side programs (`tracer-ebpf`, one object per tool) for bpfel-unknown-none
//! with the stable toolchain, and leaves them in OUT_DIR for `include_bytes_aligned!`.
//!
//! Stable rustc has no prebuilt `core` for the BPF target, so `core` is built from rust-src
//! (`-Z build-std=core`), which stable allows only with RUSTC_BOOTSTRAP=1. `cargo xtask setup`
//! installs rust-src and bpf-linker; this script only points at them.

use std::{env, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../tracer-ebpf").canonicalize()?;
    let tools_bin = manifest_dir.join("../target/tools/bin");
    println!(
        "cargo:rerun-if-changed={}",
        tools_bin.join("bpf-linker").display()
    );
    println!("cargo:rerun-if-changed=../tracer-common/src");

    // SAFETY: build scripts are single-threaded at this point.
    unsafe {
        env::set_var("RUSTC_BOOTSTRAP", "1");
        // aya-build relays the nested cargo's stderr as cargo warnings; keep only real messages.
        env::set_var("CARGO_TERM_QUIET", "true");
        if tools_bin.exists() {
            let path = env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![tools_bin.canonicalize()?];
            paths.extend(env::split_paths(&path));
            env::set_var("PATH", env::join_paths(paths)?);
        }
    }
    let ebpf_dir = ebpf_dir.to_str().expect("UTF-8 path");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("stable"),
    )
}

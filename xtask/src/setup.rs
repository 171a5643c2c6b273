//! Bootstrap of a fresh machine, idempotent and fast when everything is present:
//! - the rust-src component (core is built for bpfel-unknown-none from source) and the musl
//!   target (the static binary of `cargo xtask dist`);
//! - bpf-linker 0.13 built against the running rustc's own libLLVM (no matching LLVM can be
//!   downloaded; Debian's is too old), into target/tools, a link to the machine's cache
//!   (`util::cache_dir`) so that it is built once per machine;
//! - the Debian packages the tests and benchmarks use.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::util::{cache_dir, repo_root, run};

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages: peers for benchmarks, workloads for tests, qemu for other kernels.
const PACKAGES: &[&str] = &[
    "bpftool",
    "bpftrace",
    "libbpf-tools",
    "nginx",
    "curl",
    "hping3",
    "iproute2",
    "procps",
    "util-linux",
    "libcap2-bin",
    "wrk",
    "apache2-utils",
    "linux-perf",
    // Debug symbols of libc (its local functions: __libc_start_call_main, qsort internals),
    // read as perf reads them; the unwinding tests name libc frames.
    "libc6-dbg",
    "qemu-system-x86",
    "busybox-static",
    "xz-utils",
    "zstd",
    "cpio",
    "prometheus",
    // USDT tests: Debian's python3.11 carries SDT probes with semaphores; g++ builds a
    // program throwing exceptions (libstdcxx:throw).
    "python3.11",
    "g++",
    // serve_http: the test's CA, server and client certificates for --web.config.file.
    "openssl",
    // Go's pprof, built from Debian's source offline: reads the --pprof files in the tests.
    "golang-go",
    "golang-github-google-pprof-dev",
];

pub fn setup() -> Result<()> {
    ensure_tools_link()?;
    ensure_rust_src()?;
    ensure_rust_target(crate::dist::MUSL_TARGET)?;
    ensure_bpf_linker()?;
    ensure_packages()?;
    ensure_pprof()?;
    Ok(())
}

/// target/tools/bin/pprof, Go's pprof built from Debian's packaged source (no module download).
fn ensure_pprof() -> Result<()> {
    let pprof = tools_dir().join("bin/pprof");
    if pprof.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(tools_dir().join("bin"))?;
    let cache = tools_dir().join("go-cache");
    run(Command::new("go")
        .args(["build", "-o"])
        .arg(&pprof)
        .arg("github.com/google/pprof")
        .env("GOPATH", "/usr/share/gocode")
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .env("GOCACHE", &cache))
}

fn rustc_output(args: &[&str]) -> Result<String> {
    let out = Command::new("rustc")
        .args(args)
        .output()
        .context("rustc not found: install rustup")?;
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// A rustup target's standard library (the static musl build of `cargo xtask dist`).
pub fn ensure_rust_target(target: &str) -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup not found: install rustup")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == target)
    {
        return Ok(());
    }
    println!("setup: installing the {target} target");
    run(Command::new("rustup").args(["target", "add", target]))
}

fn ensure_rust_src() -> Result<()> {
    let sysroot = PathBuf::from(rustc_output(&["--print", "sysroot"])?);
    if sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
    {
        return Ok(());
    }
    println!("setup: installing the rust-src component");
    run(Command::new("rustup").args(["component", "add", "rust-src"]))
}

/// target/tools: where the build (tracer/build.rs finds bpf-linker there), the tests (Go's
/// pprof) and the benchmarks look for tools. In a clone it is a link to the machine's cache
/// (`util::cache_dir`), so each tool is built once per machine, not once per clone; a
/// target/tools that is a real folder (an older clone) is used as it is.
pub fn tools_dir() -> PathBuf {
    repo_root().join("target/tools")
}

fn ensure_tools_link() -> Result<()> {
    let link = tools_dir();
    if link.exists() {
        return Ok(());
    }
    let cached = cache_dir().join("tools");
    std::fs::create_dir_all(&cached)
        .with_context(|| format!("cannot create {}", cached.display()))?;
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // A dangling link (its cache deleted) is replaced.
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&cached, &link)
        .with_context(|| format!("cannot link {} to {}", link.display(), cached.display()))
}

fn ensure_bpf_linker() -> Result<()> {
    // The real path: bpf-linker's rpath names its LLVM folder, which must not go through one
    // clone's target/tools link.
    let tools = tools_dir();
    let tools = tools.canonicalize().unwrap_or(tools);
    let linker = tools.join("bin/bpf-linker");
    let stamp = tools.join("bpf-linker.stamp");
    let rustc = rustc_output(&["-vV"])?;
    let want = format!("bpf-linker {BPF_LINKER_VERSION}\n{rustc}\n");
    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works && std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Ok(());
    }
    let llvm_major = rustc
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .ok_or_else(|| anyhow!("rustc -vV does not say its LLVM version"))?
        .to_string();
    // bpf-linker links libLLVM dynamically; point it at the copy rustc ships.
    let sysroot = PathBuf::from(rustc_output(&["--print", "sysroot"])?);
    let libllvm = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .ok_or_else(|| anyhow!("no libLLVM.so.* in {}/lib", sysroot.display()))?;
    let prefix = tools.join("llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    for name in [
        "libLLVM.so".to_string(),
        libllvm.file_name().unwrap().to_string_lossy().into_owned(),
    ] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)?;
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against rustc's LLVM {llvm_major} (about 2 minutes)"
    );
    run(Command::new("cargo")
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--no-default-features",
        ])
        .args([
            "--features",
            &format!("llvm-{llvm_major}"),
            "--force",
            "--root",
        ])
        .arg(&tools)
        .env("LLVM_PREFIX", &prefix))?;
    std::fs::write(&stamp, want)?;
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", package])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"ii"))
}

fn ensure_packages() -> Result<()> {
    if !Path::new("/usr/bin/dpkg-query").exists() {
        println!(
            "setup: not a Debian system; install {} by hand for the tests",
            PACKAGES.join(" ")
        );
        return Ok(());
    }
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if unsafe_geteuid() != 0 {
        bail!(
            "missing Debian packages {}: run 'cargo xtask setup' as root",
            missing.join(" ")
        );
    }
    println!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

fn unsafe_geteuid() -> u32 {
    let out = Command::new("id").arg("-u").output().ok();
    out.and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

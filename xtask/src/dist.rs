//! `cargo xtask dist`: the release artifact a user installs — one static `tracer` for x86_64
//! Linux (musl, static-pie, so it runs on any distribution's kernel with nothing else on the
//! machine), its tool-name symlinks, man pages and shell completions, as
//! `target/dist/tracer-<version>-x86_64-linux-musl.tar.gz` with a SHA-256 file beside it.
//!
//! The eBPF objects are embedded in the binary, so the tarball is all there is to install.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    build::musl_cargo,
    setup,
    util::{run, target_dir},
    vm::initramfs::is_static_elf,
};

pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The static binary `cargo xtask dist` builds (integration tests run it from an empty root).
pub fn static_binary() -> PathBuf {
    target_dir().join(MUSL_TARGET).join("release/tracer")
}

/// Builds the static binary and the tarball; returns the tarball's path.
pub fn dist() -> Result<PathBuf> {
    setup::ensure_rust_target(MUSL_TARGET)?;
    println!("dist: building tracer for {MUSL_TARGET}");
    run(musl_cargo().args([
        "build",
        "--release",
        "--target",
        MUSL_TARGET,
        "-p",
        "tracer",
        "--bin",
        "tracer",
    ]))?;
    package(&static_binary())
}

/// The tarball of a static tracer already built (`cargo xtask test` packs the very binary its
/// stages test); returns the tarball's path.
pub fn package(binary: &Path) -> Result<PathBuf> {
    let elf = fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    if !is_static_elf(&elf) {
        bail!(
            "{} asks for a dynamic loader (PT_INTERP): the musl build is not static",
            binary.display()
        );
    }

    let version = tracer_version(binary)?;
    let name = format!("tracer-{version}-x86_64-linux-musl");
    let dist_dir = target_dir().join("dist");
    let stage = dist_dir.join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("cannot clear {}", stage.display()))?;
    }
    let bin_dir = stage.join("bin");
    fs::create_dir_all(&bin_dir)?;
    fs::copy(binary, bin_dir.join("tracer"))
        .with_context(|| format!("cannot copy {}", binary.display()))?;
    let staged = bin_dir.join("tracer");

    let tools = output_of(Command::new(&staged).arg("list-tools"))?;
    for tool in tools.split_whitespace() {
        std::os::unix::fs::symlink("tracer", bin_dir.join(tool))
            .with_context(|| format!("cannot create the {tool} symlink"))?;
    }
    run(Command::new(&staged)
        .arg("man")
        .arg("--out-dir")
        .arg(stage.join("share/man/man8")))?;
    for (shell, path) in [
        ("bash", "share/bash-completion/completions/tracer"),
        ("zsh", "share/zsh/site-functions/_tracer"),
        ("fish", "share/fish/vendor_completions.d/tracer.fish"),
    ] {
        let script = output_of(Command::new(&staged).args(["completions", shell]))?;
        write(&stage.join(path), script.as_bytes())?;
    }
    write(&stage.join("INSTALL"), install_text(&name).as_bytes())?;

    let tarball = dist_dir.join(format!("{name}.tar.gz"));
    // Owner, order and times fixed so that the same binary gives the same tarball.
    run(Command::new("tar")
        .current_dir(&dist_dir)
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            "-czf",
        ])
        .arg(&tarball)
        .arg(&name))?;
    let sum = output_of(
        Command::new("sha256sum")
            .current_dir(&dist_dir)
            .arg(tarball.file_name().expect("a file name")),
    )?;
    write(
        &dist_dir.join(format!("{name}.tar.gz.sha256")),
        sum.as_bytes(),
    )?;
    println!("dist: {} ({})", tarball.display(), sum.trim());
    Ok(tarball)
}

/// `tracer 0.1.0` → `0.1.0`, from the built binary itself so the name cannot drift from it.
fn tracer_version(binary: &Path) -> Result<String> {
    let out = output_of(Command::new(binary).arg("--version"))?;
    out.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("{} --version printed {out:?}", binary.display()))
}

fn output_of(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))
}

fn install_text(name: &str) -> String {
    format!(
        "tracer: BCC-style eBPF tracing tools, one static binary (x86_64 Linux, musl).\n\
         It needs only a kernel: Linux 5.10 or newer with BTF (/sys/kernel/btf/vmlinux), run as root.\n\
         \n\
         Install (the binary, the tool-name symlinks, man pages, completions):\n\
         \n    tar -xzf {name}.tar.gz\n    cp -a {name}/. /usr/local/\n\
         \n\
         Then `tracer doctor` shows what the kernel allows, `tracer --help` lists the tools.\n"
    )
}

//! The guest's initramfs: static busybox, the kernel modules needed to reach the host root
//! over virtio-9p (with their dependencies, in load order), and an /init script that mounts
//! the host root read-only, gives it writable tmpfs folders, runs `tracer doctor` and the
//! integration test binary in a chroot, and reports the exit code through isa-debug-exit.
//!
//! Written in the cpio "newc" format directly (no cpio tool needed), uncompressed.

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::kernel::pipe_through;

/// Modules the guest cannot work without (unless built in).
const REQUIRED_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];
/// Modules some tests use; loaded when the kernel has them (veth: tests in network namespaces;
/// loop and ext4, which pulls in jbd2, mbcache and crc16: biotop's loop-mounted ext4).
/// crc32c_generic comes first: ext4 asks the crypto API for "crc32c" at mount time (a soft
/// dependency that `depends=` does not list), and busybox insmod does not follow softdeps.
const OPTIONAL_MODULES: &[&str] = &["veth", "crc32c_generic", "loop", "ext4"];

/// The busybox copied into the guest; must be static (package busybox-static).
const BUSYBOX: &str = "/bin/busybox";

/// Exit codes the init script reports for its own failures (tests exit 0, 1 or 101).
pub const EXIT_SETUP_FAILED: u8 = 125;

/// What the guest runs, all paths as seen on the shared host root.
pub struct GuestPlan {
    pub kernel_name: String,
    /// `tracer` binary for the doctor smoke step.
    pub tracer: PathBuf,
    pub test_binary: PathBuf,
    pub test_args: Vec<String>,
    /// A shell command to run in the chroot instead of doctor and the tests (debugging).
    pub exec: Option<String>,
    /// Working directory for the tests (the tracer package, as `cargo test` does).
    pub test_cwd: PathBuf,
    /// Host folders shared again, each as its own 9p export (mount tag `dirN`, N its index),
    /// at its own path after the guest's tmpfs folders are mounted: the checkout and the
    /// target dir, which a clone under /tmp would otherwise have hidden by the guest's /tmp.
    pub shared_dirs: Vec<PathBuf>,
    /// Sparse host files the guest reads to fill its page cache (`TRACER_COLD_DIR`): the
    /// host root is read-only, so the guest cannot write disk-backed files of its own.
    pub cold_dir: PathBuf,
}

/// The 9p mount tag of `GuestPlan::shared_dirs[index]`.
pub fn shared_dir_tag(index: usize) -> String {
    format!("dir{index}")
}

/// Builds the initramfs for `modules_dir` (lib/modules/<release> of the unpacked package).
pub fn build(modules_dir: &Path, plan: &GuestPlan) -> Result<Vec<u8>> {
    let busybox = fs::read(BUSYBOX)
        .with_context(|| format!("{BUSYBOX} missing: run cargo xtask setup (busybox-static)"))?;
    if !is_static_elf(&busybox) {
        bail!("{BUSYBOX} is dynamically linked: install busybox-static (cargo xtask setup)");
    }
    let modules = resolve_modules(modules_dir)?;

    let mut cpio = Newc::default();
    for dir in ["bin", "dev", "proc", "sys", "host", "modules"] {
        cpio.dir(dir);
    }
    cpio.char_device("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &busybox);
    let mut order = String::new();
    for (name, path) in &modules {
        cpio.file(&format!("modules/{name}.ko"), 0o644, &read_module(path)?);
        order.push_str(name);
        order.push('\n');
    }
    cpio.file("modules/order", 0o644, order.as_bytes());
    cpio.file("init", 0o755, init_script(plan).as_bytes());
    Ok(cpio.finish())
}

/// The /init script. Markers `==vm-test== ...` let the host time the run and find the parts.
fn init_script(plan: &GuestPlan) -> String {
    let test_cmd: Vec<String> = std::iter::once(plan.test_binary.display().to_string())
        .chain(plan.test_args.iter().cloned())
        .map(|a| quote(&a))
        .collect();
    let cwd = quote(&plan.test_cwd.display().to_string());
    let body = match &plan.exec {
        Some(command) => format!(
            "echo \"==vm-test== exec\"\nchroot $H /bin/sh -c {}",
            quote(&format!("cd {cwd} && {command}"))
        ),
        None => format!(
            "echo \"==vm-test== doctor\"\nchroot $H {tracer} doctor\n\
             echo \"==vm-test== tests\"\nchroot $H /bin/sh -c 'cd \"$0\" && exec \"$@\"' {cwd} {test_cmd}",
            tracer = quote(&plan.tracer.display().to_string()),
            test_cmd = test_cmd.join(" "),
        ),
    };
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

# qemu's isa-debug-exit: the byte written to port 0xf4 becomes qemu's status (rc<<1)|1.
report() {{
    echo "==vm-test== exit $1"
    printf "\\$(printf %o "$1")" | dd of=/dev/port bs=1 seek=244 count=1 conv=notrunc 2>/dev/null
    sleep 1
    poweroff -f
}}
fatal() {{
    echo "vm-test: guest setup failed: $*"
    report {EXIT_SETUP_FAILED}
}}

echo "==vm-test== init $(uname -r), up $(cut -d' ' -f1 /proc/uptime)s"
for m in $(cat /modules/order); do
    insmod /modules/$m.ko || echo "vm-test: insmod $m failed"
done

mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=loose,ro host /host \
    || fatal "cannot mount the host root over 9p"
H=/host
mount -t proc proc $H/proc
mount -t sysfs sysfs $H/sys
mount -t devtmpfs devtmpfs $H/dev || fatal "cannot mount devtmpfs in the chroot"
mkdir -p $H/dev/pts $H/dev/shm
mount -t devpts devpts $H/dev/pts
mount -t tmpfs tmpfs $H/dev/shm
mount -t tracefs tracefs $H/sys/kernel/tracing || fatal "cannot mount tracefs"
mount -t debugfs debugfs $H/sys/kernel/debug 2>/dev/null
mount -t bpf bpf $H/sys/fs/bpf || fatal "cannot mount bpffs"
mount -t cgroup2 cgroup2 $H/sys/fs/cgroup 2>/dev/null
# The host root is read-only: tests write under these.
for d in tmp run var/tmp var/log var/lib/nginx var/cache/nginx; do
    [ -d $H/$d ] && mount -t tmpfs -o mode=1777 tmpfs $H/$d
done
# The checkout and target dir at their own paths again, wherever the clone lives (under /tmp
# the tmpfs above would hide them). Mounted always, so this path is the one every run takes.
{shared_mounts}
ip link set lo up
hostname vm-{kernel}

# tracer's release dir first, so `--exec 'tracer ...'` finds the binary under test.
export PATH={bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp TERM=dumb RUST_BACKTRACE=1 TRACER_VM={kernel}
export CARGO_MANIFEST_DIR={cwd} TRACER_COLD_DIR={cold_dir}
cd /
{body}
rc=$?
echo "==vm-test== dmesg"
dmesg | grep -E 'WARNING:|BUG:|Oops|Call Trace|Kernel panic|segfault' | head -n 40
report $rc
"#,
        kernel = plan.kernel_name,
        shared_mounts = plan
            .shared_dirs
            .iter()
            .enumerate()
            .map(|(i, dir)| {
                let at = format!("\"$H\"{}", quote(&dir.display().to_string()));
                format!(
                    "mkdir -p {at} && mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=loose,ro {tag} {at} \\\n    || fatal \"cannot mount {path} over 9p\"",
                    tag = shared_dir_tag(i),
                    path = dir.display(),
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        cwd = cwd,
        cold_dir = quote(&plan.cold_dir.display().to_string()),
        body = body,
        bin_dir = quote(
            &plan
                .tracer
                .parent()
                .unwrap_or(Path::new("/"))
                .display()
                .to_string()
        ),
    )
}

/// Single-quotes a word for sh.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The modules to load, dependencies first, as (name, file). Built-in ones are skipped.
fn resolve_modules(modules_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut files = BTreeMap::new();
    index_modules(&modules_dir.join("kernel"), &mut files)?;
    let builtin: HashSet<String> = fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(|f| module_name(f).unwrap_or_default())
        .collect();

    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for (names, required) in [(REQUIRED_MODULES, true), (OPTIONAL_MODULES, false)] {
        for name in names {
            if builtin.contains(*name) || seen.contains(*name) {
                continue;
            }
            if !files.contains_key(*name) {
                if required {
                    bail!(
                        "kernel has no module {name} (and it is not built in) in {}",
                        modules_dir.display()
                    );
                }
                continue;
            }
            visit(name, &files, &builtin, &mut seen, &mut order)?;
        }
    }
    Ok(order)
}

fn visit(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    builtin: &HashSet<String>,
    seen: &mut HashSet<String>,
    order: &mut Vec<(String, PathBuf)>,
) -> Result<()> {
    if !seen.insert(name.to_string()) || builtin.contains(name) {
        return Ok(());
    }
    let path = files
        .get(name)
        .ok_or_else(|| anyhow!("module dependency {name} not found"))?;
    for dep in module_depends(&read_module(path)?)? {
        visit(&dep, files, builtin, seen, order)?;
    }
    order.push((name.to_string(), path.clone()));
    Ok(())
}

fn index_modules(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, out)?;
        } else if let Some(name) = path
            .file_name()
            .and_then(|n| module_name(&n.to_string_lossy()))
        {
            out.insert(name, path);
        }
    }
    Ok(())
}

/// `9pnet_virtio.ko.xz` → `9pnet_virtio` (the kernel treats - and _ alike).
fn module_name(file: &str) -> Option<String> {
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    Some(stem.replace('-', "_"))
}

/// A module file, decompressed (busybox insmod takes plain .ko only).
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let data = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path.to_string_lossy();
    let plain = if name.ends_with(".xz") {
        pipe_through(&["xz", "-dc"], &data)?
    } else if name.ends_with(".zst") {
        pipe_through(&["zstd", "-dcq"], &data)?
    } else if name.ends_with(".gz") {
        pipe_through(&["gzip", "-dc"], &data)?
    } else {
        data
    };
    if !plain.starts_with(b"\x7fELF") {
        bail!(
            "{} is not an ELF module after decompression",
            path.display()
        );
    }
    Ok(plain)
}

/// The `depends=` entry of an ELF module's .modinfo section.
fn module_depends(elf: &[u8]) -> Result<Vec<String>> {
    let modinfo = elf_section(elf, ".modinfo").ok_or_else(|| anyhow!("module without .modinfo"))?;
    Ok(modinfo
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(b"depends="))
        .map(|deps| {
            String::from_utf8_lossy(deps)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default())
}

/// The bytes of a named section of a little-endian ELF64 file.
fn elf_section<'a>(elf: &'a [u8], wanted: &str) -> Option<&'a [u8]> {
    let u16_at =
        |off: usize| Some(u16::from_le_bytes(elf.get(off..off + 2)?.try_into().ok()?) as usize);
    let u32_at =
        |off: usize| Some(u32::from_le_bytes(elf.get(off..off + 4)?.try_into().ok()?) as usize);
    let u64_at =
        |off: usize| Some(u64::from_le_bytes(elf.get(off..off + 8)?.try_into().ok()?) as usize);
    if elf.get(4) != Some(&2) {
        return None; // not ELF64
    }
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let header = |i: usize| shoff + i * shentsize;
    let section = |i: usize| -> Option<&'a [u8]> {
        let (offset, size) = (u64_at(header(i) + 0x18)?, u64_at(header(i) + 0x20)?);
        elf.get(offset..offset + size)
    };
    let names = section(shstrndx)?;
    (0..shnum).find_map(|i| {
        let name_off = u32_at(header(i))?;
        let name = names.get(name_off..)?.split(|b| *b == 0).next()?;
        (name == wanted.as_bytes()).then(|| section(i)).flatten()
    })
}

/// True if the ELF64 file has no PT_INTERP program header (statically linked).
pub(crate) fn is_static_elf(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read = |off: usize, len: usize| -> Option<usize> {
        let bytes = elf.get(off..off + len)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0, |acc, b| (acc << 8) | usize::from(*b)),
        )
    };
    let headers = || -> Option<bool> {
        let (phoff, phentsize, phnum) = (read(0x20, 8)?, read(0x36, 2)?, read(0x38, 2)?);
        Some((0..phnum).all(|i| read(phoff + i * phentsize, 4) != Some(PT_INTERP as usize)))
    };
    elf.starts_with(b"\x7fELF") && headers() == Some(true)
}

/// A cpio archive in the "newc" format the kernel unpacks.
#[derive(Default)]
struct Newc {
    out: Vec<u8>,
    ino: u32,
}

impl Newc {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, 0, &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | perm, 0, data);
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020_600, (major << 8) | minor, &[]);
    }

    /// `rdev` packs major << 8 | minor.
    fn entry(&mut self, name: &str, mode: u32, rdev: u32, data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev >> 8,
            rdev & 0xff,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 0, &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_aligned() {
        let mut cpio = Newc::default();
        cpio.dir("bin");
        cpio.file("init", 0o755, b"#!/bin/sh\n");
        let out = cpio.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn module_names() {
        assert_eq!(
            module_name("9pnet_virtio.ko.xz").as_deref(),
            Some("9pnet_virtio")
        );
        assert_eq!(module_name("virtio-rng.ko").as_deref(), Some("virtio_rng"));
        assert_eq!(module_name("README"), None);
    }
}

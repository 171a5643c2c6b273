//! Debian kernels for the VM stage: find the newest package with apt, download it with
//! `apt-get download`, unpack it with `dpkg-deb -x` and cut the uncompressed vmlinux out of
//! vmlinuz (qboot boots an ELF vmlinux in seconds; decompressing under TCG is slow).
//!
//! Everything lands in the machine's cache (`util::cache_dir`, vm/<kernel>/, shared by every
//! clone) and a stamp file marks a complete unpack, so later runs reuse it without touching
//! the network.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// Where a kernel's package list comes from.
#[derive(Clone, Copy, Debug)]
pub enum Suite {
    /// The host's own apt configuration (bookworm on these machines).
    Host,
    /// Another Debian suite, through a private sources list and state dir in the cache's vm/.
    Private(&'static str),
}

/// A kernel the VM stage knows how to fetch.
#[derive(Clone, Copy, Debug)]
pub struct KernelSpec {
    /// Name on the command line and folder under target/vm/ (`debian-6.1`).
    pub name: &'static str,
    pub suite: Suite,
    /// Package names are `<prefix><abi>-amd64-unsigned`, e.g. `linux-image-6.1.0-` + `56`.
    pub package_prefix: &'static str,
    /// Features `tracer doctor` must report as available in this guest.
    pub doctor_expects: &'static [&'static str],
    /// Whether `--kernel all` (and so `cargo xtask test`) boots it; a kernel joins once its
    /// whole suite passes.
    pub in_all: bool,
}

pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        name: "debian-6.1",
        suite: Suite::Host,
        package_prefix: "linux-image-6.1.0-",
        doctor_expects: &["kprobe", "kretprobe", "fentry", "fexit"],
        in_all: true,
    },
    KernelSpec {
        name: "debian-6.12",
        suite: Suite::Private("trixie"),
        package_prefix: "linux-image-6.12.",
        doctor_expects: &["kprobe", "kretprobe", "fentry", "fexit", "kprobe_multi"],
        in_all: true,
    },
    // Debian 11 (bullseye): the oldest kernel tracer supports. No BPF cookies, no perf-event
    // BPF links, no hash lookup-and-delete, no kprobe_multi/uprobe_multi.
    KernelSpec {
        name: "debian-5.10",
        suite: Suite::Private("bullseye"),
        package_prefix: "linux-image-5.10.0-",
        doctor_expects: &["kprobe", "kretprobe", "fentry", "fexit"],
        in_all: true,
    },
];

const PACKAGE_SUFFIX: &str = "-amd64-unsigned";

/// An unpacked kernel, ready to boot.
pub struct Kernel {
    pub vmlinux: PathBuf,
    /// lib/modules/<release>/ of the unpacked package.
    pub modules: PathBuf,
    /// The package it came from, `name version`.
    pub package: String,
}

/// The unpacked kernel for `spec`, downloading it first if it is not cached in `dir`.
pub fn ensure(spec: &KernelSpec, dir: &Path) -> Result<Kernel> {
    let stamp = dir.join("kernel.ok");
    let root = dir.join("kernel");
    let vmlinux = dir.join("vmlinux");
    if let Ok(package) = fs::read_to_string(&stamp)
        && vmlinux.exists()
    {
        return Ok(Kernel {
            vmlinux,
            modules: modules_dir(&root)?,
            package: package.trim().to_string(),
        });
    }

    for tool in ["apt-get", "apt-cache", "dpkg-deb"] {
        if !Path::new("/usr/bin").join(tool).exists() {
            bail!(
                "{tool} missing: the VM stage fetches Debian kernels with apt (needs a Debian host)"
            );
        }
    }
    fs::create_dir_all(dir)?;
    let _ = fs::remove_file(&stamp);
    let apt = AptConfig::new(spec.suite, dir.parent().unwrap_or(dir))?;
    let package = newest_package(&apt, spec)?;
    println!("vm-test: downloading {package} ({})", spec.name);
    for old in debs(dir)? {
        fs::remove_file(old)?;
    }
    let mut download = apt.command("apt-get");
    download.args(["download", "-q", &package]).current_dir(dir);
    run_quiet(&mut download).with_context(|| format!("cannot download {package}"))?;
    let deb = debs(dir)?
        .pop()
        .ok_or_else(|| anyhow!("apt-get download left no .deb in {}", dir.display()))?;

    let _ = fs::remove_dir_all(&root);
    run_quiet(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))
        .with_context(|| format!("cannot unpack {}", deb.display()))?;
    let vmlinuz = fs::read_dir(root.join("boot"))
        .with_context(|| format!("{} has no boot/ folder", deb.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| anyhow!("{} has no boot/vmlinuz-*", deb.display()))?;
    let elf = extract_vmlinux(&fs::read(&vmlinuz)?)
        .with_context(|| format!("cannot cut vmlinux out of {}", vmlinuz.display()))?;
    fs::write(&vmlinux, elf)?;
    let modules = modules_dir(&root)?;

    let version = deb
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .split('_')
        .nth(1)
        .unwrap_or("?")
        .to_string();
    let package = format!("{package} {version}");
    fs::remove_file(&deb)?;
    fs::write(&stamp, format!("{package}\n"))?;
    Ok(Kernel {
        vmlinux,
        modules,
        package,
    })
}

fn debs(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect())
}

/// lib/modules/<release> (usr/lib/modules on merged-/usr packages).
fn modules_dir(root: &Path) -> Result<PathBuf> {
    for base in ["lib/modules", "usr/lib/modules"] {
        if let Ok(entries) = fs::read_dir(root.join(base))
            && let Some(dir) = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.join("kernel").is_dir())
        {
            return Ok(dir);
        }
    }
    bail!(
        "no lib/modules/<release>/kernel in {}: delete {} and retry",
        root.display(),
        root.display()
    )
}

/// apt-get/apt-cache options: the host's configuration, or a private one for another suite
/// (the host's apt configuration is never changed).
struct AptConfig {
    options: Vec<String>,
}

impl AptConfig {
    fn new(suite: Suite, vm_dir: &Path) -> Result<Self> {
        let Suite::Private(suite) = suite else {
            return Ok(Self {
                options: Vec::new(),
            });
        };
        let base = vm_dir.join(format!("apt-{suite}"));
        let (state, cache, parts) = (
            base.join("state"),
            base.join("cache"),
            base.join("sources.list.d"),
        );
        for dir in [
            state.join("lists/partial"),
            cache.join("archives/partial"),
            parts.clone(),
        ] {
            fs::create_dir_all(dir)?;
        }
        let sources = base.join("sources.list");
        let (main, security) = host_mirrors()?;
        let mut list = format!("deb {main} {suite} main\n");
        if let Some(security) = security {
            list.push_str(&format!("deb {security} {suite}-security main\n"));
        }
        fs::write(&sources, list)?;
        let dir_option = |key: &str, path: &Path| format!("{key}={}", path.display());
        let config = Self {
            options: vec![
                dir_option("Dir::Etc::sourcelist", &sources),
                dir_option("Dir::Etc::sourceparts", &parts),
                dir_option("Dir::State", &state),
                dir_option("Dir::Cache", &cache),
                "APT::Sandbox::User=root".into(),
            ],
        };
        println!(
            "vm-test: apt-get update for {suite} (private lists in {})",
            base.display()
        );
        run_quiet(config.command("apt-get").args(["update", "-q"]))
            .with_context(|| format!("apt-get update for {suite} failed (mirror {main})"))?;
        Ok(config)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for option in &self.options {
            cmd.args(["-o", option]);
        }
        cmd
    }
}

/// The Debian mirror and security mirror the host's apt uses (one-line and deb822 formats).
fn host_mirrors() -> Result<(String, Option<String>)> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(
            more.into_iter()
                .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources")),
        );
    }
    let uris: Vec<String> = files
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .flat_map(|text| text.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
        .map(|w| w.trim_end_matches('/').to_string())
        .collect();
    let main = uris
        .iter()
        .find(|u| u.ends_with("/debian"))
        .cloned()
        .ok_or_else(|| anyhow!("no Debian mirror (…/debian) in /etc/apt/sources.list*"))?;
    let security = uris
        .iter()
        .find(|u| u.ends_with("/debian-security"))
        .cloned();
    Ok((main, security))
}

/// The newest `<prefix><abi>-amd64-unsigned` package apt knows (not -cloud, -rt or -dbg).
fn newest_package(apt: &AptConfig, spec: &KernelSpec) -> Result<String> {
    let pattern = format!(
        "^{}.*{}$",
        spec.package_prefix.replace('.', "\\."),
        PACKAGE_SUFFIX
    );
    let out = apt
        .command("apt-cache")
        .args(["search", "--names-only", &pattern])
        .output()
        .context("cannot run apt-cache")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let candidates: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| {
            name.strip_prefix(spec.package_prefix)
                .and_then(|rest| rest.strip_suffix(PACKAGE_SUFFIX))
                .is_some_and(|abi| !abi.is_empty() && !abi.contains('-'))
        })
        .collect();
    candidates
        .into_iter()
        .max_by(|a, b| natural_cmp(a, b))
        .map(str::to_string)
        .ok_or_else(|| {
            anyhow!(
                "no {}*{PACKAGE_SUFFIX} package in apt's lists: run apt-get update (as root)",
                spec.package_prefix
            )
        })
}

/// Compares with digit runs as numbers, so 6.1.0-56 > 6.1.0-9 and 6.12.117 > 6.12.94.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, String)> {
        let mut out: Vec<(bool, String)> = Vec::new();
        for c in s.chars() {
            let digit = c.is_ascii_digit();
            match out.last_mut() {
                Some((d, run)) if *d == digit => run.push(c),
                _ => out.push((digit, c.to_string())),
            }
        }
        out
    }
    let key = |s: &str| {
        chunks(s)
            .into_iter()
            .map(|(digit, run)| {
                if digit {
                    (run.parse::<u64>().unwrap_or(u64::MAX), String::new())
                } else {
                    (0, run)
                }
            })
            .collect::<Vec<_>>()
    };
    key(a).cmp(&key(b))
}

/// The ELF vmlinux inside a bzImage: the payload at setup_sects/payload_offset/payload_length
/// (boot protocol ≥ 2.08), decompressed with xz, zstd or gzip.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>> {
    let u32_at = |off: usize| -> Result<usize> {
        let bytes = bzimage
            .get(off..off + 4)
            .ok_or_else(|| anyhow!("file too short for a bzImage"))?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")) as usize)
    };
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        bail!("not a bzImage (no HdrS boot header)");
    }
    let setup_sects = match bzimage[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)?;
    let payload = bzimage
        .get(start..start + u32_at(0x24c)?)
        .ok_or_else(|| anyhow!("payload offsets point outside the file"))?;
    let decompress: &[&str] = match payload {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => &["xz", "-dc", "--single-stream"],
        [0x28, 0xb5, 0x2f, 0xfd, ..] => &["zstd", "-dcq"],
        [0x1f, 0x8b, ..] => &["gzip", "-dc"],
        _ => bail!(
            "unknown compression (first bytes {:02x?})",
            &payload[..payload.len().min(6)]
        ),
    };
    let elf = pipe_through(decompress, payload)?;
    if !elf.starts_with(b"\x7fELF") {
        bail!("{} did not give an ELF file", decompress[0]);
    }
    Ok(elf)
}

/// Runs `argv` with `input` on stdin and returns its stdout. The kernel appends the
/// uncompressed size after the stream, so decompressors may complain about trailing bytes:
/// only the output counts (the caller checks it).
pub fn pipe_through(argv: &[&str], input: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("{} missing: run cargo xtask setup", argv[0]))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    Ok(out.stdout)
}

/// Runs a command with its output shown only when it fails.
fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::natural_cmp;

    #[test]
    fn newest_abi_wins() {
        assert!(natural_cmp("linux-image-6.1.0-56", "linux-image-6.1.0-9").is_gt());
        assert!(natural_cmp("linux-image-6.12.117+deb13", "linux-image-6.12.94+deb13").is_gt());
        assert!(natural_cmp("linux-image-6.12.115+deb13.1", "linux-image-6.12.115+deb13").is_gt());
    }
}

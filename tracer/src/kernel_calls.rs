//! The functions a kernel function calls, read from the running kernel's own code: its bytes
//! from /proc/kcore (the live text, after alternatives and static-call patching) between its
//! /proc/kallsyms address and the next symbol's, decoded with iced-x86; every direct `call`
//! and tail `jmp` to the start of another function is a callee, and a call through a static
//! call trampoline (`__SCT__*`) is followed to the function it jumps to now. Calls through
//! function pointers are not seen (retpolines and indirect calls name no target).
//!
//! funcgraph attaches to the callees found this way, level by level from its root: only
//! functions ftrace can hook (available_filter_functions), less a deny list of functions its
//! own programs run through (BPF helpers, maps, the ring buffer, the probes' machinery).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs::File,
    os::unix::fs::FileExt as _,
};

use anyhow::{Context as _, Result, anyhow};
use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind};

/// Longest function body decoded (bytes): past it, the rest of a (rare) huge function is
/// left out.
const MAX_FUNCTION_BYTES: u64 = 64 * 1024;

/// Prefixes of functions never attached: what the BPF programs, the ring buffer, hash maps,
/// ftrace/fprobe and kprobes run through (probing them only feeds the kernel's recursion
/// protection), and entry/NMI code.
const DENY_PREFIXES: &[&str] = &[
    "bpf_",
    "__bpf",
    "___bpf",
    "btf_",
    "htab_",
    "__htab",
    "pcpu_freelist",
    "__pcpu_freelist",
    "ringbuf",
    "rcu_",
    "__rcu",
    "preempt_count",
    "migrate_disable",
    "migrate_enable",
    "ftrace",
    "__ftrace",
    "fprobe",
    "__fprobe",
    "rethook",
    "__rethook",
    "arch_rethook",
    "kprobe",
    "__kprobe",
    "kretprobe",
    "perf_",
    "__perf",
    "lockdep",
    "lock_acquire",
    "lock_release",
    "__x86",
    "native_",
    "nmi",
    "irq_enter",
    "irq_exit",
    "ktime_get",
    "read_tsc",
    "kasan",
    "__kasan",
    "__sanitizer",
    "trace_",
    "__trace",
    "tracing_",
];

/// A function of the running kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    pub address: u64,
    /// Levels below the root (root 0).
    pub level: u32,
}

/// Kernel text symbols and the live kernel image.
pub struct KernelText {
    /// Text symbols by address, sorted.
    symbols: Vec<(u64, String)>,
    by_address: HashMap<u64, usize>,
    by_name: HashMap<String, Vec<usize>>,
    /// Opened on first use: naming a function needs only kallsyms.
    kcore: std::sync::OnceLock<Result<Kcore, String>>,
}

impl KernelText {
    pub fn open() -> Result<Self> {
        let text =
            std::fs::read_to_string("/proc/kallsyms").context("cannot read /proc/kallsyms")?;
        let mut symbols = Vec::new();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(address), Some(kind), Some(name)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if !matches!(kind, "t" | "T") || parts.next().is_some() {
                // Module symbols carry "[module]": their text is not in the main image.
                continue;
            }
            let Ok(address) = u64::from_str_radix(address, 16) else {
                continue;
            };
            symbols.push((address, name.to_string()));
        }
        if symbols.iter().all(|(a, _)| *a == 0) {
            return Err(anyhow!(
                "/proc/kallsyms shows no addresses: run as root (kernel.kptr_restrict hides them)"
            ));
        }
        symbols.sort();
        let mut by_address = HashMap::new();
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, (address, name)) in symbols.iter().enumerate() {
            by_address.entry(*address).or_insert(i);
            by_name.entry(name.clone()).or_default().push(i);
        }
        Ok(Self {
            symbols,
            by_address,
            by_name,
            kcore: std::sync::OnceLock::new(),
        })
    }

    /// Addresses of the text functions called `name` (static functions may share a name).
    pub fn addresses(&self, name: &str) -> Vec<u64> {
        self.by_name
            .get(name)
            .map(|all| all.iter().map(|&i| self.symbols[i].0).collect())
            .unwrap_or_default()
    }

    /// Every text function whose name `keep` accepts, with each copy's address (static
    /// functions may share a name), sorted by name.
    pub fn matching(&self, keep: impl Fn(&str) -> bool) -> Vec<(String, u64)> {
        let mut found: Vec<(String, u64)> = self
            .symbols
            .iter()
            .filter(|(_, name)| keep(name))
            .map(|(address, name)| (name.clone(), *address))
            .collect();
        found.sort();
        found
    }

    /// The function `address` is in (the nearest text symbol at or below it).
    pub fn name_at(&self, address: u64) -> Option<&str> {
        let i = self.symbols.partition_point(|(a, _)| *a <= address);
        let (start, name) = self.symbols.get(i.checked_sub(1)?)?;
        // Past the end of the image's text: not ours to name (a module, a BPF trampoline).
        (address - start < MAX_FUNCTION_BYTES).then_some(name.as_str())
    }

    /// The body of the function at `address`: up to the next symbol.
    fn body(&self, address: u64) -> Result<Vec<u8>> {
        let i = *self
            .by_address
            .get(&address)
            .ok_or_else(|| anyhow!("no kernel symbol at {address:#x}"))?;
        let end = self.symbols[i + 1..]
            .iter()
            .map(|(a, _)| *a)
            .find(|a| *a > address)
            .unwrap_or(address + 256);
        self.kcore()?
            .read(address, (end - address).min(MAX_FUNCTION_BYTES))
    }

    fn kcore(&self) -> Result<&Kcore> {
        self.kcore
            .get_or_init(|| Kcore::open().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("{e}"))
    }

    /// Direct callees of the function at `address`, in the order they appear.
    pub fn direct_callees(&self, address: u64) -> Result<Vec<u64>> {
        let code = self.body(address)?;
        let mut callees = Vec::new();
        let mut decoder = Decoder::with_ip(64, &code, address, DecoderOptions::NONE);
        for instruction in &mut decoder {
            let is_branch = matches!(instruction.mnemonic(), Mnemonic::Call | Mnemonic::Jmp);
            if !is_branch || instruction.op0_kind() != OpKind::NearBranch64 {
                continue;
            }
            let target = instruction.near_branch_target();
            if target == address {
                continue;
            }
            let Some(&i) = self.by_address.get(&target) else {
                continue;
            };
            let target = if self.symbols[i].1.starts_with("__SCT__") {
                match self.static_call_target(target) {
                    Some(t) => t,
                    None => continue,
                }
            } else {
                target
            };
            if !callees.contains(&target) {
                callees.push(target);
            }
        }
        Ok(callees)
    }

    /// Where a static call trampoline jumps now (None: it returns, or is not a jump).
    fn static_call_target(&self, trampoline: u64) -> Option<u64> {
        let code = self.kcore().ok()?.read(trampoline, 16).ok()?;
        let mut decoder = Decoder::with_ip(64, &code, trampoline, DecoderOptions::NONE);
        let instruction = decoder.decode();
        (instruction.mnemonic() == Mnemonic::Jmp && instruction.op0_kind() == OpKind::NearBranch64)
            .then(|| instruction.near_branch_target())
            .filter(|t| self.by_address.contains_key(t))
    }

    fn name(&self, address: u64) -> &str {
        self.by_address
            .get(&address)
            .map_or("?", |&i| self.symbols[i].1.as_str())
    }

    /// The root at `root` and the functions it reaches through direct calls, `levels` calls
    /// deep at most, breadth first, keeping only those `traceable` accepts and the deny list
    /// lets through, and at most `limit` in all (the deepest level is cut first). The second
    /// value says whether the limit cut anything.
    pub fn reachable(
        &self,
        root: u64,
        levels: u32,
        limit: usize,
        traceable: &dyn Fn(&str) -> bool,
    ) -> Result<(Vec<Function>, bool)> {
        let mut seen = HashSet::from([root]);
        let mut found = vec![Function {
            name: self.name(root).to_string(),
            address: root,
            level: 0,
        }];
        if levels > 0 {
            // The root's own code must be readable: say why not, rather than show no callees.
            self.direct_callees(root)?;
        }
        let mut queue = VecDeque::from([(root, 0u32)]);
        while let Some((address, level)) = queue.pop_front() {
            if level >= levels {
                continue;
            }
            // A callee whose code cannot be read still counts; only its callees are unknown.
            let Ok(callees) = self.direct_callees(address) else {
                continue;
            };
            for callee in callees {
                if !seen.insert(callee) {
                    continue;
                }
                let name = self.name(callee);
                if denied(name) || !traceable(name) {
                    continue;
                }
                if found.len() >= limit {
                    return Ok((found, true));
                }
                found.push(Function {
                    name: name.to_string(),
                    address: callee,
                    level: level + 1,
                });
                queue.push_back((callee, level + 1));
            }
        }
        Ok((found, false))
    }
}

/// Whether funcgraph never attaches to `name` (see `DENY_PREFIXES`).
pub fn denied(name: &str) -> bool {
    DENY_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// /proc/kcore: the kernel's memory as an ELF core file, read at virtual addresses.
struct Kcore {
    file: File,
    /// (virtual address, size, file offset) of each PT_LOAD segment.
    segments: Vec<(u64, u64, u64)>,
}

impl Kcore {
    fn open() -> Result<Self> {
        let file = File::open("/proc/kcore")
            .context("cannot open /proc/kcore (needs root and CONFIG_PROC_KCORE)")?;
        let mut header = [0u8; 64];
        file.read_exact_at(&mut header, 0)
            .context("cannot read /proc/kcore")?;
        if &header[..4] != b"\x7fELF" || header[4] != 2 {
            return Err(anyhow!("/proc/kcore is not a 64-bit ELF core file"));
        }
        let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let phoff = u64_at(&header, 0x20);
        let phentsize = u16_at(&header, 0x36) as usize;
        let phnum = u16_at(&header, 0x38) as usize;
        let mut table = vec![0u8; phentsize * phnum];
        file.read_exact_at(&mut table, phoff)
            .context("cannot read /proc/kcore's program headers")?;
        let segments = table
            .chunks_exact(phentsize)
            .filter(|ph| u32::from_le_bytes(ph[..4].try_into().unwrap()) == 1)
            .map(|ph| (u64_at(ph, 16), u64_at(ph, 40), u64_at(ph, 8)))
            .collect();
        Ok(Self { file, segments })
    }

    fn read(&self, address: u64, len: u64) -> Result<Vec<u8>> {
        let (vaddr, size, offset) = self
            .segments
            .iter()
            .find(|(v, s, _)| address >= *v && address < v + s)
            .copied()
            .ok_or_else(|| anyhow!("{address:#x} is not in /proc/kcore"))?;
        let len = len.min(vaddr + size - address) as usize;
        let mut bytes = vec![0u8; len];
        self.file
            .read_exact_at(&mut bytes, offset + (address - vaddr))
            .with_context(|| format!("cannot read kernel text at {address:#x}"))?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_list_keeps_ordinary_functions() {
        assert!(denied("bpf_ringbuf_reserve"));
        assert!(denied("rcu_read_unlock_strict"));
        assert!(!denied("copy_process"));
        assert!(!denied("_raw_spin_lock"));
    }
}

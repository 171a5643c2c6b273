//! The probe syntax shared by funccount, funclatency, argdist, trace, tplist and stackcount,
//! and its resolution into concrete attach points:
//!
//! ```text
//! u:PATH_OR_LIB:SYMBOL[+OFF]   uprobe         u:/usr/sbin/nginx:ngx_http_process_request
//! u:PATH_OR_LIB:0xADDR         uprobe at a virtual address (stripped binaries)
//! ur:PATH_OR_LIB:SYMBOL        uretprobe      ur:libc:malloc
//! k:FUNC                       kernel function entry (fentry, else kprobe)
//! kr:FUNC                      kernel function return (fexit, else kretprobe)
//! t:CATEGORY:EVENT             tracepoint (tp_btf, else raw_tp, else classic)
//! usdt:PATH_OR_LIB:PROVIDER:NAME  USDT probe (SDT note)  usdt:/usr/bin/python3.11:python:function__entry
//! ```
//! SYMBOL, FUNC, CATEGORY and EVENT may be globs (`*`, `?`, `[abc]`). bpftrace's long names
//! (`uprobe:`, `uretprobe:`, `kprobe:`, `kretprobe:`, `tracepoint:`) are accepted too.
//!
//! Libraries resolve like the dynamic loader: a path is taken as is; a bare name (`libc`, `c`,
//! `libssl.so.3`) is looked up in the target process's maps (with `-p`), then in
//! /etc/ld.so.cache, then in the standard library directories, then in `$PATH` (`u:bash:readline`).
//! Symbols come from .symtab and .dynsym, plus a separate debug file found through
//! `.gnu_debuglink` or the build id under /usr/lib/debug when one is installed.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _, SymbolKind};

/// At most this many uprobes from one glob (one loaded object serves them all, told apart by
/// cookie).
pub const MAX_UPROBES: usize = 1000;
/// At most this many kernel functions or tracepoints with one loaded object each (single
/// kprobes, fentry, tracepoints).
pub const MAX_KERNEL_PROBES: usize = 64;
/// At most this many kernel functions where one kprobe_multi link serves them all. The link
/// takes far more (the kernel's cap is 2^20 functions), and attaching is one ftrace filter
/// update rather than one perf event and object per function; the bound is the probe id
/// space: each function is a slot of the probes object's per-CPU COUNTS array (MAX_PROBES) and
/// a row of output. BCC's funccount stops at 1000 kprobes (one perf event each).
pub const MAX_KPROBE_MULTI: usize = tracer_common::probes::MAX_PROBES as usize;
/// Binaries (with their debug files) larger than this are refused rather than read whole.
const MAX_ELF_BYTES: u64 = 4 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Uprobe,
    Uretprobe,
    Kprobe,
    Kretprobe,
    Tracepoint,
}

impl Kind {
    pub fn is_return(self) -> bool {
        matches!(self, Self::Uretprobe | Self::Kretprobe)
    }
    pub fn is_user(self) -> bool {
        matches!(self, Self::Uprobe | Self::Uretprobe)
    }
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Uprobe => "u",
            Self::Uretprobe => "ur",
            Self::Kprobe => "k",
            Self::Kretprobe => "kr",
            Self::Tracepoint => "t",
        }
    }
}

/// Where in a user binary: a symbol (maybe a glob) plus offset, or a virtual address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserLocation {
    Symbol { pattern: String, offset: u64 },
    Address(u64),
}

/// A parsed probe, before anything is looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeSpec {
    User {
        ret: bool,
        target: String,
        location: UserLocation,
    },
    Kernel {
        ret: bool,
        pattern: String,
    },
    Tracepoint {
        category: String,
        event: String,
    },
    /// A USDT probe: attached as a uprobe at each site the binary's SDT notes name.
    Usdt {
        target: String,
        provider: String,
        name: String,
    },
}

impl ProbeSpec {
    pub fn kind(&self) -> Kind {
        match self {
            Self::User { ret: false, .. } | Self::Usdt { .. } => Kind::Uprobe,
            Self::User { ret: true, .. } => Kind::Uretprobe,
            Self::Kernel { ret: false, .. } => Kind::Kprobe,
            Self::Kernel { ret: true, .. } => Kind::Kretprobe,
            Self::Tracepoint { .. } => Kind::Tracepoint,
        }
    }

    /// Whether the spec names several probes.
    pub fn is_glob(&self) -> bool {
        match self {
            Self::User {
                location: UserLocation::Symbol { pattern, .. },
                ..
            } => is_glob(pattern),
            Self::User { .. } => false,
            Self::Kernel { pattern, .. } => is_glob(pattern),
            Self::Tracepoint { category, event } => is_glob(category) || is_glob(event),
            Self::Usdt { provider, name, .. } => is_glob(provider) || is_glob(name),
        }
    }
}

impl fmt::Display for ProbeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind().prefix();
        match self {
            Self::User {
                target,
                location: UserLocation::Symbol { pattern, offset: 0 },
                ..
            } => {
                write!(f, "{kind}:{target}:{pattern}")
            }
            Self::User {
                target,
                location: UserLocation::Symbol { pattern, offset },
                ..
            } => {
                write!(f, "{kind}:{target}:{pattern}+{offset:#x}")
            }
            Self::User {
                target,
                location: UserLocation::Address(a),
                ..
            } => {
                write!(f, "{kind}:{target}:{a:#x}")
            }
            Self::Kernel { pattern, .. } => write!(f, "{kind}:{pattern}"),
            Self::Tracepoint { category, event } => write!(f, "t:{category}:{event}"),
            Self::Usdt {
                target,
                provider,
                name,
            } => write!(f, "usdt:{target}:{provider}:{name}"),
        }
    }
}

const SYNTAX: &str = "use u:BINARY:SYMBOL, ur:BINARY:SYMBOL, usdt:BINARY:PROVIDER:NAME, \
                      k:FUNCTION, kr:FUNCTION or t:CATEGORY:EVENT";

/// Parses one probe. Errors are one line naming the problem and the expected syntax.
pub fn parse(text: &str) -> Result<ProbeSpec> {
    let text = text.trim();
    let Some((prefix, rest)) = text.split_once(':') else {
        usage_bail!("'{text}' is not a probe: {SYNTAX}");
    };
    let bad = |why: &str| usage_err!("bad probe '{text}': {why} ({SYNTAX})");
    let check_name = |name: &str, what: &str| -> Result<()> {
        if name.is_empty() {
            return Err(bad(&format!("empty {what}")));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "_.*?[]!$@-".contains(*c)))
        {
            return Err(bad(&format!("{what} '{name}' contains '{c}'")));
        }
        Ok(())
    };
    match prefix {
        "u" | "uprobe" | "ur" | "uretprobe" => {
            let ret = matches!(prefix, "ur" | "uretprobe");
            let Some((target, location)) = rest.rsplit_once(':') else {
                return Err(bad("missing ':SYMBOL' after the binary"));
            };
            if target.is_empty() {
                return Err(bad("empty binary or library"));
            }
            if target.contains('\0') {
                return Err(bad("NUL in the binary name"));
            }
            let location = parse_location(location).map_err(|why| bad(&why))?;
            if let UserLocation::Symbol { pattern, .. } = &location {
                check_name(pattern, "symbol")?;
            }
            Ok(ProbeSpec::User {
                ret,
                target: target.to_string(),
                location,
            })
        }
        "k" | "kprobe" | "kr" | "kretprobe" => {
            let ret = matches!(prefix, "kr" | "kretprobe");
            if rest.contains(':') {
                return Err(bad("kernel functions take no module or offset"));
            }
            check_name(rest, "function")?;
            Ok(ProbeSpec::Kernel {
                ret,
                pattern: rest.to_string(),
            })
        }
        "t" | "tracepoint" => {
            let Some((category, event)) = rest.split_once(':') else {
                return Err(bad("a tracepoint is CATEGORY:EVENT"));
            };
            check_name(category, "category")?;
            check_name(event, "event")?;
            if event.contains(':') {
                return Err(bad("too many ':'"));
            }
            Ok(ProbeSpec::Tracepoint {
                category: category.to_string(),
                event: event.to_string(),
            })
        }
        "usdt" => {
            // BINARY:PROVIDER:NAME, or BINARY:NAME for any provider (as bpftrace allows).
            let Some((head, name)) = rest.rsplit_once(':') else {
                return Err(bad("a USDT probe is usdt:BINARY:PROVIDER:NAME"));
            };
            let (target, provider) = match head.rsplit_once(':') {
                Some((target, provider)) => (target, provider),
                None => (head, "*"),
            };
            if target.is_empty() {
                return Err(bad("empty binary or library"));
            }
            if target.contains('\0') {
                return Err(bad("NUL in the binary name"));
            }
            check_name(provider, "provider")?;
            check_name(name, "probe name")?;
            Ok(ProbeSpec::Usdt {
                target: target.to_string(),
                provider: provider.to_string(),
                name: name.to_string(),
            })
        }
        _ => Err(usage_err!(
            "unknown probe type '{prefix}:' in '{text}': {SYNTAX}"
        )),
    }
}

fn parse_location(text: &str) -> Result<UserLocation, String> {
    if text.is_empty() {
        return Err("empty symbol".into());
    }
    if let Some(hex) = text.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16)
            .map(UserLocation::Address)
            .map_err(|_| format!("'{text}' is not a hex address"));
    }
    match text.split_once('+') {
        Some((symbol, offset)) => {
            let offset =
                parse_number(offset).ok_or_else(|| format!("'{offset}' is not an offset"))?;
            Ok(UserLocation::Symbol {
                pattern: symbol.to_string(),
                offset,
            })
        }
        None => Ok(UserLocation::Symbol {
            pattern: text.to_string(),
            offset: 0,
        }),
    }
}

fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

pub fn is_glob(text: &str) -> bool {
    text.contains(['*', '?', '['])
}

/// Shell-style glob: `*`, `?`, `[abc]`, `[a-z]`, `[!abc]`. Iterative, no recursion blowup.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class_match(&p, pi, t[ti]) {
                        if matched {
                            pi = next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == '[' {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the class starting at `p[start] == '['`; `None` if unterminated.
fn class_match(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            matched |= p[i] <= c && c <= p[i + 2];
            i += 3;
        } else {
            matched |= p[i] == c;
            i += 1;
        }
        first = false;
    }
    None
}

// ---- resolution ----------------------------------------------------------------------------

/// One concrete attach point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Point {
    /// `offset` is a file offset in `path`, as the kernel's uprobe interface wants.
    User {
        path: PathBuf,
        symbol: String,
        offset: u64,
    },
    Kernel {
        function: String,
    },
    Tracepoint {
        category: String,
        event: String,
    },
}

/// A resolved probe: what to show the user, and where to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub kind: Kind,
    /// Short name for output: the symbol, the function, or `category:event`.
    pub name: String,
    pub point: Point,
    /// A USDT probe site: its semaphore and arguments (None for every other probe).
    pub usdt: Option<crate::usdt::Site>,
}

impl Probe {
    /// The full spec of this one probe, e.g. `u:/usr/sbin/nginx:ngx_http_process_request`.
    pub fn spec(&self) -> String {
        match &self.point {
            Point::User { path, symbol, .. } if self.usdt.is_some() => {
                format!("usdt:{}:{symbol}", path.display())
            }
            Point::User { path, symbol, .. } => {
                format!("{}:{}:{symbol}", self.kind.prefix(), path.display())
            }
            Point::Kernel { function } => format!("{}:{function}", self.kind.prefix()),
            Point::Tracepoint { category, event } => format!("t:{category}:{event}"),
        }
    }
}

/// Resolves a spec into probes (several for a glob), checking that each exists.
/// `pid` scopes library lookup to that process's maps.
pub fn resolve(spec: &ProbeSpec, pid: Option<u32>) -> Result<Vec<Probe>> {
    let kind = spec.kind();
    match spec {
        ProbeSpec::User {
            target, location, ..
        } => {
            let path = resolve_binary(target, pid)?;
            let elf = ElfSymbols::read(&path)?;
            let mut probes = Vec::new();
            match location {
                UserLocation::Address(addr) => {
                    let offset = elf.file_offset(*addr).ok_or_else(|| {
                        usage_err!(
                            "address {addr:#x} is not in a loaded segment of {}",
                            path.display()
                        )
                    })?;
                    if let Some((name, start)) = elf.function_containing(*addr) {
                        elf.check_boundary(&name, start, addr - start)?;
                    }
                    probes.push(Probe {
                        kind,
                        name: format!("{addr:#x}"),
                        point: Point::User {
                            path,
                            symbol: format!("{addr:#x}"),
                            offset,
                        },
                        usdt: None,
                    });
                }
                UserLocation::Symbol {
                    pattern,
                    offset: extra,
                } => {
                    let mut seen = HashSet::new();
                    for (name, addr) in elf.matching(pattern) {
                        if *extra != 0 {
                            elf.check_boundary(&name, addr, *extra)?;
                        }
                        let Some(offset) = elf.file_offset(addr + extra) else {
                            continue;
                        };
                        // Aliases (several names, one address) would double-count.
                        if !seen.insert(offset) {
                            continue;
                        }
                        let symbol = if *extra == 0 {
                            name.clone()
                        } else {
                            format!("{name}+{extra:#x}")
                        };
                        probes.push(Probe {
                            kind,
                            name: symbol.clone(),
                            point: Point::User {
                                path: path.clone(),
                                symbol,
                                offset,
                            },
                            usdt: None,
                        });
                    }
                    if probes.is_empty() {
                        return Err(elf.not_found(pattern));
                    }
                    if probes.len() > MAX_UPROBES {
                        usage_bail!(
                            "'{pattern}' matches {} functions in {}; at most {MAX_UPROBES} uprobes \
                             can be attached at once: narrow the pattern",
                            probes.len(),
                            path.display()
                        );
                    }
                }
            }
            Ok(probes)
        }
        ProbeSpec::Usdt {
            target,
            provider,
            name,
        } => crate::usdt::resolve(target, provider, name, pid),
        ProbeSpec::Kernel { pattern, .. } => {
            let (functions, untraceable) = kernel_functions_and_untraceable(pattern)?;
            if functions.is_empty() {
                usage_bail!(
                    "no kernel function matches '{pattern}' (not in /proc/kallsyms; 'tplist -k \
                     PATTERN' lists them)"
                );
            }
            if functions.len() > MAX_KERNEL_PROBES {
                // Past the limit only kprobes could help (fentry takes one object per
                // function too): a kernel without them gets that reason, not the limit.
                if !std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists() {
                    bail!(
                        "kprobes not built into this kernel (CONFIG_KPROBES unset): '{pattern}' \
                         ({} kernel functions) cannot be attached; use t: tracepoints or u: probes",
                        functions.len()
                    );
                }
                // One kprobe_multi link takes them all (probe_attach uses it past the limit).
                match crate::kprobe_multi::supported() {
                    Ok(_) if functions.len() <= MAX_KPROBE_MULTI => {}
                    Ok(_) => usage_bail!(
                        "'{pattern}' matches {} kernel functions; at most {MAX_KPROBE_MULTI} can \
                         be attached at once (one kprobe_multi link): narrow the pattern",
                        functions.len()
                    ),
                    Err(why) => usage_bail!(
                        "'{pattern}' matches {} kernel functions; at most {MAX_KERNEL_PROBES} \
                         single kprobes can be attached at once: narrow the pattern \
                         (kprobe_multi, Linux 5.18+ with CONFIG_FPROBE, lifts this limit; not \
                         here: {why})",
                        functions.len()
                    ),
                }
            }
            if untraceable > 0 {
                errln!(
                    "{}: '{pattern}': skipping {untraceable} of {} matching kernel functions the \
                     kernel cannot probe (in /proc/kallsyms, not in available_filter_functions)",
                    crate::output::tool_name(),
                    untraceable + functions.len()
                );
            }
            Ok(functions
                .into_iter()
                .map(|function| Probe {
                    kind,
                    name: function.clone(),
                    point: Point::Kernel { function },
                    usdt: None,
                })
                .collect())
        }
        ProbeSpec::Tracepoint { category, event } => {
            let found = tracepoints(category, event)?;
            if found.is_empty() {
                usage_bail!(
                    "no tracepoint {category}:{event} on this kernel ('tplist \"{category}:*\"' lists them)"
                );
            }
            if found.len() > MAX_KERNEL_PROBES {
                usage_bail!(
                    "'{category}:{event}' matches {} tracepoints; at most {MAX_KERNEL_PROBES} can be \
                     attached at once: narrow the pattern",
                    found.len()
                );
            }
            Ok(found
                .into_iter()
                .map(|(category, event)| Probe {
                    kind,
                    name: format!("{category}:{event}"),
                    point: Point::Tracepoint { category, event },
                    usdt: None,
                })
                .collect())
        }
    }
}

/// Parses and resolves several specs, numbering probes in order; refuses duplicates.
pub fn resolve_all(texts: &[String], pid: Option<u32>) -> Result<Vec<Probe>> {
    let mut all: Vec<Probe> = Vec::new();
    for text in texts {
        let spec = parse(text)?;
        for probe in resolve(&spec, pid)? {
            if !all.contains(&probe) {
                all.push(probe);
            }
        }
    }
    Ok(all)
}

// ---- binaries and libraries ------------------------------------------------------------------

/// A binary path or a library name → an existing file.
pub fn resolve_binary(target: &str, pid: Option<u32>) -> Result<PathBuf> {
    if target.contains('/') {
        let path = PathBuf::from(target);
        // With -p, the path as the process sees it: through its root when that is another
        // file than the host's (a container's mount namespace), else the host's own path.
        if let Some(pid) = pid
            && target.starts_with('/')
        {
            let via_root = PathBuf::from(format!("/proc/{pid}/root{target}"));
            if via_root.exists() && !same_file(&via_root, &path) {
                return Ok(via_root);
            }
        }
        if !path.exists() {
            match pid {
                Some(pid) => usage_bail!(
                    "{target}: no such file, on the host or in PID {pid}'s mount namespace"
                ),
                None => usage_bail!(
                    "{target}: no such file (give the binary's path or a library name like libc; \
                     with -p PID, paths inside its container resolve too)"
                ),
            }
        }
        return Ok(path);
    }
    if let Some(pid) = pid
        && let Some(path) = library_in_maps(target, pid)?
    {
        return Ok(path);
    }
    if let Some(path) = library_in_ld_cache(target) {
        return Ok(path);
    }
    for dir in [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib64",
        "/usr/lib64",
        "/lib",
        "/usr/lib",
    ] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut names: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| library_name_matches(target, &n.to_string_lossy()))
                })
                .collect();
            names.sort();
            if let Some(path) = names.into_iter().next() {
                return Ok(path);
            }
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(target);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    match pid {
        Some(pid) => usage_bail!(
            "cannot find library or binary '{target}' (not mapped by PID {pid}, not in ld.so.cache or $PATH)"
        ),
        None => usage_bail!(
            "cannot find library or binary '{target}' (not in ld.so.cache, the library directories or $PATH): give its path"
        ),
    }
}

/// Whether two paths name the same file (device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// `libc` / `c` / `libc.so.6` against a file name such as `libc.so.6` or `libc-2.31.so`.
pub fn library_name_matches(wanted: &str, file: &str) -> bool {
    let base = if wanted.starts_with("lib") {
        wanted.to_string()
    } else {
        format!("lib{wanted}")
    };
    for name in [wanted, base.as_str()] {
        if file == name {
            return true;
        }
        if let Some(rest) = file.strip_prefix(name)
            && (rest.starts_with(".so") || (rest.starts_with('-') && rest.contains(".so")))
        {
            return true;
        }
    }
    false
}

fn library_in_maps(target: &str, pid: u32) -> Result<Option<PathBuf>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("cannot read /proc/{pid}/maps (is PID {pid} running?)"))?;
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        if !path.starts_with('/') {
            continue;
        }
        let file = Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if library_name_matches(target, &file) || file == target {
            // Through the process's root, so libraries in containers resolve too.
            let via_root = PathBuf::from(format!("/proc/{pid}/root{path}"));
            return Ok(Some(if via_root.exists() {
                via_root
            } else {
                PathBuf::from(path)
            }));
        }
    }
    Ok(None)
}

/// Looks a library up in /etc/ld.so.cache (glibc's "glibc-ld.so.cache1.1" format).
fn library_in_ld_cache(target: &str) -> Option<PathBuf> {
    let data = std::fs::read("/etc/ld.so.cache").ok()?;
    ld_cache_entries(&data)
        .into_iter()
        .filter(|(key, _, _)| library_name_matches(target, key))
        // Prefer x86-64 libraries (flag 0x0300) on this host.
        .min_by_key(|(_, _, flags)| if flags & 0xff00 == 0x0300 { 0 } else { 1 })
        .map(|(_, value, _)| PathBuf::from(value))
        .filter(|p| p.exists())
}

fn ld_cache_entries(data: &[u8]) -> Vec<(String, String, i32)> {
    const MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
    let Some(base) = data.windows(MAGIC.len()).position(|w| w == MAGIC) else {
        return Vec::new();
    };
    let u32_at = |off: usize| -> Option<u32> {
        data.get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let string_at = |off: usize| -> Option<String> {
        let bytes = data.get(base + off..)?;
        let end = bytes.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
    };
    let Some(count) = u32_at(base + 20) else {
        return Vec::new();
    };
    let mut entries = Vec::new();
    for i in 0..count.min(1 << 20) as usize {
        let entry = base + 48 + i * 24;
        let (Some(flags), Some(key), Some(value)) =
            (u32_at(entry), u32_at(entry + 4), u32_at(entry + 8))
        else {
            break;
        };
        if let (Some(key), Some(value)) = (string_at(key as usize), string_at(value as usize)) {
            entries.push((key, value, flags as i32));
        }
    }
    entries
}

/// The function symbols of one ELF file (and of its debug file, if installed).
pub struct ElfSymbols {
    pub path: PathBuf,
    /// name → virtual address, sorted by name.
    pub functions: BTreeMap<String, u64>,
    /// (virtual address, size, file offset) of each PT_LOAD segment.
    segments: Vec<(u64, u64, u64)>,
    /// virtual address → size in bytes, for functions whose symbol gives one.
    sizes: HashMap<u64, u64>,
    x86_64: bool,
    has_symtab: bool,
    dynsym_count: usize,
    debug_file: Option<PathBuf>,
}

impl ElfSymbols {
    pub fn read(path: &Path) -> Result<Self> {
        let shown = path.display();
        let meta = std::fs::metadata(path).with_context(|| format!("{shown}: cannot read"))?;
        if meta.is_dir() {
            usage_bail!("{shown} is a directory, not an ELF binary or library");
        }
        // A FIFO or a device would block or never end; uprobes need a regular file anyway.
        if !meta.is_file() {
            usage_bail!(
                "{shown} is not a regular file (uprobes need a compiled binary or shared library)"
            );
        }
        if meta.len() > MAX_ELF_BYTES {
            usage_bail!(
                "{shown} is {} GiB: too large for a binary or library (at most {} GiB)",
                meta.len() >> 30,
                MAX_ELF_BYTES >> 30
            );
        }
        let data = std::fs::read(path).with_context(|| format!("{shown}: cannot read"))?;
        if !data.starts_with(b"\x7fELF") {
            usage_bail!(
                "{shown} is not an ELF file (uprobes need a compiled binary or shared library)"
            );
        }
        let file =
            object::File::parse(&*data).map_err(|e| usage_err!("{shown}: bad ELF file: {e}"))?;
        let mut functions = BTreeMap::new();
        let mut sizes = HashMap::new();
        let mut has_symtab = false;
        let mut dynsym_count = 0;
        let mut add = |sym: object::Symbol<'_, '_>, functions: &mut BTreeMap<String, u64>| {
            if sym.kind() == SymbolKind::Text
                && sym.is_definition()
                && sym.address() != 0
                && let Ok(name) = sym.name()
            {
                // Versioned names ("malloc@@GLIBC_2.2.5") are probed by their plain name.
                let name = name.split('@').next().unwrap_or(name);
                functions.entry(name.to_string()).or_insert(sym.address());
                if sym.size() > 0 {
                    sizes.entry(sym.address()).or_insert(sym.size());
                }
                return true;
            }
            false
        };
        for sym in file.symbols() {
            has_symtab = true;
            add(sym, &mut functions);
        }
        for sym in file.dynamic_symbols() {
            if add(sym, &mut functions) {
                dynsym_count += 1;
            }
        }
        let segments = file
            .segments()
            .map(|s| (s.address(), s.size(), s.file_range().0))
            .collect();
        let mut elf = Self {
            path: path.to_path_buf(),
            functions,
            segments,
            sizes,
            x86_64: file.architecture() == object::Architecture::X86_64,
            has_symtab,
            dynsym_count,
            debug_file: None,
        };
        if !has_symtab && let Some(debug) = find_debug_file(path, &file) {
            if let Ok(data) = std::fs::read(&debug)
                && let Ok(dfile) = object::File::parse(&*data)
            {
                for sym in dfile.symbols() {
                    if sym.kind() == SymbolKind::Text
                        && sym.is_definition()
                        && sym.address() != 0
                        && let Ok(name) = sym.name()
                    {
                        elf.functions
                            .entry(name.to_string())
                            .or_insert(sym.address());
                        if sym.size() > 0 {
                            elf.sizes.entry(sym.address()).or_insert(sym.size());
                        }
                    }
                }
            }
            elf.debug_file = Some(debug);
        }
        Ok(elf)
    }

    /// Functions whose name matches `pattern` (exactly, or as a glob).
    pub fn matching(&self, pattern: &str) -> Vec<(String, u64)> {
        if !is_glob(pattern) {
            return self
                .functions
                .get(pattern)
                .map(|&a| vec![(pattern.to_string(), a)])
                .unwrap_or_default();
        }
        self.functions
            .iter()
            .filter(|(name, _)| glob_match(pattern, name))
            .map(|(n, &a)| (n.clone(), a))
            .collect()
    }

    /// The function (name, start address) whose symbol covers `addr`, if its size is known.
    pub fn function_containing(&self, addr: u64) -> Option<(String, u64)> {
        self.functions
            .iter()
            .find(|&(_, &start)| {
                self.sizes
                    .get(&start)
                    .is_some_and(|&size| addr >= start && addr < start + size)
            })
            .map(|(name, &start)| (name.clone(), start))
    }

    /// Refuses `name+offset` unless it lies inside the function and, on x86-64, at the start
    /// of an instruction: the kernel puts its breakpoint wherever it is told, and one inside
    /// an instruction corrupts it for every process that runs the function.
    pub fn check_boundary(&self, name: &str, start: u64, offset: u64) -> Result<()> {
        let size = self.sizes.get(&start).copied();
        if let Some(size) = size
            && offset >= size
        {
            usage_bail!("{name}+{offset:#x} is past the end of {name} ({size} bytes)");
        }
        if !self.x86_64 {
            return Ok(());
        }
        // Decode from the function's start up to the offset (x86 has no fixed length).
        let len = size.unwrap_or(offset + 15).min(offset + 15);
        let mut code = vec![0u8; len as usize];
        let read = self
            .file_offset(start)
            .and_then(|at| {
                let file = std::fs::File::open(&self.path).ok()?;
                file.read_exact_at(&mut code, at).ok()
            })
            .is_some();
        if !read {
            bail!("cannot read the code of {name} in {}", self.path.display());
        }
        let mut decoder = iced_x86::Decoder::with_ip(64, &code, 0, iced_x86::DecoderOptions::NONE);
        let mut at = 0;
        while at < offset && decoder.can_decode() {
            let insn = decoder.decode();
            if insn.is_invalid() {
                usage_bail!(
                    "{name}+{offset:#x}: cannot decode {name} up to there (at +{at:#x}); \
                     give an offset that starts an instruction"
                );
            }
            let next = insn.next_ip();
            if next > offset {
                usage_bail!(
                    "{name}+{offset:#x} is inside an instruction (+{at:#x}..+{next:#x}): a \
                     uprobe there would corrupt it; use +{at:#x} or +{next:#x}"
                );
            }
            at = next;
        }
        Ok(())
    }

    /// The file offset of a virtual address (what the kernel's uprobe interface takes).
    pub fn file_offset(&self, addr: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(start, size, _)| addr >= *start && addr < start + size)
            .map(|(start, _, offset)| addr - start + offset)
    }

    fn not_found(&self, pattern: &str) -> anyhow::Error {
        let path = self.path.display();
        let what = if is_glob(pattern) {
            "no function matches"
        } else {
            "no function"
        };
        if self.has_symtab || self.debug_file.is_some() {
            usage_err!("{what} '{pattern}' in {path} ('tplist -b {path}' lists its functions)")
        } else {
            usage_err!(
                "{what} '{pattern}' in {path}: it is stripped (no .symtab; {} exported functions in \
                 .dynsym; no debug file under /usr/lib/debug): install its debug symbols, or probe \
                 an address (u:{}:0xADDR) or an exported symbol plus offset (SYMBOL+0xOFF)",
                self.dynsym_count,
                path
            )
        }
    }
}

/// `.gnu_debuglink` and build-id lookups, as gdb does.
fn find_debug_file(path: &Path, file: &object::File<'_>) -> Option<PathBuf> {
    if let Ok(Some(id)) = file.build_id()
        && id.len() > 1
    {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let candidate = PathBuf::from(format!(
            "/usr/lib/debug/.build-id/{}/{}.debug",
            &hex[..2],
            &hex[2..]
        ));
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    if let Ok(Some((name, _crc))) = file.gnu_debuglink() {
        let name = String::from_utf8_lossy(name).into_owned();
        let dir = path.parent().unwrap_or(Path::new("/"));
        let rel = dir.strip_prefix("/").unwrap_or(dir);
        for candidate in [
            dir.join(&name),
            dir.join(".debug").join(&name),
            Path::new("/usr/lib/debug").join(rel).join(&name),
        ] {
            if candidate.is_file() && candidate != path {
                return Some(candidate);
            }
        }
    }
    None
}

// ---- kernel functions and tracepoints ------------------------------------------------------

/// Kernel functions matching `pattern`: from available_filter_functions when readable (only
/// those can be traced), else text symbols of /proc/kallsyms. An exact name is returned as is
/// when it exists.
pub fn kernel_functions(pattern: &str) -> Result<Vec<String>> {
    Ok(kernel_functions_and_untraceable(pattern)?.0)
}

/// [`kernel_functions`], and for a glob how many more text symbols of /proc/kallsyms match it
/// that ftrace cannot hook (absent from available_filter_functions: inlined, notrace, init
/// code). A kprobe_multi link fails whole on one of those, so they are left out and counted.
pub fn kernel_functions_and_untraceable(pattern: &str) -> Result<(Vec<String>, usize)> {
    let traceable = traceable_function_names();
    let names = match &traceable {
        Some(names) => names,
        None => &kallsyms_function_names()?,
    };
    if !is_glob(pattern) {
        return Ok((
            names
                .contains(pattern)
                .then(|| pattern.to_string())
                .into_iter()
                .collect(),
            0,
        ));
    }
    // Compiler clones (foo.isra.0, foo.cold) are not separately probe-able by name.
    let wanted = |n: &&String| !n.contains('.') && glob_match(pattern, n);
    let mut found: Vec<String> = names.iter().filter(wanted).cloned().collect();
    found.sort();
    let untraceable = match &traceable {
        Some(traceable) => kallsyms_function_names()
            .map(|all| {
                all.iter()
                    .filter(wanted)
                    .filter(|n| !traceable.contains(*n))
                    .count()
            })
            .unwrap_or(0),
        None => 0,
    };
    Ok((found, untraceable))
}

/// available_filter_functions: what ftrace (and so kprobe_multi) can hook; None when
/// unreadable or empty.
pub fn traceable_function_names() -> Option<HashSet<String>> {
    let root = crate::tracefs::root().ok()?;
    let text = std::fs::read_to_string(root.join("available_filter_functions")).ok()?;
    let names: HashSet<String> = text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(String::from)
        .collect();
    (!names.is_empty()).then_some(names)
}

/// Text symbols of /proc/kallsyms.
fn kallsyms_function_names() -> Result<HashSet<String>> {
    let text = std::fs::read_to_string("/proc/kallsyms").context("cannot read /proc/kallsyms")?;
    let mut names = HashSet::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (_, Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if matches!(kind, "t" | "T") {
            names.insert(name.to_string());
        }
    }
    Ok(names)
}

/// Tracepoints `(category, event)` matching the two globs, sorted.
pub fn tracepoints(category: &str, event: &str) -> Result<Vec<(String, String)>> {
    let events = crate::tracefs::root()?.join("events");
    let mut found = Vec::new();
    let dirs =
        std::fs::read_dir(&events).with_context(|| format!("cannot list {}", events.display()))?;
    for cat in dirs.flatten() {
        let cat_name = cat.file_name().to_string_lossy().into_owned();
        if !cat.path().is_dir() || !glob_match(category, &cat_name) {
            continue;
        }
        let Ok(evs) = std::fs::read_dir(cat.path()) else {
            continue;
        };
        for ev in evs.flatten() {
            let ev_name = ev.file_name().to_string_lossy().into_owned();
            if ev.path().join("format").exists() && glob_match(event, &ev_name) {
                found.push((cat_name.clone(), ev_name));
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_usdt() {
        assert_eq!(
            parse("usdt:/usr/bin/python3.11:python:function__*").unwrap(),
            ProbeSpec::Usdt {
                target: "/usr/bin/python3.11".into(),
                provider: "python".into(),
                name: "function__*".into(),
            }
        );
        assert_eq!(
            parse("usdt:libstdc++:throw").unwrap(),
            ProbeSpec::Usdt {
                target: "libstdc++".into(),
                provider: "*".into(),
                name: "throw".into(),
            }
        );
        assert!(parse("usdt:libstdc++:throw").unwrap().is_glob());
        assert!(parse("usdt:/bin/x").is_err());
        assert!(parse("usdt::p:n").is_err());
        assert_eq!(parse("usdt:/a/b:p:n").unwrap().to_string(), "usdt:/a/b:p:n");
    }

    #[test]
    fn parses_every_kind() {
        assert_eq!(
            parse("u:/usr/sbin/nginx:ngx_http_process_request").unwrap(),
            ProbeSpec::User {
                ret: false,
                target: "/usr/sbin/nginx".into(),
                location: UserLocation::Symbol {
                    pattern: "ngx_http_process_request".into(),
                    offset: 0
                }
            }
        );
        assert_eq!(
            parse("ur:libc:malloc+0x10").unwrap(),
            ProbeSpec::User {
                ret: true,
                target: "libc".into(),
                location: UserLocation::Symbol {
                    pattern: "malloc".into(),
                    offset: 16
                }
            }
        );
        assert_eq!(
            parse("u:/bin/x:0x4a5b0").unwrap(),
            ProbeSpec::User {
                ret: false,
                target: "/bin/x".into(),
                location: UserLocation::Address(0x4a5b0)
            }
        );
        assert_eq!(
            parse("k:do_sys_openat2").unwrap(),
            ProbeSpec::Kernel {
                ret: false,
                pattern: "do_sys_openat2".into()
            }
        );
        assert_eq!(
            parse("kretprobe:tcp_*").unwrap(),
            ProbeSpec::Kernel {
                ret: true,
                pattern: "tcp_*".into()
            }
        );
        assert_eq!(
            parse("t:sched:sched_switch").unwrap(),
            ProbeSpec::Tracepoint {
                category: "sched".into(),
                event: "sched_switch".into()
            }
        );
        assert!(parse("u:/usr/sbin/nginx:ngx_http_*").unwrap().is_glob());
        assert_eq!(
            parse("u:/usr/sbin/nginx:ngx_http_*").unwrap().to_string(),
            "u:/usr/sbin/nginx:ngx_http_*"
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "nginx",
            "x:foo",
            "u:",
            "u:nginx",
            "u::sym",
            "u:/bin/x:",
            "u:/bin/x:sym+zz",
            "u:/bin/x:0xzz",
            "k:",
            "k:a:b",
            "k:foo bar",
            "t:sched",
            "t::x",
            "t:a:b:c",
            "kr:f(x)",
        ] {
            let err = parse(bad).expect_err(bad).to_string();
            assert!(!err.contains('\n'), "{bad}: {err}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("ngx_http_*_handler", "ngx_http_static_handler"));
        assert!(!glob_match(
            "ngx_http_*_handler",
            "ngx_http_static_handler2"
        ));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("sched_[sw]*", "sched_switch"));
        assert!(glob_match("sched_[!w]*", "sched_switch"));
        assert!(!glob_match("sched_[!s]*", "sched_switch"));
        assert!(glob_match("a[", "a["));
        assert!(glob_match("*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaab"));
        assert!(!glob_match("*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaa"));
    }

    #[test]
    fn library_names() {
        assert!(library_name_matches("libc", "libc.so.6"));
        assert!(library_name_matches("c", "libc.so.6"));
        assert!(library_name_matches("libc.so.6", "libc.so.6"));
        assert!(library_name_matches("c", "libc-2.31.so"));
        assert!(!library_name_matches("c", "libcrypt.so.1"));
        assert!(!library_name_matches("libc", "libcap.so.2"));
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;

        /// Tokens probe specs are made of, hostile ones included.
        fn piece() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("u".to_string()),
                Just("ur".to_string()),
                Just("k".to_string()),
                Just("t".to_string()),
                Just("uprobe".to_string()),
                Just(":".to_string()),
                Just("+".to_string()),
                Just("0x".to_string()),
                Just("*".to_string()),
                Just("[".to_string()),
                Just("]".to_string()),
                Just("!".to_string()),
                Just("libc".to_string()),
                Just("/usr/sbin/nginx".to_string()),
                Just("ngx_http_*".to_string()),
                Just("sched_switch".to_string()),
                Just("\0".to_string()),
                Just(" ".to_string()),
                "[0-9a-fx]{1,20}",
                "\\PC{0,8}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            /// Any text: parse, and glob matching both ways, return without panicking.
            #[test]
            fn any_text_never_panics(text in "\\PC{0,64}") {
                let _ = parse(&text);
                let _ = glob_match(&text, "ngx_http_static_handler");
                let _ = glob_match("ngx_*[a-z]?", &text);
                let _ = glob_match(&text, &text);
            }

            /// Texts assembled from the syntax's own pieces reach the deeper branches.
            #[test]
            fn assembled_specs_never_panic(pieces in prop::collection::vec(piece(), 0..12)) {
                let text = pieces.concat();
                if let Ok(spec) = parse(&text) {
                    // Whatever parses prints back to something that parses to the same probe.
                    let again = parse(&spec.to_string());
                    prop_assert_eq!(again.ok(), Some(spec), "round trip of {:?}", text);
                }
            }

            /// Well-formed uprobe specs parse, and keep their parts.
            #[test]
            fn well_formed_uprobes_parse(
                ret in any::<bool>(),
                target in "(/[a-z0-9_.]{1,12}){1,4}|lib[a-z]{1,8}",
                symbol in "[A-Za-z_][A-Za-z0-9_]{0,30}\\*?",
                offset in proptest::option::of(0u64..1 << 40),
            ) {
                let kind = if ret { "ur" } else { "u" };
                let text = match offset {
                    Some(off) => format!("{kind}:{target}:{symbol}+{off:#x}"),
                    None => format!("{kind}:{target}:{symbol}"),
                };
                let spec = parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
                let want = ProbeSpec::User {
                    ret,
                    target,
                    location: UserLocation::Symbol { pattern: symbol, offset: offset.unwrap_or(0) },
                };
                prop_assert_eq!(spec, want);
            }

            /// A literal name (no glob characters) always matches itself, and only itself.
            #[test]
            fn literal_globs_match_exactly(name in "[A-Za-z0-9_.]{0,20}", other in "[A-Za-z0-9_.]{0,20}") {
                prop_assert!(glob_match(&name, &name));
                prop_assert_eq!(glob_match(&name, &other), name == other);
            }
        }
    }

    #[test]
    fn ld_cache_of_this_host() {
        if let Ok(data) = std::fs::read("/etc/ld.so.cache") {
            let entries = ld_cache_entries(&data);
            assert!(
                entries.iter().any(|(k, _, _)| k.starts_with("libc.so")),
                "{entries:?}"
            );
        }
    }
}

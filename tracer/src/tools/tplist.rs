//! tplist: what the probe tools can attach to here: tracepoints (with `-v` their record
//! fields, as argdist and trace name them), kernel functions (`-k`, when this kernel lets us
//! attach to them), a binary's or library's functions (`-l`), and USDT probes (SDT notes) of a
//! binary or library (`-l ... --usdt`) or of everything a process has mapped (`-p PID`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;
use serde_json::json;

use crate::{
    attach,
    output::{Out, with_schema},
    probe_spec::{self, ElfSymbols, glob_match},
    session, tracefs, usdt,
};

const TOOL: &str = "tplist";

/// List tracepoints and their fields, kernel functions, or a binary's functions.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    tplist 'sched:*'                       scheduler tracepoints\n  \
    tplist -v t:sched:sched_switch         its fields (names argdist/trace take)\n  \
    tplist -k 'tcp_*'                      kernel functions (k:/kr: probes)\n  \
    tplist -l /usr/sbin/nginx 'ngx_http*'  functions a uprobe can attach to\n  \
    tplist -l libc 'mall*'                 a library, found like the dynamic loader does\n  \
    tplist -p 1234                         USDT probes of a process and its libraries\n  \
    tplist --usdt -v -l /usr/bin/python3.11  a binary's USDT probes with their arguments")]
pub struct TplistArgs {
    /// Glob on `category:event` (or `t:category:event`), function or symbol names (default:
    /// everything).
    #[arg(value_name = "GLOB")]
    pub pattern: Option<String>,
    /// Show each tracepoint's fields (type, name, offset, size).
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// List kernel functions instead of tracepoints.
    #[arg(short = 'k', long = "kernel", conflicts_with = "binary")]
    pub kernel: bool,
    /// List the functions of this binary or library (path or name like libc).
    #[arg(short = 'l', long = "binary", alias = "lib", value_name = "BINARY")]
    pub binary: Option<String>,
    /// With -l: resolve a library name through this process's maps; alone: list the USDT
    /// probes of the process's binary and of every library it has mapped.
    #[arg(
        short = 'p',
        long = "pid",
        value_name = "PID",
        conflicts_with = "kernel"
    )]
    pub pid: Option<u32>,
    /// List USDT probes (SDT notes: provider:name) instead of functions (with -l; implied by
    /// -p alone).
    #[arg(long = "usdt", conflicts_with = "kernel")]
    pub usdt: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: TplistArgs) -> Result<()> {
    let mut pattern = args.pattern.clone().unwrap_or_else(|| "*".into());
    if args.binary.is_none()
        && !args.kernel
        && let Some(tracepoint) = pattern.strip_prefix("t:")
    {
        // The probe tools' own spelling (t:CATEGORY:EVENT), as their messages suggest it.
        pattern = tracepoint.to_string();
    }
    let mut out = Out::new();
    if args.binary.is_none()
        && !args.kernel
        && pattern.starts_with("usdt:")
        && let probe_spec::ProbeSpec::Usdt {
            target,
            provider,
            name,
        } = probe_spec::parse(&pattern)?
    {
        // The probe tools' own spelling (usdt:BINARY:PROVIDER:NAME): that binary's probes.
        let args = TplistArgs {
            binary: Some(target),
            usdt: true,
            ..args.clone()
        };
        return list_usdt(&args, &format!("{provider}:{name}"), &mut out);
    }
    if args.usdt || (args.pid.is_some() && args.binary.is_none()) {
        return list_usdt(&args, &pattern, &mut out);
    }
    if let Some(binary) = &args.binary {
        if let Some(pid) = args.pid {
            session::check_pid(pid)?;
        }
        let path = probe_spec::resolve_binary(binary, args.pid)?;
        let elf = ElfSymbols::read(&path)?;
        let found = elf.matching(&pattern);
        if found.is_empty() {
            usage_bail!(
                "no function matches '{pattern}' in {} ({} functions in all)",
                path.display(),
                elf.functions.len()
            );
        }
        for (name, addr) in &found {
            let offset = elf.file_offset(*addr);
            if args.json {
                out.json(&with_schema(
                    TOOL,
                    json!({"type": "symbol", "binary": path, "name": name, "address": addr, "file_offset": offset}),
                ));
            } else if args.verbose {
                out.line(&format!(
                    "{name:<50} {addr:#014x}  u:{}:{name}",
                    path.display()
                ));
            } else {
                out.line(name);
            }
        }
        return Ok(());
    }
    if args.kernel {
        if let Some(why) = attach::kernel_functions_unavailable() {
            errln!(
                "{TOOL}: kernel functions cannot be probed on this kernel ({why}); listing them anyway"
            );
        }
        for name in probe_spec::kernel_functions(&pattern)? {
            if args.json {
                out.json(&with_schema(
                    TOOL,
                    json!({"type": "function", "name": name}),
                ));
            } else {
                out.line(&name);
            }
        }
        return Ok(());
    }
    let (category, event) = match pattern.split_once(':') {
        Some((c, e)) => (c.to_string(), e.to_string()),
        // A bare glob matches either part: 'sched*' finds the sched category and sched_* events.
        None => ("*".to_string(), pattern.clone()),
    };
    let mut found = probe_spec::tracepoints(&category, &event)?;
    if !pattern.contains(':') {
        let by_category = probe_spec::tracepoints(&pattern, "*")?;
        found.extend(by_category);
        found.sort();
        found.dedup();
    }
    if found.is_empty() {
        usage_bail!("no tracepoint matches '{pattern}' (try 'tplist \"sched:*\"')");
    }
    for (category, event) in found {
        let name = format!("{category}:{event}");
        let fields = if args.verbose || args.json {
            tracefs::fields(&category, &event)?
                .into_iter()
                .filter(|f| !f.name.starts_with("common_"))
                .collect()
        } else {
            Vec::new()
        };
        if args.json {
            let fields: Vec<_> = fields
                .iter()
                .map(|f| json!({"name": f.name, "declaration": f.declaration, "offset": f.offset, "size": f.size, "signed": f.signed}))
                .collect();
            out.json(&with_schema(
                TOOL,
                json!({"type": "tracepoint", "name": name, "fields": fields}),
            ));
            continue;
        }
        out.line(&name);
        if args.verbose {
            for f in fields {
                out.line(&format!(
                    "    {:<40} offset:{:<4} size:{}",
                    format!("{};", f.declaration),
                    f.offset,
                    f.size
                ));
            }
        }
        if out.closed() {
            break;
        }
    }
    Ok(())
}

/// The USDT probes of `-l BINARY`, or of `-p PID`'s binary and mapped libraries, whose
/// `provider:name` matches `pattern` (a glob; without a `:` it may match either part).
fn list_usdt(args: &TplistArgs, pattern: &str, out: &mut Out) -> Result<()> {
    if let Some(pid) = args.pid {
        session::check_pid(pid)?;
    }
    let files = match (&args.binary, args.pid) {
        (Some(binary), pid) => {
            // An executable on $PATH first, as BCC's -l (`tplist -l node`), then a library.
            let path = match in_path(binary) {
                Some(path) => path,
                None => probe_spec::resolve_binary(binary, pid)?,
            };
            vec![(path.clone(), path)]
        }
        (None, Some(pid)) => mapped_files(pid)?,
        (None, None) => {
            usage_bail!("--usdt lists a binary's or a process's probes: add -l BINARY or -p PID")
        }
    };
    let matches = |provider: &str, name: &str| {
        let full = format!("{provider}:{name}");
        glob_match(pattern, &full)
            || (!pattern.contains(':')
                && (glob_match(pattern, provider) || glob_match(pattern, name)))
    };
    let mut listed = 0;
    for (path, read) in &files {
        // A process maps files that are not ELF (locale archives, caches): they have no probes.
        let probes = match usdt::probes(read) {
            Ok(p) => p,
            Err(_) if args.binary.is_none() => continue,
            Err(e) => return Err(e),
        };
        let mut seen = std::collections::BTreeSet::new();
        for p in probes.iter().filter(|p| matches(&p.provider, &p.name)) {
            listed += 1;
            if args.json {
                out.json(&with_schema(
                    TOOL,
                    json!({"type": "usdt", "binary": path, "provider": p.provider, "name": p.name,
                           "address": p.address, "semaphore": p.semaphore, "args": p.args}),
                ));
            } else if args.verbose {
                // One line per probe site: a probe used in several places has several.
                out.line(&format!(
                    "{} {}:{}  location {:#x}  semaphore {:#x}  {} args: {}",
                    path.display(),
                    p.provider,
                    p.name,
                    p.address,
                    p.semaphore,
                    p.args.len(),
                    p.args.join(" ")
                ));
            } else if seen.insert((&p.provider, &p.name)) {
                out.line(&format!("{} {}:{}", path.display(), p.provider, p.name));
            }
        }
        if out.closed() {
            break;
        }
    }
    if listed == 0 && args.binary.is_none() {
        // `-p PID`: a process without probes is an answer, not a mistake. BCC's tplist prints
        // nothing and exits 0, and scripts rely on that; the note goes to stderr only.
        errln!(
            "{TOOL}: PID {} has no USDT probe matching '{pattern}' (its binary and {} mapped \
             libraries searched)",
            args.pid.unwrap_or_default(),
            files.len().saturating_sub(1)
        );
    } else if listed == 0 {
        let shown: Vec<String> = files.iter().map(|f| f.0.display().to_string()).collect();
        usage_bail!(
            "no USDT probe matches '{pattern}' in {} (it has no SDT notes, or none by that name)",
            shown.join(", ")
        );
    }
    Ok(())
}

/// The files a process has mapped, its binary first, each once: (the path as the process
/// sees it, the path to read it by — through the process's root, so a container's files are
/// the ones it sees).
fn mapped_files(pid: u32) -> Result<Vec<(PathBuf, PathBuf)>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("cannot read /proc/{pid}/maps (is PID {pid} running?)"))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let mut files: Vec<(PathBuf, PathBuf)> = Vec::new();
    for path in exe.into_iter().chain(maps.lines().filter_map(|line| {
        // address perms offset dev inode path: the path may hold spaces.
        let path = line.splitn(6, char::is_whitespace).nth(5)?.trim_start();
        path.starts_with('/').then(|| PathBuf::from(path))
    })) {
        if files.iter().any(|(shown, _)| *shown == path) {
            continue;
        }
        let via_root =
            Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(&path));
        let read = if via_root.is_file() {
            via_root
        } else {
            path.clone()
        };
        // Only ELF files can hold SDT notes: a process also maps locale archives and caches.
        if is_elf(&read) {
            files.push((path, read));
        }
    }
    Ok(files)
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// An ELF executable named `name` (no `/`) on $PATH (scripts, such as pyenv's shims, are
/// passed over: they have no probes).
fn in_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return None;
    }
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| is_elf(p))
}

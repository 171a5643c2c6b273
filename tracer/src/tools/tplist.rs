//! tplist: what the probe tools can attach to here: tracepoints (with `-v` their record
//! fields, as argdist and trace name them), kernel functions (`-k`, when this kernel lets us
//! attach to them), and a binary's or library's functions (`-b`).

use anyhow::Result;
use clap::Args;
use serde_json::json;

use crate::{
    attach,
    output::{Out, with_schema},
    probe_spec::{self, ElfSymbols},
    session, tracefs,
};

const TOOL: &str = "tplist";

/// List tracepoints and their fields, kernel functions, or a binary's functions.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    tplist 'sched:*'                       scheduler tracepoints\n  \
    tplist -v t:sched:sched_switch         its fields (names argdist/trace take)\n  \
    tplist -k 'tcp_*'                      kernel functions (k:/kr: probes)\n  \
    tplist -l /usr/sbin/nginx 'ngx_http*'  functions a uprobe can attach to\n  \
    tplist -l libc 'mall*'                 a library, found like the dynamic loader does")]
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
    /// Resolve a library name through this process's maps.
    #[arg(short = 'p', long = "pid", value_name = "PID", requires = "binary")]
    pub pid: Option<u32>,
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

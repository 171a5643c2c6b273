//! BCC's command lines on tracer's tools. Invoked by a BCC tool's name (the `profile` symlink,
//! `tracer bcc profile ...`, or the BCC-only names such as `softirqs`), a command line is parsed
//! with that BCC tool's own options and meanings (`profile 5` samples for five seconds;
//! `funccount -i 1 'vfs_*'`), then rewritten into the equivalent `tracer <tool>` command line,
//! which the ordinary parser and tool run. So a BCC option means what BCC says, tracer's own
//! vocabulary stays one language (docs/cli.md), and the output is tracer's.
//!
//! `tracer bcc --print TOOL ARGS...` prints the translated command instead of running it.
//! What each tool accepts, and what it refuses and why: docs/bcc-compat.md.

use std::ffi::OsString;

use anyhow::Result;
use clap::{Parser, error::ErrorKind};

/// Tools that take a BCC command line when invoked by this name.
pub const BCC_TOOLS: &[&str] = &[
    "softirqs",
    "hardirqs",
    "tplist",
    "runqlat",
    "cpudist",
    "profile",
    "offcputime",
    "funccount",
    "funclatency",
    "stackcount",
    "trace",
    "argdist",
];

/// BCC names that are not also tracer tools: `tracer softirqs` takes BCC's grammar too.
pub const BCC_ONLY: &[&str] = &["softirqs"];

/// softirq-top's longest interval: BCC's softirqs without one reports once, at Ctrl-C, where
/// softirq-top would redraw every second.
const ONCE: &str = "86400";

/// The `tracer ...` argv for BCC tool `tool` invoked with `args` (not including its name), or
/// a one-line usage error naming BCC's form.
pub fn translate(tool: &str, args: &[OsString]) -> Result<Vec<String>> {
    let argv = std::iter::once(OsString::from(tool)).chain(args.iter().cloned());
    let mut out = vec!["tracer".to_string()];
    match tool {
        "softirqs" | "hardirqs" => parse::<Irqs>(tool, argv)?.translate(tool, &mut out),
        "tplist" => parse::<Tplist>(tool, argv)?.translate(&mut out),
        "runqlat" => parse::<Runqlat>(tool, argv)?.translate(&mut out)?,
        "cpudist" => parse::<Cpudist>(tool, argv)?.translate(&mut out),
        "profile" => parse::<Profile>(tool, argv)?.translate(&mut out)?,
        "offcputime" => parse::<Offcputime>(tool, argv)?.translate(&mut out)?,
        "funccount" => parse::<Funccount>(tool, argv)?.translate(&mut out)?,
        "funclatency" => parse::<Funclatency>(tool, argv)?.translate(&mut out)?,
        "stackcount" => parse::<Stackcount>(tool, argv)?.translate(&mut out)?,
        "trace" => parse::<Trace>(tool, argv)?.translate(&mut out)?,
        "argdist" => parse::<Argdist>(tool, argv)?.translate(&mut out)?,
        _ => usage_bail!(
            "{tool} has no BCC front end (BCC tools here: {})",
            BCC_TOOLS.join(", ")
        ),
    }
    Ok(out)
}

/// Parses BCC's command line for `tool`; `-h` prints BCC-style help and exits.
fn parse<T: Parser>(tool: &str, argv: impl Iterator<Item = OsString>) -> Result<T> {
    let name: &'static str = BCC_TOOLS
        .iter()
        .find(|t| **t == tool)
        .copied()
        .unwrap_or("bcc");
    let command = T::command().name(name);
    let parsed = command
        .clone()
        .try_get_matches_from(argv)
        .and_then(|m| T::from_arg_matches(&m));
    parsed.map_err(|err| {
        if matches!(
            err.kind(),
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
        ) {
            err.exit();
        }
        let usage = command.clone().render_usage().to_string();
        let usage = usage.trim_start_matches("Usage: ").trim();
        let usage = usage.replace("softirqs|hardirqs", tool);
        let first = err
            .render()
            .to_string()
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("invalid arguments")
            .trim()
            .trim_start_matches("error: ")
            .to_string();
        usage_err!("{first} (BCC {tool}'s form: {usage})")
    })
}

/// `refuse!(tool, "option", "why")`: a BCC option tracer cannot honour, in one line.
macro_rules! refuse {
    ($tool:expr, $option:expr, $why:expr) => {
        usage_bail!("{} {}: not supported here ({})", $tool, $option, $why)
    };
}

fn push(out: &mut Vec<String>, items: &[&str]) {
    out.extend(items.iter().map(|s| s.to_string()));
}

fn push_opt(out: &mut Vec<String>, flag: &str, value: &Option<impl ToString>) {
    if let Some(v) = value {
        out.push(flag.to_string());
        out.push(v.to_string());
    }
}

fn push_if(out: &mut Vec<String>, on: bool, flag: &str) {
    if on {
        out.push(flag.to_string());
    }
}

/// `[interval] [count]`; none means report once at the end, as BCC does (and as tracer's
/// histogram tools do without an interval).
fn push_interval(out: &mut Vec<String>, interval: &Option<String>, count: &Option<String>) {
    push_opt_positional(out, interval);
    push_opt_positional(out, count);
}

fn push_opt_positional(out: &mut Vec<String>, value: &Option<String>) {
    if let Some(v) = value {
        out.push(v.clone());
    }
}

/// The end of a probe tool's line (funccount, funclatency, stackcount): `-d` when there is no
/// interval, the probe, then `[INTERVAL [COUNT]]` (see `push_interval_duration`).
fn push_probe_and_timing(
    tool: &str,
    out: &mut Vec<String>,
    (pattern, regex): (&str, bool),
    interval: &Option<String>,
    duration: &Option<String>,
) -> Result<()> {
    if interval.is_none() {
        push_opt(out, "-d", duration);
    }
    out.push(probe(tool, pattern, regex)?);
    push_interval_duration(tool, out, interval, duration)
}

/// BCC's `-i SECS -d SECS` in funccount, funclatency and stackcount: it prints after each
/// interval and stops once the intervals add up to the duration, so the duration is a
/// number of intervals — tracer's COUNT, exact however late the timer fires — not a clock.
fn push_interval_duration(
    tool: &str,
    out: &mut Vec<String>,
    interval: &Option<String>,
    duration: &Option<String>,
) -> Result<()> {
    match (interval, duration) {
        (Some(i), Some(d)) => {
            let (Ok(secs_i), Ok(secs_d)) = (i.parse::<f64>(), d.parse::<f64>()) else {
                usage_bail!("{tool} -i {i} -d {d}: both must be numbers of seconds");
            };
            if secs_i <= 0.0 || secs_d <= 0.0 {
                usage_bail!("{tool} -i {i} -d {d}: both must be positive");
            }
            out.push(i.clone());
            out.push(((secs_d / secs_i).ceil() as u64).max(1).to_string());
        }
        (Some(i), None) => out.push(i.clone()),
        (None, _) => {}
    }
    Ok(())
}

/// BCC's `-p` takes a comma list in some tools; tracer's takes one process.
fn one_pid(tool: &str, pid: &Option<String>) -> Result<Option<String>> {
    match pid {
        Some(p) if p.contains(',') => {
            refuse!(tool, format!("-p {p}"), "tracer's -p takes one process")
        }
        other => Ok(other.clone()),
    }
}

/// A BCC probe pattern as tracer writes it: `func`, `p::func` → `k:func`; `r::func` →
/// `kr:func`; `lib:func`, `p:lib:func` → `u:lib:func`; `r:lib:func` → `ur:lib:func`;
/// `t:cat:event` as is; `u:lib:probe` (USDT in BCC) → `usdt:lib:probe`. With `-r` the pattern
/// is a regular expression, accepted where it is a glob in disguise (`^vfs_.*` → `vfs_*`).
pub fn probe(tool: &str, pattern: &str, regex: bool) -> Result<String> {
    let parts: Vec<&str> = pattern.splitn(3, ':').collect();
    let (kind, lib, name) = match parts.as_slice() {
        [name] => ("p", "", *name),
        [lib, name] => ("p", *lib, *name),
        [kind, lib, name] => (*kind, *lib, *name),
        _ => unreachable!("splitn yields 1 to 3 parts"),
    };
    let name = if regex {
        regex_to_glob(tool, name)?
    } else {
        name.to_string()
    };
    if name.is_empty() {
        usage_bail!(
            "{tool}: '{pattern}' names no function (BCC's forms: func, p::func, r::func, \
             lib:func, p:lib:func, t:category:event, u:lib:usdt_probe)"
        );
    }
    Ok(match (kind, lib) {
        ("t", cat) => format!("t:{cat}:{name}"),
        ("u", lib) => format!("usdt:{lib}:{name}"),
        ("p" | "", "") => format!("k:{name}"),
        ("r", "") => format!("kr:{name}"),
        ("p" | "", lib) => format!("u:{lib}:{name}"),
        ("r", lib) => format!("ur:{lib}:{name}"),
        (other, _) => usage_bail!(
            "{tool}: '{pattern}': unknown probe type '{other}:' (BCC's are p:, r:, t:, u:)"
        ),
    })
}

/// `^vfs_.*$` → `vfs_*`: anchors dropped, `.*` → `*`, `.` → `?`; anything else a regex can
/// say and a glob cannot is refused.
fn regex_to_glob(tool: &str, regex: &str) -> Result<String> {
    let body = regex.strip_prefix('^').unwrap_or(regex);
    let body = body.strip_suffix('$').unwrap_or(body);
    let mut glob = String::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' if chars.peek() == Some(&'*') => {
                chars.next();
                glob.push('*');
            }
            '.' => glob.push('?'),
            c if c.is_ascii_alphanumeric() || c == '_' => glob.push(c),
            '\\' if chars.peek().is_some_and(|n| *n == '.' || *n == '_') => {
                glob.push(chars.next().unwrap_or('_'));
            }
            _ => usage_bail!(
                "{tool} -r '{regex}': only regular expressions that are globs in disguise are \
                 supported (^prefix.*, .*suffix$, a.b); write it as a glob instead"
            ),
        }
    }
    Ok(glob)
}

// ---- the tools ------------------------------------------------------------------------------

// BCC's softirqs and hardirqs take the same options; `parse` names the command after the one
// invoked.
/// Time in softirqs per vector (softirqs, on softirq-top) or in hard IRQ handlers (hardirqs).
#[derive(Parser, Debug)]
#[command(
    name = "softirqs",
    disable_version_flag = true,
    override_usage = "softirqs|hardirqs [-h] [-T] [-N] [-C] [-d] [-c CPU] [interval] [count]"
)]
struct Irqs {
    /// JSON lines, as tracer prints them (not a BCC option; accepted in both grammars).
    #[arg(long = "json")]
    json: bool,
    /// Include a timestamp on output.
    #[arg(short = 'T')]
    timestamp: bool,
    /// Output in nanoseconds.
    #[arg(short = 'N')]
    nanoseconds: bool,
    /// Show event counts (tracer always shows counts and time).
    #[arg(short = 'C')]
    events: bool,
    /// Show distributions as histograms.
    #[arg(short = 'd')]
    dist: bool,
    /// Trace this CPU only.
    #[arg(short = 'c', value_name = "CPU")]
    cpu: Option<String>,
    interval: Option<String>,
    count: Option<String>,
}

impl Irqs {
    /// `softirqs` becomes `softirq-top -b` (reporting once at Ctrl-C when no interval is
    /// given, where softirq-top would redraw every second); `hardirqs` stays hardirqs.
    fn translate(&self, tool: &str, out: &mut Vec<String>) {
        let softirqs = tool == "softirqs";
        push(
            out,
            if softirqs {
                &["softirq-top", "-b"]
            } else {
                &["hardirqs"]
            },
        );
        push_if(out, self.json, "--json");
        push_if(out, self.timestamp, "-T");
        push_if(out, self.nanoseconds, "-N");
        push_if(out, self.dist, "-D");
        push_opt(out, "-C", &self.cpu);
        let _ = self.events;
        match (&self.interval, softirqs) {
            (None, true) => out.push(ONCE.to_string()),
            (interval, _) => push_opt_positional(out, interval),
        }
        push_opt_positional(out, &self.count);
    }
}

/// Kernel tracepoints or USDT probes (BCC's tplist): `-p`/`-l` select USDT probes, which
/// tracer's tplist lists with `--usdt` (its own `-l` lists a binary's functions).
#[derive(Parser, Debug)]
#[command(
    name = "tplist",
    disable_version_flag = true,
    override_usage = "tplist [-h] [-p PID] [-l LIB] [-v] [filter]"
)]
struct Tplist {
    /// JSON lines, as tracer prints them (not a BCC option; accepted in both grammars).
    #[arg(long = "json")]
    json: bool,
    /// The USDT probes of every file this process has mapped.
    #[arg(short = 'p', value_name = "PID")]
    pid: Option<String>,
    /// The USDT probes of this library or executable.
    #[arg(short = 'l', value_name = "LIB")]
    lib: Option<String>,
    /// Tracepoint fields, probe locations and arguments (BCC's -vv shows the same here).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
    /// A wildcard on category:event or provider:probe.
    filter: Option<String>,
}

impl Tplist {
    fn translate(&self, out: &mut Vec<String>) {
        push(out, &["tplist"]);
        push_if(out, self.json, "--json");
        push_if(out, self.pid.is_some() || self.lib.is_some(), "--usdt");
        push_opt(out, "-p", &self.pid);
        push_opt(out, "-l", &self.lib);
        push_if(out, self.verbose > 0, "-v");
        push_opt_positional(out, &self.filter);
    }
}

/// Run queue latency (BCC's runqlat).
#[derive(Parser, Debug)]
#[command(
    name = "runqlat",
    disable_version_flag = true,
    override_usage = "runqlat [-h] [-T] [-m] [-P] [--pidnss] [-L] [-p PID] [interval] [count]"
)]
struct Runqlat {
    /// JSON lines, as tracer prints them (not a BCC option; accepted in both grammars).
    #[arg(long = "json")]
    json: bool,
    #[arg(short = 'T')]
    timestamp: bool,
    #[arg(short = 'm')]
    milliseconds: bool,
    /// Print a histogram per process ID.
    #[arg(short = 'P')]
    pids: bool,
    /// Print a histogram per PID namespace.
    #[arg(long = "pidnss")]
    pidnss: bool,
    /// Print a histogram per thread ID.
    #[arg(short = 'L')]
    tids: bool,
    #[arg(short = 'p', value_name = "PID")]
    pid: Option<String>,
    interval: Option<String>,
    count: Option<String>,
}

impl Runqlat {
    fn translate(&self, out: &mut Vec<String>) -> Result<()> {
        if self.pidnss {
            refuse!(
                "runqlat",
                "--pidnss",
                "no per-PID-namespace histograms; -P gives one per process"
            );
        }
        push(out, &["runqlat"]);
        push_if(out, self.json, "--json");
        push_if(out, self.timestamp, "-T");
        push_if(out, self.milliseconds, "-m");
        push_if(out, self.pids, "-P");
        push_if(out, self.tids, "-L");
        push_opt(out, "-p", &self.pid);
        push_interval(out, &self.interval, &self.count);
        Ok(())
    }
}

/// On- and off-CPU time slices (BCC's cpudist).
#[derive(Parser, Debug)]
#[command(
    name = "cpudist",
    disable_version_flag = true,
    override_usage = "cpudist [-h] [-O] [-T] [-m] [-P] [-L] [-p PID] [-I] [-e] [interval] [count]"
)]
struct Cpudist {
    /// JSON lines, as tracer prints them (not a BCC option; accepted in both grammars).
    #[arg(long = "json")]
    json: bool,
    /// Measure off-CPU time.
    #[arg(short = 'O')]
    offcpu: bool,
    #[arg(short = 'T')]
    timestamp: bool,
    #[arg(short = 'm')]
    milliseconds: bool,
    #[arg(short = 'P')]
    pids: bool,
    #[arg(short = 'L')]
    tids: bool,
    #[arg(short = 'p', value_name = "PID")]
    pid: Option<String>,
    /// Include idle tasks.
    #[arg(short = 'I')]
    idle: bool,
    /// Show the summary line (tracer always prints count, p50 and p99 under each histogram).
    #[arg(short = 'e')]
    summary: bool,
    interval: Option<String>,
    count: Option<String>,
}

impl Cpudist {
    fn translate(&self, out: &mut Vec<String>) {
        push(out, &["cpudist"]);
        push_if(out, self.json, "--json");
        push_if(out, self.offcpu, "-O");
        push_if(out, self.timestamp, "-T");
        push_if(out, self.milliseconds, "-m");
        push_if(out, self.pids, "-P");
        push_if(out, self.tids, "-L");
        push_opt(out, "-p", &self.pid);
        push_if(out, self.idle, "-I");
        let _ = self.summary;
        push_interval(out, &self.interval, &self.count);
    }
}

/// Sampled on-CPU stacks (BCC's profile).
#[derive(Parser, Debug)]
#[command(
    name = "profile",
    disable_version_flag = true,
    override_usage = "profile [-adfhIKU] [-p PID | -L TID] [-F FREQUENCY | -c COUNT] [-C CPU] [--stack-storage-size COUNT] [duration]"
)]
struct Profile {
    /// JSON lines, as tracer prints them (not a BCC option; accepted in both grammars).
    #[arg(long = "json")]
    json: bool,
    /// Profile these process IDs only.
    #[arg(short = 'p', value_name = "PID", conflicts_with = "tid")]
    pid: Option<String>,
    /// Profile this thread ID only.
    #[arg(short = 'L', value_name = "TID")]
    tid: Option<String>,
    /// User stacks only.
    #[arg(short = 'U', conflicts_with = "kernel")]
    user: bool,
    /// Kernel stacks only.
    #[arg(short = 'K')]
    kernel: bool,
    /// Sample frequency, Hz.
    #[arg(short = 'F', value_name = "FREQUENCY", conflicts_with = "period")]
    frequency: Option<u64>,
    /// Sample period: one in this many cpu-clock nanoseconds.
    #[arg(short = 'c', value_name = "COUNT")]
    period: Option<u64>,
    /// A delimiter between kernel and user stacks.
    #[arg(short = 'd')]
    delimited: bool,
    /// Annotate kernel frames with _[k].
    #[arg(short = 'a')]
    annotate: bool,
    /// Include CPU idle stacks.
    #[arg(short = 'I')]
    idle: bool,
    /// Folded output.
    #[arg(short = 'f')]
    folded: bool,
    #[arg(long = "stack-storage-size", value_name = "COUNT")]
    stack_storage_size: Option<u32>,
    /// Only this CPU.
    #[arg(short = 'C', value_name = "CPU")]
    cpu: Option<String>,
    #[arg(long = "cgroupmap", value_name = "CGROUPMAP")]
    cgroupmap: Option<String>,
    #[arg(long = "mntnsmap", value_name = "MNTNSMAP")]
    mntnsmap: Option<String>,
    /// Duration, seconds.
    duration: Option<String>,
}

impl Profile {
    fn translate(&self, out: &mut Vec<String>) -> Result<()> {
        const TOOL: &str = "profile";
        if self.cgroupmap.is_some() || self.mntnsmap.is_some() {
            refuse!(
                TOOL,
                "--cgroupmap/--mntnsmap",
                "pinned BPF filter maps (of cgroup ids or mount namespaces); --cgroup PATH filters by a cgroup v2 directory"
            );
        }
        if self.annotate {
            refuse!(TOOL, "-a", "kernel frames are not annotated with _[k]");
        }
        push(out, &[TOOL]);
        push_if(out, self.json, "--json");
        push_opt(out, "-p", &one_pid(TOOL, &self.pid)?);
        push_opt(out, "-t", &self.tid);
        push_if(out, self.user, "-U");
        push_if(out, self.kernel, "-K");
        if let Some(period) = self.period {
            // BCC samples the cpu-clock software event, whose period is nanoseconds of CPU
            // time: one in N is exactly 1e9/N Hz.
            if period == 0 {
                usage_bail!("profile -c 0: the sample period must be at least 1");
            }
            out.push("-F".into());
            out.push((1_000_000_000 / period).max(1).to_string());
        }
        push_opt(out, "-F", &self.frequency);
        // BCC leaves the idle tasks out unless -I.
        if !self.idle {
            out.push("--no-idle".into());
        }
        push_if(out, self.folded, "-f");
        push_if(out, self.delimited, "--delimited");
        push_opt(out, "--stack-storage-size", &self.stack_storage_size);
        push_opt(out, "-C", &self.cpu);
        push_opt(out, "-d", &self.duration);
        Ok(())
    }
}

/// Off-CPU time by stack (BCC's offcputime).
#[derive(Parser, Debug)]
#[command(
    name = "offcputime",
    disable_version_flag = true,
    override_usage = "offcputime [-h] [-p PID | -t TID | -u | -k] [-U | -K] [-d] [-f] [--stack-storage-size SIZE] [-m MIN_BLOCK_TIME] [-M MAX_BLOCK_TIME] [--state STATE] [duration]"
)]
struct Offcputime {
    /// JSON lines, as tracer prints them (not a BCC option; accepted in both grammars).
    #[arg(long = "json")]
    json: bool,
    #[arg(short = 'p', value_name = "PID")]
    pid: Option<String>,
    #[arg(short = 't', value_name = "TID")]
    tid: Option<String>,
    /// User threads only.
    #[arg(short = 'u', conflicts_with = "kernel_threads")]
    user_threads: bool,
    /// Kernel threads only.
    #[arg(short = 'k')]
    kernel_threads: bool,
    #[arg(short = 'U', conflicts_with = "kernel")]
    user: bool,
    #[arg(short = 'K')]
    kernel: bool,
    /// A delimiter between kernel and user stacks.
    #[arg(short = 'd')]
    delimited: bool,
    #[arg(short = 'f')]
    folded: bool,
    #[arg(long = "stack-storage-size", value_name = "STACK_STORAGE_SIZE")]
    stack_storage_size: Option<u32>,
    /// Minimum block time, microseconds.
    #[arg(short = 'm', value_name = "MIN_BLOCK_TIME")]
    min_block: Option<u64>,
    /// Maximum block time, microseconds.
    #[arg(short = 'M', value_name = "MAX_BLOCK_TIME")]
    max_block: Option<u64>,
    #[arg(long = "state", value_name = "STATE")]
    state: Option<String>,
    duration: Option<String>,
}

impl Offcputime {
    fn translate(&self, out: &mut Vec<String>) -> Result<()> {
        const TOOL: &str = "offcputime";
        if self.state.is_some() {
            refuse!(
                TOOL,
                "--state",
                "blocked time is not split by task state at switch-out"
            );
        }
        push(out, &[TOOL]);
        push_if(out, self.json, "--json");
        push_opt(out, "-p", &one_pid(TOOL, &self.pid)?);
        push_opt(out, "-t", &self.tid);
        push_if(out, self.user_threads, "--user-threads-only");
        push_if(out, self.kernel_threads, "--kthreads");
        push_if(out, self.user, "-U");
        push_if(out, self.kernel, "-K");
        push_if(out, self.folded, "-f");
        push_if(out, self.delimited, "--delimited");
        push_opt(out, "--stack-storage-size", &self.stack_storage_size);
        push_opt(out, "--min-block-time", &self.min_block);
        push_opt(out, "--max-block-time", &self.max_block);
        push_opt(out, "-d", &self.duration);
        Ok(())
    }
}

/// Function call counts (BCC's funccount).
#[derive(Parser, Debug)]
#[command(
    name = "funccount",
    disable_version_flag = true,
    override_usage = "funccount [-h] [-p PID] [-i INTERVAL] [-d DURATION] [-T] [-r] [-c CPU] [-D] pattern"
)]
struct Funccount {
    /// JSON lines, as tracer prints them (not a BCC option; accepted in both grammars).
    #[arg(long = "json")]
    json: bool,
    #[arg(short = 'p', value_name = "PID")]
    pid: Option<String>,
    /// Summary interval, seconds.
    #[arg(short = 'i', value_name = "INTERVAL")]
    interval: Option<String>,
    /// Total duration of trace, seconds.
    #[arg(short = 'd', value_name = "DURATION")]
    duration: Option<String>,
    #[arg(short = 'T')]
    timestamp: bool,
    /// Use regular expressions.
    #[arg(short = 'r')]
    regexp: bool,
    /// Trace this CPU only.
    #[arg(short = 'c', value_name = "CPU")]
    cpu: Option<String>,
    /// Print the BPF program (tracer's programs are prebuilt; ignored).
    #[arg(short = 'D')]
    debug: bool,
    pattern: String,
}

impl Funccount {
    fn translate(&self, out: &mut Vec<String>) -> Result<()> {
        const TOOL: &str = "funccount";
        if self.cpu.is_some() {
            refuse!(TOOL, "-c", "counts are not filtered per CPU");
        }
        let _ = self.debug;
        push(out, &[TOOL]);
        push_if(out, self.json, "--json");
        push_opt(out, "-p", &one_pid(TOOL, &self.pid)?);
        push_if(out, self.timestamp, "-T");
        push_probe_and_timing(
            TOOL,
            out,
            (&self.pattern, self.regexp),
            &self.interval,
            &self.duration,
        )
    }
}

/// Function latency histograms (BCC's funclatency).
#[derive(Parser, Debug)]
#[command(
    name = "funclatency",
    disable_version_flag = true,
    override_usage = "funclatency [-h] [-p PID] [-i INTERVAL] [-d DURATION] [-T] [-u] [-m] [-F] [-r] [-v] [-l LEVEL] pattern"
)]
struct Funclatency {
    /// JSON lines, as tracer prints them (not a BCC option; accepted in both grammars).
    #[arg(long = "json")]
    json: bool,
    #[arg(short = 'p', value_name = "PID")]
    pid: Option<String>,
    #[arg(short = 'i', value_name = "INTERVAL")]
    interval: Option<String>,
    #[arg(short = 'd', value_name = "DURATION")]
    duration: Option<String>,
    #[arg(short = 'T')]
    timestamp: bool,
    #[arg(short = 'u', conflicts_with = "milliseconds")]
    microseconds: bool,
    #[arg(short = 'm')]
    milliseconds: bool,
    /// One histogram per function.
    #[arg(short = 'F')]
    function: bool,
    #[arg(short = 'r')]
    regexp: bool,
    /// Print the BPF program (tracer's programs are prebuilt; ignored).
    #[arg(short = 'v')]
    verbose: bool,
    /// Nesting depth to track.
    #[arg(short = 'l', value_name = "LEVEL")]
    level: Option<u32>,
    pattern: String,
}

impl Funclatency {
    fn translate(&self, out: &mut Vec<String>) -> Result<()> {
        const TOOL: &str = "funclatency";
        if self.level.is_some() {
            refuse!(
                TOOL,
                "-l",
                "recursion is not tracked; the innermost call is timed"
            );
        }
        let _ = self.verbose;
        push(out, &[TOOL]);
        push_if(out, self.json, "--json");
        push_opt(out, "-p", &one_pid(TOOL, &self.pid)?);
        push_if(out, self.timestamp, "-T");
        push_if(out, self.microseconds, "-u");
        push_if(out, self.milliseconds, "-m");
        push_if(out, self.function, "--function");
        push_probe_and_timing(
            TOOL,
            out,
            (&self.pattern, self.regexp),
            &self.interval,
            &self.duration,
        )
    }
}

/// Stack counts for an event (BCC's stackcount).
#[derive(Parser, Debug)]
#[command(
    name = "stackcount",
    disable_version_flag = true,
    override_usage = "stackcount [-h] [-p PID] [-c CPU] [-i INTERVAL] [-D DURATION] [-T] [-r] [-s] [-P] [-K] [-U] [-v] [-d] [-f] [--debug] pattern"
)]
struct Stackcount {
    /// JSON lines, as tracer prints them (not a BCC option; accepted in both grammars).
    #[arg(long = "json")]
    json: bool,
    #[arg(short = 'p', value_name = "PID")]
    pid: Option<String>,
    #[arg(short = 'c', value_name = "CPU")]
    cpu: Option<String>,
    #[arg(short = 'i', value_name = "INTERVAL")]
    interval: Option<String>,
    /// Total duration of trace, seconds.
    #[arg(short = 'D', value_name = "DURATION")]
    duration: Option<String>,
    #[arg(short = 'T')]
    timestamp: bool,
    #[arg(short = 'r')]
    regexp: bool,
    /// Show address offsets.
    #[arg(short = 's')]
    offsets: bool,
    /// Per process.
    #[arg(short = 'P')]
    per_pid: bool,
    #[arg(short = 'K', conflicts_with = "user")]
    kernel: bool,
    #[arg(short = 'U')]
    user: bool,
    /// Show raw addresses.
    #[arg(short = 'v')]
    addresses: bool,
    /// A delimiter between kernel and user stacks.
    #[arg(short = 'd')]
    delimited: bool,
    #[arg(short = 'f')]
    folded: bool,
    #[arg(long = "debug")]
    debug: bool,
    pattern: String,
}

impl Stackcount {
    fn translate(&self, out: &mut Vec<String>) -> Result<()> {
        const TOOL: &str = "stackcount";
        if self.cpu.is_some() {
            refuse!(TOOL, "-c", "stacks are not filtered per CPU");
        }
        if self.offsets || self.addresses {
            refuse!(
                TOOL,
                if self.offsets { "-s" } else { "-v" },
                "frames are printed as symbols, without offsets or raw addresses"
            );
        }
        let _ = self.debug;
        push(out, &[TOOL]);
        push_if(out, self.json, "--json");
        push_opt(out, "-p", &one_pid(TOOL, &self.pid)?);
        push_if(out, self.timestamp, "-T");
        push_if(out, self.per_pid, "-P");
        match (self.kernel, self.user) {
            (true, _) => out.push("-K".into()),
            (_, true) => out.push("-U".into()),
            // BCC shows both halves unless told otherwise.
            _ => out.push("--both-stacks".into()),
        }
        push_if(out, self.folded, "-f");
        push_if(out, self.delimited, "--delimited");
        push_probe_and_timing(
            TOOL,
            out,
            (&self.pattern, self.regexp),
            &self.interval,
            &self.duration,
        )
    }
}

// ---- trace and argdist: BCC's probe expressions ---------------------------------------------

/// Print a line per probe hit (BCC's trace).
#[derive(Parser, Debug)]
#[command(
    name = "trace",
    disable_version_flag = true,
    override_usage = "trace [-h] [-b BUFFER_PAGES] [-p PID] [-L TID] [-v] [-Z STRING_SIZE] [-S] [-M MAX_EVENTS] [-T] probe [probe ...]"
)]
struct Trace {
    /// JSON lines, as tracer prints them (not a BCC option; accepted in both grammars).
    #[arg(long = "json")]
    json: bool,
    /// Perf buffer pages (tracer's ring buffer is 1 MiB; ignored).
    #[arg(short = 'b', value_name = "BUFFER_PAGES")]
    buffer_pages: Option<u32>,
    #[arg(short = 'p', value_name = "PID")]
    pid: Option<String>,
    #[arg(short = 'L', long = "tid", value_name = "TID")]
    tid: Option<String>,
    #[arg(long = "uid", value_name = "UID")]
    uid: Option<String>,
    /// Print the BPF program (tracer's programs are prebuilt; ignored).
    #[arg(short = 'v')]
    verbose: bool,
    /// String size (tracer reads up to 127 bytes).
    #[arg(
        short = 'Z',
        short_alias = 'z',
        long = "string-size",
        value_name = "STRING_SIZE"
    )]
    string_size: Option<u32>,
    #[arg(short = 's', long = "sym_file_list", value_name = "SYM_FILE_LIST")]
    sym_files: Option<String>,
    /// Also trace trace's own process.
    #[arg(short = 'S', long = "include-self")]
    include_self: bool,
    #[arg(short = 'M', long = "max-events", value_name = "MAX_EVENTS")]
    max_events: Option<String>,
    /// Times relative to the start.
    #[arg(short = 't', long = "timestamp")]
    offsets: bool,
    /// UNIX timestamps (with -t).
    #[arg(short = 'u', long = "unix-timestamp")]
    unix: bool,
    /// The time column (HH:MM:SS).
    #[arg(short = 'T', long = "time")]
    time: bool,
    #[arg(short = 'C', long = "print_cpu")]
    cpu: bool,
    #[arg(short = 'c', long = "cgroup-path", value_name = "CGROUP_PATH")]
    cgroup: Option<String>,
    #[arg(short = 'n', long = "name", value_name = "NAME")]
    name: Option<String>,
    #[arg(short = 'f', long = "msg-filter", value_name = "MSG_FILTER")]
    msg_filter: Option<String>,
    #[arg(short = 'B', long = "bin_cmp")]
    bin_cmp: bool,
    #[arg(short = 'K', long = "kernel-stack")]
    kernel_stack: bool,
    #[arg(short = 'U', long = "user-stack")]
    user_stack: bool,
    #[arg(short = 'a', long = "address")]
    address: bool,
    #[arg(short = 'I', long = "include", value_name = "HEADER")]
    include: Vec<String>,
    #[arg(short = 'A', long = "aggregate")]
    aggregate: bool,
    #[arg(required = true, value_name = "probe")]
    probes: Vec<String>,
}

/// BCC's trace probe: `[{p,r}]:[library]:function[(signature)] [(predicate)] ["format"[, arguments]]`
/// or `{t:category:event,u:library:probe} [(predicate)] ["format"[, arguments]]`.
const TRACE_FORM: &str = "[p|r]:[lib]:func[(signature)] [(predicate)] [\"format\"[, args]], t:cat:event ..., u:lib:usdt ...";

impl Trace {
    fn translate(&self, out: &mut Vec<String>) -> Result<()> {
        const TOOL: &str = "trace";
        let refused = [
            (
                self.uid.is_some(),
                "--uid",
                "no user-id filter; -p PID or -L TID",
            ),
            (
                self.sym_files.is_some(),
                "-s",
                "stacks are not printed per event",
            ),
            (
                self.offsets || self.unix,
                "-t/-u",
                "no offset or UNIX time column; -T prints HH:MM:SS, --json carries UNIX time (ts)",
            ),
            (
                self.cpu,
                "-C",
                "no CPU column; --json carries each event's cpu",
            ),
            (
                self.name.is_some() || self.msg_filter.is_some(),
                "-n/-f",
                "no output filters by name or message; pipe through grep",
            ),
            (self.bin_cmp, "-B", "binary STRCMP is not supported"),
            (
                self.kernel_stack || self.user_stack || self.address,
                "-K/-U",
                "stacks are not printed per event; stackcount counts them per probe",
            ),
            (
                !self.include.is_empty(),
                "-I",
                "no C is compiled here: types come from the signature and tracepoint formats",
            ),
            (
                self.aggregate,
                "-A",
                "no aggregation; funccount counts hits per probe",
            ),
        ];
        if let Some((_, option, why)) = refused.iter().find(|(on, _, _)| *on) {
            refuse!(TOOL, option, why);
        }
        let _ = (self.buffer_pages, self.verbose, self.string_size);
        let [probe_text] = self.probes.as_slice() else {
            refuse!(
                TOOL,
                format!("with {} probes", self.probes.len()),
                "one probe per trace here: run one trace per probe"
            );
        };
        let probe = TraceProbe::parse(probe_text)?;
        push(out, &[TOOL]);
        push_if(out, self.json, "--json");
        push_opt(out, "-p", &self.pid);
        push_opt(out, "-t", &self.tid);
        // BCC's -c is a cgroup v2 path whose subtree it keeps (bpf_current_task_under_cgroup):
        // tracer's --cgroup.
        push_opt(out, "--cgroup", &self.cgroup);
        push_if(out, self.time, "-T");
        push_if(out, self.include_self, "--include-self");
        push_opt(out, "--max-events", &self.max_events);
        if let Some(predicate) = &probe.predicate {
            out.push("--filter".into());
            out.push(bcc_filter(predicate)?);
        }
        out.push(probe.probe);
        if let Some(format) = probe.format {
            if let Some(conv) = ["%K", "%U"].iter().find(|c| format.contains(**c)) {
                refuse!(
                    TOOL,
                    conv,
                    "addresses are not symbolized in messages; print them with %llx"
                );
            }
            out.push(format);
            for arg in &probe.args {
                out.push(bcc_value(arg)?);
            }
        }
        Ok(())
    }
}

/// One BCC trace probe, split into tracer's pieces.
struct TraceProbe {
    /// tracer's probe, with the signature (if any) kept: `k:func(int fd)`.
    probe: String,
    predicate: Option<String>,
    format: Option<String>,
    args: Vec<String>,
}

impl TraceProbe {
    fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| usage_err!("'{text}': {why} (BCC's form: {TRACE_FORM})");
        let text = text.trim();
        let end = text
            .find(|c: char| c.is_whitespace() || c == '(' || c == '"')
            .unwrap_or(text.len());
        let (spec, mut rest) = text.split_at(end);
        if spec.is_empty() {
            return Err(bad("no probe before the format"));
        }
        let mut signature = String::new();
        if rest.starts_with('(') {
            let (inner, after) =
                balanced(rest).ok_or_else(|| bad("unbalanced '(' in the signature"))?;
            signature = format!("({inner})");
            rest = after;
        }
        rest = rest.trim_start();
        let mut predicate = None;
        if rest.starts_with('(') {
            let (inner, after) =
                balanced(rest).ok_or_else(|| bad("unbalanced '(' in the predicate"))?;
            predicate = Some(inner.trim().to_string());
            rest = after.trim_start();
        }
        let mut format = None;
        let mut args = Vec::new();
        if let Some(quoted) = rest.strip_prefix('"') {
            let close = quoted
                .char_indices()
                .find(|&(i, c)| c == '"' && !quoted[..i].ends_with('\\'))
                .map(|(i, _)| i)
                .ok_or_else(|| bad("the format string has no closing '\"'"))?;
            // One line per event here: a trailing "\n" (some BCC formats end in one) goes.
            format = Some(quoted[..close].replace("\\\"", "\"").replace("\\n", ""));
            rest = quoted[close + 1..].trim_start();
            if let Some(list) = rest.strip_prefix(',') {
                args = split_top_level(list)
                    .into_iter()
                    .map(|a| a.trim().to_string())
                    .collect();
                if args.iter().any(String::is_empty) {
                    return Err(bad("an empty argument after the format"));
                }
                rest = "";
            }
        }
        if !rest.is_empty() {
            return Err(bad(&format!("unexpected '{rest}'")));
        }
        let parts: Vec<&str> = spec.splitn(3, ':').collect();
        let (kind, kernel) = match parts.as_slice() {
            [_] => ("p", true),
            [_, _] => ("p", false),
            [kind, lib, _] => (*kind, lib.is_empty() && *kind != "t"),
            _ => unreachable!("splitn yields 1 to 3 parts"),
        };
        if kernel && spec.contains('+') {
            refuse!(
                "trace",
                format!("'{spec}'"),
                "kernel functions are probed at entry, not at an offset"
            );
        }
        let probe = probe("trace", spec, false)?;
        if kind == "t"
            && !signature
                .trim_matches(|c| c == '(' || c == ')')
                .trim()
                .is_empty()
        {
            return Err(bad(
                "tracepoints take no signature: name their fields as args->field",
            ));
        }
        Ok(Self {
            probe: if kind == "t" {
                probe
            } else {
                probe + &signature
            },
            predicate,
            format,
            args,
        })
    }
}

/// `(inner) rest` → (inner, rest), parentheses balanced.
fn balanced(text: &str) -> Option<(&str, &str)> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some((&text[1..i], &text[i + 1..]));
                }
            }
            _ => {}
        }
    }
    None
}

/// Splits on commas outside parentheses and quotes.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// BCC's value words as tracer writes them: `arg1`..`arg6` (BCC counts from 1) → `arg0`..`arg5`;
/// `retval` → `$retval`; `args->field` → `field`; `$pid` (BCC: the thread) → `$tid`, `$tgid`
/// → `$pid`; `@user` (read user memory) is dropped (tracer tries user memory first). Declared
/// parameter names pass through (the signature travels with the probe). C expressions are
/// refused in one line.
fn bcc_value(text: &str) -> Result<String> {
    let text = text.trim();
    let text = text.strip_suffix("@user").unwrap_or(text);
    if let Some(n) = text.strip_prefix("arg")
        && let Ok(n) = n.parse::<u8>()
    {
        if !(1..=6).contains(&n) {
            usage_bail!("'{text}': BCC's arguments are arg1..arg6");
        }
        return Ok(format!("arg{}", n - 1));
    }
    if let Some(field) = text.strip_prefix("args->")
        && is_identifier(field)
    {
        return Ok(field.to_string());
    }
    Ok(match text {
        "retval" | "$retval" => "$retval".into(),
        "$pid" => "$tid".into(),
        "$tgid" => "$pid".into(),
        "$cpu" => "$cpu".into(),
        "$latency" => usage_bail!("$latency is not supported here; funclatency times a function"),
        t if t.starts_with("$entry(") => usage_bail!(
            "'{t}' is not supported here: read the argument at an entry probe (p:) instead"
        ),
        t if is_identifier(t) => t.into(),
        t => usage_bail!(
            "'{t}' is a C expression; tracer reads arg1..arg6, retval, $pid, $tgid, $cpu, \
             declared parameter names and args->field"
        ),
    })
}

fn is_identifier(text: &str) -> bool {
    !text.is_empty()
        && !text.starts_with(|c: char| c.is_ascii_digit())
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// BCC's predicate as tracer's `--filter`: `VALUE OP NUMBER`, or `STRCMP("TEXT", VALUE)`
/// (`!STRCMP`: not equal).
fn bcc_filter(predicate: &str) -> Result<String> {
    let predicate = predicate.trim();
    let predicate = predicate
        .strip_prefix('(')
        .and_then(|p| p.strip_suffix(')'))
        .unwrap_or(predicate);
    if let Some(filter) = bcc_strcmp(predicate)? {
        return Ok(filter);
    }
    // A tracepoint field is a name here; its '->' is no comparison.
    let fields = predicate.replace("args->", "");
    for op in ["==", "!=", "<=", ">=", "<", ">"] {
        if let Some((lhs, rhs)) = fields.split_once(op) {
            let rhs = rhs.trim();
            let number = rhs.strip_prefix('-').unwrap_or(rhs);
            let numeric = number
                .strip_prefix("0x")
                .map(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
                .unwrap_or(!number.is_empty() && number.chars().all(|c| c.is_ascii_digit()));
            if numeric && !lhs.contains(['&', '|', '!', '<', '>', '=']) {
                return Ok(format!("{} {op} {rhs}", bcc_value(lhs)?));
            }
            break;
        }
    }
    usage_bail!(
        "filter '{predicate}': only VALUE OP NUMBER is supported here (OP: == != < <= > >=), \
         e.g. 'arg3 > 20000'"
    )
}

/// `STRCMP("TEXT", VALUE)` as `VALUE == "TEXT"` (BCC's STRCMP is true when they are equal);
/// None when the predicate is not a STRCMP.
fn bcc_strcmp(predicate: &str) -> Result<Option<String>> {
    let (negated, call) = match predicate.trim().strip_prefix('!') {
        Some(rest) => (true, rest.trim()),
        None => (false, predicate.trim()),
    };
    let Some(args) = call
        .strip_prefix("STRCMP(")
        .and_then(|rest| rest.strip_suffix(')'))
    else {
        return Ok(None);
    };
    let Some((text, value)) = args
        .trim()
        .strip_prefix('"')
        .and_then(|rest| rest.split_once('"'))
    else {
        usage_bail!(
            "filter '{predicate}': STRCMP takes a string literal first: STRCMP(\"TEXT\", arg1)"
        );
    };
    let value = value
        .trim()
        .strip_prefix(',')
        .map(str::trim)
        .ok_or_else(|| {
            usage_err!(
                "filter '{predicate}': STRCMP(\"TEXT\", VALUE) needs a value after the string"
            )
        })?;
    let op = if negated { "!=" } else { "==" };
    Ok(Some(format!("{} {op} \"{text}\"", bcc_value(value)?)))
}

/// Distribution of a probe's value (BCC's argdist).
#[derive(Parser, Debug)]
#[command(
    name = "argdist",
    disable_version_flag = true,
    override_usage = "argdist [-h] [-p PID] [-z STRING_SIZE] [-i INTERVAL] [-n COUNT] [-v] [-c] [-T TOP] [-H specifier] [-C specifier]"
)]
struct Argdist {
    /// JSON lines, as tracer prints them (not a BCC option; accepted in both grammars).
    #[arg(long = "json")]
    json: bool,
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pid: Option<String>,
    /// String size (strings are not counted here; ignored).
    #[arg(short = 'z', long = "string-size", value_name = "STRING_SIZE")]
    string_size: Option<u32>,
    /// Output interval, seconds (BCC's default: 1).
    #[arg(short = 'i', long = "interval", value_name = "INTERVAL")]
    interval: Option<String>,
    /// Number of outputs.
    #[arg(short = 'n', long = "number", value_name = "COUNT")]
    count: Option<String>,
    /// Print the BPF program (tracer's programs are prebuilt; ignored).
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Cumulative: do not clear between intervals.
    #[arg(short = 'c', long = "cumulative")]
    cumulative: bool,
    /// Only the TOP most frequent values (-C).
    #[arg(short = 'T', long = "top", value_name = "TOP")]
    top: Option<String>,
    #[arg(short = 'H', long = "histogram", value_name = "specifier", num_args = 1..)]
    histogram: Vec<String>,
    #[arg(short = 'C', long = "count", value_name = "specifier", num_args = 1..)]
    counts: Vec<String>,
    #[arg(short = 'I', long = "include", value_name = "HEADER")]
    include: Vec<String>,
}

/// BCC's argdist specifier.
const ARGDIST_FORM: &str =
    "{p,r,t,u}:{[library],category}:function(signature)[:type:expr[:filter]][#label]";

impl Argdist {
    fn translate(&self, out: &mut Vec<String>) -> Result<()> {
        const TOOL: &str = "argdist";
        if !self.include.is_empty() {
            refuse!(
                TOOL,
                "-I",
                "no C is compiled here: types come from the signature and tracepoint formats"
            );
        }
        let _ = (self.string_size, self.verbose);
        let (histogram, spec) = match (self.histogram.as_slice(), self.counts.as_slice()) {
            ([spec], []) => (true, spec),
            ([], [spec]) => (false, spec),
            ([], []) => usage_bail!("give a -H or -C specifier (BCC's form: {ARGDIST_FORM})"),
            _ => refuse!(
                TOOL,
                "with several specifiers",
                "one -H or -C specifier per argdist here: run one argdist per specifier"
            ),
        };
        let spec = ArgdistSpec::parse(spec)?;
        if let Some(entry) = &spec.latency_of {
            // A histogram of $latency is funclatency's: entry and return paired per thread.
            if !histogram {
                refuse!(
                    TOOL,
                    "-C with $latency",
                    "counting distinct latencies tells little: -H gives funclatency's histogram"
                );
            }
            if spec.filter.is_some() || self.cumulative || self.top.is_some() {
                refuse!(
                    TOOL,
                    "a filter, -c or -T with $latency",
                    "$latency runs as funclatency, which takes -p, -i and -n only"
                );
            }
            push(out, &["funclatency"]);
            push_if(out, self.json, "--json");
            push_opt(out, "-p", &one_pid(TOOL, &self.pid)?);
            out.push(entry.clone());
            out.push(self.interval.clone().unwrap_or_else(|| "1".into()));
            push_opt_positional(out, &self.count);
            return Ok(());
        }
        push(out, &[TOOL]);
        push_if(out, self.json, "--json");
        out.push(if histogram { "-H" } else { "--count" }.into());
        push_if(out, self.cumulative, "--cumulative");
        push_opt(out, "-p", &one_pid(TOOL, &self.pid)?);
        push_opt(out, "-n", &self.top);
        if let Some(filter) = &spec.filter {
            out.push("--filter".into());
            out.push(bcc_filter(filter)?);
        }
        out.push(spec.probe);
        out.push(spec.expr);
        // BCC prints every second unless told otherwise.
        out.push(self.interval.clone().unwrap_or_else(|| "1".into()));
        push_opt_positional(out, &self.count);
        Ok(())
    }
}

/// One argdist specifier in tracer's pieces.
struct ArgdistSpec {
    probe: String,
    expr: String,
    filter: Option<String>,
    /// `$latency` at a return probe: the function to time (its entry probe), for funclatency.
    latency_of: Option<String>,
}

impl ArgdistSpec {
    fn parse(text: &str) -> Result<Self> {
        const TOOL: &str = "argdist";
        let bad = |why: &str| usage_err!("'{text}': {why} (BCC's form: {ARGDIST_FORM})");
        // The label only names the output; tracer names it after the expression.
        // (BCC's man page writes one example with ';').
        let body = text
            .split_once(['#', ';'])
            .map_or(text, |(body, _)| body)
            .trim();
        let mut parts = body.splitn(3, ':');
        let (Some(kind), Some(lib), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("a specifier starts with TYPE:LIBRARY:FUNCTION"));
        };
        if !matches!(kind, "p" | "r" | "t" | "u") {
            return Err(bad(&format!("unknown probe type '{kind}:' (p, r, t, u)")));
        }
        let name_end = rest.find(['(', ':']).unwrap_or(rest.len());
        let (function, mut rest) = rest.split_at(name_end);
        let mut signature = String::new();
        if rest.starts_with('(') {
            let (inner, after) =
                balanced(rest).ok_or_else(|| bad("unbalanced '(' in the signature"))?;
            signature = format!("({inner})");
            rest = after;
        }
        let fields: Vec<&str> = match rest.strip_prefix(':') {
            Some(fields) => split_colons(fields),
            None if rest.is_empty() => Vec::new(),
            None => return Err(bad(&format!("unexpected '{rest}' after the function"))),
        };
        let (types, exprs, filter) = match fields.as_slice() {
            [] => ("", None, None),
            [types, exprs] => (*types, Some(*exprs), None),
            [types, exprs, filter] => (*types, Some(*exprs), Some(filter.to_string())),
            _ => {
                return Err(bad(
                    "after the function come :type:expr and an optional :filter",
                ));
            }
        };
        if types.contains(',') || exprs.is_some_and(|e| split_top_level(e).len() > 1) {
            refuse!(
                TOOL,
                "several values per specifier",
                "one value per specifier here"
            );
        }
        if types.contains("char*") || types.contains("char *") {
            refuse!(
                TOOL,
                "char* values",
                "values are counted as numbers here; trace prints strings (%s)"
            );
        }
        // Without an expression BCC counts calls at an entry probe and takes the return value at a
        // return probe; a count of calls is one value, $pid's, when nothing else is asked.
        let latency = exprs.is_some_and(|e| e.trim() == "$latency");
        if latency && kind != "r" {
            return Err(bad("$latency is known at a return probe (r:)"));
        }
        let expr = match exprs {
            Some(e) if e.trim() == "$PID" => "$pid".to_string(),
            Some(_) if latency => "$latency".to_string(),
            Some(e) => bcc_value(e)?,
            None if kind == "r" => "$retval".to_string(),
            None => usage_bail!(
                "'{text}' names no value: add :TYPE:EXPR (e.g. ':int:fd'); funccount counts calls"
            ),
        };
        let spec = if kind == "t" {
            format!("t:{lib}:{function}")
        } else {
            format!("{kind}:{lib}:{function}")
        };
        if kind == "t"
            && !signature
                .trim_matches(|c| c == '(' || c == ')')
                .trim()
                .is_empty()
        {
            return Err(bad("tracepoints take no signature: name their fields"));
        }
        let latency_of = if latency {
            Some(self::probe(TOOL, &format!("p:{lib}:{function}"), false)?)
        } else {
            None
        };
        let probe = probe(TOOL, &spec, false)?;
        Ok(Self {
            probe: if kind == "t" {
                probe
            } else {
                probe + &signature
            },
            expr,
            filter,
            latency_of,
        })
    }
}

/// Splits on ':' outside parentheses.
fn split_colons(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ':' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(line: &str) -> String {
        let words: Vec<OsString> = shell_words(line).into_iter().map(OsString::from).collect();
        let tool = words[0].to_string_lossy().into_owned();
        translate(&tool, &words[1..])
            .map(|v| v[1..].join(" "))
            .unwrap_or_else(|e| format!("error: {e:#}"))
    }

    /// Splits on spaces, honouring single quotes (enough for the cases below).
    fn shell_words(line: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut word = String::new();
        let mut quoted = false;
        for c in line.chars() {
            match c {
                '\'' => quoted = !quoted,
                ' ' if !quoted => {
                    if !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                }
                c => word.push(c),
            }
        }
        if !word.is_empty() {
            words.push(word);
        }
        words
    }

    #[test]
    fn bcc_meanings_become_tracer_flags() {
        for (bcc, tracer) in [
            ("profile 5", "profile --no-idle -d 5"),
            ("profile -F 99 5", "profile -F 99 --no-idle -d 5"),
            ("profile -c 1000000 5", "profile -F 1000 --no-idle -d 5"),
            ("profile -L 181", "profile -t 181 --no-idle"),
            ("profile -df 5", "profile --no-idle -f --delimited -d 5"),
            ("profile -IK", "profile -K"),
            ("offcputime -f 5", "offcputime -f -d 5"),
            (
                "offcputime -k -m 100",
                "offcputime --kthreads --min-block-time 100",
            ),
            ("softirqs -d", "softirq-top -b -D 86400"),
            ("softirqs -NT 1", "softirq-top -b -T -N 1"),
            ("softirqs -c 1 1 10", "softirq-top -b -C 1 1 10"),
            ("hardirqs -d 1 10", "hardirqs -D 1 10"),
            ("runqlat -mT 1", "runqlat -T -m 1"),
            ("runqlat -P 185 1", "runqlat -P 185 1"),
            ("cpudist -e", "cpudist"),
            ("funccount 'vfs_*'", "funccount k:vfs_*"),
            ("funccount -i 1 'vfs_*'", "funccount k:vfs_* 1"),
            ("funccount -d 10 'vfs_*'", "funccount -d 10 k:vfs_*"),
            ("funccount -r '^vfs_.*'", "funccount k:vfs_*"),
            (
                "funccount t:sched:sched_fork",
                "funccount t:sched:sched_fork",
            ),
            ("funccount c:malloc", "funccount u:c:malloc"),
            (
                "funccount -p 185 u:node:gc*",
                "funccount -p 185 usdt:node:gc*",
            ),
            (
                "funclatency -mTi 5 vfs_read",
                "funclatency -T -m k:vfs_read 5",
            ),
            (
                "funclatency -F 'vfs_fstat*'",
                "funclatency --function k:vfs_fstat*",
            ),
            (
                "stackcount submit_bio",
                "stackcount --both-stacks k:submit_bio",
            ),
            (
                "stackcount -Ti 5 ip_output",
                "stackcount -T --both-stacks k:ip_output 5",
            ),
            (
                "stackcount -K -D 3 p::ip_output",
                "stackcount -K -d 3 k:ip_output",
            ),
        ] {
            assert_eq!(tr(bcc), tracer, "{bcc}");
        }
    }

    #[test]
    fn trace_and_argdist_expressions_become_tracer_lines() {
        for (bcc, tracer) in [
            ("trace do_sys_open", "trace k:do_sys_open"),
            (
                r#"trace 'p::do_sys_openat2 "%s", arg2'"#,
                "trace k:do_sys_openat2 %s arg1",
            ),
            (
                r#"trace '::do_sys_open "%s", arg2@user'"#,
                "trace k:do_sys_open %s arg1",
            ),
            (
                r#"trace '::sys_read (arg3 > 20000) "read %d bytes", arg3'"#,
                "trace --filter arg2 > 20000 k:sys_read read %d bytes arg2",
            ),
            (
                r#"trace 'r::do_sys_openat2 "%d", retval'"#,
                "trace kr:do_sys_openat2 %d $retval",
            ),
            (
                r#"trace ':c:malloc "size = %d", arg1'"#,
                "trace u:c:malloc size = %d arg0",
            ),
            (
                r#"trace 'r:bash:readline "%s", retval'"#,
                "trace ur:bash:readline %s $retval",
            ),
            (
                r#"trace 't:block:block_rq_complete "%d sectors", args->nr_sector'"#,
                "trace t:block:block_rq_complete %d sectors nr_sector",
            ),
            (
                r#"trace 'u:pthread:pthread_create "start addr = %llx", arg3'"#,
                "trace usdt:pthread:pthread_create start addr = %llx arg2",
            ),
            (
                r#"trace -p 7 -L 8 -T -M 3 'p:c:write(int fd, char *buf) (fd == 1) "%d %s", fd, buf'"#,
                "trace -p 7 -t 8 -T --max-events 3 --filter fd == 1 u:c:write(int fd, char *buf) %d %s fd buf",
            ),
            (
                r#"trace 'u:/usr/bin/python3.11:function__entry (STRCMP("main", arg2)) "%s", arg1'"#,
                r#"trace --filter arg1 == "main" usdt:/usr/bin/python3.11:function__entry %s arg0"#,
            ),
            (
                r#"trace 'p:c:open (!STRCMP("/etc/passwd", arg1))'"#,
                r#"trace --filter arg0 != "/etc/passwd" u:c:open"#,
            ),
            (
                "trace -c /sys/fs/cgroup/app t:sched:sched_process_fork",
                "trace --cgroup /sys/fs/cgroup/app t:sched:sched_process_fork",
            ),
            (
                "argdist -H 'p::__kmalloc(u64 size):u64:size'",
                "argdist -H k:__kmalloc(u64 size) size 1",
            ),
            (
                "argdist -p 1005 -C 'p:c:malloc(size_t size):size_t:size:size==16'",
                "argdist --count -p 1005 --filter size == 16 u:c:malloc(size_t size) size 1",
            ),
            (
                "argdist -p 1005 -H 'r:c:read()'",
                "argdist -H -p 1005 ur:c:read() $retval 1",
            ),
            (
                "argdist -C 'p:c:fork():int:$PID;fork per process'",
                "argdist --count u:c:fork() $pid 1",
            ),
            (
                "argdist -i 2 -n 3 -p 9 -H 'r::do_sys_openat2():u64:$latency'",
                "funclatency -p 9 k:do_sys_openat2 2 3",
            ),
            (
                "argdist -H 'r:c:read(int fd):u64:$latency'",
                "funclatency u:c:read 1",
            ),
            (
                "argdist -i 5 -n 2 -T 3 -c -C 't:irq:irq_handler_entry():int:irq#irqs'",
                "argdist --count --cumulative -n 3 t:irq:irq_handler_entry irq 5 2",
            ),
        ] {
            assert_eq!(tr(bcc), tracer, "{bcc}");
        }
    }

    #[test]
    fn refusals_are_one_line_naming_the_form() {
        for (bcc, needle) in [
            ("profile -x", "BCC profile's form: profile"),
            ("funccount", "BCC funccount's form"),
            ("runqlat --pidnss", "--pidnss: not supported here"),
            ("profile -p 1,2", "tracer's -p takes one process"),
            ("funccount -r 'vfs_(read|write)'", "globs in disguise"),
            ("funccount x:y:z", "unknown probe type 'x:'"),
            (r#"trace 'p::f "%d", a + b'"#, "is a C expression"),
            (
                r#"trace 'p::f (a && b) "%d", arg1'"#,
                "only VALUE OP NUMBER",
            ),
            (r#"trace 'p::f "%d'"#, "BCC's form: [p|r]:[lib]:func"),
            (r#"trace 'p::f "%K", arg1'"#, "not symbolized"),
            ("trace 'p::f' 'p::g'", "one probe per trace"),
            ("trace -K 'p::f'", "stacks are not printed per event"),
            ("argdist -C 'p::f(int x):int'", "BCC's form: {p,r,t,u}:"),
            ("argdist -C 'r::f():u64:$latency'", "funclatency"),
            ("argdist -H 'p::f():u64:$latency'", "return probe"),
            (
                "argdist -H 'r::f():u64:$latency:$latency>10'",
                "takes -p, -i and -n only",
            ),
            ("argdist -C 'p:c:gets():char*:$retval'", "numbers here"),
            (
                "argdist -C 'p::f(int a):int,int:a,a'",
                "one value per specifier",
            ),
        ] {
            let got = tr(bcc);
            assert!(
                got.starts_with("error: ") && got.contains(needle),
                "{bcc}: {got}"
            );
            assert_eq!(got.lines().count(), 1, "{bcc}: {got}");
        }
    }

    #[test]
    fn tplist_p_and_l_are_usdt() {
        for (bcc, tracer) in [
            ("tplist", "tplist"),
            ("tplist -v 'net:*'", "tplist -v net:*"),
            ("tplist -l pthread", "tplist --usdt -l pthread"),
            ("tplist -p 4717 'libc:*'", "tplist --usdt -p 4717 libc:*"),
            ("tplist -vv -l node", "tplist --usdt -l node -v"),
        ] {
            assert_eq!(tr(bcc), tracer, "{bcc}");
        }
    }
}

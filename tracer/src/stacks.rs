//! Stacks for every tool that collects them (profile, kstacks, offcputime, stackcount,
//! softirq-top --stacks): reading the stacks kernel programs stored (stack_map.rs),
//! symbolizing in userspace only when printing (never per sample; cached per address), and
//! printing them as top-N text, FlameGraph
//! folded lines, an inferno SVG flame graph, or JSON.
//!
//! How a tool uses it:
//! ```ignore
//! let svg = opts.svg.as_deref().map(flame_svg::SvgFile::create).transpose()?; // before attaching
//! let map = stacks::StackMap::take(&mut ebpf, "STACKS")?;
//! let raw = RawStack { comm, pid, tid, value,
//!                      kernel: map.frames(key.kstack), user: map.frames(key.ustack) };
//! let mut symbols = Symbols::new();  // one per run (caches per address); .strip_tracing_frames()
//!                                     // for stacks taken in tracepoint programs
//! let stacks = stacks::merge(symbols.resolve_all(&raws)); // names leaf first, same paths merged
//! stacks::print_top(&mut out, &stacks, total, Unit::Samples);
//! let lines = stacks::folded(&stacks, Unit::Samples); // "comm;user...;kernel... count", merged
//! svg.write(&lines, "title: what was sampled", "samples")?;
//! stacks::StackLoss::read(&stats).report(TOOL);  // STAT_STACK_LOST / _COLLISIONS
//! ```
//! The kernel side stores ids with `tracer_ebpf::stacks::stack_id`; key fields use the
//! conventions of `tracer_common::stacks` (`STACK_NONE`, negative errno = lost but counted).
//!
//! Kernel addresses are symbolized from /proc/kallsyms, user addresses through the process
//! (blazesym `Source::Process`: /proc/PID/maps and map_files, so binaries in containers and
//! deleted files resolve while the process lives; ELF symbol tables, perf maps for JITs,
//! demangled Rust and C++ names). A process noted while it lived (`keep_process`: its
//! mappings and files held open, proc_maps.rs) still resolves after it exited or exec'd
//! another binary. Frames that do not resolve print as `[unknown]` and are counted, never
//! dropped.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    rc::Rc,
};

use anyhow::Result;
use blazesym::{
    MaybeDefault,
    symbolize::{
        Input, Symbolized, Symbolizer, evict,
        source::{Elf, Kernel, Process, Source},
    },
};
use serde_json::{Value, json};
use tracer_common::{
    stacks::TaskStackKey,
    stats::{STAT_STACK_COLLISIONS, STAT_STACK_LOST},
};

pub use crate::stack_map::{Frames, StackMap, UNWOUND_BASE};
use crate::{frame_origins::FrameOrigins, loader::StatsReader, output::Out, proc_maps::ProcMaps};

/// One aggregated stack as read from the kernel, before symbolization.
#[derive(Clone, Debug)]
pub struct RawStack {
    pub comm: String,
    /// Thread group id (0 for the idle tasks).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub kernel: Frames,
    pub user: Frames,
    /// Samples, nanoseconds, ... (see `Unit`).
    pub value: u64,
}

/// A symbolized stack: frame names, leaf first.
#[derive(Clone, Debug)]
pub struct Stack {
    pub comm: String,
    pub pid: u32,
    pub tid: u32,
    pub kernel: Vec<Rc<str>>,
    pub user: Vec<Rc<str>>,
    pub value: u64,
}

/// What a stack's value counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Samples,
    Nanoseconds,
}

/// The pseudo-frame shown for a stack that could not be stored.
pub fn lost_frame(errno: i32) -> &'static str {
    match errno {
        libc::EEXIST => "[lost: stack store ids taken]",
        libc::ENOMEM => "[lost: stack map full]",
        libc::EFAULT => "[lost: stack not readable]",
        libc::ENOENT => "[lost: stack no longer in map]",
        _ => "[lost: stack]",
    }
}

pub const UNKNOWN: &str = "[unknown]";

/// Symbolizer with per-address caches; create one per run and reuse it.
pub struct Symbols {
    symbolizer: Symbolizer,
    kernel: HashMap<u64, Rc<str>>,
    user: HashMap<(u32, u64), Rc<str>>,
    unknown: Rc<str>,
    strip_tracing: bool,
    /// Each frame name's binary, build id and source line, for `--pprof` (see
    /// `recording_origins`); None when not asked for, so other runs pay nothing.
    origins: Option<FrameOrigins>,
    /// Processes forgotten since the symbolizer was last rebuilt (see `forget_processes`).
    forgotten: usize,
    /// Mappings and held files of the processes noted (`keep_process`), for addresses of a
    /// process that exited or exec'd since.
    maps: ProcMaps,
    /// Frames printed as `[unknown]` so far (kernel, user).
    pub unknown_kernel: u64,
    pub unknown_user: u64,
    /// Frames symbolized so far (kernel, user).
    pub frames_kernel: u64,
    pub frames_user: u64,
}

impl Default for Symbols {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbols {
    pub fn new() -> Self {
        Self {
            symbolizer: Self::symbolizer(),
            kernel: HashMap::new(),
            user: HashMap::new(),
            unknown: Rc::from(UNKNOWN),
            strip_tracing: false,
            origins: None,
            forgotten: 0,
            maps: ProcMaps::default(),
            unknown_kernel: 0,
            unknown_user: 0,
            frames_kernel: 0,
            frames_user: 0,
        }
    }

    /// Drops the frames of the tracing machinery itself (our BPF program, bpf_trace_run*,
    /// __traceiter_*) from the top of kernel stacks. For stacks taken in tracepoint programs;
    /// not for perf-event samples, where a BPF program on top is real work.
    pub fn strip_tracing_frames(mut self) -> Self {
        self.strip_tracing = true;
        self
    }

    /// Also notes where each frame name came from (`origins`), source lines included where a
    /// binary has DWARF: for `--pprof`, whose readers want mappings, build ids and lines. The
    /// DWARF it reads costs memory and time the names alone do not, hence opt-in.
    pub fn recording_origins(mut self, on: bool) -> Self {
        if on {
            self.origins = Some(FrameOrigins::default());
            self.symbolizer = Self::symbolizer_with(true);
        }
        self
    }

    /// The frame origins noted so far (empty unless `recording_origins`).
    pub fn origins(&self) -> Option<&FrameOrigins> {
        self.origins.as_ref()
    }

    /// Symbolizes one stack.
    pub fn resolve(&mut self, raw: &RawStack) -> Stack {
        let kernel = self.frames(&raw.kernel, None);
        let user = self.frames(&raw.user, Some(raw.pid));
        Stack {
            comm: raw.comm.clone(),
            pid: raw.pid,
            tid: raw.tid,
            kernel,
            user,
            value: raw.value,
        }
    }

    /// Symbolizes many stacks, batching the lookups per process.
    pub fn resolve_all(&mut self, raws: &[RawStack]) -> Vec<Stack> {
        let mut kernel = Vec::new();
        let mut user: HashMap<u32, Vec<u64>> = HashMap::new();
        for raw in raws {
            if let Frames::Ips(ips) = &raw.kernel {
                kernel.extend(lookup_addrs(ips));
            }
            if let Frames::Ips(ips) = &raw.user {
                user.entry(raw.pid).or_default().extend(lookup_addrs(ips));
            }
        }
        self.fill(None, kernel);
        for (pid, addrs) in user {
            self.fill(Some(pid), addrs);
        }
        raws.iter().map(|raw| self.resolve(raw)).collect()
    }

    /// Symbolizes a user stack now, while its process exists, so that printing it later works
    /// even after the process exited (the cache is per pid and address); notes the process's
    /// mappings the first time it is seen (`keep_process`), for its addresses not sampled yet.
    /// (`-p`/`-t` targets are noted again every round by `keep_targets`, which sees an exec.)
    pub fn prefetch_user(&mut self, pid: u32, frames: &Frames) {
        if !self.maps.knows(pid) {
            self.keep_process(pid);
        }
        if let Frames::Ips(ips) = frames {
            self.fill(Some(pid), lookup_addrs(ips).collect());
        }
    }

    /// `prefetch_user` for many stacks, one symbolizer call per process: blazesym reads
    /// /proc/PID/maps on every call, so a round with hundreds of new stacks of one process
    /// (unwound stacks are many) would read it hundreds of times.
    pub fn prefetch_users(&mut self, stacks: impl IntoIterator<Item = (u32, Frames)>) {
        let mut by_pid: HashMap<u32, Vec<u64>> = HashMap::new();
        for (pid, frames) in stacks {
            if let Frames::Ips(ips) = frames {
                by_pid.entry(pid).or_default().extend(lookup_addrs(&ips));
            }
        }
        for (pid, addrs) in by_pid {
            if !self.maps.knows(pid) {
                self.keep_process(pid);
            }
            self.fill(Some(pid), addrs);
        }
    }

    /// Keeps what it takes to symbolize `pid` after it exits or execs: its executable
    /// mappings and their files, held open (proc_maps.rs). Call when a process is first seen
    /// (a `-p` target at start, a warm-up round) and again now and then: a new executable is
    /// noted again.
    pub fn keep_process(&mut self, pid: u32) {
        self.maps.note(pid);
    }

    /// Notes the run's `-p`/`-t` targets (`keep_process`) and returns how often a tool's
    /// warm-up rounds (symbolizing new stacks while their processes live, and calling this
    /// again) should come: every 250 ms with targets — one image of a process that execs may
    /// live well under a second — else every second.
    pub fn keep_targets(&mut self) -> std::time::Duration {
        let targets = crate::session::targets();
        for &pid in &targets {
            self.keep_process(pid);
        }
        std::time::Duration::from_millis(if targets.is_empty() { 1000 } else { 250 })
    }

    /// Drops what is cached for processes that exited (their stacks were evicted and will not
    /// be printed again), so that a long run's memory follows the live processes, not all the
    /// processes ever sampled. blazesym keeps per-process resolvers keyed by
    /// /proc/PID/map_files paths that its per-process eviction does not release, so the
    /// symbolizer itself is rebuilt after every `REBUILD_AFTER` forgotten processes (our own
    /// caches keep the names of the live processes and the kernel, so only new addresses of live
    /// processes pay for re-reading their binaries).
    pub fn forget_processes(&mut self, pids: &HashSet<u32>) {
        const REBUILD_AFTER: usize = 256;
        if pids.is_empty() {
            return;
        }
        self.user.retain(|(pid, _), _| !pids.contains(pid));
        self.maps.forget(pids);
        for &pid in pids {
            let _ = self
                .symbolizer
                .evict(&evict::Process::new(pid.into()).into());
        }
        self.forgotten += pids.len();
        if self.forgotten >= REBUILD_AFTER {
            self.symbolizer = Self::symbolizer_with(self.origins.is_some());
            self.forgotten = 0;
        }
    }

    /// Keeps the cached names of these kernel and (process, user) addresses only: those the
    /// stacks still in the maps use, so that in interval mode the caches follow what can still
    /// be printed rather than every address a long run ever met. Dropped addresses of live
    /// processes resolve again if they come back.
    pub fn retain(&mut self, kernel: &HashSet<u64>, user: &HashSet<(u32, u64)>) {
        self.kernel.retain(|addr, _| kernel.contains(addr));
        self.user.retain(|key, _| user.contains(key));
    }

    fn symbolizer() -> Symbolizer {
        Self::symbolizer_with(false)
    }

    /// Names only unless `code_info`: source lines (and inlined frames, never asked for) cost
    /// DWARF parsing per binary.
    fn symbolizer_with(code_info: bool) -> Symbolizer {
        Symbolizer::builder()
            .enable_code_info(code_info)
            .enable_inlined_fns(false)
            .enable_demangling(true)
            .build()
    }

    fn frames(&mut self, frames: &Frames, pid: Option<u32>) -> Vec<Rc<str>> {
        let ips = match frames {
            Frames::None => return Vec::new(),
            Frames::Lost(errno) => return vec![Rc::from(lost_frame(*errno))],
            Frames::Ips(ips) => ips,
        };
        let addrs: Vec<u64> = lookup_addrs(ips).collect();
        self.fill(pid, addrs.clone());
        let mut names: Vec<Rc<str>> = addrs
            .iter()
            .map(|a| {
                let cached = match pid {
                    None => self.kernel.get(a),
                    Some(pid) => self.user.get(&(pid, *a)),
                };
                cached.cloned().unwrap_or_else(|| self.unknown.clone())
            })
            .collect();
        if pid.is_none() && self.strip_tracing {
            let tracing = names.iter().take_while(|n| is_tracing_frame(n)).count();
            names.drain(..tracing);
        }
        let unknown = names.iter().filter(|n| n.as_ref() == UNKNOWN).count() as u64;
        match pid {
            None => {
                self.frames_kernel += names.len() as u64;
                self.unknown_kernel += unknown;
            }
            Some(_) => {
                self.frames_user += names.len() as u64;
                self.unknown_user += unknown;
            }
        }
        names
    }

    /// Symbolizes the addresses not cached yet, in one batch.
    fn fill(&mut self, pid: Option<u32>, mut addrs: Vec<u64>) {
        addrs.retain(|a| match pid {
            None => !self.kernel.contains_key(a),
            Some(pid) => !self.user.contains_key(&(pid, *a)),
        });
        addrs.sort_unstable();
        addrs.dedup();
        if addrs.is_empty() {
            return;
        }
        let source = match pid {
            None => Source::Kernel(Kernel {
                // kallsyms is always there and fast; a vmlinux with DWARF would be slow to parse.
                vmlinux: MaybeDefault::None,
                ..Kernel::default()
            }),
            // pid 0 would mean "this process" to blazesym: the idle tasks have no user stack.
            Some(0) => return,
            Some(pid) => Source::Process(Process {
                // ELF symbols (still demangled): DWARF of big binaries (compilers, browsers)
                // costs hundreds of MB and seconds, for names the symbol table already has.
                // Only a run recording origins (--pprof) reads DWARF, for source lines.
                debug_syms: self.origins.is_some(),
                ..Process::new(pid.into())
            }),
        };
        // A process that exited can no longer be symbolized: its frames stay `[unknown]`.
        let mut names = self.names(&source, &addrs);
        // Local functions of a stripped binary (libc's __libc_start_call_main, its qsort
        // internals) are in its separate debug file when one is installed (.gnu_debuglink or
        // /usr/lib/debug/.build-id, as perf reads them): a second pass with debug symbols, for
        // the addresses still unknown only, so binaries whose symbol tables answer pay no
        // DWARF parsing.
        if let Some(pid) = pid
            && self.origins.is_none()
            && names.iter().any(Option::is_none)
        {
            let unknown: Vec<usize> = (0..addrs.len()).filter(|&i| names[i].is_none()).collect();
            let retry: Vec<u64> = unknown.iter().map(|&i| addrs[i]).collect();
            let source = Source::Process(Process {
                debug_syms: true,
                ..Process::new(pid.into())
            });
            for (i, name) in unknown.into_iter().zip(self.names(&source, &retry)) {
                names[i] = name;
            }
        }
        let names = match pid {
            Some(pid) if names.iter().any(Option::is_none) && !self.maps.is_empty() => {
                self.names_from_kept_maps(pid, &addrs, names)
            }
            _ => names,
        };
        for (addr, name) in addrs.into_iter().zip(names) {
            let name = name.unwrap_or_else(|| self.unknown.clone());
            match pid {
                None => self.kernel.insert(addr, name),
                Some(pid) => self.user.insert((pid, addr), name),
            };
        }
    }

    /// One symbolizer call: the name of each address (None when unknown), origins noted.
    fn names(&mut self, source: &Source, addrs: &[u64]) -> Vec<Option<Rc<str>>> {
        let origins = &mut self.origins;
        match self.symbolizer.symbolize(source, Input::AbsAddr(addrs)) {
            Ok(results) => results
                .into_iter()
                .map(|r| match r {
                    Symbolized::Sym(sym) => {
                        let name: Rc<str> = Rc::from(sanitize(&sym.name));
                        if let Some(origins) = origins.as_mut() {
                            let code = sym.code_info.as_ref().and_then(|c| {
                                Some((Rc::from(c.to_path().to_string_lossy()), c.line?))
                            });
                            origins.note(&name, sym.module.as_deref(), sym.addr, code);
                        }
                        Some(name)
                    }
                    Symbolized::Unknown(_) => None,
                })
                .collect(),
            Err(_) => vec![None; addrs.len()],
        }
    }

    /// Names the addresses the live process did not resolve (it exited, or exec'd another
    /// binary) from the mappings kept for it: each held file symbolized by file offset.
    fn names_from_kept_maps(
        &mut self,
        pid: u32,
        addrs: &[u64],
        mut names: Vec<Option<Rc<str>>>,
    ) -> Vec<Option<Rc<str>>> {
        // Per held file: (index into addrs, offset in the file) of each address in it.
        type Wanted = (Rc<crate::proc_maps::HeldFile>, Vec<(usize, u64)>);
        let mut by_file: HashMap<PathBuf, Wanted> = HashMap::new();
        for (i, addr) in addrs.iter().enumerate() {
            if names[i].is_some() {
                continue;
            }
            if let Some((file, offset)) = self.maps.lookup(pid, *addr) {
                by_file
                    .entry(file.path())
                    .or_insert_with(|| (file.clone(), Vec::new()))
                    .1
                    .push((i, offset));
            }
        }
        for (path, (file, wanted)) in by_file {
            let offsets: Vec<u64> = wanted.iter().map(|(_, o)| *o).collect();
            let source = Source::Elf(Elf {
                debug_syms: self.origins.is_some(),
                ..Elf::new(path)
            });
            let Ok(results) = self
                .symbolizer
                .symbolize(&source, Input::FileOffset(&offsets))
            else {
                continue;
            };
            for ((i, _), result) in wanted.into_iter().zip(results) {
                if let Symbolized::Sym(sym) = result {
                    let name: Rc<str> = Rc::from(sanitize(&sym.name));
                    if let Some(origins) = self.origins.as_mut() {
                        let code = sym
                            .code_info
                            .as_ref()
                            .and_then(|c| Some((Rc::from(c.to_path().to_string_lossy()), c.line?)));
                        origins.note(&name, Some(file.shown.as_os_str()), sym.addr, code);
                    }
                    names[i] = Some(name);
                }
            }
        }
        names
    }

    /// One stderr line when many printed frames did not resolve, with the likely reason.
    pub fn report_unknown(&self, tool: &str) {
        if self.frames_user > 0 && self.unknown_user * 5 > self.frames_user {
            errln!(
                "{tool}: {} of {} user frames are [unknown] (process exited before symbolization, \
                 stripped binary, or code built without frame pointers)",
                self.unknown_user,
                self.frames_user
            );
        }
        if self.frames_kernel > 0 && self.unknown_kernel * 5 > self.frames_kernel {
            errln!(
                "{tool}: {} of {} kernel frames are [unknown] (is /proc/kallsyms readable? \
                 kernel.kptr_restrict)",
                self.unknown_kernel,
                self.frames_kernel
            );
        }
    }
}

fn is_tracing_frame(name: &str) -> bool {
    [
        "bpf_prog_",
        "bpf_trace_run",
        "__traceiter_",
        "__bpf_trace_",
        "trace_call_bpf",
        "perf_trace_",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// The address to look up for each frame: every frame but the leaf is a return address, which
/// points after the call; one byte back lands inside the calling function (as perf does).
fn lookup_addrs(ips: &[u64]) -> impl Iterator<Item = u64> + '_ {
    ips.iter()
        .enumerate()
        .map(|(i, &ip)| if i == 0 { ip } else { ip.saturating_sub(1) })
}

/// Frame names must not break the folded format (';' separates frames, '\n' lines).
fn sanitize(name: &str) -> String {
    name.replace(';', ":").replace(['\n', '\r'], " ")
}

/// Sorts raw stacks by value (largest first), ties by comm then tid, so output is stable; for
/// picking the top N before symbolizing (`merge` sorts symbolized stacks itself).
pub fn sort(stacks: &mut [RawStack]) {
    stacks.sort_by(|a, b| {
        b.value
            .cmp(&a.value)
            .then(a.comm.cmp(&b.comm))
            .then(a.tid.cmp(&b.tid))
    });
}

/// Merges stacks that symbolize to the same task and frame names (different return addresses
/// inside the same functions), largest first. Printing after this shows one entry per code path.
pub fn merge(stacks: Vec<Stack>) -> Vec<Stack> {
    /// comm, pid, tid, kernel frames, user frames.
    type Same = (String, u32, u32, Vec<Rc<str>>, Vec<Rc<str>>);
    let mut index: HashMap<Same, usize> = HashMap::new();
    let mut merged: Vec<Stack> = Vec::new();
    for stack in stacks {
        let key = (
            stack.comm.clone(),
            stack.pid,
            stack.tid,
            stack.kernel.clone(),
            stack.user.clone(),
        );
        match index.get(&key) {
            Some(&i) => merged[i].value += stack.value,
            None => {
                index.insert(key, merged.len());
                merged.push(stack);
            }
        }
    }
    merged.sort_by(|a, b| {
        b.value
            .cmp(&a.value)
            .then(a.comm.cmp(&b.comm))
            .then(a.tid.cmp(&b.tid))
            .then(a.kernel.cmp(&b.kernel))
    });
    merged
}

/// A value with its unit, for text output.
pub fn format_value(value: u64, unit: Unit) -> String {
    match unit {
        Unit::Samples if value == 1 => "1 sample".into(),
        Unit::Samples => format!("{value} samples"),
        Unit::Nanoseconds => format_ns(value),
    }
}

/// Nanoseconds in the largest unit that keeps a number >= 1 (e.g. "1.002s", "35.1ms").
pub fn format_ns(ns: u64) -> String {
    let ns = ns as f64;
    if ns >= 1e9 {
        format!("{:.3}s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.1}ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1}us", ns / 1e3)
    } else {
        format!("{ns}ns")
    }
}

fn percent(value: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        value as f64 * 100.0 / total as f64
    }
}

/// Prints stacks BCC-style but header first: value, share of `total`, task; then kernel frames
/// (leaf first), `--`, user frames (leaf first).
pub fn print_top(out: &mut Out, stacks: &[Stack], total: u64, unit: Unit) {
    print_top_as(out, stacks, total, unit, |stack| {
        format!("{} [pid {} tid {}]", stack.comm, stack.pid, stack.tid)
    });
}

/// `print_top` with the task named by `task` (for tools whose keys hold no tid, or no pid).
pub fn print_top_as(
    out: &mut Out,
    stacks: &[Stack],
    total: u64,
    unit: Unit,
    task: impl Fn(&Stack) -> String,
) {
    for stack in stacks {
        out.line(&format!(
            "{}  {:.2}%  {}",
            format_value(stack.value, unit),
            percent(stack.value, total),
            task(stack)
        ));
        for frame in &stack.kernel {
            out.line(&format!("    {frame}"));
        }
        if !stack.kernel.is_empty() && !stack.user.is_empty() {
            out.line("    --");
        }
        for frame in &stack.user {
            out.line(&format!("    {frame}"));
        }
        out.line("");
    }
}

/// `--delimited`: folded lines get a "-" frame where user frames end and kernel frames begin.
/// Process-wide because it is one choice per run, made once by the command line.
static FOLDED_DELIMITER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_folded_delimiter(on: bool) {
    FOLDED_DELIMITER.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The stack's folded frames: comm, user frames root first, then kernel frames root first
/// (with `--delimited`, a "-" frame between the two halves when both are there).
pub fn folded_frames(stack: &Stack) -> String {
    let mut line = sanitize(&stack.comm);
    if line.is_empty() {
        line.push_str("[unknown comm]");
    }
    for frame in stack.user.iter().rev() {
        line.push(';');
        line.push_str(frame);
    }
    if FOLDED_DELIMITER.load(std::sync::atomic::Ordering::Relaxed)
        && !stack.user.is_empty()
        && !stack.kernel.is_empty()
    {
        line.push_str(";-");
    }
    for frame in stack.kernel.iter().rev() {
        line.push(';');
        line.push_str(frame);
    }
    line
}

/// FlameGraph's collapsed format (`comm;frame;...;leaf count`), identical stacks of several
/// threads merged, sorted by stack. Nanoseconds are written as microseconds (as BCC does).
pub fn folded(stacks: &[Stack], unit: Unit) -> Vec<String> {
    folded_with(HashMap::new(), stacks, unit)
}

/// `folded` of `stacks` added to already folded totals (`folded_frames` → value).
pub fn folded_with(mut merged: HashMap<String, u64>, stacks: &[Stack], unit: Unit) -> Vec<String> {
    for stack in stacks {
        *merged.entry(folded_frames(stack)).or_default() += stack.value;
    }
    let mut lines: Vec<(String, u64)> = merged
        .into_iter()
        .map(|(frames, value)| {
            (
                frames,
                if unit == Unit::Nanoseconds {
                    value / 1000
                } else {
                    value
                },
            )
        })
        .filter(|(_, value)| *value > 0)
        .collect();
    lines.sort();
    lines
        .into_iter()
        .map(|(frames, value)| format!("{frames} {value}"))
        .collect()
}

/// Whether thread `pid` of process `tgid` is gone (never for the idle tasks, pid 0).
pub fn thread_gone(tgid: u32, pid: u32) -> bool {
    pid != 0 && !Path::new(&format!("/proc/{tgid}/task/{pid}")).exists()
}

/// Rounds a key of a live task may stay unchanged before interval mode evicts it. One round
/// would tell idle keys from active ones too, but a task sampled less often than every
/// interval (at 49 Hz, one using 1 % of a CPU with a 2 s interval) would have its keys deleted
/// and created again all the time, each time paying a map insert in the kernel and a new
/// symbolization; with two, keys hit at least every other interval stay, and the map holds
/// what the last three intervals saw. More rounds only raise that level.
pub const IDLE_ROUNDS: u32 = 2;

/// Rounds of a cumulative per-task stack map (profile, kstacks, offcputime): what each round
/// adds, and in interval mode the keys to delete so that the map, the stack map and the symbol
/// caches follow recent activity instead of everything a long run saw:
/// - keys of exited threads, one round after the thread was first seen gone from /proc (so its
///   last switch or sample, which can follow the /proc removal by a moment, is in the snapshot
///   the round reported), and only if the thread is still gone (a reused tid keeps its key);
/// - keys of live tasks that did not change for `IDLE_ROUNDS` rounds.
///
/// Keys are deleted with lookup-and-delete (`loader::lookup_and_delete_per_cpu`), and what a
/// key gained between the round's snapshot and its delete is carried into the next round, so
/// every count is reported once. The totals of deleted keys are kept as stacks merged by their
/// folded frames (`comm;frames`, symbolized at once from the names cached while the process
/// lived; pid and tid 0, since several tasks' stacks merge) only when the end of the run needs
/// them (`--svg`, hot/cold's report): bounded by the distinct code paths, not by the tasks or
/// the rounds. With `keeping_threads`, a live thread's stacks keep its pid and tid until it
/// exits (bounded by the live threads' code paths).
pub struct Evictor {
    /// The last snapshot: every key in the map and its value.
    previous: HashMap<TaskStackKey, u64>,
    /// Consecutive rounds each key of `previous` has not changed.
    idle: HashMap<TaskStackKey, u32>,
    /// Keys whose thread was gone at the previous round.
    marked: HashSet<TaskStackKey>,
    /// What deleted keys gained after the snapshot they were last reported from, for the next
    /// round's report.
    carried: HashMap<TaskStackKey, u64>,
    /// Keys whose carried gain the last round reported (their stacks are no longer needed
    /// unless the key came back).
    reported_carried: Vec<TaskStackKey>,
    /// Totals of the deleted keys by folded frames (and pid, tid: 0 unless kept), when kept.
    retired: Option<HashMap<(String, u32, u32), Stack>>,
    /// Whether retired stacks of live threads keep their pid and tid (see `keeping_threads`).
    keep_threads: bool,
    /// Keys deleted so far because their thread exited, and because they were idle.
    pub evicted_exited: u64,
    pub evicted_idle: u64,
}

impl Evictor {
    pub fn new(keep_totals: bool) -> Self {
        Self {
            previous: HashMap::new(),
            idle: HashMap::new(),
            marked: HashSet::new(),
            carried: HashMap::new(),
            reported_carried: Vec::new(),
            retired: keep_totals.then(HashMap::new),
            keep_threads: false,
            evicted_exited: 0,
            evicted_idle: 0,
        }
    }

    /// Retired stacks of live threads keep their pid and tid, merged into pid and tid 0 once
    /// the thread is gone: a report of the whole run (hot/cold) still attributes each live
    /// thread's time to it.
    pub fn keeping_threads(mut self) -> Self {
        self.keep_threads = true;
        self
    }

    /// Takes this round's snapshot (the value of every key in the map) and returns what grew
    /// since the previous one, with what was carried from deleted keys.
    pub fn round(&mut self, current: HashMap<TaskStackKey, u64>) -> HashMap<TaskStackKey, u64> {
        self.reported_carried = self.carried.keys().copied().collect();
        let mut grown = std::mem::take(&mut self.carried);
        let mut idle = HashMap::with_capacity(current.len());
        for (key, &now) in &current {
            let before = self.previous.get(key).copied().unwrap_or(0);
            let rounds = if now > before {
                *grown.entry(*key).or_default() += now - before;
                0
            } else {
                self.idle.get(key).map_or(1, |n| n + 1)
            };
            idle.insert(*key, rounds);
        }
        self.previous = current;
        self.idle = idle;
        grown
    }

    /// After a round's report in interval mode: deletes the keys due (see the type's doc) with
    /// `delete` (a lookup-and-delete returning what the key held then), keeps their totals when
    /// asked to, then deletes the stack ids no remaining key uses and keeps only the cached names that
    /// keys still to be reported use. `remaining` returns the keys in the map, read after the
    /// deletes (a key stored since the snapshot may use a stack of a deleted one), plus any
    /// the tool still needs (offcputime: those of tasks blocked now); `prefetched`, the
    /// (process, user stack) pairs symbolized ahead, follows them, since the names of the
    /// others may be gone from the cache.
    pub fn evict(
        &mut self,
        stack_map: &mut StackMap,
        symbols: &mut Symbols,
        prefetched: &mut HashSet<(u32, i32)>,
        mut delete: impl FnMut(&TaskStackKey) -> Result<Option<u64>>,
        remaining: impl FnOnce() -> Vec<TaskStackKey>,
    ) -> Result<()> {
        let due = self.due();
        let mut raws = Vec::with_capacity(due.len());
        for key in &due {
            let held = delete(key)?;
            raws.push(stack_map.raw(key, self.deleted(key, held)));
        }
        self.retire(symbols, &raws);
        let dropped: Vec<TaskStackKey> =
            due.iter().chain(&self.reported_carried).copied().collect();
        let mut remaining = remaining();
        remaining.extend(self.carried.keys().copied());
        // Stacks no key ever named: offcputime takes both stacks when a task blocks, but a
        // block the filters drop (shorter than --min-block-time), a task that never runs
        // again, or a START entry the LRU recycles leaves them in the map with no key. The
        // soak's STACKS grew ~35 % between its middle and last thirds (1099 -> 1475 entries)
        // from those alone, so every id in the map is a candidate, not just the dropped keys'.
        stack_map.remove_unreferenced(
            stack_map.ids(),
            remaining.iter().flat_map(|k| [k.kstack, k.ustack]),
        );
        if !dropped.is_empty() {
            finish_eviction(&dropped, &remaining, stack_map, symbols);
        }
        let live: HashSet<(u32, i32)> = remaining.iter().map(|k| (k.tgid, k.ustack)).collect();
        // A process symbolized ahead whose key never reached the map (offcputime: a task that
        // blocked and exited without running again records no off-CPU time) has no key to
        // evict; forget it here once it is gone, or the symbolizer keeps the caches of every
        // such process (the soak's ~500 tasks/s grew offcputime by ~3 MiB in 10 minutes).
        let live_tgids: HashSet<u32> = remaining.iter().map(|k| k.tgid).collect();
        let unkeyed_dead: HashSet<u32> = prefetched
            .iter()
            .map(|&(tgid, _)| tgid)
            .filter(|&tgid| tgid != 0 && !live_tgids.contains(&tgid))
            .filter(|tgid| !Path::new(&format!("/proc/{tgid}")).exists())
            .collect();
        symbols.forget_processes(&unkeyed_dead);
        prefetched.retain(|pair| live.contains(pair));
        Ok(())
    }

    /// The keys to delete after this round's report (see the type's doc).
    fn due(&mut self) -> Vec<TaskStackKey> {
        let mut gone: HashMap<(u32, u32), bool> = HashMap::new();
        let mut due = Vec::new();
        let mut marked = HashSet::new();
        for key in self.previous.keys() {
            let is_gone = *gone
                .entry((key.tgid, key.pid))
                .or_insert_with(|| thread_gone(key.tgid, key.pid));
            let exited = is_gone && self.marked.contains(key);
            let idle = self.idle.get(key).is_some_and(|&n| n >= IDLE_ROUNDS);
            if exited || idle {
                due.push(*key);
                if is_gone {
                    self.evicted_exited += 1;
                } else {
                    self.evicted_idle += 1;
                }
            } else if is_gone {
                marked.insert(*key);
            }
        }
        self.marked = marked;
        due
    }

    /// Records that `key` was deleted holding `value` then (None: it was not in the map any
    /// more); returns the key's total, for `retire`. What it gained since this round's snapshot
    /// goes into the next round.
    fn deleted(&mut self, key: &TaskStackKey, value: Option<u64>) -> u64 {
        let seen = self.previous.remove(key).unwrap_or(0);
        self.idle.remove(key);
        let value = value.unwrap_or(seen);
        if value > seen {
            *self.carried.entry(*key).or_default() += value - seen;
        }
        value
    }

    /// Keeps the totals of deleted keys (when kept), symbolized now.
    fn retire(&mut self, symbols: &mut Symbols, raws: &[RawStack]) {
        let keep_threads = self.keep_threads;
        let Some(retired) = self.retired.as_mut() else {
            return;
        };
        let stacks = symbols.resolve_all(raws).into_iter().map(|stack| {
            let live = keep_threads && !thread_gone(stack.pid, stack.tid);
            let (pid, tid) = if live { (stack.pid, stack.tid) } else { (0, 0) };
            Stack { pid, tid, ..stack }
        });
        // The threads retired earlier that are gone now merge too.
        let mut gone: HashMap<(u32, u32), bool> = HashMap::new();
        let exited: Vec<(String, u32, u32)> = retired
            .keys()
            .filter(|(_, pid, tid)| {
                *gone
                    .entry((*pid, *tid))
                    .or_insert_with(|| thread_gone(*pid, *tid))
            })
            .cloned()
            .collect();
        let exited = exited.into_iter().filter_map(|key| retired.remove(&key));
        let merged: Vec<Stack> = exited
            .map(|stack| Stack {
                pid: 0,
                tid: 0,
                ..stack
            })
            .chain(stacks)
            .collect();
        for stack in merged {
            retired
                .entry((folded_frames(&stack), stack.pid, stack.tid))
                .and_modify(|kept| kept.value += stack.value)
                .or_insert(stack);
        }
    }

    /// The totals of the deleted keys (empty when not kept), one stack per folded frames (and
    /// live thread, with `keeping_threads`; pid and tid 0 otherwise).
    pub fn retired_stacks(&self) -> Vec<Stack> {
        self.retired
            .iter()
            .flat_map(|retired| retired.values().cloned())
            .collect()
    }

    /// The last snapshot (the keys still in the map), and the folded totals of the deleted keys
    /// (empty when not kept); together, the totals of the whole run.
    pub fn totals(self) -> (HashMap<TaskStackKey, u64>, HashMap<String, u64>) {
        let mut folded: HashMap<String, u64> = HashMap::new();
        for ((frames, _, _), stack) in self.retired.unwrap_or_default() {
            *folded.entry(frames).or_default() += stack.value;
        }
        (self.previous, folded)
    }
}

/// The rest of an eviction round, once keys are out of the map and unreferenced stacks out of
/// the stack map. `dropped`: the keys deleted (and those whose carried gain was just reported);
/// `remaining`: every key that can still be reported. Keeps the cached names of the
/// addresses remaining keys use (see `Symbols::retain`), and forgets what is cached for the
/// processes that are gone and have no remaining key.
fn finish_eviction(
    dropped: &[TaskStackKey],
    remaining: &[TaskStackKey],
    stack_map: &mut StackMap,
    symbols: &mut Symbols,
) {
    let kernel_ids: HashSet<i32> = remaining.iter().map(|k| k.kstack).collect();
    let user_ids: HashSet<(u32, i32)> = remaining.iter().map(|k| (k.tgid, k.ustack)).collect();
    let mut kernel = HashSet::new();
    for id in kernel_ids {
        if let Frames::Ips(ips) = stack_map.frames(id) {
            kernel.extend(lookup_addrs(&ips));
        }
    }
    let mut user = HashSet::new();
    for (tgid, id) in user_ids {
        if let Frames::Ips(ips) = stack_map.frames(id) {
            user.extend(lookup_addrs(&ips).map(|addr| (tgid, addr)));
        }
    }
    symbols.retain(&kernel, &user);
    let live: HashSet<u32> = remaining.iter().map(|k| k.tgid).collect();
    let dead: HashSet<u32> = dropped
        .iter()
        .map(|k| k.tgid)
        .filter(|&tgid| tgid != 0 && !live.contains(&tgid))
        .filter(|tgid| !Path::new(&format!("/proc/{tgid}")).exists())
        .collect();
    symbols.forget_processes(&dead);
}

/// The kernel function at `address` (a work function, a shrinker, a stopper callback), or the
/// address in hex when it has no symbol; `names` caches the answers between intervals.
pub fn kernel_function_name(
    symbols: &mut Symbols,
    names: &mut HashMap<u64, String>,
    address: u64,
) -> String {
    if let Some(name) = names.get(&address) {
        return name.clone();
    }
    let raw = RawStack {
        comm: String::new(),
        pid: 0,
        tid: 0,
        kernel: Frames::Ips(vec![address]),
        user: Frames::None,
        value: 0,
    };
    let name = symbols
        .resolve(&raw)
        .kernel
        .first()
        .map(|n| n.to_string())
        .filter(|n| n != UNKNOWN)
        .unwrap_or_else(|| format!("{address:#x}"));
    names.insert(address, name.clone());
    name
}

/// One stack as JSON: frames leaf first, `value` in the tool's unit, `pct` of the total.
pub fn stack_json(stack: &Stack, total: u64) -> Value {
    json!({
        "comm": stack.comm,
        "pid": stack.pid,
        "tid": stack.tid,
        "value": stack.value,
        "pct": (percent(stack.value, total) * 100.0).round() / 100.0,
        "kernel": stack.kernel.iter().map(|f| f.as_ref()).collect::<Vec<_>>(),
        "user": stack.user.iter().map(|f| f.as_ref()).collect::<Vec<_>>(),
    })
}

/// The annotation of off-CPU frames in hot/cold folded stacks (`profile --offcpu`), in the
/// style of perf's `_[k]` (kernel) and `_[j]` (JIT) suffixes.
pub const OFFCPU_SUFFIX: &str = "_[o]";

/// Stacks the kernel could not store (their samples are counted under `[lost: ...]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StackLoss {
    /// Stack map full, or the stack walk failed.
    pub lost: u64,
    /// Stacks whose every candidate id held another stack (only in a nearly full store).
    pub collisions: u64,
}

impl StackLoss {
    pub fn read(stats: &StatsReader) -> Self {
        Self {
            lost: stats.slot(STAT_STACK_LOST),
            collisions: stats.slot(STAT_STACK_COLLISIONS),
        }
    }

    /// One stderr line when any stack was lost.
    pub fn report(&self, tool: &str) {
        self.report_with_hint(tool, "a bigger --stack-storage-size helps");
    }

    /// `report` for a tool whose stack map has a fixed size: `hint` says what helps there.
    pub fn report_with_hint(&self, tool: &str, hint: &str) {
        if self.lost + self.collisions > 0 {
            errln!(
                "{tool}: {} stacks lost ({} found every candidate id taken, {} store full or \
                 unreadable); their samples are counted under [lost: ...] ({hint})",
                self.lost + self.collisions,
                self.collisions,
                self.lost
            );
        }
    }

    pub fn json(&self) -> Value {
        json!({"lost": self.lost, "collisions": self.collisions})
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::stacks::STACK_NONE;

    use super::*;

    fn stack(comm: &str, user: &[&str], kernel: &[&str], value: u64) -> Stack {
        Stack {
            comm: comm.into(),
            pid: 1,
            tid: 1,
            kernel: kernel.iter().map(|s| Rc::from(*s)).collect(),
            user: user.iter().map(|s| Rc::from(*s)).collect(),
            value,
        }
    }

    #[test]
    fn folded_is_root_first_and_merged() {
        let stacks = [
            stack("app", &["leaf", "main"], &["do_sys", "entry"], 3),
            stack("app", &["leaf", "main"], &["do_sys", "entry"], 2),
            stack("a;b", &[], &["k"], 1),
        ];
        let lines = folded(&stacks, Unit::Samples);
        assert_eq!(
            lines,
            vec![
                "a:b;k 1".to_string(),
                "app;main;leaf;entry;do_sys 5".to_string()
            ]
        );
    }

    #[test]
    fn merge_sums_equal_names() {
        let merged = merge(vec![
            stack("a", &["f"], &[], 1),
            stack("b", &["g"], &[], 3),
            stack("a", &["f"], &[], 4),
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!((merged[0].comm.as_str(), merged[0].value), ("a", 5));
    }

    #[test]
    fn nanoseconds_fold_to_microseconds() {
        let lines = folded(&[stack("s", &["f"], &[], 1_500_000)], Unit::Nanoseconds);
        assert_eq!(lines, vec!["s;f 1500".to_string()]);
        assert_eq!(format_ns(1_002_000_000), "1.002s");
    }

    fn key(pid: u32, kstack: i32) -> TaskStackKey {
        TaskStackKey {
            tgid: pid,
            pid,
            kstack,
            ustack: STACK_NONE,
            flags: 0,
            _reserved: 0,
            comm: [0; 16],
        }
    }

    #[test]
    fn idle_keys_are_evicted_and_late_gains_carried() {
        let me = std::process::id();
        let (hot, cold) = (key(me, 1), key(me, 2));
        let mut evictor = Evictor::new(false);
        let mut reported = 0;
        let mut round = |evictor: &mut Evictor, values: &[(TaskStackKey, u64)]| {
            let grown = evictor.round(values.iter().copied().collect());
            reported += grown.values().sum::<u64>();
            grown
        };
        assert_eq!(round(&mut evictor, &[(hot, 5), (cold, 3)]).len(), 2);
        assert!(evictor.due().is_empty());
        round(&mut evictor, &[(hot, 6), (cold, 3)]);
        assert!(evictor.due().is_empty(), "idle for one round only");
        round(&mut evictor, &[(hot, 7), (cold, 3)]);
        assert_eq!(evictor.due(), vec![cold]);
        // The delete found 4: one sample landed after the snapshot.
        assert_eq!(evictor.deleted(&cold, Some(4)), 4);
        assert_eq!(evictor.carried.keys().collect::<Vec<_>>(), vec![&cold]);
        // The key came back with 2 more: reported with the carried one.
        let grown = round(&mut evictor, &[(hot, 7), (cold, 2)]);
        assert_eq!(grown.get(&cold), Some(&3));
        assert_eq!(grown.get(&hot), None);
        assert_eq!(evictor.reported_carried, vec![cold]);
        assert!(evictor.carried.is_empty());
        assert_eq!(evictor.evicted_idle, 1);
        // Every count reported once: 7 + 4 deleted + 2 in the map again.
        assert_eq!(reported, 7 + 4 + 2);
        let (totals, _) = evictor.totals();
        assert_eq!(totals.get(&cold), Some(&2));
    }

    #[test]
    fn exited_threads_keys_go_after_one_round() {
        // No such thread: tid u32::MAX - 1 of our own process.
        let gone = TaskStackKey {
            pid: u32::MAX - 1,
            ..key(std::process::id(), 1)
        };
        let mut evictor = Evictor::new(false);
        evictor.round([(gone, 1)].into_iter().collect());
        assert!(evictor.due().is_empty(), "marked first");
        evictor.round([(gone, 2)].into_iter().collect());
        assert_eq!(evictor.due(), vec![gone]);
        assert_eq!(evictor.deleted(&gone, None), 2);
        assert_eq!((evictor.evicted_exited, evictor.evicted_idle), (1, 0));
        assert!(evictor.round(HashMap::new()).is_empty());
    }

    #[test]
    fn retired_stacks_merge_by_frames_and_keep_live_threads() {
        let me = std::process::id();
        let live = key(me, 1);
        // Two exited threads (no such tids in our process) on the same code path, one on another.
        let gone = |tid, kstack| TaskStackKey {
            pid: tid,
            ..key(me, kstack)
        };
        let (a, b, other) = (
            gone(u32::MAX - 1, 2),
            gone(u32::MAX - 2, 2),
            gone(u32::MAX - 3, 3),
        );
        let mut evictor = Evictor::new(true).keeping_threads();
        let values = [(live, 1), (a, 2), (b, 3), (other, 4)];
        evictor.round(values.iter().copied().collect());
        assert!(
            evictor.due().is_empty(),
            "the exited threads' keys are marked first"
        );
        evictor.round(values.iter().copied().collect());
        let mut due = evictor.due();
        due.sort_by_key(|k| k.pid);
        assert_eq!(due, vec![other, b, a]);
        let deleted = |evictor: &mut Evictor, due: &[TaskStackKey]| -> Vec<RawStack> {
            due.iter()
                .map(|k| RawStack {
                    comm: "worker".into(),
                    pid: k.tgid,
                    tid: k.pid,
                    kernel: Frames::Lost(if k.kstack == 3 {
                        libc::ENOMEM
                    } else {
                        libc::EEXIST
                    }),
                    user: Frames::None,
                    value: evictor.deleted(k, None),
                })
                .collect()
        };
        let mut raws = deleted(&mut evictor, &due);
        // The live key, unchanged for IDLE_ROUNDS rounds after its first, goes too.
        evictor.round([(live, 1)].into_iter().collect());
        let due = evictor.due();
        assert_eq!(due, vec![live]);
        raws.extend(deleted(&mut evictor, &due));
        evictor.retire(&mut Symbols::new(), &raws);
        let mut retired = evictor.retired_stacks();
        retired.sort_by_key(|s| s.value);
        let got: Vec<(u32, u32, u64)> = retired.iter().map(|s| (s.pid, s.tid, s.value)).collect();
        assert_eq!(
            got,
            vec![(me, me, 1), (0, 0, 4), (0, 0, 5)],
            "a and b merged with pid and tid 0, the live thread kept"
        );
        let (remaining, folded) = evictor.totals();
        assert!(remaining.is_empty());
        // Folded totals merge the live thread's stack with the exited ones of the same frames.
        assert_eq!(folded.get("worker;[lost: stack store ids taken]"), Some(&6));
        assert_eq!(folded.len(), 2);
    }

    #[test]
    fn lost_stacks_are_frames() {
        let mut symbols = Symbols::new();
        let raw = RawStack {
            comm: "x".into(),
            pid: 1,
            tid: 1,
            kernel: Frames::Lost(libc::EEXIST),
            user: Frames::None,
            value: 1,
        };
        let s = symbols.resolve(&raw);
        assert_eq!(s.kernel[0].as_ref(), "[lost: stack store ids taken]");
        assert!(s.user.is_empty());
    }
}

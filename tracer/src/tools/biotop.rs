//! biotop: block IO by the task that issued it and by device (IOs, bytes, direction, latency
//! issue → complete, or queue → complete with `-Q`; log2 histograms per device with `-D`), and
//! with `--jbd2` the ext4 journal: commits per device with their phase times, and the tasks
//! that open the most journal handles and that fsync.
//!
//! Kernel threads keep their own rows (jbd2/loop0-8, kworker/u4:2-flush-7:0, kswapd0): IO is
//! charged to the task running at block_io_start (Linux 6.5+) or block_rq_insert — where the
//! request is created or queued, in its submitter's context — not to whoever issues or
//! completes it, so the journal thread's commit writes are jbd2's and a direct write is its
//! writer's.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};
use aya::{Ebpf, maps::MapData};
use clap::Args;
use serde_json::{Value, json};
use tracer_common::{
    biotop::{
        BiotopConfig, CommitStats, IoKey, IoStats, RW_NAMES, RqFields, RqHead, RunStatsFields,
        TaskKey,
    },
    comm::CommFilter,
    hist::Log2Hist,
};

use crate::{
    attach::{self, Attachment, LadderError, Mechanism, Rung, Target},
    btf::KernelBtf,
    cgroup::{Controller, Resolver},
    filters,
    hist::Log2,
    loader::{self, Stats, StatsReader, objects},
    output::{Out, comm_str, end_record, hms_now, with_schema},
    session::{self, IntervalArgs},
    tools::{
        CommonArgs,
        runqlat::{report_drops, tick, ticker},
    },
    tracefs,
};

const TOOL: &str = "biotop";

/// Block IO by issuing task and device: IOs, bytes, latency; --jbd2: ext4 journal commits and who causes them.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    biotop 1                 every second: IO per task and device\n  \
    biotop -D 5 1            one 5-second report with latency histograms per device\n  \
    biotop -Q --device sda   only sda; latency includes the time queued\n  \
    biotop -G 1              with each task's blkio cgroup\n  \
    biotop --jbd2 1          ext4 journal commits, and who opens handles and fsyncs\n  \
    biotop --json 1 3        JSON lines")]
pub struct BiotopArgs {
    /// Only IO issued by this process (thread group id).
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<u32>,
    /// Only tasks with this comm (exact, or a prefix with a trailing '*': 'jbd2/*').
    #[arg(long, value_name = "COMM")]
    pub comm: Option<String>,
    /// Only this block device (a name in /sys/class/block: sda, nvme0n1, loop0).
    #[arg(long, value_name = "NAME")]
    pub device: Option<String>,
    /// Latency from the time the request was queued (block_io_start / block_rq_insert),
    /// not from its issue to the driver.
    #[arg(short = 'Q', long = "queued")]
    pub queued: bool,
    /// A log2 latency histogram per device.
    #[arg(short = 'D', long = "dist")]
    pub dist: bool,
    /// A CGROUP column: each task's blkio cgroup (v2: its cgroup).
    #[arg(short = 'G', long = "show-cgroup")]
    pub show_cgroup: bool,
    /// The ext4 journal view: commits per device with phase times, handle openers, fsyncs.
    #[arg(long, conflicts_with_all = ["queued", "dist"])]
    pub jbd2: bool,
    /// Print only the N first rows of each table.
    #[arg(short = 'n', long = "top", value_name = "N", default_value_t = 20)]
    pub top: usize,
    #[command(flatten)]
    pub interval: IntervalArgs,
    #[command(flatten)]
    pub cgroup: crate::cgroup::CgroupArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: BiotopArgs) -> Result<()> {
    args.cgroup.install(&crate::btf::KernelBtf::new())?;
    if let Some(pid) = args.pid {
        session::check_pid(pid)?;
    }
    let comm = filters::comm_filter(args.comm.as_deref())?;
    let device = args.device.as_deref().map(Device::by_name).transpose()?;
    if args.jbd2
        && let Some(device) = &device
        && journal_name(&device.name).is_none()
    {
        usage_bail!(
            "--device {}: no jbd2 journal on it (/proc/fs/jbd2/{}-* missing: not a mounted ext4 with a journal)",
            device.name,
            device.name
        );
    }
    let force = args.common.attach_for(TOOL, &[Mechanism::Tracepoint])?;
    let mut config = BiotopConfig {
        tgid: args.pid.unwrap_or(0),
        dev: device.as_ref().map_or(0, |d| d.kernel_dev),
        queued: args.queued.into(),
        hist: args.dist.into(),
        ..BiotopConfig::DEFAULT
    };
    let btf = KernelBtf::new();
    let (mut ebpf, attached) = if args.jbd2 {
        config.handle_dev = required_field("jbd2", "jbd2_handle_start", "dev")?;
        config.sync_dev = required_field("ext4", "ext4_sync_file_enter", "dev")?;
        load_jbd2(&btf, config, force, true)?
    } else {
        load_block(&btf, config, force)?
    };
    if args.common.verbose {
        for a in &attached {
            errln!("{TOOL}: {}", a.summary());
        }
    }
    let hz = if args.jbd2 { kernel_hz() } else { 0 };
    let view = View {
        args: &args,
        comm,
        devices: Devices::default(),
        cgroups: Resolver::default(),
        hz,
    };
    view.report(&mut ebpf, &attached).await
}

// ---- tracepoint fields and attaching --------------------------------------------------------

/// Loads biotop's object for block IO (`config`'s filters and histogram switch; the record
/// offsets are filled in here) and attaches it; serve's block collector shares it.
pub fn load_block(
    btf: &KernelBtf,
    mut config: BiotopConfig,
    force: Option<Mechanism>,
) -> Result<(Ebpf, Vec<Attachment>)> {
    // Absent events keep zero offsets; their programs are never attached.
    config.io_start = rq_fields("block_io_start").unwrap_or_default();
    config.insert = rq_fields("block_rq_insert").unwrap_or_default();
    config.issue = rq_fields("block_rq_issue")?;
    config.complete = rq_fields("block_rq_complete")?;
    let head = |f: &RqFields| {
        f.dev == RqHead::DEV && f.sector == RqHead::SECTOR && f.nr_sector == RqHead::NR_SECTOR
    };
    // Absent events (zero offsets) have no program to read them.
    let absent = RqFields::default();
    config.rq_head = [
        &config.io_start,
        &config.insert,
        &config.issue,
        &config.complete,
    ]
    .iter()
    .all(|f| **f == absent || head(f))
    .into();
    let mut ebpf = loader::load(objects::BIOTOP, |l| {
        l.override_global("BIOTOP_CONFIG", &config, true);
    })?;
    let attached = attach_block(&mut ebpf, btf, force)?;
    Ok((ebpf, attached))
}

/// Loads biotop's object for the jbd2 view: commits (jbd2_run_stats), and with `tasks` the
/// handle starts and fsyncs (`config.handle_dev`/`sync_dev` set by the caller). serve's jbd2
/// collector takes the commits only.
pub fn load_jbd2(
    btf: &KernelBtf,
    mut config: BiotopConfig,
    force: Option<Mechanism>,
    tasks: bool,
) -> Result<(Ebpf, Vec<Attachment>)> {
    config.run_stats = run_stats_fields()?;
    let mut ebpf = loader::load(objects::BIOTOP, |l| {
        l.override_global("BIOTOP_CONFIG", &config, true);
    })?;
    let attached = attach_jbd2(&mut ebpf, btf, force, tasks)?;
    Ok((ebpf, attached))
}

fn required_field(category: &str, event: &str, name: &str) -> Result<u32> {
    tracefs::field_offset(category, event, name).map_err(|e| {
        if category == "ext4" || category == "jbd2" {
            anyhow!("{e:#} (the jbd2 view needs ext4 and jbd2 loaded: mount an ext4 file system, or modprobe ext4)")
        } else {
            e
        }
    })
}

/// Offsets of a `block_rq`-class record; the sizes are checked because the programs read
/// fixed-size values (rwbs: its first 8 bytes, the shortest it has been).
fn rq_fields(event: &str) -> Result<RqFields> {
    let fields = tracefs::fields("block", event)?;
    let find = |name: &str, min: u32, max: u32| -> Result<u32> {
        let f = fields.iter().find(|f| f.name == name).ok_or_else(|| {
            anyhow!("tracepoint block:{event} has no field {name} on this kernel")
        })?;
        if f.size < min || f.size > max {
            return Err(anyhow!(
                "tracepoint block:{event} field {name} is {} bytes here (biotop reads {min})",
                f.size
            ));
        }
        Ok(f.offset)
    };
    Ok(RqFields {
        dev: find("dev", 4, 4)?,
        sector: find("sector", 8, 8)?,
        nr_sector: find("nr_sector", 4, 4)?,
        rwbs: find("rwbs", 8, 64)?,
    })
}

fn run_stats_fields() -> Result<RunStatsFields> {
    let field = |name: &str| required_field("jbd2", "jbd2_run_stats", name);
    Ok(RunStatsFields {
        dev: field("dev")?,
        running: field("running")?,
        locked: field("locked")?,
        flushing: field("flushing")?,
        logging: field("logging")?,
        handle_count: field("handle_count")?,
        blocks: field("blocks")?,
        blocks_logged: field("blocks_logged")?,
    })
}

fn attach_one(
    ebpf: &mut Ebpf,
    btf: &KernelBtf,
    category: &str,
    event: &str,
    program: &str,
    force: Option<Mechanism>,
) -> Result<Attachment, LadderError> {
    let rungs = [Rung {
        mechanism: Mechanism::Tracepoint,
        program,
    }];
    attach::attach(
        ebpf,
        btf,
        Target::Tracepoint { category, event },
        &rungs,
        force,
    )
}

/// The request's owner from block_io_start where the kernel has it (6.5+: one event per
/// request, in the submitter's context), else from block_rq_insert; then issue and complete.
fn attach_block(
    ebpf: &mut Ebpf,
    btf: &KernelBtf,
    force: Option<Mechanism>,
) -> Result<Vec<Attachment>> {
    let owner = match attach_one(
        ebpf,
        btf,
        "block",
        "block_io_start",
        "biotop_io_start",
        force,
    ) {
        Ok(a) => a,
        Err(io_start) => {
            let mut insert = attach_one(
                ebpf,
                btf,
                "block",
                "block_rq_insert",
                "biotop_rq_insert",
                force,
            )?;
            // Say why the first choice was not used (-v).
            insert
                .declined
                .extend(io_start.declined.into_iter().map(|d| attach::Declined {
                    mechanism: d.mechanism,
                    reason: format!("block:block_io_start: {}", d.reason),
                }));
            insert
        }
    };
    let issue = attach_one(
        ebpf,
        btf,
        "block",
        "block_rq_issue",
        "biotop_rq_issue",
        force,
    )?;
    let complete = attach_one(
        ebpf,
        btf,
        "block",
        "block_rq_complete",
        "biotop_rq_complete",
        force,
    )?;
    Ok(vec![owner, issue, complete])
}

fn attach_jbd2(
    ebpf: &mut Ebpf,
    btf: &KernelBtf,
    force: Option<Mechanism>,
    tasks: bool,
) -> Result<Vec<Attachment>> {
    let commits = attach_one(
        ebpf,
        btf,
        "jbd2",
        "jbd2_run_stats",
        "biotop_run_stats",
        force,
    )?;
    if !tasks {
        return Ok(vec![commits]);
    }
    Ok(vec![
        commits,
        attach_one(
            ebpf,
            btf,
            "jbd2",
            "jbd2_handle_start",
            "biotop_handle_start",
            force,
        )?,
        attach_one(
            ebpf,
            btf,
            "ext4",
            "ext4_sync_file_enter",
            "biotop_sync_file",
            force,
        )?,
    ])
}

/// One of the object's maps (the views that do not use a map leave it empty).
pub fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("{name} map missing (build bug)"))
}

// ---- devices ----------------------------------------------------------------------------------

/// The kernel's dev_t in tracepoint records: major << 20 | minor (MINORBITS).
fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xfffff)
}

fn major_minor(kernel_dev: u32) -> (u32, u32) {
    (kernel_dev >> 20, kernel_dev & 0xfffff)
}

#[derive(Clone, Debug)]
struct Device {
    name: String,
    kernel_dev: u32,
}

impl Device {
    /// `sda` → its dev_t from /sys/class/block/sda/dev ("8:0").
    fn by_name(name: &str) -> Result<Self> {
        let bare = name.strip_prefix("/dev/").unwrap_or(name);
        let path = Path::new("/sys/class/block").join(bare).join("dev");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) if !bare.is_empty() && !bare.contains('/') => text,
            _ => usage_bail!(
                "--device {name}: no such block device (the names are in /sys/class/block, as lsblk lists them)"
            ),
        };
        let (major, minor) = text
            .trim()
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .ok_or_else(|| anyhow!("cannot parse {}: {text:?}", path.display()))?;
        Ok(Self {
            name: bare.to_string(),
            kernel_dev: kernel_dev(major, minor),
        })
    }
}

/// Device names from dev_t through /sys/dev/block/MAJ:MIN (a symlink to the device's folder).
#[derive(Default)]
pub struct Devices {
    names: HashMap<u32, String>,
}

impl Devices {
    pub fn name(&mut self, kernel_dev: u32) -> String {
        self.names
            .entry(kernel_dev)
            .or_insert_with(|| {
                let (major, minor) = major_minor(kernel_dev);
                std::fs::read_link(format!("/sys/dev/block/{major}:{minor}"))
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| format!("{major}:{minor}"))
            })
            .clone()
    }
}

/// The /proc/fs/jbd2 entry of a device's journal ("loop0-8": device name, journal inode).
pub fn journal_name(device: &str) -> Option<String> {
    let prefix = format!("{device}-");
    std::fs::read_dir("/proc/fs/jbd2")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| {
            n.strip_prefix(&prefix)
                .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit()))
        })
}

/// The kernel's HZ (jbd2 keeps its phase times in jiffies): from the kernel config when it is
/// readable, else measured from /proc/timer_list (jiffies against the monotonic clock over
/// 200 ms, rounded to the nearest HZ Linux offers). 0: unknown (times shown in jiffies).
pub fn kernel_hz() -> u64 {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if let Ok(text) = std::fs::read_to_string(format!("/boot/config-{}", release.trim()))
        && let Some(hz) = text
            .lines()
            .find_map(|l| l.strip_prefix("CONFIG_HZ="))
            .and_then(|v| v.trim().parse().ok())
    {
        return hz;
    }
    let sample = || -> Option<(u64, u64)> {
        let text = std::fs::read_to_string("/proc/timer_list").ok()?;
        let now = text.lines().find_map(|l| {
            l.strip_prefix("now at ")?
                .strip_suffix(" nsecs")?
                .parse::<u64>()
                .ok()
        })?;
        let jiffies = text
            .lines()
            .find_map(|l| l.strip_prefix("jiffies: ")?.trim().parse::<u64>().ok())?;
        Some((now, jiffies))
    };
    let Some((t0, j0)) = sample() else { return 0 };
    std::thread::sleep(Duration::from_millis(200));
    let Some((t1, j1)) = sample() else { return 0 };
    let elapsed = t1.saturating_sub(t0);
    if elapsed == 0 {
        return 0;
    }
    let measured = (j1.saturating_sub(j0)) as f64 * 1e9 / elapsed as f64;
    [100u64, 250, 300, 1000]
        .into_iter()
        .min_by(|a, b| {
            (*a as f64 - measured)
                .abs()
                .total_cmp(&(*b as f64 - measured).abs())
        })
        .unwrap_or(0)
}

/// A task's name as ps shows it while it lives, else the comm the kernel side saw. A kworker
/// is named by its pool and number alone (kworker/u8:2): /proc appends the workqueue it
/// served *last* (kworker/u8:2-ext4-rsv-conversion), which need not be the one whose IO is
/// on the row.
fn task_name(pid: u32, comm: &str) -> String {
    if comm.starts_with("kworker/") {
        return comm.to_string();
    }
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(name) if name.trim_end().starts_with(comm) => name.trim_end().to_string(),
        _ => comm.to_string(),
    }
}

/// `name` in a text column `width` wide: a longer one is cut, its last character a `+` (as
/// top marks a truncated field), so the columns after it stay in place.
fn fit(name: &str, width: usize) -> String {
    if name.chars().count() <= width {
        return name.to_string();
    }
    let mut cut: String = name.chars().take(width.saturating_sub(1)).collect();
    cut.push('+');
    cut
}

// ---- the report loop --------------------------------------------------------------------------

struct View<'a> {
    args: &'a BiotopArgs,
    comm: CommFilter,
    devices: Devices,
    cgroups: Resolver,
    hz: u64,
}

/// (device, process, direction, comm) of an IO row.
pub type IoRowKey = (u32, u32, u32, [u8; 16]);
/// (device, process, comm) of a handle or fsync row.
type TaskRowKey = (u32, u32, [u8; 16]);

/// One row of the IO table: a process (its comm as the kernel saw it) on a device, one direction.
#[derive(Clone, Debug, Default)]
pub struct IoRow {
    pub ios: u64,
    pub bytes: u64,
    pub latency_ns: u64,
    pub max_ns: u64,
    pub threads: std::collections::BTreeSet<u32>,
}

pub fn fold_io(drained: Vec<(IoKey, Vec<IoStats>)>) -> BTreeMap<IoRowKey, IoRow> {
    let mut rows: BTreeMap<IoRowKey, IoRow> = BTreeMap::new();
    for (key, per_cpu) in drained {
        let row = rows
            .entry((key.dev, key.tgid, key.rw, key.comm))
            .or_default();
        for s in per_cpu {
            row.ios += s.ios;
            row.bytes += s.bytes;
            row.latency_ns += s.latency_ns;
            row.max_ns = row.max_ns.max(s.max_ns);
        }
        row.threads.insert(key.pid);
    }
    rows
}

fn fold_tasks(drained: Vec<(TaskKey, Vec<u64>)>) -> BTreeMap<TaskRowKey, u64> {
    let mut rows = BTreeMap::new();
    for (key, per_cpu) in drained {
        *rows.entry((key.dev, key.tgid, key.comm)).or_insert(0) += per_cpu.iter().sum::<u64>();
    }
    rows
}

pub fn fold_commits(drained: Vec<(u32, Vec<CommitStats>)>) -> BTreeMap<u32, CommitStats> {
    let mut rows = BTreeMap::new();
    for (dev, per_cpu) in drained {
        let total: &mut CommitStats = rows.entry(dev).or_default();
        for s in per_cpu {
            total.commits += s.commits;
            total.running += s.running;
            total.locked += s.locked;
            total.flushing += s.flushing;
            total.logging += s.logging;
            total.handles += s.handles;
            total.blocks += s.blocks;
            total.blocks_logged += s.blocks_logged;
            total.max_commit = total.max_commit.max(s.max_commit);
        }
    }
    rows
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl View<'_> {
    async fn report(mut self, ebpf: &mut Ebpf, attached: &[Attachment]) -> Result<()> {
        let stats = StatsReader::take(ebpf)?;
        let maps: Vec<(&str, MapData)> = ["IO", "LATENCY", "COMMITS", "HANDLES", "FSYNCS"]
            .into_iter()
            .map(|name| -> Result<(&str, MapData)> {
                match take_map(ebpf, name)? {
                    aya::maps::Map::PerCpuHashMap(data) => Ok((name, data)),
                    _ => Err(anyhow!("{name} is not a per-CPU hash map (build bug)")),
                }
            })
            .collect::<Result<_>>()?;
        let map = |name: &str| -> &MapData {
            &maps
                .iter()
                .find(|(n, _)| *n == name)
                .expect("taken above")
                .1
        };
        let what = if self.args.jbd2 {
            "ext4 journal commits, handles and fsyncs"
        } else {
            "block IO"
        };
        let how: Vec<String> = attached.iter().map(|a| a.target.clone()).collect();
        errln!("Tracing {what} ({})... Hit Ctrl-C to end.", how.join(", "));
        let mut out = Out::new();
        let stop = session::stop_requested(self.args.common.duration.duration);
        tokio::pin!(stop);
        let mut ticker = ticker(self.args.interval.interval);
        let mut printed = 0u64;
        let mut reported = Stats::default();
        let mut since = Instant::now();
        loop {
            let stopped = tokio::select! {
                reason = &mut stop => { reason?; true }
                _ = tick(&mut ticker) => false,
            };
            let elapsed = since.elapsed();
            since = Instant::now();
            self.cgroups.clear();
            if self.args.jbd2 {
                let commits = fold_commits(loader::drain_per_cpu(map("COMMITS"))?);
                let handles = fold_tasks(loader::drain_per_cpu(map("HANDLES"))?);
                let fsyncs = fold_tasks(loader::drain_per_cpu(map("FSYNCS"))?);
                self.print_jbd2(&commits, &handles, &fsyncs, elapsed, &mut out);
            } else {
                let io = fold_io(loader::drain_per_cpu(map("IO"))?);
                let hists: Vec<(u32, Vec<Log2Hist>)> = if self.args.dist {
                    loader::drain_per_cpu(map("LATENCY"))?
                } else {
                    Vec::new()
                };
                self.print_io(&io, &hists, elapsed, &mut out);
            }
            report_drops(TOOL, &stats.read(), &mut reported);
            printed += 1;
            if stopped || out.closed() || self.args.interval.count.is_some_and(|c| printed >= c) {
                break;
            }
        }
        let end = stats.read();
        if self.args.common.output.json {
            out.json(&end_record(
                TOOL,
                attached.iter().map(Attachment::json).collect(),
                end.map_full,
                end.read_errors,
                json!({}),
            ));
        }
        out.flush();
        Ok(())
    }

    /// On a terminal with an interval: home, clear and a title line, as top redraws; else
    /// the shared `-T` interval header.
    fn header(&self, out: &mut Out, secs: f64) {
        if out.is_tty() && self.args.interval.interval.is_some() {
            out.line(&format!(
                "\x1b[H\x1b[2Jbiotop{} - {}  interval {secs:.2}s{}",
                if self.args.jbd2 { " --jbd2" } else { "" },
                hms_now(),
                if self.args.queued {
                    "  latency from queue"
                } else {
                    ""
                }
            ));
        } else {
            out.interval_header(self.args.common.output.timestamp);
        }
    }

    fn print_io(
        &mut self,
        io: &BTreeMap<IoRowKey, IoRow>,
        hists: &[(u32, Vec<Log2Hist>)],
        elapsed: Duration,
        out: &mut Out,
    ) {
        let json = self.args.common.output.json;
        // Per device and direction totals (before the comm filter: the device's whole load).
        let mut per_device: BTreeMap<String, [(u64, u64, u64); 4]> = BTreeMap::new();
        for ((dev, _, rw, _), row) in io {
            let name = self.devices.name(*dev);
            let slot = &mut per_device.entry(name).or_default()[*rw as usize & 3];
            slot.0 += row.ios;
            slot.1 += row.bytes;
            slot.2 += row.latency_ns;
        }
        let mut rows: Vec<(&IoRowKey, &IoRow)> = io
            .iter()
            .filter(|((_, _, _, comm), _)| self.comm.matches(comm))
            .collect();
        rows.sort_by(|a, b| b.1.bytes.cmp(&a.1.bytes).then(b.1.ios.cmp(&a.1.ios)));
        let secs = elapsed.as_secs_f64().max(1e-9);
        let unit = "usecs";
        if json {
            let devices: Vec<Value> = per_device
                .iter()
                .map(|(name, dirs)| {
                    json!({"device": name,
                           "read_ios": dirs[0].0, "read_bytes": dirs[0].1,
                           "write_ios": dirs[1].0, "write_bytes": dirs[1].1,
                           "discard_ios": dirs[2].0, "discard_bytes": dirs[2].1,
                           "other_ios": dirs[3].0})
                })
                .collect();
            let tasks: Vec<Value> = rows
                .iter()
                .take(self.args.top)
                .map(|((dev, tgid, rw, comm), row)| {
                    let comm = comm_str(comm);
                    let mut v = json!({
                        "pid": tgid, "comm": task_name(*tgid, &comm), "device": self.devices.name(*dev),
                        "rw": RW_NAMES[*rw as usize & 3], "ios": row.ios, "bytes": row.bytes,
                        "avg_latency_ns": row.latency_ns.checked_div(row.ios).unwrap_or(0),
                        "max_latency_ns": row.max_ns, "threads": row.threads.len(),
                    });
                    if self.args.show_cgroup {
                        v["cgroup"] = json!(self.cgroups.label(*tgid, Controller::Blkio));
                    }
                    v
                })
                .collect();
            let mut record = json!({"type": "interval", "time": hms_now(),
                "interval_ns": elapsed.as_nanos() as u64, "queued": self.args.queued,
                "devices": devices, "tasks": tasks});
            if self.args.dist {
                let h: Vec<Value> = hists
                    .iter()
                    .map(|(dev, per_cpu)| {
                        let hist = Log2::from_per_cpu(per_cpu.iter());
                        json!({"device": self.devices.name(*dev), "count": hist.count(),
                               "p50": hist.percentile(50.0), "p99": hist.percentile(99.0),
                               "hist": hist.to_json(unit)})
                    })
                    .collect();
                record["histograms"] = json!(h);
            }
            out.json(&with_schema(TOOL, record));
            out.flush();
            return;
        }
        self.header(out, secs);
        out.line(&format!(
            "{:<12} {:>7} {:>10} {:>7} {:>10} {:>9}",
            "DEVICE", "R_IOS", "R_KB/s", "W_IOS", "W_KB/s", "AVG_ms"
        ));
        for (name, dirs) in &per_device {
            let ios: u64 = dirs.iter().map(|d| d.0).sum();
            let latency: u64 = dirs.iter().map(|d| d.2).sum();
            out.line(&format!(
                "{:<12} {:>7} {:>10.1} {:>7} {:>10.1} {:>9.3}",
                name,
                dirs[0].0,
                dirs[0].1 as f64 / 1024.0 / secs,
                dirs[1].0,
                dirs[1].1 as f64 / 1024.0 / secs,
                ms(latency.checked_div(ios).unwrap_or(0)),
            ));
        }
        out.line("");
        let cgroup_header = if self.args.show_cgroup {
            "  CGROUP"
        } else {
            ""
        };
        out.line(&format!(
            "{:>7} {:<26} {:<10} {} {:>7} {:>10} {:>9} {:>9}{cgroup_header}",
            "PID", "COMM", "DEVICE", "D", "IOS", "KBYTES", "AVG_ms", "MAX_ms"
        ));
        for ((dev, tgid, rw, comm), row) in rows.iter().take(self.args.top) {
            let cgroup = if self.args.show_cgroup {
                format!("  {}", self.cgroups.label(*tgid, Controller::Blkio))
            } else {
                String::new()
            };
            out.line(&format!(
                "{:>7} {:<26} {:<10} {} {:>7} {:>10} {:>9.3} {:>9.3}{cgroup}",
                tgid,
                fit(&task_name(*tgid, &comm_str(comm)), 26),
                self.devices.name(*dev),
                RW_NAMES[*rw as usize & 3],
                row.ios,
                row.bytes / 1024,
                ms(row.latency_ns.checked_div(row.ios).unwrap_or(0)),
                ms(row.max_ns),
            ));
        }
        if rows.len() > self.args.top {
            out.line(&format!(
                "... {} more rows (-n to show more)",
                rows.len() - self.args.top
            ));
        }
        if rows.is_empty() {
            out.line("(no IO completed)");
        }
        for (dev, per_cpu) in hists {
            let hist = Log2::from_per_cpu(per_cpu.iter());
            out.line(&format!(
                "\ndevice = {} ({}latency)",
                self.devices.name(*dev),
                if self.args.queued { "queued " } else { "" }
            ));
            for line in hist.render(unit).lines() {
                out.line(line);
            }
        }
        out.line("");
        out.flush();
    }

    fn jiffies_ms(&self, jiffies: u64) -> f64 {
        if self.hz == 0 {
            jiffies as f64
        } else {
            jiffies as f64 * 1000.0 / self.hz as f64
        }
    }

    fn print_jbd2(
        &mut self,
        commits: &BTreeMap<u32, CommitStats>,
        handles: &BTreeMap<TaskRowKey, u64>,
        fsyncs: &BTreeMap<TaskRowKey, u64>,
        elapsed: Duration,
        out: &mut Out,
    ) {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ranked = |map: &BTreeMap<TaskRowKey, u64>, comm: &CommFilter| {
            let mut rows: Vec<(TaskRowKey, u64)> = map
                .iter()
                .filter(|((_, _, c), _)| comm.matches(c))
                .map(|(k, v)| (*k, *v))
                .collect();
            rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            rows
        };
        let handles = ranked(handles, &self.comm);
        let fsyncs = ranked(fsyncs, &self.comm);
        let journal = |devices: &mut Devices, dev: u32| -> (String, String) {
            let name = devices.name(dev);
            let journal = journal_name(&name).unwrap_or_else(|| name.clone());
            (name, journal)
        };
        let unit = if self.hz == 0 { "jiffies" } else { "ms" };
        // Devices whose fsyncs (or handles) were seen but that have no jbd2 journal: ext4
        // without one, whose fsyncs flush the device without any commit.
        let mut no_journal: Vec<String> = fsyncs
            .iter()
            .chain(&handles)
            .map(|((dev, _, _), _)| self.devices.name(*dev))
            .filter(|name| journal_name(name).is_none())
            .collect();
        no_journal.sort();
        no_journal.dedup();
        if self.args.common.output.json {
            let per_journal: Vec<Value> = commits
                .iter()
                .map(|(dev, c)| {
                    let (device, journal) = journal(&mut self.devices, *dev);
                    json!({"device": device, "journal": journal, "commits": c.commits,
                           "handles": c.handles, "blocks": c.blocks,
                           "blocks_logged": c.blocks_logged,
                           "running_ms": self.jiffies_ms(c.running),
                           "locked_ms": self.jiffies_ms(c.locked),
                           "flushing_ms": self.jiffies_ms(c.flushing),
                           "logging_ms": self.jiffies_ms(c.logging),
                           "max_commit_ms": self.jiffies_ms(c.max_commit)})
                })
                .collect();
            let tasks = |rows: &[(TaskRowKey, u64)],
                         devices: &mut Devices,
                         cgroups: &mut Resolver|
             -> Vec<Value> {
                rows.iter()
                    .take(self.args.top)
                    .map(|((dev, tgid, comm), count)| {
                        let mut v = json!({"device": devices.name(*dev), "pid": tgid,
                            "comm": task_name(*tgid, &comm_str(comm)), "count": count});
                        if self.args.show_cgroup {
                            v["cgroup"] = json!(cgroups.label(*tgid, Controller::Blkio));
                        }
                        v
                    })
                    .collect()
            };
            let handles_json = tasks(&handles, &mut self.devices, &mut self.cgroups);
            let fsyncs_json = tasks(&fsyncs, &mut self.devices, &mut self.cgroups);
            out.json(&with_schema(
                TOOL,
                json!({"type": "jbd2", "time": hms_now(),
                       "interval_ns": elapsed.as_nanos() as u64,
                       "hz": self.hz, "journals": per_journal, "no_journal": no_journal,
                       "handles": handles_json, "fsyncs": fsyncs_json}),
            ));
            out.flush();
            return;
        }
        self.header(out, secs);
        out.line(&format!(
            "{:<14} {:>7} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}   (phase times: average per commit, {unit})",
            "JOURNAL", "COMMITS", "HANDLES", "BLOCKS", "RUNNING", "LOCKED", "FLUSHING", "LOGGING", "MAX"
        ));
        for (dev, c) in commits {
            let (_, journal) = journal(&mut self.devices, *dev);
            let avg = |total: u64| self.jiffies_ms(total) / c.commits.max(1) as f64;
            out.line(&format!(
                "{:<14} {:>7} {:>8} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                journal,
                c.commits,
                c.handles,
                c.blocks,
                avg(c.running),
                avg(c.locked),
                avg(c.flushing),
                avg(c.logging),
                self.jiffies_ms(c.max_commit),
            ));
        }
        if commits.is_empty() {
            out.line("(no journal commits)");
        }
        if !no_journal.is_empty() {
            out.line(&format!(
                "({} {} no jbd2 journal — ext4 without one: {} fsyncs below flush the device \
                 with no journal commit)",
                no_journal.join(", "),
                if no_journal.len() == 1 { "has" } else { "have" },
                if no_journal.len() == 1 {
                    "its"
                } else {
                    "their"
                }
            ));
        }
        let cgroup_header = if self.args.show_cgroup {
            "  CGROUP"
        } else {
            ""
        };
        for (title, rows) in [("HANDLES", &handles), ("FSYNCS", &fsyncs)] {
            out.line("");
            out.line(&format!(
                "{:>7} {:<26} {:<10} {:>9} {:>9}{cgroup_header}",
                "PID", "COMM", "DEVICE", title, "/s"
            ));
            for ((dev, tgid, comm), count) in rows.iter().take(self.args.top) {
                let cgroup = if self.args.show_cgroup {
                    format!("  {}", self.cgroups.label(*tgid, Controller::Blkio))
                } else {
                    String::new()
                };
                out.line(&format!(
                    "{:>7} {:<26} {:<10} {:>9} {:>9.1}{cgroup}",
                    tgid,
                    fit(&task_name(*tgid, &comm_str(comm)), 26),
                    self.devices.name(*dev),
                    count,
                    *count as f64 / secs
                ));
            }
            if rows.is_empty() {
                out.line("(none)");
            }
        }
        out.line("");
        out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kworkers_are_named_by_pool_and_long_names_fit() {
        // Whatever /proc says of the last workqueue, a kworker is its pool and number.
        assert_eq!(task_name(1, "kworker/u8:2"), "kworker/u8:2");
        assert_eq!(fit("short", 26), "short");
        let long = "a-very-long-process-name-of-thirty-chars";
        assert_eq!(fit(long, 26).chars().count(), 26);
        assert!(fit(long, 26).ends_with('+'));
    }

    #[test]
    fn dev_t_round_trips() {
        assert_eq!(kernel_dev(7, 0), 7 << 20);
        assert_eq!(major_minor(kernel_dev(259, 3)), (259, 3));
    }

    #[test]
    fn directions_from_rwbs() {
        use tracer_common::biotop::{RW_DISCARD, RW_OTHER, RW_READ, RW_WRITE, rw_of};
        let rwbs = |s: &str| {
            let mut b = [0u8; 8];
            b[..s.len()].copy_from_slice(s.as_bytes());
            b
        };
        assert_eq!(rw_of(&rwbs("RA")), RW_READ);
        assert_eq!(rw_of(&rwbs("FWS")), RW_WRITE);
        assert_eq!(rw_of(&rwbs("WFS")), RW_WRITE);
        assert_eq!(rw_of(&rwbs("DS")), RW_DISCARD);
        assert_eq!(rw_of(&rwbs("FF")), RW_OTHER);
        assert_eq!(rw_of(&rwbs("N")), RW_OTHER);
    }
}

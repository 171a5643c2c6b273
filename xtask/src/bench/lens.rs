//! lens benchmark: what wqtop, reclaimtop and biotop cost per event, against the closest peer
//! attached to the same workload, and how much each slows that workload down.
//!
//! Everything runs in memory: a 384 MiB ext4 image in /dev/shm, attached to a loop device and
//! mounted, so block IO, journal commits, loop/writeback workqueue items and page-cache reclaim
//! all happen without a real disk. Two workloads, each for a fixed time:
//! - fsync loop: 4 KiB pwrite + fsync at rotating offsets of one file (jbd2 commits, block
//!   IO through the loop device's work items); throughput in fsyncs/s.
//! - page-cache storm: `dd` in a memory cgroup limited to 32 MiB reads a 192 MiB file evicted
//!   before each pass (memcg reclaim on every charge, shrinkers, block reads); throughput in MB/s.
//!
//! Setups: nothing attached, tracer wqtop / reclaimtop / biotop, libbpf-tools biolatency (its
//! biotop needs kprobes, absent here; its attach error is printed) and bpftrace scripts on the
//! same tracepoints as wqtop and reclaimtop, written the way BCC's wqlat and drsnoop aggregate.
//! Each round runs every setup once, in rotated order, with an untraced run before the first
//! and after each one; a setup's slowdown is the median (and range) over rounds of its
//! throughput against the mean of the two untraced runs around it. Throughput rounds run with
//! bpf_stats off (its clock reads are no user's cost); one more round with it on gives
//! run_time_ns / run_cnt per program.

use std::{
    fs,
    os::unix::{fs::FileExt as _, io::AsRawFd as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    bpf_stats::{Progs, StatsEnabled, stats_of},
    common::{Attached, median},
};
use crate::util::release_bin;

/// Rounds of every setup; the untraced runs' rate varies by tens of % between neighbours on
/// the shared 2-vCPU VM, so more short rounds beat fewer long ones.
const ROUNDS: usize = 6;
const WORKLOAD_TIME: Duration = Duration::from_millis(1000);
const IMAGE_BYTES: u64 = 384 << 20;
const STORM_FILE_BYTES: u64 = 192 << 20;
const MEMCG_LIMIT: u64 = 32 << 20;
const FSYNC_SPAN: u64 = 1 << 20;
const LIBBPF_BIOTOP: &str = "/usr/sbin/biotop";
const LIBBPF_BIOLATENCY: &str = "/usr/sbin/biolatency";
const BPFTRACE: &str = "/usr/bin/bpftrace";
const UNTRACED: &str = "no tracing";

/// wqlat-style queue latency plus run time per work function, on wqtop's three tracepoints.
const BPFTRACE_WQ: &str = r#"
tracepoint:workqueue:workqueue_queue_work { @queued[args->work] = nsecs; @queuer[pid, comm] = count(); }
tracepoint:workqueue:workqueue_execute_start {
  $q = @queued[args->work];
  if ($q) { @qlat_us[args->function] = hist((nsecs - $q) / 1000); delete(@queued[args->work]); }
  @start[tid] = nsecs; @func[tid] = args->function;
}
tracepoint:workqueue:workqueue_execute_end {
  $s = @start[tid];
  if ($s) { @run_us[@func[tid]] = hist((nsecs - $s) / 1000); delete(@start[tid]); }
}
interval:s:1 { clear(@qlat_us); clear(@run_us); clear(@queuer); }
"#;

/// drsnoop-style stall times plus scanned/reclaimed per process, kswapd wakeups and shrinker
/// time, on reclaimtop's tracepoints.
const BPFTRACE_VMSCAN: &str = r#"
tracepoint:vmscan:mm_vmscan_direct_reclaim_begin, tracepoint:vmscan:mm_vmscan_memcg_reclaim_begin { @stall[tid] = nsecs; }
tracepoint:vmscan:mm_vmscan_direct_reclaim_end, tracepoint:vmscan:mm_vmscan_memcg_reclaim_end {
  $s = @stall[tid];
  if ($s) { @stall_us[pid, comm] = hist((nsecs - $s) / 1000); @reclaimed[pid, comm] = sum(args->nr_reclaimed); delete(@stall[tid]); }
}
tracepoint:vmscan:mm_vmscan_lru_shrink_inactive { @scanned[pid, comm] = sum(args->nr_scanned); @freed[pid, comm] = sum(args->nr_reclaimed); }
tracepoint:vmscan:mm_vmscan_kswapd_wake { @kswapd_wake[args->nid] = count(); @awake[args->nid] = nsecs; }
tracepoint:vmscan:mm_vmscan_kswapd_sleep { $a = @awake[args->nid]; if ($a) { @awake_ns[args->nid] = sum(nsecs - $a); delete(@awake[args->nid]); } }
tracepoint:vmscan:mm_vmscan_wakeup_kswapd { @woke[pid, comm] = count(); }
tracepoint:vmscan:mm_shrink_slab_start { @slab[tid] = nsecs; }
tracepoint:vmscan:mm_shrink_slab_end {
  $s = @slab[tid];
  if ($s) { @shrinker_ns[args->shrink] = sum(nsecs - $s); @shrinker_freed[args->shrink] = sum(args->retval); delete(@slab[tid]); }
}
tracepoint:oom:mark_victim { @oom[args->pid] = count(); }
interval:s:1 { clear(@stall_us); clear(@reclaimed); clear(@scanned); clear(@freed); clear(@woke); }
"#;

/// Which tracer tool a peer stands against, and what one of its events is.
#[derive(Clone, Copy, PartialEq)]
enum Lens {
    Wq,
    Reclaim,
    Block,
}

struct Setup {
    name: &'static str,
    lens: Option<Lens>,
    ours: bool,
    argv: Vec<String>,
}

fn setups(tracer: &Path) -> Vec<Setup> {
    let tracer = tracer.to_string_lossy().into_owned();
    let ours = |name, lens, args: &[&str]| Setup {
        name,
        lens: Some(lens),
        ours: true,
        argv: std::iter::once(tracer.clone())
            .chain(args.iter().map(|a| a.to_string()))
            .collect(),
    };
    let mut list = vec![
        Setup {
            name: UNTRACED,
            lens: None,
            ours: false,
            argv: Vec::new(),
        },
        ours("tracer wqtop", Lens::Wq, &["wqtop", "-b", "1"]),
        ours(
            "tracer reclaimtop",
            Lens::Reclaim,
            &["reclaimtop", "-b", "1"],
        ),
        ours("tracer biotop", Lens::Block, &["biotop", "1"]),
    ];
    if Path::new(LIBBPF_BIOLATENCY).exists() {
        list.push(Setup {
            name: "libbpf-tools biolatency",
            lens: Some(Lens::Block),
            ours: false,
            // Line-buffered: its "Hit Ctrl-C" goes to a pipe, held back until 4 KiB of
            // histograms follow when the machine does little IO.
            argv: vec![
                "stdbuf".into(),
                "-oL".into(),
                LIBBPF_BIOLATENCY.into(),
                "1".into(),
            ],
        });
    }
    if Path::new(BPFTRACE).exists() {
        for (name, lens, script) in [
            ("bpftrace workqueue", Lens::Wq, BPFTRACE_WQ),
            ("bpftrace vmscan", Lens::Reclaim, BPFTRACE_VMSCAN),
        ] {
            list.push(Setup {
                name,
                lens: Some(lens),
                ours: false,
                argv: vec![BPFTRACE.into(), "-e".into(), script.into()],
            });
        }
    }
    list
}

/// The in-memory ext4 on a loop device, the memory cgroup and the storm's file; undone on drop.
struct Bed {
    dir: PathBuf,
    image: PathBuf,
    mount: PathBuf,
    device: String,
    mounted: bool,
    cgroup: Option<PathBuf>,
}

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Bed {
    fn create() -> Result<Self> {
        let dir = PathBuf::from(format!("/dev/shm/tracer-bench-lens-{}", std::process::id()));
        fs::create_dir_all(dir.join("mnt"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let image = dir.join("ext4.img");
        fs::File::create(&image)
            .and_then(|f| f.set_len(IMAGE_BYTES))
            .with_context(|| format!("cannot create {}", image.display()))?;
        let mut bed = Self {
            mount: dir.join("mnt"),
            dir,
            image,
            device: String::new(),
            mounted: false,
            cgroup: None,
        };
        let dev = sh(Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&bed.image))?;
        bed.device = dev.trim_start_matches("/dev/").to_string();
        sh(Command::new("mkfs.ext4").args([
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            &dev,
        ]))?;
        sh(Command::new("mount")
            .args(["-t", "ext4", &dev])
            .arg(&bed.mount))?;
        bed.mounted = true;
        // The storm's file, written once and synced; each pass evicts it first.
        let storm = bed.storm_file();
        let mut file = fs::File::create(&storm)?;
        let chunk = vec![0x5a_u8; 1 << 20];
        for _ in 0..STORM_FILE_BYTES >> 20 {
            std::io::Write::write_all(&mut file, &chunk)?;
        }
        file.sync_all()?;
        bed.cgroup = Some(memcg()?);
        Ok(bed)
    }

    fn storm_file(&self) -> PathBuf {
        self.mount.join("storm.data")
    }

    /// fsyncs per second over WORKLOAD_TIME (each a journal commit: the write changes mtime).
    fn fsync_loop(&self) -> Result<f64> {
        let path = self.mount.join("fsync.data");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let block = [0xa5_u8; 4096];
        let start = Instant::now();
        let mut n: u64 = 0;
        while start.elapsed() < WORKLOAD_TIME {
            file.write_all_at(&block, (n * 4096) % FSYNC_SPAN)?;
            file.sync_all()?;
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    }

    /// MB/s read by `dd` in the memory cgroup, passes over the evicted file for WORKLOAD_TIME.
    fn page_cache_storm(&self) -> Result<f64> {
        let cgroup = self.cgroup.as_ref().expect("created with the bed");
        let storm = self.storm_file();
        let start = Instant::now();
        let mut bytes = 0;
        while start.elapsed() < WORKLOAD_TIME {
            evict(&storm);
            let script = format!(
                "echo $$ > {}/cgroup.procs && exec dd if={} of=/dev/null bs=1M status=none",
                cgroup.display(),
                storm.display()
            );
            sh(Command::new("sh").args(["-c", &script]))?;
            bytes += STORM_FILE_BYTES;
        }
        Ok(bytes as f64 / 1e6 / start.elapsed().as_secs_f64())
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.mount).status();
        }
        if !self.device.is_empty() {
            let _ = Command::new("losetup")
                .args(["-d", &format!("/dev/{}", self.device)])
                .status();
        }
        let _ = fs::remove_file(&self.image);
        let _ = fs::remove_dir(&self.mount);
        let _ = fs::remove_dir(&self.dir);
        if let Some(cgroup) = &self.cgroup {
            // rmdir fails while the kernel still uncharges the last member's pages.
            for _ in 0..50 {
                if fs::remove_dir(cgroup).is_ok() {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A memory cgroup limited to MEMCG_LIMIT: the v1 memory hierarchy, else cgroup2 at
/// /sys/fs/cgroup (or /sys/fs/cgroup/unified) with the memory controller delegated.
fn memcg() -> Result<PathBuf> {
    let name = format!("tracer-bench-lens-{}", std::process::id());
    let v1 = Path::new("/sys/fs/cgroup/memory");
    let (dir, limit_file) = if v1.join("memory.limit_in_bytes").exists() {
        (v1.join(&name), "memory.limit_in_bytes")
    } else {
        let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .iter()
            .map(Path::new)
            .find(|r| {
                fs::read_to_string(r.join("cgroup.controllers"))
                    .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"))
            })
            .context("no memory cgroup controller (v1 memory hierarchy or cgroup2)")?;
        let _ = fs::write(root.join("cgroup.subtree_control"), "+memory");
        (root.join(&name), "memory.max")
    };
    fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::write(dir.join(limit_file), MEMCG_LIMIT.to_string())
        .with_context(|| format!("cannot set {}", dir.join(limit_file).display()))?;
    Ok(dir)
}

/// Drops a file's clean pages from the page cache, so the next reader charges them afresh.
fn evict(path: &Path) {
    if let Ok(f) = fs::File::open(path) {
        // SAFETY: a valid fd; advice only.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

/// One setup over both workloads.
struct Run {
    setup: usize,
    round: usize,
    /// Position in its round (untraced runs at even slots, around each setup's run).
    slot: usize,
    fsyncs_per_s: f64,
    storm_mb_per_s: f64,
    /// Program name → (run_time_ns, run_cnt) over both workloads (cost round only).
    progs: Progs,
}

const COST_ROUND: usize = usize::MAX;

fn run_setup(bed: &Bed, setups: &[Setup], index: usize, round: usize, slot: usize) -> Result<Run> {
    let setup = &setups[index];
    let tool = if setup.argv.is_empty() {
        None
    } else {
        let mut cmd = Command::new(&setup.argv[0]);
        cmd.args(&setup.argv[1..]);
        Some(
            Attached::spawn_to(&mut cmd, Some(PathBuf::from("/dev/null")), |line| {
                line.contains("Hit Ctrl-C") || line.starts_with("Attaching ")
            })
            .with_context(|| format!("{} did not start", setup.name))?,
        )
    };
    let stats = |tool: &Option<Attached>| -> Progs {
        tool.as_ref()
            .map(|t| {
                stats_of(t.pid())
                    .into_iter()
                    .map(|(name, p)| (name, (p.run_time_ns, p.run_cnt)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = stats(&tool);
    let fsyncs = bed.fsync_loop();
    let storm = bed.page_cache_storm();
    let after = stats(&tool);
    if let Some(tool) = tool {
        tool.stop()?;
    }
    let progs = super::bpf_stats::progs_delta(&before, &after);
    Ok(Run {
        setup: index,
        round,
        slot,
        fsyncs_per_s: fsyncs?,
        storm_mb_per_s: storm?,
        progs,
    })
}

/// Kernel ns per event of one cost run: all programs' time over the lens's event count.
fn per_event(lens: Lens, progs: &Progs) -> Option<(f64, u64)> {
    let time: u64 = progs.values().map(|(t, _)| t).sum();
    let events: u64 = match lens {
        // The completion program: tracer's biotop_rq_complete, biolatency's block_rq_complete.
        Lens::Block => progs
            .iter()
            .filter(|(k, _)| k.contains("complete"))
            .map(|(_, (_, c))| c)
            .sum(),
        // Every program run (the bpftrace interval program runs once a second).
        Lens::Wq | Lens::Reclaim => progs.values().map(|(_, c)| c).sum(),
    };
    (events > 0).then(|| (time as f64 / events as f64, events))
}

/// "−0.4 % (−1.2…+0.3)": median and range of per-round ratios against the untraced run.
fn slowdown(ratios: &[f64]) -> String {
    if ratios.is_empty() {
        return "-".into();
    }
    let min = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{:+.1}% ({:+.1}..{:+.1})",
        median(ratios.to_vec()) * 100.0,
        min * 100.0,
        max * 100.0
    )
}

pub fn run() -> Result<()> {
    let tracer = release_bin("tracer");
    if !tracer.exists() {
        bail!(
            "{} missing: run 'cargo xtask build' first",
            tracer.display()
        );
    }
    for cmd in ["losetup", "mkfs.ext4", "bpftool", "dd"] {
        if sh(Command::new("which").arg(cmd)).is_err() {
            bail!("{cmd} is not installed (cargo xtask setup installs it)");
        }
    }
    if Path::new(LIBBPF_BIOTOP).exists() {
        // libbpf-tools biotop attaches a kprobe on blk_account_io_start: say what it says.
        let out = Command::new("timeout")
            .args(["5", LIBBPF_BIOTOP, "-C", "1", "1"])
            .stdout(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        match stderr.lines().find(|l| l.contains("failed")) {
            Some(line) => println!(
                "libbpf-tools biotop cannot run here: {line}; biolatency (tracepoints) is the block peer"
            ),
            None => println!("libbpf-tools biotop attaches here; biolatency is the block peer"),
        }
    }
    let setups = setups(&tracer);
    let bed = Bed::create()?;
    let mut runs = Vec::new();
    {
        // Throughput rounds with the kernel's accounting off.
        let _off = StatsOff::new()?;
        let traced = setups.len() - 1;
        for round in 0..ROUNDS {
            runs.push(run_setup(&bed, &setups, 0, round, 0)?);
            for i in 0..traced {
                let index = 1 + (i + round) % traced;
                runs.push(run_setup(&bed, &setups, index, round, 2 * i + 1)?);
                runs.push(run_setup(&bed, &setups, 0, round, 2 * i + 2)?);
            }
        }
    }
    {
        let _on = StatsEnabled::new()?;
        for index in 1..setups.len() {
            runs.push(run_setup(&bed, &setups, index, COST_ROUND, 0)?);
        }
    }
    drop(bed);
    print_table(&setups, &runs);
    Ok(())
}

/// Turns bpf_stats off for as long as it lives (the throughput rounds), restoring it after.
struct StatsOff(String);

impl StatsOff {
    fn new() -> Result<Self> {
        const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
        let previous = fs::read_to_string(SYSCTL).context("cannot read bpf_stats_enabled")?;
        fs::write(SYSCTL, "0").context("cannot set bpf_stats_enabled")?;
        Ok(Self(previous))
    }
}

impl Drop for StatsOff {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", self.0.trim());
    }
}

fn print_table(setups: &[Setup], runs: &[Run]) {
    // The untraced runs just before and after a traced one, as one reference.
    let around = |run: &Run| -> Option<(f64, f64)> {
        let at = |slot| {
            runs.iter()
                .find(|r| r.setup == 0 && r.round == run.round && r.slot == slot)
        };
        let (before, after) = (at(run.slot.checked_sub(1)?)?, at(run.slot + 1)?);
        Some((
            (before.fsyncs_per_s + after.fsyncs_per_s) / 2.0,
            (before.storm_mb_per_s + after.storm_mb_per_s) / 2.0,
        ))
    };
    println!(
        "workloads on ext4 on a loop device backed by /dev/shm, {ROUNDS} rounds (rotated order, \
         untraced runs between setups) of {:.1} s per workload per setup: fsync loop (4 KiB pwrite + fsync), page-cache storm \
         (dd of a {} MiB evicted file in a {} MiB memory cgroup)",
        WORKLOAD_TIME.as_secs_f64(),
        STORM_FILE_BYTES >> 20,
        MEMCG_LIMIT >> 20
    );
    println!(
        "{:<26} {:>10} {:>22} {:>8} {:>22} {:>10} {:>10} {:>8}",
        "SETUP",
        "FSYNC/S",
        "VS NONE (RANGE)",
        "STORM MB/S",
        "VS NONE (RANGE)",
        "NS/EVENT",
        "EVENTS",
        "VS PEER"
    );
    // Our ns/event per lens, for the peer's ratio column.
    let cost = |index: usize| -> Option<(f64, u64, Progs)> {
        let lens = setups[index].lens?;
        let run = runs
            .iter()
            .find(|r| r.setup == index && r.round == COST_ROUND)?;
        per_event(lens, &run.progs).map(|(ns, n)| (ns, n, run.progs.clone()))
    };
    for (index, setup) in setups.iter().enumerate() {
        let measured: Vec<&Run> = runs
            .iter()
            .filter(|r| r.setup == index && r.round != COST_ROUND)
            .collect();
        let fsyncs: Vec<f64> = measured.iter().map(|r| r.fsyncs_per_s).collect();
        let storm: Vec<f64> = measured.iter().map(|r| r.storm_mb_per_s).collect();
        let (fsync_ratios, storm_ratios): (Vec<f64>, Vec<f64>) = if index == 0 {
            (Vec::new(), Vec::new())
        } else {
            measured
                .iter()
                .filter_map(|r| {
                    let (fsyncs, storm) = around(r)?;
                    Some((
                        r.fsyncs_per_s / fsyncs - 1.0,
                        r.storm_mb_per_s / storm - 1.0,
                    ))
                })
                .unzip()
        };
        let own = cost(index);
        // tracer's row shows the ratio to its peer; the peer's row shows nothing there.
        let vs_peer = match (&own, setup.ours) {
            (Some((ns, _, _)), true) => setups
                .iter()
                .enumerate()
                .filter(|(i, s)| !s.ours && s.lens == setup.lens && *i != index)
                .find_map(|(i, _)| cost(i))
                .map(|(peer, _, _)| format!("{:.2}x", ns / peer))
                .unwrap_or_else(|| "-".into()),
            _ => "-".into(),
        };
        println!(
            "{:<26} {:>10.0} {:>22} {:>10.0} {:>22} {:>10} {:>10} {:>8}",
            setup.name,
            median(fsyncs),
            slowdown(&fsync_ratios),
            median(storm),
            slowdown(&storm_ratios),
            own.as_ref()
                .map(|(ns, _, _)| format!("{ns:.0}"))
                .unwrap_or_else(|| "-".into()),
            own.as_ref()
                .map(|(_, n, _)| n.to_string())
                .unwrap_or_else(|| "-".into()),
            vs_peer,
        );
        if let Some((_, _, progs)) = &own {
            let list: Vec<String> = progs
                .iter()
                .filter(|(_, (_, c))| *c > 0)
                .map(|(k, (t, c))| format!("{k} {c}x {:.0} ns", *t as f64 / *c as f64))
                .collect();
            println!("    {}", list.join("; "));
        }
    }
    println!(
        "VS NONE: median (min..max) over rounds of the throughput against the mean of the \
         untraced runs just before and after; throughput rounds ran with bpf_stats off."
    );
    println!(
        "NS/EVENT: kernel time of all the tool's programs (bpf_stats run_time_ns, one more pass of \
         both workloads with it on) per event: block = per completed IO, workqueue/vmscan = per \
         program run (both sides attach the same tracepoints). VS PEER: tracer / peer."
    );
}

//! reclaimtop against ground truth: a memory cgroup with a limit and a reader of twice the
//! limit in cold page cache → memcg reclaim and stalls charged to that process and cgroup,
//! scanned ≥ reclaimed, the cgroup's reclaimed pages matching its memory.stat and the
//! system-wide kswapd/direct numbers matching /proc/vmstat; kswapd0 woken by page cache read on
//! top of nearly all free RAM held in anonymous memory (in the 2 GiB VM guests), its reclaimed
//! pages matching pgsteal_kswapd and the reader among the processes that woke it; an OOM kill
//! in a cgroup; bad input.

use std::{
    collections::HashMap,
    fs,
    io::Read as _,
    os::unix::{fs::MetadataExt as _, io::AsRawFd as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use libtest_mimic::{Completion, Failed, Trial};
use serde_json::Value;

use crate::common::{Finished, Need, emulated, ensure, fail, run, scaled, start, trial};

const ROOT: &[Need] = &[Need::Root];
pub(crate) const PAGE: u64 = 4096;

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "reclaimtop::memcg_reclaim_charged_to_reader_and_cgroup",
            ROOT,
            memcg_reclaim_charged_to_reader_and_cgroup,
        ),
        trial(
            "reclaimtop::memcg_reclaim_via_raw_tp_and_tracepoint",
            ROOT,
            memcg_reclaim_via_raw_tp_and_tracepoint,
        ),
        Trial::ignorable_test("reclaimtop::kswapd_reclaim_matches_vmstat", || {
            if let Some(reason) = Need::Root.missing() {
                return Ok(Completion::ignored_with(reason));
            }
            // Waking kswapd means using up free RAM: on a shared host that pushes everyone's
            // processes into reclaim.
            if emulated().is_none() {
                let free = meminfo("MemAvailable").unwrap_or(0) >> 20;
                return Ok(Completion::ignored_with(format!(
                    "needs all free RAM ({free} MiB here) held or in page cache, which would \
                     push every other process on this shared host into reclaim: runs in the \
                     2 GiB VM guests"
                )));
            }
            crate::common::announced(
                "reclaimtop::kswapd_reclaim_matches_vmstat",
                kswapd_reclaim_matches_vmstat().map(|()| Completion::Completed),
            )
        }),
        trial(
            "reclaimtop::oom_kill_in_a_cgroup",
            ROOT,
            oom_kill_in_a_cgroup,
        ),
        trial("reclaimtop::bad_input", ROOT, bad_input),
    ]
}

/// A memory cgroup made for one test, removed on drop (v1 memory hierarchy or cgroup2).
pub(crate) struct MemCgroup {
    dir: PathBuf,
    /// The path /proc/PID/cgroup shows for its members.
    path: String,
    pub(crate) v2: bool,
}

impl MemCgroup {
    pub(crate) fn create(limit: u64) -> Result<Option<Self>, Failed> {
        let name = format!("tracer-reclaimtop-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes");
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
        let (dir, limit_file, is_v2) = if v1.exists() {
            (
                Path::new("/sys/fs/cgroup/memory").join(&name),
                "memory.limit_in_bytes",
                false,
            )
        } else if fs::read_to_string(v2).is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"))
        {
            // The root's children get the memory controller only when the root delegates it.
            let _ = fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
            (Path::new("/sys/fs/cgroup").join(&name), "memory.max", true)
        } else {
            return Ok(None);
        };
        fs::create_dir(&dir).map_err(|e| fail(format!("mkdir {}: {e}", dir.display())))?;
        let cgroup = Self {
            dir,
            path: format!("/{name}"),
            v2: is_v2,
        };
        fs::write(cgroup.dir.join(limit_file), limit.to_string())
            .map_err(|e| fail(format!("cannot set {limit_file}: {e}")))?;
        Ok(Some(cgroup))
    }

    /// memory.stat as name → value.
    pub(crate) fn stat(&self) -> HashMap<String, u64> {
        parse_pairs(&fs::read_to_string(self.dir.join("memory.stat")).unwrap_or_default())
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // Members are gone by now; rmdir fails while the kernel still frees its pages.
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

fn parse_pairs(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

pub(crate) fn vmstat() -> HashMap<String, u64> {
    parse_pairs(&fs::read_to_string("/proc/vmstat").unwrap_or_default())
}

fn meminfo(field: &str) -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Delta of the vmstat counters starting with `prefix` (pgsteal_kswapd, pgsteal_direct...).
pub(crate) fn delta(
    after: &HashMap<String, u64>,
    before: &HashMap<String, u64>,
    name: &str,
) -> u64 {
    after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
}

/// Drops a file's clean pages from the page cache, so the next reader charges them afresh.
fn evict(path: &Path) {
    // Pages still under writeback (the host's new file) or batched on another CPU's LRU list
    // survive one DONTNEED: ask again until none is resident, or give up after a few tries
    // (what is left is measured by `resident_pages` and left out of the ground truth).
    for _ in 0..20 {
        if let Ok(f) = fs::File::open(path) {
            // SAFETY: a valid fd; advice only.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
        if resident(path) == 0 {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Pages of `path` in the page cache right now (mincore over a read-only mapping).
fn resident(path: &Path) -> u64 {
    let Ok(f) = fs::File::open(path) else {
        return 0;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0) as usize;
    if len == 0 {
        return 0;
    }
    // SAFETY: a shared read-only mapping of a file we opened, unmapped below; mincore writes
    // one byte per page into a vector of that many bytes.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        if addr == libc::MAP_FAILED {
            return 0;
        }
        let mut vec = vec![0u8; len.div_ceil(PAGE as usize)];
        let rc = libc::mincore(addr, len, vec.as_mut_ptr());
        libc::munmap(addr, len);
        if rc != 0 {
            return 0;
        }
        vec.iter().filter(|b| **b & 1 == 1).count() as u64
    }
}

/// Files whose pages are not in this machine's page cache, `bytes` in total. On the host: one
/// new file on a disk-backed filesystem (not tmpfs, whose pages reclaim cannot evict without
/// swap). In a VM guest, whose only disk-backed filesystem is the host's root shared
/// read-only over 9p: sparse files the VM stage made on the host, evicted first.
pub(crate) struct ColdFiles {
    files: Vec<PathBuf>,
    made: Option<PathBuf>,
}

impl ColdFiles {
    pub(crate) fn new(bytes: u64) -> Result<Self, Failed> {
        if emulated().is_none() {
            let dir = std::env::temp_dir();
            let path = dir.join(format!("tracer-reclaimtop-{}.data", std::process::id()));
            let mut file =
                fs::File::create(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
            let chunk = vec![0x5a_u8; 1 << 20];
            for _ in 0..bytes.div_ceil(1 << 20) {
                std::io::Write::write_all(&mut file, &chunk).map_err(|e| fail(e.to_string()))?;
            }
            file.sync_all().map_err(|e| fail(e.to_string()))?;
            drop(file);
            evict(&path);
            return Ok(Self {
                files: vec![path.clone()],
                made: Some(path),
            });
        }
        // The VM stage's sparse fillers (see xtask's `cold_files`): zeros over 9p, each page
        // read a clean page-cache page in this guest.
        let dir = PathBuf::from(std::env::var_os("TRACER_COLD_DIR").ok_or_else(|| {
            fail("TRACER_COLD_DIR unset: run the VM stage with cargo xtask vm-test")
        })?);
        let mut found = Vec::new();
        collect_files(&dir, &mut found);
        found.sort_by(|a, b| a.1.cmp(&b.1));
        let mut files = Vec::new();
        let mut total = 0;
        for (size, path) in found {
            if total >= bytes {
                break;
            }
            evict(&path);
            total += size;
            files.push(path);
        }
        ensure(total >= bytes, || {
            format!(
                "only {} MiB of files in {}, need {} MiB",
                total >> 20,
                dir.display(),
                bytes >> 20
            )
        })?;
        Ok(Self { files, made: None })
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.files
            .iter()
            .filter_map(|f| fs::metadata(f).ok())
            .map(|m| m.len())
            .sum()
    }

    pub(crate) fn pages(&self) -> u64 {
        self.files
            .iter()
            .filter_map(|f| fs::metadata(f).ok())
            .map(|m| m.len().div_ceil(PAGE))
            .sum()
    }

    /// Pages of the files in the page cache now: a read finds them there, so they are not
    /// charged to the reader's cgroup.
    pub(crate) fn resident_pages(&self) -> u64 {
        self.files.iter().map(|f| resident(f)).sum()
    }
}

impl Drop for ColdFiles {
    fn drop(&mut self) {
        if let Some(path) = &self.made {
            let _ = fs::remove_file(path);
        }
    }
}

/// The files of `dir` of 1 MiB or more that are not hard links (the running binaries are).
fn collect_files(dir: &Path, out: &mut Vec<(u64, PathBuf)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() && meta.len() >= 1 << 20 && meta.nlink() == 1 {
            out.push((meta.len(), entry.path()));
        }
    }
}

/// `tail -c +1 -f FILES`: reads every byte of the files into the page cache, then stays alive
/// (following them), so its cgroup can be read when reclaimtop reports.
pub(crate) fn reader_in(cgroup: &MemCgroup, files: &ColdFiles) -> Result<Child, Failed> {
    let procs = cgroup.dir.join("cgroup.procs");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "echo $$ > {} && exec tail -q -c +1 -f \"$@\"",
            procs.display()
        ))
        .arg("sh")
        .args(&files.files)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn()
        .map_err(|e| fail(format!("cannot start tail: {e}")))
}

/// Bytes a process has read (rchar of /proc/PID/io).
fn bytes_read(pid: u32) -> u64 {
    parse_pairs(
        &fs::read_to_string(format!("/proc/{pid}/io"))
            .unwrap_or_default()
            .replace(':', ""),
    )
    .get("rchar")
    .copied()
    .unwrap_or(0)
}

/// Waits until `pid` has read `bytes`.
pub(crate) fn wait_read(pid: u32, bytes: u64, timeout: Duration) -> Result<(), Failed> {
    let deadline = Instant::now() + timeout;
    while bytes_read(pid) < bytes {
        ensure(Instant::now() < deadline, || {
            format!(
                "the reader read {} of {bytes} bytes in {timeout:?}",
                bytes_read(pid)
            )
        })?;
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Sums a field over the interval records.
fn sum(records: &[Value], field: &str) -> u64 {
    records.iter().map(|r| r[field].as_u64().unwrap_or(0)).sum()
}

fn intervals(finished: &Finished) -> Result<Vec<Value>, Failed> {
    let json = finished.json()?;
    for r in &json {
        ensure(r["schema"] == "tracer.reclaimtop.v2", || {
            format!("no schema: {r}")
        })?;
    }
    Ok(json
        .into_iter()
        .filter(|r| r["type"] == "interval")
        .collect())
}

/// Within `pct` percent of `want`, or `slack` pages.
pub(crate) fn close(got: u64, want: u64, pct: f64, slack: u64) -> bool {
    got.abs_diff(want) as f64 <= (want as f64 * pct / 100.0).max(slack as f64)
}

fn memcg_reclaim_charged_to_reader_and_cgroup() -> Result<(), Failed> {
    memcg_case(None)
}

/// The ladder's lower rungs read the same events their own way (raw_tp: the tracepoint's
/// arguments without BTF types; tracepoint: the record at the format file's offsets): the
/// same run, pinned to each, must give the same answers.
fn memcg_reclaim_via_raw_tp_and_tracepoint() -> Result<(), Failed> {
    memcg_case(Some("raw_tp"))?;
    memcg_case(Some("tracepoint"))
}

fn memcg_case(attach: Option<&str>) -> Result<(), Failed> {
    let limit: u64 = if emulated().is_some() {
        16 << 20
    } else {
        32 << 20
    };
    let Some(cgroup) = MemCgroup::create(limit)? else {
        return Err(fail("no memory cgroup controller (v1 or v2) to test with"));
    };
    let files = ColdFiles::new(2 * limit)?;
    let before = vmstat();
    let stat_before = cgroup.stat();
    let mut args = vec!["reclaimtop", "--json", "-G", "--comm", "tail", "1"];
    if let Some(mechanism) = attach {
        args.extend(["--attach", mechanism]);
    }
    let tool = start(&args)?;
    let warm = files.resident_pages();
    let mut reader = reader_in(&cgroup, &files)?;
    let reader_pid = reader.id();
    let read = wait_read(reader_pid, files.bytes(), scaled(Duration::from_secs(30)));
    // One more report while the reader lives, so its cgroup is resolved.
    thread::sleep(scaled(Duration::from_millis(1500)));
    let finished = tool.stop(libc::SIGINT);
    let stat_after = cgroup.stat();
    let after = vmstat();
    let left = files.resident_pages();
    let _ = reader.kill();
    let _ = reader.wait();
    read?;
    let finished = finished?.ok()?;
    let records = intervals(&finished)?;
    if let Some(mechanism) = attach {
        let end = finished.json()?.pop().unwrap_or_default();
        let used: Vec<&Value> = end["attach"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["target"] != "oom:mark_victim")
            .map(|a| &a["mechanism"])
            .collect();
        ensure(
            !used.is_empty() && used.iter().all(|m| *m == mechanism),
            || format!("--attach {mechanism} attached with {used:?}"),
        )?;
    }

    // The reader's memcg stalls, charged to it and its cgroup; --comm kept everyone else out.
    let mut stalls = 0;
    let mut scanned = 0;
    let mut reclaimed = 0;
    for r in &records {
        for s in r["stalls"].as_array().into_iter().flatten() {
            ensure(s["comm"] == "tail", || format!("--comm tail let in {s}"))?;
            if s["pid"] == reader_pid && s["kind"] == "memcg" {
                ensure(s["cgroup"] == cgroup.path.as_str(), || {
                    format!("stall row not charged to {}: {s}", cgroup.path)
                })?;
                stalls += s["stalls"].as_u64().unwrap_or(0);
                scanned += s["scanned"].as_u64().unwrap_or(0);
                reclaimed += s["reclaimed"].as_u64().unwrap_or(0);
            }
        }
    }
    ensure(stalls > 0 && reclaimed > 0, || {
        format!(
            "no memcg reclaim charged to the reader {reader_pid}: {}",
            finished.stdout.join("\n")
        )
    })?;
    ensure(scanned >= reclaimed, || {
        format!("scanned {scanned} < reclaimed {reclaimed}")
    })?;
    let cg_rows: Vec<&Value> = records
        .iter()
        .flat_map(|r| r["cgroups"].as_array().into_iter().flatten())
        .filter(|c| c["cgroup"] == cgroup.path.as_str() && c["kind"] == "memcg")
        .collect();
    let cg_reclaimed: u64 = cg_rows
        .iter()
        .map(|c| c["reclaimed"].as_u64().unwrap_or(0))
        .sum();
    ensure(cg_reclaimed == reclaimed, || {
        format!("cgroup rows reclaimed {cg_reclaimed}, its process {reclaimed}")
    })?;

    // Ground truth from the cgroup itself. cgroup2's memory.stat counts pgscan/pgsteal; v1's
    // does not, but every page the reader brought in was charged to the fresh cgroup, so what
    // it no longer holds was reclaimed. Pages already cached when it started (eviction is best
    // effort) were never charged to it.
    if cgroup.v2 {
        let pgsteal = delta(&stat_after, &stat_before, "pgsteal");
        let pgscan = delta(&stat_after, &stat_before, "pgscan");
        ensure(close(reclaimed, pgsteal, 1.0, 32), || {
            format!("reclaimed {reclaimed} pages, memory.stat pgsteal grew {pgsteal}")
        })?;
        ensure(close(scanned, pgscan, 1.0, 32), || {
            format!("scanned {scanned} pages, memory.stat pgscan grew {pgscan}")
        })?;
    } else {
        // memory.stat's `cache` lags behind (per-CPU counts flushed in batches); the file's
        // own pages still in the page cache (mincore) are exact, and only the reader's cgroup
        // was charged for them.
        let cached = stat_after.get("cache").copied().unwrap_or(0) / PAGE;
        let charged = files.pages().saturating_sub(warm);
        let gone = charged.saturating_sub(left);
        ensure(close(reclaimed, gone, 1.0, 32), || {
            format!(
                "reclaimed {reclaimed} pages; the cgroup was charged {charged} file pages \
                 ({warm} were cached before) and {left} are still cached ({cached} by \
                 memory.stat), so {gone} were reclaimed"
            )
        })?;
    }
    // Twice the limit was read: at least the excess over the limit had to be reclaimed.
    let excess = files.pages().saturating_sub(limit / PAGE);
    ensure(reclaimed + 64 >= excess, || {
        format!("reclaimed {reclaimed} pages, but {excess} did not fit under the limit")
    })?;

    // System-wide: kswapd and direct reclaim (not memcg reclaim, which /proc/vmstat leaves
    // out) against /proc/vmstat over a window that encloses the tool's. Other processes on
    // the machine may reclaim too; both sides see the same events, so they agree within 5 %.
    for (kind, steal, scan) in [
        ("kswapd", "pgsteal_kswapd", "pgscan_kswapd"),
        ("direct", "pgsteal_direct", "pgscan_direct"),
    ] {
        let tool_reclaimed = sum(&records, &format!("{kind}_reclaimed"));
        let tool_scanned = sum(&records, &format!("{kind}_scanned"));
        let vm_reclaimed = delta(&after, &before, steal);
        let vm_scanned = delta(&after, &before, scan);
        ensure(
            close(tool_reclaimed, vm_reclaimed, 5.0, 64)
                && close(tool_scanned, vm_scanned, 5.0, 64),
            || {
                format!(
                    "{kind}: tool scanned/reclaimed {tool_scanned}/{tool_reclaimed}, \
                     /proc/vmstat {vm_scanned}/{vm_reclaimed}"
                )
            },
        )?;
    }
    let memcg_reclaimed = sum(&records, "memcg_reclaimed");
    ensure(memcg_reclaimed >= reclaimed, || {
        format!("memcg total {memcg_reclaimed} < the reader's {reclaimed}")
    })?;
    Ok(())
}

/// Free memory left beside the anonymous hog: the page cache read on top of it must push free
/// memory under kswapd's low watermark.
const LEFT_FREE: u64 = 160 << 20;
/// Page cache read on top of the hog: more than `LEFT_FREE`, so kswapd must reclaim it.
const READ: u64 = 400 << 20;

fn kswapd_reclaim_matches_vmstat() -> Result<(), Failed> {
    // Without swap anonymous memory cannot be reclaimed: holding all but LEFT_FREE of free RAM
    // in it leaves the reads' page cache as the only thing kswapd can free, so a few hundred
    // MiB of reading (not all of RAM) wakes it.
    let files = ColdFiles::new(READ)?;
    let free = meminfo("MemFree").ok_or_else(|| fail("no MemFree in /proc/meminfo"))?;
    let hog_bytes = free.saturating_sub(LEFT_FREE) as usize;
    // Zeroed allocations of this size are fresh mappings: each page is committed by its write.
    let mut hog = vec![0u8; hog_bytes];
    for page in hog.chunks_mut(PAGE as usize) {
        page[0] = 1;
    }
    let tool = start(&["reclaimtop", "--json", "1"])?;
    // The same run as a screen, printed for the record (docs/tools/reclaimtop.md's example).
    let screen = start(&["reclaimtop", "-b", "-G", "-n", "5", "2"])?;
    // Read once the tool is attached: under TCG its load takes seconds, and reclaim in them
    // (the hog's last pages) would count in /proc/vmstat only.
    let before = vmstat();
    let mut buffer = vec![0u8; 1 << 20];
    for path in &files.files {
        let mut f = fs::File::open(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        while f.read(&mut buffer).map_err(|e| fail(e.to_string()))? > 0 {}
    }
    // kswapd goes back to sleep once free memory is above the high watermark again.
    thread::sleep(scaled(Duration::from_secs(2)));
    let finished = tool.stop(libc::SIGINT)?.ok()?;
    let after = vmstat();
    drop(hog);
    let text = screen.stop(libc::SIGINT)?.ok()?;
    eprintln!("reclaimtop -b -G -n 5 2:\n{}", text.stdout.join("\n"));
    let records = intervals(&finished)?;
    let wakeups: u64 = records
        .iter()
        .flat_map(|r| r["kswapd"].as_array().into_iter().flatten())
        .filter(|n| n["node"] == 0)
        .map(|n| n["wakeups"].as_u64().unwrap_or(0))
        .sum();
    let node_reclaimed: u64 = records
        .iter()
        .flat_map(|r| r["kswapd"].as_array().into_iter().flatten())
        .map(|n| n["reclaimed"].as_u64().unwrap_or(0))
        .sum();
    let tool_reclaimed = sum(&records, "kswapd_reclaimed");
    let vm_reclaimed = delta(&after, &before, "pgsteal_kswapd");
    ensure(wakeups > 0 && vm_reclaimed > 0, || {
        format!(
            "kswapd0 woke {wakeups} times, pgsteal_kswapd grew {vm_reclaimed}: {}",
            finished.stdout.join("\n")
        )
    })?;
    // Who caused it: the page cache this test filled woke kswapd from its allocations.
    let me = std::process::id();
    let woken_by_me: u64 = records
        .iter()
        .flat_map(|r| r["kswapd_wakers"].as_array().into_iter().flatten())
        .filter(|w| w["pid"] == me)
        .map(|w| w["wakeups"].as_u64().unwrap_or(0))
        .sum();
    ensure(woken_by_me > 0, || {
        format!(
            "the reader (PID {me}) is not among kswapd's wakers: {}",
            finished.stdout.join("\n")
        )
    })?;
    eprintln!(
        "reclaimtop: kswapd0 woke {wakeups} times ({woken_by_me} by this test's reads), \
         reclaimed {tool_reclaimed} pages; /proc/vmstat pgsteal_kswapd grew {vm_reclaimed}"
    );
    ensure(node_reclaimed == tool_reclaimed, || {
        format!("per-node kswapd reclaimed {node_reclaimed}, total {tool_reclaimed}")
    })?;
    ensure(close(tool_reclaimed, vm_reclaimed, 5.0, 0), || {
        format!(
            "kswapd reclaimed {tool_reclaimed} pages, /proc/vmstat pgsteal_kswapd grew {vm_reclaimed}"
        )
    })?;
    ensure(sum(&records, "kswapd_scanned") >= tool_reclaimed, || {
        "kswapd scanned fewer pages than it reclaimed".to_string()
    })?;
    Ok(())
}

/// `tail /dev/zero` buffers a line that never ends: in a 16 MiB cgroup the cgroup's OOM killer
/// kills it (and only it). reclaimtop reports that kill once, with its pid and, where the
/// kernel's record carries it (5.16+), its comm, and the task whose charge triggered it (tail).
fn oom_kill_in_a_cgroup() -> Result<(), Failed> {
    let Some(cgroup) = MemCgroup::create(16 << 20)? else {
        return Err(fail("no memory cgroup controller (v1 or v2) to test with"));
    };
    let tool = start(&["reclaimtop", "--json", "1"])?;
    let procs = cgroup.dir.join("cgroup.procs");
    let mut hog = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec tail /dev/zero",
            procs.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("cannot start tail: {e}")))?;
    let victim = hog.id();
    let deadline = Instant::now() + scaled(Duration::from_secs(20));
    let status = loop {
        if let Some(status) = hog.try_wait().map_err(|e| fail(e.to_string()))? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = hog.kill();
            let _ = hog.wait();
            return Err(fail(
                "tail /dev/zero was not OOM-killed in its 16 MiB cgroup",
            ));
        }
        thread::sleep(Duration::from_millis(50));
    };
    ensure(
        std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGKILL),
        || format!("tail ended with {status:?}, not SIGKILL"),
    )?;
    // One more report after the kill.
    thread::sleep(scaled(Duration::from_millis(1500)));
    let finished = tool.stop(libc::SIGINT)?.ok()?;
    let records = intervals(&finished)?;
    let kills: Vec<&Value> = records
        .iter()
        .flat_map(|r| r["oom_kills"].as_array().into_iter().flatten())
        .filter(|k| k["victim_pid"] == victim)
        .collect();
    ensure(kills.len() == 1, || {
        format!(
            "expected one OOM kill of PID {victim}, got {kills:?}: {}",
            finished.stdout.join("\n")
        )
    })?;
    let kill = kills[0];
    ensure(
        kill["trigger_pid"] == victim && kill["trigger_comm"] == "tail",
        || format!("the kill was not triggered by tail itself: {kill}"),
    )?;
    let has_comm = fs::read_to_string("/sys/kernel/tracing/events/oom/mark_victim/format")
        .is_ok_and(|f| f.contains("comm"));
    if has_comm {
        ensure(kill["victim_comm"] == "tail", || {
            format!("victim comm not tail: {kill}")
        })?;
    }
    Ok(())
}

fn bad_input() -> Result<(), Failed> {
    let cases: &[(&[&str], i32, &str)] = &[
        (&["reclaimtop", "0"], 2, "out of range"),
        (&["reclaimtop", "1", "0"], 2, "not a positive count"),
        (&["reclaimtop", "-p", "999999999"], 2, "no process with PID"),
        (&["reclaimtop", "--comm", "a*b"], 2, "only a trailing"),
        (&["reclaimtop", "--top", "0"], 2, "--top"),
        (&["reclaimtop", "--attach", "kprobe"], 2, "cannot attach"),
        (&["reclaimtop", "-x"], 2, "unexpected argument"),
    ];
    for (args, code, needle) in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure(out.status.code() == Some(*code), || {
            format!(
                "{args:?}: exit {:?}, expected {code}: {stderr}",
                out.status.code()
            )
        })?;
        ensure(
            stderr.lines().count() == 1 && stderr.contains(needle),
            || format!("{args:?}: expected one line with '{needle}', got: {stderr}"),
        )?;
    }
    Ok(())
}

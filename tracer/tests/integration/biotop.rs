//! biotop against ground truth, on an ext4 file system of its own (mkfs.ext4 on a file,
//! losetup, mount; torn down by a Drop guard even when a test fails): a writer doing N
//! O_DSYNC writes (N fsyncs through ext4_sync_file) → the jbd2 view counts the journal's
//! commits exactly as /proc/fs/jbd2/loopX-8/info does and names the writer's PID with N
//! fsyncs; the block view charges journal writes to jbd2/loopX-8 and its bytes on the device
//! equal the /sys/block/loopX/stat deltas; `-D` histograms hold every IO; `-Q` counts the
//! same IOs with no less latency; bad input.

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::common::{Need, emulated, ensure, fail, run, scaled, start, trial};

const NEEDS: &[Need] = &[
    Need::Root,
    Need::Tracefs,
    Need::Command("mkfs.ext4"),
    Need::Command("losetup"),
];

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "biotop::jbd2_commits_and_fsync_writer",
            NEEDS,
            jbd2_commits_and_fsync_writer,
        ),
        trial(
            "biotop::bytes_match_sysfs_and_jbd2_is_named",
            NEEDS,
            bytes_match_sysfs_and_jbd2_is_named,
        ),
        trial(
            "biotop::jbd2_says_a_device_has_no_journal",
            NEEDS,
            jbd2_without_journal,
        ),
        trial("biotop::bad_input_one_line_errors", NEEDS, bad_input),
    ]
}

/// A loop device holding an ext4 file system, mounted; everything undone on drop.
pub(crate) struct LoopExt4 {
    dir: PathBuf,
    image: PathBuf,
    mount: PathBuf,
    pub(crate) device: String,
    mounted: bool,
}

fn sh(cmd: &mut Command) -> Result<String, Failed> {
    let out = cmd
        .output()
        .map_err(|e| fail(format!("cannot run {cmd:?}: {e}")))?;
    ensure(out.status.success(), || {
        format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl LoopExt4 {
    /// The device attached but not formatted nor mounted (for the missing-journal case).
    fn attach(tag: &str) -> Result<Self, Failed> {
        // Under /var/tmp, not /tmp: the VM guest has a tmpfs on both, and the host's /tmp may
        // be small.
        let dir = PathBuf::from(format!(
            "/var/tmp/tracer-biotop-{tag}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(dir.join("mnt"))
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        let image = dir.join("ext4.img");
        let file = std::fs::File::create(&image)
            .map_err(|e| fail(format!("cannot create {}: {e}", image.display())))?;
        file.set_len(64 << 20)
            .map_err(|e| fail(format!("cannot size {}: {e}", image.display())))?;
        let mut guard = Self {
            mount: dir.join("mnt"),
            dir,
            image,
            device: String::new(),
            mounted: false,
        };
        let dev = sh(Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&guard.image))?;
        guard.device = dev
            .strip_prefix("/dev/")
            .ok_or_else(|| fail(format!("losetup said '{dev}'")))?
            .to_string();
        Ok(guard)
    }

    /// mkfs.ext4 (inode tables and journal written now, so no lazy-init thread writes later)
    /// and mount with a long commit interval (no timer commits inside a measured window) and
    /// without the block-bitmap prefetch ext4lazyinit otherwise reads after mount.
    fn format_and_mount(self) -> Result<Self, Failed> {
        self.format_and_mount_with(&[])
    }

    /// `format_and_mount` with more mkfs.ext4 options (`-O ^has_journal`: no journal, and no
    /// commit interval to set).
    fn format_and_mount_with(mut self, options: &[&str]) -> Result<Self, Failed> {
        let journal = !options.contains(&"^has_journal");
        let dev = format!("/dev/{}", self.device);
        sh(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .args(options)
            .arg(&dev))?;
        // The option arrived in 5.9 with the prefetch it turns off; older kernels have neither.
        let mount = |options: &str| {
            sh(Command::new("mount")
                .args(["-t", "ext4", "-o", options, &dev])
                .arg(&self.mount))
        };
        if !journal {
            mount("defaults")?;
        } else if mount("commit=60,no_prefetch_block_bitmaps").is_err() {
            mount("commit=60")?;
        }
        self.mounted = true;
        Ok(self)
    }

    pub(crate) fn new(tag: &str) -> Result<Self, Failed> {
        Self::attach(tag)?.format_and_mount()
    }

    /// An ext4 without a journal: fsyncs, no commits.
    fn without_journal(tag: &str) -> Result<Self, Failed> {
        Self::attach(tag)?.format_and_mount_with(&["-O", "^has_journal"])
    }

    pub(crate) fn journal(&self) -> String {
        format!("{}-8", self.device)
    }

    /// Transactions committed so far: the first number of /proc/fs/jbd2/<journal>/info.
    pub(crate) fn transactions(&self) -> Result<u64, Failed> {
        let path = format!("/proc/fs/jbd2/{}/info", self.journal());
        let text = std::fs::read_to_string(&path).map_err(|e| fail(format!("{path}: {e}")))?;
        text.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| fail(format!("{path}: cannot parse '{text}'")))
    }

    /// Sectors read and written so far (/sys/block/loopX/stat fields 3 and 7).
    fn sectors(&self) -> Result<u64, Failed> {
        let path = format!("/sys/block/{}/stat", self.device);
        let text = std::fs::read_to_string(&path).map_err(|e| fail(format!("{path}: {e}")))?;
        let f: Vec<u64> = text
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        ensure(f.len() >= 7, || format!("{path}: '{text}'"))?;
        Ok(f[2] + f[6])
    }

    /// Nothing in flight: dirty data written, and the device idle for a moment (the end of a
    /// window, or before a tool starts: IO between its attach and the first ground-truth read
    /// would be in its count and not in the delta).
    pub(crate) fn settle(&self) -> Result<(), Failed> {
        sh(Command::new("sync").arg("-f").arg(&self.mount))?;
        thread::sleep(scaled(Duration::from_millis(300)));
        Ok(())
    }

    /// One writer process: `count` 4 KiB O_DSYNC appends, each an fsync (ext4_sync_file).
    pub(crate) fn dsync_writer(&self, count: u32) -> Result<u32, Failed> {
        let child = Command::new("dd")
            .args([
                "if=/dev/zero",
                &format!("of={}", self.mount.join("data").display()),
                "bs=4k",
                &format!("count={count}"),
                "oflag=dsync",
                "status=none",
            ])
            .spawn()
            .map_err(|e| fail(format!("cannot start dd: {e}")))?;
        let pid = child.id();
        let out = child
            .wait_with_output()
            .map_err(|e| fail(format!("dd: {e}")))?;
        ensure(out.status.success(), || {
            format!("dd failed: {}", out.status)
        })?;
        Ok(pid)
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.mount).status();
        }
        if !self.device.is_empty() {
            let _ = Command::new("losetup")
                .args(["-d", &format!("/dev/{}", self.device)])
                .status();
        }
        let _ = std::fs::remove_file(&self.image);
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// How many O_DSYNC writes: each is a journal commit, slow under TCG.
pub(crate) fn writes() -> u32 {
    if emulated().is_some() { 40 } else { 200 }
}

fn records(stdout: &[String], kind: &str) -> Result<Vec<Value>, Failed> {
    let mut out = Vec::new();
    for line in stdout {
        let v: Value =
            serde_json::from_str(line).map_err(|e| fail(format!("not JSON ({e}): {line}")))?;
        ensure(v["schema"] == "tracer.biotop.v2", || {
            format!("no schema in {line}")
        })?;
        if v["type"] == kind {
            out.push(v);
        }
    }
    Ok(out)
}

fn jbd2_commits_and_fsync_writer() -> Result<(), Failed> {
    let fs = LoopExt4::new("jbd2")?;
    // Settled first, then read right after the tool attached: nothing happens in between.
    fs.settle()?;
    let tool = start(&["biotop", "--jbd2", "--json", "--device", &fs.device])?;
    let before = fs.transactions()?;
    let n = writes();
    let writer = fs.dsync_writer(n)?;
    fs.settle()?;
    let after = fs.transactions()?;
    let done = tool.stop(libc::SIGINT)?.ok()?;
    let reports = records(&done.stdout, "jbd2")?;
    let report = reports
        .last()
        .ok_or_else(|| fail(format!("no jbd2 record in {:?}", done.stdout)))?;
    let journal = fs.journal();
    let row = report["journals"]
        .as_array()
        .and_then(|j| j.iter().find(|r| r["journal"] == journal.as_str()))
        .ok_or_else(|| fail(format!("no row for journal {journal}: {report}")))?;
    let commits = row["commits"].as_u64().unwrap_or(0);
    ensure(commits == after - before, || {
        format!(
            "{commits} commits counted, /proc/fs/jbd2/{journal}/info went {before} → {after}: {report}"
        )
    })?;
    ensure(commits > 0, || format!("no commits at all: {report}"))?;
    ensure(row["logging_ms"].as_f64().is_some(), || {
        format!("no phase times: {row}")
    })?;
    let task = |list: &str| -> Option<u64> {
        report[list]
            .as_array()?
            .iter()
            .find(|t| t["pid"] == writer && t["device"] == fs.device.as_str())
            .and_then(|t| t["count"].as_u64())
    };
    ensure(task("fsyncs") == Some(n as u64), || {
        format!("writer PID {writer} should show {n} fsyncs: {report}")
    })?;
    // The writer's fsyncs lead the list.
    ensure(report["fsyncs"][0]["pid"] == writer, || {
        format!("writer PID {writer} is not the top fsync source: {report}")
    })?;
    ensure(task("handles").is_some_and(|h| h >= n as u64), || {
        format!("writer PID {writer} should open at least {n} journal handles: {report}")
    })?;
    Ok(())
}

/// An ext4 without a journal: its fsyncs are listed, and the device is said to have no jbd2
/// journal (instead of a bare "(no journal commits)" beside them).
fn jbd2_without_journal() -> Result<(), Failed> {
    let fs = LoopExt4::without_journal("nojournal")?;
    fs.settle()?;
    let tool = start(&["biotop", "--jbd2", "--comm", "dd"])?;
    let n = 20;
    let writer = fs.dsync_writer(n)?;
    let done = tool.stop(libc::SIGINT)?.ok()?;
    let text = done.stdout.join("\n");
    let said = format!("({} has no jbd2 journal", fs.device);
    ensure(text.contains(&said), || format!("no '{said}' in:\n{text}"))?;
    ensure(
        done.stdout.iter().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.first() == Some(&writer.to_string().as_str())
                && words.contains(&fs.device.as_str())
                && words.contains(&n.to_string().as_str())
        }),
        || {
            format!(
                "no FSYNCS row for dd PID {writer} on {} with {n}:\n{text}",
                fs.device
            )
        },
    )
}

fn bytes_match_sysfs_and_jbd2_is_named() -> Result<(), Failed> {
    let fs = LoopExt4::new("io")?;
    fs.settle()?;
    let tool = start(&["biotop", "-D", "--json", "--device", &fs.device])?;
    // A second run with -Q over the same window: the same IOs, each timed from earlier.
    // With -G: kernel threads live in the root cgroup.
    let queued = start(&["biotop", "-Q", "-G", "--json", "--device", &fs.device])?;
    let before = fs.sectors()?;
    let writer = fs.dsync_writer(writes())?;
    fs.settle()?;
    let after = fs.sectors()?;
    let done = tool.stop(libc::SIGINT)?.ok()?;
    let done_queued = queued.stop(libc::SIGINT)?.ok()?;
    let reports = records(&done.stdout, "interval")?;
    let report = reports
        .last()
        .ok_or_else(|| fail(format!("no interval record in {:?}", done.stdout)))?;
    let device = report["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|r| r["device"] == fs.device.as_str()))
        .ok_or_else(|| fail(format!("no row for {}: {report}", fs.device)))?;
    let bytes =
        device["read_bytes"].as_u64().unwrap_or(0) + device["write_bytes"].as_u64().unwrap_or(0);
    let expected = (after - before) * 512;
    ensure(bytes == expected, || {
        format!(
            "{bytes} bytes counted on {}, /sys/block/{}/stat says {expected}: {report}",
            fs.device, fs.device
        )
    })?;
    let tasks = report["tasks"].as_array().cloned().unwrap_or_default();
    let jbd2 = format!("jbd2/{}", fs.journal());
    ensure(
        tasks.iter().any(|t| {
            t["comm"] == jbd2.as_str() && t["rw"] == "W" && t["ios"].as_u64().unwrap_or(0) > 0
        }),
        || format!("no {jbd2} write row: {report}"),
    )?;
    ensure(
        tasks.iter().any(|t| t["pid"] == writer && t["rw"] == "W"),
        || format!("no write row for the writer PID {writer}: {report}"),
    )?;
    // Every IO on the device is in its histogram.
    let ios: u64 = tasks
        .iter()
        .filter(|t| t["device"] == fs.device.as_str())
        .map(|t| t["ios"].as_u64().unwrap_or(0))
        .sum();
    let hist = report["histograms"]
        .as_array()
        .and_then(|h| h.iter().find(|r| r["device"] == fs.device.as_str()))
        .ok_or_else(|| fail(format!("no histogram for {}: {report}", fs.device)))?;
    ensure(hist["count"].as_u64() == Some(ios), || {
        format!(
            "histogram holds {} IOs, the rows {ios}: {report}",
            hist["count"]
        )
    })?;
    // -Q: the same IOs, no shorter in total (queue → complete contains issue → complete).
    // Slack of 5 µs per IO: a request issued without being queued first is timed from its
    // issue by both runs, whose programs stamp it one after the other (and the rows'
    // averages are rounded down).
    let queued_reports = records(&done_queued.stdout, "interval")?;
    let queued_report = queued_reports
        .last()
        .ok_or_else(|| fail(format!("no -Q interval record in {:?}", done_queued.stdout)))?;
    let totals = |report: &Value| -> (u64, u64) {
        report["tasks"]
            .as_array()
            .map(|tasks| {
                tasks
                    .iter()
                    .filter(|t| t["device"] == fs.device.as_str())
                    .fold((0, 0), |(n, ns), t| {
                        let ios = t["ios"].as_u64().unwrap_or(0);
                        (
                            n + ios,
                            ns + ios * t["avg_latency_ns"].as_u64().unwrap_or(0),
                        )
                    })
            })
            .unwrap_or((0, 0))
    };
    let (ios_issue, ns_issue) = totals(report);
    let (ios_queued, ns_queued) = totals(queued_report);
    ensure(ios_queued == ios_issue, || {
        format!("-Q counted {ios_queued} IOs, without -Q {ios_issue}: {queued_report}")
    })?;
    ensure(ns_queued + ios_queued * 5_000 >= ns_issue, || {
        format!(
            "-Q latency {ns_queued} ns in total is below issue latency {ns_issue} ns: {queued_report}"
        )
    })?;
    ensure(queued_report["queued"] == true, || {
        format!("-Q record does not say queued: {queued_report}")
    })?;
    let jbd2_cgroups: Vec<&Value> = queued_report["tasks"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter(|t| t["comm"] == jbd2.as_str())
                .map(|t| &t["cgroup"])
                .collect()
        })
        .unwrap_or_default();
    ensure(
        !jbd2_cgroups.is_empty() && jbd2_cgroups.iter().all(|c| **c == "/"),
        || format!("-G: {jbd2} should be in cgroup /: {queued_report}"),
    )?;
    Ok(())
}

/// Each: one stderr line, exit status 2 (the user asked for something that is not there).
fn bad_input() -> Result<(), Failed> {
    let unformatted = LoopExt4::attach("bad")?;
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--device".into(), "sdz".into()],
            "no such block device",
        ),
        (
            vec![
                "--jbd2".into(),
                "--device".into(),
                unformatted.device.clone(),
            ],
            "no jbd2 journal",
        ),
        (vec!["0".into()], "out of range"),
        (vec!["-p".into(), "999999999".into()], "PID"),
    ];
    for (args, needle) in cases {
        let mut full = vec!["biotop".to_string()];
        full.extend(args);
        let argv: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = run(&argv);
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure(out.status.code() == Some(2), || {
            format!("{argv:?}: exit {:?}, stderr {stderr}", out.status.code())
        })?;
        ensure(
            stderr.trim().lines().count() == 1 && stderr.contains(needle),
            || format!("{argv:?}: want one line with '{needle}', got: {stderr}"),
        )?;
    }
    ensure(
        Path::new(&format!("/sys/block/{}", unformatted.device)).exists(),
        || "loop device vanished".into(),
    )?;
    Ok(())
}

//! `cargo xtask vm-test`: the integration tests inside qemu on Debian kernels, for the paths
//! this host kernel cannot run (kprobe, kretprobe, fentry, fexit, kprobe_multi).
//!
//! Per kernel: fetch and unpack the Debian package once (kernel.rs), build an initramfs
//! (initramfs.rs), boot qemu (TCG; KVM does not work on these machines) with the host root
//! shared read-only over 9p, let the guest run `tracer doctor` and the integration test binary
//! in a chroot, and read the verdict from isa-debug-exit and the libtest summary on the serial
//! console. docs/testing.md describes the recipe.

pub(crate) mod initramfs;
mod kernel;

use std::{
    collections::VecDeque,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;

use crate::{
    build::Binaries,
    report::{Tally, TestTimer},
    test::SOAK_TEST,
    util::{cache_dir, repo_root, target_dir},
};
use initramfs::GuestPlan;
use kernel::{KERNELS, KernelSpec};

const QEMU: &str = "qemu-system-x86_64";
const QBOOT: &str = "/usr/share/qemu/qboot.rom";
const KERNEL_CMDLINE: &str = "console=ttyS0 loglevel=5 panic=-1 softlockup_panic=1 rdinit=/init";

#[derive(Args, Clone, Debug)]
pub struct VmArgs {
    /// Which kernel(s) to boot: debian-6.1, debian-6.12, debian-5.10 or all.
    #[arg(long, default_value = "all")]
    pub kernel: String,
    /// Only integration tests whose name contains this (passed to the test binary).
    #[arg(long)]
    pub filter: Option<String>,
    /// Run this shell command in the guest (as root, in the chroot, tracer on PATH) instead
    /// of doctor and the tests, e.g. --exec 'tracer funccount -d 2 k:vfs_read'.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// Minutes before a VM counts as hung and is killed (default: 10, plus 20 s for each
    /// test it runs).
    #[arg(long)]
    pub timeout_minutes: Option<u64>,
    /// Without --filter: every test in every kernel, instead of the kernel-dependent ones
    /// (`EVERY_GUEST`; the rest run on the host only).
    #[arg(long)]
    pub every_test: bool,
    /// How many guests run at once. A guest's emulated CPUs share one host thread
    /// (thread=single), so each keeps one host core busy: two fit this 2-core machine.
    #[arg(long, default_value_t = 2)]
    pub guests: usize,
}

impl Default for VmArgs {
    fn default() -> Self {
        Self {
            kernel: "all".into(),
            filter: None,
            exec: None,
            timeout_minutes: None,
            every_test: false,
            guests: 2,
        }
    }
}

/// Runs the suite in each VM kernel and returns the summed tally. A VM that fails to boot,
/// panics, hangs or never reports counts as one failed test; so does a doctor smoke check
/// that does not see the mechanisms the kernel is known to have.
pub fn vm_test(args: &VmArgs) -> Result<Tally> {
    let kernels: Vec<&KernelSpec> = match args.kernel.as_str() {
        "all" => KERNELS.iter().filter(|k| k.in_all).collect(),
        name => vec![KERNELS.iter().find(|k| k.name == name).ok_or_else(|| {
            let known: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
            anyhow!(
                "unknown kernel {name}: use one of {} or all",
                known.join(", ")
            )
        })?],
    };
    if which(QEMU).is_none() {
        bail!("{QEMU} missing: run cargo xtask setup");
    }
    if !Path::new(QBOOT).exists() {
        bail!("{QBOOT} missing: run cargo xtask setup (package qemu-system-x86)");
    }
    let binaries = crate::build::tests()?;
    let tests = list_tests(&binaries.integration)?;
    let plan = guest_tests(&tests, args);
    println!(
        "vm-test: {} of {} tests in each guest{}",
        plan.runs,
        tests.iter().filter(|t| *t != SOAK_TEST).count(),
        if plan.skips.is_empty() {
            ""
        } else {
            " (the kernel-dependent ones; the rest run on the host only)"
        }
    );
    // Every kernel unpacked first, one at a time (parts of one kernel share its files).
    let mut unpacked = Vec::new();
    for spec in &kernels {
        let kernel = kernel::ensure(spec, &cache_dir().join("vm").join(spec.name));
        unpacked.push((*spec, kernel));
    }
    // Guests `args.guests` at a time, each its kernel's tests or a part of them (`jobs`);
    // each guest's console lines carry its label, and the tallies add up in the jobs' order.
    let lanes = args.guests.max(1);
    let jobs = jobs(&kernels, lanes, args.exec.is_none());
    let queue = Mutex::new(jobs.iter().enumerate().collect::<VecDeque<_>>());
    let results = Mutex::new(vec![None; jobs.len()]);
    thread::scope(|scope| {
        for _ in 0..lanes.min(jobs.len()) {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().expect("queue").pop_front();
                    let Some((i, job)) = next else { break };
                    let label = job.label();
                    let tests = plan.part(job.part, job.parts);
                    let one = if tests.runs == 0 && args.exec.is_none() {
                        Tally::default()
                    } else {
                        println!("== vm-test {label}");
                        let kernel = unpacked
                            .iter()
                            .find(|(s, _)| s.name == job.spec.name)
                            .map(|(_, k)| k.as_ref().map_err(|e| anyhow!("{e:#}")));
                        match kernel {
                            Some(Ok(kernel)) => run_kernel(job, kernel, &binaries, args, &tests),
                            Some(Err(e)) => Err(e),
                            None => Err(anyhow!("kernel not unpacked")),
                        }
                        .unwrap_or_else(|e| {
                            println!("vm-test {label}: FAILED: {e:#}");
                            Tally::broken(&label, format!("{e:#}"))
                        })
                    };
                    results.lock().expect("results")[i] = Some(one);
                }
            });
        }
    });
    let mut tally = Tally::default();
    for one in results.into_inner().expect("results").into_iter().flatten() {
        tally.absorb(one);
    }
    Ok(tally)
}

/// Tests whose tools take paths that differ from kernel to kernel, run in every guest (names
/// or parts of names): every live tool's load, attach and detach (links or perf-event ioctls,
/// `signals::`), each attach ladder's rungs with a real count (forksnoop, softirq-top,
/// migrations, wqtop, reclaimtop), kprobe_multi or one kprobe per function, uprobe_multi or a
/// cookie or one object per uprobe, fexit or kretprobe for return values, USDT semaphores, the
/// batch drain where hash maps refuse lookup-and-delete (5.10), doctor's claims against the
/// ladders, the static binary's uprobe on itself — and for every other tool one test that
/// counts something against ground truth, so each tool loads and counts on every kernel. The
/// other tests run on the host kernel only, unless `--every-test` (`cargo xtask test --full`)
/// or a `--filter` asks for them.
const EVERY_GUEST: &[&str] = &[
    "signals::",
    "::each_attach_mechanism",
    "probes::kernel_function_",
    "probes::kprobe_multi_glob_",
    "probes::uprobe_rungs_count_alike",
    "probes::many_uprobes_detach_quickly",
    "probes::argdist_uprobe_retval_and_arg",
    "usdt::python_",
    "usdt::libstdcxx_",
    "forksnoop::summary_intervals",
    "dist::empty_root_uprobe_on_itself",
    "doctor::claims_match_the_ladder",
    "doctor::fallback_rows_match_the_tools",
    "migrations::taskset_moves_are_counted_exactly",
    "wqtop::runs_match_tracefs_each_mechanism",
    "reclaimtop::memcg_reclaim_via_raw_tp_and_tracepoint",
    // One counting test per remaining tool. Not here, for their cost under TCG (26–32 s
    // each, 2026-12-07): funccount on a tracepoint (argdist's test counts through the same
    // tracepoint programs), runqlat (ktop's test counts with its wakeup and switch programs),
    // serve (its collectors are these tools' objects).
    "hardirqs::counts_match_sys_kernel_irq",
    "profile::kstacks_lists_only_kernel_threads",
    "profile::offcputime_sees_nanosleep_time",
    "memflame::hotcold_thread_churn_evicted_and_exact",
    "memflame::memleak_outstanding_half_by_stack",
    "probes::argdist_sched_switch_prev_state",
    "probes::trace_prints_each_call",
    "probes::tracepoint_string_filter_counts_one_exec",
    "probe_tools::stackcount_kernel_stacks_have_no_pid",
    "sched::ktop_switch_counts_match_proc",
    "sched::cpudist_slice_count_matches_schedstat",
    "biotop::jbd2_commits_and_fsync_writer",
    // User stacks unwound from copies: the copy loop's verification, and the user registers
    // saved on kernel entry (their place on the kernel stack differs: FRED kernels pad it).
    "unwind::chain_without_frame_pointers_is_complete",
    "unwind::chain_in_a_system_call_is_complete",
    // funcgraph: kprobe_multi links on the root's callees found in the kernel's text.
    "funcgraph::",
    // functrace: kprobe_multi where the kernel has it, else the tracefs function tracer.
    "functrace::",
];

/// What each guest runs: the suite less `skips` (exact names); `names` are the tests run.
#[derive(Clone, Default)]
struct GuestTests {
    runs: usize,
    names: Vec<String>,
    skips: Vec<String>,
}

impl GuestTests {
    /// Part `part` of `parts` (every `parts`-th test, so slow and fast ones spread evenly):
    /// the other parts' tests join the skips.
    fn part(&self, part: usize, parts: usize) -> GuestTests {
        if parts <= 1 {
            return self.clone();
        }
        let mut mine = GuestTests {
            skips: self.skips.clone(),
            ..Default::default()
        };
        for (i, name) in self.names.iter().enumerate() {
            if i % parts == part {
                mine.runs += 1;
                mine.names.push(name.clone());
            } else {
                mine.skips.push(name.clone());
            }
        }
        mine
    }
}

/// One guest to boot: a kernel, and which part of its tests (`part` of `parts`).
#[derive(Clone, Copy)]
struct Job<'a> {
    spec: &'a KernelSpec,
    part: usize,
    parts: usize,
}

impl Job<'_> {
    /// The guest's name in the log: the kernel's, and which part (`debian-5.10/2`).
    fn label(&self) -> String {
        if self.parts == 1 {
            self.spec.name.to_string()
        } else {
            format!("{}/{}", self.spec.name, self.part + 1)
        }
    }

    /// A file of this guest's in its kernel's folder: `console.log`, `console.part2.log`.
    fn file(&self, dir: &Path, stem: &str, extension: &str) -> PathBuf {
        if self.parts == 1 {
            dir.join(format!("{stem}.{extension}"))
        } else {
            dir.join(format!("{stem}.part{}.{extension}", self.part + 1))
        }
    }
}

/// The guests to boot on `lanes` lanes: one a kernel, except that kernels which would run on
/// their own at the end (the remainder of kernels over lanes) are split in parts across the
/// lanes, so that no lane idles while one runs a whole kernel (3 kernels on 2 lanes: two
/// whole kernels side by side, then the third as two halves). Not with `--exec`.
fn jobs<'a>(kernels: &[&'a KernelSpec], lanes: usize, split: bool) -> Vec<Job<'a>> {
    let alone = kernels.len() % lanes;
    let mut jobs = Vec::new();
    for (i, &spec) in kernels.iter().enumerate() {
        let parts = if split && lanes > 1 && alone > 0 && i >= kernels.len() - alone {
            (lanes / alone).max(1)
        } else {
            1
        };
        jobs.extend((0..parts).map(|part| Job { spec, part, parts }));
    }
    jobs
}

/// The tests a guest runs: with `--every-test`, `--filter` or `--exec`, everything selected;
/// otherwise the `EVERY_GUEST` ones. The soak is never listed (its stage is the host's).
fn guest_tests(tests: &[String], args: &VmArgs) -> GuestTests {
    let all = args.every_test || args.filter.is_some() || args.exec.is_some();
    let mut plan = GuestTests::default();
    for test in tests.iter().filter(|t| *t != SOAK_TEST) {
        // The filter is applied here, as skips: the guest's arguments name whole tests
        // (`--exact`), which a substring filter would no longer match.
        let selected = args
            .filter
            .as_ref()
            .is_none_or(|f| test.contains(f.as_str()));
        if selected && (all || EVERY_GUEST.iter().any(|part| test.contains(part))) {
            plan.runs += 1;
            plan.names.push(test.clone());
        } else {
            plan.skips.push(test.clone());
        }
    }
    plan
}

/// The suite's test names, in its order (`--list` of the libtest-mimic binary).
fn list_tests(integration: &Path) -> Result<Vec<String>> {
    let out = Command::new(integration)
        .arg("--list")
        .output()
        .with_context(|| format!("cannot run {}", integration.display()))?;
    if !out.status.success() {
        bail!("{} --list failed", integration.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect())
}

fn run_kernel(
    job: &Job,
    kernel: &kernel::Kernel,
    binaries: &Binaries,
    args: &VmArgs,
    tests: &GuestTests,
) -> Result<Tally> {
    let spec = job.spec;
    let label = job.label();
    let dir = repo_root().join("target/vm").join(spec.name);
    fs::create_dir_all(&dir)?;
    // The unpacked kernel is the machine's (util::cache_dir), downloaded once; this clone's
    // folder holds its initramfs and console logs.
    println!(
        "vm-test {label}: {} ({}), {} tests",
        kernel.package,
        kernel.vmlinux.display(),
        tests.runs
    );
    let timeout = Duration::from_secs(
        args.timeout_minutes
            .map_or(600 + 20 * tests.runs as u64, |m| m * 60),
    );
    let log_path = job.file(&dir, "console", "log");
    let mut skips = tests.skips.clone();
    let mut tally = Tally::default();
    let mut boots = 0;
    loop {
        boots += 1;
        let plan = guest_plan(spec, binaries, args, &skips)?;
        let initrd = job.file(&dir, "initramfs", "cpio");
        fs::write(&initrd, initramfs::build(&kernel.modules, &plan)?)?;
        let mut run = boot(&kernel.vmlinux, &initrd, &log_path, &plan, &label, timeout)?;
        if emulator_text_patch_race(&run.console) {
            // An artefact of the emulator, not of a test. One more boot; a second crash fails
            // the stage as any panic does.
            let first = log_path.with_extension("first.log");
            let _ = fs::copy(&log_path, &first);
            println!(
                "vm-test {label}: the guest died of an int3 inside kernel text patching (a TCG \
                 cross-modifying-code race; console kept in {}); booting once more",
                first.display()
            );
            run = boot(&kernel.vmlinux, &initrd, &log_path, &plan, &label, timeout)?;
        }
        if args.exec.is_some() {
            let ok = run.reported == Some(0);
            println!("vm-test {label}: --exec {}", describe_exit(&run));
            return Ok(Tally {
                passed: u64::from(ok),
                failed: u64::from(!ok),
                ..Default::default()
            });
        }
        // The doctor smoke check counts once a kernel: in its first part's first boot.
        let (one, died) = verdict(spec, &run, &log_path, boots == 1 && job.part == 0);
        tally.absorb(one);
        // A guest kernel that died (panic, soft lockup) is one failure, reported with its
        // console's last lines; it boots once more to run the tests after the one it died in.
        let Some(Died { finished, during }) = died else {
            return Ok(tally);
        };
        if boots > 1 {
            return Ok(tally);
        }
        let log = log_path.with_extension(format!("boot{boots}.log"));
        let _ = fs::copy(&log_path, &log);
        println!(
            "vm-test {label}: booting once more for the tests after {} (console kept in {})",
            during.as_deref().unwrap_or("the last one that finished"),
            log.display()
        );
        skips.extend(finished);
        skips.extend(during);
    }
}

/// The guest's plan: its tests, less `skips`, and what it mounts.
fn guest_plan(
    spec: &KernelSpec,
    binaries: &Binaries,
    args: &VmArgs,
    skips: &[String],
) -> Result<GuestPlan> {
    // The soak test belongs to the soak stage on this kernel (`cargo xtask test --full`); in
    // the guest it would only report itself ignored, a skip with no kernel reason, so the
    // guest does not list it.
    let mut test_args = vec![
        "--test-threads".to_string(),
        "1".to_string(),
        "--skip".to_string(),
        SOAK_TEST.to_string(),
    ];
    if !skips.is_empty() {
        // Whole names: a test's name can be a prefix of another's.
        test_args.push("--exact".to_string());
        for name in skips {
            test_args.extend(["--skip".to_string(), name.clone()]);
        }
    }
    Ok(GuestPlan {
        kernel_name: spec.name.to_string(),
        tracer: binaries.tracer.clone(),
        test_binary: binaries.integration.clone(),
        test_args,
        exec: args.exec.clone(),
        test_cwd: repo_root().join("tracer"),
        shared_dirs: shared_dirs(),
        cold_dir: cold_files()?,
    })
}

/// A guest whose kernel died before its tests ended: the tests that finished, and the one
/// it died in.
struct Died {
    finished: Vec<String>,
    during: Option<String>,
}

/// Whether the guest died of an int3 trap hit while the kernel patched its own text: under
/// multi-threaded TCG a vCPU can run a stale translation of the int3 that text_poke_bp plants
/// while the other vCPU flips a static key (every tracepoint attach and detach does), after
/// the kernel has dropped the breakpoint's handler entry (seen on 6.12 in doctor and in a
/// softirq_top test). Round-robin TCG (see `boot`) should rule it out; this stays as a second
/// line of defence.
///
/// The trace names the patching code only when the patching CPU is the one that trapped; the
/// other vCPU's oops shows just the patched function (handle_softirqs+0xc2 at a
/// `0f 1f 44 00 00` NOP, the softirq_entry tracepoint's static branch). So any int3 oops
/// counts: the int3s the kernel plants itself (kprobes, text_poke_bp) are handled and never
/// oops, and BPF programs cannot emit one.
fn emulator_text_patch_race(console: &str) -> bool {
    console.contains("Oops: int3")
}

/// What came back from one VM.
struct VmRun {
    /// The code the guest wrote to isa-debug-exit, if it did.
    reported: Option<i32>,
    timed_out: bool,
    console: String,
    elapsed: Duration,
    /// When the guest's init, the tests and the report started, since qemu was started.
    init_at: Option<Duration>,
    doctor_at: Option<Duration>,
    tests_at: Option<Duration>,
    /// Each test's run time in the guest, from when its result line arrived.
    timer: TestTimer,
}

/// The guest's page-cache fillers: 32 files of 32 MiB, half the guest's RAM (`boot`'s
/// `-m 2048`) in steps small enough that a test reads little more than it needs.
const COLD_FILES: usize = 32;
const COLD_FILE_BYTES: u64 = 32 << 20;

/// The folder of sparse files guests read for page cache that reclaim can evict (reclaimtop's
/// and serve's tests): holes cost the host no disk and read as zeros, and over 9p with
/// cache=loose every page read is a clean page-cache page in the guest. The build's own
/// artifacts were read before, but a fresh clone has too few of them.
fn cold_files() -> Result<PathBuf> {
    let dir = target_dir().join("vm").join("cold-pages");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for i in 0..COLD_FILES {
        let path = dir.join(format!("{i:02}.data"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.set_len(COLD_FILE_BYTES)
            .with_context(|| format!("cannot size {}", path.display()))?;
    }
    Ok(dir.canonicalize().unwrap_or(dir))
}

/// The host folders the guest mounts again at their own paths (`GuestPlan::shared_dirs`): the
/// checkout, and the target dir when it lives elsewhere (CARGO_TARGET_DIR).
fn shared_dirs() -> Vec<PathBuf> {
    let canonical = |p: PathBuf| p.canonicalize().unwrap_or(p);
    let repo = canonical(repo_root());
    let target = canonical(target_dir());
    let mut dirs = vec![repo.clone()];
    if !target.starts_with(&repo) {
        dirs.push(target);
    }
    dirs
}

/// Boots qemu, echoes and logs the serial console, and kills the VM at the deadline.
fn boot(
    vmlinux: &Path,
    initrd: &Path,
    log_path: &Path,
    plan: &GuestPlan,
    label: &str,
    timeout: Duration,
) -> Result<VmRun> {
    let mut qemu = Command::new(QEMU);
    for (i, dir) in plan.shared_dirs.iter().enumerate() {
        qemu.arg("-virtfs").arg(format!(
            "local,path={},mount_tag={},security_model=none,readonly=on,multidevs=remap",
            // qemu's option syntax doubles a comma inside a value.
            dir.display().to_string().replace(',', ",,"),
            initramfs::shared_dir_tag(i)
        ));
    }
    let mut child = qemu
        // One host thread runs both vCPUs in turn (thread=single), which invalidates a stale
        // translation before the other vCPU runs again: see `emulator_text_patch_race`.
        .args(["-accel", "tcg,thread=single"])
        .args(["-cpu", "max", "-smp", "2", "-m", "2048"])
        .args(["-nographic", "-no-reboot", "-net", "none", "-bios", QBOOT])
        .arg("-kernel")
        .arg(vmlinux)
        .arg("-initrd")
        .arg(initrd)
        // loglevel=5: kernel warnings (WARN splats, lockups) reach the console; a soft lockup
        // panics and a panic ends the VM at once instead of at the timeout.
        .args(["-append", KERNEL_CMDLINE])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {QEMU}: run cargo xtask setup"))?;
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                if tx.send(line).is_err() {
                    break;
                }
                buf.clear();
            }
        });
    }
    drop(tx);

    let mut log = fs::File::create(log_path)
        .with_context(|| format!("cannot write {}", log_path.display()))?;
    let mut run = VmRun {
        reported: None,
        timed_out: false,
        console: String::new(),
        elapsed: Duration::ZERO,
        init_at: None,
        doctor_at: None,
        tests_at: None,
        timer: TestTimer::default(),
    };
    let deadline = start + timeout;
    // Guests run side by side (`VmArgs::guests`): whose line each is.
    let prefix = format!("{label}| ");
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if line.starts_with("==vm-test== init") {
                    run.init_at.get_or_insert(start.elapsed());
                } else if line == "==vm-test== doctor" {
                    run.doctor_at.get_or_insert(start.elapsed());
                } else if line == "==vm-test== tests" {
                    run.tests_at.get_or_insert(start.elapsed());
                }
                println!("{prefix}{line}");
                run.timer.line(start.elapsed().as_secs_f64(), &line);
                // Seconds since boot on each saved line: a test's line arrives when it ends,
                // so the gap to the line before is its run time in the guest.
                writeln!(log, "[{:7.1}] {line}", start.elapsed().as_secs_f64())?;
                run.console.push_str(&line);
                run.console.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                run.timed_out = true;
                let _ = child.kill();
                // Keep what was still buffered, e.g. the "test NAME ... " of a hung test.
                while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
                    println!("{prefix}{line}");
                    writeln!(log, "[{:7.1}] {line}", start.elapsed().as_secs_f64())?;
                    run.console.push_str(&line);
                    run.console.push('\n');
                }
                break;
            }
        }
    }
    let status = child.wait()?;
    run.elapsed = start.elapsed();
    // isa-debug-exit makes qemu exit with (code << 1) | 1; a poweroff, reboot or panic gives 0.
    run.reported = status.code().filter(|c| c & 1 == 1).map(|c| c >> 1);
    Ok(run)
}

/// Turns one VM's console and exit status into a tally, and says how it went; `Died` when
/// the guest kernel died (never reported) with tests still to run. `doctor` counts the doctor
/// smoke check (a guest booted again does not count it twice).
fn verdict(spec: &KernelSpec, run: &VmRun, log_path: &Path, doctor: bool) -> (Tally, Option<Died>) {
    let secs =
        |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.1}s", d.as_secs_f64()));
    println!(
        "vm-test {}: init at {}, doctor at {}, first test at {}, done at {:.1}s (log: {})",
        spec.name,
        secs(run.init_at),
        secs(run.doctor_at),
        secs(run.tests_at),
        run.elapsed.as_secs_f64(),
        log_path.display()
    );
    let has_summary = run.console.lines().any(|l| l.starts_with("test result:"));
    let progress = &run.timer;
    let mut tally = if has_summary {
        let mut tally = Tally::default();
        tally.add_libtest(spec.name, &run.console);
        tally
    } else {
        // No summary (hang, panic): still count the tests that finished, with the messages
        // the failed ones printed when they failed (libtest's own come only at the end).
        let mut tally = progress.tally.clone();
        tally.failures = progress
            .failed
            .iter()
            .map(|name| match progress.message(name) {
                Some(why) => format!("{}: {name} — {why}", spec.name),
                None => format!("{}: {name}", spec.name),
            })
            .collect();
        tally
    };
    tally.times = run
        .timer
        .times
        .iter()
        .map(|(test, secs)| (spec.name.to_string(), test.clone(), *secs))
        .collect();

    if doctor {
        match doctor_missing(spec, &run.console) {
            Ok(()) => tally.passed += 1,
            Err(why) => {
                println!("vm-test {}: FAILED doctor smoke check: {why}", spec.name);
                tally.failed += 1;
                tally
                    .failures
                    .push(format!("{}: doctor smoke check", spec.name));
            }
        }
    }

    let during = progress.pending.clone();
    let died = (run.reported.is_none() && !run.timed_out && run.tests_at.is_some()).then(|| Died {
        finished: progress
            .times
            .iter()
            .map(|(name, _)| name.clone())
            .collect(),
        during: during.clone(),
    });
    let problem = match run.reported {
        _ if run.timed_out => Some(format!(
            "timed out after {:.0}s{}{}",
            run.elapsed.as_secs_f64(),
            kernel_trouble(&run.console)
                .map(|l| format!(" ({l})"))
                .unwrap_or_default(),
            during
                .as_ref()
                .map(|t| format!(" in {t}"))
                .unwrap_or_default()
        )),
        Some(code) if code == i32::from(initramfs::EXIT_SETUP_FAILED) => {
            Some("guest setup failed".into())
        }
        Some(code) if !has_summary => {
            Some(format!("the test binary printed no summary (exit {code})"))
        }
        Some(code) if code != 0 && tally.failed == 0 => {
            Some(format!("the test binary exited with {code}"))
        }
        Some(_) => None,
        None => Some(format!(
            "{}{}; console's last lines: {}",
            describe_exit(run),
            during
                .as_ref()
                .map(|t| format!(" during {t}"))
                .unwrap_or_default(),
            last_lines(&run.console, 6)
        )),
    };
    if let Some(problem) = problem {
        println!("vm-test {}: FAILED: {problem}", spec.name);
        tally.failed += 1;
        tally.failures.push(format!("{}: {problem}", spec.name));
    }
    (tally, died)
}

/// The console's last `n` non-empty lines, joined with " | ".
fn last_lines(console: &str, n: usize) -> String {
    let lines: Vec<&str> = console.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// How the VM ended, in words.
fn describe_exit(run: &VmRun) -> String {
    match run.reported {
        _ if run.timed_out => format!("timed out after {:.0}s", run.elapsed.as_secs_f64()),
        Some(code) => format!("exited with {code}"),
        None => "the guest never reported (kernel panic, or it powered off)".into(),
    }
}

/// The first line where the kernel said it is in trouble (panic, lockup, oops).
fn kernel_trouble(console: &str) -> Option<&str> {
    console.lines().find(|l| {
        [
            "Kernel panic",
            "BUG:",
            "Oops",
            "rcu_preempt self-detected stall",
        ]
        .iter()
        .any(|w| l.contains(w))
    })
}

/// Checks that `tracer doctor` in the guest said "yes" for what this kernel has.
fn doctor_missing(spec: &KernelSpec, console: &str) -> Result<(), String> {
    let section: Vec<&str> = console
        .lines()
        .skip_while(|l| *l != "==vm-test== doctor")
        .take_while(|l| *l != "==vm-test== tests")
        .collect();
    if section.is_empty() {
        return Err("doctor did not run".into());
    }
    let missing: Vec<&str> = spec
        .doctor_expects
        .iter()
        .copied()
        .filter(|feature| {
            !section.iter().any(|l| {
                let mut words = l.split_whitespace();
                words.next() == Some(*feature) && words.next() == Some("yes")
            })
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("not available: {}", missing.join(", ")))
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|p| p.join(cmd))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_tests_without_a_summary() {
        let console = "test a ... ok\ntest b ... chatter\nok\ntest c ... ignored, no kprobes\n\
                       test d ... \n==test-failed== d: boom\nFAILED\n\
                       test e ... [  358.3] rcu: INFO: stall\n";
        let progress = |console: &str| {
            let mut timer = TestTimer::default();
            for line in console.lines() {
                timer.line(0.0, line);
            }
            timer
        };
        let timer = progress(console);
        let tally = &timer.tally;
        assert_eq!((tally.passed, tally.failed, tally.skipped), (2, 1, 1));
        assert_eq!(timer.pending.as_deref(), Some("e"));
        let names: Vec<&str> = timer.times.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        assert_eq!(timer.message("d"), Some("boom"));
        assert_eq!(progress("test a ... ok\n").pending, None);
    }

    fn names(tests: &[&str]) -> Vec<String> {
        tests.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn guests_run_the_kernel_dependent_tests_unless_asked_for_all() {
        let tests = names(&[
            "cli::a",
            "signals::forksnoop",
            "soak::all_live_tools",
            "forksnoop::each_attach_mechanism",
            "probes::kernel_function_counts_opens",
            "serve::d",
        ]);
        let plan = guest_tests(&tests, &VmArgs::default());
        assert_eq!(plan.runs, 3);
        assert_eq!(plan.skips, ["cli::a", "serve::d"]);
        let every = VmArgs {
            every_test: true,
            ..Default::default()
        };
        let plan = guest_tests(&tests, &every);
        assert_eq!((plan.runs, plan.skips.len()), (5, 0));
        // A filter selects by substring, whatever the kind of test; the others are skipped
        // by exact name (the guest runs with --exact).
        let filtered = VmArgs {
            filter: Some("forksnoop".into()),
            ..Default::default()
        };
        let plan = guest_tests(&tests, &filtered);
        assert_eq!(
            plan.names,
            ["signals::forksnoop", "forksnoop::each_attach_mechanism"]
        );
        assert_eq!(plan.skips.len(), 3);
    }

    #[test]
    fn kernels_left_alone_at_the_end_are_split_across_the_lanes() {
        let k: Vec<&KernelSpec> = KERNELS.iter().take(3).collect();
        let shape = |jobs: Vec<Job>| -> Vec<(usize, usize, usize)> {
            jobs.iter()
                .map(|j| {
                    let kernel = k.iter().position(|s| s.name == j.spec.name).unwrap_or(9);
                    (kernel, j.part, j.parts)
                })
                .collect()
        };
        assert_eq!(
            shape(jobs(&k, 2, true)),
            [(0, 0, 1), (1, 0, 1), (2, 0, 2), (2, 1, 2)]
        );
        assert_eq!(shape(jobs(&k, 1, true)), [(0, 0, 1), (1, 0, 1), (2, 0, 1)]);
        assert_eq!(shape(jobs(&k, 3, true)), [(0, 0, 1), (1, 0, 1), (2, 0, 1)]);
        assert_eq!(shape(jobs(&k[..1], 2, true)), [(0, 0, 2), (0, 1, 2)]);
        assert_eq!(shape(jobs(&k, 2, false)), [(0, 0, 1), (1, 0, 1), (2, 0, 1)]);
        let tests = GuestTests {
            runs: 5,
            names: names(&["a", "b", "c", "d", "e"]),
            skips: names(&["x"]),
        };
        let second = tests.part(1, 2);
        assert_eq!((second.runs, second.names.clone()), (2, names(&["b", "d"])));
        assert_eq!(second.skips, names(&["x", "a", "c", "e"]));
        assert_eq!(
            Job {
                spec: k[2],
                part: 1,
                parts: 2
            }
            .label(),
            format!("{}/2", k[2].name)
        );
    }

    #[test]
    fn doctor_section_is_checked() {
        let spec = &KERNELS[0];
        let console = "==vm-test== doctor\nkprobe       yes  a\nkretprobe    yes  b\nfentry       no   c\n\
                       fexit        yes  d\n==vm-test== tests\nfentry yes\n";
        assert_eq!(
            doctor_missing(spec, console),
            Err("not available: fentry".into())
        );
    }
}

//! The scheduler views against ground truth: ktop's on-CPU % of a 50 % duty-cycle spinner and
//! of a sleeper, its kernel-thread flags against /proc, per-CPU time adding up to the interval,
//! kworker functions symbolized; runqlat shifting up when CPUs are oversubscribed; cpudist
//! measuring known slice lengths; kthreads against /proc; bad input.

use std::{
    collections::HashMap,
    io::Write as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::common::{
    DEADLINE, Finished, Need, Running, WORKLOAD, Workload, agrees_with_schedstat,
    assert_nothing_loaded, bpf_objects_of, emulated, ensure, fail, irq_steal_us, loaded_programs,
    run, scaled, start, trial,
};

const ROOT: &[Need] = &[Need::Root];
const PF_KTHREAD: u64 = 0x0020_0000;

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "sched::ktop_duty_cycle_and_sleeper",
            ROOT,
            ktop_duty_cycle_and_sleeper,
        ),
        trial(
            "sched::ktop_kthread_flags_match_proc",
            ROOT,
            ktop_kthread_flags_match_proc,
        ),
        trial("sched::ktop_cpu_time_adds_up", ROOT, ktop_cpu_time_adds_up),
        trial(
            "sched::ktop_kworker_functions_symbolized",
            ROOT,
            ktop_kworker_functions_symbolized,
        ),
        trial(
            "sched::ktop_switch_counts_match_proc",
            ROOT,
            ktop_switch_counts_match_proc,
        ),
        trial(
            "sched::runqlat_shifts_up_when_saturated",
            ROOT,
            runqlat_shifts_up_when_saturated,
        ),
        trial(
            "sched::runqlat_per_process_and_kthreads",
            ROOT,
            runqlat_per_process_and_kthreads,
        ),
        trial("sched::cpudist_known_slices", ROOT, cpudist_known_slices),
        trial(
            "sched::cpudist_slice_count_matches_schedstat",
            ROOT,
            cpudist_slice_count_matches_schedstat,
        ),
        trial(
            "sched::only_needed_programs_loaded",
            ROOT,
            only_needed_programs_loaded,
        ),
        trial("sched::text_output", ROOT, text_output),
        trial("sched::kthreads_matches_proc", &[], kthreads_matches_proc),
        trial("sched::bad_input", ROOT, bad_input),
    ]
}

/// A background workload process, killed when dropped.
struct Background(Child);

impl Background {
    fn spawn(args: &[&str]) -> Result<Self, Failed> {
        Command::new(WORKLOAD)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .map(Self)
            .map_err(|e| fail(format!("cannot start workload: {e}")))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Under TCG, lowers a CPU hog to nice 19: the tool a test starts next spends seconds of
    /// CPU loading there, and hogs at its own weight on the 2 slow vCPUs stretched that past
    /// the start budget. Hogs still wait for each other's whole slices.
    fn yielding(self) -> Result<Self, Failed> {
        if emulated().is_none() {
            return Ok(self);
        }
        // SAFETY: plain syscall on a child we started.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, self.pid(), 19) };
        ensure(rc == 0, || {
            format!(
                "setpriority({}, 19): {}",
                self.pid(),
                std::io::Error::last_os_error()
            )
        })?;
        Ok(self)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Makes `pid` SCHED_FIFO, so that CPU hogs elsewhere on the machine (parallel builds) cannot
/// stretch its duty cycle or split its slices: the test then knows what the truth is. Not under
/// TCG: a real-time spinner on the guest's 2 slow vCPUs starves its RCU kthreads (soft lockup),
/// so there it stays SCHED_OTHER and the tests judge it with wider bounds.
pub(crate) fn realtime(pid: u32) -> Result<(), Failed> {
    if emulated().is_some() {
        return Ok(());
    }
    // SAFETY: an all-zero sched_param is valid (musl's has more fields than glibc's).
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    param.sched_priority = 10;
    // SAFETY: plain syscall on a child we started. The raw syscall: musl's wrapper is a stub
    // that fails with ENOSYS (the static build runs these tests too).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            pid as libc::c_long,
            libc::c_long::from(libc::SCHED_FIFO),
            &param as *const libc::sched_param,
        )
    };
    ensure(rc == 0, || {
        format!(
            "sched_setscheduler({pid}): {}",
            std::io::Error::last_os_error()
        )
    })
}

/// On-CPU nanoseconds of a task so far (/proc/PID/schedstat, first field).
pub(crate) fn schedstat_ns(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The seconds a one-interval runqlat/cpudist run covers: 2 natively, 1 under TCG, where each
/// run's start costs seconds of its own and 1 s still holds well over 100 events.
fn window() -> &'static str {
    if emulated().is_some() { "1" } else { "2" }
}

/// Stops a tool with SIGINT and collects its output, waiting longer under TCG (its end-of-run
/// read and symbolization take seconds there).
fn interrupt(tool: Running) -> Result<Finished, Failed> {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tool.pid() as i32, libc::SIGINT) };
    tool.wait(scaled(Duration::from_secs(15)))
}

/// Runs `tracer ARGS` (which must stop by itself) and returns its JSON records; `timeout` is
/// the native one, stretched under TCG.
fn json_run(args: &[&str], timeout: Duration) -> Result<Vec<Value>, Failed> {
    let tool = start(args)?;
    let done = tool.wait(scaled(timeout))?.ok()?;
    done.json()
}

fn intervals(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["type"] == "interval").collect()
}

fn thread(interval: &Value, tid: u32) -> Option<&Value> {
    interval["threads"]
        .as_array()?
        .iter()
        .find(|t| t["tid"] == tid)
}

fn proc_stat_flags(tid: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{tid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after the comm start at field 3; flags is field 9.
    rest.split_whitespace().nth(6)?.parse().ok()
}

fn ktop_duty_cycle_and_sleeper() -> Result<(), Failed> {
    let tcg = emulated().is_some();
    // Under TCG the tool's intervals end late, so the workloads outlast them by more.
    let secs = if tcg { "12" } else { "5" };
    let spinner = Workload::spawn(&["spin", secs, "50"])?;
    let sleeper = Workload::spawn(&["sleep", secs])?;
    let (spin_pid, sleep_pid) = (spinner.pid, sleeper.pid);
    realtime(spin_pid)?;
    // Under TCG 2 fully covered intervals are judged instead of 3: each costs seconds there.
    let count = if tcg { 3 } else { 4 };
    let tool = start(&["ktop", "--json", "1", &count.to_string()])?;
    let a = std::thread::spawn(move || spinner.go_and_wait());
    let b = std::thread::spawn(move || sleeper.go_and_wait());
    let done = tool.wait(scaled(Duration::from_secs(20)))?.ok()?;
    a.join().map_err(|_| fail("spinner thread panicked"))??;
    b.join().map_err(|_| fail("sleeper thread panicked"))??;
    let records = done.json()?;
    let intervals = intervals(&records);
    ensure(intervals.len() == count, || {
        format!("{} intervals, expected {count}", intervals.len())
    })?;
    // Natively (SCHED_FIFO) the spinner runs its 5 ms of each 10 ms. Under TCG (SCHED_OTHER,
    // timers late) it is preempted, oversleeps and on 5.10 overruns its busy half (slices of
    // 8-16 ms seen): judged as clearly busy, clearly under 100 %, and blocking often.
    let (pct_range, min_voluntary) = if tcg {
        (10.0..=75.0, 20)
    } else {
        (40.0..=60.0, 50)
    };
    // The first interval includes the workloads' start; judge the fully covered ones.
    for interval in &intervals[1..] {
        let spin = thread(interval, spin_pid)
            .ok_or_else(|| fail(format!("spinner {spin_pid} missing: {interval}")))?;
        let pct = spin["oncpu_pct"].as_f64().unwrap_or(-1.0);
        eprintln!(
            "spinner at {pct:.1}%, {} voluntary switches",
            spin["voluntary"]
        );
        ensure(pct_range.contains(&pct), || {
            format!("spinner at {pct:.1}% (expected {pct_range:?}): {spin}")
        })?;
        ensure(
            spin["kthread"] == false && spin["comm"] == "tracer-workload",
            || format!("identity: {spin}"),
        )?;
        ensure(
            spin["voluntary"].as_u64().unwrap_or(0) >= min_voluntary,
            || format!("a 10 ms duty cycle blocks ~100/s: {spin}"),
        )?;
        let sleep_pct = thread(interval, sleep_pid)
            .and_then(|t| t["oncpu_pct"].as_f64())
            .unwrap_or(0.0);
        ensure(sleep_pct < 1.0, || format!("sleeper at {sleep_pct:.2}%"))?;
    }
    Ok(())
}

/// The tool each kind of kernel thread is pointed at (docs/tools/kthreads.md, issue 14).
fn expected_see(comm: &str) -> Option<&'static str> {
    [
        ("kswapd", "reclaimtop"),
        ("jbd2/", "biotop --jbd2"),
        ("kworker/", "wqtop"),
        ("ksoftirqd/", "softirq-top"),
        ("migration/", "migrations"),
    ]
    .iter()
    .find(|(prefix, _)| comm.starts_with(prefix))
    .map(|(_, tool)| *tool)
}

fn ktop_kthread_flags_match_proc() -> Result<(), Failed> {
    let records = json_run(&["ktop", "--json", "1", "2"], Duration::from_secs(15))?;
    let (mut kernel, mut user) = (0, 0);
    for interval in intervals(&records) {
        for t in interval["threads"].as_array().into_iter().flatten() {
            let tid = t["tid"].as_u64().unwrap_or(0);
            let Some(flags) = proc_stat_flags(tid) else {
                continue;
            }; // exited since
            let truth = flags & PF_KTHREAD != 0;
            ensure(t["kthread"] == truth, || {
                format!(
                    "tid {tid}: ktop says kthread={}, /proc flags {flags:#x}: {t}",
                    t["kthread"]
                )
            })?;
            if truth {
                kernel += 1;
                ensure(
                    !t["role"].is_null() || t["comm"].as_str().is_some_and(|c| !c.is_empty()),
                    || format!("{t}"),
                )?;
                // ktop knows the thread: a kworker points at wqtop filtered to it.
                let comm = t["comm"].as_str().unwrap_or("");
                let expected = expected_see(comm).map(|see| {
                    if comm.starts_with("kworker/") && see == "wqtop" {
                        format!("wqtop --worker {}", t["tid"])
                    } else {
                        see.to_string()
                    }
                });
                ensure(t["see"].as_str() == expected.as_deref(), || {
                    format!(
                        "ktop points a kernel thread at {}, expected {expected:?}: {t}",
                        t["see"]
                    )
                })?;
            } else {
                ensure(t["see"].is_null(), || {
                    format!("a user thread with a pointer: {t}")
                })?;
                user += 1;
            }
        }
    }
    ensure(kernel > 0 && user > 0, || {
        format!("checked {kernel} kernel and {user} user threads")
    })
}

fn ktop_cpu_time_adds_up() -> Result<(), Failed> {
    // Killed when dropped; under TCG the tool starts slowly, so it must outlast more.
    let _load = Background::spawn(&["spin", if emulated().is_some() { "60" } else { "6" }, "30"])?;
    let count = if emulated().is_some() { "2" } else { "4" };
    let records = json_run(&["ktop", "--json", "1", count], Duration::from_secs(20))?;
    let intervals = intervals(&records);
    ensure(intervals.len().to_string() == count, || {
        format!("{} intervals, expected {count}", intervals.len())
    })?;
    let mut ratios = Vec::new();
    for interval in &intervals {
        let interval_ns = interval["interval_ns"].as_f64().unwrap_or(0.0);
        let mut per_cpu: HashMap<u64, f64> = HashMap::new();
        for cpu in interval["cpus"].as_array().into_iter().flatten() {
            *per_cpu.entry(cpu["cpu"].as_u64().unwrap_or(0)).or_default() +=
                cpu["idle_ns"].as_f64().unwrap_or(0.0);
        }
        for t in interval["threads"].as_array().into_iter().flatten() {
            for c in t["per_cpu"].as_array().into_iter().flatten() {
                *per_cpu.entry(c["cpu"].as_u64().unwrap_or(0)).or_default() +=
                    c["oncpu_ns"].as_f64().unwrap_or(0.0);
            }
        }
        let online = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        ensure(per_cpu.len() == online, || {
            format!("{} CPUs accounted, {online} online", per_cpu.len())
        })?;
        for (cpu, sum) in &per_cpu {
            ratios.push((*cpu, sum / interval_ns, *sum, interval_ns));
        }
    }
    let summary: Vec<String> = ratios
        .iter()
        .map(|(cpu, r, _, _)| format!("cpu{cpu} {:.1}%", r * 100.0))
        .collect();
    eprintln!("threads + idle per interval: {}", summary.join(", "));
    for (cpu, ratio, sum, interval_ns) in ratios {
        ensure((0.95..=1.05).contains(&ratio), || {
            format!(
                "cpu{cpu}: threads + idle = {sum:.0} ns over a {interval_ns:.0} ns interval ({:.1}%)",
                ratio * 100.0
            )
        })?;
    }
    Ok(())
}

fn ktop_kworker_functions_symbolized() -> Result<(), Failed> {
    let tool = start(&["ktop", "--json", "--kthreads", "1", "3"])?;
    // Writeback and fsync go through kworkers (block, writeback, ext4/...): make sure some run.
    let path = std::env::temp_dir().join(format!("tracer-ktop-{}", std::process::id()));
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline {
        if let Ok(mut f) = std::fs::File::create(&path) {
            let _ = f.write_all(&[7u8; 65536]);
            let _ = f.sync_all();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&path);
    let records = tool.wait(scaled(Duration::from_secs(15)))?.ok()?.json()?;
    let mut named = Vec::new();
    for interval in intervals(&records) {
        for t in interval["threads"].as_array().into_iter().flatten() {
            ensure(t["kthread"] == true, || {
                format!("--kthreads showed a user thread: {t}")
            })?;
            let Some(function) = t["work"]["function"].as_str() else {
                continue;
            };
            ensure(!function.starts_with("0x") && !function.is_empty(), || {
                format!("unsymbolized work function: {t}")
            })?;
            ensure(
                function
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'),
                || format!("not a symbol name: {function}"),
            )?;
            named.push(function.to_string());
        }
    }
    ensure(!named.is_empty(), || {
        "no kworker ran a work item with a function shown".into()
    })?;
    Ok(())
}

/// Voluntary/involuntary switches against the kernel's own counters in /proc/PID/status.
fn ktop_switch_counts_match_proc() -> Result<(), Failed> {
    let mut spinner =
        Workload::spawn(&["spin", if emulated().is_some() { "2" } else { "3" }, "50"])?;
    let pid = spinner.pid;
    let read = |field: &str| -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().parse().ok())
    };
    let tool = start(&["ktop", "--json", "-p", &pid.to_string(), "10", "1"])?;
    let before = (
        read("voluntary_ctxt_switches:"),
        read("nonvoluntary_ctxt_switches:"),
    );
    let oncpu_before = schedstat_ns(pid).unwrap_or(0);
    let unseen_before = irq_steal_us();
    // The counters after: read from the exited, not yet reaped spinner (its final values,
    // the exit's own switch included). Polling them while it ran raced with its exit: under
    // TCG in a loaded 6.1 guest no poll landed before it ended ("cannot read /proc counters").
    spinner.go_and_wait_exited(DEADLINE)?;
    let after = (
        read("voluntary_ctxt_switches:"),
        read("nonvoluntary_ctxt_switches:"),
    );
    let oncpu_after = schedstat_ns(pid).unwrap_or(oncpu_before);
    let unseen_ns = irq_steal_us().saturating_sub(unseen_before) * 1000;
    drop(spinner);
    let records = interrupt(tool)?.ok()?.json()?;
    let t = intervals(&records)
        .first()
        .and_then(|i| thread(i, pid))
        .cloned();
    let t = t.ok_or_else(|| fail("workload missing from ktop output"))?;
    let (Some(v0), Some(n0), Some(v1), Some(n1)) = (before.0, before.1, after.0, after.1) else {
        return Err(fail("cannot read /proc counters"));
    };
    let (vol, invol) = (
        t["voluntary"].as_u64().unwrap_or(0),
        t["involuntary"].as_u64().unwrap_or(0),
    );
    let (true_vol, true_invol) = (v1 - v0, n1 - n0);
    let oncpu = t["oncpu_ns"].as_u64().unwrap_or(0);
    let truth = oncpu_after - oncpu_before;
    let summary = format!(
        "voluntary {vol} vs /proc {true_vol}, involuntary {invol} vs /proc {true_invol}, \
         on-CPU {oncpu} ns vs /proc schedstat {truth} ns (+ {unseen_ns} ns hard-IRQ and \
         steal, all CPUs)"
    );
    eprintln!("{summary}");
    // Both sides end at the exit now; the slack covers a switch or two of ktop's snapshot
    // racing the first /proc read, wider under TCG.
    let (slack, slack_ns) = if emulated().is_some() {
        (8, 40_000_000)
    } else {
        (3, 10_000_000)
    };
    ensure(vol.abs_diff(true_vol) <= slack + true_vol / 50, || {
        summary.clone()
    })?;
    ensure(
        invol.abs_diff(true_invol) <= slack + true_invol / 50,
        || summary.clone(),
    )?;
    // On-CPU time against the scheduler's own sum_exec_runtime (1.5 s of CPU in 3 s, 1 in 2).
    // Ours is wall-clock from switch-in to switch-out, so above it may also hold hard-IRQ and
    // stolen time, which sum_exec_runtime leaves out.
    ensure(
        agrees_with_schedstat(oncpu, truth, truth, unseen_ns, 2.0, slack_ns),
        || summary.clone(),
    )?;
    Ok(())
}

/// Mean log2 slot of a JSON histogram, and its count.
fn mean_slot(hist: &Value) -> (f64, u64) {
    let mut total = 0u64;
    let mut weighted = 0.0;
    for (i, b) in hist["buckets"].as_array().into_iter().flatten().enumerate() {
        let n = b["count"].as_u64().unwrap_or(0);
        total += n;
        weighted += n as f64 * i as f64;
    }
    (
        if total == 0 {
            0.0
        } else {
            weighted / total as f64
        },
        total,
    )
}

fn runqlat_histogram(args: &[&str]) -> Result<Value, Failed> {
    let records = json_run(args, Duration::from_secs(20))?;
    let h = records
        .iter()
        .find(|r| r["type"] == "histograms")
        .ok_or_else(|| fail("no histograms record"))?;
    ensure(h["schema"] == "tracer.runqlat.v2", || {
        format!("schema: {h}")
    })?;
    Ok(h["histograms"][0]["hist"].clone())
}

fn runqlat_shifts_up_when_saturated() -> Result<(), Failed> {
    let (idle_mean, idle_n) = mean_slot(&runqlat_histogram(&["runqlat", "--json", window(), "1"])?);
    // Killed when dropped; under TCG the tool starts slowly, so they must outlast more.
    let secs = if emulated().is_some() { "60" } else { "8" };
    let spinners: Vec<Background> = (0..4)
        .map(|_| Background::spawn(&["spin", secs])?.yielding())
        .collect::<Result<_, _>>()?;
    std::thread::sleep(Duration::from_millis(300));
    let records = json_run(
        &["runqlat", "--json", "-P", window(), "1"],
        Duration::from_secs(20),
    )?;
    let pids: Vec<u64> = spinners.iter().map(|s| s.pid() as u64).collect();
    drop(spinners);
    let h = records
        .iter()
        .find(|r| r["type"] == "histograms")
        .ok_or_else(|| fail("no histograms"))?;
    // Merge the histograms: every task, and the spinners alone (keyed by their pids).
    let (mut all, mut spin) = (vec![0u64; 64], vec![0u64; 64]);
    for x in h["histograms"].as_array().into_iter().flatten() {
        for (i, b) in x["hist"]["buckets"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let n = b["count"].as_u64().unwrap_or(0);
            all[i] += n;
            if x["pid"].as_u64().is_some_and(|p| pids.contains(&p)) {
                spin[i] += n;
            }
        }
    }
    let as_hist = |slots: &[u64]| serde_json::json!({"buckets": slots.iter().map(|n| serde_json::json!({"count": n})).collect::<Vec<_>>()});
    let (busy_mean, busy_n) = mean_slot(&as_hist(&all));
    let (spin_mean, spin_n) = mean_slot(&as_hist(&spin));
    ensure(idle_n > 0 && busy_n > 0 && spin_n > 0, || {
        format!("counts: idle {idle_n}, saturated {busy_n}, spinners {spin_n}")
    })?;
    let summary = format!(
        "mean log2 slot: before {idle_mean:.2} ({idle_n} waits), saturated {busy_mean:.2} ({busy_n}), \
         the 4 spinners {spin_mean:.2} ({spin_n})"
    );
    eprintln!("{summary}");
    // 4 spinners on 2 CPUs wait for whole time slices of the others (slot >= 8: >= 256 µs)
    // where an idle machine wakes tasks in µs. A machine busy with other work is already
    // slower, so the spinners are judged against both: 8x the idle wait at least. Measured: 12.1-
    // 12.5 against 6.1-6.3 under TCG; 8.5-10.4 against 1.7-3.6 on the host, lower when other
    // work's wakeups preempt them (EEVDF's slices are ~1.5 ms here).
    ensure(busy_mean > idle_mean, || summary.clone())?;
    ensure(spin_mean >= 8.0 && spin_mean >= idle_mean + 3.0, || {
        summary.clone()
    })
}

fn runqlat_per_process_and_kthreads() -> Result<(), Failed> {
    let secs = if emulated().is_some() { "60" } else { "6" };
    let spinners: Vec<Background> = (0..3)
        .map(|_| Background::spawn(&["spin", secs])?.yielding())
        .collect::<Result<_, _>>()?;
    let records = json_run(
        &["runqlat", "--json", "-P", window(), "1"],
        Duration::from_secs(15),
    )?;
    let h = records
        .iter()
        .find(|r| r["type"] == "histograms")
        .ok_or_else(|| fail("no histograms"))?;
    let pids: Vec<u64> = h["histograms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["pid"].as_u64())
        .collect();
    for s in &spinners {
        ensure(pids.contains(&(s.pid() as u64)), || {
            format!("spinner {} has no histogram: {pids:?}", s.pid())
        })?;
    }
    // Stopped before the next run starts: under TCG they would still be spinning (their 60 s).
    drop(spinners);
    let one = Background::spawn(&["spin", secs, "20"])?;
    let records = json_run(
        &[
            "runqlat",
            "--json",
            "-p",
            &one.pid().to_string(),
            "-L",
            window(),
            "1",
        ],
        Duration::from_secs(15),
    )?;
    let h = records
        .iter()
        .find(|r| r["type"] == "histograms")
        .ok_or_else(|| fail("no histograms"))?;
    let tids: Vec<u64> = h["histograms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["tid"].as_u64())
        .collect();
    ensure(tids == vec![one.pid() as u64], || {
        format!("-p {} -L gave tids {tids:?}", one.pid())
    })?;
    let records = json_run(
        &["runqlat", "--json", "--kthreads", window(), "1"],
        Duration::from_secs(15),
    )?;
    let h = records
        .iter()
        .find(|r| r["type"] == "histograms")
        .ok_or_else(|| fail("no histograms"))?;
    let groups: Vec<&str> = h["histograms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["group"].as_str())
        .collect();
    ensure(!groups.is_empty(), || "no kernel-thread groups".into())?;
    for g in &groups {
        ensure(
            !g.contains("tracer") && (!g.contains('/') || g.ends_with("/*")),
            || format!("group with an instance suffix or a user task: {g}"),
        )?;
    }
    Ok(())
}

fn cpudist_known_slices() -> Result<(), Failed> {
    // 50 % of a 10 ms period: runs ~5 ms, sleeps ~5 ms, repeatedly.
    let spinner =
        Background::spawn(&["spin", if emulated().is_some() { "60" } else { "10" }, "50"])?;
    realtime(spinner.pid())?;
    let pid = spinner.pid().to_string();
    for (mode, what) in [(None, "on-CPU"), (Some("-O"), "off-CPU")] {
        let mut args = vec!["cpudist", "--json", "-p", &pid];
        args.extend(mode);
        args.extend([window(), "1"]);
        let records = json_run(&args, Duration::from_secs(15))?;
        let h = records
            .iter()
            .find(|r| r["type"] == "histograms")
            .ok_or_else(|| fail("no histograms"))?;
        ensure(h["schema"] == "tracer.cpudist.v2", || {
            format!("schema: {h}")
        })?;
        let hist = &h["histograms"][0]["hist"];
        let buckets = hist["buckets"].as_array().cloned().unwrap_or_default();
        let total: u64 = buckets
            .iter()
            .map(|b| b["count"].as_u64().unwrap_or(0))
            .sum();
        // 2048..8191 us holds 5 ms slices even with some preemption or timer slack.
        let around_5ms: u64 = buckets
            .iter()
            .filter(|b| {
                b["low"]
                    .as_u64()
                    .is_some_and(|l| (2048..=4096).contains(&l))
            })
            .map(|b| b["count"].as_u64().unwrap_or(0))
            .sum();
        let shape: Vec<String> = buckets
            .iter()
            .filter(|b| b["count"].as_u64().unwrap_or(0) > 0)
            .map(|b| format!("{}:{}", b["low"], b["count"]))
            .collect();
        eprintln!(
            "{what}: {around_5ms} of {total} in 2-8 ms; low:count {}",
            shape.join(" ")
        );
        if emulated().is_some() {
            // SCHED_OTHER under TCG: preemption splits some slices and timers fire late, but
            // the 5 ms of running and of sleeping still dominate: 1-16 ms holds most.
            let around: u64 = buckets
                .iter()
                .filter(|b| {
                    b["low"]
                        .as_u64()
                        .is_some_and(|l| (1024..=8192).contains(&l))
                })
                .map(|b| b["count"].as_u64().unwrap_or(0))
                .sum();
            ensure(total >= 30, || {
                format!("{what}: only {total} slices in 1 s")
            })?;
            ensure(around * 10 >= total * 5, || {
                format!("{what}: {around} of {total} slices in 1-16 ms: {hist}")
            })?;
            continue;
        }
        ensure(total >= 100, || {
            format!("{what}: only {total} slices in 2 s")
        })?;
        ensure(around_5ms * 10 >= total * 6, || {
            format!("{what}: {around_5ms} of {total} slices in 2-8 ms: {hist}")
        })?;
    }
    Ok(())
}

/// cpudist's slice count for a process against the scheduler's own count of times it ran
/// (/proc/PID/schedstat, third field), over the process's whole life.
fn cpudist_slice_count_matches_schedstat() -> Result<(), Failed> {
    let spinner = Workload::spawn(&["spin", "2", "30"])?;
    let pid = spinner.pid;
    let slices = |pid: u32| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
            .ok()?
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()
    };
    let tool = start(&["cpudist", "--json", "-p", &pid.to_string()])?;
    let before = slices(pid).ok_or_else(|| fail("cannot read schedstat"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = spinner.go_and_wait();
        let _ = tx.send(());
    });
    let mut after = before;
    while rx.try_recv().is_err() {
        after = slices(pid).unwrap_or(after);
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = worker.join();
    let records = interrupt(tool)?.ok()?.json()?;
    let h = records
        .iter()
        .find(|r| r["type"] == "histograms")
        .ok_or_else(|| fail("no histograms"))?;
    let counted = h["histograms"][0]["count"].as_u64().unwrap_or(0);
    // Its very last slices (exit) may come after our last read of schedstat; under TCG our
    // 2 ms polls come late, so more of them can.
    let truth = after - before;
    let slack = if emulated().is_some() { 8 } else { 3 };
    eprintln!("cpudist counted {counted} slices, schedstat {truth}");
    ensure(counted.abs_diff(truth) <= slack, || {
        format!("cpudist counted {counted} slices, schedstat {truth}")
    })
}

fn only_needed_programs_loaded() -> Result<(), Failed> {
    for (tool, own, others) in [
        ("runqlat", "runqlat_", ["ktop_", "cpudist_"]),
        ("cpudist", "cpudist_", ["ktop_", "runqlat_"]),
        ("ktop", "ktop_", ["cpudist_", "runqlat_"]),
    ] {
        let running = start(&[tool, "-d", "10"])?;
        let pid = running.pid();
        // Only what this tool holds: a previous tool's programs may still be being freed.
        let held = bpf_objects_of(pid).progs;
        let names: Vec<String> = loaded_programs()
            .into_iter()
            .filter(|(id, _)| held.contains(id))
            .map(|(_, name)| name)
            .collect();
        let done = interrupt(running)?.ok()?;
        ensure(names.iter().any(|n| n.starts_with(own)), || {
            format!("{tool} (pid {pid}): {own}* not loaded: {names:?}")
        })?;
        for other in others {
            ensure(!names.iter().any(|n| n.starts_with(other)), || {
                format!("{tool} loaded {other}* too: {names:?}")
            })?;
        }
        ensure(!done.stdout.is_empty(), || {
            format!("{tool} printed nothing on SIGINT")
        })?;
        assert_nothing_loaded(own)?;
        assert_nothing_loaded("sched_w")?;
    }
    Ok(())
}

fn text_output() -> Result<(), Failed> {
    let done = start(&["runqlat", "1", "1"])?
        .wait(scaled(Duration::from_secs(10)))?
        .ok()?;
    ensure(
        done.stdout
            .iter()
            .any(|l| l.contains("usecs") && l.contains("distribution")),
        || done.stdout.join("\n"),
    )?;
    let done = start(&["cpudist", "-m", "1", "1"])?
        .wait(scaled(Duration::from_secs(10)))?
        .ok()?;
    ensure(done.stdout.iter().any(|l| l.contains("msecs")), || {
        done.stdout.join("\n")
    })?;
    let done = start(&["ktop", "--kthreads", "1", "1"])?
        .wait(scaled(Duration::from_secs(10)))?
        .ok()?;
    ensure(
        done.stdout
            .iter()
            .any(|l| l.contains("%CPU") && l.contains("ROLE")),
        || done.stdout.join("\n"),
    )?;
    ensure(done.stdout.iter().any(|l| l.starts_with("ktop - ")), || {
        done.stdout.join("\n")
    })?;
    // Piped: no terminal escapes.
    ensure(!done.stdout.iter().any(|l| l.contains('\x1b')), || {
        "escape codes in piped output".into()
    })?;
    Ok(())
}

fn kthreads_matches_proc() -> Result<(), Failed> {
    let out = run(&["kthreads", "--json"]);
    ensure(out.status.success(), || {
        String::from_utf8_lossy(&out.stderr).into_owned()
    })?;
    let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| fail(format!("not JSON: {e}")))?;
    let mut truth = 0;
    for entry in std::fs::read_dir("/proc")
        .map_err(|e| fail(e.to_string()))?
        .flatten()
    {
        if let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u64>().ok())
            && proc_stat_flags(pid).is_some_and(|f| f & PF_KTHREAD != 0)
        {
            truth += 1;
        }
    }
    ensure(records.len().abs_diff(truth) <= 3, || {
        format!(
            "{} listed, {truth} PF_KTHREAD tasks in /proc",
            records.len()
        )
    })?;
    let kthreadd = records
        .iter()
        .find(|r| r["pid"] == 2)
        .ok_or_else(|| fail("kthreadd missing"))?;
    ensure(
        kthreadd["depth"] == 0 && kthreadd["comm"] == "kthreadd",
        || format!("{kthreadd}"),
    )?;
    for r in &records {
        ensure(r["schema"] == "tracer.kthreads.v2", || format!("{r}"))?;
        if r["pid"] != 2 {
            ensure(r["ppid"] == 2 && r["depth"] == 1, || {
                format!("not under kthreadd: {r}")
            })?;
        }
    }
    let ksoftirqd = records
        .iter()
        .find(|r| r["comm"] == "ksoftirqd/0")
        .ok_or_else(|| fail("no ksoftirqd/0"))?;
    ensure(ksoftirqd["cpus_allowed"] == "0", || {
        format!("ksoftirqd/0 binding: {ksoftirqd}")
    })?;
    ensure(
        ksoftirqd["role"]
            .as_str()
            .is_some_and(|r| r.contains("softirq")),
        || format!("{ksoftirqd}"),
    )?;
    // Every thread the lens tools explain points at its tool, in JSON and in the text.
    for r in &records {
        let comm = r["comm"].as_str().unwrap_or("");
        let expected = expected_see(comm);
        ensure(r["see"].as_str() == expected, || {
            format!("{comm} points at {}, expected {expected:?}: {r}", r["see"])
        })?;
    }
    for comm in ["ksoftirqd/0", "migration/0"] {
        ensure(records.iter().any(|r| r["comm"] == comm), || {
            format!("no {comm} listed")
        })?;
    }
    let listing = run(&["kthreads"]);
    let text = String::from_utf8_lossy(&listing.stdout);
    for (comm, see) in [
        ("ksoftirqd/0", "see softirq-top"),
        ("migration/0", "see migrations"),
    ] {
        ensure(
            text.lines()
                .any(|l| l.contains(&format!(" {comm} ")) && l.ends_with(see)),
            || format!("no '{comm} ... {see}' line in:\n{text}"),
        )?;
    }
    let group = run(&["kthreads", "--group"]);
    let text = String::from_utf8_lossy(&group.stdout);
    ensure(
        text.lines()
            .any(|l| l.starts_with("ksoftirqd/*") && l.ends_with("; see softirq-top")),
        || text.to_string(),
    )?;
    ensure(
        text.lines()
            .any(|l| l.starts_with("kworker/*") && l.ends_with("; see wqtop")),
        || text.to_string(),
    )?;
    Ok(())
}

fn bad_input() -> Result<(), Failed> {
    let cases: &[(&[&str], i32, &str)] = &[
        (&["runqlat", "0"], 2, "out of range"),
        (&["runqlat", "1", "0"], 2, "not a positive count"),
        (&["runqlat", "-m", "abc"], 2, "not a number"),
        (&["runqlat", "-p", "999999999"], 2, "no process with PID"),
        (&["runqlat", "-P", "-L"], 2, "cannot be used with"),
        (
            &["cpudist", "-p", "999999999", "1"],
            2,
            "no process with PID",
        ),
        (&["cpudist", "-x"], 2, "unexpected argument"),
        (&["cpudist", "-I", "--kthreads"], 2, "cannot be used with"),
        (&["ktop", "-p", "999999999"], 2, "no process with PID"),
        (&["ktop", "--top", "0"], 2, "--top"),
        (&["ktop", "-1"], 2, ""),
        (&["ktop", "--attach", "kprobe"], 2, "cannot attach"),
        (&["kthreads", "--comm", "a*b"], 2, "only a trailing"),
        (&["kthreads", "--sort", "size"], 2, "invalid value"),
    ];
    for (args, code, needle) in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or("");
        ensure(out.status.code() == Some(*code), || {
            format!(
                "{args:?}: exit {:?}, expected {code}: {stderr}",
                out.status.code()
            )
        })?;
        ensure(
            !stderr.contains("panicked") && !stderr.contains("verifier"),
            || format!("{args:?}: {stderr}"),
        )?;
        ensure(first.contains("error") && first.contains(needle), || {
            format!("{args:?}: first line '{first}' lacks '{needle}'")
        })?;
        if *code == 1 {
            ensure(stderr.lines().count() == 1, || {
                format!("{args:?}: more than one line: {stderr}")
            })?;
        }
    }
    Ok(())
}

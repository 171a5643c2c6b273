//! `--cgroup PATH` / `--cgroup-exact`: the in-kernel cgroup v2 filter. Three workloads run in
//! cgroups made for the test — one in the target, one in a child of it, one in a sibling
//! outside it — and each tool must see exactly the target's and the child's (only the
//! target's with `--cgroup-exact`), none of the sibling's.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::common::{
    Need, Running, Workload, emulated, ensure, expect_one_line_errors, fail, run, scaled, start,
    trial,
};

pub fn tests() -> Vec<Trial> {
    vec![
        trial("cgroup_filter_forksnoop", &[Need::Root], forksnoop),
        trial("cgroup_filter_funccount", &[Need::Root], funccount),
        trial("cgroup_filter_runqlat", &[Need::Root], runqlat),
        trial("cgroup_filter_ktop", &[Need::Root], ktop),
        trial("cgroup_filter_profile", &[Need::Root], profile),
        trial("cgroup_filter_offcputime", &[Need::Root], offcputime),
        trial("cgroup_filter_serve", &[Need::Root], serve),
        trial("cgroup_filter_bad_input", &[Need::Root], bad_input),
    ]
}

/// Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup/unified on this hybrid host,
/// /sys/fs/cgroup in the VM guests.
fn v2_root() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split(' ').next() == Some("cgroup2"))
            .then(|| PathBuf::from(left.split(' ').nth(4).unwrap_or_default()))
    })
}

/// The target cgroup, a child of it and a sibling outside it; removed on drop.
struct Cgroups {
    target: PathBuf,
    child: PathBuf,
    sibling: PathBuf,
}

impl Cgroups {
    fn create(name: &str) -> Result<Self, Failed> {
        let root = v2_root().ok_or_else(|| fail("no cgroup2 mount (mount -t cgroup2)"))?;
        let base = format!("tracer-test-{name}-{}", std::process::id());
        let cgroups = Self {
            target: root.join(&base),
            child: root.join(&base).join("child"),
            sibling: root.join(format!("{base}-sibling")),
        };
        for dir in [&cgroups.target, &cgroups.child, &cgroups.sibling] {
            std::fs::create_dir_all(dir)
                .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        }
        Ok(cgroups)
    }

    fn target(&self) -> &str {
        self.target.to_str().unwrap_or_default()
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        // A cgroup can be removed once its last task has exited, which lags the exit a bit.
        for dir in [&self.child, &self.target, &self.sibling] {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A workload moved into `cgroup` before it starts: everything it forks starts there too.
fn workload_in(cgroup: &Path, args: &[&str]) -> Result<Workload, Failed> {
    let workload = Workload::spawn(args)?;
    std::fs::write(cgroup.join("cgroup.procs"), workload.pid.to_string()).map_err(|e| {
        fail(format!(
            "cannot move {} into {}: {e}",
            workload.pid,
            cgroup.display()
        ))
    })?;
    Ok(workload)
}

/// The three workloads' PIDs.
struct Pids {
    target: u64,
    child: u64,
    sibling: u64,
}

/// Runs `target_args`/`child_args`/`sibling_args` in the three cgroups while `tracer ARGS
/// --cgroup TARGET [--cgroup-exact]` runs; returns the JSON records and the PIDs.
fn traced(
    tool_args: &[&str],
    exact: bool,
    workloads: [&[&str]; 3],
) -> Result<(Vec<Value>, Pids), Failed> {
    let cgroups = Cgroups::create(tool_args[0])?;
    let mut target = workload_in(&cgroups.target, workloads[0])?;
    let mut child = workload_in(&cgroups.child, workloads[1])?;
    let mut sibling = workload_in(&cgroups.sibling, workloads[2])?;
    let pids = Pids {
        target: target.pid.into(),
        child: child.pid.into(),
        sibling: sibling.pid.into(),
    };
    let mut args = tool_args.to_vec();
    args.extend(["--json", "--cgroup", cgroups.target()]);
    if exact {
        args.push("--cgroup-exact");
    }
    let tool: Running = start(&args)?;
    target.go();
    child.go();
    sibling.go();
    let deadline = std::time::Instant::now() + scaled(Duration::from_secs(30));
    while !(target.finished() && child.finished() && sibling.finished()) {
        if std::time::Instant::now() > deadline {
            return Err(fail("workloads did not finish in time"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let done = tool.stop(libc::SIGINT)?.ok()?;
    Ok((done.json()?, pids))
}

/// The records of `kind`.
fn of_type<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == kind).collect()
}

/// Fork counts of each workload: distinct, so a count says whose forks were seen.
const FORKS: [&str; 3] = ["7", "5", "11"];

fn forksnoop() -> Result<(), Failed> {
    for exact in [false, true] {
        let (records, pids) = traced(
            &["forksnoop"],
            exact,
            [
                &["fork", FORKS[0]],
                &["fork", FORKS[1]],
                &["fork", FORKS[2]],
            ],
        )?;
        let forks = of_type(&records, "fork");
        let by = |pid: u64| forks.iter().filter(|f| f["parent"]["pid"] == pid).count();
        let (target, child, sibling) = (by(pids.target), by(pids.child), by(pids.sibling));
        let expected_child = if exact { 0 } else { 5 };
        ensure(
            target == 7 && child == expected_child && sibling == 0,
            || {
                format!(
                    "exact={exact}: forks seen target {target} (made 7), child {child} \
                     (expected {expected_child}), sibling {sibling} (expected 0)"
                )
            },
        )?;
        ensure(forks.len() == 7 + expected_child, || {
            format!(
                "exact={exact}: {} forks in all, expected {}: {forks:?}",
                forks.len(),
                7 + expected_child
            )
        })?;
    }
    Ok(())
}

fn funccount() -> Result<(), Failed> {
    for exact in [false, true] {
        let (records, _) = traced(
            &["funccount", "t:sched:sched_process_fork"],
            exact,
            [
                &["fork", FORKS[0]],
                &["fork", FORKS[1]],
                &["fork", FORKS[2]],
            ],
        )?;
        let total: u64 = of_type(&records, "counts")
            .iter()
            .map(|r| r["total"].as_u64().unwrap_or(0))
            .sum();
        let expected = if exact { 7 } else { 12 };
        ensure(total == expected, || {
            format!("exact={exact}: counted {total} forks, expected {expected}: {records:?}")
        })?;
    }
    Ok(())
}

/// The PIDs a tool's rows name (`pid` members of the arrays under `field` of `kind` records).
fn pids_in(records: &[Value], kind: &str, field: &str) -> BTreeSet<u64> {
    of_type(records, kind)
        .iter()
        .flat_map(|r| r[field].as_array().cloned().unwrap_or_default())
        .filter_map(|row| row["pid"].as_u64())
        .collect()
}

/// Workloads that sleep and wake many times without forking: every row a sched tool prints
/// under the filter must be one of them.
fn sleepers() -> [&'static [&'static str]; 3] {
    let secs: &'static str = if emulated().is_some() { "3" } else { "1" };
    let args: &'static [&'static str] = match secs {
        "3" => &["repeat", "3", "sleep", "0.01"],
        _ => &["repeat", "1", "sleep", "0.01"],
    };
    [args, args, args]
}

fn expect_pids(tool: &str, exact: bool, seen: &BTreeSet<u64>, pids: &Pids) -> Result<(), Failed> {
    let expected: BTreeSet<u64> = if exact {
        [pids.target].into()
    } else {
        [pids.target, pids.child].into()
    };
    ensure(*seen == expected, || {
        format!(
            "{tool} exact={exact}: rows for PIDs {seen:?}, expected {expected:?} (sibling {})",
            pids.sibling
        )
    })
}

fn runqlat() -> Result<(), Failed> {
    for exact in [false, true] {
        let (records, pids) = traced(&["runqlat", "-P"], exact, sleepers())?;
        let seen = pids_in(&records, "histograms", "histograms");
        expect_pids("runqlat -P", exact, &seen, &pids)?;
    }
    Ok(())
}

fn ktop() -> Result<(), Failed> {
    for exact in [false, true] {
        let (records, pids) = traced(&["ktop", "1"], exact, sleepers())?;
        let seen = pids_in(&records, "interval", "threads");
        expect_pids("ktop", exact, &seen, &pids)?;
    }
    Ok(())
}

fn offcputime() -> Result<(), Failed> {
    for exact in [false, true] {
        let (records, pids) = traced(&["offcputime"], exact, sleepers())?;
        let seen = pids_in(&records, "offcpu", "stacks");
        expect_pids("offcputime", exact, &seen, &pids)?;
    }
    Ok(())
}

fn profile() -> Result<(), Failed> {
    let secs = if emulated().is_some() { "4" } else { "2" };
    let hot: &[&str] = &["hot", secs];
    for exact in [false, true] {
        let (records, pids) = traced(&["profile", "-F", "99", "--top", "1000"], exact, [hot; 3])?;
        let seen = pids_in(&records, "profile", "stacks");
        expect_pids("profile", exact, &seen, &pids)?;
    }
    Ok(())
}

/// serve's `[collectors] cgroup`: the forks collector and a fork probe count exactly the forks
/// made in the cgroup (and below it unless `cgroup_exact`).
fn serve() -> Result<(), Failed> {
    for exact in [false, true] {
        let cgroups = Cgroups::create("serve")?;
        let dir = crate::serve::TempDir::new("cgroup")?;
        let config = dir.write(
            "tracer.toml",
            &format!(
                "[collectors]\ncgroup = \"{}\"\ncgroup_exact = {exact}\n\n\
                 [[probe]]\nname = \"forks\"\nprobe = \"t:sched:sched_process_fork\"\nkind = \"counter\"\n",
                cgroups.target()
            ),
        )?;
        let (tool, addr) = crate::serve::serve(&["--config", &config])?;
        let mut workloads = vec![
            workload_in(&cgroups.target, &["fork", FORKS[0]])?,
            workload_in(&cgroups.child, &["fork", FORKS[1]])?,
            workload_in(&cgroups.sibling, &["fork", FORKS[2]])?,
        ];
        for w in &mut workloads {
            w.go();
        }
        let deadline = std::time::Instant::now() + scaled(Duration::from_secs(30));
        while !workloads.iter_mut().all(|w| w.finished()) {
            if std::time::Instant::now() > deadline {
                return Err(fail("workloads did not finish in time"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (status, text) = crate::serve::http_get(&addr, "/metrics", None)?;
        ensure(status == 200, || format!("/metrics: HTTP {status}"))?;
        let expected = if exact { 7.0 } else { 12.0 };
        let forks =
            crate::serve::sample(&text, "tracer_forks_total{parent_comm=\"tracer-workload\"}");
        let hits = crate::serve::sample(&text, "tracer_probe_hits_total{probe=\"forks\"}");
        ensure(forks == Some(expected) && hits == Some(expected), || {
            format!(
                "exact={exact}: tracer_forks_total {forks:?}, probe hits {hits:?}, expected {expected}"
            )
        })?;
        tool.stop(libc::SIGINT)?.ok()?;
    }
    Ok(())
}

fn bad_input() -> Result<(), Failed> {
    let mut cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["forksnoop", "--cgroup", "/no/such/cgroup"],
            "--cgroup /no/such/cgroup: no such directory",
        ),
        (
            vec!["profile", "--cgroup", "/proc/self/status"],
            "--cgroup /proc/self/status: not a directory",
        ),
        (
            vec!["runqlat", "--cgroup", "/proc"],
            "--cgroup /proc: not in a cgroup filesystem",
        ),
        (
            vec!["funccount", "--cgroup-exact", "t:sched:sched_process_fork"],
            "--cgroup <PATH>",
        ),
    ];
    // A v1 hierarchy where the machine has one (this host: memory; the VM guests: none).
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if v1.join("memory.limit_in_bytes").exists() {
        cases.push((
            vec!["offcputime", "--cgroup", "/sys/fs/cgroup/memory"],
            "/sys/fs/cgroup/memory is cgroup v1 (memory controller hierarchy): --cgroup needs a \
             cgroup v2 directory",
        ));
    }
    expect_one_line_errors(&cases)?;
    for (args, _) in &cases {
        let code = run(args).status.code();
        ensure(code == Some(2), || {
            format!("{args:?}: exit {code:?}, expected 2")
        })?;
    }
    // serve names the config line.
    let dir = crate::serve::TempDir::new("cgroup-bad")?;
    let config = dir.write(
        "tracer.toml",
        "[collectors]\ncgroup = \"/no/such/cgroup\"\n",
    )?;
    let exact_alone = dir.write("exact.toml", "[collectors]\ncgroup_exact = true\n")?;
    expect_one_line_errors(&[
        (
            vec!["serve", "--check", "--config", &config],
            "tracer.toml:2: --cgroup /no/such/cgroup: no such directory",
        ),
        (
            vec!["serve", "--check", "--config", &exact_alone],
            "exact.toml:2: cgroup_exact needs cgroup = \"PATH\"",
        ),
    ])?;
    Ok(())
}

//! User stacks of code built without frame pointers (`profile --call-graph dwarf`, the
//! default): C programs compiled here with known call chains, with and without frame
//! pointers, spinning in user mode and in system calls (the kernel-mode path reads the saved
//! user registers), through libc's qsort into a callback; and Debian's nginx under wrk,
//! against `perf record --call-graph dwarf` on the same load.

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use libtest_mimic::{Failed, Trial};
use serde_json::Value;
use testbed::nginx::Nginx;

use crate::{
    common::{Need, assert_nothing_loaded, emulated, ensure, fail, run, trial},
    serve::TempDir,
};

const CC: &[Need] = &[Need::Root, Need::Command("cc")];
const NGINX: &[Need] = &[
    Need::Root,
    Need::Command("nginx"),
    Need::Command("wrk"),
    Need::Command("perf"),
];

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "unwind::chain_without_frame_pointers_is_complete",
            CC,
            chain_without_frame_pointers,
        ),
        trial(
            "unwind::chain_in_a_system_call_is_complete",
            CC,
            chain_in_a_system_call,
        ),
        trial(
            "unwind::frame_pointer_build_gives_the_same_stacks",
            CC,
            frame_pointer_build_same_stacks,
        ),
        trial(
            "unwind::libc_qsort_callback_shows_caller_libc_callback",
            CC,
            libc_callback,
        ),
        trial(
            "unwind::stack_store_loses_none_of_65536_or_more_distinct_stacks",
            CC,
            many_distinct_stacks,
        ),
        trial(
            "unwind::nginx_worker_stacks_reach_main_and_agree_with_perf",
            NGINX,
            nginx_worker_stacks,
        ),
    ]
}

/// A hot leaf reached through main -> level_one -> level_two -> level_three; `s` as the
/// first argument makes the leaf a loop of getppid() system calls (samples in kernel mode).
const CHAIN: &str = r#"
#include <unistd.h>
volatile unsigned long sink;
__attribute__((noinline)) void spin_leaf(void) { for (unsigned long i = 0; i < 1000000; i++) sink += i * i; }
__attribute__((noinline)) void sys_leaf(void) { for (int i = 0; i < 1000; i++) sink += getppid(); }
__attribute__((noinline)) void level_three(int sys) { if (sys) sys_leaf(); else spin_leaf(); sink++; }
__attribute__((noinline)) void level_two(int sys) { level_three(sys); sink++; }
__attribute__((noinline)) void level_one(int sys) { level_two(sys); sink++; }
int main(int argc, char **argv) { int sys = argc > 1 && argv[1][0] == 's'; for (;;) level_one(sys); }
"#;

/// A comparison callback that spins, called by libc's qsort from sort_round.
const QSORT: &str = r#"
#include <stdlib.h>
volatile unsigned long sink;
static int slow_compare(const void *a, const void *b) {
    for (int i = 0; i < 2000; i++) sink++;
    return *(const int *)a - *(const int *)b;
}
__attribute__((noinline)) void sort_round(void) {
    int v[256];
    for (int i = 0; i < 256; i++) v[i] = rand();
    qsort(v, 256, sizeof v[0], slow_compare);
    sink++;
}
int main(void) { for (;;) sort_round(); }
"#;

/// Builds `source` with `flags` (-O2 and the frame-pointer choice) into `dir`.
fn build(dir: &TempDir, name: &str, source: &str, flags: &[&str]) -> Result<String, Failed> {
    let source = dir.write(&format!("{name}.c"), source)?;
    let binary = format!("{}/{name}", dir.path().display());
    let out = Command::new("cc")
        .args(flags)
        .args(["-O2", "-o", &binary, &source])
        .output()
        .map_err(|e| fail(format!("cc: {e}")))?;
    ensure(out.status.success(), || {
        format!("cc failed: {}", String::from_utf8_lossy(&out.stderr))
    })?;
    Ok(binary)
}

/// A spawned program, killed when dropped.
struct Program(Child);

impl Program {
    fn spawn(binary: &str, args: &[&str]) -> Result<Self, Failed> {
        Command::new(binary)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .map(Self)
            .map_err(|e| fail(format!("{binary}: {e}")))
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stacks as (user frames leaf first, samples).
type Samples = Vec<(Vec<String>, u64)>;

/// `profile -p PID -F HZ -d SECS --json` with `extra` options: (user frames leaf first,
/// samples) of every stack, and what profile printed on stderr.
fn profile_stacks(
    pid: &str,
    hz: &str,
    seconds: &str,
    extra: &[&str],
) -> Result<(Samples, String), Failed> {
    let mut args = vec![
        "profile", "-p", pid, "-F", hz, "-d", seconds, "--json", "--top", "100000",
    ];
    args.extend_from_slice(extra);
    let done = run(&args);
    let stderr = String::from_utf8_lossy(&done.stderr).into_owned();
    ensure(done.status.success(), || {
        format!("profile failed: {stderr}")
    })?;
    let stdout = String::from_utf8_lossy(&done.stdout);
    let profile: Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["type"] == "profile")
        .ok_or_else(|| fail(format!("no profile record: {stdout}")))?;
    let stacks = profile["stacks"]
        .as_array()
        .ok_or_else(|| fail(format!("no stacks: {profile}")))?
        .iter()
        .map(|s| {
            let user = s["user"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            (user, s["value"].as_u64().unwrap_or(0))
        })
        .collect();
    Ok((stacks, stderr))
}

/// `profile_stacks` for 2 s at 199 Hz of a busy process: at least 20 samples.
fn user_stacks(pid: &str, extra: &[&str]) -> Result<Vec<(Vec<String>, u64)>, Failed> {
    let (stacks, _) = profile_stacks(pid, "199", "2", extra)?;
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    ensure(total >= 20, || {
        format!(
            "only {total} samples of a busy process in 2 s at 199 Hz: {}",
            show(&stacks)
        )
    })?;
    Ok(stacks)
}

/// Whether `frames` (leaf first) hold `chain` as consecutive frames.
fn holds_run(frames: &[String], chain: &[&str]) -> bool {
    frames
        .windows(chain.len())
        .any(|w| w.iter().zip(chain).all(|(f, c)| f == c))
}

/// Samples whose user frames hold `chain` consecutively, and all samples.
fn chain_share(stacks: &[(Vec<String>, u64)], chain: &[&str]) -> (u64, u64) {
    let total = stacks.iter().map(|(_, n)| n).sum();
    let with = stacks
        .iter()
        .filter(|(frames, _)| holds_run(frames, chain))
        .map(|(_, n)| n)
        .sum();
    (with, total)
}

fn show(stacks: &[(Vec<String>, u64)]) -> String {
    let mut sorted: Vec<_> = stacks.iter().collect();
    sorted.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    sorted
        .iter()
        .take(8)
        .map(|(f, n)| format!("{n} {}", f.join(";")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every sample of the program shows its whole chain (a sample can land in a level's own
/// `sink++`, so 95 % is asked for the full chain from the leaf, every sample for main).
fn check_chain(stacks: &[(Vec<String>, u64)], leaf: &str) -> Result<(), Failed> {
    let (full, total) = chain_share(
        stacks,
        &[leaf, "level_three", "level_two", "level_one", "main"],
    );
    // A sample in main's own loop, between calls, is [main, ...]: it reaches main too.
    let (to_main, _) = chain_share(stacks, &["main"]);
    ensure(full * 100 >= total * 95 && to_main == total, || {
        let short: Vec<String> = stacks
            .iter()
            .filter(|(frames, _)| !holds_run(frames, &["main"]))
            .map(|(frames, n)| format!("{n} {}", frames.join(";")))
            .collect();
        format!(
            "{full} of {total} samples hold {leaf};level_three;level_two;level_one;main, \
             {to_main} reach main:\n{}\nnot reaching main: {short:?}",
            show(stacks)
        )
    })
}

fn chain_without_frame_pointers() -> Result<(), Failed> {
    let dir = TempDir::new("unwind-chain")?;
    let binary = build(&dir, "chain", CHAIN, &["-fomit-frame-pointer"])?;
    let program = Program::spawn(&binary, &[])?;
    let stacks = user_stacks(&program.pid(), &["-U"])?;
    check_chain(&stacks, "spin_leaf")?;
    // The same program with frame-pointer walking loses the callers: what dwarf is for.
    let fp = user_stacks(&program.pid(), &["-U", "--call-graph", "fp"])?;
    let (to_main, total) = chain_share(&fp, &["level_one", "main"]);
    ensure(to_main * 2 < total, || {
        format!(
            "frame pointers found main in {to_main} of {total} samples of a build without \
             them (the test program is not what it should be):\n{}",
            show(&fp)
        )
    })?;
    assert_nothing_loaded("profile_")
}

/// Samples taken in the kernel (getppid) unwind from the user registers saved on entry.
fn chain_in_a_system_call() -> Result<(), Failed> {
    let dir = TempDir::new("unwind-sys")?;
    let binary = build(&dir, "chain", CHAIN, &["-fomit-frame-pointer"])?;
    let program = Program::spawn(&binary, &["s"])?;
    let stacks = user_stacks(&program.pid(), &[])?;
    check_chain(&stacks, "sys_leaf")
}

fn frame_pointer_build_same_stacks() -> Result<(), Failed> {
    let dir = TempDir::new("unwind-fp")?;
    let binary = build(&dir, "chain", CHAIN, &["-fno-omit-frame-pointer"])?;
    let program = Program::spawn(&binary, &[])?;
    let stacks = user_stacks(&program.pid(), &["-U"])?;
    check_chain(&stacks, "spin_leaf")?;
    // Walking frame pointers instead: gcc gives leaf functions no frame even so (Debian's
    // gcc 12, also with -mno-omit-leaf-frame-pointer), so the leaf's caller is skipped, as
    // in perf -g; everything from level_two down is there.
    let fp = user_stacks(&program.pid(), &["-U", "--call-graph", "fp"])?;
    let (found, total) = chain_share(&fp, &["level_two", "level_one", "main"]);
    ensure(found * 100 >= total * 95, || {
        format!(
            "--call-graph fp: {found} of {total} samples hold level_two;level_one;main:\n{}",
            show(&fp)
        )
    })
}

/// caller -> libc -> callback: slow_compare's samples go through libc's qsort (its internal
/// merge sort has no symbol in Debian's stripped libc; qsort_r does) to sort_round and main.
fn libc_callback() -> Result<(), Failed> {
    let dir = TempDir::new("unwind-qsort")?;
    let binary = build(&dir, "qsort", QSORT, &["-fomit-frame-pointer"])?;
    let program = Program::spawn(&binary, &[])?;
    let stacks = user_stacks(&program.pid(), &["-U"])?;
    let mut through = 0;
    let mut at_callback = 0;
    for (frames, n) in &stacks {
        if frames.first().map(String::as_str) != Some("slow_compare") {
            continue;
        }
        at_callback += n;
        let sort_round = frames.iter().position(|f| f == "sort_round");
        let qsort = frames.iter().position(|f| f.starts_with("qsort"));
        if let (Some(q), Some(s)) = (qsort, sort_round)
            && q < s
            && frames.get(s + 1).map(String::as_str) == Some("main")
        {
            through += n;
        }
    }
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    ensure(at_callback * 2 >= total, || {
        format!(
            "slow_compare leads only {at_callback} of {total} samples:\n{}",
            show(&stacks)
        )
    })?;
    ensure(through * 100 >= at_callback * 95, || {
        format!(
            "{through} of {at_callback} samples in slow_compare show qsort* -> sort_round -> \
             main:\n{}",
            show(&stacks)
        )
    })
}

/// Levels of the generated call tree: 2^LEVELS = 131072 paths to `hit`. A uprobe on `hit`'s
/// first instruction fires before `hit` sets up its frame; kernels before 6.11 walk frame
/// pointers from the last level's frame to its caller's, so the last level's choice is not in
/// the stack and 65536 distinct stacks are seen, each twice; later kernels take the return
/// address at the stack pointer for such probes and see all 131072.
const LEVELS: u32 = 17;

/// A call tree of LEVELS levels, two functions each (`tKa`, `tKb`, bodies differing so the
/// compiler cannot fold them): main calls `hit` once through each of the 2^LEVELS paths
/// (bit K of the counter picks level K's function), creates the file named by its argument,
/// then waits to be killed (so its symbols stay readable).
fn call_tree_source() -> String {
    let mut c = String::from(
        "#include <fcntl.h>\n#include <unistd.h>\nvolatile unsigned long sink;\n\
         __attribute__((noinline)) void hit(void) { sink++; }\n",
    );
    for k in (1..=LEVELS).rev() {
        for (name, add) in [("a", 1), ("b", 2)] {
            let body = if k == LEVELS {
                "hit();".to_string()
            } else {
                format!("if (v & 1) t{0}a(v >> 1); else t{0}b(v >> 1);", k + 1)
            };
            c.push_str(&format!(
                "__attribute__((noinline)) void t{k}{name}(unsigned v) {{ {body} sink += {add}; }}\n"
            ));
        }
    }
    c.push_str(&format!(
        "int main(int argc, char **argv) {{ for (unsigned v = 0; v < (1u << {LEVELS}); v++) \
         {{ if (v & 1) t1a(v >> 1); else t1b(v >> 1); }} \
         close(creat(argv[1], 0600)); pause(); return 0; }}\n"
    ));
    c
}

/// More than 50 000 distinct stacks at a high rate (every call of `hit` through a generated call
/// tree, counted by stackcount on a uprobe): each stored once, none lost to a hash collision
/// (the kernel's stack-trace maps lose stacks whose hash bucket is taken), and the counts add
/// up to the calls made.
fn many_distinct_stacks() -> Result<(), Failed> {
    let paths = 1u64 << LEVELS;
    let dir = TempDir::new("unwind-tree")?;
    let binary = build(
        &dir,
        "tree",
        &call_tree_source(),
        &[
            "-O1",
            "-fno-omit-frame-pointer",
            "-fno-optimize-sibling-calls",
        ],
    )?;
    let probe = format!("u:{binary}:hit");
    let size = (paths + paths / 4).to_string();
    let tool = crate::common::start(&[
        "stackcount",
        "-U",
        "--stack-storage-size",
        &size,
        "--folded",
        &probe,
    ])?;
    let marker = format!("{}/done", dir.path().display());
    let program = Program::spawn(&binary, &[&marker])?;
    let deadline = std::time::Instant::now() + crate::common::scaled(Duration::from_secs(60));
    while !std::path::Path::new(&marker).exists() {
        ensure(std::time::Instant::now() < deadline, || {
            "the call tree did not finish in time".to_string()
        })?;
        thread::sleep(Duration::from_millis(100));
    }
    let done = tool.stop(libc::SIGINT)?.ok()?;
    drop(program);
    let mut lines = 0u64;
    let mut total = 0u64;
    let mut lost = 0u64;
    for line in &done.stdout {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let count: u64 = count.parse().unwrap_or(0);
        if stack.contains("[lost") {
            lost += count;
        }
        lines += 1;
        total += count;
    }
    ensure(
        lost == 0 && total == paths && (lines == paths || lines == paths / 2),
        || {
            format!(
                "{lines} distinct stacks, {total} calls counted ({lost} under [lost: ...]) for \
             {paths} calls through {paths} (or, before Linux 6.11, {}) distinct stacks; stderr: {:?}",
                paths / 2,
                done.stderr
            )
        },
    )?;
    ensure(
        !done.stderr.iter().any(|l| l.contains("stacks lost")),
        || format!("stacks were lost: {:?}", done.stderr),
    )
}

/// Inclusive sample counts of the named user functions in `stacks` (each counted once per
/// stack), the `n` highest.
fn top_functions<'a>(
    stacks: impl IntoIterator<Item = (Vec<String>, u64)> + 'a,
    n: usize,
) -> Vec<String> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for (frames, value) in stacks {
        let mut seen: Vec<&String> = Vec::new();
        for f in &frames {
            if f.starts_with('[') || seen.contains(&f) {
                continue;
            }
            seen.push(f);
            *counts.entry(f.clone()).or_default() += value;
        }
    }
    let mut sorted: Vec<(String, u64)> = counts.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    sorted.into_iter().take(n).map(|(f, _)| f).collect()
}

/// `perf script -F ip,sym,dso` output: the user frames (leaf first) of each sample (blocks
/// separated by blank lines), by symbol name; frames without one as "[unknown]".
fn perf_user_stacks(script: &str) -> Vec<(Vec<String>, u64)> {
    script
        .split("\n\n")
        .map(|block| {
            let frames: Vec<String> = block
                .lines()
                .filter_map(|line| {
                    // "\t    55d0c2a4b1c3 ngx_http_core_run_phases+0x23 (/usr/sbin/nginx)"
                    let rest: Vec<&str> = line.split_whitespace().skip(1).collect();
                    let dso = rest.last()?;
                    if dso.contains("kernel.kallsyms") {
                        return None;
                    }
                    let symbol = rest[..rest.len() - 1].join(" ");
                    let name = symbol.split('+').next().unwrap_or("");
                    Some(if name.is_empty() || name == "[unknown]" {
                        "[unknown]".to_string()
                    } else {
                        name.to_string()
                    })
                })
                .collect();
            (frames, 1)
        })
        .filter(|(frames, _)| !frames.is_empty())
        .collect()
}

/// Debian's nginx (built without frame pointers) under wrk: the worker's user stacks reach
/// main and its event loop, and their hottest functions are perf's (`--call-graph dwarf`,
/// sampling the same worker at the same time).
fn nginx_worker_stacks() -> Result<(), Failed> {
    let nginx = Nginx::start_local().map_err(|e| fail(format!("nginx: {e:#}")))?;
    let worker = nginx
        .worker()
        .map_err(|e| fail(format!("{e:#}")))?
        .to_string();
    let seconds = if emulated().is_some() { 4 } else { 3 };
    let load_secs = (seconds + 4).to_string();
    let mut wrk = Command::new("wrk")
        .args(["-t1", "-c8", &format!("-d{load_secs}s"), &nginx.url()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("wrk: {e}")))?;
    thread::sleep(Duration::from_millis(500));
    let dir = TempDir::new("unwind-perf")?;
    let perf_data = format!("{}/perf.data", dir.path().display());
    let mut perf = Command::new("perf")
        .args([
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            "499",
            "--call-graph",
            "dwarf",
            "-p",
            &worker,
            "-o",
            &perf_data,
            "--",
            "sleep",
        ])
        .arg(seconds.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("perf: {e}")))?;
    let (mut stacks, profile_stderr) = profile_stacks(&worker, "499", &seconds.to_string(), &[])?;
    stacks.retain(|(user, _)| !user.is_empty());
    let perf_ok = perf.wait().map(|s| s.success()).unwrap_or(false);
    let _ = wrk.wait();
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    ensure(total >= 100, || {
        format!("{total} user samples of a loaded nginx worker; profile said: {profile_stderr}")
    })?;
    // The worker's loop: ngx_worker_process_cycle is static (no symbol without nginx's debug
    // package, which this machine cannot fetch), so its exported callee stands for it.
    let (in_loop, _) = chain_share(&stacks, &["ngx_process_events_and_timers"]);
    let (to_main, _) = chain_share(&stacks, &["main"]);
    ensure(
        in_loop * 100 >= total * 90 && to_main * 100 >= total * 80,
        || {
            format!(
                "of {total} user samples {in_loop} reach ngx_process_events_and_timers and \
             {to_main} main:\n{}",
                show(&stacks)
            )
        },
    )?;
    ensure(perf_ok, || "perf record failed".to_string())?;
    let script = Command::new("perf")
        .args(["script", "-i", &perf_data, "-F", "ip,sym,dso"])
        .output()
        .map_err(|e| fail(format!("perf script: {e}")))?;
    let perf_stacks = perf_user_stacks(&String::from_utf8_lossy(&script.stdout));
    ensure(perf_stacks.len() >= 100, || {
        format!("perf recorded {} samples", perf_stacks.len())
    })?;
    let ours = top_functions(stacks.clone(), 10);
    let theirs = top_functions(perf_stacks, 10);
    let common = ours.iter().filter(|f| theirs.contains(f)).count();
    ensure(common >= 8, || {
        format!(
            "top 10 user functions differ ({common} in common):\n  tracer: {ours:?}\n  perf:   \
             {theirs:?}"
        )
    })?;
    drop(nginx);
    assert_nothing_loaded("profile_")
}

//! USDT probes against real programs with known behaviour: Debian's python3.11 (SDT probes
//! guarded by semaphores) calling a known function N times, a C++ program throwing K
//! exceptions (libstdcxx:throw), a binary visible only inside its own mount namespace, and
//! the one-line errors for probes, binaries and arguments that do not exist.
//!
//! Python 3.11 fires function__entry only while a trace or profile function is set (its DTrace
//! hooks sit inside the interpreter's tracing branch), so the scripts set a no-op one.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use libtest_mimic::{Failed, Trial};

use crate::common::{Need, ensure, expect_one_line_errors, fail, scaled, start, trial};

const PYTHON: &str = "/usr/bin/python3.11";
const ENTRY: &str = "usdt:/usr/bin/python3.11:python:function__entry";

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "usdt::python_function_entry_counts_and_arguments",
            &[Need::Root, Need::Command("python3.11")],
            python_counts_and_arguments,
        ),
        trial(
            "usdt::python_started_later_is_traced_and_semaphore_drops",
            &[Need::Root, Need::Command("python3.11")],
            python_later_and_semaphore,
        ),
        trial(
            "usdt::libstdcxx_throw_counts_exceptions",
            &[Need::Root, Need::Command("g++")],
            libstdcxx_throw,
        ),
        trial(
            "usdt::uprobe_on_a_binary_only_in_a_mount_namespace",
            &[Need::Root, Need::Command("g++"), Need::Command("unshare")],
            container_path,
        ),
        trial(
            "usdt::bad_input_is_one_line",
            &[Need::Root, Need::Command("python3.11")],
            bad_input,
        ),
    ]
}

/// A program that prints its PID, then waits for a line on stdin before each step.
struct Stepped {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    pid: u32,
}

impl Stepped {
    fn spawn(cmd: &mut Command) -> Result<Self, Failed> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot start {cmd:?}: {e}")))?;
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stepped = Self {
            child,
            stdin,
            lines,
            pid: 0,
        };
        let first = stepped.line()?;
        stepped.pid = first
            .trim()
            .parse()
            .map_err(|_| fail(format!("program said '{first}', not its PID")))?;
        Ok(stepped)
    }

    fn line(&mut self) -> Result<String, Failed> {
        self.lines
            .recv_timeout(scaled(Duration::from_secs(30)))
            .map_err(|_| fail("program printed nothing in time"))
    }

    /// Lets it do its next step (`input`: what it reads) and waits for it to say it is done.
    fn step(&mut self, input: &str) -> Result<(), Failed> {
        writeln!(self.stdin, "{input}").map_err(|e| fail(format!("program gone: {e}")))?;
        let said = self.line()?;
        ensure(said == "done", || format!("program said '{said}'"))
    }
}

impl Drop for Stepped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scratch(what: &str) -> Result<PathBuf, Failed> {
    let dir = std::env::temp_dir().join(format!("tracer-usdt-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    Ok(dir)
}

/// A python script: prints its PID; on each line read (a number N), calls known_fn and
/// known_fn_decoy (a name that known_fn is a prefix of) N times each under a no-op trace
/// function and prints "done".
fn python_script(dir: &Path) -> Result<PathBuf, Failed> {
    let path = dir.join("calls.py");
    std::fs::write(
        &path,
        "import os, sys\n\
         def known_fn(i):\n    return i + 1\n\
         def known_fn_decoy(i):\n    return i\n\
         print(os.getpid(), flush=True)\n\
         for line in sys.stdin:\n\
         \x20   n = int(line)\n\
         \x20   sys.settrace(lambda *a: None)\n\
         \x20   for i in range(n):\n\
         \x20       known_fn(i)\n\
         \x20       known_fn_decoy(i)\n\
         \x20   sys.settrace(None)\n\
         \x20   print('done', flush=True)\n",
    )
    .map_err(|e| fail(e.to_string()))?;
    Ok(path)
}

/// The COUNT funccount printed for `name`.
fn count_of(stdout: &[String], name: &str) -> Option<u64> {
    stdout.iter().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(name))
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

fn python_counts_and_arguments() -> Result<(), Failed> {
    // N for the counts; fewer for trace, whose ring buffer holds about 1800 events when a
    // burst outruns its 10 ms polling.
    const N: u64 = 3217;
    const TRACED: u64 = 613;
    let dir = scratch("python")?;
    let script = python_script(&dir)?;
    let mut py = Stepped::spawn(Command::new(PYTHON).arg(&script))?;
    let pid = py.pid.to_string();
    let count = start(&["funccount", "-p", &pid, ENTRY])?;
    py.step(&N.to_string())?;
    thread::sleep(Duration::from_millis(300));
    let counted = count.stop(libc::SIGINT)?.ok()?;
    let hits = count_of(&counted.stdout, "python:function__entry")
        .ok_or_else(|| fail(format!("no count: {:?}", counted.stdout)))?;
    ensure(hits >= 2 * N, || {
        format!("function__entry counted {hits} < {}", 2 * N)
    })?;
    // The in-kernel string filter: exactly known_fn's calls, not its decoy's, counted by
    // the line (arg2) they start at: known_fn is defined on line 2.
    let filter = r#"arg1 == "known_fn""#;
    let by_line = start(&[
        "argdist", "-p", &pid, "--count", ENTRY, "arg2", "--filter", filter,
    ])?;
    py.step(&N.to_string())?;
    thread::sleep(Duration::from_millis(300));
    let by_line = by_line.stop(libc::SIGINT)?.ok()?;
    let rows: Vec<(u64, u64)> = by_line
        .stdout
        .iter()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
        })
        .collect();
    ensure(rows == [(N, 2)], || {
        format!(
            "argdist --filter '{filter}' counted (count, line) {rows:?}, not [({N}, 2)]: {:?}",
            by_line.stdout
        )
    })?;
    let traced = start(&[
        "trace", "-p", &pid, ENTRY, "%s %s %d", "arg0", "arg1", "arg2", "--filter", filter,
    ])?;
    py.step(&TRACED.to_string())?;
    thread::sleep(Duration::from_millis(300));
    let traced = traced.stop(libc::SIGINT)?.ok()?;
    // file, function, line of known_fn's definition (line 2 of the script); the filter
    // leaves nothing else.
    let expected = format!("{} known_fn 2", script.display());
    let events: Vec<&String> = traced
        .stdout
        .iter()
        .filter(|l| l.contains("python:function__entry"))
        .collect();
    let exact = events.iter().filter(|l| l.ends_with(&expected)).count() as u64;
    ensure(exact == TRACED && events.len() as u64 == TRACED, || {
        format!(
            "{exact} of {} trace lines end with '{expected}', not all {TRACED}: {:?}",
            events.len(),
            events.iter().take(5).collect::<Vec<_>>()
        )
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The load bias of `pid`'s executable: 0 for a non-PIE binary (ELF type EXEC), else where
/// its first mapping starts.
fn exe_bias(pid: u32, exe: &Path) -> Result<u64, Failed> {
    let header = std::fs::read(exe).map_err(|e| fail(e.to_string()))?;
    if u16::from_le_bytes([header[16], header[17]]) == 2 {
        return Ok(0);
    }
    let maps =
        std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|e| fail(e.to_string()))?;
    let line = maps
        .lines()
        .find(|l| l.ends_with(&*exe.to_string_lossy()))
        .ok_or_else(|| fail("executable not in maps"))?;
    u64::from_str_radix(line.split('-').next().unwrap_or(""), 16).map_err(|e| fail(e.to_string()))
}

/// The u16 semaphore of function__entry in `pid`'s memory.
fn semaphore(pid: u32) -> Result<u16, Failed> {
    let out = Command::new(crate::common::TRACER)
        .args([
            "tplist",
            "--usdt",
            "--json",
            "-l",
            PYTHON,
            "python:function__entry",
        ])
        .output()
        .map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let note: serde_json::Value = serde_json::from_str(text.lines().next().unwrap_or(""))
        .map_err(|e| fail(format!("tplist --json: {e}: {text}")))?;
    let address = note["semaphore"]
        .as_u64()
        .filter(|a| *a != 0)
        .ok_or_else(|| fail(format!("function__entry has no semaphore: {note}")))?;
    let at = address + exe_bias(pid, Path::new(PYTHON))?;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).map_err(|e| fail(e.to_string()))?;
    let mut value = [0u8; 2];
    std::os::unix::fs::FileExt::read_exact_at(&mem, &mut value, at)
        .map_err(|e| fail(format!("reading the semaphore at {at:#x}: {e}")))?;
    Ok(u16::from_ne_bytes(value))
}

fn python_later_and_semaphore() -> Result<(), Failed> {
    const N: u64 = 500;
    let dir = scratch("later")?;
    let script = python_script(&dir)?;
    // Both attached before python exists: the kernel raises the semaphore when it maps.
    let graceful = start(&["funccount", ENTRY])?;
    let killed = start(&["funccount", ENTRY])?;
    let mut py = Stepped::spawn(Command::new(PYTHON).arg(&script))?;
    // One uprobe (inode, offset) however many consumers: the kernel raises it once.
    let raised = semaphore(py.pid)?;
    ensure(raised == 1, || {
        format!("semaphore is {raised} with two tracers attached, not 1")
    })?;
    py.step(&N.to_string())?;
    thread::sleep(Duration::from_millis(300));
    let counted = graceful.stop(libc::SIGINT)?.ok()?;
    let hits = count_of(&counted.stdout, "python:function__entry")
        .ok_or_else(|| fail(format!("no count: {:?}", counted.stdout)))?;
    ensure(hits >= N, || {
        format!("function__entry counted {hits} < {N}")
    })?;
    let after_exit = semaphore(py.pid)?;
    ensure(after_exit == 1, || {
        format!("semaphore is {after_exit} while the second tracer is still attached, not 1")
    })?;
    let _ = killed.stop(libc::SIGKILL)?;
    // The kernel drops the reference when the perf event's last fd closes.
    let deadline = Instant::now() + scaled(Duration::from_secs(5));
    loop {
        let value = semaphore(py.pid)?;
        if value == 0 {
            break;
        }
        ensure(Instant::now() < deadline, || {
            format!("semaphore still {value} after the SIGKILLed tracer is gone")
        })?;
        thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A C++ program: prints its PID; on each line read, `throw` K times (each caught) or calls
/// `called` K times, then prints "done".
fn cxx_program(dir: &Path) -> Result<PathBuf, Failed> {
    let source = dir.join("steps.cc");
    std::fs::write(
        &source,
        r#"#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <unistd.h>
extern "C" __attribute__((noinline)) int called(int i) { asm volatile(""); return i + 1; }
int main(int argc, char **argv) {
    int k = atoi(argv[2]);
    bool throwing = strcmp(argv[1], "throw") == 0;
    printf("%d\n", getpid());
    fflush(stdout);
    std::string line;
    long sum = 0;
    while (std::getline(std::cin, line)) {
        for (int i = 0; i < k; i++) {
            if (throwing) {
                try { throw i; } catch (int e) { sum += e; }
            } else {
                sum += called(i);
            }
        }
        printf("done\n");
        fflush(stdout);
    }
    return sum == 42;
}
"#,
    )
    .map_err(|e| fail(e.to_string()))?;
    let binary = dir.join("steps");
    let out = Command::new("g++")
        .args(["-O1", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .map_err(|e| fail(format!("g++: {e}")))?;
    ensure(out.status.success(), || {
        format!("g++ failed: {}", String::from_utf8_lossy(&out.stderr))
    })?;
    Ok(binary)
}

fn libstdcxx_throw() -> Result<(), Failed> {
    const K: u64 = 37;
    let dir = scratch("throw")?;
    let binary = cxx_program(&dir)?;
    let mut prog = Stepped::spawn(Command::new(&binary).args(["throw", &K.to_string()]))?;
    let pid = prog.pid.to_string();
    let count = start(&["funccount", "-p", &pid, "usdt:libstdc++:libstdcxx:throw"])?;
    prog.step("go")?;
    thread::sleep(Duration::from_millis(200));
    let counted = count.stop(libc::SIGINT)?.ok()?;
    let hits = count_of(&counted.stdout, "libstdcxx:throw");
    ensure(hits == Some(K), || {
        format!(
            "libstdcxx:throw counted {hits:?}, not {K}: {:?}",
            counted.stdout
        )
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn container_path() -> Result<(), Failed> {
    const K: u64 = 211;
    let dir = scratch("ns")?;
    let binary = cxx_program(&dir)?;
    // A tmpfs mounted over `private` inside the new mount namespace only: the copy at
    // private/steps does not exist on the host.
    let private = dir.join("private");
    std::fs::create_dir_all(&private).map_err(|e| fail(e.to_string()))?;
    let inner = private.join("steps");
    let script = format!(
        "mount -t tmpfs none {p} && cp {b} {i} && exec {i} call {K}",
        p = private.display(),
        b = binary.display(),
        i = inner.display()
    );
    let mut prog = Stepped::spawn(Command::new("unshare").args([
        "-m",
        "-p",
        "-f",
        "--mount-proc",
        "sh",
        "-c",
        &script,
    ]))?;
    // It printed its namespace PID (1); find the host's.
    ensure(prog.pid == 1, || {
        format!("namespace PID is {}, not 1", prog.pid)
    })?;
    ensure(!inner.exists(), || {
        format!("{} is visible on the host", inner.display())
    })?;
    let host_pid = find_host_pid(prog.child.id())?;
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status"))
        .map_err(|e| fail(e.to_string()))?;
    let nspid = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>();
    ensure(nspid == [host_pid.to_string().as_str(), "1"], || {
        format!("NSpid of {host_pid} is {nspid:?}")
    })?;
    let host = host_pid.to_string();
    let spec = format!("u:{}:called", inner.display());
    // PIDs both ways: the host's in PID, the namespace's (1) in NSPID.
    let count = start(&["funccount", "-P", "--pidns", "-p", &host, &spec])?;
    prog.step("go")?;
    thread::sleep(Duration::from_millis(200));
    let counted = count.stop(libc::SIGINT)?.ok()?;
    let row = counted
        .stdout
        .iter()
        .find(|l| l.contains("called"))
        .ok_or_else(|| fail(format!("no row for called: {:?}", counted.stdout)))?;
    let fields: Vec<&str> = row.split_whitespace().collect();
    ensure(
        fields.len() == 5 && fields[0] == host && fields[1] == "1" && fields[4] == K.to_string(),
        || format!("row '{row}' is not PID {host}, NSPID 1, ..., count {K}"),
    )?;
    // trace's events say the same, in JSON.
    let traced = start(&[
        "trace",
        "--pidns",
        "--json",
        "-p",
        &host,
        &spec,
        "--max-events",
        "3",
    ])?;
    prog.step("go")?;
    let traced = traced.wait(scaled(Duration::from_secs(15)))?.ok()?;
    let events: Vec<serde_json::Value> = traced
        .json()?
        .into_iter()
        .filter(|r| r["type"] == "event")
        .collect();
    ensure(
        events.len() == 3
            && events
                .iter()
                .all(|e| e["pid"] == host_pid && e["nspid"] == 1),
        || format!("trace --pidns events: {events:?}"),
    )?;
    // The binary exists only in the process's mount namespace; its symbols still resolve.
    let stacks = start(&["stackcount", "-U", "-p", &host, &spec])?;
    prog.step("go")?;
    thread::sleep(Duration::from_millis(200));
    let stacks = stacks.stop(libc::SIGINT)?.ok()?;
    ensure(stacks.stdout.iter().any(|l| l.trim() == "called"), || {
        format!("no 'called' frame in stackcount -U: {:?}", stacks.stdout)
    })?;
    drop(prog);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The host PID of `unshare -f`'s child (its PID 1, which exec'd the program): read from
/// the children list, since /proc/PID/exe of a file mounted only in that namespace need not
/// read back as the same path from outside it (the VM stage runs tests in a chroot).
fn find_host_pid(unshare: u32) -> Result<u32, Failed> {
    let path = format!("/proc/{unshare}/task/{unshare}/children");
    let text = std::fs::read_to_string(&path).map_err(|e| fail(format!("{path}: {e}")))?;
    match text.split_whitespace().collect::<Vec<_>>().as_slice() {
        [child] => child.parse().map_err(|_| fail(format!("{path}: '{text}'"))),
        other => Err(fail(format!("unshare has children {other:?}, not one"))),
    }
}

fn bad_input() -> Result<(), Failed> {
    // The probe tools' spelling lists what it would attach to.
    let out = crate::common::run(&["tplist", "usdt:/usr/bin/python3.11:python:function__*"]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure(
        listed.lines().collect::<Vec<_>>()
            == [
                "/usr/bin/python3.11 python:function__entry",
                "/usr/bin/python3.11 python:function__return",
            ],
        || format!("tplist usdt:...: {listed}"),
    )?;
    expect_one_line_errors(&[
        (
            vec![
                "funccount",
                "usdt:/usr/bin/python3.11:python:function_entry",
            ],
            "nearest: python:function__entry",
        ),
        (
            vec!["funccount", "usdt:/usr/bin/python3.11:nope:*"],
            "has no USDT probe 'nope:*'",
        ),
        (
            vec!["funccount", "usdt:/etc/passwd:p:n"],
            "is not an ELF file",
        ),
        (
            vec!["funccount", "usdt:/bin/true:p:n"],
            "has no USDT probes (no .note.stapsdt section)",
        ),
        (
            vec!["trace", ENTRY, "%d", "arg3"],
            "arg3 is out of range: USDT probe python:function__entry has 3 arguments (arg0..arg2)",
        ),
        (
            vec!["funclatency", ENTRY],
            "time two of them with --start usdt:... --end usdt:...",
        ),
        (
            vec!["tplist", "usdt:/usr/bin/python3.11:nope:*"],
            "no USDT probe matches 'nope:*'",
        ),
        (
            vec!["funccount", "-p", "1", "u:/no/such/dir/binary:main"],
            "no such file, on the host or in PID 1's mount namespace",
        ),
        (
            vec!["trace", ENTRY, "--filter", r#"arg1 > "known_fn""#],
            "strings compare with == or != only",
        ),
        (
            vec![
                "argdist",
                ENTRY,
                "arg2",
                "--filter",
                r#"arg1 == "known*fn""#,
            ],
            "one trailing *",
        ),
        (
            vec!["trace", ENTRY, "--filter", r#"arg1 == "known_fn"#],
            "the string has no closing quote",
        ),
    ])
}

//! Closed pipes: `tracer ... | head` must end the tool quietly on every print path (text,
//! JSON, folded stacks, completions, help), as if Ctrl-C had been pressed — everything
//! detached, exit status 0 (README, Conventions) — never a panic (exit 101, "failed printing
//! to stderr: Broken pipe"). Rust ignores SIGPIPE, so each write after the reader left
//! returns EPIPE; these tests close the reader early and look at what the tool does then.

use std::{
    io::{BufRead as _, BufReader, PipeReader, Read as _},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use libtest_mimic::{Failed, Trial};

use crate::common::{
    BpfObjects, DEADLINE, Need, TRACER, assert_released, bpf_objects_of, doctor_says_unavailable,
    ensure, fail, orphaned_programs, pinned_paths, program_ids, trial, which,
};

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "pipes::closed_stdout_and_stderr",
            &[Need::Root],
            closed_stdout_and_stderr,
        ),
        trial(
            "pipes::closed_stdout_stderr_kept",
            &[Need::Root],
            closed_stdout_stderr_kept,
        ),
        trial(
            "pipes::closed_stderr_run_continues",
            &[Need::Root],
            closed_stderr_run_continues,
        ),
    ]
}

/// One command; `loads` when it attaches BPF programs (then the pipe is closed only once it
/// said "Hit Ctrl-C to end.", after a snapshot of what it holds in the kernel).
struct Case {
    args: Vec<String>,
    loads: bool,
}

fn case(args: &[&str], loads: bool) -> Case {
    Case {
        args: args.iter().map(|a| a.to_string()).collect(),
        loads,
    }
}

/// The three commands (the nginx one where nginx is installed), and the JSON,
/// folded, help and list print paths.
fn cases() -> Vec<Case> {
    // Without BPF cookies (5.10) each uprobe loads an object of its own (~50 ms natively, ten
    // times that under TCG): the 163 ngx_http_* functions would take minutes to attach there,
    // so those kernels get the few ngx_http_process_* ones.
    let glob = if doctor_says_unavailable("bpf_cookie").is_some() {
        "ngx_http_process_*"
    } else {
        "ngx_http_*"
    };
    let nginx_probes = which("nginx").map(|p| format!("u:{}:{glob}", p.display()));
    let mut cases = vec![
        case(
            &[
                "profile",
                "--softirq",
                "-K",
                "-F",
                "997",
                "-d",
                "2",
                "--top",
                "1",
            ],
            true,
        ),
        case(&["completions", "bash"], false),
        case(
            &["funccount", "--json", "t:sched:sched_switch", "0.2", "10"],
            true,
        ),
        case(&["profile", "--folded", "-F", "99", "-d", "2"], true),
        case(&["forksnoop", "--json"], true),
        case(&["--help"], false),
        case(&["forksnoop", "--help"], false),
        case(&["list-tools"], false),
    ];
    if let Some(probes) = &nginx_probes {
        cases.insert(1, case(&["funccount", probes, "1", "2"], true));
    }
    cases
}

/// Where the tool's stdout and stderr go.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Wiring {
    /// Both into one pipe (`2>&1 | head`), closed early.
    Shared,
    /// stdout into a pipe closed early; stderr read to the end by the test.
    StdoutClosed,
    /// stderr into a pipe closed early; stdout read to the end by the test.
    StderrClosed,
}

/// How a run with an early-closed pipe ended.
struct Ended {
    code: Option<i32>,
    signal: Option<i32>,
    /// What the test read from the stream it kept open (empty for `Shared`).
    kept: String,
    /// What the tool held in the kernel just before the pipe was closed.
    held: BpfObjects,
    pid: u32,
}

/// Reads lines until one contains `needle` (or, without a needle, reads nothing), reports it,
/// then closes the pipe (if it is still open) when told to.
fn close_after(
    reader: Option<PipeReader>,
    needle: Option<&'static str>,
) -> (mpsc::Receiver<Result<(), String>>, mpsc::Sender<()>) {
    let (seen_tx, seen_rx) = mpsc::channel();
    let (close_tx, close_rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        let mut reader = reader.map(BufReader::new);
        if let (Some(reader), Some(needle)) = (reader.as_mut(), needle) {
            let mut said = Vec::new();
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => {
                        let _ = seen_tx.send(Err(format!(
                            "output ended before '{needle}': {}",
                            said.join(" | ")
                        )));
                        return;
                    }
                    Ok(_) if line.contains(needle) => break,
                    Ok(_) => said.push(line.trim_end().to_string()),
                }
            }
        }
        let _ = seen_tx.send(Ok(()));
        let _ = close_rx.recv();
        drop(reader);
    });
    (seen_rx, close_tx)
}

/// Reads a stream to its end in the background.
fn drain(mut reader: PipeReader) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = reader.read_to_string(&mut text);
        text
    })
}

fn run_closing(case: &Case, wiring: Wiring) -> Result<Ended, Failed> {
    let io = |e: std::io::Error| fail(format!("pipe: {e}"));
    let (closed_reader, closed_writer) = std::io::pipe().map_err(io)?;
    // A tool that loads nothing gets a pipe without reader from the start: its first write
    // fails, however small its output (head's exit racing a write that fits in the pipe
    // buffer is how `tracer completions bash | head -3` panicked only sometimes).
    let closed_reader = if case.loads {
        Some(closed_reader)
    } else {
        drop(closed_reader);
        None
    };
    let (kept_reader, kept_writer) = std::io::pipe().map_err(io)?;
    let mut cmd = Command::new(TRACER);
    cmd.args(&case.args).stdin(Stdio::null());
    match wiring {
        Wiring::Shared => {
            let second = closed_writer.try_clone().map_err(io)?;
            cmd.stdout(closed_writer).stderr(second);
            drop(kept_writer);
        }
        Wiring::StdoutClosed => {
            cmd.stdout(closed_writer).stderr(kept_writer);
        }
        Wiring::StderrClosed => {
            cmd.stdout(kept_writer).stderr(closed_writer);
        }
    }
    let child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot start tracer: {e}")))?;
    // The Command holds the parent's copies of the write ends: without them, the readers see
    // end-of-file when the tool exits.
    drop(cmd);
    let mut child = KillOnDrop(child);
    let pid = child.0.id();
    let shown = case.args.join(" ");

    // "Hit Ctrl-C to end." is on stderr: in the shared pipe, or the kept or the closed one.
    let needle = case.loads.then_some("Hit Ctrl-C to end.");
    let (kept_text, held, close) = match wiring {
        Wiring::StdoutClosed => {
            let (lines_tx, lines_rx) = mpsc::channel();
            let collector = thread::spawn(move || {
                let mut text = String::new();
                for line in BufReader::new(kept_reader).lines().map_while(Result::ok) {
                    text.push_str(&line);
                    text.push('\n');
                    let _ = lines_tx.send(line);
                }
                text
            });
            if let Some(needle) = needle {
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    match lines_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    {
                        Ok(line) if line.contains(needle) => break,
                        Ok(_) => {}
                        Err(_) => return Err(fail(format!("{shown}: never said '{needle}'"))),
                    }
                }
            }
            let held = bpf_objects_of(pid);
            let (seen, close) = close_after(closed_reader, None);
            let _ = seen.recv();
            (Some(collector), held, close)
        }
        Wiring::Shared | Wiring::StderrClosed => {
            let collector = (wiring == Wiring::StderrClosed).then(|| drain(kept_reader));
            let (seen, close) = close_after(closed_reader, needle);
            match seen.recv_timeout(Duration::from_secs(20)) {
                Ok(Ok(())) => {}
                Ok(Err(why)) => return Err(fail(format!("{shown}: {why}"))),
                Err(_) => {
                    return Err(fail(format!(
                        "{shown}: no '{}' within 20 s",
                        needle.unwrap_or("output")
                    )));
                }
            }
            (collector, bpf_objects_of(pid), close)
        }
    };
    let _ = close.send(());

    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.0.try_wait().map_err(|e| fail(e.to_string()))? {
            break status;
        }
        if Instant::now() >= deadline {
            return Err(fail(format!(
                "{shown} ({wiring:?}): still running {DEADLINE:?} after its pipe was closed"
            )));
        }
        thread::sleep(Duration::from_millis(20));
    };
    let kept = kept_text
        .map(|t| t.join().unwrap_or_default())
        .unwrap_or_default();
    Ok(Ended {
        code: status.code(),
        signal: std::os::unix::process::ExitStatusExt::signal(&status),
        kept,
        held,
        pid,
    })
}

/// A failing test must not leave its tracer running, still attached.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs every case with `wiring`; each must exit 0, without a panic, leaving nothing loaded.
fn check_all(wiring: Wiring, cases: &[Case]) -> Result<(), Failed> {
    let before = program_ids();
    let pinned_before = pinned_paths();
    let mut failures = Vec::new();
    for case in cases {
        let shown = format!("{} ({wiring:?})", case.args.join(" "));
        let ended = match run_closing(case, wiring) {
            Ok(ended) => ended,
            Err(failed) => {
                failures.push(format!("{failed:?}"));
                continue;
            }
        };
        if ended.code != Some(0) {
            failures.push(format!(
                "{shown}: exit {:?} signal {:?}, expected 0; stderr: {}",
                ended.code,
                ended.signal,
                ended.kept.trim()
            ));
        } else if ["panicked", "Broken pipe", "error"]
            .iter()
            .any(|word| ended.kept.contains(word))
        {
            failures.push(format!("{shown}: said {}", ended.kept.trim()));
        } else if case.loads && ended.held.progs.is_empty() && ended.held.links.is_empty() {
            failures.push(format!(
                "{shown}: held no BPF program when its pipe closed (nothing to check)"
            ));
        } else if let Err(left) = assert_released(ended.pid, &ended.held, &pinned_before) {
            failures.push(format!("{shown}: {left:?}"));
        }
    }
    let orphans = orphaned_programs(&before, Duration::from_secs(3));
    ensure(orphans.is_empty(), || {
        format!("programs left loaded and held by no process: {orphans:?}")
    })?;
    ensure(failures.is_empty(), || failures.join("\n"))
}

/// `tracer ... 2>&1 | head`: both streams into one pipe whose reader leaves early.
fn closed_stdout_and_stderr() -> Result<(), Failed> {
    check_all(Wiring::Shared, &cases())
}

/// `tracer ... | head` with stderr on a terminal: the run stops as on Ctrl-C, quietly.
fn closed_stdout_stderr_kept() -> Result<(), Failed> {
    check_all(Wiring::StdoutClosed, &cases())
}

/// A closed stderr alone (`2>&1 >out.txt | head`) does not stop the run: the tool finishes
/// its duration and prints its whole result on stdout.
fn closed_stderr_run_continues() -> Result<(), Failed> {
    let profile = case(&["profile", "-K", "-F", "99", "-d", "1"], true);
    let ended = run_closing(&profile, Wiring::StderrClosed)?;
    ensure(ended.code == Some(0), || {
        format!(
            "profile with stderr closed: exit {:?} signal {:?}",
            ended.code, ended.signal
        )
    })?;
    ensure(ended.kept.lines().count() > 3, || {
        format!("profile printed no stacks on stdout: {}", ended.kept)
    })?;
    assert_released(ended.pid, &ended.held, &pinned_paths())
}
